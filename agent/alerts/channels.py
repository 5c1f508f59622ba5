"""Ways an encoded alert message leaves the device: HTTP to the collector, MQTT (agent.alerts.mqtt), or a
program.

Each channel's ``send`` returns once the peer acknowledged the message, raises
:class:`~backhaul.errors.Refused` when the peer says the message itself is bad (drop it: retrying cannot
help), and :class:`~backhaul.errors.PeerError` for anything transient (retry later, or try the next
channel)::

    PeerError         no acknowledgement: connection, timeout, 5xx, broker gone, program failed
    └── Refused       the peer rejects the message (HTTP 4xx other than 401/403/408/429)

Every channel owns its connection; none shares a pool or a lock with the bulk uploader, so an alert
never queues behind a batch upload.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Protocol

from yarl import URL

from agent.alerts.budget import AlertBudget
from agent.alerts.settings import CommandChannelSettings, HttpChannelSettings
from backhaul import __version__
from backhaul.errors import PeerError, Refused
from backhaul.http import HttpClient
from backhaul.tls import ClientTls
from backhaul.wire.alert import CONTENT_TYPE

log = logging.getLogger(__name__)


# Which link an alert goes over (``[[uplink.links]]``): the first that is up, alerts_only ones
# included, as (name, the local address to bind to or None); None when no link is up. Asked per message.
Via = Callable[[], tuple[str, str | None] | None]


class Channel(Protocol):
    name: str

    async def send(self, body: bytes) -> None: ...

    async def close(self) -> None: ...


class HttpChannel:
    """POSTs the message to the collector's ``/api/v1/alerts`` with the device's bearer token.

    Args: url, token, timeout (seconds), tls (the uplink's TLS settings, for an https URL); the
    lane's byte budget (None: none); ``via``: the link to send over (None: the kernel's route).
    """

    name = "http"

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float,
        tls: ClientTls | None = None,
        budget: AlertBudget | None = None,
        via: Via | None = None,
    ) -> None:
        self._url = url
        self._via = via
        self._address: str | None = None  # the chosen link's source address, for the request being sent
        # Its own client and connection pool: never behind a batch upload's connection, never paced.
        headers = {"Content-Type": CONTENT_TYPE}
        agent = f"backhaul-agent/{__version__}"
        source = (lambda: self._address) if via is not None else None
        self._client = HttpClient(timeout, agent, token, headers, tls=tls, link=budget, source=source)

    @classmethod
    def from_settings(
        cls,
        s: HttpChannelSettings,
        uplink_url: str | None,
        uplink_token: str,
        tls: ClientTls | None = None,
        budget: AlertBudget | None = None,
        via: Via | None = None,
    ) -> HttpChannel:
        if s.url is not None:
            url = str(s.url)
        elif uplink_url is not None:
            url = str(URL(uplink_url).with_path("/api/v1/alerts"))
        else:
            raise ValueError("alerts: an http channel needs a url (or uplink.url)")
        token = s.token.get_secret_value() if s.token is not None else uplink_token
        return cls(url, token, s.timeout.total_seconds(), tls, budget, via)

    async def send(self, body: bytes) -> None:
        if self._via is not None:
            route = self._via()
            if route is None:
                raise PeerError("connection", "no link is up (uplink.links)")
            self._address = route[1]
        reply = await self._client.post(self._url, body)
        if reply.ok:
            return
        text = reply.text.strip()[:200]
        # 401/403 are a configuration error (token), not a bad message: keep it and retry, like batches.
        if 400 <= reply.status < 500 and reply.status not in (401, 403, 408, 429):
            raise Refused(f"http_{reply.status}", text)
        raise PeerError(f"http_{reply.status}", text)

    async def close(self) -> None:
        await self._client.close()


class CommandChannel:
    """Runs a program with the message (stdin and/or ``{base64}`` in an argument); exit 0 acknowledges.

    Args: settings; the lane's byte budget, charged the message's size (None: none).
    """

    name = "command"

    def __init__(self, settings: CommandChannelSettings, budget: AlertBudget | None = None) -> None:
        self._budget = budget
        self._s = settings
        self._timeout = settings.timeout.total_seconds()

    async def send(self, body: bytes) -> None:
        if self._budget is not None:
            if await self._budget.admit(len(body)) is not None:
                raise PeerError("blocked", "alerts.daily_bytes spent (budget)")
            self._budget.count(len(body))
        encoded = base64.b64encode(body).decode()
        argv = [a.replace("{base64}", encoded) for a in self._s.argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if self._s.stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise PeerError("command", f"cannot run {argv[0]}: {exc}") from exc
        try:
            _, err = await asyncio.wait_for(proc.communicate(body if self._s.stdin else None), self._timeout)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise PeerError("timeout", f"{argv[0]} took longer than {self._timeout} s") from exc
        if proc.returncode != 0:
            detail = err.decode(errors="replace")[:200]
            raise PeerError("command", f"{argv[0]} exited with {proc.returncode}: {detail}")

    async def close(self) -> None:
        return None
