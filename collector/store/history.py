"""Per device, what the fleet page draws over the last day: a row every five minutes (``BUCKET_MS``).

Each stored batch adds to its device's current row: bytes and samples received, batches, and the
latest backlog the agent reported, how old the newest sample of the batch was on arrival (freshness),
the agent's clock minus the collector's (its ``sent_at_ms`` against the arrival: the skew plus the
transit time), and the link it came over (when the agent names one). Rows older than ``KEEP_MS`` go.
Both back ends keep the same table (embedded migration 9, PostgreSQL migration 6; the lead renumbers at merge).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Also kept aside for the fleet page (with the store's FLEET_SERIES): the supervised inference
# server's state and the proxy's time to first token (collector/fleet_ops.py).
INFERENCE_SERIES = (
    "backhaul_inference_up",
    "backhaul_inference_crash_loop",
    "backhaul_inference_restarts_total",
    "backhaul_proxy_time_to_first_token_seconds_bucket",
)
BUCKET_MS = 5 * 60 * 1000
KEEP_MS = 48 * 3600 * 1000


@dataclass(frozen=True)
class BatchNote:
    """One stored batch, as the history counts it.

    Args:
        device: who sent it.
        received_ms: when it arrived (the collector's clock).
        bytes: the request body's size.
        samples: samples stored from it.
        backlog_bytes: what the agent still had buffered (this batch included).
        newest_ms: the batch's newest sample timestamp (0: none).
        sent_at_ms: when the agent sent it, by its clock (0: unknown).
        link: the link it came over ("" when the agent does not say).
    """

    device: str
    received_ms: int
    bytes: int
    samples: int
    backlog_bytes: int
    newest_ms: int
    sent_at_ms: int
    link: str = ""

    @property
    def bucket_ms(self) -> int:
        return self.received_ms - self.received_ms % BUCKET_MS

    @property
    def lag_ms(self) -> int | None:
        return max(0, self.received_ms - self.newest_ms) if self.newest_ms else None

    @property
    def clock_offset_ms(self) -> int | None:
        return self.sent_at_ms - self.received_ms if self.sent_at_ms else None


@dataclass(frozen=True)
class HistoryRow:
    """Five minutes of one device (see the module docstring); None where no batch said."""

    bucket_ms: int
    bytes: int
    samples: int
    batches: int
    backlog_bytes: int
    lag_ms: int | None
    clock_offset_ms: int | None
    link: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


COLUMNS = "bucket_ms, bytes, samples, batches, backlog_bytes, lag_ms, clock_offset_ms, link"
