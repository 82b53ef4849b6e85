/**
 * The switchyard wire format (PROTOCOL.md §1–§3, §11), sans-IO: nothing here touches a socket or
 * a clock. {@link Decoder} turns bytes into {@link Frame}s and throws nothing but
 * {@link ProtocolError} on garbage; {@link encodeFrame} is its inverse.
 *
 * Invariants:
 * - {@link Decoder.next} returns `null` ("need more") for every strict prefix of a valid frame, and
 *   checks in the order of PROTOCOL.md §1: version, frame type, flags, then `payload_len` against
 *   the limit *before* any payload byte is buffered for it.
 * - How the input is split into {@link Decoder.feed} calls never changes the frames decoded.
 * - Once it threw, a decoder stays failed: every later `next()` throws the same error.
 */

import { ProtocolError } from "./errors.js";
import { NIL_UUID, type Uuid, uuidFromBytes, writeUuid } from "./uuid.js";

export const VERSION = 1;
export const HEADER_LEN = 64;
export const DEFAULT_MAX_PAYLOAD = 1_048_576;
export const MAX_PAYLOAD_CEILING = 16_777_216;
export const MAX_SEQUENCE = 0x7fff_ffff;
const FINAL_BIT = 0x8000_0000;

/** Frame types (§2). */
export const FrameType = {
  HELLO: 0x01,
  WELCOME: 0x02,
  START: 0x03,
  CHUNK: 0x04,
  END: 0x05,
  ERROR: 0x06,
  ACK: 0x07,
  RECEIVE: 0x08,
  CANCEL: 0x09,
  PEER_JOINED: 0x0a,
  PEER_LEFT: 0x0b,
  PING: 0x0c,
  PONG: 0x0d,
  PEERS: 0x0e,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

const FRAME_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(FrameType).map(([k, v]) => [v, k]));

/** The name of frame type `type`, for messages. */
export function frameName(type: number): string {
  return FRAME_NAMES.get(type) ?? `0x${type.toString(16).padStart(2, "0")}`;
}

/** Flags (§3). */
export const Flags = {
  REQUEST: 0x0001,
  RESPONSE: 0x0002,
  BROADCAST: 0x0004,
  NO_WAIT: 0x0008,
} as const;
export const DEFINED_FLAGS = 0x000f;

/** One decoded (or to-be-encoded) frame: the header fields and the payload. */
export interface Frame {
  readonly type: FrameType;
  readonly flags: number;
  readonly clientId: Uuid;
  readonly channelId: Uuid;
  readonly requestId: Uuid;
  readonly timeoutMs: number;
  /** Bits 0–30 of the sequence field. */
  readonly sequence: number;
  /** Bit 31 of the sequence field. */
  readonly final: boolean;
  readonly payload: Uint8Array;
}

/** A frame to encode: every field but the type defaults to zero / nil / empty. */
export type FrameInit = Partial<Frame> & { readonly type: FrameType };

const EMPTY = new Uint8Array(0);

/** The wire bytes of `frame`: the 64-byte header, then the payload, in one buffer. */
export function encodeFrame(frame: FrameInit): Uint8Array {
  const payload = frame.payload ?? EMPTY;
  const out = new Uint8Array(HEADER_LEN + payload.length);
  const view = new DataView(out.buffer);
  out[0] = VERSION;
  out[1] = frame.type;
  view.setUint16(2, frame.flags ?? 0);
  writeUuid(frame.clientId ?? NIL_UUID, out, 4);
  writeUuid(frame.channelId ?? NIL_UUID, out, 20);
  writeUuid(frame.requestId ?? NIL_UUID, out, 36);
  view.setUint32(52, frame.timeoutMs ?? 0);
  view.setUint32(56, ((frame.sequence ?? 0) & MAX_SEQUENCE) + (frame.final ? FINAL_BIT : 0));
  view.setUint32(60, payload.length);
  out.set(payload, HEADER_LEN);
  return out;
}

/**
 * A streaming frame decoder: {@link feed} bytes, then call {@link next} until it returns `null`.
 *
 * Bytes are kept as the list of received chunks (no re-copy per feed), so decoding a body of
 * n bytes costs O(n) whatever the split. `maxPayload` bounds `payload_len`; it defaults to the
 * protocol's ceiling (16 MiB) because a broker's ERROR text may exceed a small configured limit.
 */
