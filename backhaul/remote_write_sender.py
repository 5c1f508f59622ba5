"""Sending samples to a time-series database by Prometheus remote write 1.0: one sender for the agent
(``uplink.protocol = "remote_write"``) and for the collector's forwarding.

What is to be sent (one batch's chunks, a group of spooled entries) is decoded, given the device
label, and encoded once (float samples, then native histograms when the target takes them, metadata
per family in the first request) as snappy protobuf requests of at most ``max_samples_per_request`` samples
(:meth:`RemoteWriteSender.requests`, on a worker thread). The requests and how many of them were
acknowledged make an :class:`Outbox`; :meth:`RemoteWriteSender.send` posts them in order from the
first one not yet acknowledged, so a retry resumes there and nothing acknowledged is sent again.
Every answer is classified (:func:`backhaul.retry.verdict`): acknowledged, retry later, the target is
misconfigured (401/403/404, VictoriaMetrics' 400 "unsupported path"), or refused for good.

What to do about an answer is the caller's policy: the agent's uploader splits a refused batch and
finally drops the bad chunk; the collector's forwarder counts refused samples and passes over them.
Prometheus refuses samples for good with a 400 naming the reason (:data:`REJECTIONS`): "out of
bounds" for samples older than its head block, which a backfill after an outage produces.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

from backhaul.errors import PeerError
from backhaul.http import HttpClient, LinkHooks, Reply
from backhaul.retry import Verdict, verdict
from backhaul.tls import ClientTls
from backhaul.wire import remote_write as rw
from backhaul.wire.chunk import Codec, Contents
from backhaul.wire.histogram import HistogramSeriesMap
from backhaul.wire.metadata import MetadataMap
from backhaul.wire.series import Labels, SeriesMap, V, merge_into, sample_count, with_device_label

# What Prometheus (and compatible receivers) say when they refuse samples for good.
REJECTIONS = (
    ("out of bounds", "out_of_bounds"),
    ("too old", "too_old"),
    ("out of order", "out_of_order"),
    ("duplicate sample", "duplicate_timestamp"),
)
PROTOCOL_HEADERS = {
    "Content-Type": rw.CONTENT_TYPE,
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
# Relabelled label sets kept (a batch holds the same series as the last one; relabelling dominated).
_CACHED_LABELS = 1_000_000


def rejection_reason(status: int, text: str) -> str:
    """A short metric label for a refusal: Prometheus' reason when recognised, else ``http_<status>``."""
    lowered = text.lower()
    for needle, reason in REJECTIONS:
        if needle in lowered:
            return reason
    return f"http_{status}"


def chunk_series(frames: Iterable[bytes], limit: int) -> SeriesMap:
    """The samples of compressed chunk frames (each decompressing to at most ``limit`` bytes)."""
    codec = Codec()  # one per call: zstd objects must not be shared by two threads
    series: SeriesMap = {}
    for frame in frames:
        merge_into(series, codec.decode(frame, limit))
    return series


def chunk_contents(frames: Iterable[bytes], limit: int) -> Contents:
    """Everything compressed chunk frames hold: float samples, native histograms, metadata."""
    codec = Codec()
    out = Contents()
    for frame in frames:
        out.add(codec.decode_contents(frame, limit))
    return out


@dataclass
class Request:
    """One remote-write request body and the samples in it."""

    body: bytes
    samples: int


@dataclass
class Outbox:
    """The requests made of one thing to send (named by ``key``), and how many were acknowledged."""

    key: Hashable
    requests: list[Request]
    done: int = 0

    @property
    def finished(self) -> bool:
        return self.done >= len(self.requests)


@dataclass
class Answer:
    """One request's fate.

    ``kind`` is a short metric label: ``timeout``, ``connection``, ``http`` (no answer),
    ``http_<status>``, or for a refusal the reason (:func:`rejection_reason`). ``reply`` is None
    when no answer came; ``detail`` is for a log line.
    """

    verdict: Verdict
    kind: str
    detail: str
    request: Request
    seconds: float
    reply: Reply | None = None


