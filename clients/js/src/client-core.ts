/**
 * The {@link Client} class: its state, the connection lifecycle (opening a link and waiting for
 * the WELCOME, installing it, the reconnect loop, closing), the client-wide queues its links route
 * events to, and the public operations (request/reply, broadcast, presence,
 * peers, ping). See `client.ts` for the invariants these keep.
 */

import {
  Cancelled,
  Closed,
  ConnectFailed,
  ConnectionLost,
  GoingAway,
  NotASwitchyardBroker,
  Reconnecting,
  SwitchyardError,
  Timeout,
} from "./errors.js";
import { Inbox } from "./inbox.js";
import { Link } from "./link.js";
import {
  type BroadcastOptions,
  type ConnectionState,
  type Item,
  type PresenceEvent,
  type ReconnectPolicy,
  type RequestOptions,
  type ResolvedOptions,
  abortError,
  raceTimeout,
  reconnectDelay,
  recoverable,
  timeoutField,
} from "./options.js";
import { DEFAULT_LIMITS, type Limits } from "./protocol.js";
import { Session, type SessionEvent } from "./session.js";
import { Broadcast, IncomingRequest, Response } from "./streams.js";
import type { Dialer } from "./transport/types.js";
import type { Address } from "./url.js";
import { type Body, type BodySource, Deferred, chunksOf, wholeBody } from "./util.js";
import { NIL_UUID, type Uuid, uuidToBytes } from "./uuid.js";

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

  // ----- events routed here by the link ------------------------------------------------

  /** @internal A request was assigned to this client (its first frame arrived). */
  requestArrived(request: IncomingRequest): void {
    this.requestInbox.put(request);
  }

  /**
   * @internal A broadcast arrived in full. Refused when the queue is full: no ACK, the sender
   * sees us in BroadcastIncomplete.missing.
   */
  broadcastArrived(broadcast: Broadcast): void {
    this.broadcastInbox.put(broadcast);
  }

  /** @internal A peer joined or left. */
  presenceChanged(peer: Uuid, joined: boolean): void {
    if (joined && !this.peerList.includes(peer)) this.peerList.push(peer);
    else if (!joined) this.peerList = this.peerList.filter((p) => p !== peer);
    this.presenceInbox.put({ peer, joined });
  }

  /** @internal The broker dropped presence events; the session asked PEERS, the difference follows. */
  presenceResync(): void {
    this.presenceInbox.put({ resync: true });
  }

  /** @internal A PEERS answer arrived. */
  peersReported(peers: readonly Uuid[]): void {
    this.peerList = [...peers];
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
