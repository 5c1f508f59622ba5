"""Errors raised by the wire-format decoders (part of the tree in :mod:`backhaul.errors`).

WireError            malformed input (an HTTP receiver answers 400)
├── TooLarge         input over a configured size limit (an HTTP receiver answers 413)
└── Unsupported      a content type, message or encoding this build does not take (415)
"""

from backhaul.errors import TooLarge, Unsupported, WireError

__all__ = ["TooLarge", "Unsupported", "WireError"]
