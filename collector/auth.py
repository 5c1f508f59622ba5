"""Per-device bearer tokens, checked against the device registry in the store on every request, and
with mTLS (``[listen] client_ca``) the client certificate that must come with them.

Only SHA-256 digests of tokens are stored. The registry is read per request (one indexed lookup), so
a revocation or rotation made by any instance, or by the ``devices`` CLI, holds at once everywhere.
With ``client_ca`` the TLS layer has verified any certificate a client presented; a device endpoint
then refuses a request without one (401), and with ``client_identity = "device_id"`` one whose CN or
DNS/URI SANs do not name the token's device (403).
"""

from __future__ import annotations

from aiohttp import web

from backhaul.errors import AuthError, store_trouble
from backhaul.tls import peer_identities
from collector.store import Registration, Store
from collector.tokens import token_digest


class DeviceAuth:
    """Args: the store that holds the registry; ``client_cert``: whether the device endpoints require a
    client certificate; ``match_device``: whether its identity must be the device's id."""

    def __init__(self, store: Store, client_cert: bool = False, match_device: bool = False) -> None:
        self._store = store
        self._client_cert = client_cert
        self._match_device = match_device

    async def device_of(self, request: web.Request) -> str:
        """The device a request comes from: its bearer token and, with mTLS, its client certificate."""
        return (await self.registration_of(request)).device

    async def registration_of(self, request: web.Request) -> Registration:
        """The registry entry of the device a request comes from (see :meth:`device_of`)."""
        peercert = None
        if self._client_cert:
            transport = request.transport
            peercert = transport.get_extra_info("peercert") if transport is not None else None
            if not peercert:
                raise AuthError(401, "a client certificate is required (the collector has listen.client_ca)")
        found = await self.registration_for(request.headers.get("Authorization"))
        if self._match_device:
            names = peer_identities(peercert)
            if found.device not in names:
                raise AuthError(403, f"the client certificate names {sorted(names)!r}, not device {found.device!r}")
        return found

    async def device_for(self, authorization: str | None) -> str:
        """The device a ``Bearer`` header belongs to; raises :class:`AuthError` or :class:`StoreError`."""
        return (await self.registration_for(authorization)).device

    async def registration_for(self, authorization: str | None) -> Registration:
        """The registry entry a ``Bearer`` header belongs to (see :meth:`device_for`)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "missing bearer token")
        # A registry that cannot be read raises StoreError (503): the device retries.
        with store_trouble("device registry"):
            found = await self._store.registration(token_digest(token))
        if found is None:
            raise AuthError(401, "unknown token")
        if found.revoked:
            raise AuthError(403, f"device {found.device!r} is revoked")
        return found

    @staticmethod
    def check_claim(token_device: str, claimed: str) -> None:
        if token_device != claimed:
            raise AuthError(403, f"this token belongs to device {token_device!r}, not {claimed!r}")
