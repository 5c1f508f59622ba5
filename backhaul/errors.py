"""Every error backhaul raises on purpose, in one tree rooted in :class:`BackhaulError`.

A caller never has to catch ``sqlite3.OperationalError``, ``asyncpg.PostgresError`` or
``aiohttp.ClientError``: each dependency's errors are translated once, at the boundary where they
occur, into one of these (``raise ... from exc``). An HTTP handler maps them in one place
(:func:`backhaul.web.error_middleware`) by their ``status``::

    BackhaulError                  reason: a sentence a person can act on
    ├── ConfigError                the settings cannot be used (the programs exit with status 2)
    ├── InputError        400      a peer sent something unusable: drop it, retrying cannot help (or 413, 415)
    │   ├── WireError              malformed wire format (backhaul.wire)
    │   │   ├── TooLarge  413      over a configured size limit (compressed or decompressed)
    │   │   ├── Unsupported 415    a content type, message or encoding this build does not take
    │   │   └── AlertFormatError   not a valid compact alert message
    │   ├── SelectorError          a series selector that does not parse
    │   ├── UnknownTables 409      a batch refers to series tables the collector does not keep
    │   └── OverLimit     422      a query would return more than a configured limit (``limit`` names it)
    ├── AuthError     401/403      no, unknown or revoked credential, or another device's data
    ├── Unavailable       503      transient: not now (overloaded, shutting down); retry after ``retry_after``
    │   └── StoreError             a storage operation failed (``transient`` says whether retrying can help)
    ├── PeerError                  a peer did not acknowledge (no answer, or an answer that is not a 2xx);
    │   │                          ``kind`` is a short metric label (timeout, connection, http_503, ...)
    │   └── Refused                the peer refuses this message for good (a 4xx): drop it, count it
    ├── ScrapeError                a scrape that produced no samples (the target's ``up`` is 0)
    └── StartError                 a component could not start (port taken, ...): exit status 1

``status`` is the HTTP status a receiver answers with. Errors that never reach a client (peer, config,
start errors) keep the default 500; a handler that lets one escape has a bug, and the middleware logs it
with its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class BackhaulError(Exception):
    """Root of the tree. ``reason`` is the message; ``status`` the HTTP answer it maps to."""

    status = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(BackhaulError):
    """The configuration cannot be used; the message names the field and the problem."""


class InputError(BackhaulError, ValueError):
    """Input that cannot be used; the message says what is wrong (HTTP 400, or ``status``: 413, 415)."""

    status = 400

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        if status is not None:
            self.status = status


class WireError(InputError):
    """Input that does not follow the format; the message says what is wrong."""


class TooLarge(WireError):
    """Input, compressed or decompressed, over a configured limit (HTTP 413)."""

    status = 413

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} exceeds the limit of {limit} bytes")
        self.limit = limit


class Unsupported(WireError):
    """A request whose headers name a message type or encoding the receiver does not take (HTTP 415)."""

    status = 415


class AlertFormatError(WireError):
    """Not a valid compact alert message."""


class SelectorError(InputError):
    """The selector does not parse; the message says where."""


class UnknownTables(InputError):
    """A batch names series tables the collector does not keep (HTTP 409): send it with its tables."""

    status = 409

    def __init__(self, digests: list[str]) -> None:
        super().__init__(f"no series table with digest {', '.join(digests)}: send the batch with its tables")
        self.digests = digests


class OverLimit(InputError):
    """A well-formed query whose answer would exceed a configured limit (HTTP 422, as Prometheus
    answers a query that would load too many samples); ``limit`` names the setting."""

    status = 422

    def __init__(self, reason: str, limit: str) -> None:
        super().__init__(reason)
        self.limit = limit


class AuthError(BackhaulError):
    """``status`` is 401 (no or unknown credential) or 403 (revoked, or another device's data);
    ``challenge`` is the ``WWW-Authenticate`` a 401 carries (how to authenticate)."""

    def __init__(self, status: int, reason: str, challenge: str = "Bearer") -> None:
        super().__init__(reason)
        self.status = status
        self.challenge = challenge


class Unavailable(BackhaulError):
    """Not now: overloaded, shutting down, or a resource is missing (HTTP 503 with ``Retry-After``)."""

    status = 503

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class StoreError(Unavailable):
    """A storage operation failed; ``transient`` says whether retrying later can help."""

    def __init__(self, reason: str, *, transient: bool, retry_after: float = 5.0) -> None:
        super().__init__(reason, retry_after)
        self.transient = transient


class PeerError(BackhaulError):
    """A peer did not acknowledge. ``kind`` is a short metric label (``timeout``, ``http_503`` ...)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Refused(PeerError):
    """The peer refuses this message for good (a 4xx other than auth, timeout or rate limit)."""


class ScrapeError(BackhaulError):
    """A scrape that produced no samples; the message says why."""


class StartError(BackhaulError):
    """A component could not start (a port taken, a folder not writable): the program exits with status 1."""


@contextlib.contextmanager
def store_trouble(what: str) -> Iterator[None]:
    """Re-raise a StoreError with ``what`` in front of its reason, so the answer says which store failed."""
    try:
        yield
    except StoreError as exc:
        raise StoreError(f"{what}: {exc.reason}", transient=exc.transient, retry_after=exc.retry_after) from exc
