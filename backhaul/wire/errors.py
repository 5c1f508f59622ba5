"""Errors raised by the wire-format decoders (part of the tree in :mod:`backhaul.errors`).

WireError            malformed input (an HTTP receiver answers 400)
└── TooLarge         input over a configured size limit (an HTTP receiver answers 413)
"""

from backhaul.errors import TooLarge, WireError

__all__ = ["TooLarge", "WireError"]
