"""The switchyard wire format (PROTOCOL.md §1–§3, §5.1, §11), sans-IO.

Nothing here touches a socket or a clock. :class:`Decoder` turns bytes into :class:`Frame` s and
raises nothing but :class:`~switchyard.ProtocolError` on garbage; :func:`encode` is its inverse.

Invariants:

- :meth:`Decoder.next_frame` returns ``None`` ("need more") for every strict prefix of a valid
  frame, and the checks run in the order of PROTOCOL.md §1: version, frame type, flags, then
  ``payload_len`` against the limit *before* any payload byte is buffered for it.
- How the input is split into :meth:`Decoder.feed` calls never changes the frames decoded.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from ._errors import ProtocolError

VERSION = 1
HEADER_LEN = 64
DEFAULT_MAX_PAYLOAD = 1_048_576
MAX_PAYLOAD_CEILING = 16_777_216
MAX_SEQUENCE = (1 << 31) - 1
FINAL_BIT = 1 << 31
NIL = uuid.UUID(int=0)
DEFAULT_PORT = 7878

# Frame types (§2).
HELLO = 0x01
WELCOME = 0x02
START = 0x03
CHUNK = 0x04
END = 0x05
ERROR = 0x06
ACK = 0x07
RECEIVE = 0x08
CANCEL = 0x09
PEER_JOINED = 0x0A
PEER_LEFT = 0x0B
PING = 0x0C
PONG = 0x0D
PEERS = 0x0E

FRAME_NAMES = {
    HELLO: "HELLO",
    WELCOME: "WELCOME",
    START: "START",
    CHUNK: "CHUNK",
    END: "END",
    ERROR: "ERROR",
    ACK: "ACK",
    RECEIVE: "RECEIVE",
    CANCEL: "CANCEL",
    PEER_JOINED: "PEER_JOINED",
    PEER_LEFT: "PEER_LEFT",
    PING: "PING",
    PONG: "PONG",
    PEERS: "PEERS",
}

# Flags (§3).
F_REQUEST = 0x0001
F_RESPONSE = 0x0002
F_BROADCAST = 0x0004
F_NO_WAIT = 0x0008
DEFINED_FLAGS = F_REQUEST | F_RESPONSE | F_BROADCAST | F_NO_WAIT

_HEADER = struct.Struct(">BBH16s16s16sIII")

#: The namespace of channel names (PROTOCOL.md §5.1): UUIDv5(NAMESPACE_URL, "switchyard:channel").
CHANNEL_NAMESPACE = uuid.UUID("dda4c0a4-9209-58ee-bed8-816189f73351")


@dataclass(frozen=True)
class Frame:
    """One decoded (or to-be-encoded) frame: the header fields and the payload."""

    frame_type: int
    flags: int = 0
    client_id: uuid.UUID = NIL
    channel_id: uuid.UUID = NIL
    request_id: uuid.UUID = NIL
    timeout_ms: int = 0
    sequence: int = 0
    final: bool = False
    payload: bytes = field(default=b"", repr=False)

    @property
    def name(self) -> str:
        """The frame type's name, for messages."""
        return FRAME_NAMES.get(self.frame_type, f"0x{self.frame_type:02x}")


def encode(frame: Frame) -> bytes:
    """The wire bytes of ``frame``: the 64-byte header, then the payload."""
    seq = frame.sequence | (FINAL_BIT if frame.final else 0)
    header = _HEADER.pack(
        VERSION,
        frame.frame_type,
        frame.flags,
        frame.client_id.bytes,
        frame.channel_id.bytes,
        frame.request_id.bytes,
        frame.timeout_ms,
        seq,
        len(frame.payload),
    )
    return header + frame.payload if frame.payload else header


