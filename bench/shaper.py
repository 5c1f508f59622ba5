"""A bandwidth-limited TCP proxy on 127.0.0.1: a slow link between the agent and the collector.

All connections share one link per direction of ``rate`` bytes/s. Data crosses it in packets of at
most ``mtu`` bytes, each connection queueing one packet at a time, so connections take turns packet by
packet — the behaviour of a fair-queuing bottleneck such as Linux's default ``fq_codel``, not of a
deep FIFO buffer. Each packet also arrives ``delay`` seconds after it finished crossing the link (half
the round-trip time). Runs in its own thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class Link:
    """One direction of the link: packets reserve their transmission time in arrival order."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free_at = 0.0
        self.bytes = 0

    def reserve(self, n: int) -> float:
        """Monotonic time at which a packet of ``n`` bytes, queued now, has crossed the link."""
        start = max(time.monotonic(), self._free_at)
        self._free_at = start + n / self.rate
        self.bytes += n
        return self._free_at


class Shaper:
    """Args: listen port; target host and port; rate (bytes/s, each direction); one-way delay (s); mtu."""

    def __init__(self, port: int, target: tuple[str, int], rate: float, delay: float = 0.0, mtu: int = 1500) -> None:
        self.port = port
        self.target = target
        self.up = Link(rate)  # client -> target
        self.down = Link(rate)
        self.delay = delay
        self.mtu = mtu
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="shaper")
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> Shaper:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("shaper did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        # Abort the connections rather than cancel their handlers (asyncio's stream server logs a
        # cancelled handler as an error); the pumps then end by themselves.
        for w in self._writers:
            w.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.wait(tasks, timeout=5) if tasks else None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer, self.up), self._pump(up_reader, writer, self.down), return_exceptions=True
        )
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
        arrivals: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await arrivals.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if writer.is_closing():
                    return
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(self.mtu)
                if not data:
                    break
                done = link.reserve(len(data))
                await asyncio.sleep(max(0.0, done - time.monotonic()))  # on the wire: the next packet waits
                arrivals.put_nowait((done + self.delay, data))
        except OSError:
            pass
        finally:
            arrivals.put_nowait((0.0, b""))
            with contextlib.suppress(OSError, ConnectionError, RuntimeError):
                await delivering
