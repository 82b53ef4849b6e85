/**
 * {@link Link}: one connection to the broker — its transport, its sans-IO {@link Session}, the
 * routes of the operations started on it, and its heartbeat watch. It feeds incoming bytes to the
 * session and routes each event, synchronously, to the operation waiting for it (or to its
 * {@link Client}'s queues: requests, broadcasts, presence); when it ends (the first failure wins)
 * it tells the client, which fails its routes and decides whether to reconnect.
 */

import type { Client } from "./client-core.js";
import { ConnectFailed, ConnectionLost, NotASwitchyardBroker, SwitchyardError, Timeout } from "./errors.js";
import type { Inbox } from "./inbox.js";
import type { Item } from "./options.js";
import type { Session, SessionEvent } from "./session.js";
import { Broadcast, IncomingRequest } from "./streams.js";
import type { Transport } from "./transport/types.js";
import { Deferred } from "./util.js";
import type { Uuid } from "./uuid.js";

/** One connection: its transport, its session, and the routes of the operations on it. */
export class Link {
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
      this.route(event);
    }
  }

  /** Routes one session event: to this link's routes, or to the client's queues. */
  private route(event: SessionEvent): void {
    switch (event.kind) {
      case "response-data": {
        const inbox = this.responses.get(event.requestId);
        if (inbox) {
          inbox.put({ data: event.data, end: event.end, ...(event.responder !== undefined ? { responder: event.responder } : {}) });
          if (event.end) this.responses.delete(event.requestId);
        }
        return;
      }
      case "response-failed": {
        const inbox = this.responses.get(event.requestId);
        this.responses.delete(event.requestId);
        inbox?.put(event.error);
        return;
      }
      case "request-data": {
        if (event.start) {
          const request = new IncomingRequest(this, event.requestId, event.sender, event.timeoutMs);
          this.incoming.set(event.requestId, request);
          request.push(event.data, event.end);
          this.client.requestArrived(request);
        } else {
          this.incoming.get(event.requestId)?.push(event.data, event.end);
        }
        return;
      }
      case "request-failed": {
        const request = this.incoming.get(event.requestId);
        this.incoming.delete(event.requestId);
        request?.fail(event.error);
        return;
      }
      case "broadcast":
        // Refused when the queue is full: no ACK, the sender sees us in BroadcastIncomplete.missing.
        this.client.broadcastArrived(new Broadcast(this, event.requestId, event.sender, event.body));
        return;
      case "broadcast-done": {
        const d = this.broadcasts.get(event.requestId);
        this.broadcasts.delete(event.requestId);
        if (event.error) d?.reject(event.error);
        else d?.resolve(event.acked);
        return;
      }
      case "presence":
        this.client.presenceChanged(event.peer, event.joined);
        return;
      case "presence-resync":
        this.client.presenceResync(); // the session asked PEERS; the difference follows
        return;
      case "peers":
        this.client.peersReported(event.peers);
        this.peerWaiters.shift()?.resolve([...event.peers]);
        return;
      case "pong": {
        const d = this.pings.get(event.sequence);
        this.pings.delete(event.sequence);
        d?.resolve();
        return;
      }
      case "welcome":
        this.welcome.resolve(event);
        return;
      case "going-away":
        return; // start nothing new (current() refuses); the broker closes when idle
      case "connection-failed":
        this.fail(event.error);
        return;
      case "broadcast-cancelled":
        return; // nothing routed: the queued Broadcast sees that it owes no ACK
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
