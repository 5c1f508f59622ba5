"""The device registry CLI against running collectors: tokens shown once and stored hashed, a rotated
token replaces the old one at once, a revoked device gets 403 at once from every instance."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from collector import cli
from collector.registry import import_config_devices
from collector.registry_settings import DeviceEntry
from collector.store.sqlite import SqliteStore
from tests.conftest import Running
from tests.fleet.batches import batch_body, headers, series_for
from tests.support import BIN, TOKEN, http


def devices_cli(config: Path, *args: str, subprocess_: bool = False) -> subprocess.CompletedProcess[str]:
    """``backhaul-collector devices ARGS --config CONFIG``: by default in this process (the same
    ``main``, without a second or so of interpreter start per call), or as the real console script."""
    argv = ["devices", *args, "--config", str(config)]
    if subprocess_:
        return subprocess.run([str(BIN / "backhaul-collector"), *argv], capture_output=True, text=True, timeout=60)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def upload(collector: Running, device: str, seq: int, token: str) -> tuple[int, str]:
    status, body, _ = http(
        "POST", f"{collector.url}/api/v1/batches", batch_body(device, seq, series_for(device, seq)), headers(token)
    )
    return status, body.decode()


@pytest.fixture(params=["sqlite", "postgres"])
def instances(request: pytest.FixtureRequest, start_collector: Callable[..., Running]) -> list[Running]:
    """One collector on SQLite, or two sharing a PostgreSQL database."""
    if request.param == "sqlite":
        return [start_collector(name="solo")]
    dsn = request.getfixturevalue("pg_dsn")
    store = {"backend": "postgres", "dsn": dsn, "pool_size": 2}
    return [start_collector(name=name, store=store) for name in ("a", "b")]


@pytest.mark.integration
def test_add_rotate_revoke_take_effect_at_once_everywhere(instances: list[Running]) -> None:
    first, last = instances[0], instances[-1]
    added = devices_cli(first.config, "add", "edge-9", subprocess_=True)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert len(token) >= 43 and "shown only this once" in added.stderr
    for seq, collector in enumerate(instances, start=1):
        assert upload(collector, "edge-9", seq, token)[0] == 200

    listing = devices_cli(last.config, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    entries = {e["device"]: e for e in json.loads(listing.stdout)}
    assert entries["edge-9"]["source"] == "cli" and not entries["edge-9"]["revoked"]
    assert entries["dev-1"]["source"] == "config"  # the [[devices]] of the config, imported at start
    assert entries["edge-9"]["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in listing.stdout

    rotated = devices_cli(last.config, "rotate", "edge-9")
    assert rotated.returncode == 0, rotated.stderr
    new_token = rotated.stdout.strip()
    assert new_token != token
    for seq, collector in enumerate(instances, start=10):
        status, reason = upload(collector, "edge-9", seq, token)
        assert (status, reason.strip()) == (401, "unknown token")
        assert upload(collector, "edge-9", seq, new_token)[0] == 200

    revoked = devices_cli(first.config, "revoke", "edge-9")
    assert revoked.returncode == 0, revoked.stderr
    # no waiting: the very next upload is refused, by every instance
    for seq, collector in enumerate(instances, start=20):
        status, reason = upload(collector, "edge-9", seq, new_token)
        assert status == 403 and "revoked" in reason
    # the others are unaffected
    assert upload(last, "dev-1", 1, TOKEN)[0] == 200

    assert devices_cli(first.config, "add", "edge-9").returncode == 1  # already registered
    assert devices_cli(first.config, "revoke", "edge-9").returncode == 1  # already revoked
    assert devices_cli(first.config, "rotate", "nobody").returncode == 1
    assert devices_cli(first.config, "add", "not a valid id!").returncode == 1


@pytest.mark.integration
def test_tokens_are_stored_only_as_digests(start_collector: Callable[..., Running], tmp_path: Path) -> None:
    solo = start_collector(name="solo")
    token = devices_cli(solo.config, "add", "edge-7").stdout.strip()
    solo.proc.stop()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("solo.db*"))
    assert token.encode() not in raw and TOKEN.encode() not in raw
    conn = sqlite3.connect(tmp_path / "solo.db")
    digests = {d for (d,) in conn.execute("SELECT token_sha256 FROM registry")}
    conn.close()
    assert hashlib.sha256(token.encode()).hexdigest() in digests


async def test_config_devices_bootstrap_the_registry(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db", "NORMAL")
    await store.open()
    try:
        await import_config_devices(store, [DeviceEntry(id="d1", token="one"), DeviceEntry(id="d2", token="two")], 1)
        assert (await store.registration(hashlib.sha256(b"one").hexdigest())).device == "d1"  # type: ignore[union-attr]
        # a changed config token is taken over while the config owns the device ...
        await import_config_devices(store, [DeviceEntry(id="d1", token="uno")], 2)
        assert await store.registration(hashlib.sha256(b"one").hexdigest()) is None
        assert (await store.registration(hashlib.sha256(b"uno").hexdigest())).device == "d1"  # type: ignore[union-attr]
        # ... but once the CLI rotated it, the registry owns it and the config is ignored
        await store.set_token("d2", hashlib.sha256(b"cli").hexdigest(), 3)
        await import_config_devices(store, [DeviceEntry(id="d2", token="dos")], 4)
        assert await store.registration(hashlib.sha256(b"dos").hexdigest()) is None
        # a revoked device stays revoked, whatever the config says
        await store.revoke("d1", 5)
        await import_config_devices(store, [DeviceEntry(id="d1", token="uno")], 6)
        assert (await store.registration(hashlib.sha256(b"uno").hexdigest())).revoked  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_postgres_registry_keeps_digests_only(pg_dsn: str) -> None:
    from collector.store.postgres import PostgresStore

    store = PostgresStore(pg_dsn, pool_size=1)
    await store.open()
    try:
        await import_config_devices(store, [DeviceEntry(id="d1", token="secret-one")], 1)
        conn = await asyncpg.connect(pg_dsn)
        try:
            row = await conn.fetchrow("SELECT * FROM registry")
        finally:
            await conn.close()
        assert row["token_sha256"] == hashlib.sha256(b"secret-one").hexdigest()
        assert "secret-one" not in json.dumps(dict(row))
    finally:
        await store.close()