class RemoteWriteSender:
    """Encodes samples as remote-write requests and posts them to one endpoint.

    Args:
        url: the endpoint, e.g. ``http://vm:8428/api/v1/write``.
        timeout: seconds per request, connect to last byte of the answer.
        user_agent: the ``User-Agent`` header.
        token: bearer token, or "" for none.
        headers: more request headers (e.g. ``X-Scope-OrgID``); the protocol's own and the token win.
        device_label: label naming the device added to every series (an existing one becomes
            ``exported_<label>``), or "" to send the series as they are.
        max_samples_per_request: at most this many samples per request (a histogram counts as one).
        tls: CA, client certificate and server name for an https URL (None: the system's CAs).
        native_histograms: the target takes native histograms (Prometheus with
            ``--enable-feature=native-histograms``, Mimir); otherwise they are left out (the caller
            counts them: :meth:`requests` says how many).
        link: the metered link the requests go over (the agent's uplink), None for none.
        source: the local address to bind connections to, asked per request (:class:`~backhaul.http.HttpClient`).
    """

    def __init__(
        self,
        url: str,
        timeout: float,
        user_agent: str,
        token: str = "",
        headers: Mapping[str, str] | None = None,
        device_label: str = "device_id",
        max_samples_per_request: int = 2000,
        tls: ClientTls | None = None,
        native_histograms: bool = False,
        link: LinkHooks | None = None,
        source: Callable[[], str | None] | None = None,
    ) -> None:
        self.url = url
        self.native_histograms = native_histograms
        self.client = HttpClient(
            timeout, user_agent, token, {**(headers or {}), **PROTOCOL_HEADERS}, tls=tls, link=link, source=source
        )
        self.device_label = device_label
        self.max_samples = max_samples_per_request
        self._relabelled: dict[tuple[Labels, str], Labels] = {}  # (labels, device) -> labels as sent

    def requests(self, parts: Iterable[tuple[str, SeriesMap | Contents]]) -> list[Request]:
        """Blocking (run it on a worker thread): ``(device, samples)`` parts, relabelled and merged, as
        requests in order; none when there are no samples (a batch that only reports losses).
        Native histograms are sent only to a target that takes them (see :meth:`left_out`)."""
        series: SeriesMap = {}
        histograms: HistogramSeriesMap = {}
        metadata: MetadataMap = {}
        for device, part in parts:
            if isinstance(part, Contents):
                self._add(series, part.series, device)
                if self.native_histograms:
                    self._add(histograms, part.histograms, device)
                metadata.update(part.metadata)
            else:
                self._add(series, part, device)
        if not series and not histograms:
            return []
        size = self.max_samples
        bodies = rw.encode(series, size, histograms, metadata)
        total = sample_count(series) + sample_count(histograms)
        counts = [size] * (len(bodies) - 1) + [total - size * (len(bodies) - 1)]
        return [Request(body, n) for body, n in zip(bodies, counts, strict=True)]

    def left_out(self, parts: Iterable[SeriesMap | Contents]) -> int:
        """The native-histogram samples of ``parts`` that :meth:`requests` leaves out for this target."""
        if self.native_histograms:
            return 0
        return sum(sample_count(p.histograms) for p in parts if isinstance(p, Contents))

    def _add(
        self,
        series: dict[Labels, tuple[list[int], list[V]]],
        part: dict[Labels, tuple[list[int], list[V]]],
        device: str,
    ) -> None:
        if not self.device_label:
            merge_into(series, part)
            return
        cache = self._relabelled
        if len(cache) > _CACHED_LABELS:
            cache.clear()
        for labels, samples in part.items():
            key = cache.get((labels, device))
            if key is None:
                (key,) = with_device_label({labels: ([], [])}, self.device_label, device)
                cache[(labels, device)] = key
            merge_into(series, {key: samples})

    async def post(self, request: Request) -> Answer:
        """Post one request and classify what came back (never raises for a peer's failure)."""
        started = time.perf_counter()
        try:
            reply = await self.client.post(self.url, request.body)
        except PeerError as exc:
            return Answer(Verdict.RETRY, exc.kind, exc.detail, request, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        text = reply.text.strip()
        found = verdict(reply.status, text)
        kind = rejection_reason(reply.status, text) if found is Verdict.REFUSED else f"http_{reply.status}"
        return Answer(found, kind, f"answered {reply.status}: {text[:300]}", request, seconds, reply)

    async def send(
        self,
        outbox: Outbox,
        pass_over_refused: bool = False,
        on_answer: Callable[[Answer], Awaitable[None]] | None = None,
    ) -> Answer | None:
        """Post the outbox's requests in order, from the first one not acknowledged.

        An acknowledged request (and, with ``pass_over_refused``, a refused one) moves ``outbox.done``
        past it; then ``on_answer`` sees the answer. Stops at the first answer that did not move it
        and returns that; returns the last answer once all are done (None: nothing was to be sent).
        """
        answer: Answer | None = None
        while not outbox.finished:
            answer = await self.post(outbox.requests[outbox.done])
            moves = answer.verdict is Verdict.OK or (pass_over_refused and answer.verdict is Verdict.REFUSED)
            if moves:
                outbox.done += 1
            if on_answer is not None:
                await on_answer(answer)
            if not moves:
                return answer
        return answer

    async def close(self) -> None:
        await self.client.close()
