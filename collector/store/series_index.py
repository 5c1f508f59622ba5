"""Which stored series tables share a series: a 64-bit hash of each series, kept once per table.

The de-duplication of overlapping chunks (:mod:`collector.store.overlap`) compares a new chunk only
with stored chunks whose table lists one of its series. Deciding that by parsing every stored table
that overlaps in time made one device with many distinct tables slow every device (the store has one
database thread); so each table's series are hashed once, when the table is stored, into
``table_series (table_id, hash)``, and "which stored tables share a series with these" is one
indexed query. The hash is keyed by the device, as tables are: the same labels of two devices hash
apart, so a lookup finds (nearly) only the device's own tables.

A collision only ever costs a comparison: a table found by its hashes is then compared label set by
label set, so a series it does not really share counts nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

from backhaul.errors import WireError
from backhaul.wire.chunk import Codec
from backhaul.wire.series import Labels
from collector.store.tables import TableInfo

log = logging.getLogger(__name__)

# Between the strings that are hashed: a byte UTF-8 never holds, so the sequence of strings is
# unambiguous (label names and values may hold any other character).
_SEP = b"\xff"


def series_hash(device: str, labels: Labels) -> int:
    """The series' hash as the index keeps it: signed 64 bits (both databases' integer)."""
    h = hashlib.blake2b(device.encode("utf-8", "surrogatepass"), digest_size=8)
    for name, value in labels:
        h.update(_SEP + name.encode("utf-8", "surrogatepass") + _SEP + value.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little", signed=True)


def table_hashes(device: str, entries: Iterable[Labels]) -> list[int]:
    """The distinct hashes of a table's series, sorted (a table may list a series twice)."""
    return sorted({series_hash(device, labels) for labels in entries})


def rows_of(table_id: int, device: str, table: TableInfo) -> list[tuple[int, int]]:
    """``table_series`` rows of a table being stored (its entries parsed if they are not)."""
    return [(table_id, h) for h in table_hashes(device, table.labels())]


def backfill_rows(table_id: int, device: str, data: bytes, codec: Codec) -> list[tuple[int, int]]:
    """``table_series`` rows of a table stored before the index existed (``data``: as stored, zstd).

    A table that no longer parses (it did when it was stored) gets none: its chunks are then never
    compared, so a duplicate of theirs is counted new and kept -- never a reason not to start."""
    try:
        return rows_of(table_id, device, TableInfo.parse(codec.decompress(data, 1 << 30)))
    except WireError as exc:
        log.warning("store: series table %d of %s unreadable, left out of the series index: %s", table_id, device, exc)
        return []
