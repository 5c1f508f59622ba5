"""The alert lane's durable queue: its own small SQLite file, so it never waits on the bulk buffer.

A message is committed here (``synchronous`` as configured for the buffer) before any channel sees it
and deleted only once a channel acknowledged it, so alerts survive SIGKILL and power cuts. The queue
holds at most ``max_entries``; beyond, the oldest *resolved* messages go first, then the oldest of the
lowest severity — counted in ``dropped``. Besides the queue the file keeps the alert sequence number,
the agent's restart count, whether the last run stopped cleanly, and which alerts were firing.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from backhaul.sqlite import Database, Synchronous
from backhaul.wire import alert as wire
from backhaul.wire.alert import AlertMessage

if TYPE_CHECKING:  # imported by backhaul.sqlite.migrate, only when a migration runs
    import sqlite_utils

P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger(__name__)


def _v1(db: sqlite_utils.Database) -> None:
    # IF NOT EXISTS: files made before the queue had versioned migrations already hold these tables.
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL,"
        " resolved INTEGER NOT NULL, severity INTEGER NOT NULL, body BLOB NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS firing (rule TEXT NOT NULL, fingerprint INTEGER NOT NULL,"
        " severity TEXT NOT NULL, since_ms INTEGER NOT NULL, PRIMARY KEY (rule, fingerprint))"
    )


MIGRATIONS = [_v1]


@dataclass(frozen=True)
class StartInfo:
    """What the queue file says about earlier runs."""

    restarts: int  # starts before this one
    previous_clean: bool  # the previous run reached a clean shutdown (True on a first start)


@dataclass(frozen=True)
class Entry:
    seq: int
    created_ms: int
    body: bytes


class AlertQueue:
    """Args: path of the queue file; max_entries; synchronous level (as the buffer's); wall clock (s).

    A new file (first start, or one made after a damaged file was moved aside) starts the sequence at
    the wall clock in milliseconds rather than at 1: the collector orders an alert's states by
    ``seq``, so a queue made anew must not start below the numbers the old one already used (about
    one message per millisecond would be needed to overtake the clock). A device whose clock is far
    behind when its queue is made anew can still start below them (docs/alerts.md, known limits).
    """

    def __init__(
        self, path: Path, max_entries: int, synchronous: Synchronous = "FULL", clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.max_entries = max_entries
        self._clock = clock
        self.db = Database(path, synchronous, MIGRATIONS, "alert-queue")
        self.length = 0

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this queue's methods on its database thread."""
        return await self.db.run(fn, *args, **kwargs)

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def _meta(self, key: str, default: int = 0) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _set(self, key: str, value: int) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def open(self) -> StartInfo:
        """Open (create) the file and record this start: an unclean previous run is one that never closed.

        A damaged file never stops the agent: the kit moves it aside (``<name>.corrupt-<time>``) and a
        new one is started; the messages it held are lost, and the start counts as unclean.
        """
        self.db.open()
        with self.db.atomic():
            restarts = self._meta("starts")
            clean = bool(self._meta("clean", 1)) and self.db.damage is None
            self._set("starts", restarts + 1)
            self._set("clean", 0)
            if self._meta("next_seq", 0) == 0:
                self._set("next_seq", max(1, int(self._clock() * 1000)))
        (self.length,) = self.conn.execute("SELECT count(*) FROM queue").fetchone()
        return StartInfo(restarts, clean)

    def close(self, clean: bool = True) -> None:
        if not self.db.is_open:
            return
        try:
            if clean:
                self._set("clean", 1)
        except sqlite3.Error as exc:  # e.g. a full disk: the next start will count this one as unclean
            log.error("could not mark the clean stop in %s: %s", self.path, exc)
        finally:
            self.db.close()

    def spent(self) -> tuple[int, int]:
        """The day (yyyymmdd) and the bytes alerts spent on it (alerts.daily_bytes)."""
        return self._meta("budget_day"), self._meta("budget_bytes")

    def add_spent(self, day: int, nbytes: int) -> None:
        """Add ``nbytes`` spent on ``day``; a later day starts the count again."""
        with self.db.atomic():
            held = self._meta("budget_day")
            if day > held:
                self._set("budget_day", day)
                self._set("budget_bytes", nbytes)
            else:
                self._set("budget_bytes", self._meta("budget_bytes") + nbytes)

    @property
    def dropped(self) -> int:
        return int(self._meta("dropped"))

    def enqueue(self, messages: list[AlertMessage], firing: list[tuple[str, int, str, int]]) -> tuple[list[int], int]:
        """Give each message the next sequence number, store it, and record the firing set — one transaction.

        ``firing`` is the complete list of (rule, fingerprint, severity, since_ms) firing now. Returns
        the sequence numbers and how many queued messages were dropped to stay within ``max_entries``.
        """
        with self.db.atomic() as conn:
            seq = self._meta("next_seq", 1)
            seqs = []
            for msg in messages:
                # Unsigned (version 1): the sender signs each message as it sends it, with the key
                # it has then (a token rotated while messages wait must not strand them).
                body = wire.encode_unsigned(_with_seq(msg, seq))
                conn.execute(
                    "INSERT INTO queue (seq, created_ms, resolved, severity, body) VALUES (?, ?, ?, ?, ?)",
                    (seq, msg.ts_ms, msg.state == "resolved", wire.SEVERITIES.index(msg.severity), body),
                )
                seqs.append(seq)
                seq += 1
            self._set("next_seq", seq)
            conn.execute("DELETE FROM firing")
            conn.executemany("INSERT INTO firing VALUES (?, ?, ?, ?)", firing)
            dropped = self._trim()
        (self.length,) = conn.execute("SELECT count(*) FROM queue").fetchone()
        return seqs, dropped

    def _trim(self) -> int:
        (count,) = self.conn.execute("SELECT count(*) FROM queue").fetchone()
        excess = int(count) - self.max_entries
        if excess <= 0:
            return 0
        # Resolved first (their firing was either sent or is dropped anyway), then lowest severity, oldest.
        self.conn.execute(
            "DELETE FROM queue WHERE seq IN (SELECT seq FROM queue ORDER BY resolved DESC, severity, seq LIMIT ?)",
            (excess,),
        )
        self._set("dropped", self._meta("dropped") + excess)
        return excess

    def peek(self, limit: int) -> list[Entry]:
        rows = self.conn.execute("SELECT seq, created_ms, body FROM queue ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [Entry(seq, created, bytes(body)) for seq, created, body in rows]

    def remove(self, seq: int) -> None:
        """The message was acknowledged (or refused as malformed): it leaves the queue."""
        self.conn.execute("DELETE FROM queue WHERE seq = ?", (seq,))
        (self.length,) = self.conn.execute("SELECT count(*) FROM queue").fetchone()

    def count_rejected(self) -> None:
        self._set("rejected", self._meta("rejected") + 1)

    def firing(self) -> list[tuple[str, int, str, int]]:
        rows = self.conn.execute("SELECT rule, fingerprint, severity, since_ms FROM firing").fetchall()
        return [(str(a), int(b), str(c), int(d)) for a, b, c, d in rows]


def _with_seq(msg: AlertMessage, seq: int) -> AlertMessage:
    return AlertMessage(
        msg.device, msg.rule, msg.state, msg.severity, msg.value, msg.ts_ms, seq, msg.fingerprint, msg.summary
    )
