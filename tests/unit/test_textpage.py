"""A text page read through the target's TextReader gives exactly what prometheus_client gives, on the
first page (the library reads it) and on every next page of the same shape (only numbers are read);
a page of another shape, or one the library rejects, is the library's again."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.ingest import textpage
from agent.ingest.scrape import parse_any
from agent.ingest.textpage import TextReader
from backhaul.errors import ScrapeError
from backhaul.wire.series import SeriesMap

BASE = {"job": "node", "instance": "127.0.0.1:9100"}
TEXT = "text/plain; version=0.0.4"
FIXTURES = Path(__file__).parents[2] / "bench" / "fixtures"


def _library(page: str, default_ms: int = 5) -> tuple[SeriesMap, object]:
    got = parse_any(page.encode(), TEXT, BASE, default_ms)
    return got.series, got.metadata


def _read(reader: TextReader, page: str, default_ms: int = 5) -> tuple[SeriesMap, object]:
    got = parse_any(page.encode(), TEXT, BASE, default_ms, reader)
    return got.series, got.metadata


def _same(a: SeriesMap, b: SeriesMap) -> bool:
    """Equal series maps, NaN equal to NaN (and list order as is: duplicates keep their order)."""
    if a.keys() != b.keys():
        return False
    for key, (ts_a, vs_a) in a.items():
        ts_b, vs_b = b[key]
        if ts_a != ts_b or len(vs_a) != len(vs_b):
            return False
        if any(not (x == y or (math.isnan(x) and math.isnan(y))) for x, y in zip(vs_a, vs_b, strict=True)):
            return False
    return True


def test_two_real_node_exporter_scrapes_read_as_the_library_reads_them() -> None:
    first, second = (FIXTURES / f"node_exporter-1.5.0.{n}.prom" for n in "ab")
    reader = TextReader()
    for page in (first.read_text(), second.read_text(), first.read_text()):
        series, metadata = _read(reader, page)
        want_series, want_metadata = _library(page)
        assert _same(series, want_series) and metadata == want_metadata
    assert reader.fast_reads == 2  # the second and third pages: same shape as the first


def test_a_new_series_a_changed_help_or_new_target_labels_are_read_by_the_library_again() -> None:
    page = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 3\n'
    reader = TextReader()
    _read(reader, page)
    _read(reader, page.replace(" 3", " 4"))
    assert reader.fast_reads == 1
    grown = page + 'a_total{x="2"} 1\n'
    assert _same(_read(reader, grown)[0], _library(grown)[0])
    assert reader.fast_reads == 1
    helped = grown.replace("A.", "B.")
    assert _read(reader, helped)[1] == _library(helped)[1]
    assert reader.fast_reads == 1
    other = parse_any(helped.encode(), TEXT, {"job": "other", "instance": "h:1"}, 5, reader).series
    assert all(dict(labels)["job"] == "other" for labels in other)
    assert reader.fast_reads == 1


def test_a_value_the_library_rejects_fails_the_scrape_even_when_the_shape_held() -> None:
    reader = TextReader()
    _read(reader, "a 1\nb 2\n")
    with pytest.raises(ScrapeError):
        _read(reader, "a 1\nb 0x2\n")
    with pytest.raises(ScrapeError):
        _read(reader, "a 1\nb 1_0\n")  # Python's float takes this; the library does not
    assert _read(reader, "a 3\nb 4\n")[0] == _library("a 3\nb 4\n")[0]


def test_a_bad_number_on_a_line_not_kept_fails_the_scrape_too() -> None:
    # a _created line is not kept, but the library refuses the page for its number all the same
    page = "# TYPE e counter\ne_total 1\ne_created {}\n"
    reader = TextReader()
    _read(reader, page.format("0"))
    with pytest.raises(ScrapeError):
        _library(page.format("0x2"))
    with pytest.raises(ScrapeError):
        _read(reader, page.format("0x2"))


def test_the_label_sets_kept_share_one_tuple_per_distinct_pair() -> None:
    page = "".join(f'm{{cpu="{i % 2}",mode="idle",n="{i}"}} {i}\n' for i in range(100))
    reader = TextReader()
    for _ in range(2):
        series = _read(reader, page)[0]
    pairs = [pair for labels in series for pair in labels]
    assert len(pairs) == 600 and len({id(pair) for pair in pairs}) == len(set(pairs)) == 106


def test_counters_named_without_total_and_created_series_are_the_library_s() -> None:
    page = '# TYPE c counter\nc 1\nc_created 1.7e9\n# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_count 2\nh_sum 3\n'
    reader = TextReader()
    for value in ("1", "2"):
        text = page.replace("c 1", f"c {value}")
        assert _same(_read(reader, text)[0], _library(text)[0])
    assert reader.fast_reads == 1
    names = {dict(labels)["__name__"] for labels in _library(page)[0]}
    assert "c_total" in names and "c_created" not in names  # the library's renaming, kept


_names = st.sampled_from(["a", "b_total", "c", "d_bucket", "d_count", "d_sum", "e", "e_created", "f"])
_label_values = st.text(alphabet='ab {}"\\,= \n', min_size=0, max_size=6)
_values = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["+Inf", "-Inf", "NaN", "1e3", "-0", "0.1", " 7 ", "+5"]),
    # what the library reads oddly or not at all: hex, underscores, tabs, three tokens, nothing
    st.sampled_from(["0x2", "1_0", "\t3", "4\t5", "1 2", "", "inf", "nan", "1e", "\u0661"]),
)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def _pages(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Two pages of one shape: the same lines, values (and timestamps) drawn anew for the second."""
    lines: list[str] = []
    heads: list[tuple[str, bool]] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["sample", "sample", "sample", "type", "help", "blank", "comment"]))
        name = draw(_names)
        if kind == "type":
            lines.append(f"# TYPE {name} {draw(st.sampled_from(['counter', 'gauge', 'histogram', 'summary']))}")
        elif kind == "help":
            lines.append(f"# HELP {name} {draw(st.sampled_from(['x', 'a b', '']))}")
        elif kind == "blank":
            lines.append("")
        elif kind == "comment":
            lines.append("# just a comment")
        else:
            pairs = draw(st.dictionaries(st.sampled_from(["x", "le", "instance", "job"]), _label_values, max_size=3))
            head = name + ("{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}" if pairs else "")
            heads.append((head, draw(st.booleans())))
            lines.append("\0")  # filled in per page below
    pages: list[list[str]] = []
    for _ in range(2):
        filled, k = [], 0
        for line in lines:
            if line == "\0":
                head, stamped = heads[k]
                k += 1
                stamp = f" {draw(st.integers(0, 2 * 10**12))}" if stamped else ""
                filled.append(f"{head} {draw(_values)}{stamp}")
            else:
                filled.append(line)
        pages.append(filled)
    return pages[0], pages[1]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_pages())
def test_any_two_pages_of_one_shape_read_exactly_as_the_library_reads_them(pages: tuple[list[str], list[str]]) -> None:
    reader = TextReader()
    for lines in pages:
        page = "\n".join(lines) + "\n"
        try:
            want = _library(page)
        except ScrapeError:
            with pytest.raises(ScrapeError):
                _read(reader, page)
            continue
        got = _read(reader, page)
        assert _same(got[0], want[0]) and got[1] == want[1]


def _int_else_float(token: str) -> float:  # the library's own rule for a value
    try:
        return int(token)
    except ValueError:
        return float(token)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Zs", "Cc"], blacklist_characters="_"), max_size=8))
def test_a_number_is_read_by_the_library_s_rule(token: str) -> None:
    try:
        want: float | type[Exception] = _int_else_float(token)
    except (ValueError, OverflowError) as exc:
        want = type(exc)
    try:
        got: float | type[Exception] = textpage._number(token)
    except (ValueError, OverflowError) as exc:
        got = type(exc)
    assert type(got) is type(want) and (got == want or (got != got and want != want))
