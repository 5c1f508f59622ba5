"""Errors raised by the wire-format decoders.

WireError            malformed input (an HTTP receiver answers 400)
├── TooLarge         input over a configured size limit (an HTTP receiver answers 413)
└── Unsupported      a content type, message or encoding this build does not take (415)
"""


class WireError(ValueError):
    """Input that does not follow the format; the message says what is wrong."""


class TooLarge(WireError):
    """Input, compressed or decompressed, over a configured limit."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} exceeds the limit of {limit} bytes")
        self.limit = limit


class Unsupported(WireError):
    """A request whose headers name a message type or encoding the receiver does not take."""
