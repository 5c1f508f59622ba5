"""TLS for both programs: contexts built from files, rebuilt when the files change, and TLS failures
described in one line a person can act on.

- :class:`ServerTls`: the collector's listener (``[listen] tls_cert``, ``tls_key``, optional
  ``client_ca``). The listening socket keeps one context for its lifetime; its SNI callback (run for
  every handshake, with or without SNI) hands each connection the newest context, so a renewed
  certificate or a new client CA bundle takes effect for the next handshake, without a restart and
  without dropping established connections.
- :class:`ClientTls`: the agent's side (``[uplink] ca_file``, ``client_cert``, ``client_key``,
  ``server_name``); the HTTP post helper asks it for :attr:`ClientTls.context` on every request, so a
  reload applies to the next connection.
- :meth:`TlsFiles.reload` rebuilds from the files; a file that is missing, unreadable or does not fit
  (a key for another certificate, half written) keeps the context in force and is logged once.
  :func:`watch` reloads when a file's size, mtime or inode changes; SIGHUP reloads through the
  lifecycle (:meth:`backhaul.lifecycle.Lifecycle.reload`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from backhaul.errors import ConfigError
from backhaul.lifecycle import Lifecycle, TaskGroup
from backhaul.settings import ReadableFile, Section

log = logging.getLogger(__name__)

# How often watch() looks at the files: a renewed certificate is in force within this long.
WATCH_INTERVAL = 5.0

Signature = tuple[tuple[int, int, int] | None, ...]


def _signature(paths: Sequence[Path]) -> Signature:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class TlsFiles:
    """A context built from files, rebuilt by :meth:`reload`; subclasses say how to build it.

    Args:
        what: the settings section, for messages (``listen``, ``uplink``).
        files: the files the context is built from, each as (setting name, path).
    """

    def __init__(self, what: str, files: Sequence[tuple[str, Path]]) -> None:
        self.what = what
        self._files = list(files)
        self._seen: Signature = _signature(self.paths)
        try:
            self.context = self._build()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"invalid config: {self.what}: {self._problem(exc)}") from exc

    @property
    def paths(self) -> list[Path]:
        return [path for _, path in self._files]

    def _build(self) -> ssl.SSLContext:
        raise NotImplementedError

    def _problem(self, exc: BaseException) -> str:
        names = ", ".join(f"{name} ({path})" for name, path in self._files)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"cannot use {names}: {reason}"

    def changed(self) -> bool:
        """Whether a file changed since the last (successful or failed) load."""
        return _signature(self.paths) != self._seen

    def reload(self) -> bool:
        """Rebuild from the files; True when the new context is in force. On any problem the old one stays."""
        self._seen = _signature(self.paths)
        try:
            context = self._build()
        except (OSError, ssl.SSLError) as exc:
            log.error("%s TLS: keeping the certificates in force: %s", self.what, self._problem(exc))
            return False
        self.context = context
        log.info("%s TLS: reloaded %s", self.what, ", ".join(str(p) for p in self.paths))
        return True


class ServerTls(TlsFiles):
    """The collector's listener: its certificate and key, and optionally a CA for client certificates.

    With ``client_ca`` a client *may* present a certificate (browsers reading the fleet page need none)
    and one it presents must verify against that CA; the device endpoints then require one
    (:func:`peer_identities`, ``collector.auth``).

    Args:
        cert: the certificate chain (PEM), ``listen.tls_cert``.
        key: its private key (PEM), ``listen.tls_key``.
        client_ca: CA bundle (PEM) for client certificates, ``listen.client_ca``, or None.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        files = [("tls_cert", cert), ("tls_key", key)] + ([("client_ca", client_ca)] if client_ca else [])
        super().__init__("listen", files)
        self._listening: ssl.SSLContext | None = None

    @property
    def requires_client_cert(self) -> bool:
        return self.client_ca is not None

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.load_verify_locations(cafile=self.client_ca)
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def listening_context(self) -> ssl.SSLContext:
        """The context to listen with: every handshake switches to the newest :attr:`context`."""
        if self._listening is None:
            listening = self._build()

            def newest(conn: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
                conn.context = self.context

            listening.sni_callback = newest
            self._listening = listening
        return self._listening


class ClientTls(TlsFiles):
    """The agent's side of TLS towards the collector or a time-series database.

    Args:
        ca_file: CA bundle (PEM) to verify the server with instead of the system's, or None.
        client_cert: this device's certificate (PEM) for mTLS, or None.
        client_key: its key, or None when it is in ``client_cert``.
        server_name: the name to verify (and send as SNI) when it differs from the URL's host.
        what: the settings section, for messages (``uplink``, ``proxy.cloud``).
    """

    def __init__(
        self,
        ca_file: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        server_name: str | None = None,
        what: str = "uplink",
    ) -> None:
        self.ca_file, self.client_cert, self.client_key = ca_file, client_cert, client_key
        self.server_name = server_name
        named = (("ca_file", ca_file), ("client_cert", client_cert), ("client_key", client_key))
        super().__init__(what, [(name, path) for name, path in named if path is not None])

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert is not None:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


class ClientTlsSettings(Section):
    """TLS settings of anything that connects out over https (``[uplink]``, ``[proxy.cloud]``, each
    ``[[forward]]`` target): a private CA bundle instead of the system's, a client certificate and key
    (mTLS), and the name to verify when it differs from the URL's host."""

    ca_file: ReadableFile | None = None
    client_cert: ReadableFile | None = None
    client_key: ReadableFile | None = None
    server_name: str | None = Field(None, min_length=1, max_length=253)

    @model_validator(mode="after")
    def _key_needs_cert(self) -> ClientTlsSettings:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        return self

    @property
    def tls_configured(self) -> bool:
        return any(v is not None for v in (self.ca_file, self.client_cert, self.server_name))

    def client_tls(self, what: str) -> ClientTls | None:
        """The :class:`ClientTls` of these settings (``what`` names the section in messages), or None
        when none is set (the system's CAs and the URL's host)."""
        if not self.tls_configured:
            return None
        return ClientTls(self.ca_file, self.client_cert, self.client_key, self.server_name, what)


def peer_identities(peercert: dict[str, Any] | None) -> set[str]:
    """The names a verified peer certificate carries: its subject's CN and its DNS and URI SANs."""
    if not peercert:
        return set()
    names = {value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "URI")}
    for rdn in peercert.get("subject", ()):
        names.update(value for key, value in rdn if key == "commonName")
    return names


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, including the causes aiohttp keeps in attributes of its own."""
    out: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if any(current is seen for seen in out):
            continue
        out.append(current)
        for name in ("certificate_error", "os_error"):
            nested = getattr(current, name, None)
            if isinstance(nested, BaseException):
                todo.append(nested)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return out


def tls_problem(exc: BaseException) -> str | None:
    """One line saying what went wrong with TLS, when ``exc`` (or what caused it) is a TLS failure."""
    chain = _chain(exc)
    for current in chain:
        message = getattr(current, "verify_message", None)
        if isinstance(current, ssl.SSLCertVerificationError) and message:
            return f"the server's certificate was refused: {message}"
    for current in chain:
        if isinstance(current, ssl.SSLError) and not isinstance(current, ssl.SSLCertVerificationError):
            reason = (current.reason or str(current)).replace("_", " ").lower()
            if "alert" in reason:  # the peer ended the handshake: it refused us
                return f"the server refused the TLS handshake ({reason}): check client_cert and client_key"
            return f"TLS failed: {reason}"
    return None


async def watch(holders: Iterable[TlsFiles], interval: float = WATCH_INTERVAL) -> None:
    """Reload each holder whose files changed, every ``interval`` seconds, until cancelled."""
    holders = list(holders)
    while True:
        await asyncio.sleep(interval)
        for holder in holders:
            if holder.changed():
                holder.reload()


def keep_current(holders: Iterable[TlsFiles | None], life: Lifecycle, tasks: TaskGroup) -> None:
    """Reload each holder's files at every reload (SIGHUP) and whenever they change on disk (a renewed
    certificate), for both programs; None stands for TLS not configured."""
    held = [h for h in holders if h is not None]
    for tls in held:
        life.on_reload(f"{tls.what} TLS", tls.reload)
    if held:
        tasks.spawn("TLS watch", watch(held))