export class Decoder {
  private chunks: Uint8Array[] = [];
  /** Read position in `chunks[0]`. */
  private offset = 0;
  private available = 0;
  private failed: ProtocolError | undefined;
  /** The header of the frame being completed (checked), once its 64 bytes arrived. */
  private pending: { header: Uint8Array; payloadLen: number } | undefined;

  constructor(public maxPayload: number = MAX_PAYLOAD_CEILING) {}

  /** Bytes received and not yet decoded into a frame. */
  get buffered(): number {
    return this.available + (this.pending ? HEADER_LEN : 0);
  }

  /** Appends received bytes (the decoder keeps a reference: do not reuse `data`). */
  feed(data: Uint8Array): void {
    if (data.length === 0) return;
    this.chunks.push(data);
    this.available += data.length;
  }

  /**
   * The next complete frame, or `null` when more bytes are needed. Throws {@link ProtocolError}
   * on input that can never become a valid frame; the decoder then stays failed.
   */
  next(): Frame | null {
    if (this.failed) throw this.failed;
    if (!this.pending) {
      if (this.available < HEADER_LEN) return null;
      const header = this.take(HEADER_LEN);
      const view = new DataView(header.buffer, header.byteOffset, HEADER_LEN);
      const version = header[0] ?? 0;
      const type = header[1] ?? 0;
      const flags = view.getUint16(2);
      const payloadLen = view.getUint32(60);
      if (version !== VERSION) throw this.fail(`unsupported version byte ${version} (expected ${VERSION})`);
      if (!FRAME_NAMES.has(type)) throw this.fail(`unknown frame type 0x${type.toString(16).padStart(2, "0")}`);
      if (flags & ~DEFINED_FLAGS) {
        throw this.fail(`undefined flag bits 0x${(flags & ~DEFINED_FLAGS).toString(16).padStart(4, "0")}`);
      }
      if (payloadLen > this.maxPayload) throw this.fail(`payload_len ${payloadLen} over the limit ${this.maxPayload}`);
      this.pending = { header, payloadLen };
    }
    const { header, payloadLen } = this.pending;
    if (this.available < payloadLen) return null;
    this.pending = undefined;
    const payload = payloadLen === 0 ? EMPTY : this.take(payloadLen);
    const view = new DataView(header.buffer, header.byteOffset, HEADER_LEN);
    const seq = view.getUint32(56);
    return {
      type: header[1] as FrameType,
      flags: view.getUint16(2),
      clientId: uuidFromBytes(header, 4),
      channelId: uuidFromBytes(header, 20),
      requestId: uuidFromBytes(header, 36),
      timeoutMs: view.getUint32(52),
      sequence: seq & MAX_SEQUENCE,
      final: seq >= FINAL_BIT,
      payload,
    };
  }

  /** Removes and returns the next `n` (≤ available) bytes, as a fresh copy. */
  private take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0] as Uint8Array;
      const count = Math.min(n - filled, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + count), filled);
      filled += count;
      this.offset += count;
      if (this.offset === chunk.length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
    this.available -= n;
    return out;
  }

  private fail(message: string): ProtocolError {
    this.failed = new ProtocolError(message);
    this.chunks = [];
    this.available = 0;
    return this.failed;
  }
}

// ----- control payloads (§11) ---------------------------------------------------------------

/** The broker's limits, from its WELCOME. Times in milliseconds. */
export interface Limits {
  readonly maxPayload: number;
  readonly defaultTimeoutMs: number;
  readonly maxTimeoutMs: number;
  /** Interval of the broker's PINGs; 0 = none. */
  readonly heartbeatMs: number;
}

export const DEFAULT_LIMITS: Limits = {
  maxPayload: DEFAULT_MAX_PAYLOAD,
  defaultTimeoutMs: 30_000,
  maxTimeoutMs: 3_600_000,
  heartbeatMs: 10_000,
};

function viewOf(data: Uint8Array): DataView {
  return new DataView(data.buffer, data.byteOffset, data.byteLength);
}

