"""Sans-IO state of one connection to the broker: handshake, demultiplexing, stream state.

A :class:`Session` is fed the bytes the broker sends (:meth:`Session.receive_data`) and returns
:class:`Event` s, each naming the request id it concerns; it also builds every frame the client
sends (``*_frames`` methods return ``bytes`` to write). It never touches a socket or a clock;
the asyncio front (``_aio.py``) owns one per connection and routes events to the waiting
operations. A reconnect is a new Session (so an operation can only ever write on the connection
it was registered on).

Routing (as the Rust client's ``session.rs``): one request id may be both our outgoing request
and an incoming one (the broker may assign our own request to us), so the direction flag decides:

======================================  ===========================================
broker frame                            event
======================================  ===========================================
START/CHUNK/END  REQUEST                :class:`RequestData` (incoming request)
START/CHUNK/END  REQUEST|BROADCAST      assembled; :class:`BroadcastReceived` at FINAL
START/CHUNK/END  RESPONSE               :class:`ResponseData` (our request's answer)
CANCEL           RESPONSE               :class:`ResponseFailed` (:class:`Cancelled`)
CANCEL           REQUEST / none         :class:`RequestFailed`, or a broadcast dropped
ACK                                     :class:`BroadcastDone` (acked count)
ERROR  code < 0x0100 / nil LIMIT        :class:`ConnectionFailed` (then nothing more)
ERROR  GOING_AWAY, nil id               :class:`GoingAwayNotice`
ERROR  PRESENCE_OVERFLOW, nil id        :class:`PresenceResync`, PEERS queued in ``output``
ERROR  other code >= 0x0200, nil id     ignored (a notice this client predates)
ERROR  other                            outgoing op, else incoming request
PING / PONG                             PONG queued in :attr:`Session.output` / :class:`Pong`
PEER_JOINED / PEER_LEFT                 :class:`Presence`
PEERS answer                            :class:`Presence` for the difference, then
                                        :class:`PeersAnswer` (if a caller asked)
======================================  ===========================================

Presence (PROTOCOL.md §8): the session keeps the peer list the events add up to
(:attr:`Session.peers`: the WELCOME's, then every PEER_JOINED / PEER_LEFT). Every PEERS answer
is compared with it and the difference is reported as :class:`Presence` events before the answer,
so the events always add up to the last answer. After ERROR PRESENCE_OVERFLOW (the broker dropped
presence frames while we were behind; a notice, not fatal) the session reports
:class:`PresenceResync` and queues a PEERS question of its own in :attr:`Session.output`; its
answer yields the difference (what was missed) but no :class:`PeersAnswer`, since no caller
asked — the owner's FIFO of PEERS waiters stays aligned with the questions it sent through
:meth:`Session.peers_frame`.

Frames we send (PROTOCOL.md §3, §11): HELLO, PING, PONG, PEERS and RECEIVE carry no flags; PING,
PONG, CANCEL, PEERS and a peer's ACK carry no payload (the broker closes with MALFORMED_FRAME
otherwise). FINAL is accepted on every broker frame (§13.3: the broker sets it on all it
originates).

Invariants:

- An id is tracked from its registration (or its START, incoming) until its stream ends: the
  FINAL, an error or a cancel is delivered once with ``end=True`` and the id is forgotten, so
  nothing is delivered after an operation ended. Frames for untracked ids are dropped.
- Broker input never raises: bad input becomes one :class:`ConnectionFailed` event carrying a
  :class:`ProtocolError`, after which the session is dead and :meth:`receive_data` returns
  nothing more.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from collections import deque
from typing import Deque, Dict, List, Optional, Set, Union

from . import _protocol as p
from ._errors import (
    Cancelled,
    ErrorCode,
    NotASwitchyardBroker,
    ProtocolError,
    SwitchyardError,
    TooLarge,
    error_from_code,
)

# ----- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    """The handshake completed: our (possibly assigned) id, the limits, the other peers."""

    client_id: uuid.UUID
    limits: p.Limits
    peers: List[uuid.UUID]
    #: The resume secret (the WELCOME's request id field, PROTOCOL.md §5): what a later HELLO
    #: for the same id presents to take it over or resume it. Nil from a broker that gives none.
    resume: uuid.UUID = p.NIL


@dataclass(frozen=True)
class ResponseData:
    """Bytes of the response to our request ``request_id``; ``end`` on its FINAL.
    ``responder`` is set on the response's START."""

    request_id: uuid.UUID
    data: bytes
    end: bool
    responder: Optional[uuid.UUID] = None


