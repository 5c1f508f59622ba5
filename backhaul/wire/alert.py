"""The compact alert message: one alert state change in at most 160 bytes, for any link, with a MAC.

Small enough for one SMS (140 bytes after base64 is not, but 160 raw bytes fit a satellite short-burst
message and an MQTT packet anywhere), identical on every transport, decoded by the collector with this
same module. Layout, version 2 (integers are unsigned LEB128 varints unless noted)::

    version      u8   2
    flags        u8   bits 0-1 state (0 firing, 1 resolved), bits 2-4 severity (0 none, 1 info,
                      2 warning, 3 critical), bit 5 a summary follows; bits 6-7 zero
    seq          varint   the agent's alert sequence number (per alert queue, increasing), < 2**63
    ts_ms        varint   when the state changed, agent wall clock, ms since the epoch, < 2**53
    fingerprint  u32 big-endian   which alert instance (rule + series labels), stable across restarts
    value        f64 little-endian   the value that made the rule fire or resolve (NaN for none)
    device       varint length + UTF-8, at most 64 bytes
    rule         varint length + UTF-8, at most 48 bytes
    summary      (bit 5 only) varint length + UTF-8, whatever room is left below 160 bytes
    mac          8 bytes: the first 8 bytes of HMAC-SHA256(key, every byte before the mac), where
                 key = SHA-256 of the device's token (:func:`token_key`): the agent holds the token,
                 the collector only its digest, and both can compute the key

The MAC makes the message its own proof of origin whatever carried it (HTTP, an MQTT broker anyone
may publish to, an SMS gateway); ``seq``, covered by it, orders an alert's states and makes a replay
harmless (the collector keeps each message once and never moves a state back to an older ``seq``).

Version 1 is the same message without the MAC (at most 160 bytes, so it may hold a longer summary).
:func:`decode` still reads it; the collector accepts it only where the channel itself authenticates
the sender (HTTP with the device's bearer token), never from MQTT (docs/alerts.md).

Over-long strings are cut (at a character boundary) rather than let the message exceed the bound; the
long form (labels, full summary) can travel with the bulk data. A repeat of ``(device, seq, ts_ms)`` is
the same message, re-sent after a lost acknowledgement.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from backhaul.errors import AlertFormatError
from backhaul.wire.varint import varint

VERSION = 2
UNSIGNED_VERSION = 1
MAC_BYTES = 8
MAX_BYTES = 160
MAX_DEVICE_BYTES = 64
MAX_RULE_BYTES = 48
CONTENT_TYPE = "application/x-backhaul-alert"
STATES = ("firing", "resolved")
SEVERITIES = ("none", "info", "warning", "critical")
_U32 = struct.Struct(">I")
_F64 = struct.Struct("<d")
_MAX_TS_MS = 1 << 53
_MAX_SEQ = 1 << 63


@dataclass(frozen=True)
class AlertMessage:
    """One alert state change.

    Args:
        device: the sending device's id (cut to 64 bytes on the wire).
        rule: the rule's (alert's) name (cut to 48 bytes).
        state: ``firing`` or ``resolved``.
        severity: one of :data:`SEVERITIES`.
        value: the observed value (NaN when there is none, e.g. ``absent``).
        ts_ms: when the state changed (ms since the epoch).
        seq: the agent's alert sequence number.
        fingerprint: identity of the alert instance (u32).
        summary: optional short text, cut to whatever room is left.
    """

    device: str
    rule: str
    state: str
    severity: str
    value: float
    ts_ms: int
    seq: int
    fingerprint: int
    summary: str = ""


def _cut(text: str, limit: int) -> bytes:
    """UTF-8 of ``text``, at most ``limit`` bytes, never ending inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def token_key(token: str) -> bytes:
    """The MAC key of a device: the SHA-256 of its token (without surrounding whitespace, as the
    collector's registry digests it), i.e. ``bytes.fromhex(token_sha256)`` at the collector."""
    return hashlib.sha256(token.strip().encode()).digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_BYTES]


def encode(msg: AlertMessage, key: bytes) -> bytes:
    """The message, version 2, signed with ``key`` (:func:`token_key`), in at most :data:`MAX_BYTES`
    bytes (long strings are cut to fit)."""
    body = _encode(msg, VERSION, MAX_BYTES - MAC_BYTES)
    return body + mac(key, body)


def encode_unsigned(msg: AlertMessage) -> bytes:
    """The message as version 1, without a MAC: what agents before version 2 sent, and what the
    agent's queue holds (the sender signs each message when it sends it, with the key it has then)."""
    return _encode(msg, UNSIGNED_VERSION, MAX_BYTES)


def sign(body: bytes, key: bytes) -> bytes:
    """A queued message (either version) as version 2, signed with ``key``."""
    return encode(decode(body), key)


