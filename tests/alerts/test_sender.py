"""The alert sender against a real HTTP server: retried until acknowledged, a refused message dropped
and counted, a wrong token kept, fallbacks in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.alerts.channels import Channel, CommandChannel, HttpChannel
from agent.alerts.metrics import AlertMetrics
from agent.alerts.queue import AlertQueue
from agent.alerts.sender import AlertSender
from agent.alerts.settings import CommandChannelSettings
from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage
from tests.support import free_port


class Peer:
    """A real HTTP server answering alert POSTs with the statuses queued in ``answers``."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.received: list[AlertMessage] = []
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(wire.decode(await request.read()))
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    async def __aenter__(self) -> Peer:
        app = web.Application()
        app.router.add_post("/api/v1/alerts", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def deliver(tmp_path: Path, channels: list[Channel], messages: int = 1) -> tuple[CollectorRegistry, AlertQueue]:
    registry = CollectorRegistry()
    metrics = AlertMetrics(registry)
    queue = AlertQueue(tmp_path / "q.db", 100)
    await queue.call(queue.open)
    msgs = [AlertMessage("dev-1", f"R{i}", "firing", "warning", 1.0, 1000 + i, 0, i) for i in range(messages)]
    await queue.call(queue.enqueue, msgs, [])
    sender = AlertSender(queue, channels, metrics, 0.01, 0.05)
    task = asyncio.create_task(sender.run())
    try:
        for _ in range(500):
            if queue.length == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for channel in channels:
            await channel.close()
        await queue.call(queue.close)
        await queue.db.aclose()
    return registry, queue


async def test_retried_through_5xx_and_a_wrong_token_until_acknowledged(tmp_path: Path) -> None:
    async with Peer([503, 401, 500]) as peer:
        http = HttpChannel(f"http://127.0.0.1:{peer.port}/api/v1/alerts", "t", 2)
        _, queue = await deliver(tmp_path, [http])
    assert [m.rule for m in peer.received] == ["R0"] * 4  # three failures, then the 200
    assert queue.length == 0


async def test_a_refused_message_is_dropped_and_counted_and_the_next_one_goes(tmp_path: Path) -> None:
    async with Peer([400]) as peer:
        http = HttpChannel(f"http://127.0.0.1:{peer.port}/api/v1/alerts", "t", 2)
        registry, queue = await deliver(tmp_path, [http], messages=2)
    assert [m.rule for m in peer.received] == ["R0", "R1"]
    assert registry.get_sample_value("backhaul_alerts_dropped_total", {"reason": "refused"}) == 1
    assert registry.get_sample_value("backhaul_alerts_sent_total", {"channel": "http"}) == 1
    assert queue.length == 0


async def test_fallback_order_the_second_channel_takes_it_while_the_first_is_down(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox.bin"
    dead = HttpChannel(f"http://127.0.0.1:{free_port()}/api/v1/alerts", "t", 1)  # nothing listens
    keep = CommandChannel(CommandChannelSettings(argv=["/bin/sh", "-c", f"cat > {inbox}"]))
    registry, _ = await deliver(tmp_path, [dead, keep])
    assert wire.decode(inbox.read_bytes()).rule == "R0"
    assert registry.get_sample_value("backhaul_alerts_failures_total", {"channel": "http", "reason": "connection"}) == 1
    assert registry.get_sample_value("backhaul_alerts_sent_total", {"channel": "command"}) == 1
