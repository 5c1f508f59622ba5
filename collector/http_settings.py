"""The ``[listen]`` and ``[limits]`` settings of the collector's HTTP listener and its upload endpoints
(batches, remote write, alerts)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import ByteSize, Field, model_validator

from backhaul.listener import ListenLimits
from backhaul.settings import ReadableFile, Section


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


class LimitSettings(Section):
    """Limits on one upload's body, its labels, and the memory decoding uploads may take."""

    max_request_bytes: ByteSize = ByteSize(64 * 1024**2)
    # Hard cap on what one batch may decompress to: a zstd bomb gets 413, never an out-of-memory.
    max_decompressed_bytes: ByteSize = ByteSize(256 * 1024**2)
    # Decoded samples cost far more than their bytes (backhaul/wire/budget.py): one upload may take
    # twice max_decompressed_bytes once decoded (estimated before decoding; more is 413), and all
    # uploads being decoded together at most this (default: the same); others wait, then get 503.
    max_decoding_bytes: ByteSize | None = None
    # Label rules (backhaul/labels.py): a series over these is dropped and counted, the rest kept.
    max_labels_per_series: int = Field(128, ge=1)
    max_label_bytes: int = Field(16 * 1024, ge=64)

    def per_request_decoding_bytes(self) -> int:
        return 2 * int(self.max_decompressed_bytes)

    def total_decoding_bytes(self) -> int:
        if self.max_decoding_bytes is None:
            return self.per_request_decoding_bytes()
        return int(self.max_decoding_bytes)
