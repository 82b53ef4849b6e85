/**
 * The client: {@link connectWith} and {@link Client}, over the sans-IO {@link Session} and any
 * {@link Transport}. Transport-independent: the entry points (`index.ts` for Node, `browser.ts`)
 * pass the dialer.
 *
 * Structure: one {@link Link} per connection feeds its session and routes each event,
 * synchronously, to the operation waiting for it (an {@link Inbox} or a {@link Deferred}). No
 * locks: everything runs on the event loop, and every frame is written with one `write` call, so
 * frames never interleave.
 *
 * Invariants (as the Python and Rust clients):
 * - An operation registers its route *before* its first frame is written, so no answer arrives
 *   unrouted; it keeps the link it was registered on and writes only there (a frame of an
 *   operation started on one connection never goes out on the next: at-most-once).
 * - Every wait is bounded or wakeable: waits for the broker use the operation's timeout plus a
 *   grace period (`deadlineGraceMs`); losing the link fails every route of that link at once
 *   ({@link ConnectionLost}); closing the client wakes every waiter with the reason.
 * - An operation that ends on the client side without the broker knowing (local deadline, abort,
 *   a failing body source, an iteration left early) sends the CANCEL of its direction.
 * - Reconnection: exponential backoff with jitter under the same client id, the receive window
 *   re-issued first. Operations in flight fail with {@link ConnectionLost} (never retried), new
 *   ones with {@link Reconnecting} until the link is back; the `requests()` / `broadcasts()` /
 *   `presence()` iterations go on. No reconnect after REPLACED, UNAUTHORIZED, CLIENT_ID_IN_USE, a
 *   protocol error, nor after {@link Client.close}.
 * - Identity (PROTOCOL.md §5.2): every HELLO presents the resume secret — the `resumeSecret`
 *   option, else the first WELCOME's — so a reconnect within the presence grace period resumes
 *   the same client id, unseen by the peers.
 */

import {
  BrokerError,
  Cancelled,
  type ClientIdInUse,
  Closed,
  ConnectFailed,
  ConnectionLost,
  ErrorCode,
  GoingAway,
  LimitExceeded,
  NotASwitchyardBroker,
  Reconnecting,
  SwitchyardError,
  Timeout,
} from "./errors.js";
import { Inbox } from "./inbox.js";
import { DEFAULT_LIMITS, type Limits } from "./protocol.js";
import { Session, type SessionEvent } from "./session.js";
import type { Dialer, Transport } from "./transport/types.js";
import { type Address, parseAddress } from "./url.js";
import { type Body, type BodySource, Deferred, chunksOf, concatBytes, wholeBody } from "./util.js";
import { NIL_UUID, type Uuid, channelId as deriveChannelId, parseUuid, uuidFromBytes, uuidToBytes } from "./uuid.js";

/**
 * How a client reconnects after losing its link. The delay before attempt `n` (1-based) is
 * `min(initialDelayMs * multiplier^(n-1), maxDelayMs)`, shortened by a random fraction of at most
 * `jitter` of itself. `maxAttempts` undefined never gives up.
 */
export interface ReconnectPolicy {
  readonly initialDelayMs?: number;
  readonly maxDelayMs?: number;
  readonly multiplier?: number;
  readonly jitter?: number;
  readonly maxAttempts?: number;
}

/** The delay (ms) before reconnect attempt `attempt` (1-based) under `policy`. */
export function reconnectDelay(policy: ReconnectPolicy, attempt: number): number {
  const nominal = Math.min(
    (policy.initialDelayMs ?? 100) * Math.max(policy.multiplier ?? 2, 1) ** (attempt - 1),
    policy.maxDelayMs ?? 5000,
  );
  const jitter = Math.min(Math.max(policy.jitter ?? 0.5, 0), 1);
  return nominal * (1 - jitter * Math.random());
}

/** Options of {@link connectWith} / `connect`. */
export interface ConnectOptions {
  /** The channel: a UUID string, or a name (UUIDv5, PROTOCOL.md §5.1). */
  readonly channel: string;
  /** The access token (UTF-8 when a string); none by default. */
  readonly token?: string | Uint8Array;
  /** The client id to ask for (to resume one); the broker assigns one by default. */
  readonly clientId?: string;
  /**
   * 16 bytes presented in every HELLO, from the first on (PROTOCOL.md §5.2): while `clientId` is
   * present on the channel (connected, or within its grace period after a disconnect) only a
   * HELLO with its secret may take it over, else the connect fails with {@link ClientIdInUse}.
   * Give another client's {@link Client.resumeSecret}, or a secret of your own shared by every
   * process of this client. Default: none at first, then the first WELCOME's secret (reconnects
   * present it by themselves). Keep it as secret as a token.
   */
  readonly resumeSecret?: Uint8Array;
  /** Bound on the transport connect and on the wait for the WELCOME, each. Default 5000. */
  readonly connectTimeoutMs?: number;
  /** Added to a request's timeout for the local deadline (the broker's answer must arrive). Default 2000. */
  readonly deadlineGraceMs?: number;
  /** Unanswered PINGs after which the client gives the link up (when the broker announces heartbeats). Default 3. */
  readonly heartbeatMisses?: number;
  /** The reconnect policy, or `false` to close on the first loss. Default `{}` (the defaults above). */
  readonly reconnect?: ReconnectPolicy | false;
  /** Unconsumed broadcasts kept; beyond, new ones are dropped without an ACK. Default 1024. */
  readonly broadcastQueue?: number;
  /** Unconsumed presence events kept; beyond, the oldest is dropped. Default 1024. */
  readonly presenceQueue?: number;
}