def verify(data: bytes, key: bytes) -> bool:
    """Whether a version 2 message's MAC is that of ``key`` (False for version 1: it has none)."""
    if len(data) <= MAC_BYTES or data[0] != VERSION:
        return False
    return hmac.compare_digest(mac(key, data[:-MAC_BYTES]), data[-MAC_BYTES:])


def _encode(msg: AlertMessage, version: int, limit: int) -> bytes:
    if msg.state not in STATES:
        raise ValueError(f"state must be one of {STATES}, not {msg.state!r}")
    if msg.severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, not {msg.severity!r}")
    if not 0 <= msg.ts_ms < _MAX_TS_MS or not 0 <= msg.seq < _MAX_SEQ or not 0 <= msg.fingerprint < 1 << 32:
        raise ValueError("ts_ms, seq or fingerprint out of range")
    device = _cut(msg.device, MAX_DEVICE_BYTES)
    rule = _cut(msg.rule, MAX_RULE_BYTES)
    flags = STATES.index(msg.state) | SEVERITIES.index(msg.severity) << 2
    body = bytearray()
    body += varint(msg.seq) + varint(msg.ts_ms) + _U32.pack(msg.fingerprint) + _F64.pack(msg.value)
    body += varint(len(device)) + device + varint(len(rule)) + rule
    if msg.summary:
        room = limit - 2 - len(body) - 1  # one length byte: room is always below 128
        summary = _cut(msg.summary, max(0, room))
        if summary:
            flags |= 1 << 5
            body += varint(len(summary)) + summary
    out = bytes((version, flags)) + bytes(body)
    assert len(out) <= limit, len(out)  # holds by construction: 2+9+8+12+65+49 = 145 <= 152
    return out


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise AlertFormatError(f"alert message ends inside {what} (at byte {self.pos}, {len(self.data)} bytes)")
        part = self.data[self.pos : self.pos + n]
        self.pos += n
        return part

    def varint(self, what: str) -> int:
        value, shift = 0, 0
        while True:
            (byte,) = self.take(1, what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise AlertFormatError(f"{what}: varint longer than 10 bytes")

    def text(self, what: str, limit: int) -> str:
        n = self.varint(f"{what} length")
        if n > limit:
            raise AlertFormatError(f"{what} of {n} bytes exceeds {limit}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AlertFormatError(f"{what} is not UTF-8") from exc


def decode(data: bytes) -> AlertMessage:
    """Parse one message of either version (a version 2 message's MAC is not checked here: see
    :func:`verify`); raises :class:`AlertFormatError` saying what is wrong."""
    if not data:
        raise AlertFormatError("empty alert message")
    if len(data) > MAX_BYTES:
        raise AlertFormatError(f"alert message of {len(data)} bytes exceeds {MAX_BYTES}")
    if data[0] not in (UNSIGNED_VERSION, VERSION):
        raise AlertFormatError(
            f"unknown alert message version {data[0]} (this side speaks {UNSIGNED_VERSION} and {VERSION})"
        )
    if data[0] == VERSION:
        if len(data) < 2 + MAC_BYTES:
            raise AlertFormatError(f"alert message ends inside its MAC ({len(data)} bytes)")
        data = data[:-MAC_BYTES]
    r = _Reader(data)
    r.pos = 1
    (flags,) = r.take(1, "flags")
    state, severity = flags & 0x3, flags >> 2 & 0x7
    if flags & 0xC0:
        raise AlertFormatError(f"reserved flag bits set (flags 0x{flags:02x})")
    if state >= len(STATES):
        raise AlertFormatError(f"unknown state {state}")
    if severity >= len(SEVERITIES):
        raise AlertFormatError(f"unknown severity {severity}")
    seq = r.varint("seq")
    if seq >= _MAX_SEQ:
        raise AlertFormatError(f"seq {seq} out of range (at most 2**63-1)")
    ts_ms = r.varint("timestamp")
    if ts_ms >= _MAX_TS_MS:
        raise AlertFormatError(f"timestamp {ts_ms} out of range")
    (fingerprint,) = _U32.unpack(r.take(4, "fingerprint"))
    (value,) = _F64.unpack(r.take(8, "value"))
    device = r.text("device", MAX_DEVICE_BYTES)
    if not device:
        raise AlertFormatError("empty device id")
    rule = r.text("rule", MAX_RULE_BYTES)
    if not rule:
        raise AlertFormatError("empty rule name")
    summary = r.text("summary", MAX_BYTES) if flags & 1 << 5 else ""
    if r.pos != len(data):
        raise AlertFormatError(f"{len(data) - r.pos} unexpected bytes after the message")
    return AlertMessage(device, rule, STATES[state], SEVERITIES[severity], value, ts_ms, seq, fingerprint, summary)
