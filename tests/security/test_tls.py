"""Issue 12, finding 11: TLS and mTLS built in, with certificates made at test time (trustme).

The collector serves HTTPS (``[listen] tls_cert``, ``tls_key``) and with ``client_ca`` requires device
certificates; the agent verifies it (``[uplink] ca_file``, ``server_name``) and presents its own
(``client_cert``, ``client_key``) for batches, alerts and remote write alike. A certificate the agent
cannot trust — from a private CA it was not given, expired, for another host — or a missing or wrong
client certificate is refused with a clear log line; the data stays in the buffer and is delivered,
once, when the certificates are fixed, which takes no restart: SIGHUP, or just replacing the files."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from backhaul.wire.series import SeriesMap
from tests.conftest import Running
from tests.support import (
    READ,
    READ_HEADERS,
    TOKEN,
    Proc,
    exported_samples,
    free_port,
    http,
    push,
    toml_text,
    wait_until,
)

pytestmark = [pytest.mark.integration]


class Pki:
    """A test's certificates: a CA the collector's clients are given, another nobody trusts, and PEM
    files that are replaced atomically (as certbot does), so a reload never reads half a file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        self.stranger = trustme.CA()  # a CA nobody was told to trust

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def leaf(self, prefix: str, cert: trustme.LeafCert) -> tuple[Path, Path]:
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        return self.write(f"{prefix}.pem", chain), self.write(f"{prefix}.key", cert.private_key_pem.bytes())

    def server(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), expired: bool = False) -> tuple[Path, Path]:
        now = datetime.datetime.now(datetime.UTC)
        if expired:
            cert = self.ca.issue_cert(
                *hosts, not_before=now - datetime.timedelta(days=2), not_after=now - datetime.timedelta(days=1)
            )
        else:
            cert = self.ca.issue_cert(*hosts)
        return self.leaf("server", cert)

    def client(self, identity: str, ca: trustme.CA | None = None) -> tuple[Path, Path]:
        return self.leaf("client", (ca or self.ca).issue_cert(identity))

    def ca_file(self, ca: trustme.CA | None = None, name: str = "ca.pem") -> Path:
        return self.write(name, (ca or self.ca).cert_pem.bytes())

    def reader(self, verify: bool = True) -> ssl.SSLContext:
        """The test's own TLS settings for reading the collector (no client certificate: an operator);
        ``verify=False`` while the test serves a certificate nobody should trust."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass
class Https:
    proc: Proc
    url: str
    log: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return Pki(folder)


@pytest.fixture
def tls_collector(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., Https]]:
    """A collector serving HTTPS with ``pki``'s server certificate (as it stands in the files)."""
    started: list[Proc] = []

    def start(**listen: Any) -> Https:
        port = free_port()
        cert, key = pki.folder / "server.pem", pki.folder / "server.key"
        if not cert.exists():
            pki.server()
        config = tmp_path / "collector.toml"
        config.write_text(
            toml_text(
                {
                    "listen": {"host": "127.0.0.1", "port": port, "tls_cert": cert, "tls_key": key, **listen},
                    "store": {"path": tmp_path / "collector.db"},
                    "devices": [{"id": "dev-1", "token": TOKEN}, {"id": "dev-2", "token": TOKEN + "-2"}],
                    "read": READ,
                }
            )
        )
        proc = Proc("backhaul-collector", config, tmp_path / "collector.log").start()
        started.append(proc)
        url = f"https://127.0.0.1:{port}"
        proc.wait_healthy(url, context=pki.reader(verify=False))
        return Https(proc, url, tmp_path / "collector.log")

    yield start
    for proc in started:
        proc.kill()


def samples(n: int = 5) -> SeriesMap:
    now = int(time.time() * 1000)
    return {(("__name__", "tls_test"), ("i", str(i))): ([now - 1000 + i], [float(i)]) for i in range(n)}


def as_exported(series: SeriesMap) -> dict[Any, dict[int, float]]:
    return {labels: dict(zip(ts, vs, strict=True)) for labels, (ts, vs) in series.items()}


def logged(path: Path, text: str, timeout: float = 20) -> None:
    wait_until(lambda: text in path.read_text(), timeout, f"{text!r} in {path.name}")


def agent_log(agent: Running) -> Path:
    return agent.config.with_suffix(".log")


def delivered(collector: Https, pki: Pki, pushed: SeriesMap) -> None:
    """Every pushed sample arrives at the collector exactly as sent (the agent kept it until now)."""
    selector = '{__name__="tls_test"}'
    wait_until(
        lambda: exported_samples(collector.url, selector, context=pki.reader()) == as_exported(pushed),
        30,
        "the buffered samples at the collector",
    )


def test_an_agent_uploads_over_tls_to_a_private_ca(
    pki: Pki, tls_collector: Callable[..., Https], start_agent: Callable[..., Running]
) -> None:
    collector = tls_collector()
    rule = {"name": "TlsTest", "selector": 'tls_test{i="0"}', "op": ">", "threshold": -1, "for": 0}
    agent = start_agent(collector.url, uplink={"ca_file": pki.ca_file()}, alerts={"rules": [rule]})
    pushed = samples()
    assert push(agent.url, pushed) == [204]
    delivered(collector, pki, pushed)

    # The alert lane's http channel uses the same TLS settings: the rule's alert reaches the collector.
    def alert_listed() -> bool:
        url = f"{collector.url}/api/v1/alerts?device=dev-1"
        return b"TlsTest" in http("GET", url, headers=READ_HEADERS, context=pki.reader())[1]

    wait_until(alert_listed, 20, "the rule's alert over TLS")
    # Plain HTTP to the TLS port gets nowhere near the data.
    with pytest.raises(OSError):
        http(
            "GET", collector.url.replace("https", "http") + "/api/v1/export?match[]=up", headers=READ_HEADERS, timeout=3
        )


