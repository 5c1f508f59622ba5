"""One digest for a device token, whether it comes from ``[[devices]]``, the CLI or a request header."""

from __future__ import annotations

import hashlib
from pathlib import Path

from collector.auth import DeviceAuth
from collector.registry import import_config_devices
from collector.registry_settings import DeviceEntry
from collector.store.sqlite import SqliteStore
from collector.tokens import token_digest


def test_the_digest_ignores_surrounding_whitespace() -> None:
    expected = hashlib.sha256(b"s3cret").hexdigest()
    assert token_digest("s3cret") == token_digest("  s3cret\t") == expected
    assert DeviceEntry(id="d", token=" s3cret ").digest() == expected
    assert DeviceEntry(id="d", token_sha256=expected).digest() == expected


async def test_a_config_token_with_spaces_authenticates(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db", "NORMAL")
    await store.open()
    try:
        await import_config_devices(store, [DeviceEntry(id="d1", token=" s3cret ")], 1)
        # HTTP drops the spaces around a header value: the token arrives bare
        assert await DeviceAuth(store).device_for("Bearer s3cret") == "d1"
    finally:
        await store.close()