@dataclass(frozen=True)
class ResponseFailed:
    """Our request ``request_id`` ended without a (complete) response."""

    request_id: uuid.UUID
    error: SwitchyardError
    end: bool = True


@dataclass(frozen=True)
class RequestData:
    """Bytes of an incoming request; ``start`` on its first frame (with sender and remaining
    timeout), ``end`` on its FINAL."""

    request_id: uuid.UUID
    data: bytes
    end: bool
    start: bool = False
    sender: uuid.UUID = p.NIL
    timeout_ms: int = 0


@dataclass(frozen=True)
class RequestFailed:
    """An incoming request ended on the broker's side (cancel, timeout, stream error)."""

    request_id: uuid.UUID
    error: SwitchyardError
    end: bool = True


@dataclass(frozen=True)
class BroadcastReceived:
    """A broadcast received in full; its ACK is owed (:meth:`Session.ack_frame`)."""

    request_id: uuid.UUID
    sender: uuid.UUID
    body: bytes


@dataclass(frozen=True)
class BroadcastCancelled:
    """A broadcast we received (or were receiving) was ended by the broker: no ACK is owed."""

    request_id: uuid.UUID


@dataclass(frozen=True)
class BroadcastDone:
    """Our broadcast ended: ``acked`` peers acked all, or ``error`` says why not."""

    request_id: uuid.UUID
    acked: int = 0
    error: Optional[SwitchyardError] = None


@dataclass(frozen=True)
class Presence:
    """A peer joined (``joined``) or left the channel."""

    peer: uuid.UUID
    joined: bool


@dataclass(frozen=True)
class PresenceResync:
    """ERROR PRESENCE_OVERFLOW: the broker dropped presence events while we were behind. A PEERS
    question is queued in :attr:`Session.output`; its answer brings :class:`Presence` events for
    the difference."""


@dataclass(frozen=True)
class PeersAnswer:
    """The broker's answer to the oldest PEERS question."""

    peers: List[uuid.UUID]


@dataclass(frozen=True)
class Pong:
    """The broker answered our PING ``sequence``."""

    sequence: int


@dataclass(frozen=True)
class GoingAwayNotice:
    """The broker drains (GOING_AWAY): start nothing new; the connection closes soon."""

    message: str


@dataclass(frozen=True)
class ConnectionFailed:
    """The connection is over for ``error`` (fatal ERROR or protocol violation). Close it."""

    error: SwitchyardError


Event = Union[
    Welcome,
    ResponseData,
    ResponseFailed,
    RequestData,
    RequestFailed,
    BroadcastReceived,
    BroadcastCancelled,
    BroadcastDone,
    Presence,
    PresenceResync,
    PeersAnswer,
    Pong,
    GoingAwayNotice,
    ConnectionFailed,
]

# ----- session -------------------------------------------------------------------------------

REQUEST = p.F_REQUEST
RESPONSE = p.F_RESPONSE
BROADCAST = p.F_REQUEST | p.F_BROADCAST


@dataclass
class _Inbound:
    """Receive state of one stream: the next expected sequence number."""

    next_seq: int = 0


@dataclass
class _PartialBroadcast:
    sender: uuid.UUID
    next_seq: int = 1
    body: bytearray = field(default_factory=bytearray)


@dataclass
class _Outbound:
    """Send state of one of our streams: its flags and the next sequence number."""

    flags: int
    timeout_ms: int = 0
    next_seq: int = 0


