"""Reading a JSON part of a message (a chunk's series table or metadata, a batch header, an OTLP/JSON
body): anything but JSON of the expected kind is a :class:`WireError` naming the part."""

from __future__ import annotations

import json
from typing import Any

from backhaul.errors import WireError

_KIND = {list: "array", dict: "object"}


def json_part(data: bytes, what: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    """``data`` parsed, when it is JSON of ``kind``; deep nesting counts as not JSON (RecursionError)."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"{what} is not JSON ({exc})") from exc
    if not isinstance(value, kind):
        raise WireError(f"{what} is not a JSON {_KIND[kind]}")
    return value
