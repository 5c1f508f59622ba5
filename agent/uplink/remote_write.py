"""Upload straight to a time-series database by plain Prometheus remote write 1.0 (no collector needed).

The uploader seals and retries batches exactly as it does for a collector; this transport turns each
batch into remote-write requests (:class:`~backhaul.remote_write_sender.RemoteWriteSender`, shared with
the collector's forwarding) and answers the uploader with one :class:`Reply` for the whole batch: 2xx
only once *every* request of it was acknowledged, otherwise the first failing request's answer. So the
buffer deletes a batch only when all of it is in the database, and a retry resumes at the first
request not yet acknowledged.

A wrong URL (404, or VictoriaMetrics' 400 "unsupported path", which reads as 404 here) keeps the data
and is retried slowly, like a wrong token. Any other 4xx but 408/429 makes the uploader split the batch
and finally drop (and count, as ``backhaul_uplink_rejected_samples_total``) a chunk the database
refuses — e.g. a stock Prometheus answering 400 "out of bounds" to samples older than its head block
(see docs/forwarding.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from agent.uplink.settings import UplinkSettings
from backhaul import __version__
from backhaul.errors import PeerError
from backhaul.http import LinkHooks, Reply
from backhaul.remote_write_sender import Outbox, RemoteWriteSender, Request, chunk_contents
from backhaul.retry import Verdict
from backhaul.tls import ClientTls
from backhaul.wire.batch import BatchHeader

log = logging.getLogger(__name__)

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
        tls: the uplink's TLS settings for an https URL (None: the system's CAs).
        settings: the ``[uplink]`` settings, for ``native_histograms`` (the database takes them;
            otherwise they are left out, and each batch that had some says how many in the log).
        link: the metered link the requests go over, None for none.
        source: the local address to bind connections to, asked per request (None: never bound).
    """

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float,
        device_id: str,
        device_label: str = "device_id",
        max_samples_per_request: int = 2000,
        tls: ClientTls | None = None,
        settings: UplinkSettings | None = None,
        link: LinkHooks | None = None,
        source: Callable[[], str | None] | None = None,
    ) -> None:
        self._sender = RemoteWriteSender(
            url,
            timeout,
            f"backhaul-agent/{__version__}",
            token,
            device_label=device_label,
            max_samples_per_request=max_samples_per_request,
            tls=tls,
            native_histograms=settings.native_histograms if settings is not None else False,
            link=link,
            source=source,
        )
        self._device_id = device_id
        # The batch being sent (by (buffer_id, seq)), its requests and how many were acknowledged:
        # a retry of the same batch resumes there instead of sending everything again.
        self._outbox: Outbox | None = None

    def set_token(self, token: str) -> None:
        """A reload: the next requests carry ``token``."""
        self._sender.client.set_token(token)

    async def send(self, header: BatchHeader, frames: list[bytes]) -> Reply:
        key = (header.buffer_id, header.seq)
        if self._outbox is None or self._outbox.key != key:
            self._outbox = Outbox(key, await asyncio.to_thread(self._requests, frames))
        outbox = self._outbox
        answer = await self._sender.send(outbox)
        if answer is None:  # a batch that only reports losses: nothing for a database
            self._outbox = None
            return Reply(204, {}, "")
        if answer.reply is None:
            raise PeerError(answer.kind, answer.detail)
        if not outbox.finished:
            if answer.verdict is Verdict.MISCONFIGURED and answer.reply.status == 400:
                # VictoriaMetrics' answer to a wrong path: a 400 would have the uploader drop the
                # batch as malformed; it is a wrong URL, so say 404 (keep it, retry slowly).
                return replace(answer.reply, status=404)
            return answer.reply
        self._outbox = None
        return replace(answer.reply, sent_bytes=sum(len(r.body) for r in outbox.requests))

    def _requests(self, frames: list[bytes]) -> list[Request]:
        """On a worker thread: the batch's chunks as remote-write requests."""
        contents = chunk_contents(frames, MAX_CHUNK_BYTES)
        left_out = self._sender.left_out([contents])
        if left_out:
            log.warning(
                "remote write: %d native-histogram samples left out (uplink.native_histograms is off)", left_out
            )
        return self._sender.requests([(self._device_id, contents)])

    async def close(self) -> None:
        await self._sender.close()