/** The client's link to the broker. */
export type ConnectionState = "connected" | "reconnecting" | "closed";

/**
 * A peer joined (`{ peer, joined: true }`) or left (`{ peer, joined: false }`) the channel; or
 * `{ resync: true }`: the broker dropped presence events while this client was behind
 * (PRESENCE_OVERFLOW, PROTOCOL.md §8), so the events so far may miss some. The client has asked
 * for the peer list again; when the answer arrives, joined/left events follow for the
 * difference, so the events still add up to {@link Client.knownPeers}.
 */
export type PresenceEvent =
  | { readonly peer: Uuid; readonly joined: boolean; readonly resync?: undefined }
  | { readonly resync: true; readonly peer?: undefined; readonly joined?: undefined };

/** Options of a request. */
export interface RequestOptions {
  /** Bounds waiting for a receiver and for the complete response; default: the broker's. */
  readonly timeoutMs?: number;
  /** Fail at once with {@link NoReceiver} when no receiver has a free slot. */
  readonly noWait?: boolean;
  /** Aborting sends CANCEL; the request rejects with {@link Cancelled} (`cause`: the signal's reason). */
  readonly signal?: AbortSignal;
}

/** Options of a broadcast. */
export interface BroadcastOptions {
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

interface Chunk {
  readonly data: Uint8Array;
  readonly end: boolean;
  readonly responder?: Uuid;
}
type Item = Chunk | SwitchyardError;

function timeoutField(timeoutMs: number | undefined): number {
  if (timeoutMs === undefined || !(timeoutMs > 0)) return 0;
  return Math.max(1, Math.min(Math.ceil(timeoutMs), 0xffff_ffff));
}

function recoverable(reason: SwitchyardError): boolean {
  if (
    reason instanceof ConnectionLost ||
    reason instanceof Timeout ||
    reason instanceof GoingAway ||
    reason instanceof ConnectFailed ||
    reason instanceof LimitExceeded
  ) {
    return true;
  }
  return reason instanceof BrokerError && reason.code === ErrorCode.HEARTBEAT_TIMEOUT;
}

/** Resolves after `ms` or when `signal` fires, whichever first; clears its timer either way. */
function raceTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => SwitchyardError): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), Math.max(0, ms));
    promise.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

function abortError(signal: AbortSignal, what: string): Cancelled {
  return new Cancelled(`${what} was aborted`, { cause: signal.reason });
}

