"""The ``[listen]`` and ``[limits]`` settings of the collector's HTTP listener and its upload endpoints
(batches, remote write, alerts)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import ByteSize, Field, model_validator

from backhaul.listener import ListenLimits
from backhaul.settings import InputLimits, ReadableFile


class ListenSettings(ListenLimits):
    """Where the collector listens, its timeouts and cap (:class:`~backhaul.listener.ListenLimits`),
    and TLS: ``tls_cert`` + ``tls_key`` serve HTTPS; ``client_ca`` makes the device endpoints require a
    client certificate signed by that CA (mTLS), whose CN or a DNS SAN must be the device's id when
    ``client_identity = "device_id"``. The files are reloaded on SIGHUP and when they change."""

    host: str = "127.0.0.1"
    port: int = Field(9300, ge=0, le=65535)
    # Thousands of devices keep a connection or two each (uploads, alerts): the unit allows 65536 files.
    max_connections: int = Field(8192, ge=1, le=1_000_000)
    # A batch of a few MiB over a slow link takes minutes; only authenticated devices get that far
    # (the token is checked before the body is read).
    body_timeout: timedelta = Field(timedelta(seconds=600), gt=timedelta(0))
    tls_cert: ReadableFile | None = None
    tls_key: ReadableFile | None = None
    client_ca: ReadableFile | None = None
    client_identity: Literal["any", "device_id"] = "any"

    @model_validator(mode="after")
    def _tls_pairs(self) -> ListenSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("listen.tls_cert and listen.tls_key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("listen.client_ca needs listen.tls_cert and listen.tls_key (mTLS is TLS first)")
        if self.client_identity == "device_id" and self.client_ca is None:
            raise ValueError('listen.client_identity = "device_id" needs listen.client_ca')
        return self


class LimitSettings(InputLimits):
    """Limits on one upload's body, its labels, and the memory decoding uploads may take."""

    max_request_bytes: ByteSize = ByteSize(64 * 1024**2)
    max_decompressed_bytes: ByteSize = ByteSize(256 * 1024**2)
