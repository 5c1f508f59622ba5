"""What both store back ends hand out and agree on: the records, how a series is named at the
collector, how values are kept, and how an alert instance's state moves.

Nothing here touches a database, so the endpoints, the metrics page and either back end can import it.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

from backhaul.wire.alert import AlertMessage
from backhaul.wire.batch import UPLINK_FIELDS, BatchHeader
from backhaul.wire.series import Labels

# The causes of loss an agent reports in every batch header (cumulative per buffer), as stored per
# device; the metric label of each is its name without ``_samples``.
LOSS_FIELDS = ("evicted_samples", "expired_samples", "dropped_samples", "corrupt_samples")
# Every cumulative per-buffer figure an agent reports, kept per buffer and summed per device: the
# losses, and the samples it corrected because its clock was wrong (docs/clock.md).
BUFFER_FIELDS = (*LOSS_FIELDS, "corrected_samples")
# A device's totals add up counters of several buffers, each below 2**63: held at this.
MAX_COUNTER = 2**63 - 1


@dataclass
class DeviceState:
    """A device's figures, as the store keeps them (they survive restarts).

    Args:
        device: the device id.
        last_seen_ms: when its last batch or remote-write request was stored (collector clock, ms).
        samples: new samples stored; duplicate_samples: samples received again and stored once.
        batches: batches stored; duplicate_batches: batches received again and recognised.
        evicted_samples, expired_samples, dropped_samples, corrupt_samples: what its agent reports lost,
            summed over its buffers (see LOSS_FIELDS).
        agent_version: the version its agent last reported.
        backlog_bytes: what the agent last reported still waiting in its buffer.
        backlog_oldest_ms: wall-clock ms of its oldest buffered sample (0: none or unknown).
        uplink: the agent's link as its last batch reported it (JSON of the header's ``uplink``
            object: budgets and bytes spent, why uploads were held, its windows), "" if never.
        corrected_samples: samples its agent corrected the timestamps of (its clock was wrong), summed
            over its buffers.
    """

    device: str
    last_seen_ms: int = 0
    samples: int = 0
    batches: int = 0
    duplicate_samples: int = 0
    evicted_samples: int = 0
    expired_samples: int = 0
    dropped_samples: int = 0
    agent_version: str = ""
    corrupt_samples: int = 0
    duplicate_batches: int = 0
    backlog_bytes: int = 0
    backlog_oldest_ms: int = 0
    uplink: str = ""
    corrected_samples: int = 0

    def losses(self) -> dict[str, int]:
        """The reported losses, by field name (LOSS_FIELDS order)."""
        return {name: getattr(self, name) for name in LOSS_FIELDS}


@dataclass
class IngestResult:
    """What storing one batch or request did.

    Args:
        duplicate_batch: the batch was stored before (nothing was stored now).
        samples: new samples stored.
        duplicate_samples: samples already stored before.
        capped: the duplicate check reached its bound (collector/store/overlap.py): held chunks past
            it were not compared, so duplicates they hold were counted new (and kept).
    """

    duplicate_batch: bool
    samples: int = 0
    duplicate_samples: int = 0
    capped: bool = False


@dataclass
class Registration:
    """A device in the registry. Only the SHA-256 of its token is kept, never the token.

    Args:
        device: the device id.
        token_sha256: hex SHA-256 of the device's current bearer token.
        created_ms: when the device was added (collector wall clock, ms).
        rotated_ms: when its token was last replaced, 0 if never.
        revoked_ms: when it was revoked, 0 while active.
        source: "cli", or "config" when imported from the collector's ``[[devices]]`` table.
    """

    device: str
    token_sha256: str
    created_ms: int
    rotated_ms: int = 0
    revoked_ms: int = 0
    source: str = "cli"

    @property
    def revoked(self) -> bool:
        return self.revoked_ms > 0


@dataclass
class StoredAlert:
    """The latest state of one alert instance (a device's rule with its labels, by fingerprint).

    Args:
        device, fingerprint, rule, state ("firing" or "resolved"), severity, value (None: NaN), summary:
            as in the newest message applied.
        starts_ms: when it started firing (device clock); ends_ms: when it resolved (None while firing).
        updated_ms: the device time of the newest message applied; received_ms: when that one arrived
            (device times beyond a tolerance are clamped: :func:`alert_time`).
        seq: that message's sequence number (the state follows the highest one).
    """

    device: str
    fingerprint: int
    rule: str
    state: str
    severity: str
    value: float | None
    summary: str
    starts_ms: int
    ends_ms: int | None
    updated_ms: int
    received_ms: int
    seq: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def uplink_report(header: BatchHeader) -> str:
    """The fields of a batch header's ``uplink`` object this build knows, as stored (JSON)."""
    known = {k: v for k, v in header.uplink.items() if k in UPLINK_FIELDS or k == "blocked"}
    return json.dumps(known, separators=(",", ":"), sort_keys=True) if known else ""


def columns(record: type[DeviceState | Registration | StoredAlert]) -> str:
    """The table's columns of a record, in field order (so that ``Record(*row)`` reads a row)."""
    return ", ".join(f.name for f in fields(record))


DEVICE_COLUMNS = columns(DeviceState)
REGISTRATION_COLUMNS = columns(Registration)
ALERT_COLUMNS = columns(StoredAlert)


def stored_labels(labels: Labels, device_label: str, device: str) -> str:
    """The series' identity at the collector: its labels plus the device label, as sorted JSON pairs."""
    pairs = [(f"exported_{n}" if n == device_label else n, v) for n, v in labels]
    pairs.append((device_label, device))
    pairs.sort()
    return json.dumps(pairs, separators=(",", ":"), ensure_ascii=False)


def series_name(labels: Labels) -> str:
    return next((v for n, v in labels if n == "__name__"), "")


def to_bits(values: list[float]) -> list[int]:
    """Values as their IEEE-754 bits: SQLite turns NaN into NULL, and Prometheus' stale markers are NaNs
    with bits of their own, so both stores keep the bits, not the float (fleet samples, old rows)."""
    return array("q", array("d", values).tobytes()).tolist()


def from_bits(bits: list[int]) -> list[float]:
    return array("d", array("q", bits).tobytes()).tolist()


@dataclass
class Removed:
    """Samples retention removed (as their chunks counted them when stored), by reason."""

    retention: int = 0
    max_bytes: int = 0


@dataclass(frozen=True)
class TableRef:
    """A stored series table (what the chunk index refers to). Args: its id, device and digest."""

    id: int
    device: str
    digest: str


@dataclass(frozen=True)
class ChunkRef:
    """One chunk in the index.

    Args:
        id: its id (arrival order); table_id: the series table it refers to.
        min_ts, max_ts: its time range; samples: samples in it; max_per_series: the most of one series.
    """

    id: int
    table_id: int
    min_ts: int
    max_ts: int
    samples: int
    max_per_series: int


def fleet_rows(
    device: str, fleet: Iterable[tuple[str, Labels, int, float]], device_label: str
) -> list[tuple[object, ...]]:
    """``fleet_samples`` rows (name, device, labels, ts, bits) of a chunk's fleet-page samples."""
    rows: list[tuple[object, ...]] = []
    keys: dict[Labels, str] = {}
    for name, labels, ts, value in fleet:
        key = keys.get(labels)
        if key is None:
            key = keys[labels] = stored_labels(labels, device_label, device)
        rows.append((name, device, key, ts, to_bits([value])[0]))
    return rows


def model_info_of(rows: Iterable[tuple[str, str, int]], device_label: str) -> dict[str, dict[str, str]]:
    """Per device, the labels (without name and device label) of its newest model-info series, from
    ``(device, labels JSON, newest ts)`` rows."""
    newest: dict[str, tuple[int, dict[str, str]]] = {}
    for device, labels, ts in rows:
        if device not in newest or ts > newest[device][0]:
            rest = {k: v for k, v in json.loads(labels) if k not in ("__name__", device_label)}
            newest[device] = (ts, rest)
    return {device: labels for device, (_, labels) in newest.items()}


# -- alert state -------------------------------------------------------------------------------------
# Messages may arrive out of order (a fallback channel, a retry): an instance's state only moves
# forward in the device's alert sequence (``seq``, which the message's MAC covers), never by the
# device's clock, so one message stamped in the future (a clock once wrong) cannot freeze a state.
# The times shown are the device's, clamped: a time more than ALERT_MAX_FUTURE_MS ahead of the
# collector's clock, or before ALERT_MIN_MS (a clock never set), is taken as the arrival time.
# Each message is kept once, by (device, seq, ts_ms), with the time it carried.

ALERT_MAX_FUTURE_MS = 10 * 60_000
ALERT_MIN_MS = 1_420_070_400_000  # 2015-01-01: earlier is a device clock that was never set


def alert_time(ts_ms: int, received_ms: int) -> tuple[int, str | None]:
    """The time an alert state change is shown at, and why it was clamped (``future``, ``unset_clock``)."""
    if ts_ms > received_ms + ALERT_MAX_FUTURE_MS:
        return received_ms, "future"
    if ts_ms < ALERT_MIN_MS <= received_ms:
        return received_ms, "unset_clock"
    return ts_ms, None


def message_row(device: str, msg: AlertMessage, received_ms: int, via: str) -> tuple[object, ...]:
    """The ``alert_messages`` row of ``msg``, in MESSAGE_COLUMNS order."""
    return (
        device, msg.seq, msg.ts_ms, msg.fingerprint, msg.rule, msg.state, msg.severity,
        alert_value(msg), msg.summary, received_ms, via,
    )  # fmt: skip


MESSAGE_COLUMNS = "device, seq, ts_ms, fingerprint, rule, state, severity, value, summary, received_ms, via"
# What next_alert_state needs of an instance's stored row.
STATE_COLUMNS = "state, starts_ms, updated_ms, seq"


def alert_value(msg: AlertMessage) -> float | None:
    return None if math.isnan(msg.value) else msg.value


def next_alert_state(
    device: str, msg: AlertMessage, received_ms: int, row: tuple[str, int, int, int] | None
) -> tuple[object, ...] | None:
    """The instance's new row (in ALERT_COLUMNS order) after ``msg``, given its stored
    ``(state, starts_ms, updated_ms, seq)`` (STATE_COLUMNS); None when the message is not newer in
    the device's sequence than what is stored."""
    if row is not None and row[3] >= msg.seq:
        return None  # an older message than the state we have: kept in the log only
    when, _ = alert_time(msg.ts_ms, received_ms)
    firing = msg.state == "firing"
    if row is not None and row[0] == "firing" and firing:
        starts = row[1]  # a repeat: the alert started earlier
    else:
        starts = when
    return (
        device,
        msg.fingerprint,
        msg.rule,
        msg.state,
        msg.severity,
        alert_value(msg),
        msg.summary,
        starts if firing else (row[1] if row is not None else when),
        None if firing else when,
        when,
        received_ms,
        msg.seq,
    )


def alert_conditions(device: str | None, state: str | None, resolved_since_ms: int | None) -> list[tuple[str, object]]:
    """The filters of an alert listing, as SQL conditions with ``{}`` where the back end puts its
    placeholder, and their values."""
    found: list[tuple[str, object]] = []
    if device is not None:
        found.append(("device = {}", device))
    if state is not None:
        found.append(("state = {}", state))
    if resolved_since_ms is not None:
        found.append(("(state = 'firing' OR ends_ms >= {})", resolved_since_ms))
    return found


def firing_by_device(found: list[StoredAlert]) -> dict[str, list[dict[str, object]]]:
    """Firing alerts grouped by device, for the fleet page."""
    out: dict[str, list[dict[str, object]]] = {}
    for alert in found:
        out.setdefault(alert.device, []).append(
            {"rule": alert.rule, "severity": alert.severity, "summary": alert.summary, "starts_ms": alert.starts_ms}
        )
    return out