function peerList(data: Uint8Array, what: string): Uuid[] {
  if (data.length % 16) throw new ProtocolError(`${what}: peer list of ${data.length} bytes is not a multiple of 16`);
  const out: Uuid[] = [];
  for (let i = 0; i < data.length; i += 16) out.push(uuidFromBytes(data, i));
  return out;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function idsBytes(ids: readonly Uuid[]): Uint8Array {
  const out = new Uint8Array(16 * ids.length);
  ids.forEach((id, i) => writeUuid(id, out, 16 * i));
  return out;
}

/** The limits and the peers of a WELCOME payload. */
export function decodeWelcome(payload: Uint8Array): { limits: Limits; peers: Uuid[] } {
  if (payload.length < 20) throw new ProtocolError(`WELCOME payload of ${payload.length} bytes (at least 20)`);
  const v = viewOf(payload);
  const count = v.getUint32(16);
  if (payload.length !== 20 + 16 * count) {
    throw new ProtocolError(`WELCOME announces ${count} peers in ${payload.length} bytes`);
  }
  const maxPayload = v.getUint32(0);
  if (maxPayload < 1 || maxPayload > MAX_PAYLOAD_CEILING) throw new ProtocolError(`WELCOME max_payload ${maxPayload} out of range`);
  const limits = { maxPayload, defaultTimeoutMs: v.getUint32(4), maxTimeoutMs: v.getUint32(8), heartbeatMs: v.getUint32(12) };
  return { limits, peers: peerList(payload.subarray(20), "WELCOME") };
}

/** A WELCOME payload (for tests and fake brokers). */
export function encodeWelcome(limits: Limits, peers: readonly Uuid[] = []): Uint8Array {
  const head = new Uint8Array(20);
  const v = viewOf(head);
  v.setUint32(0, limits.maxPayload);
  v.setUint32(4, limits.defaultTimeoutMs);
  v.setUint32(8, limits.maxTimeoutMs);
  v.setUint32(12, limits.heartbeatMs);
  v.setUint32(16, peers.length);
  return concat([head, idsBytes(peers)]);
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
const utf8 = new TextEncoder();

/** The code, text and listed client ids of an ERROR payload. */
export function decodeError(payload: Uint8Array): { code: number; text: string; peers: Uuid[] } {
  if (payload.length < 4) throw new ProtocolError(`ERROR payload of ${payload.length} bytes (at least 4)`);
  const v = viewOf(payload);
  const code = v.getUint16(0);
  const textLen = v.getUint16(2);
  if (payload.length < 4 + textLen) throw new ProtocolError(`ERROR text of ${textLen} bytes in a ${payload.length}-byte payload`);
  let text: string;
  try {
    text = strictUtf8.decode(payload.subarray(4, 4 + textLen));
  } catch {
    throw new ProtocolError("ERROR text is not UTF-8");
  }
  return { code, text, peers: peerList(payload.subarray(4 + textLen), "ERROR") };
}

/** An ERROR payload (for tests and fake brokers). */
export function encodeError(code: number, text: string, peers: readonly Uuid[] = []): Uint8Array {
  const raw = utf8.encode(text);
  const head = new Uint8Array(4);
  viewOf(head).setUint16(0, code);
  viewOf(head).setUint16(2, raw.length);
  return concat([head, raw, idsBytes(peers)]);
}

/** The single u32 of a RECEIVE or broker ACK payload. */
export function decodeU32(payload: Uint8Array, what: string): number {
  if (payload.length !== 4) throw new ProtocolError(`${what} payload of ${payload.length} bytes (expected 4)`);
  return viewOf(payload).getUint32(0);
}

/** A u32 payload. */
export function encodeU32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  viewOf(out).setUint32(0, value);
  return out;
}

/** The client ids of a broker's PEERS answer. */
export function decodePeers(payload: Uint8Array): Uuid[] {
  if (payload.length < 4) throw new ProtocolError(`PEERS payload of ${payload.length} bytes (at least 4)`);
  const count = viewOf(payload).getUint32(0);
  if (payload.length !== 4 + 16 * count) throw new ProtocolError(`PEERS announces ${count} peers in ${payload.length} bytes`);
  return peerList(payload.subarray(4), "PEERS");
}
