"""Converting an embedded store that kept a row per sample into chunks (see
:mod:`collector.store.legacy`): at open, device by device, one transaction each."""

from __future__ import annotations

import json
import logging
import sqlite3

from backhaul.wire.series import Labels
from collector.store import legacy, records
from collector.store.sqlite.samples import SqliteSamples

log = logging.getLogger(__name__)

# The device's series ids, in a temporary table (a device may have more series than SQLite takes
# bound parameters).
_IDS = "SELECT id FROM temp.legacy_ids"


class SqliteLegacy(SqliteSamples):
    def _has_rows(self) -> bool:
        found = self.db.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'samples'")
        return found.fetchone() is not None

    def _convert(self) -> None:
        conn = self.db.conn
        by_device: dict[str, list[int]] = {}
        for sid, labels in conn.execute("SELECT id, labels FROM series"):
            found = legacy.agent_labels(labels, self.device_label)
            # a series without the device label cannot have been stored by a collector: kept under ""
            by_device.setdefault(found[0] if found else "", []).append(sid)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS legacy_ids (id INTEGER PRIMARY KEY)")
        converted = 0
        for device, ids in sorted(by_device.items()):
            with self.db.atomic() as conn:
                converted += self._convert_device(conn, device, ids)
        with self.db.atomic() as conn:
            left = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
            if left:  # cannot happen: every series belongs to some device above
                raise RuntimeError(f"{left} rows of samples were not converted")
            conn.execute("DROP TABLE samples")
            conn.execute("DROP TABLE series")
        conn.execute("DROP TABLE temp.legacy_ids")
        log.info("store: %d samples of %d devices converted from rows into chunks", converted, len(by_device))

    def _convert_device(self, conn: sqlite3.Connection, device: str, ids: list[int]) -> int:
        conn.execute("DELETE FROM temp.legacy_ids")
        conn.executemany("INSERT INTO temp.legacy_ids (id) VALUES (?)", [(sid,) for sid in ids])
        labels: dict[int, Labels] = {}
        for sid, text in conn.execute(f"SELECT id, labels FROM series WHERE id IN ({_IDS})"):
            found = legacy.agent_labels(text, self.device_label)
            labels[sid] = found[1] if found else tuple(sorted((n, v) for n, v in json.loads(text)))
        converted = 0
        start = conn.execute(f"SELECT min(ts) FROM samples WHERE series_id IN ({_IDS})").fetchone()[0]
        while start is not None:
            window = start - start % legacy.WINDOW_MS
            end = window + legacy.WINDOW_MS
            rows = conn.execute(
                f"SELECT series_id, ts, bits FROM samples WHERE series_id IN ({_IDS}) AND ts >= ? AND ts < ?"
                " ORDER BY series_id, ts",
                (window, end),
            )
            for chunk in legacy.window_chunks(((labels[sid], ts, bits) for sid, ts, bits in rows), self._codec):
                table_id = self._table_id(conn, device, chunk)
                self._insert_chunk(conn, device, chunk, table_id, chunk.scan.samples, 0)
                if chunk.fleet:
                    conn.executemany(
                        "INSERT OR IGNORE INTO fleet_samples (name, device, labels, ts, bits) VALUES (?,?,?,?,?)",
                        records.fleet_rows(device, chunk.fleet, self.device_label),
                    )
                converted += chunk.scan.samples
            after = conn.execute(f"SELECT min(ts) FROM samples WHERE series_id IN ({_IDS}) AND ts >= ?", (end,))
            start = after.fetchone()[0]
        conn.execute(f"DELETE FROM samples WHERE series_id IN ({_IDS})")
        conn.execute(f"DELETE FROM series WHERE id IN ({_IDS})")
        return converted
