"""The collector's reload moves a forward target to its new URL and token, on a real collector process."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.fleet.batches import batch_body, headers, series_for
from tests.forward.conftest import ScriptedReceiver, scripted_receiver
from tests.support import TOKEN, Proc, collector_config, free_port, toml_text

__all__ = ["scripted_receiver"]  # the fixture, used below


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` (what the receivers recorded, the log) for up to 15 s."""
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_forward_target_moves_on_reload(
    tmp_path: Path, scripted_receiver: Callable[..., Awaitable[ScriptedReceiver]]
) -> None:
    a, b = await scripted_receiver(), await scripted_receiver()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    target = {"name": "tsdb", "url": a.url, "bearer_token": "token-for-a-123", "backoff_max": 1}
    config = collector_config(port, tmp_path / "collector.db", forward=[target])
    path = tmp_path / "collector.toml"
    path.write_text(toml_text(config))
    collector = Proc("backhaul-collector", path, tmp_path / "collector.log").start()
    try:
        await asyncio.to_thread(collector.wait_healthy, url)
        async with aiohttp.ClientSession() as session:

            async def upload(seq: int) -> None:
                body = batch_body("dev-1", seq, series_for("dev-1", seq, n_series=2, per_series=2))
                async with session.post(f"{url}/api/v1/batches", data=body, headers=headers(TOKEN)) as resp:
                    assert resp.status == 200, await resp.text()

            await upload(1)
            await until(lambda: len(a.received) >= 1, "the first batch forwarded to a")
            assert a.headers[0]["Authorization"] == "Bearer token-for-a-123"

            config["forward"][0].update(url=b.url, bearer_token="token-for-b-456")
            path.write_text(toml_text(config))
            collector.ps().send_signal(signal.SIGHUP)
            await until(lambda: "forward targets reloaded" in collector.log.read_text(), "the reload")
            await upload(2)
            await until(lambda: len(b.received) >= 1, "the second batch forwarded to b")
            assert b.headers[0]["Authorization"] == "Bearer token-for-b-456"
            assert len(a.received) == 1
    finally:
        await asyncio.to_thread(collector.stop)