class Decoder:
    """A streaming frame decoder: :meth:`feed` bytes, then call :meth:`next_frame` until ``None``.

    ``max_payload`` bounds ``payload_len``; it defaults to the protocol's ceiling (16 MiB) because
    a broker's ERROR text may exceed a small configured max payload.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD_CEILING) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_payload = max_payload
        self._failed: Optional[ProtocolError] = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded into a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Appends received bytes."""
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Optional[Frame]:
        """The next complete frame, or ``None`` when more bytes are needed.

        Raises :class:`ProtocolError` on input that can never become a valid frame; the decoder
        then stays failed (every later call raises the same error).
        """
        if self._failed is not None:
            raise self._failed
        available = len(self._buf) - self._pos
        if available < HEADER_LEN:
            return None
        try:
            header = _HEADER.unpack_from(self._buf, self._pos)
        except struct.error as exc:  # pragma: no cover - the length was checked above
            raise self._fail(f"undecodable header: {exc}") from None
        version, ftype, flags, cid, chid, rid, timeout_ms, seq, plen = header
        if version != VERSION:
            raise self._fail(f"unsupported version byte {version} (expected {VERSION})")
        if ftype not in FRAME_NAMES:
            raise self._fail(f"unknown frame type 0x{ftype:02x}")
        if flags & ~DEFINED_FLAGS:
            raise self._fail(f"undefined flag bits 0x{flags & ~DEFINED_FLAGS:04x}")
        if plen > self.max_payload:
            raise self._fail(f"payload_len {plen} over the limit {self.max_payload}")
        if available < HEADER_LEN + plen:
            return None
        start = self._pos + HEADER_LEN
        payload = bytes(self._buf[start : start + plen])
        self._pos = start + plen
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        return Frame(
            frame_type=ftype,
            flags=flags,
            client_id=uuid.UUID(bytes=cid),
            channel_id=uuid.UUID(bytes=chid),
            request_id=uuid.UUID(bytes=rid),
            timeout_ms=timeout_ms,
            sequence=seq & MAX_SEQUENCE,
            final=bool(seq & FINAL_BIT),
            payload=payload,
        )

    def _fail(self, message: str) -> ProtocolError:
        self._failed = ProtocolError(message)
        return self._failed


# ----- control payloads (§11) ----------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The broker's limits, from its WELCOME. Times in milliseconds."""

    max_payload: int = DEFAULT_MAX_PAYLOAD
    default_timeout_ms: int = 30_000
    max_timeout_ms: int = 3_600_000
    heartbeat_ms: int = 10_000


def _peer_list(data: bytes, what: str) -> List[uuid.UUID]:
    if len(data) % 16:
        raise ProtocolError(f"{what}: peer list of {len(data)} bytes is not a multiple of 16")
    return [uuid.UUID(bytes=data[i : i + 16]) for i in range(0, len(data), 16)]


def decode_welcome(payload: bytes) -> Tuple[Limits, List[uuid.UUID]]:
    """The limits and the peers of a WELCOME payload. (Its header's request id field is the
    resume secret, PROTOCOL.md §5: the payload layout is unchanged.)"""
    if len(payload) < 20:
        raise ProtocolError(f"WELCOME payload of {len(payload)} bytes (at least 20)")
    max_payload, default_ms, max_ms, heartbeat_ms, count = struct.unpack_from(">IIIII", payload)
    if len(payload) != 20 + 16 * count:
        raise ProtocolError(f"WELCOME announces {count} peers in {len(payload)} bytes")
    if not 1 <= max_payload <= MAX_PAYLOAD_CEILING:
        raise ProtocolError(f"WELCOME max_payload {max_payload} out of range")
    limits = Limits(max_payload, default_ms, max_ms, heartbeat_ms)
    return limits, _peer_list(payload[20:], "WELCOME")


def encode_welcome(limits: Limits, peers: List[uuid.UUID]) -> bytes:
    """A WELCOME payload (used by tests and fake brokers)."""
    head = struct.pack(
        ">IIIII",
        limits.max_payload,
        limits.default_timeout_ms,
        limits.max_timeout_ms,
        limits.heartbeat_ms,
        len(peers),
    )
    return head + b"".join(p.bytes for p in peers)


def decode_error(payload: bytes) -> Tuple[int, str, List[uuid.UUID]]:
    """The code, text and listed client ids of an ERROR payload."""
    if len(payload) < 4:
        raise ProtocolError(f"ERROR payload of {len(payload)} bytes (at least 4)")
    code, text_len = struct.unpack_from(">HH", payload)
    if len(payload) < 4 + text_len:
        raise ProtocolError(f"ERROR text of {text_len} bytes in a {len(payload)}-byte payload")
    try:
        text = payload[4 : 4 + text_len].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("ERROR text is not UTF-8") from None
    return code, text, _peer_list(payload[4 + text_len :], "ERROR")


