"""The upload envelope: one HTTP request body carrying a device's chunks to the collector.

    magic       b"BHB"      3 bytes
    version     u8          1
    header_len  u32, then a UTF-8 JSON object (see :class:`BatchHeader`)
    chunks      the zstd frames, back to back, with the lengths listed in the header

Chunks travel exactly as the agent stored them (already zstd-compressed), so draining a backlog
costs no re-encoding. ``(device, buffer_id, seq)`` names a batch for good: the agent re-sends a batch
it has no answer for with the same identity and contents, and the collector stores each identity once.
``buffer_id`` changes when the agent's buffer database is created anew (first start, or a database
quarantined as corrupt), so a fresh sequence can never collide with an old one.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, field, fields

from backhaul.wire.errors import WireError

MAGIC = b"BHB"
VERSION = 1
CONTENT_TYPE = "application/x-backhaul-batch"
_PREFIX = struct.Struct("<3sBI")
MAX_HEADER_BYTES = 1 << 20
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


@dataclass
class BatchHeader:
    """What a batch says about itself.

    Args:
        device: the sending device's id.
        buffer_id: the id of the agent's buffer database (a new one restarts ``seq``).
        seq: per-buffer sequence number, increasing, never reused.
        sent_at_ms: the agent's wall clock when the batch was first sealed.
        samples: samples in the chunks, for a cheap check at the collector.
        chunk_sizes: compressed size of each chunk, in order.
        evicted_samples: samples the agent evicted to stay in its byte budget, ever (cumulative).
        expired_samples: samples the agent dropped for age, ever (cumulative).
        dropped_samples: samples the agent refused at ingest (bad timestamps, labels ...) or the
            collector refused as malformed, ever.
        corrupt_samples: samples lost to a damaged buffer file or chunk, ever.
        agent_version: the agent's software version.
        backlog_bytes: compressed bytes waiting in the agent's buffer when the batch was sent (this
            batch included); optional, 0 from agents that predate it.
        backlog_oldest_ms: wall-clock timestamp (ms) of the oldest sample still in the agent's buffer,
            0 when empty or unknown (older agents).
        summary_ms: 0 for full data; else the batch is a summary (``uplink.when_short = "summarise"``):
            for each series, the real sample at the end of every interval of this many ms. Its samples
            arrive again with the full data later; the collector keeps each sample once.
        uplink: the agent's link at sending, for the fleet page (empty from older agents; see
            ``UPLINK_FIELDS``): bytes spent this day and month and the budgets (0: none), why bulk
            uploads were held just before this batch ("" none, "window", "budget", "cap", "down"), when
            the window it was sent in ends and when the next one opens (wall-clock ms, 0: no windows),
            and the name of the link it went over ("link").
        corrected_samples: samples whose timestamps the agent corrected because its clock was wrong
            when it stamped them (docs/clock.md), ever (cumulative per buffer); 0 from older agents.
    """

    device: str
    buffer_id: str
    seq: int
    sent_at_ms: int
    samples: int = 0
    chunk_sizes: list[int] = field(default_factory=list)
    evicted_samples: int = 0
    expired_samples: int = 0
    dropped_samples: int = 0
    corrupt_samples: int = 0
    agent_version: str = ""
    backlog_bytes: int = 0
    backlog_oldest_ms: int = 0
    # Per chunk: "" when the chunk carries its series table, else the digest of the table the
    # collector already keeps (the chunk was sent without it). Empty: every chunk carries its table,
    # and the collector does not keep them. Only sent to a collector that announced TABLES_HEADER.
    table_refs: list[str] = field(default_factory=list)
    summary_ms: int = 0
    uplink: dict[str, int | str] = field(default_factory=dict)
    corrected_samples: int = 0


_FIELDS = frozenset(f.name for f in fields(BatchHeader))
# What an agent reports it lost, by cause: one cumulative header field per cause, ``<cause>_samples``.
LOSS_CAUSES = ("evicted", "expired", "dropped", "corrupt")
LOSS_FIELDS = tuple(f"{cause}_samples" for cause in LOSS_CAUSES)
MAX_INT = 2**63
_TABLE_REF = re.compile(r"^[0-9a-f]{32}$")
# Reply header of a collector that keeps series tables, so chunks may be sent by table reference.
TABLES_HEADER = "X-Backhaul-Series-Tables"
# The integer fields of ``BatchHeader.uplink``; its text fields are "blocked", one of BLOCK_REASONS,
# and "link", the name of the link the batch went over (``[[uplink.links]]``, "uplink" for the one
# implicit link).
UPLINK_FIELDS = ("spent_day", "budget_day", "spent_month", "budget_month", "window_ends_ms", "next_window_ms")
BLOCK_REASONS = ("", "window", "budget", "cap", "down")
_REASON = re.compile(r"^[a-z_]{0,32}$")
_LINK = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def encode(header: BatchHeader, chunks: list[bytes]) -> bytes:
    header.chunk_sizes = [len(c) for c in chunks]
    head = json.dumps(asdict(header), separators=(",", ":")).encode()
    return b"".join((_PREFIX.pack(MAGIC, VERSION, len(head)), head, *chunks))


def decode(body: bytes) -> tuple[BatchHeader, list[bytes]]:
    """Split a batch body into its header and its (still compressed) chunks."""
    if len(body) < _PREFIX.size:
        raise WireError("batch: body shorter than the batch prefix")
    magic, version, head_len = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise WireError(f"batch: bad magic {magic!r}")
    if version != VERSION:
        raise WireError(f"batch: unsupported version {version} (this build reads {VERSION})")
    if head_len > MAX_HEADER_BYTES or _PREFIX.size + head_len > len(body):
        raise WireError("batch: header length runs past the body")
    try:
        raw = json.loads(body[_PREFIX.size : _PREFIX.size + head_len])
        # Fields this build does not know are informational additions from a newer agent: ignored, so
        # that agents can be upgraded before their collector. A change that old collectors must not
        # misread bumps VERSION instead.
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        header = BatchHeader(**{k: v for k, v in raw.items() if k in _FIELDS})
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise WireError(f"batch: header is not a valid batch header ({exc})") from exc
    _check_header(header)
    pos = _PREFIX.size + head_len
    if pos + sum(header.chunk_sizes) != len(body):
        raise WireError(f"batch: chunk sizes add up to {sum(header.chunk_sizes)} bytes, body holds {len(body) - pos}")
    chunks = []
    for size in header.chunk_sizes:
        chunks.append(body[pos : pos + size])
        pos += size
    return header, chunks


def _check_header(h: BatchHeader) -> None:
    if not isinstance(h.device, str) or not _DEVICE_ID.match(h.device):
        raise WireError("batch: header field 'device' is not a valid device id")
    if not isinstance(h.buffer_id, str) or not 1 <= len(h.buffer_id) <= 64 or not h.buffer_id.isprintable():
        raise WireError("batch: header field 'buffer_id' must be a printable string of 1 to 64 characters")
    for name in (
        "seq",
        "sent_at_ms",
        "samples",
        *LOSS_FIELDS,
        "backlog_bytes",
        "backlog_oldest_ms",
        "summary_ms",
        "corrected_samples",
    ):
        value = getattr(h, name)
        # Below 2**63: every one of them reaches a signed 64-bit database column.
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_INT:
            raise WireError(f"batch: header field {name!r} must be an integer from 0 to 2**63-1")
    if not isinstance(h.agent_version, str) or len(h.agent_version) > 64 or not h.agent_version.isprintable():
        raise WireError("batch: header field 'agent_version' must be a printable string of at most 64 characters")
    sizes = h.chunk_sizes
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise WireError("batch: header field 'chunk_sizes' must list positive integers")
    refs = h.table_refs
    if not isinstance(refs, list) or (refs and len(refs) != len(sizes)):
        raise WireError("batch: header field 'table_refs' must be empty or name one table (or \"\") per chunk")
    if not all(isinstance(r, str) and (r == "" or _TABLE_REF.match(r)) for r in refs):
        raise WireError("batch: header field 'table_refs' holds something that is not a table digest")
    _check_uplink(h.uplink)


def _check_uplink(uplink: object) -> None:
    # Fields and reasons this build does not know come from a newer agent: allowed if they look sane
    # (the collector keeps only the fields it knows), as for the header's own fields.
    if not isinstance(uplink, dict) or len(uplink) > 32:
        raise WireError("batch: header field 'uplink' must be an object of at most 32 fields")
    for name, value in uplink.items():
        if name == "blocked":
            if not isinstance(value, str) or not _REASON.match(value):
                raise WireError("batch: header field 'uplink.blocked' must be a short reason such as 'window'")
        elif name == "link":
            if not isinstance(value, str) or not _LINK.match(value):
                raise WireError("batch: header field 'uplink.link' must be a link name (1-32 of A-Z a-z 0-9 _ . -)")
        elif not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_INT:
            raise WireError(f"batch: header field 'uplink.{str(name)[:40]}' must be an integer from 0 to 2**63-1")
