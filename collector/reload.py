"""What the collector applies on a reload (SIGHUP), component by component (:mod:`backhaul.reload`).

Applied without a restart: ``log_level``; ``[[devices]]`` (brought into the registry as at start: new
devices registered, config tokens taken over; a device removed from the config stays registered until
``backhaul-collector devices revoke``, as after a restart); ``[read] tokens``; each ``[[forward]]``
target's URL, token, headers, timeout and backoff; and, re-read at every reload, the listener's TLS
files. Adding or removing a forward target, the store, the listener and ``[read] auth`` need a restart.
A new config whose read token is a device's token is refused whole, as at start.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from backhaul.reload import ConfigReload
from collector.config import CollectorSettings
from collector.read_auth import ReadAuth
from collector.registry import import_config_devices

if TYPE_CHECKING:
    from collector.app import Collector

log = logging.getLogger(__name__)

FORWARD_FIELDS = (
    "url",
    "bearer_token",
    "headers",
    "timeout",
    "backoff_min",
    "backoff_max",
    "max_samples_per_request",
    "native_histograms",
)


async def check(collector: Collector, new: CollectorSettings) -> None:
    """The checks of a start that look further than the settings: a read token that a device has."""
    await ReadAuth(new.read).refuse_device_tokens(collector.store)


def register(reload: ConfigReload[CollectorSettings], collector: Collector) -> None:
    """The collector's reload steps."""
    reload.apply("log level", ("log_level",), lambda s: logging.getLogger().setLevel(s.log_level))

    async def devices(s: CollectorSettings) -> None:
        await import_config_devices(collector.store, s.devices, int(time.time() * 1000))
        gone = {d.id for d in collector.settings.devices} - {d.id for d in s.devices}
        for device in sorted(gone):
            log.warning(
                "device %s left the config: it stays registered; `backhaul-collector devices revoke %s` stops it",
                device,
                device,
            )

    reload.apply("devices", ("devices",), devices)
    reload.apply("read tokens", ("read.tokens",), lambda s: collector.read_auth.configure(s.read))
    forwarding = collector.forwarding
    if forwarding is not None:

        def forward(s: CollectorSettings) -> None:
            by_name = {t.name: t for t in s.forward}
            running = {f.name for f in forwarding.forwarders}
            for name in sorted(running ^ by_name.keys()):
                # Each target has its own spool and task: added or removed at the next restart.
                log.warning("forward target %s added or removed: that needs a restart", name)
            for f in forwarding.forwarders:
                new = by_name.get(f.name)
                if new is None:
                    continue
                if any(getattr(new, k) != getattr(f.target, k) for k in FORWARD_FIELDS):
                    f.retarget(new)
                    log.info("forward %s: its target settings reloaded (%s)", f.name, new.url)
                for k in type(new).model_fields.keys() - set(FORWARD_FIELDS):
                    if getattr(new, k) != getattr(f.target, k):
                        log.warning("forward %s: %s changed: it needs a restart", f.name, k)

        reload.apply("forward targets", ("forward",), forward)
