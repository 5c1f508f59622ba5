"""Device tokens as the registry keeps them: only their SHA-256 digest is stored.

The one place the digest is computed, for a token from a request's ``Authorization`` header
(:mod:`collector.auth`), from the ``devices`` CLI and from ``[[devices]]`` in the config
(:mod:`collector.registry_settings`): were two of these to differ, a token would never match.
"""

from __future__ import annotations

import hashlib


def token_digest(token: str) -> str:
    """Hex SHA-256 of ``token`` without surrounding whitespace (which does not survive in an HTTP header)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()
