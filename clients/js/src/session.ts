/**
 * Sans-IO state of one connection to the broker: handshake, demultiplexing by request id, stream
 * state, presence. A {@link Session} is fed the bytes the broker sends ({@link Session.receive})
 * and returns {@link SessionEvent}s; it also builds every frame the client sends. It never
 * touches a socket or a clock; a transport-independent client owns one per connection, and a
 * reconnect is a new Session (an operation can only ever write on the connection it started on).
 *
 * Routing (as the Python client's `_session.py` and the Rust client's `session`): one request id
 * may be both our outgoing request and an incoming one (the broker may assign our own request to
 * us), so the direction flag decides:
 *
 * | broker frame                         | event                                       |
 * |--------------------------------------|---------------------------------------------|
 * | START/CHUNK/END REQUEST              | `request-data` (incoming request)           |
 * | START/CHUNK/END REQUEST\|BROADCAST   | assembled; `broadcast` at the FINAL         |
 * | START/CHUNK/END RESPONSE             | `response-data` (our request's answer)      |
 * | CANCEL RESPONSE                      | `response-failed` (Cancelled)               |
 * | CANCEL REQUEST                       | `request-failed`, or `broadcast-cancelled`  |
 * | ACK                                  | `broadcast-done` (acked count)              |
 * | ERROR code < 0x0100 / nil LIMIT      | `connection-failed` (then nothing more)     |
 * | ERROR GOING_AWAY, nil id             | `going-away`                                |
 * | ERROR PRESENCE_OVERFLOW, nil id      | `presence-resync`, PEERS queued in `output` |
 * | ERROR other code ≥ 0x0200, nil id    | ignored (a notice this client predates)     |
 * | ERROR other                          | our operation, else an incoming request     |
 * | PING / PONG                          | PONG queued in `output` / `pong`            |
 * | PEER_JOINED / PEER_LEFT              | `presence`                                  |
 * | PEERS answer                         | `presence` for the difference, then `peers` |
 *
 * Presence (PROTOCOL.md §8): the session keeps the peer list the events add up to ({@link
 * Session.peers}: the WELCOME's, then every PEER_JOINED / PEER_LEFT). Every PEERS answer is
 * compared with it and the difference is reported as `presence` events before the answer itself,
 * so the events always add up to the last answer. After ERROR PRESENCE_OVERFLOW (the broker
 * dropped presence frames while we were behind; a notice, not fatal) the session reports
 * `presence-resync` and queues a PEERS question of its own in `output`; its answer yields the
 * difference (what was missed) but no `peers` event, since no caller asked for it — the owner's
 * FIFO of PEERS waiters stays aligned with the questions it sent through {@link Session.peersFrame}.
 *
 * Frames we send (PROTOCOL.md §3, §11): HELLO, PING, PONG, PEERS and RECEIVE carry no flags;
 * PING, PONG, CANCEL, PEERS and a peer's ACK carry no payload (the broker closes the connection
 * with MALFORMED_FRAME otherwise). The HELLO's request id field is the resume secret (§5.2).
 * FINAL is accepted on every broker frame (§13.3: the broker sets it on all it originates).
 *
 * Invariants:
 * - An id is tracked from its registration (or its START, incoming) until its stream ends: the
 *   FINAL, an error or a cancel is delivered once with `end: true` and the id is forgotten, so
 *   nothing is delivered after an operation ended. Frames for untracked ids are dropped.
 * - Broker input never throws: bad input becomes one `connection-failed` event carrying a
 *   {@link ProtocolError}, after which the session is dead and `receive` returns nothing more.
 */

import {
  Cancelled,
  ErrorCode,
  NotASwitchyardBroker,
  ProtocolError,
  SwitchyardError,
  TooLarge,
  errorFromCode,
} from "./errors.js";
import {
  DEFAULT_LIMITS,
  Decoder,
  Flags,
  type Frame,
  FrameType,
  type Limits,
  MAX_PAYLOAD_CEILING,
  MAX_SEQUENCE,
  decodeError,
  decodePeers,
  decodeU32,
  decodeWelcome,
  encodeFrame,
  encodeU32,
  frameName,
} from "./protocol.js";
import { NIL_UUID, type Uuid, randomUuid } from "./uuid.js";

