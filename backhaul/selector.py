"""PromQL series selectors: ``name{label="v", other!="v", re=~"a|b", nre!~"x.*"}``.

Regular expressions are RE2's, as PromQL's are, anchored at both ends (``.`` matches a newline too,
as in Prometheus), and matched in time linear in the text: a selector that arrives from the network
cannot stall the process with backtracking (``(.*.*)*X``). Quoted values take "..." or '...' with
backslash escapes, or `...` raw.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from backhaul.errors import SelectorError


@functools.cache
def _re2() -> tuple[ModuleType, Any]:
    """RE2 and our options for it, on the first regular expression: most agents have none, and the
    module is 1.6 MB of a small device's memory (issue 16)."""
    import re2

    options = re2.Options()
    options.dot_nl = True
    options.log_errors = False  # a bad pattern is the caller's 400, not a line on our stderr
    options.never_capture = True
    return re2, options


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    def predicate(self) -> Callable[[str], bool]:
        if self.op == "=":
            return lambda v: v == self.value
        if self.op == "!=":
            return lambda v: v != self.value
        re2, options = _re2()
        try:
            pattern = re2.compile(self.value, options)
        except re2.error as exc:
            detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            raise SelectorError(f"bad regular expression {self.value!r} for {self.name}: {detail}") from exc

        # Label values repeat across series (names, jobs, instances): each distinct one is matched once.
        @functools.lru_cache(maxsize=4096)
        def matches(v: str) -> bool:
            return pattern.fullmatch(v) is not None

        if self.op == "=~":
            return matches
        return lambda v: not matches(v)


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OP = re.compile(r"=~|!~|!=|=")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


class Selector:
    """A parsed selector; :meth:`matches` tests a label dict (absent labels count as "")."""

    def __init__(self, matchers: list[Matcher]) -> None:
        if not any(m.predicate()("") is False for m in matchers):
            raise SelectorError("a selector needs at least one matcher that does not match the empty string")
        self.matchers = matchers
        self._tests = [(m.name, m.predicate()) for m in matchers]

    def matches(self, labels: dict[str, str]) -> bool:
        return all(test(labels.get(name, "")) for name, test in self._tests)

    @classmethod
    def parse(cls, text: str) -> Selector:
        pos = _skip(text, 0)
        matchers: list[Matcher] = []
        name = _NAME.match(text, pos)
        if name:
            matchers.append(Matcher("__name__", "=", name.group()))
            pos = _skip(text, name.end())
        if pos < len(text) and text[pos] == "{":
            pos = _skip(text, pos + 1)
            while pos < len(text) and text[pos] != "}":
                label = _LABEL.match(text, pos)
                if not label:
                    raise SelectorError(f"expected a label name at position {pos} of {text!r}")
                pos = _skip(text, label.end())
                op = _OP.match(text, pos)
                if not op:
                    raise SelectorError(f"expected =, !=, =~ or !~ at position {pos} of {text!r}")
                value, pos = _quoted(text, _skip(text, op.end()))
                matchers.append(Matcher(label.group(), op.group(), value))
                pos = _skip(text, pos)
                if pos < len(text) and text[pos] == ",":
                    pos = _skip(text, pos + 1)
                elif pos < len(text) and text[pos] != "}":
                    raise SelectorError(f"expected , or }} at position {pos} of {text!r}")
            if pos >= len(text):
                raise SelectorError(f"unclosed {{ in {text!r}")
            pos = _skip(text, pos + 1)
        if pos != len(text) or not matchers:
            raise SelectorError(f"not a series selector: {text!r}")
        return cls(matchers)


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    if pos >= len(text) or text[pos] not in "\"'`":
        raise SelectorError(f"expected a quoted value at position {pos} of {text!r}")
    quote = text[pos]
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\" and quote != "`" and i + 1 < len(text):
            out.append(_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
            i += 2
            continue
        out.append(ch)
        i += 1
    raise SelectorError(f"unterminated quoted value at position {pos} of {text!r}")
