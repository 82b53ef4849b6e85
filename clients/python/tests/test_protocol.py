"""Unit tests of the sans-IO core: frames, the decoder, control payloads, channel names, URLs,
and the session's routing."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import switchyard
from switchyard import _protocol as p
from switchyard import _session as s

REPO = Path(__file__).resolve().parents[3]
A = uuid.UUID("aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa")
B = uuid.UUID("bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb")
C = uuid.UUID("cccccccc-cccc-cccc-cccc-cccccccccccc")
CH = uuid.UUID("11111111-1111-1111-1111-111111111111")


def worked_example() -> List[bytes]:
    """The frames of PROTOCOL.md §12, from the document itself."""
    text = (REPO / "PROTOCOL.md").read_text()
    section = text[text.index("## 12. Worked example") : text.index("## 13.")]
    blocks = re.findall(r"```hex\n(.*?)```", section, re.S)
    return [bytes.fromhex(block.replace("\n", " ")) for block in blocks]


def test_worked_example_decodes() -> None:
    frames = worked_example()
    assert len(frames) == 10
    decoded = []
    for raw in frames:
        d = p.Decoder()
        d.feed(raw)
        frame = d.next_frame()
        assert frame is not None and d.next_frame() is None and d.buffered == 0
        assert p.encode(frame) == raw  # the encoder produces the document's bytes
        decoded.append(frame)
    hello, welcome, receive, *_ = decoded
    assert hello.frame_type == p.HELLO and hello.client_id == B and hello.channel_id == CH
    limits, peers = p.decode_welcome(welcome.payload)
    assert limits == p.Limits(1_048_576, 30_000, 3_600_000, 0) and peers == []
    assert p.decode_u32(receive.payload, "RECEIVE") == 1
    assert p.decode_welcome(decoded[4].payload)[1] == [B]
    start = decoded[6]
    assert (start.frame_type, start.flags, start.request_id) == (p.START, p.F_REQUEST, C)
    assert (start.timeout_ms, start.sequence, start.final, start.payload) == (5000, 0, True, b"ping")
    reply = decoded[9]
    assert (reply.flags, reply.client_id, reply.payload, reply.final) == (p.F_RESPONSE, B, b"pong", True)


def test_every_prefix_needs_more() -> None:
    raw = worked_example()[4]  # WELCOME with one peer: header + payload
    for cut in range(len(raw)):
        d = p.Decoder()
        d.feed(raw[:cut])
        assert d.next_frame() is None
    d = p.Decoder()
    for byte in raw:  # byte by byte
        assert d.next_frame() is None
        d.feed(bytes([byte]))
    assert d.next_frame() is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1000), max_size=20))
def test_random_splits_decode_the_same(cuts: List[int]) -> None:
    stream = b"".join(worked_example())
    points = sorted({min(c * 7, len(stream)) for c in cuts})
    pieces, last = [], 0
    for point in points + [len(stream)]:
        pieces.append(stream[last:point])
        last = point
    d = p.Decoder()
    got = []
    for piece in pieces:
        d.feed(piece)
        while (frame := d.next_frame()) is not None:
            got.append(p.encode(frame))
    assert got == worked_example()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_garbage_only_raises_protocol_error(data: bytes) -> None:
    d = p.Decoder(max_payload=1024)
    d.feed(data)
    try:
        while d.next_frame() is not None:
            pass
    except switchyard.ProtocolError:
        pass


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h: h.__setitem__(0, 2), "version"),
        (lambda h: h.__setitem__(1, 0x0F), "frame type"),
        (lambda h: h.__setitem__(3, 0x10), "flag"),
        (lambda h: h.__setitem__(slice(60, 64), b"\x7f\xff\xff\xff"), "payload_len"),
    ],
)
def test_header_checks_in_order(mutate: object, message: str) -> None:
    header = bytearray(worked_example()[0])
    mutate(header)  # type: ignore[operator]
    d = p.Decoder()
    d.feed(bytes(header))
    with pytest.raises(switchyard.ProtocolError, match=message):
        d.next_frame()
    with pytest.raises(switchyard.ProtocolError):  # stays failed
        d.next_frame()


def test_payload_len_checked_before_payload() -> None:
    header = bytearray(64)
    header[0], header[1] = 1, p.START
    header[60:64] = (2000).to_bytes(4, "big")
    d = p.Decoder(max_payload=1000)
    d.feed(bytes(header))  # no payload byte yet: the limit is still enforced
    with pytest.raises(switchyard.ProtocolError):
        d.next_frame()


def test_control_payloads() -> None:
    body = p.encode_error(0x0105, "x", [A, B])
    assert p.decode_error(body) == (0x0105, "x", [A, B])
    with pytest.raises(switchyard.ProtocolError):
        p.decode_error(body + b"\x00")
    with pytest.raises(switchyard.ProtocolError):
        p.decode_welcome(b"\x00" * 19)
    assert p.decode_peers(b"\x00\x00\x00\x01" + A.bytes) == [A]
    err = switchyard._errors.error_from_code(0x0105, "late", [A])
    assert isinstance(err, switchyard.BroadcastIncomplete) and err.missing == [A]
    assert isinstance(switchyard._errors.error_from_code(0x0100, ""), switchyard.NoReceiver)
    unknown = switchyard._errors.error_from_code(0x7777, "new")
    assert isinstance(unknown, switchyard.BrokerError) and unknown.code == 0x7777


def test_channel_names() -> None:
    assert str(switchyard.channel_id("orders")) == "f69ae7c9-cd0a-5ed4-97e2-813bd5200f61"
    assert switchyard.CHANNEL_NAMESPACE == uuid.uuid5(uuid.NAMESPACE_URL, "switchyard:channel")
    u = uuid.UUID("f69ae7c9-cd0a-5ed4-97e2-813bd5200f61")
    for text in (str(u), u.hex, "{" + str(u) + "}", "urn:uuid:" + str(u), str(u).upper()):
        assert switchyard.channel_id(text) == u
    assert switchyard.channel_id(u) == u
    assert switchyard.channel_id("Orders") != switchyard.channel_id("orders")
    assert switchyard.channel_id(" orders") == uuid.uuid5(switchyard.CHANNEL_NAMESPACE, " orders")
    for bad in ("", "a" * 256, "a\nb", "\x7f", str(uuid.UUID(int=0))):
        with pytest.raises(ValueError):
            switchyard.channel_id(bad)
    assert switchyard.channel_id("é" * 127)  # 254 bytes


def test_urls() -> None:
    assert p.parse_url("tcp://h:1") == p.Address("h", 1, False)
    assert p.parse_url("h:2") == p.Address("h", 2, False)
    assert p.parse_url("h") == p.Address("h", 7878, False)
    assert p.parse_url("tls://h:3") == p.Address("h", 3, True)
    assert p.parse_url("[::1]:4") == p.Address("::1", 4, False)
    for bad in ("http://h:1", "h:x", "tcp://", "h:70000"):
        with pytest.raises(ValueError):
            p.parse_url(bad)


def _broker_frame(**kw: object) -> bytes:
    kw.setdefault("channel_id", CH)
    return p.encode(p.Frame(**kw))  # type: ignore[arg-type]


def welcomed_session() -> s.Session:
    session = s.Session(CH, A)
    welcome = _broker_frame(
        frame_type=p.WELCOME, client_id=A, payload=p.encode_welcome(p.Limits(max_payload=4), [B])
    )
    (event,) = session.receive_data(welcome)
    assert isinstance(event, s.Welcome) and event.peers == [B]
    return session


def test_session_request_roundtrip_and_split() -> None:
    session = welcomed_session()
    rid = session.start_request(1000)
    frames = session.body_frames(rid, b"0123456789", True)
    decoded = []
    d = p.Decoder()
    for f in frames:
        d.feed(f)
        decoded.append(d.next_frame())
    kinds = [(f.frame_type, f.sequence, f.final, f.payload) for f in decoded if f]
    assert kinds == [(p.START, 0, False, b"0123"), (p.CHUNK, 1, False, b"4567"), (p.END, 2, True, b"89")]
    assert decoded[0] is not None and decoded[0].timeout_ms == 1000
    events = session.receive_data(
        _broker_frame(frame_type=p.START, flags=p.F_RESPONSE, client_id=B, request_id=rid, payload=b"ok")
        + _broker_frame(frame_type=p.END, flags=p.F_RESPONSE, request_id=rid, sequence=1, final=True)
    )
    assert events == [s.ResponseData(rid, b"ok", False, B), s.ResponseData(rid, b"", True, None)]
    assert session.tracked() == 0
    # A late frame for the finished request is dropped; an error for it ignored.
    late = _broker_frame(frame_type=p.ERROR, request_id=rid, payload=p.encode_error(0x0106, "?"))
    assert session.receive_data(late) == []


def test_session_ping_error_and_garbage() -> None:
    session = welcomed_session()
    assert session.receive_data(_broker_frame(frame_type=p.PING, sequence=7)) == []
    d = p.Decoder()
    d.feed(session.output.pop())
    pong = d.next_frame()
    assert pong is not None and pong.frame_type == p.PONG and pong.sequence == 7
    rid = session.start_request(0)
    (failed,) = session.receive_data(
        _broker_frame(frame_type=p.ERROR, request_id=rid, payload=p.encode_error(0x0100, "none"))
    )
    assert isinstance(failed, s.ResponseFailed) and isinstance(failed.error, switchyard.NoReceiver)
    (dead,) = session.receive_data(b"\x09" * 64)
    assert isinstance(dead, s.ConnectionFailed) and isinstance(dead.error, switchyard.ProtocolError)
    assert session.receive_data(b"more") == []


def test_session_not_a_broker() -> None:
    session = s.Session(CH)
    (event,) = session.receive_data(b"HTTP/1.1 400 Bad Request\r\n" + b"x" * 64)
    assert isinstance(event, s.ConnectionFailed)
    assert isinstance(event.error, switchyard.NotASwitchyardBroker)


def test_session_broadcast_assembly_and_ack() -> None:
    session = welcomed_session()
    rid = uuid.uuid4()
    flags = p.F_REQUEST | p.F_BROADCAST
    events = session.receive_data(
        _broker_frame(frame_type=p.START, flags=flags, client_id=B, request_id=rid, payload=b"ab")
        + _broker_frame(frame_type=p.END, flags=flags, request_id=rid, sequence=1, final=True, payload=b"c")
    )
    assert events == [s.BroadcastReceived(rid, B, b"abc")]
    assert session.ack_frame(rid) is not None and session.ack_frame(rid) is None


def test_session_resume_secret_travels_in_the_request_id_field() -> None:
    """PROTOCOL.md §5: the WELCOME's request id field is the resume secret; a HELLO presents it
    in its own request id field (the payloads are unchanged)."""
    secret = uuid.uuid4()
    session = s.Session(CH, A)
    d = p.Decoder()
    d.feed(session.hello_frame(b"token", secret))
    hello = d.next_frame()
    assert hello is not None and hello.request_id == secret and hello.payload == b"token"
    welcome = _broker_frame(
        frame_type=p.WELCOME,
        client_id=A,
        request_id=secret,
        payload=p.encode_welcome(p.Limits(max_payload=4), []),
    )
    (event,) = session.receive_data(welcome)
    assert isinstance(event, s.Welcome) and event.resume == secret


def _peers_answer(ids: List[uuid.UUID]) -> bytes:
    payload = len(ids).to_bytes(4, "big") + b"".join(i.bytes for i in ids)
    return _broker_frame(frame_type=p.PEERS, final=True, payload=payload)


def test_session_presence_overflow_resyncs_the_peer_list() -> None:
    """PROTOCOL.md §8: ERROR PRESENCE_OVERFLOW (nil request id) is a notice, not fatal; the
    session reports PresenceResync, queues a PEERS question of its own, and turns the answer into
    Presence events for the difference (no PeersAnswer: no caller asked)."""
    D = uuid.UUID("dddddddd-dddd-dddd-dddd-dddddddddddd")
    E = uuid.UUID("eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee")
    session = welcomed_session()  # peers: [B]
    joined = _broker_frame(frame_type=p.PEER_JOINED, client_id=C, final=True)
    assert session.receive_data(joined) == [s.Presence(C, True)]
    assert session.peers == [B, C]
    # The broker dropped frames (C left, D joined), then sent the marker.
    notice = _broker_frame(
        frame_type=p.ERROR, final=True, payload=p.encode_error(0x0200, "presence events dropped")
    )
    assert session.receive_data(notice) == [s.PresenceResync()]
    d = p.Decoder()
    for raw in session.output:
        d.feed(raw)
    session.output.clear()
    question = d.next_frame()
    assert question is not None and d.next_frame() is None
    assert question.frame_type == p.PEERS and question.flags == 0 and question.payload == b""
    assert question.channel_id == CH and question.request_id == p.NIL
    # A caller's question after the session's own: the answers come in question order.
    session.peers_frame()
    assert session.receive_data(_peers_answer([B, D])) == [s.Presence(C, False), s.Presence(D, True)]
    assert session.peers == [B, D]
    # Presence frames after the marker are complete again; the caller's answer adds nothing.
    later = _broker_frame(frame_type=p.PEER_JOINED, client_id=E, final=True)
    assert session.receive_data(later) == [s.Presence(E, True)]
    assert session.receive_data(_peers_answer([B, D, E])) == [s.PeersAnswer([B, D, E])]
    # A notice this client does not know (>= 0x0200, nil id) is ignored; the session lives on.
    unknown = _broker_frame(frame_type=p.ERROR, final=True, payload=p.encode_error(0x0201, "?"))
    assert session.receive_data(unknown) == []
    assert session.receive_data(_broker_frame(frame_type=p.PONG, sequence=5, final=True)) == [
        s.Pong(5)
    ]
    assert session.tracked() == 0


def test_session_sends_no_flags_or_payloads_where_forbidden_and_takes_final() -> None:
    """PROTOCOL.md §3, §11, §13.3: HELLO/PING/PONG/PEERS/RECEIVE without flags; PING, PONG,
    CANCEL, PEERS and a peer's ACK without payload; FINAL accepted on every broker frame."""
    session = welcomed_session()
    bid = session.start_broadcast(0)
    rid = session.start_request(0)
    inbound = [
        _broker_frame(frame_type=p.PEER_JOINED, client_id=C, final=True),
        _broker_frame(frame_type=p.PEER_LEFT, client_id=C, final=True),
        _broker_frame(frame_type=p.PING, sequence=0, final=True),  # the half-close probe (§1)
        _broker_frame(frame_type=p.PEERS, final=True, payload=p.encode_u32(0)),
        _broker_frame(frame_type=p.ACK, flags=p.F_BROADCAST, request_id=bid, final=True,
                      payload=p.encode_u32(1)),
        _broker_frame(frame_type=p.CANCEL, flags=p.F_RESPONSE, client_id=B, request_id=rid,
                      final=True),
        _broker_frame(frame_type=p.START, flags=p.F_REQUEST | p.F_BROADCAST, client_id=B,
                      request_id=C, final=True, payload=b"b"),
        _broker_frame(frame_type=p.START, flags=p.F_REQUEST, client_id=B, request_id=B,
                      payload=b"x"),
    ]
    events = [e for raw in inbound for e in session.receive_data(raw)]
    assert not any(isinstance(e, s.ConnectionFailed) for e in events), events
    rid2 = session.start_request(0)
    sent_raw = [
        *session.output,  # the PONG
        session.hello_frame(b"", uuid.uuid4()),
        session.ping_frame()[1],
        session.peers_frame(),
        session.receive_frame(3),
        session.ack_frame(C),
        *session.body_frames(rid2, b"q", False),
        session.cancel_request_frame(rid2),
        session.cancel_incoming_frame(B),
    ]
    d = p.Decoder()
    for raw in sent_raw:
        assert raw is not None
        d.feed(raw)
    sent = []
    while (f := d.next_frame()) is not None:
        sent.append(f)
    by_type = {t: [f for f in sent if f.frame_type == t] for t in {f.frame_type for f in sent}}
    for t in (p.HELLO, p.PING, p.PONG, p.PEERS, p.RECEIVE):
        assert [f.flags for f in by_type[t]] == [0], t
    for t in (p.PING, p.PONG, p.PEERS, p.ACK, p.CANCEL):
        assert by_type[t] and all(f.payload == b"" for f in by_type[t]), t
    assert by_type[p.ACK][0].flags == p.F_BROADCAST
    assert [f.flags for f in by_type[p.CANCEL]] == [p.F_REQUEST, p.F_RESPONSE]