/** What the session reports, in wire order. */
export type SessionEvent =
  | {
      readonly kind: "welcome";
      readonly clientId: Uuid;
      readonly limits: Limits;
      readonly peers: Uuid[];
      /** The resume secret (the WELCOME's request id field, PROTOCOL.md §5.2); nil from a broker that has none. */
      readonly resume: Uuid;
    }
  | { readonly kind: "response-data"; readonly requestId: Uuid; readonly data: Uint8Array; readonly end: boolean; readonly responder?: Uuid }
  | { readonly kind: "response-failed"; readonly requestId: Uuid; readonly error: SwitchyardError }
  | {
      readonly kind: "request-data";
      readonly requestId: Uuid;
      readonly data: Uint8Array;
      readonly end: boolean;
      /** Set on the request's first frame, with `sender` and the remaining `timeoutMs`. */
      readonly start: boolean;
      readonly sender: Uuid;
      readonly timeoutMs: number;
    }
  | { readonly kind: "request-failed"; readonly requestId: Uuid; readonly error: SwitchyardError }
  | { readonly kind: "broadcast"; readonly requestId: Uuid; readonly sender: Uuid; readonly body: Uint8Array }
  | { readonly kind: "broadcast-cancelled"; readonly requestId: Uuid }
  | { readonly kind: "broadcast-done"; readonly requestId: Uuid; readonly acked: number; readonly error?: SwitchyardError }
  | { readonly kind: "presence"; readonly peer: Uuid; readonly joined: boolean }
  | { readonly kind: "peers"; readonly peers: Uuid[] }
  /** PRESENCE_OVERFLOW: presence events were lost; a PEERS question is queued in `output`. */
  | { readonly kind: "presence-resync" }
  | { readonly kind: "pong"; readonly sequence: number }
  | { readonly kind: "going-away"; readonly message: string }
  | { readonly kind: "connection-failed"; readonly error: SwitchyardError };

const REQUEST = Flags.REQUEST;
const RESPONSE = Flags.RESPONSE;
const BROADCAST = Flags.REQUEST | Flags.BROADCAST;

/** Send state of one of our streams: its flags, timeout (START only) and next sequence. */
interface Outbound {
  flags: number;
  timeoutMs: number;
  nextSeq: number;
}

interface PartialBroadcast {
  sender: Uuid;
  nextSeq: number;
  parts: Uint8Array[];
  size: number;
}