class Session:
    """One connection's protocol state. See the module docs for the routing and invariants."""

    def __init__(self, channel: uuid.UUID, client_id: Optional[uuid.UUID] = None) -> None:
        self.channel = channel
        #: Our id: the requested one until the WELCOME, then the one the broker gave.
        self.client_id = client_id if client_id is not None else p.NIL
        self.limits = p.Limits()
        self.welcomed = False
        self.going_away = False
        #: Frames the session itself wants written (PONG answers, CANCELs), in order.
        self.output: List[bytes] = []
        self._decoder = p.Decoder()
        self._dead = False
        self._ping_seq = 0
        self._outgoing: Dict[uuid.UUID, _Inbound] = {}  # our requests: response state
        self._broadcasts_out: Set[uuid.UUID] = set()  # our broadcasts awaiting ACK/ERROR
        self._incoming: Dict[uuid.UUID, _Inbound] = {}  # requests assigned to us
        self._partial: Dict[uuid.UUID, _PartialBroadcast] = {}
        self._unacked: Set[uuid.UUID] = set()  # broadcasts received in full, ACK owed
        self._sending: Dict[uuid.UUID, _Outbound] = {}  # key: id; REQUEST/BROADCAST bodies
        self._responding: Dict[uuid.UUID, _Outbound] = {}  # our responses being sent
        self._peers: List[uuid.UUID] = []  # the other peers, as the presence events add up
        self._peers_questions: Deque[bool] = deque()  # PEERS in flight; True: our own (resync)

    # ----- frames we send -------------------------------------------------------------------

    def _frame(
        self,
        frame_type: int,
        flags: int = 0,
        request_id: uuid.UUID = p.NIL,
        sequence: int = 0,
        final: bool = False,
        payload: bytes = b"",
        timeout_ms: int = 0,
    ) -> bytes:
        return p.encode(
            p.Frame(
                frame_type,
                flags,
                self.client_id,
                self.channel,
                request_id,
                timeout_ms,
                sequence,
                final,
                payload,
            )
        )

    def hello_frame(self, token: bytes = b"", resume: uuid.UUID = p.NIL) -> bytes:
        """The HELLO (the token is its payload; ``resume``, the resume secret of an earlier
        WELCOME for our id or nil, is in its request id field: PROTOCOL.md §5)."""
        return self._frame(p.HELLO, request_id=resume, payload=token)

    def receive_frame(self, window: int) -> bytes:
        """RECEIVE(window): how many requests we hold at once (set, not added)."""
        return self._frame(p.RECEIVE, payload=p.encode_u32(window))

    def ping_frame(self) -> "tuple[int, bytes]":
        """A PING with a fresh sequence number, and that number."""
        self._ping_seq = (self._ping_seq % p.MAX_SEQUENCE) + 1
        return self._ping_seq, self._frame(p.PING, sequence=self._ping_seq)

    def peers_frame(self) -> bytes:
        """A PEERS question (answers come in the order of the questions; each yields one
        :class:`PeersAnswer`)."""
        self._peers_questions.append(False)
        return self._frame(p.PEERS)

    @property
    def peers(self) -> List[uuid.UUID]:
        """The other peers, as the WELCOME, the presence events and the PEERS answers add up."""
        return list(self._peers)

    def start_request(self, timeout_ms: int, no_wait: bool = False) -> uuid.UUID:
        """Registers an outgoing request before its first frame is written; returns its id."""
        rid = uuid.uuid4()
        self._outgoing[rid] = _Inbound()
        flags = REQUEST | (p.F_NO_WAIT if no_wait else 0)
        self._sending[rid] = _Outbound(flags, timeout_ms)
        return rid

    def start_broadcast(self, timeout_ms: int) -> uuid.UUID:
        """Registers an outgoing broadcast; returns its id."""
        rid = uuid.uuid4()
        self._broadcasts_out.add(rid)
        self._sending[rid] = _Outbound(BROADCAST, timeout_ms)
        return rid

    def body_frames(self, request_id: uuid.UUID, data: bytes, final: bool) -> List[bytes]:
        """The frames carrying ``data`` of our request/broadcast body, split at the max payload;
        with ``final``, the last one closes the stream (START|FINAL or END). Empty when the
        stream was already forgotten (cancelled, or closed)."""
        state = self._sending.get(request_id)
        if state is None:
            return []
        frames = self._split(request_id, state, data, final)
        if final:
            del self._sending[request_id]
        return frames

    def response_frames(self, request_id: uuid.UUID, data: bytes, final: bool) -> List[bytes]:
        """The frames of our response to incoming request ``request_id`` (see
        :meth:`body_frames`). A response's FINAL ends the request: it is forgotten."""
        state = self._responding.get(request_id)
        if state is None:
            if request_id not in self._incoming:
                return []
            state = self._responding[request_id] = _Outbound(RESPONSE)
        frames = self._split(request_id, state, data, final)
        if final:
            self._responding.pop(request_id, None)
            self._incoming.pop(request_id, None)
        return frames

    def _split(self, rid: uuid.UUID, state: _Outbound, data: bytes, final: bool) -> List[bytes]:
        size = max(1, min(self.limits.max_payload, p.MAX_PAYLOAD_CEILING))
        pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        if not final and pieces == [b""]:
            return []
        frames = []
        for index, piece in enumerate(pieces):
            last = final and index == len(pieces) - 1
            seq = state.next_seq
            if seq > p.MAX_SEQUENCE:
                raise TooLarge("a stream may have at most 2^31 - 1 frames after its START")
            if seq == 0:
                ftype, timeout = p.START, state.timeout_ms
            else:
                ftype, timeout = (p.END if last else p.CHUNK), 0
            flags = state.flags if seq == 0 else state.flags & ~p.F_NO_WAIT
            frames.append(self._frame(ftype, flags, rid, seq, last, bytes(piece), timeout))
            state.next_seq += 1
        return frames

    def cancel_request_frame(self, request_id: uuid.UUID) -> Optional[bytes]:
        """Abandons our request (or broadcast): forgets it and returns its CANCEL, or ``None``
        when it had already ended (nothing to cancel)."""
        self._sending.pop(request_id, None)
        if self._outgoing.pop(request_id, None) is not None:
            return self._frame(p.CANCEL, REQUEST, request_id, final=True)
        if request_id in self._broadcasts_out:
            self._broadcasts_out.discard(request_id)
            return self._frame(p.CANCEL, BROADCAST, request_id, final=True)
        return None

    def cancel_incoming_frame(self, request_id: uuid.UUID) -> Optional[bytes]:
        """Gives up an incoming request: forgets it and returns its CANCEL (RESPONSE), or
        ``None`` when it had already ended."""
        self._responding.pop(request_id, None)
        if self._incoming.pop(request_id, None) is None:
            return None
        return self._frame(p.CANCEL, RESPONSE, request_id, final=True)

    def ack_frame(self, request_id: uuid.UUID) -> Optional[bytes]:
        """The ACK owed for a received broadcast, or ``None`` if none is owed any more (already
        acked, or cancelled by the broker)."""
        if request_id not in self._unacked:
            return None
        self._unacked.discard(request_id)
        return self._frame(p.ACK, p.F_BROADCAST, request_id, final=True)

    def ack_owed(self, request_id: uuid.UUID) -> bool:
        """True while a received broadcast's ACK is owed (not sent, not cancelled)."""
        return request_id in self._unacked

    def is_incoming(self, request_id: uuid.UUID) -> bool:
        """True while an incoming request is held (not finished, cancelled or failed)."""
        return request_id in self._incoming

    def tracked(self) -> int:
        """Streams tracked in any role (for tests: 0 once everything ended)."""
        return (
            len(self._outgoing)
            + len(self._broadcasts_out)
            + len(self._incoming)
            + len(self._partial)
            + len(self._unacked)
            + len(self._sending)
            + len(self._responding)
        )

    # ----- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> List[Event]:
        """Decodes ``data`` and returns the events, in wire order. After a
        :class:`ConnectionFailed` (always the last event) the session is dead."""
        if self._dead:
            return []
        self._decoder.feed(data)
        events: List[Event] = []
        while True:
            try:
                frame = self._decoder.next_frame()
            except ProtocolError as exc:
                error: SwitchyardError = exc
                if not self.welcomed:
                    error = NotASwitchyardBroker(
                        f"the server does not speak the switchyard protocol ({exc.message})"
                    )
                return self._die(events, error)
            if frame is None:
                return events
            try:
                self._handle(frame, events)
            except SwitchyardError as exc:
                return self._die(events, exc)
            if self._dead:
                return events

    def _die(self, events: List[Event], error: SwitchyardError) -> List[Event]:
        self._dead = True
        events.append(ConnectionFailed(error))
        return events

    def _handle(self, frame: p.Frame, events: List[Event]) -> None:
        ftype = frame.frame_type
        if not self.welcomed:
            self._handle_handshake(frame, events)
            return
        if ftype != p.ERROR and frame.channel_id not in (p.NIL, self.channel):
            raise ProtocolError(f"{frame.name} for channel {frame.channel_id}, not ours")
        if ftype in (p.START, p.CHUNK, p.END):
            self._handle_stream(frame, events)
        elif ftype == p.ERROR:
            self._handle_error(frame, events)
        elif ftype == p.ACK:
            rid = frame.request_id
            if rid in self._broadcasts_out:
                count = p.decode_u32(frame.payload, "ACK")
                self._broadcasts_out.discard(rid)
                self._sending.pop(rid, None)
                events.append(BroadcastDone(rid, acked=count))
        elif ftype == p.CANCEL:
            self._handle_cancel(frame, events)
        elif ftype in (p.PEER_JOINED, p.PEER_LEFT):
            joined, peer = ftype == p.PEER_JOINED, frame.client_id
            if joined and peer not in self._peers:
                self._peers.append(peer)
            elif not joined and peer in self._peers:
                self._peers.remove(peer)
            events.append(Presence(peer, joined))
        elif ftype == p.PING:
            self.output.append(self._frame(p.PONG, sequence=frame.sequence, final=frame.final))
        elif ftype == p.PONG:
            events.append(Pong(frame.sequence))
        elif ftype == p.PEERS:
            peers = p.decode_peers(frame.payload)
            # The difference from the list the events add up to: after a PRESENCE_OVERFLOW, what
            # was missed.
            now, before = set(peers), set(self._peers)
            events.extend(Presence(gone, False) for gone in self._peers if gone not in now)
            events.extend(Presence(peer, True) for peer in peers if peer not in before)
            self._peers = list(peers)
            ours = self._peers_questions.popleft() if self._peers_questions else False
            if not ours:
                events.append(PeersAnswer(peers))
        else:
            raise ProtocolError(f"the broker sent {frame.name}, which only clients send")

    def _handle_handshake(self, frame: p.Frame, events: List[Event]) -> None:
        if frame.frame_type == p.PING:
            self.output.append(self._frame(p.PONG, sequence=frame.sequence, final=frame.final))
        elif frame.frame_type == p.ERROR:
            code, text, peers = p.decode_error(frame.payload)
            raise error_from_code(code, text, peers)
        elif frame.frame_type == p.WELCOME:
            if frame.channel_id != self.channel:
                raise ProtocolError(f"WELCOME for channel {frame.channel_id}, not ours")
            if frame.client_id == p.NIL:
                raise ProtocolError("WELCOME with a nil client id")
            limits, peers = p.decode_welcome(frame.payload)
            self.limits = limits
            self.client_id = frame.client_id
            self.welcomed = True
            self._peers = list(peers)
            events.append(Welcome(frame.client_id, limits, peers, frame.request_id))
        else:
            raise NotASwitchyardBroker(f"{frame.name} before the WELCOME")

    def _check_seq(self, state: _Inbound, frame: p.Frame) -> None:
        expected = state.next_seq
        bad = frame.sequence != expected or (
            frame.frame_type == p.START and expected != 0
        ) or (frame.frame_type != p.START and expected == 0)
        if bad or (frame.frame_type == p.CHUNK and frame.final) or (
            frame.frame_type == p.END and not frame.final
        ):
            raise ProtocolError(
                f"{frame.name} seq {frame.sequence} of stream {frame.request_id} out of order "
                f"(expected {expected})"
            )
        state.next_seq += 1

    def _handle_stream(self, frame: p.Frame, events: List[Event]) -> None:
        rid = frame.request_id
        direction = frame.flags & (p.F_REQUEST | p.F_RESPONSE)
        if rid == p.NIL:
            raise ProtocolError(f"{frame.name} with a nil request id")
        if direction not in (p.F_REQUEST, p.F_RESPONSE):
            raise ProtocolError(f"{frame.name} with flags 0x{frame.flags:04x}: not one direction")
        if direction == p.F_RESPONSE:
            if frame.flags & p.F_BROADCAST:
                raise ProtocolError(f"{frame.name} with RESPONSE|BROADCAST")
            out = self._outgoing.get(rid)
            if out is None:
                return  # a response to a request we no longer track (crossed our CANCEL)
            self._check_seq(out, frame)
            if frame.final:
                del self._outgoing[rid]
            responder = frame.client_id if frame.frame_type == p.START else None
            events.append(ResponseData(rid, frame.payload, frame.final, responder))
        elif frame.flags & p.F_BROADCAST:
            self._handle_broadcast(frame, events)
        else:
            if frame.frame_type == p.START:
                if rid in self._incoming:
                    raise ProtocolError(f"second START for incoming request {rid}")
                self._incoming[rid] = _Inbound()
            state = self._incoming.get(rid)
            if state is None:
                return  # we gave it up already
            self._check_seq(state, frame)
            start = frame.frame_type == p.START
            events.append(
                RequestData(
                    rid, frame.payload, frame.final, start, frame.client_id, frame.timeout_ms
                )
            )

    def _handle_broadcast(self, frame: p.Frame, events: List[Event]) -> None:
        rid = frame.request_id
        if frame.frame_type == p.START:
            if frame.sequence != 0:
                raise ProtocolError(f"broadcast START with sequence {frame.sequence}")
            partial = _PartialBroadcast(frame.client_id)
            self._partial[rid] = partial
        else:
            found = self._partial.get(rid)
            if found is None:
                return
            partial = found
            if frame.sequence != partial.next_seq or (frame.frame_type == p.CHUNK and frame.final):
                raise ProtocolError(f"broadcast {rid}: {frame.name} seq {frame.sequence} out of order")
            if frame.frame_type == p.END and not frame.final:
                raise ProtocolError(f"broadcast {rid}: END without FINAL")
            partial.next_seq += 1
        partial.body += frame.payload
        if frame.final:
            del self._partial[rid]
            self._unacked.add(rid)
            events.append(BroadcastReceived(rid, partial.sender, bytes(partial.body)))

    def _handle_error(self, frame: p.Frame, events: List[Event]) -> None:
        code, text, peers = p.decode_error(frame.payload)
        rid = frame.request_id
        if rid == p.NIL:
            if code == ErrorCode.GOING_AWAY:
                self.going_away = True
                events.append(GoingAwayNotice(text))
                return
            if code == ErrorCode.PRESENCE_OVERFLOW:
                # A notice (§8): presence frames were dropped while we were behind. Re-ask.
                events.append(PresenceResync())
                self._peers_questions.append(True)
                self.output.append(self._frame(p.PEERS))
                return
            if code < 0x0100 or code == ErrorCode.LIMIT_EXCEEDED:
                raise error_from_code(code, text, peers)
            # A per-request code without a request, or a notice (>= 0x0200) we do not know.
            return
        error = error_from_code(code, text, peers)
        if self._outgoing.pop(rid, None) is not None:
            self._sending.pop(rid, None)
            events.append(ResponseFailed(rid, error))
        elif rid in self._broadcasts_out:
            self._broadcasts_out.discard(rid)
            self._sending.pop(rid, None)
            events.append(BroadcastDone(rid, error=error))
        elif self._incoming.pop(rid, None) is not None:
            self._responding.pop(rid, None)
            events.append(RequestFailed(rid, error))
        elif self._partial.pop(rid, None) is not None or rid in self._unacked:
            self._unacked.discard(rid)
            events.append(BroadcastCancelled(rid))
        # else: an error for an id we no longer track (UNKNOWN_REQUEST after a cancel): ignored

    def _handle_cancel(self, frame: p.Frame, events: List[Event]) -> None:
        rid = frame.request_id
        flags = frame.flags
        if flags & p.F_REQUEST and flags & p.F_RESPONSE:
            raise ProtocolError("CANCEL with both REQUEST and RESPONSE")
        if flags & p.F_RESPONSE:
            if self._outgoing.pop(rid, None) is not None:
                self._sending.pop(rid, None)
                events.append(ResponseFailed(rid, Cancelled("the receiver cancelled the request")))
            return
        if not flags & p.F_BROADCAST and self._incoming.pop(rid, None) is not None:
            self._responding.pop(rid, None)
            events.append(
                RequestFailed(rid, Cancelled("the sender cancelled, or the request timed out"))
            )
            return
        if self._partial.pop(rid, None) is not None or rid in self._unacked:
            self._unacked.discard(rid)
            events.append(BroadcastCancelled(rid))