def encode_error(code: int, text: str, peers: List[uuid.UUID] = []) -> bytes:  # noqa: B006
    """An ERROR payload (used by tests and fake brokers)."""
    raw = text.encode("utf-8")
    return struct.pack(">HH", code, len(raw)) + raw + b"".join(p.bytes for p in peers)


def decode_u32(payload: bytes, what: str) -> int:
    """The single ``u32`` of a RECEIVE or broker ACK payload."""
    if len(payload) != 4:
        raise ProtocolError(f"{what} payload of {len(payload)} bytes (expected 4)")
    value: int = struct.unpack(">I", payload)[0]
    return value


def encode_u32(value: int) -> bytes:
    """A ``u32`` payload."""
    return struct.pack(">I", value)


def decode_peers(payload: bytes) -> List[uuid.UUID]:
    """The client ids of a broker's PEERS answer."""
    if len(payload) < 4:
        raise ProtocolError(f"PEERS payload of {len(payload)} bytes (at least 4)")
    (count,) = struct.unpack_from(">I", payload)
    if len(payload) != 4 + 16 * count:
        raise ProtocolError(f"PEERS announces {count} peers in {len(payload)} bytes")
    return _peer_list(payload[4:], "PEERS")


# ----- channel names (§5.1) ------------------------------------------------------------------


def channel_id(channel: Union[str, uuid.UUID]) -> uuid.UUID:
    """The channel id of ``channel``: a UUID as is, a string that parses as a UUID (hyphenated,
    32 hex digits, braced or ``urn:uuid:``) as that UUID, any other string as a name:
    ``uuid5(CHANNEL_NAMESPACE, name)``. Names are 1 to 255 UTF-8 bytes without control
    characters; others raise :class:`ValueError`. The nil UUID is refused too."""
    if isinstance(channel, uuid.UUID):
        result = channel
    else:
        parsed = _parse_uuid(channel)
        if parsed is not None:
            result = parsed
        else:
            raw = channel.encode("utf-8")
            if not 1 <= len(raw) <= 255:
                raise ValueError(f"a channel name is 1 to 255 bytes, not {len(raw)}")
            if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in channel):
                raise ValueError("a channel name has no control characters")
            result = uuid.uuid5(CHANNEL_NAMESPACE, channel)
    if result == NIL:
        raise ValueError("the nil UUID is not a channel")
    return result


def _parse_uuid(text: str) -> Optional[uuid.UUID]:
    body = text
    if body[:9].lower() == "urn:uuid:":
        body = body[9:]
    elif body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    hexdigits = "0123456789abcdefABCDEF"
    if len(body) == 32 and all(c in hexdigits for c in body):
        return uuid.UUID(hex=body)
    if len(body) == 36 and all(body[i] == "-" for i in (8, 13, 18, 23)):
        plain = body.replace("-", "")
        if len(plain) == 32 and all(c in hexdigits for c in plain):
            return uuid.UUID(hex=plain)
    return None


# ----- addresses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """A broker address: host, port and whether it is TLS."""

    host: str
    port: int
    tls: bool


def parse_url(url: str) -> Address:
    """``tcp://host:port``, ``tls://host:port`` or ``host:port`` (port defaults to 7878;
    IPv6 hosts in brackets)."""
    tls = False
    rest = url
    if "://" in url:
        scheme, rest = url.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("tcp", "tls"):
            raise ValueError(f"unsupported scheme {scheme!r} (tcp:// or tls://)")
        tls = scheme == "tls"
    rest = rest.rstrip("/")
    if not rest:
        raise ValueError(f"no host in {url!r}")
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ValueError(f"unclosed '[' in {url!r}")
        host, tail = rest[1:close], rest[close + 1 :]
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise ValueError(f"bad address {url!r}")
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, ""
    if not host:
        raise ValueError(f"no host in {url!r}")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r} in {url!r}")
        port = int(port_text)
    else:
        port = DEFAULT_PORT
    return Address(host, port, tls)