function concat(parts: readonly Uint8Array[], size: number): Uint8Array {
  if (parts.length === 1) return parts[0] as Uint8Array;
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** One connection's protocol state. See the module docs for the routing and invariants. */
export class Session {
  /** Our id: the requested one (or nil) until the WELCOME, then the one the broker gave. */
  clientId: Uuid;
  limits: Limits = DEFAULT_LIMITS;
  welcomed = false;
  goingAway = false;
  /** Frames the session itself wants written (PONG answers), in order; the owner drains it. */
  output: Uint8Array[] = [];

  private readonly decoder = new Decoder();
  private dead = false;
  private pingSeq = 0;
  /** Our requests: next expected response sequence. */
  private readonly outgoing = new Map<Uuid, { nextSeq: number }>();
  /** Our broadcasts awaiting their ACK or ERROR. */
  private readonly broadcastsOut = new Set<Uuid>();
  /** Requests assigned to us: next expected request sequence. */
  private readonly incoming = new Map<Uuid, { nextSeq: number }>();
  private readonly partial = new Map<Uuid, PartialBroadcast>();
  /** Broadcasts received in full whose ACK is owed. */
  private readonly unacked = new Set<Uuid>();
  /** Our request and broadcast bodies being sent. */
  private readonly sending = new Map<Uuid, Outbound>();
  /** Our responses being sent. */
  private readonly responding = new Map<Uuid, Outbound>();
  /** The other peers as the presence events add up (seeded by the WELCOME). */
  private peerList: Uuid[] = [];
  /** Our PEERS questions in flight, oldest first: true for the session's own (resync) ones. */
  private readonly peersQuestions: boolean[] = [];

  constructor(readonly channel: Uuid, clientId?: Uuid) {
    this.clientId = clientId ?? NIL_UUID;
  }

  // ----- frames we send -------------------------------------------------------------------

  private frame(type: FrameType, init: Omit<Partial<Frame>, "type" | "clientId" | "channelId"> = {}): Uint8Array {
    return encodeFrame({ ...init, type, clientId: this.clientId, channelId: this.channel });
  }

  /**
   * The HELLO carrying `token` (empty when none) and, in its request id field, `resume`: nil, or
   * the resume secret of an earlier WELCOME for our client id (PROTOCOL.md §5.2).
   */
  helloFrame(token: Uint8Array, resume: Uuid = NIL_UUID): Uint8Array {
    return this.frame(FrameType.HELLO, { payload: token, requestId: resume });
  }

  /** The other peers, as the WELCOME, the presence events and the PEERS answers add up. */
  get peers(): Uuid[] {
    return [...this.peerList];
  }

  /** RECEIVE(window). */
  receiveFrame(window: number): Uint8Array {
    return this.frame(FrameType.RECEIVE, { payload: encodeU32(window) });
  }

  /** A PING with a fresh sequence number, and that number. */
  pingFrame(): { sequence: number; frame: Uint8Array } {
    this.pingSeq = (this.pingSeq % MAX_SEQUENCE) + 1;
    return { sequence: this.pingSeq, frame: this.frame(FrameType.PING, { sequence: this.pingSeq }) };
  }

  /** A PEERS question (answers come in the order of the questions; each yields one `peers` event). */
  peersFrame(): Uint8Array {
    this.peersQuestions.push(false);
    return this.frame(FrameType.PEERS);
  }

  /** Registers an outgoing request before its first frame is written; returns its id. */
  startRequest(timeoutMs: number, noWait = false): Uuid {
    const id = randomUuid();
    this.outgoing.set(id, { nextSeq: 0 });
    this.sending.set(id, { flags: REQUEST | (noWait ? Flags.NO_WAIT : 0), timeoutMs, nextSeq: 0 });
    return id;
  }

  /** Registers an outgoing broadcast; returns its id. */
  startBroadcast(timeoutMs: number): Uuid {
    const id = randomUuid();
    this.broadcastsOut.add(id);
    this.sending.set(id, { flags: BROADCAST, timeoutMs, nextSeq: 0 });
    return id;
  }

  /**
   * The frames carrying `data` of our request/broadcast body, split at the max payload; with
   * `final`, the last one closes the stream (START|FINAL or END). Empty when the stream was
   * already forgotten (cancelled, failed) — nothing may be sent for it any more.
   */
  bodyFrames(requestId: Uuid, data: Uint8Array, final: boolean): Uint8Array[] {
    const state = this.sending.get(requestId);
    if (!state) return [];
    const frames = this.split(requestId, state, data, final);
    if (final) this.sending.delete(requestId);
    return frames;
  }

  /** The frames of our response to incoming request `requestId` (see {@link bodyFrames}). */
  responseFrames(requestId: Uuid, data: Uint8Array, final: boolean): Uint8Array[] {
    let state = this.responding.get(requestId);
    if (!state) {
      if (!this.incoming.has(requestId)) return [];
      state = { flags: RESPONSE, timeoutMs: 0, nextSeq: 0 };
      this.responding.set(requestId, state);
    }
    const frames = this.split(requestId, state, data, final);
    if (final) {
      this.responding.delete(requestId);
      this.incoming.delete(requestId);
    }
    return frames;
  }

  private split(requestId: Uuid, state: Outbound, data: Uint8Array, final: boolean): Uint8Array[] {
    if (!final && data.length === 0) return [];
    const size = Math.max(1, Math.min(this.limits.maxPayload, MAX_PAYLOAD_CEILING));
    const count = Math.max(1, Math.ceil(data.length / size));
    const frames: Uint8Array[] = [];
    for (let i = 0; i < count; i++) {
      const last = final && i === count - 1;
      const seq = state.nextSeq;
      if (seq > MAX_SEQUENCE) throw new TooLarge("a stream may have at most 2^31 - 1 frames after its START");
      const type = seq === 0 ? FrameType.START : last ? FrameType.END : FrameType.CHUNK;
      frames.push(
        this.frame(type, {
          flags: seq === 0 ? state.flags : state.flags & ~Flags.NO_WAIT,
          requestId,
          sequence: seq,
          final: last,
          timeoutMs: seq === 0 ? state.timeoutMs : 0,
          payload: data.subarray(i * size, (i + 1) * size),
        }),
      );
      state.nextSeq++;
    }
    return frames;
  }

  /** Abandons our request or broadcast: forgets it and returns its CANCEL, or `undefined` when it already ended. */
  cancelRequestFrame(requestId: Uuid): Uint8Array | undefined {
    this.sending.delete(requestId);
    if (this.outgoing.delete(requestId)) return this.frame(FrameType.CANCEL, { flags: REQUEST, requestId, final: true });
    if (this.broadcastsOut.delete(requestId)) return this.frame(FrameType.CANCEL, { flags: BROADCAST, requestId, final: true });
    return undefined;
  }

  /** Gives up an incoming request: forgets it and returns its CANCEL (RESPONSE), or `undefined` when it already ended. */
  cancelIncomingFrame(requestId: Uuid): Uint8Array | undefined {
    this.responding.delete(requestId);
    if (!this.incoming.delete(requestId)) return undefined;
    return this.frame(FrameType.CANCEL, { flags: RESPONSE, requestId, final: true });
  }

  /** The ACK owed for a received broadcast, or `undefined` if none is owed any more. */
  ackFrame(requestId: Uuid): Uint8Array | undefined {
    if (!this.unacked.delete(requestId)) return undefined;
    return this.frame(FrameType.ACK, { flags: Flags.BROADCAST, requestId, final: true });
  }

  /** True while a received broadcast's ACK is owed (not sent, not cancelled). */
  ackOwed(requestId: Uuid): boolean {
    return this.unacked.has(requestId);
  }

  /** True while an incoming request is held (not finished, cancelled or failed). */
  isIncoming(requestId: Uuid): boolean {
    return this.incoming.has(requestId);
  }

  /** Streams tracked in any role (for tests: 0 once everything ended). */
  tracked(): number {
    return (
      this.outgoing.size + this.broadcastsOut.size + this.incoming.size + this.partial.size +
      this.unacked.size + this.sending.size + this.responding.size
    );
  }

  // ----- input ----------------------------------------------------------------------------

  /**
   * Decodes `data` and returns the events, in wire order. After a `connection-failed` event
   * (always the last) the session is dead. Never throws.
   */
  receive(data: Uint8Array): SessionEvent[] {
    const events: SessionEvent[] = [];
    if (this.dead) return events;
    this.decoder.feed(data);
    for (;;) {
      let frame: Frame | null;
      try {
        frame = this.decoder.next();
      } catch (err) {
        const error =
          !this.welcomed && err instanceof ProtocolError
            ? new NotASwitchyardBroker(`the server does not speak the switchyard protocol (${err.message})`)
            : err;
        return this.die(events, error);
      }
      if (frame === null) return events;
      try {
        this.handle(frame, events);
      } catch (err) {
        return this.die(events, err);
      }
      if (this.dead) return events;
    }
  }

  private die(events: SessionEvent[], error: unknown): SessionEvent[] {
    this.dead = true;
    const reason = error instanceof SwitchyardError ? error : new ProtocolError(String(error), { cause: error });
    events.push({ kind: "connection-failed", error: reason });
    return events;
  }

  private pong(frame: Frame): void {
    this.output.push(this.frame(FrameType.PONG, { sequence: frame.sequence, final: frame.final }));
  }

  private handle(frame: Frame, events: SessionEvent[]): void {
    if (!this.welcomed) {
      this.handleHandshake(frame, events);
      return;
    }
    if (frame.type !== FrameType.ERROR && frame.channelId !== NIL_UUID && frame.channelId !== this.channel) {
      throw new ProtocolError(`${frameName(frame.type)} for channel ${frame.channelId}, not ours`);
    }
    switch (frame.type) {
      case FrameType.START:
      case FrameType.CHUNK:
      case FrameType.END:
        this.handleStream(frame, events);
        return;
      case FrameType.ERROR:
        this.handleError(frame, events);
        return;
      case FrameType.ACK: {
        const id = frame.requestId;
        if (this.broadcastsOut.has(id)) {
          const acked = decodeU32(frame.payload, "ACK");
          this.broadcastsOut.delete(id);
          this.sending.delete(id);
          events.push({ kind: "broadcast-done", requestId: id, acked });
        }
        return;
      }
      case FrameType.CANCEL:
        this.handleCancel(frame, events);
        return;
      case FrameType.PEER_JOINED:
      case FrameType.PEER_LEFT: {
        const joined = frame.type === FrameType.PEER_JOINED;
        const peer = frame.clientId;
        if (joined && !this.peerList.includes(peer)) this.peerList.push(peer);
        else if (!joined) this.peerList = this.peerList.filter((p) => p !== peer);
        events.push({ kind: "presence", peer, joined });
        return;
      }
      case FrameType.PING:
        this.pong(frame);
        return;
      case FrameType.PONG:
        events.push({ kind: "pong", sequence: frame.sequence });
        return;
      case FrameType.PEERS: {
        const peers = decodePeers(frame.payload);
        // The difference from the list the events add up to: after a PRESENCE_OVERFLOW, what was missed.
        const now = new Set(peers);
        const before = new Set(this.peerList);
        for (const gone of this.peerList) if (!now.has(gone)) events.push({ kind: "presence", peer: gone, joined: false });
        for (const peer of peers) if (!before.has(peer)) events.push({ kind: "presence", peer, joined: true });
        this.peerList = [...peers];
        const ours = this.peersQuestions.shift() ?? false;
        if (!ours) events.push({ kind: "peers", peers });
        return;
      }
      default:
        throw new ProtocolError(`the broker sent ${frameName(frame.type)}, which only clients send`);
    }
  }

  private handleHandshake(frame: Frame, events: SessionEvent[]): void {
    if (frame.type === FrameType.PING) {
      this.pong(frame);
    } else if (frame.type === FrameType.ERROR) {
      const { code, text, peers } = decodeError(frame.payload);
      throw errorFromCode(code, text, peers);
    } else if (frame.type === FrameType.WELCOME) {
      if (frame.channelId !== this.channel) throw new ProtocolError(`WELCOME for channel ${frame.channelId}, not ours`);
      if (frame.clientId === NIL_UUID) throw new ProtocolError("WELCOME with a nil client id");
      const { limits, peers } = decodeWelcome(frame.payload);
      this.limits = limits;
      this.clientId = frame.clientId;
      this.welcomed = true;
      this.peerList = [...peers];
      events.push({ kind: "welcome", clientId: frame.clientId, limits, peers, resume: frame.requestId });
    } else {
      throw new NotASwitchyardBroker(`${frameName(frame.type)} before the WELCOME`);
    }
  }

  private checkSeq(state: { nextSeq: number }, frame: Frame): void {
    const expected = state.nextSeq;
    const isStart = frame.type === FrameType.START;
    const bad =
      frame.sequence !== expected ||
      (isStart && expected !== 0) ||
      (!isStart && expected === 0) ||
      (frame.type === FrameType.CHUNK && frame.final) ||
      (frame.type === FrameType.END && !frame.final);
    if (bad) {
      throw new ProtocolError(
        `${frameName(frame.type)} seq ${frame.sequence} of stream ${frame.requestId} out of order (expected ${expected})`,
      );
    }
    state.nextSeq++;
  }

  private handleStream(frame: Frame, events: SessionEvent[]): void {
    const id = frame.requestId;
    const direction = frame.flags & (REQUEST | RESPONSE);
    if (id === NIL_UUID) throw new ProtocolError(`${frameName(frame.type)} with a nil request id`);
    if (direction !== REQUEST && direction !== RESPONSE) {
      throw new ProtocolError(`${frameName(frame.type)} with flags 0x${frame.flags.toString(16)}: not one direction`);
    }
    if (direction === RESPONSE) {
      if (frame.flags & Flags.BROADCAST) throw new ProtocolError(`${frameName(frame.type)} with RESPONSE|BROADCAST`);
      const out = this.outgoing.get(id);
      if (!out) return; // a response to a request we no longer track (crossed our CANCEL)
      this.checkSeq(out, frame);
      if (frame.final) this.outgoing.delete(id);
      events.push({
        kind: "response-data",
        requestId: id,
        data: frame.payload,
        end: frame.final,
        ...(frame.type === FrameType.START ? { responder: frame.clientId } : {}),
      });
    } else if (frame.flags & Flags.BROADCAST) {
      this.handleBroadcast(frame, events);
    } else {
      const start = frame.type === FrameType.START;
      if (start) {
        if (this.incoming.has(id)) throw new ProtocolError(`second START for incoming request ${id}`);
        this.incoming.set(id, { nextSeq: 0 });
      }
      const state = this.incoming.get(id);
      if (!state) return; // we gave it up already
      this.checkSeq(state, frame);
      events.push({
        kind: "request-data",
        requestId: id,
        data: frame.payload,
        end: frame.final,
        start,
        sender: frame.clientId,
        timeoutMs: frame.timeoutMs,
      });
    }
  }

  private handleBroadcast(frame: Frame, events: SessionEvent[]): void {
    const id = frame.requestId;
    let partial: PartialBroadcast;
    if (frame.type === FrameType.START) {
      if (frame.sequence !== 0) throw new ProtocolError(`broadcast START with sequence ${frame.sequence}`);
      partial = { sender: frame.clientId, nextSeq: 1, parts: [], size: 0 };
      this.partial.set(id, partial);
    } else {
      const found = this.partial.get(id);
      if (!found) return;
      partial = found;
      if (frame.sequence !== partial.nextSeq || (frame.type === FrameType.CHUNK && frame.final)) {
        throw new ProtocolError(`broadcast ${id}: ${frameName(frame.type)} seq ${frame.sequence} out of order`);
      }
      if (frame.type === FrameType.END && !frame.final) throw new ProtocolError(`broadcast ${id}: END without FINAL`);
      partial.nextSeq++;
    }
    if (frame.payload.length) {
      partial.parts.push(frame.payload);
      partial.size += frame.payload.length;
    }
    if (frame.final) {
      this.partial.delete(id);
      this.unacked.add(id);
      events.push({ kind: "broadcast", requestId: id, sender: partial.sender, body: concat(partial.parts, partial.size) });
    }
  }

  private handleError(frame: Frame, events: SessionEvent[]): void {
    const { code, text, peers } = decodeError(frame.payload);
    const id = frame.requestId;
    if (id === NIL_UUID) {
      if (code === ErrorCode.GOING_AWAY) {
        this.goingAway = true;
        events.push({ kind: "going-away", message: text });
        return;
      }
      if (code === ErrorCode.PRESENCE_OVERFLOW) {
        // A notice (§8): presence frames were dropped while we were behind. Ask for the list again.
        events.push({ kind: "presence-resync" });
        this.peersQuestions.push(true);
        this.output.push(this.frame(FrameType.PEERS));
        return;
      }
      if (code < 0x0100 || code === ErrorCode.LIMIT_EXCEEDED) throw errorFromCode(code, text, peers);
      return; // a per-request code without a request, or a notice (≥ 0x0200) this client does not know
    }
    const error = errorFromCode(code, text, peers);
    if (this.outgoing.delete(id)) {
      this.sending.delete(id);
      events.push({ kind: "response-failed", requestId: id, error });
    } else if (this.broadcastsOut.delete(id)) {
      this.sending.delete(id);
      events.push({ kind: "broadcast-done", requestId: id, acked: 0, error });
    } else if (this.incoming.delete(id)) {
      this.responding.delete(id);
      events.push({ kind: "request-failed", requestId: id, error });
    } else if (this.partial.delete(id) || this.unacked.delete(id)) {
      events.push({ kind: "broadcast-cancelled", requestId: id });
    }
    // else: an error for an id we no longer track (UNKNOWN_REQUEST after a cancel): ignored
  }

  private handleCancel(frame: Frame, events: SessionEvent[]): void {
    const id = frame.requestId;
    const flags = frame.flags;
    if (flags & REQUEST && flags & RESPONSE) throw new ProtocolError("CANCEL with both REQUEST and RESPONSE");
    if (flags & RESPONSE) {
      if (this.outgoing.delete(id)) {
        this.sending.delete(id);
        events.push({ kind: "response-failed", requestId: id, error: new Cancelled("the receiver cancelled the request") });
      }
      return;
    }
    if (!(flags & Flags.BROADCAST) && this.incoming.delete(id)) {
      this.responding.delete(id);
      events.push({
        kind: "request-failed",
        requestId: id,
        error: new Cancelled("the sender cancelled, or the request timed out"),
      });
      return;
    }
    if (this.partial.delete(id) || this.unacked.delete(id)) {
      events.push({ kind: "broadcast-cancelled", requestId: id });
    }
  }
}
