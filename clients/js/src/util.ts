/** Small helpers: deferred promises, body sources, UTF-8. */

/** A promise with its settle functions. Its rejection is always marked handled (no crash when nobody awaits it). */
export class Deferred<T> {
  readonly promise: Promise<T>;
  private settled = false;
  private res!: (value: T) => void;
  private rej!: (reason: unknown) => void;

  constructor() {
    this.promise = new Promise<T>((resolve, reject) => {
      this.res = resolve;
      this.rej = reject;
    });
    this.promise.catch(() => undefined);
  }

  get done(): boolean {
    return this.settled;
  }

  resolve(value: T): void {
    if (this.settled) return;
    this.settled = true;
    this.res(value);
  }

  reject(reason: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.rej(reason);
  }
}

/** Bytes of a whole body given as bytes or text (UTF-8). */
export type Body = Uint8Array | ArrayBuffer | string;

/** A body given as a whole or as a stream of chunks, sent as they come. */
export type BodySource = Body | AsyncIterable<Uint8Array> | Iterable<Uint8Array> | ReadableStream<Uint8Array>;

const utf8 = new TextEncoder();

/** `body` as bytes, or `undefined` when it is a stream. */
export function wholeBody(body: BodySource): Uint8Array | undefined {
  if (typeof body === "string") return utf8.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  return undefined;
}

function isReadableStream(x: unknown): x is ReadableStream<Uint8Array> {
  return typeof x === "object" && x !== null && typeof (x as { getReader?: unknown }).getReader === "function";
}

/**
 * The chunks of a streamed body. A `ReadableStream` is read with a reader (not every browser
 * makes it async-iterable) and cancelled when the iteration stops early.
 */
export async function* chunksOf(body: BodySource): AsyncGenerator<Uint8Array, void, undefined> {
  const whole = wholeBody(body);
  if (whole !== undefined) {
    yield whole;
    return;
  }
  if (isReadableStream(body)) {
    const reader = body.getReader();
    let finished = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          finished = true;
          return;
        }
        yield value;
      }
    } finally {
      if (!finished) await reader.cancel().catch(() => undefined);
      reader.releaseLock();
    }
  }
  if (Symbol.asyncIterator in (body as object)) {
    yield* body as AsyncIterable<Uint8Array>;
    return;
  }
  yield* body as Iterable<Uint8Array>;
}

/** The concatenation of `parts`. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0] as Uint8Array;
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
