"""The device registry: which devices may upload, with which token. It lives in the store, so every
collector instance and the ``devices`` CLI see the same one.

    backhaul-collector devices add ID     --config collector.toml   # prints the new token, once
    backhaul-collector devices list       --config collector.toml   # [--json]
    backhaul-collector devices rotate ID  --config collector.toml   # prints the new token; the old one stops working
    backhaul-collector devices revoke ID  --config collector.toml   # the device gets 403 from now on

Tokens are 32 random bytes (URL-safe base64); only their SHA-256 is stored.

``[[devices]]`` in the config file still work, as a bootstrap: at start each one is added to the
registry (source "config") unless its id is there already. A config token that changed is taken
over while the registry entry still comes from the config; once the CLI rotated or revoked a
device, the registry owns it and the config entry is ignored (with a warning).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from backhaul.errors import ConfigError, StoreError
from backhaul.settings import load
from backhaul.wire.batch import DEVICE_ID_PATTERN
from collector.config import CollectorSettings
from collector.registry_settings import DeviceEntry
from collector.store import Registration, Store, make_store
from collector.tokens import token_digest

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_CONFIG = 2


def new_token() -> str:
    return secrets.token_urlsafe(32)


async def import_config_devices(store: Store, devices: Iterable[DeviceEntry], now_ms: int) -> None:
    """Bring ``[[devices]]`` from the config into the registry (see the module docstring)."""
    known = {r.device: r for r in await store.registrations()}
    for entry in devices:
        digest = entry.digest()
        found = known.get(entry.id)
        if found is None:
            if not await store.register(entry.id, digest, now_ms, source="config"):
                # Another instance starting with the same config may have registered it just now.
                again = {r.device: r for r in await store.registrations()}.get(entry.id)
                if again is None or again.token_sha256 != digest:
                    log.warning("device %s from the config was not registered: its token or id is taken", entry.id)
        elif found.token_sha256 != digest:
            if found.source == "config" and not found.revoked:
                await store.set_token(entry.id, digest, now_ms, source="config")
                log.info("device %s: token taken over from the config", entry.id)
            else:
                log.warning(
                    "device %s: the config's token is ignored, the registry manages it (rotated or revoked by the CLI)",
                    entry.id,
                )
        if found is not None and found.revoked:
            log.warning("device %s is in the config but revoked in the registry: it gets 403", entry.id)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _row(r: Registration) -> str:
    state = "revoked" if r.revoked else "active"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_ms / 1000))
    return f"{r.device:<32} {state:<8} {r.source:<7} {when}Z"


async def _run(args: argparse.Namespace, settings: CollectorSettings) -> int:
    store = make_store(settings.store, settings.device_label)
    await store.open()
    try:
        if args.action == "list":
            regs = await store.registrations()
            if args.json:
                print(json.dumps([{**asdict(r), "revoked": r.revoked} for r in regs], indent=1))
            else:
                print(f"{'DEVICE':<32} {'STATE':<8} {'SOURCE':<7} ADDED")
                print("\n".join(_row(r) for r in regs))
            return 0
        device: str = args.device
        if args.action == "revoke":
            if not await store.revoke(device, _now_ms()):
                print(f"devices: {device!r} is not registered or already revoked", file=sys.stderr)
                return EXIT_FAILED
            print(f"device {device} revoked: its uploads are refused (403) from now on", file=sys.stderr)
            return 0
        token = new_token()
        if args.action == "add":
            if not re.match(DEVICE_ID_PATTERN, device):
                print(f"devices: {device!r} is not a valid device id", file=sys.stderr)
                return EXIT_FAILED
            done = await store.register(device, token_digest(token), _now_ms())
            what = "added"
        else:
            done = await store.set_token(device, token_digest(token), _now_ms())
            what = "has a new token; the old one no longer works"
        if not done:
            problem = "is already registered" if args.action == "add" else "is not registered"
            print(f"devices: {device!r} {problem}", file=sys.stderr)
            return EXIT_FAILED
        print(f"device {device} {what}. Its token, shown only this once (put it in the agent's uplink.token):",
              file=sys.stderr)  # fmt: skip
        print(token)  # alone on stdout, for scripts
        return 0
    finally:
        await store.close()


def main(prog: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{prog} devices", description="Manage the device registry.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="the collector's TOML file (it names the store)")
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="list registered devices", parents=[common])
    listing.add_argument("--json", action="store_true", help="as JSON")
    for name, text in (
        ("add", "register a device and print its new token"),
        ("rotate", "give a device a new token and print it"),
        ("revoke", "refuse a device's uploads from now on"),
    ):
        sub.add_parser(name, help=text, parents=[common]).add_argument("device")
    args = parser.parse_args(argv)
    try:
        settings = load(CollectorSettings, args.config)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(_run(args, settings))
    except StoreError as exc:
        print(f"{prog}: store: {exc}", file=sys.stderr)
        return EXIT_FAILED
