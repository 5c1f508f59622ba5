"""The alert lane's durable queue: sequence numbers, bound and eviction order, restarts."""

from __future__ import annotations

from pathlib import Path

from agent.alerts.queue import AlertQueue
from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage


def EPOCH() -> float:
    """A clock at 1970: a new queue's sequence then starts at 1, as these tests count."""
    return 0.0


def msg(state: str = "firing", severity: str = "warning", ts: int = 1) -> AlertMessage:
    return AlertMessage("dev-1", "R", state, severity, 1.0, ts, 0, 7)


def test_sequence_survives_reopen_and_clean_or_unclean_stop_is_recorded(tmp_path: Path) -> None:
    q = AlertQueue(tmp_path / "a.db", 10, clock=EPOCH)
    assert q.open().restarts == 0
    seqs, _ = q.enqueue([msg(), msg()], [("R", 7, "warning", 1)])
    assert seqs == [1, 2]
    q.close(clean=False)  # as after a SIGKILL: never marked clean

    q = AlertQueue(tmp_path / "a.db", 10, clock=EPOCH)
    start = q.open()
    assert (start.restarts, start.previous_clean) == (1, False)
    assert [wire.decode(e.body).seq for e in q.peek(10)] == [1, 2]
    assert q.firing() == [("R", 7, "warning", 1)]
    assert q.enqueue([msg()], [])[0] == [3]
    q.remove(1)
    q.close()

    q = AlertQueue(tmp_path / "a.db", 10, clock=EPOCH)
    start = q.open()
    assert (start.restarts, start.previous_clean) == (2, True)
    assert [e.seq for e in q.peek(10)] == [2, 3]
    assert q.firing() == []
    q.close()


def test_a_full_queue_drops_resolved_then_low_severity_first_and_counts(tmp_path: Path) -> None:
    q = AlertQueue(tmp_path / "a.db", 3, clock=EPOCH)
    q.open()
    q.enqueue([msg("firing", "critical", 1), msg("resolved", "critical", 2), msg("firing", "info", 3)], [])
    _, dropped = q.enqueue([msg("firing", "warning", 4), msg("firing", "critical", 5)], [])
    assert dropped == 2
    kept = [(wire.decode(e.body).state, wire.decode(e.body).severity) for e in q.peek(10)]
    assert kept == [("firing", "critical"), ("firing", "warning"), ("firing", "critical")]
    assert q.dropped == 2
    q.close()


def test_a_damaged_queue_file_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    path.write_bytes(b"this is not a database" * 100)
    q = AlertQueue(path, 10, clock=EPOCH)
    start = q.open()
    assert start.previous_clean is False
    assert q.enqueue([msg()], [])[0] == [1]
    q.close()
    assert [p.name.split("-")[0] for p in tmp_path.glob("a.db.corrupt-*")] == ["a.db.corrupt"]
