/**
 * The stream objects of the operations: {@link Response} (the answer to a request this client
 * sent), {@link IncomingRequest} (a request assigned to this client, with its response side), and
 * {@link Broadcast} (a broadcast received in full, with its ACK). Each is bound to the
 * {@link Link} it arrived on and writes only there.
 */

import { Cancelled, SwitchyardError, Timeout } from "./errors.js";
import { Inbox } from "./inbox.js";
import type { Link } from "./link.js";
import { type Item, abortError, raceTimeout } from "./options.js";
import { type Body, type BodySource, chunksOf, concatBytes, wholeBody } from "./util.js";
import type { Uuid } from "./uuid.js";

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
