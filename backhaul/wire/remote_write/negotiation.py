"""The ``Content-Type`` negotiation of a remote-write request: 1.0 or 2.0, and snappy.

    Content-Type      application/x-protobuf[;proto=prometheus.WriteRequest]  -> remote write 1.0
                      application/x-protobuf;proto=io.prometheus.write.v2.Request -> 2.0
    Content-Encoding  snappy (or absent)

Anything else is :class:`Unsupported` (HTTP 415) with the reason.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

from backhaul.wire.errors import Unsupported

CONTENT_TYPE = "application/x-protobuf"


class Message(enum.Enum):
    """The protobuf message a remote-write body holds, by the fully qualified name its
    ``Content-Type: application/x-protobuf;proto=<name>`` parameter gives (Remote-Write 2.0 spec)."""

    V1 = "prometheus.WriteRequest"
    V2 = "io.prometheus.write.v2.Request"


# What the receivers decode today. Remote-Write 2.0 decodes (remote_write_v2.py) but is not yet
# carried through the buffer and the collector's store, so its bodies are refused with 415 rather
# than parsed as 1.0 -- where its fields are unknown and it would "succeed" with nothing stored.
ACCEPTED: frozenset[Message] = frozenset({Message.V1})


def negotiate(content_type: str | None, content_encoding: str | None, accept: Iterable[Message] = ACCEPTED) -> Message:
    """The message a request's headers announce, or :class:`Unsupported` (HTTP 415) saying why not.

    ``application/x-protobuf`` without ``proto=``, or with ``proto=prometheus.WriteRequest``, is
    remote write 1.0; ``proto=io.prometheus.write.v2.Request`` is 2.0; any other ``proto=`` is
    refused, as the 2.0 spec requires (a receiver must not guess a schema). A missing
    Content-Encoding is taken as snappy: the body must be snappy either way, and some 1.0 senders
    leave the header out.
    """
    media_type, params = _parse_content_type(content_type or "")
    if media_type != CONTENT_TYPE:
        raise Unsupported(f"Content-Type must be {CONTENT_TYPE}, not {content_type or ''!r}")
    proto = params.get("proto", Message.V1.value)
    try:
        message = Message(proto)
    except ValueError:
        names = " or ".join(m.value for m in Message)
        raise Unsupported(
            f"Content-Type names proto={proto!r}: this receiver knows no such message (only {names})"
        ) from None
    accepted = frozenset(accept)
    if message not in accepted:
        names = " or ".join(sorted(m.value for m in accepted))
        raise Unsupported(f"Content-Type names proto={proto}, which this receiver does not take yet; send {names}")
    encoding = (content_encoding or "snappy").strip().lower()
    if encoding != "snappy":
        raise Unsupported(f"Content-Encoding must be snappy, not {encoding!r}")
    return message


def header_problem(
    content_type: str | None, content_encoding: str | None, accept: Iterable[Message] = ACCEPTED
) -> str | None:
    """Why a request's headers rule out every accepted message (an HTTP receiver answers 415), or None.

    Pass the raw ``Content-Type`` header: its ``proto=`` parameter decides which message the body is.
    """
    try:
        negotiate(content_type, content_encoding, accept)
    except Unsupported as exc:
        return str(exc)
    return None


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """RFC 9110 media type and parameters: type and parameter names are case-insensitive,
    values may be quoted; a parameter given twice or without ``=`` is refused."""
    media_type, *parts = value.split(";")
    params: dict[str, str] = {}
    for part in parts:
        part = part.strip()
        if not part:
            continue
        name, eq, raw = part.partition("=")
        name = name.strip().lower()
        raw = raw.strip()
        if not eq or not name:
            raise Unsupported(f"Content-Type parameter {part!r} is not name=value")
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if name in params:
            raise Unsupported(f"Content-Type gives the parameter {name!r} twice")
        params[name] = raw
    return media_type.strip().lower(), params