/** One connection: its transport, its session, and the routes of the operations on it. */
class Link {
  transport: Transport | undefined;
  dead: SwitchyardError | undefined;
  readonly welcome = new Deferred<Extract<SessionEvent, { kind: "welcome" }>>();
  readonly lost = new Deferred<void>();
  readonly responses = new Map<Uuid, Inbox<Item>>();
  readonly incoming = new Map<Uuid, IncomingRequest>();
  readonly broadcasts = new Map<Uuid, Deferred<number>>();
  readonly pings = new Map<number, Deferred<void>>();
  readonly peerWaiters: Deferred<Uuid[]>[] = [];
  receivedAny = false;
  private heard = true;
  private unanswered = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly client: Client, readonly session: Session) {}

  onData(data: Uint8Array): void {
    this.receivedAny = true;
    this.heard = true;
    this.unanswered = 0;
    const events = this.session.receive(data);
    this.flushOutput();
    for (const event of events) {
      if (this.dead) return;
      this.client.dispatch(this, event);
    }
  }

  onClose(error?: unknown): void {
    this.lost.resolve();
    if (this.dead) return;
    if (error instanceof SwitchyardError) {
      this.fail(error); // the transport's own verdict (a text WebSocket message is a ProtocolError)
      return;
    }
    const detail = error instanceof Error ? `: ${error.message}` : "";
    if (!this.session.welcomed) {
      this.fail(
        this.receivedAny
          ? new NotASwitchyardBroker("the server closed the connection without a WELCOME (not a switchyard broker?)")
          : new ConnectFailed(`the connection closed before the WELCOME${detail}`, { cause: error }),
      );
    } else {
      this.fail(new ConnectionLost(`connection lost${detail}`, { cause: error }));
    }
  }

  private flushOutput(): void {
    const out = this.session.output;
    if (out.length) {
      this.session.output = [];
      for (const frame of out) this.writeQuietly(frame);
    }
  }

  /** Writes one whole frame now; throws the link's failure when it is down. Returns the transport's backpressure hint. */
  write(frame: Uint8Array): boolean {
    if (this.dead) throw this.dead;
    if (!this.transport) throw new ConnectionLost();
    return this.transport.write(frame);
  }

  /** Writes a frame nobody waits on (a CANCEL, an ACK, a PONG); a dead link is ignored. */
  writeQuietly(frame: Uint8Array | undefined): void {
    if (frame && !this.dead && this.transport) this.transport.write(frame);
  }

  /**
   * Writes `frames` in order, waiting for the transport to drain when it asks to. Stops early,
   * without error, once `alive()` is false (the stream ended meanwhile: cancelled, failed, or
   * answered — the broker would only answer UNKNOWN_REQUEST to the rest).
   */
  async send(frames: readonly Uint8Array[], alive: () => boolean = () => true): Promise<void> {
    for (const frame of frames) {
      if (!alive()) return;
      if (!this.write(frame)) await this.transport?.drain();
    }
    if (this.dead) throw this.dead;
  }

  /**
   * Watches the broker: a PING after each silent interval; after `misses` unanswered ones, the
   * link is declared dead (a half-open or hung broker).
   */
  startHeartbeat(intervalMs: number, misses: number): void {
    if (intervalMs <= 0) return;
    const tick = (): void => {
      if (this.dead) return;
      if (this.heard) {
        this.heard = false;
      } else {
        this.unanswered++;
        if (this.unanswered > misses) {
          this.fail(new Timeout("the broker did not answer the heartbeat"));
          return;
        }
        this.writeQuietly(this.session.pingFrame().frame);
      }
      this.timer = setTimeout(tick, intervalMs);
    };
    this.timer = setTimeout(tick, intervalMs);
  }

  /** Ends the link for `reason` (the first call wins): closes the transport, tells the client (which fails the routes). */
  fail(reason: SwitchyardError): void {
    if (this.dead) return;
    this.dead = reason;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.transport?.close();
    this.welcome.reject(reason);
    this.client.linkDown(this, reason);
  }

  /** Fails every operation routed on this link with `error`. */
  failRoutes(error: SwitchyardError): void {
    for (const inbox of this.responses.values()) inbox.put(error);
    this.responses.clear();
    for (const request of this.incoming.values()) request.fail(error);
    this.incoming.clear();
    for (const d of this.broadcasts.values()) d.reject(error);
    this.broadcasts.clear();
    for (const d of this.pings.values()) d.reject(error);
    this.pings.clear();
    for (const d of this.peerWaiters.splice(0)) d.reject(error);
  }
}

/**
 * The response to a request: an async iterable of the body's chunks as they arrive;
 * {@link bytes} collects them. Leaving the iteration early, aborting, or the local deadline
 * passing sends the request's CANCEL.
 */
export class Response implements AsyncIterable<Uint8Array> {
  /** The receiver that answered, once the response started. */
  responder: Uuid | undefined;
  private done = false;
  private readonly onAbort: (() => void) | undefined;

  /** @internal */
  constructor(
    private readonly link: Link,
    /** The request's id. */
    readonly id: Uuid,
    private readonly inbox: Inbox<Item>,
    private readonly deadline: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    if (signal) {
      this.onAbort = () => {
        this.abandon();
        inbox.put(abortError(signal, "the request"));
      };
      signal.addEventListener("abort", this.onAbort, { once: true });
    }
  }

  /** The next chunk, or `undefined` at the end. */
  async next(): Promise<Uint8Array | undefined> {
    while (!this.done || this.inbox.size > 0) {
      let item: Item;
      try {
        item = await this.inbox.get(this.deadline - Date.now());
      } catch (err) {
        this.abandon();
        if (err instanceof Timeout) throw new Timeout("no complete response within the timeout (plus grace)");
        throw err;
      }
      if (item instanceof SwitchyardError) {
        this.finish();
        throw item;
      }
      if (item.responder !== undefined) this.responder = item.responder;
      if (item.end) this.finish();
      if (item.data.length) return item.data;
      if (item.end) return undefined;
    }
    return undefined;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array, void, undefined> {
    try {
      for (;;) {
        const chunk = await this.next();
        if (chunk === undefined) return;
        yield chunk;
      }
    } finally {
      this.abandon(); // left early: CANCEL (nothing when the response completed)
    }
  }

  /** The whole (remaining) response body. */
  async bytes(): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    for await (const chunk of this) parts.push(chunk);
    return concatBytes(parts);
  }

  /** The whole (remaining) response body as UTF-8 text. */
  async text(): Promise<string> {
    return new TextDecoder().decode(await this.bytes());
  }

  /** Abandons the request: sends its CANCEL unless it already ended (then it does nothing). */
  cancel(): void {
    if (this.done) return;
    this.abandon();
    this.inbox.put(new Cancelled("the request was cancelled locally"));
  }

  private finish(): void {
    this.done = true;
    this.link.responses.delete(this.id);
    if (this.onAbort) this.signal?.removeEventListener("abort", this.onAbort);
  }

  /** @internal Ends the request here: CANCEL to the broker unless it already ended. */
  abandon(): void {
    if (!this.done) {
      this.finish();
      this.link.writeQuietly(this.link.session.cancelRequestFrame(this.id));
    }
  }
}

