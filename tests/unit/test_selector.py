import pytest

from backhaul.errors import SelectorError
from backhaul.selector import Selector


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ('{__name__="up",job="node"}', {"__name__": "up", "job": "node"}, True),
        ('{__name__="up",job="node"}', {"__name__": "up", "job": "other"}, False),
        ('up{job!="x"}', {"__name__": "up", "job": "node"}, True),
        ('up{job=~"no.*"}', {"__name__": "up", "job": "node"}, True),
        ('up{job=~"no"}', {"__name__": "up", "job": "node"}, False),  # anchored
        ('up{job!~"n.*"}', {"__name__": "up", "job": "node"}, False),
        ('{__name__=~".+"}', {"__name__": "anything"}, True),
        ('up{ path = "a\\"b" , }', {"__name__": "up", "path": 'a"b'}, True),
        ("up{path=`C:\\x`}", {"__name__": "up", "path": "C:\\x"}, True),
        ('up{missing=""}', {"__name__": "up"}, True),
    ],
)
def test_matching(text, labels, expected):
    assert Selector.parse(text).matches(labels) is expected


@pytest.mark.parametrize(
    "text", ["", "{}", '{job="x"', '{job~"x"}', '{job="x" foo="y"}', "{job=x}", '{job=~""}', 'up{a=~"("}']
)
def test_bad_selectors_are_refused(text):
    with pytest.raises(SelectorError):
        Selector.parse(text)
