"""Upload straight to a time-series database by plain Prometheus remote write 1.0 (no collector needed).

The uploader seals and retries batches exactly as it does for a collector; this transport turns each
batch into remote-write requests (snappy protobuf, at most ``max_samples_per_request`` samples each)
and answers the uploader with one :class:`Reply` for the whole batch: 2xx only once *every* request of
it was acknowledged, otherwise the first failing request's answer. So the buffer deletes a batch only
when all of it is in the database, and a retry resumes at the first request not yet acknowledged.

A wrong URL (404, or VictoriaMetrics' 400 "unsupported path") keeps the data and is retried slowly, like
a wrong token. Any other 4xx but 408/429 makes the uploader split the batch and finally drop (and count, as
``backhaul_uplink_rejected_samples_total``) a chunk the database refuses — e.g. a stock Prometheus
answering 400 "out of bounds" to samples older than its head block (see docs/forwarding.md).
"""

from __future__ import annotations

import asyncio

import aiohttp

from agent.uplink.transport import Reply, _short
from backhaul import __version__
from backhaul.errors import PeerError
from backhaul.wire import batch as batchfmt
from backhaul.wire import remote_write as rw
from backhaul.wire.chunk import Codec
from backhaul.wire.series import SeriesMap, merge_into, with_device_label

# What VictoriaMetrics says (with a 400) when the URL's path is wrong.
UNSUPPORTED_PATH = "unsupported path requested"
# The agent decodes only chunks it wrote itself; the cap is a guard, not a policy.
MAX_CHUNK_BYTES = 256 * 1024**2


class RemoteWriteTransport:
    """Sends batch contents as remote-write requests to ``url``.

    Args:
        url: the database's remote-write endpoint, e.g. ``http://vm:8428/api/v1/write``.
        token: bearer token, or "" for none.
        timeout: seconds per request, connect to last byte of the reply.
        device_id: this device, added to every series as ``device_label`` (unless that is "").
        device_label: label name, "device_id" by default, as the collector would add it.
        max_samples_per_request: split a batch into requests of at most this many samples.
    """

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float,
        device_id: str,
        device_label: str = "device_id",
        max_samples_per_request: int = 2000,
    ) -> None:
        self._url = url
        self._headers = {
            "Content-Type": rw.CONTENT_TYPE,
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": f"backhaul-agent/{__version__}",
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._device_id = device_id
        self._device_label = device_label
        self._max_samples = max_samples_per_request
        self._session: aiohttp.ClientSession | None = None
        # The batch being sent, its requests and how many of them were acknowledged: a retry of the
        # same (buffer_id, seq) resumes there instead of sending everything again.
        self._current: tuple[str, int] | None = None
        self._bodies: list[bytes] = []
        self._done = 0
        self.requests_sent = 0

    async def send(self, body: bytes) -> Reply:
        header, frames = batchfmt.decode(body)
        key = (header.buffer_id, header.seq)
        if key != self._current:
            self._bodies = await asyncio.to_thread(self._requests, frames)
            self._current, self._done = key, 0
        reply = Reply(204, {}, "")
        while self._done < len(self._bodies):
            reply = await self._post(self._bodies[self._done])
            if not 200 <= reply.status < 300:
                return reply
            self._done += 1
        self._current, self._bodies = None, []
        return reply

    def _requests(self, frames: list[bytes]) -> list[bytes]:
        """On a worker thread: decode the batch's chunks and encode them as remote-write bodies."""
        codec = Codec()
        series: SeriesMap = {}
        for frame in frames:
            merge_into(series, codec.decode(frame, MAX_CHUNK_BYTES))
        if not series:  # a batch that only reports losses: nothing for a database
            return []
        if self._device_label:
            series = with_device_label(series, self._device_label, self._device_id)
        return rw.encode(series, self._max_samples)

    async def _post(self, body: bytes) -> Reply:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as resp:
                text = (await resp.content.read(4096)).decode("utf-8", "replace")
                self.requests_sent += 1
                status = resp.status
                if status == 400 and UNSUPPORTED_PATH in text:
                    # VictoriaMetrics answers a wrong path with 400, which would make the uploader drop
                    # the batch as malformed: it is a wrong URL, so say 404 (keep it, retry slowly).
                    status = 404
                return Reply(status, dict(resp.headers), text)
        except TimeoutError as exc:
            raise PeerError("timeout", f"no complete answer within {self._timeout.total} s") from exc
        except aiohttp.ClientConnectionError as exc:
            raise PeerError("connection", _short(exc)) from exc
        except aiohttp.ClientError as exc:
            raise PeerError("http", _short(exc)) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