/**
 * A request assigned to this client. Read it with {@link body} or `for await (const chunk of
 * req)`; answer with {@link respond} or {@link respondStream}, or give up with {@link cancel}.
 * {@link signal} aborts when the request ends without our response (the sender cancelled, it
 * timed out, the link was lost).
 */
export class IncomingRequest implements AsyncIterable<Uint8Array> {
  private readonly inbox = new Inbox<Item>();
  private bodyDone = false;
  private failure: SwitchyardError | undefined;
  private readonly controller = new AbortController();

  /** @internal */
  constructor(
    private readonly link: Link,
    /** The request's id. */
    readonly id: Uuid,
    /** The client that sent it. */
    readonly sender: Uuid,
    /** The time that was left (ms) when it arrived. */
    readonly timeoutMs: number,
  ) {}

  /** Aborts (reason: the error) when the request ends without our response. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** True once the request ended without our response. */
  get cancelled(): boolean {
    return this.failure !== undefined;
  }

  /** @internal */
  push(data: Uint8Array, end: boolean): void {
    this.inbox.put({ data, end });
  }

  /** @internal */
  fail(error: SwitchyardError): void {
    if (this.failure) return;
    this.failure = error;
    this.inbox.put(error);
    this.controller.abort(error);
  }

  /** Waits until the request is cancelled and returns why; rejects with {@link Timeout} after `timeoutMs`. */
  waitCancelled(options: { timeoutMs?: number } = {}): Promise<SwitchyardError> {
    if (this.failure) return Promise.resolve(this.failure);
    const ended = new Promise<SwitchyardError>((resolve) =>
      this.signal.addEventListener("abort", () => resolve(this.signal.reason as SwitchyardError), { once: true }),
    );
    if (options.timeoutMs === undefined) return ended;
    return raceTimeout(ended, options.timeoutMs, () => new Timeout("the request was not cancelled in time"));
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array, void, undefined> {
    while (!this.bodyDone) {
      const item = await this.inbox.get();
      if (item instanceof SwitchyardError) {
        this.bodyDone = true;
        throw item;
      }
      if (item.end) this.bodyDone = true;
      if (item.data.length) yield item.data;
    }
  }

  /** The whole (remaining) request body; rejects with {@link Cancelled} if the sender gave up meanwhile. */
  async body(): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    for await (const chunk of this) parts.push(chunk);
    return concatBytes(parts);
  }

  /** The whole (remaining) request body as UTF-8 text. */
  async text(): Promise<string> {
    return new TextDecoder().decode(await this.body());
  }

  private check(): void {
    if (this.failure) throw this.failure;
    if (!this.link.session.isIncoming(this.id)) throw this.link.dead ?? new Cancelled("the request already ended");
  }

  /** Sends the whole response (split into frames of at most the broker's max payload). */
  async respond(body: Body = new Uint8Array(0)): Promise<void> {
    this.check();
    const frames = this.link.session.responseFrames(this.id, wholeBody(body) ?? new Uint8Array(0), true);
    this.link.incoming.delete(this.id);
    await this.link.send(frames);
  }

  /**
   * Sends the response from `chunks` as they come (the last frame is the FINAL); if the source
   * fails, the request is cancelled and the error rethrown.
   */
  async respondStream(chunks: BodySource): Promise<void> {
    try {
      for await (const chunk of chunksOf(chunks)) {
        this.check();
        await this.link.send(this.link.session.responseFrames(this.id, chunk, false));
      }
      this.check();
    } catch (err) {
      this.cancel();
      throw err;
    }
    await this.respond();
  }

  /** Gives the request up: the sender gets CANCEL (nothing if it already ended). */
  cancel(): void {
    this.link.incoming.delete(this.id);
    this.link.writeQuietly(this.link.session.cancelIncomingFrame(this.id));
  }
}

/**
 * A broadcast received in full. Its ACK is sent by {@link ack}, which the iteration does for you
 * unless `autoAck: false` (as the Rust client: acked when the application takes it).
 */
export class Broadcast {
  /** @internal */
  constructor(
    private readonly link: Link,
    readonly id: Uuid,
    readonly sender: Uuid,
    readonly body: Uint8Array,
  ) {}

  /** @internal */
  owed(): boolean {
    return !this.link.dead && this.link.session.ackOwed(this.id);
  }

  /** The body as UTF-8 text. */
  text(): string {
    return new TextDecoder().decode(this.body);
  }

  /** Acknowledges it (once; later calls, or a broadcast the broker already ended, do nothing). */
  ack(): void {
    this.link.writeQuietly(this.link.session.ackFrame(this.id));
  }
}

interface ResolvedOptions {
  readonly token: Uint8Array;
  /** The configured resume secret, or nil. */
  readonly resume: Uuid;
  readonly connectTimeoutMs: number;
  readonly deadlineGraceMs: number;
  readonly heartbeatMisses: number;
  readonly reconnect: ReconnectPolicy | false;
}

