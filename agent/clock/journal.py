"""The clock's eras and jumps in the buffer database (tables ``clock_eras``, ``clock_jumps``).

Each function runs on the buffer's database thread (``await store.call(journal.save, store, ...)``).
An era is written before any chunk held under its id can be committed (the keeper awaits it), so a
held chunk always finds its era after a crash.

Inspect with e.g. ``sqlite-utils query buffer.db "select * from clock_jumps"``.
"""

from __future__ import annotations

from dataclasses import astuple, fields

from agent.buffer.store import BufferStore
from agent.clock.eras import Era, Jump

ERA_COLUMNS = ", ".join(f.name for f in fields(Era))
JUMP_COLUMNS = "boot_id, boot_ms, from_era, to_era, wall_before_ms, wall_after_ms, jump_ms, while_stopped"
# Eras kept in memory: every boot and jump makes one; older ones matter only as history.
KEPT_ERAS = 64


def load(store: BufferStore) -> list[Era]:
    """The newest eras and those that held chunks wait for, oldest first."""
    rows = store.conn.execute(
        f"SELECT {ERA_COLUMNS} FROM clock_eras WHERE id > (SELECT coalesce(max(id), 0) FROM clock_eras) - ?"
        " OR id IN (SELECT DISTINCT hold FROM chunks WHERE hold != 0) ORDER BY id",
        (KEPT_ERAS,),
    ).fetchall()
    eras = []
    for row in rows:
        era = Era(*row)
        era.below_floor = bool(era.below_floor)
        eras.append(era)
    return eras


def save(store: BufferStore, eras: list[Era], jumps: list[Jump]) -> None:
    """Write ``eras`` (whole rows) and record ``jumps``, in one transaction."""
    if not eras and not jumps:
        return
    marks = ", ".join("?" * len(fields(Era)))
    with store.db.atomic() as conn:
        conn.executemany(f"INSERT OR REPLACE INTO clock_eras ({ERA_COLUMNS}) VALUES ({marks})", map(astuple, eras))
        conn.executemany(
            f"INSERT INTO clock_jumps ({JUMP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    j.boot_id,
                    j.boot_ms,
                    j.from_era,
                    j.to_era,
                    j.wall_before_ms,
                    j.wall_after_ms,
                    j.jump_ms,
                    j.while_stopped,
                )
                for j in jumps
            ],
        )


def recent_jumps(store: BufferStore, limit: int = 10) -> list[dict[str, object]]:
    """The last ``limit`` jumps, newest first."""
    rows = store.conn.execute(f"SELECT {JUMP_COLUMNS} FROM clock_jumps ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [dict(zip(JUMP_COLUMNS.split(", "), row, strict=True)) for row in rows]


def jump_count(store: BufferStore) -> int:
    (count,) = store.conn.execute("SELECT count(*) FROM clock_jumps").fetchone()
    return int(count)
