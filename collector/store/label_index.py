"""Which stored series tables hold a label pair: ``table_labels (name, value, table_id)``, once per
distinct pair of a table (``__name__`` apart: ``table_names`` has it).

An export whose selector names no metric used to parse every stored table in its time range to
find the few series it wanted (a fuzz run's store of 31,000 tables made ``{fuzz_case="…"}`` take
seconds each). With this index, a selector with a matcher that needs a label (``l="v"``, or
``l=~"re"`` where ``re`` does not match the empty string) reads only the tables that hold a value of
``l`` that the matcher accepts (:meth:`collector.store.reader.Reader.plan`).

Pairs are stored as the agent sent them (no device label; an agent's own label named like the
device label is found under that name). A name or value too long for an index key, or that is not
strictly UTF-8 (a table stored before the label rules), is kept as the row ``(name, ODD)`` or
``(ODD, ODD)``: a lookup of that name, or of any name, then includes the table, so the index only
ever finds a superset of the tables that match, never fewer -- the reader matches exactly after.
"""

from __future__ import annotations

import logging

from backhaul.errors import WireError
from backhaul.wire.chunk import Codec
from collector.store.tables import TableInfo

log = logging.getLogger(__name__)

# A stand-in for what the index does not keep as is (a noncharacter: no real label is expected to
# be this, and one that is only costs a lookup a few tables more).
ODD = "\uffff"
# UTF-8 bytes of a name or value kept as is; longer ones become ODD (PostgreSQL's B-tree keys are
# limited to about 2.7 KB, and long values are never what an index lookup is fast for).
MAX_KEPT_BYTES = 256
# Every metric name of ``table_names``, one index seek per distinct name (a skip scan: both
# SQLite and PostgreSQL would otherwise read every row, 13x slower on a fuzz run's 250,000).
METRIC_NAMES_SQL = (
    "WITH RECURSIVE names(name) AS (SELECT min(name) FROM table_names"
    " UNION ALL SELECT (SELECT min(name) FROM table_names WHERE name > names.name) FROM names"
    " WHERE names.name IS NOT NULL) SELECT name FROM names WHERE name IS NOT NULL"
)


def _kept(text: str) -> str:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return ODD
    return text if size <= MAX_KEPT_BYTES else ODD


def rows_of(table_id: int, table: TableInfo) -> list[tuple[str, str, int]]:
    """``table_labels`` rows of a table being stored (its entries parsed if they are not)."""
    pairs: set[tuple[str, str]] = set()
    for labels in table.labels():
        for name, value in labels:
            if name == "__name__":
                continue
            kept = _kept(name)
            pairs.add((kept, _kept(value)) if kept != ODD else (ODD, ODD))
    return [(name, value, table_id) for name, value in sorted(pairs)]


def backfill_rows(table_id: int, data: bytes, codec: Codec) -> list[tuple[str, str, int]]:
    """``table_labels`` rows of a table stored before the index existed (``data``: as stored, zstd).
    A table that no longer parses gets ``(ODD, ODD)``: every lookup then includes it (and the reader
    skips it, as it always did)."""
    try:
        return rows_of(table_id, TableInfo.parse(codec.decompress(data, 1 << 30)))
    except WireError as exc:
        log.warning("store: series table %d unreadable, found by every label lookup: %s", table_id, exc)
        return [(ODD, ODD, table_id)]