/**
 * One connection to the broker, joined to one channel. Create with `connect`. Any number of
 * operations may run at once; they are multiplexed over the connection by request id.
 */
export class Client {
  private link: Link | undefined;
  private currentLimits: Limits = DEFAULT_LIMITS;
  private closedReason: SwitchyardError | undefined;
  private currentState: ConnectionState = "reconnecting";
  private readonly stateWaiters = new Set<() => void>();
  private window = 0;
  private reconnectTimer: { timer: ReturnType<typeof setTimeout>; wake: () => void } | undefined;
  private readonly requestInbox = new Inbox<IncomingRequest>();
  private readonly broadcastInbox: Inbox<Broadcast>;
  private readonly presenceInbox: Inbox<PresenceEvent>;
  private peerList: Uuid[] = [];
  /** Presented by every HELLO: the configured secret, else the first WELCOME's (nil before it). */
  private resume: Uuid;

  /** @internal */
  constructor(
    private readonly dial: Dialer,
    private readonly address: Address,
    /** The channel's id. */
    readonly channelId: Uuid,
    private id: Uuid | undefined,
    private readonly options: ResolvedOptions,
    queues: { broadcast: number; presence: number },
  ) {
    this.broadcastInbox = new Inbox(queues.broadcast);
    this.presenceInbox = new Inbox(queues.presence, true);
    this.resume = options.resume;
  }

  /**
   * The 16-byte secret that proves this client's id (PROTOCOL.md §5.2): give it as
   * `resumeSecret` to `connect` with the same `clientId` to take the id over from another
   * process. Keep it as secret as a token. (All zero only from a broker without resume secrets.)
   */
  get resumeSecret(): Uint8Array {
    return uuidToBytes(this.resume);
  }

  /** This client's id (stable across reconnects). */
  get clientId(): Uuid {
    return this.id ?? "";
  }

  /** The limits of the last WELCOME. */
  get limits(): Limits {
    return this.currentLimits;
  }

  /** Connected, reconnecting, or closed. */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** The other peers, as last reported (WELCOME, presence events, PEERS answers). */
  get knownPeers(): Uuid[] {
    return [...this.peerList];
  }

  // ----- connection ---------------------------------------------------------------------

  /** @internal Connects, sends HELLO and waits for the WELCOME, each within `connectTimeoutMs`. */
  async openLink(): Promise<Link> {
    const session = new Session(this.channelId, this.id);
    const link = new Link(this, session);
    const { connectTimeoutMs } = this.options;
    const transport = this.dial(this.address, { onData: (d) => link.onData(d), onClose: (e) => link.onClose(e) }, connectTimeoutMs);
    link.transport = transport;
    try {
      await transport.opened;
    } catch (err) {
      const reason = err instanceof SwitchyardError ? err : new ConnectFailed(String(err), { cause: err });
      link.fail(reason);
      throw reason;
    }
    link.write(session.helloFrame(this.options.token, this.resume));
    let welcome: Extract<SessionEvent, { kind: "welcome" }>;
    try {
      welcome = await raceTimeout(link.welcome.promise, connectTimeoutMs, () => {
        const where = this.address.kind === "tcp" ? `${this.address.host}:${this.address.port}` : this.address.url;
        return link.receivedAny
          ? new NotASwitchyardBroker(`${where} sent bytes that are not a WELCOME within ${connectTimeoutMs} ms (is it a switchyard broker?)`)
          : new Timeout(`${where} did not answer the HELLO within ${connectTimeoutMs} ms (is it a switchyard broker?)`);
      });
    } catch (err) {
      const reason = err instanceof SwitchyardError ? err : new ConnectFailed(String(err), { cause: err });
      link.fail(reason);
      throw reason;
    }
    this.id = welcome.clientId;
    if (this.resume === NIL_UUID) this.resume = welcome.resume; // kept for life (§5.2)
    this.currentLimits = welcome.limits;
    this.peerList = [...welcome.peers];
    link.startHeartbeat(welcome.limits.heartbeatMs, this.options.heartbeatMisses);
    return link;
  }

  /** @internal Makes `link` the current one; the receive window goes out first. */
  install(link: Link): void {
    if (this.window) link.write(link.session.receiveFrame(this.window));
    this.link = link;
    this.setState("connected");
  }

  private setState(state: ConnectionState): void {
    this.currentState = state;
    for (const wake of [...this.stateWaiters]) wake();
  }

  /** @internal Called once per link when it ends (from `Link.fail`). */
  linkDown(link: Link, reason: SwitchyardError): void {
    if (link !== this.link) {
      link.failRoutes(this.closedReason ?? reason);
      return;
    }
    this.link = undefined;
    if (this.closedReason) {
      link.failRoutes(this.closedReason);
      return;
    }
    const policy = this.options.reconnect;
    if (policy !== false && recoverable(reason)) {
      link.failRoutes(new ConnectionLost(`the connection was lost (${reason.message})`, { cause: reason }));
      this.setState("reconnecting");
      void this.reconnectLoop(policy);
    } else {
      link.failRoutes(reason);
      this.closeNow(reason);
    }
  }

