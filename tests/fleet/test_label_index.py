"""The label index on both back ends (issue 12: an export whose selector names no metric must not
parse every stored table): such an export parses only the tables that hold a value of a label it
needs, answers exactly what it did without the index (a name, a regex, the agent's own label named
like the device label, a value too long for the index, several selectors), and a store from before
the index is indexed when it opens."""

from __future__ import annotations

import pytest

from backhaul.selector import Selector
from backhaul.wire.series import Labels
from collector.store import Store
from tests.fleet.batches import put
from tests.fleet.conftest import opened, rewind

NOW = 1_800_000_000_000
START = NOW - 3_600_000
OTHER = 40  # tables of other series over the same time range
LONG = "v" * 300  # longer than the index keeps as is


def one(labels: Labels, value: float = 1.0) -> dict[Labels, tuple[list[int], list[float]]]:
    return {labels: ([START + 1000 * k for k in range(5)], [value] * 5)}


async def fill(store: Store) -> None:
    for i in range(OTHER):
        await put(store, "dev-1", one((("__name__", f"other_{i}"), ("job", "node"))), NOW)
    await put(store, "dev-1", one((("__name__", "wanted"), ("case", "a"), ("job", "node"))), NOW)
    await put(store, "dev-1", one((("__name__", "spoofed"), ("device_id", "dev-2"), ("job", "edge"))), NOW)
    await put(store, "dev-2", one((("__name__", "long"), ("job", "edge"), ("note", LONG))), NOW)
    await put(store, "dev-2", one((("__name__", "wanted"), ("case", "b"), ("job", "node"))), NOW)


async def chosen(store: Store, *selectors: str) -> list[tuple[str, str]]:
    """(device, metric name) of every series the selectors choose, through the reader."""
    from collector.store.reader import Reader

    reader = Reader(store, "device_id")
    plan = await reader.plan([Selector.parse(s) for s in selectors], 0, 2**62)
    out: list[tuple[str, str]] = []
    async for group in reader.read(plan):
        out += [(c.device, c.labels["__name__"]) for c, stamps, _ in group if stamps]
    return sorted(out)


CASES = [
    (['{case="a"}'], [("dev-1", "wanted")], {"wanted"}),
    (['{case=~"a|b"}'], [("dev-1", "wanted"), ("dev-2", "wanted")], {"wanted"}),
    (['{case=~"b", job="node"}'], [("dev-2", "wanted")], {"wanted"}),
    (['{exported_device_id="dev-2"}'], [("dev-1", "spoofed")], {"spoofed"}),
    ([f'{{note="{LONG}"}}'], [("dev-2", "long")], {"long"}),
    (['{case="a"}', '{job="edge"}'], [("dev-1", "spoofed"), ("dev-1", "wanted"), ("dev-2", "long")], None),
    (['{case="zzz"}'], [], set()),
    # needs no label of the index: every table in range is matched, as before the index
    (['{job!~"|node"}'], None, None),
]


@pytest.mark.parametrize(("selectors", "expected", "tables_parsed"), CASES)
async def test_an_export_without_a_metric_name_parses_only_the_tables_its_labels_need(
    where: tuple[str, str],
    parsed: list[frozenset[str]],
    selectors: list[str],
    expected: list[tuple[str, str]] | None,
    tables_parsed: set[str] | None,
) -> None:
    async with opened(where) as store:
        await fill(store)
    async with opened(where) as store:  # nothing cached: every table parsed now is one the export read
        parsed.clear()
        got = await chosen(store, *selectors)
        if expected is not None:
            assert got == expected
        else:
            assert got == [("dev-1", "spoofed"), ("dev-2", "long")]
        names = set().union(*parsed)
        if tables_parsed is not None:
            assert names == tables_parsed, f"{len(parsed)} tables parsed"
        elif expected is None:
            assert len(parsed) >= OTHER  # no narrowing: the old way


async def test_a_store_from_before_the_label_index_is_indexed_when_it_opens(
    where: tuple[str, str], parsed: list[frozenset[str]]
) -> None:
    async with opened(where) as store:
        await fill(store)
    await rewind(where, ["table_labels"])
    async with opened(where) as store:
        assert len(parsed) >= OTHER + 4  # each stored table indexed once, at open
        parsed.clear()
        assert await chosen(store, '{case="b"}') == [("dev-2", "wanted")]
        assert set().union(*parsed) == {"wanted"}