@pytest.mark.parametrize(
    ("case", "refusal"),
    [
        ("expired", "certificate has expired"),
        ("wrong host", "Hostname mismatch"),
        ("private CA", "unable to get local issuer certificate"),
    ],
)
def test_a_certificate_the_agent_cannot_trust_is_refused_and_the_data_kept(
    case: str, refusal: str, pki: Pki, tls_collector: Callable[..., Https], start_agent: Callable[..., Running]
) -> None:
    if case == "expired":
        pki.server(expired=True)
    elif case == "wrong host":
        pki.server(hosts=("collector.example.com",))
    ca_file = pki.ca_file(pki.stranger if case == "private CA" else pki.ca)
    collector = tls_collector()
    # By name, as a device reaches a collector (the URL's host is an address here).
    agent = start_agent(collector.url, uplink={"ca_file": ca_file, "server_name": "localhost"})
    pushed = samples()
    assert push(agent.url, pushed) == [204]
    logged(agent_log(agent), f"upload failed (tls: the server's certificate was refused: {refusal}")
    assert exported_samples(collector.url, '{__name__="tls_test"}', context=pki.reader(verify=False)) == {}

    if case == "private CA":
        # The agent is given the right CA: the file changes and it reloads by itself.
        pki.ca_file(pki.ca)
        logged(agent_log(agent), "uplink TLS: reloaded")
    else:
        # The collector's certificate is renewed; SIGHUP reloads it without a restart.
        pki.server()
        assert collector.proc.popen is not None
        collector.proc.popen.send_signal(signal.SIGHUP)
        logged(collector.log, "listen TLS: reloaded")
    delivered(collector, pki, pushed)
    assert collector.proc.running and agent.proc.running


def test_mtls_requires_a_client_certificate_naming_the_device(
    tmp_path: Path, pki: Pki, tls_collector: Callable[..., Https], start_agent: Callable[..., Running]
) -> None:
    collector = tls_collector(client_ca=pki.ca_file(name="clients.pem"), client_identity="device_id")
    buffer = {"path": tmp_path / "buffer.db"}
    pushed = samples()

    # No client certificate: the device endpoints refuse it, both sides say why.
    agent = start_agent(collector.url, name="no-cert", buffer=buffer, uplink={"ca_file": pki.ca_file()})
    assert push(agent.url, pushed) == [204]
    logged(collector.log, "batch refused (401): a client certificate is required")
    logged(agent_log(agent), "(401): a client certificate is required (the collector has listen.client_ca)")
    agent.proc.stop()

    # A certificate from a CA the collector does not know: refused in the handshake.
    cert, key = pki.client("dev-1", pki.stranger)
    tls = {"ca_file": pki.ca_file(), "client_cert": cert, "client_key": key}
    agent = start_agent(collector.url, name="stranger", buffer=buffer, uplink=tls)
    logged(collector.log, "tls_handshake (client certificate refused: unable to get local issuer certificate)")

    # Signed by the right CA, but for another device: refused, naming both.
    pki.client("dev-2")
    logged(agent_log(agent), "uplink TLS: reloaded")
    logged(collector.log, "batch refused (403): the client certificate names ['dev-2'], not device 'dev-1'")

    # Its own certificate, dropped in place of the files: delivered, once, without a restart.
    pki.client("dev-1")
    delivered(collector, pki, pushed)
    assert exported_samples(collector.url, '{__name__="tls_test"}', context=pki.reader()) == as_exported(pushed)


def test_remote_write_uses_the_uplink_tls_settings(
    tmp_path: Path, pki: Pki, tls_collector: Callable[..., Https], start_agent: Callable[..., Running]
) -> None:
    collector = tls_collector(client_ca=pki.ca_file(name="clients.pem"))
    cert, key = pki.client("dev-1")
    tls = {"ca_file": pki.ca_file(), "client_cert": cert, "client_key": key, "server_name": "localhost"}
    agent = start_agent(
        collector.url,
        # The collector adds device_id itself (from the token), as a TSDB would not.
        uplink={"url": f"{collector.url}/api/v1/write", "protocol": "remote_write", "device_label": "", **tls},
        alerts={"enabled": False},
    )
    pushed = samples()
    assert push(agent.url, pushed) == [204]
    delivered(collector, pki, pushed)


def test_a_bad_renewal_keeps_the_certificates_in_force(pki: Pki, tls_collector: Callable[..., Https]) -> None:
    collector = tls_collector()
    # Half a renewal: a new key that is not the certificate's. SIGHUP: logged, the old pair stays.
    pki.write("server.key", pki.ca.issue_cert("127.0.0.1").private_key_pem.bytes())
    assert collector.proc.popen is not None
    collector.proc.popen.send_signal(signal.SIGHUP)
    logged(collector.log, "listen TLS: keeping the certificates in force: cannot use tls_cert")
    assert http("GET", f"{collector.url}/healthz", context=pki.reader())[0] == 200
    # The renewal completed (both files replaced): the file watcher reloads without any signal.
    pki.server(hosts=("127.0.0.1", "localhost", "renewed.example.com"))
    logged(collector.log, "listen TLS: reloaded")
    context = pki.reader()
    context.check_hostname = False  # look at the certificate served, by address
    with socket.create_connection(("127.0.0.1", int(collector.url.rsplit(":", 1)[1]))) as raw:
        with context.wrap_socket(raw) as tls:
            served = tls.getpeercert()
    assert served is not None
    assert ("DNS", "renewed.example.com") in served.get("subjectAltName", ())
    assert collector.proc.running