  private async reconnectLoop(policy: ReconnectPolicy): Promise<void> {
    for (let attempt = 1; !this.closedReason; attempt++) {
      if (policy.maxAttempts !== undefined && attempt > policy.maxAttempts) {
        this.closeNow(new ConnectionLost("reconnection attempts exhausted"));
        return;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, reconnectDelay(policy, attempt));
        this.reconnectTimer = { timer, wake: resolve };
      });
      this.reconnectTimer = undefined;
      if (this.closedReason) return;
      let link: Link;
      try {
        link = await this.openLink();
      } catch (err) {
        if (err instanceof SwitchyardError && !recoverable(err) && !(err instanceof NotASwitchyardBroker)) {
          this.closeNow(err);
          return;
        }
        continue;
      }
      if (this.closedReason) {
        link.fail(this.closedReason);
        return;
      }
      try {
        this.install(link);
      } catch {
        continue;
      }
      return;
    }
  }

  private closeNow(reason: SwitchyardError): void {
    if (this.closedReason) return;
    this.closedReason = reason;
    this.setState("closed");
    this.requestInbox.close(reason);
    this.broadcastInbox.close(reason);
    this.presenceInbox.close(reason);
    this.link?.fail(reason);
    if (this.reconnectTimer) {
      clearTimeout(this.reconnectTimer.timer);
      this.reconnectTimer.wake();
    }
  }

  /**
   * Closes the client: every operation ends with {@link Closed} (the iterations simply stop).
   * Resolves once the connection is closed (at most 1 s). Idempotent.
   */
  async close(): Promise<void> {
    const link = this.link;
    this.closeNow(new Closed());
    if (link) await raceTimeout(link.lost.promise, 1000, () => new Timeout("close")).catch(() => undefined);
  }

  /** Resolves once the link is up (at once when it is); rejects with the close reason, or {@link Timeout} after `timeoutMs`. */
  async waitConnected(options: { timeoutMs?: number } = {}): Promise<void> {
    const deadline = options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs;
    for (;;) {
      if (this.closedReason) throw this.closedReason;
      if (this.link) return;
      const remaining = deadline === undefined ? undefined : deadline - Date.now();
      if (remaining !== undefined && remaining <= 0) throw new Timeout("not reconnected in time");
      await new Promise<void>((resolve) => {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const wake = (): void => {
          if (timer !== undefined) clearTimeout(timer);
          this.stateWaiters.delete(wake);
          resolve();
        };
        this.stateWaiters.add(wake);
        if (remaining !== undefined) timer = setTimeout(wake, remaining);
      });
    }
  }

  private current(): Link {
    if (this.closedReason) throw this.closedReason;
    const link = this.link;
    if (!link) throw new Reconnecting();
    if (link.session.goingAway) throw new GoingAway();
    return link;
  }

  private deadline(timeoutMs: number | undefined): number {
    let effective = timeoutMs !== undefined && timeoutMs > 0 ? timeoutMs : this.currentLimits.defaultTimeoutMs;
    if (this.currentLimits.maxTimeoutMs) effective = Math.min(effective, this.currentLimits.maxTimeoutMs);
    return Date.now() + effective + this.options.deadlineGraceMs;
  }

  // ----- event routing ------------------------------------------------------------------

  /** @internal Routes one session event of `link`. */
  dispatch(link: Link, event: SessionEvent): void {
    switch (event.kind) {
      case "response-data": {
        const inbox = link.responses.get(event.requestId);
        if (inbox) {
          inbox.put({ data: event.data, end: event.end, ...(event.responder !== undefined ? { responder: event.responder } : {}) });
          if (event.end) link.responses.delete(event.requestId);
        }
        return;
      }
      case "response-failed": {
        const inbox = link.responses.get(event.requestId);
        link.responses.delete(event.requestId);
        inbox?.put(event.error);
        return;
      }
      case "request-data": {
        if (event.start) {
          const request = new IncomingRequest(link, event.requestId, event.sender, event.timeoutMs);
          link.incoming.set(event.requestId, request);
          request.push(event.data, event.end);
          this.requestInbox.put(request);
        } else {
          link.incoming.get(event.requestId)?.push(event.data, event.end);
        }
        return;
      }
      case "request-failed": {
        const request = link.incoming.get(event.requestId);
        link.incoming.delete(event.requestId);
        request?.fail(event.error);
        return;
      }
      case "broadcast":
        // Refused when the queue is full: no ACK, the sender sees us in BroadcastIncomplete.missing.
        this.broadcastInbox.put(new Broadcast(link, event.requestId, event.sender, event.body));
        return;
      case "broadcast-done": {
        const d = link.broadcasts.get(event.requestId);
        link.broadcasts.delete(event.requestId);
        if (event.error) d?.reject(event.error);
        else d?.resolve(event.acked);
        return;
      }
      case "presence":
        if (event.joined && !this.peerList.includes(event.peer)) this.peerList.push(event.peer);
        else if (!event.joined) this.peerList = this.peerList.filter((p) => p !== event.peer);
        this.presenceInbox.put({ peer: event.peer, joined: event.joined });
        return;
      case "presence-resync":
        this.presenceInbox.put({ resync: true }); // the session asked PEERS; the difference follows
        return;
      case "peers":
        this.peerList = [...event.peers];
        link.peerWaiters.shift()?.resolve([...event.peers]);
        return;
      case "pong": {
        const d = link.pings.get(event.sequence);
        link.pings.delete(event.sequence);
        d?.resolve();
        return;
      }
      case "welcome":
        link.welcome.resolve(event);
        return;
      case "going-away":
        return; // start nothing new (current() refuses); the broker closes when idle
      case "connection-failed":
        link.fail(event.error);
        return;
      case "broadcast-cancelled":
        return; // nothing routed: the queued Broadcast sees that it owes no ACK
    }
  }

  // ----- request / reply ----------------------------------------------------------------

  /**
   * Sends a request and resolves with the whole response body. The body may be bytes, text, or
   * a stream of chunks (`AsyncIterable<Uint8Array>`, `ReadableStream<Uint8Array>`). Rejects with
   * {@link NoReceiver}, {@link Timeout}, {@link PeerGone}, {@link Cancelled},
   * {@link LimitExceeded}, {@link ConnectionLost}, {@link Reconnecting}, ...
   */
  async request(body: BodySource = new Uint8Array(0), options: RequestOptions = {}): Promise<Uint8Array> {
    const response = await this.requestStream(body, options);
    return response.bytes();
  }

  /**
   * Sends a request whose body is sent as it comes (in frames of at most the broker's max
   * payload), and resolves at once with the {@link Response}: an async iterable of the
   * response's chunks. The response may begin before the request body is complete.
   */
  async requestStream(body: BodySource, options: RequestOptions = {}): Promise<Response> {
    const { signal } = options;
    if (signal?.aborted) throw abortError(signal, "the request");
    const link = this.current();
    const id = link.session.startRequest(timeoutField(options.timeoutMs), options.noWait ?? false);
    const inbox = new Inbox<Item>();
    link.responses.set(id, inbox);
    const response = new Response(link, id, inbox, this.deadline(options.timeoutMs), signal);
    const whole = wholeBody(body);
    if (whole !== undefined) {
      try {
        await link.send(link.session.bodyFrames(id, whole, true), () => link.responses.has(id));
      } catch (err) {
        response.abandon();
        throw err;
      }
    } else {
      void this.pump(link, id, inbox, response, body);
    }
    return response;
  }

  private async pump(link: Link, id: Uuid, inbox: Inbox<Item>, response: Response, body: BodySource): Promise<void> {
    const alive = (): boolean => link.responses.has(id);
    try {
      for await (const chunk of chunksOf(body)) {
        if (!alive()) break; // the request ended (answered, failed, cancelled): stop reading the source
        await link.send(link.session.bodyFrames(id, chunk, false), alive);
      }
      if (alive()) await link.send(link.session.bodyFrames(id, new Uint8Array(0), true));
      else link.session.cancelRequestFrame(id); // forget the send state; nothing goes out
    } catch (err) {
      if (err instanceof SwitchyardError) return; // the response reports the link's failure
      response.abandon();
      inbox.put(new Cancelled(`the request body failed: ${String(err)}`, { cause: err }));
    }
  }

  /** How many requests this client holds at once (0 stops new assignments). Re-issued after every reconnect. */
  setReceiveWindow(window: number): void {
    if (!Number.isInteger(window) || window < 0 || window > 0xffff_ffff) throw new RangeError("the window is 0 ..= 2^32 - 1");
    if (this.closedReason) throw this.closedReason;
    this.window = window;
    if (this.link) this.link.write(this.link.session.receiveFrame(window));
  }

  /** The next request assigned to this client (after {@link setReceiveWindow}); {@link Timeout} after `timeoutMs`. */
  async nextRequest(options: { timeoutMs?: number } = {}): Promise<IncomingRequest> {
    const deadline = options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs;
    for (;;) {
      const request = await this.requestInbox.get(deadline === undefined ? undefined : deadline - Date.now());
      if (request.cancelled) continue;
      return request;
    }
  }

  /**
   * `for await (const req of client.requests({ window: 4 }))`: sets the receive window (when
   * given), then yields requests as they are assigned; ends when the client is closed.
   */
  requests(options: { window?: number } = {}): AsyncIterable<IncomingRequest> {
    return this.iterate(() => this.nextRequest(), () => {
      if (options.window !== undefined) this.setReceiveWindow(options.window);
    });
  }

  private async *iterate<T>(next: () => Promise<T>, first?: () => void): AsyncGenerator<T, void, undefined> {
    first?.();
    for (;;) {
      let item: T;
      try {
        item = await next();
      } catch (err) {
        if (err instanceof Closed) return;
        throw err;
      }
      yield item;
    }
  }

  // ----- broadcast ----------------------------------------------------------------------

  /**
   * Sends `body` to every other peer of the channel; resolves with how many acknowledged (all
   * of them). Rejects with {@link NoPeers}, {@link BroadcastIncomplete} (`.missing`), ...
   */
  async broadcast(body: Body = new Uint8Array(0), options: BroadcastOptions = {}): Promise<number> {
    const { signal } = options;
    if (signal?.aborted) throw abortError(signal, "the broadcast");
    const link = this.current();
    const id = link.session.startBroadcast(timeoutField(options.timeoutMs));
    const outcome = new Deferred<number>();
    link.broadcasts.set(id, outcome);
    const onAbort = (): void => outcome.reject(abortError(signal as AbortSignal, "the broadcast"));
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await link.send(link.session.bodyFrames(id, wholeBody(body) ?? new Uint8Array(0), true));
      return await raceTimeout(
        outcome.promise,
        this.deadline(options.timeoutMs) - Date.now(),
        () => new Timeout("no broadcast outcome within the timeout (plus grace)"),
      );
    } finally {
      signal?.removeEventListener("abort", onAbort);
      if (link.broadcasts.delete(id)) link.writeQuietly(link.session.cancelRequestFrame(id));
    }
  }

  /** The next broadcast received in full (acked on return unless `autoAck: false`). */
  async nextBroadcast(options: { timeoutMs?: number; autoAck?: boolean } = {}): Promise<Broadcast> {
    const deadline = options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs;
    for (;;) {
      const item = await this.broadcastInbox.get(deadline === undefined ? undefined : deadline - Date.now());
      if (item.owed()) {
        if (options.autoAck ?? true) item.ack();
        return item;
      }
    }
  }

  /** `for await (const msg of client.broadcasts())`; ends when the client is closed. */
  broadcasts(options: { autoAck?: boolean } = {}): AsyncIterable<Broadcast> {
    return this.iterate(() => this.nextBroadcast(options));
  }

  // ----- presence, peers, ping ----------------------------------------------------------

  /** The next presence change (the oldest is dropped beyond `presenceQueue`). */
  nextPresence(options: { timeoutMs?: number } = {}): Promise<PresenceEvent> {
    return this.presenceInbox.get(options.timeoutMs);
  }

  /** `for await (const ev of client.presence())`; ends when the client is closed. */
  presence(): AsyncIterable<PresenceEvent> {
    return this.iterate(() => this.nextPresence());
  }

  /** Asks the broker for the channel's other peers (departed ones within their grace period included). */
  async peers(options: { timeoutMs?: number } = {}): Promise<Uuid[]> {
    const link = this.current();
    const answer = new Deferred<Uuid[]>();
    link.peerWaiters.push(answer); // stays queued on timeout: answers come in order
    link.write(link.session.peersFrame());
    return raceTimeout(answer.promise, options.timeoutMs ?? 5000, () => new Timeout("no PEERS answer in time"));
  }

  /** Round trip to the broker, in milliseconds. */
  async ping(options: { timeoutMs?: number } = {}): Promise<number> {
    const link = this.current();
    const { sequence, frame } = link.session.pingFrame();
    const pong = new Deferred<void>();
    link.pings.set(sequence, pong);
    const started = performance.now();
    link.write(frame);
    try {
      await raceTimeout(pong.promise, options.timeoutMs ?? 5000, () => new Timeout("no PONG in time"));
    } finally {
      link.pings.delete(sequence);
    }
    return performance.now() - started;
  }
}

/**
 * Connects to the broker at `url` over the transport `dial` opens, joins `options.channel`, and
 * resolves once the broker welcomed the client. The first connection is not retried: it rejects
 * with {@link ConnectFailed}, {@link Unauthorized}, {@link NotASwitchyardBroker}, {@link Timeout},
 * {@link LimitExceeded}, {@link ClientIdInUse}, ...
 */
export async function connectWith(dial: Dialer, url: string, options: ConnectOptions): Promise<Client> {
  const address = parseAddress(url);
  const token = options.token === undefined ? new Uint8Array(0) : typeof options.token === "string" ? new TextEncoder().encode(options.token) : options.token;
  let resume = NIL_UUID;
  if (options.resumeSecret !== undefined) {
    if (!(options.resumeSecret instanceof Uint8Array) || options.resumeSecret.length !== 16) {
      throw new TypeError("resumeSecret is 16 bytes (a Uint8Array)");
    }
    resume = uuidFromBytes(options.resumeSecret);
  }
  let clientId: Uuid | undefined;
  if (options.clientId !== undefined) {
    clientId = parseUuid(options.clientId);
    if (clientId === undefined) throw new TypeError(`clientId ${JSON.stringify(options.clientId)} is not a UUID`);
  }
  const client = new Client(
    dial,
    address,
    deriveChannelId(options.channel),
    clientId,
    {
      token,
      resume,
      connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      deadlineGraceMs: options.deadlineGraceMs ?? 2000,
      heartbeatMisses: options.heartbeatMisses ?? 3,
      reconnect: options.reconnect ?? {},
    },
    { broadcast: options.broadcastQueue ?? 1024, presence: options.presenceQueue ?? 1024 },
  );
  const link = await client.openLink();
  client.install(link);
  return client;
}
