/**
 * UUIDs as the client shows them (canonical lowercase hyphenated strings) and as the wire carries
 * them (16 raw bytes, most significant first), v4 generation, and channel names (PROTOCOL.md §5.1:
 * UUIDv5 over a tiny in-package SHA-1, so it is synchronous and works where `crypto.subtle` is
 * missing, e.g. a browser page served over plain http).
 */

/** A UUID in canonical form: 36 characters, lowercase hex, hyphenated. */
export type Uuid = string;

/** The nil UUID (16 zero bytes). */
export const NIL_UUID: Uuid = "00000000-0000-0000-0000-000000000000";

/** The namespace of channel names: UUIDv5(NAMESPACE_URL, "switchyard:channel") (PROTOCOL.md §5.1). */
export const CHANNEL_NAMESPACE: Uuid = "dda4c0a4-9209-58ee-bed8-816189f73351";

const HEX: readonly string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/** The canonical text of the 16 bytes at `bytes[offset..offset+16]`. */
export function uuidFromBytes(bytes: Uint8Array, offset = 0): Uuid {
  let out = "";
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) out += "-";
    out += HEX[bytes[offset + i] ?? 0];
  }
  return out;
}

/** Writes the 16 bytes of canonical `id` into `target` at `offset`. */
export function writeUuid(id: Uuid, target: Uint8Array, offset: number): void {
  let j = 0;
  for (let i = 0; i < 16; i++) {
    if (id.charCodeAt(j) === 45 /* - */) j++;
    target[offset + i] = parseInt(id.slice(j, j + 2), 16);
    j += 2;
  }
}

/** The 16 bytes of canonical `id`. */
export function uuidToBytes(id: Uuid): Uint8Array {
  const out = new Uint8Array(16);
  writeUuid(id, out, 0);
  return out;
}

const PLAIN = /^[0-9a-fA-F]{32}$/;
const HYPHENATED = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/**
 * Parses `text` as a UUID — hyphenated, 32 hex digits, braced or `urn:uuid:` (any case) — into
 * its canonical form; `undefined` when it is not one.
 */
export function parseUuid(text: string): Uuid | undefined {
  let body = text;
  if (body.slice(0, 9).toLowerCase() === "urn:uuid:") body = body.slice(9);
  else if (body.startsWith("{") && body.endsWith("}")) body = body.slice(1, -1);
  let hex: string;
  if (PLAIN.test(body)) hex = body;
  else if (HYPHENATED.test(body)) hex = body.replace(/-/g, "");
  else return undefined;
  hex = hex.toLowerCase();
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A random (v4) UUID, from `crypto.getRandomValues` (available in browsers and Node ≥ 19). */
export function randomUuid(): Uuid {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
  b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
  return uuidFromBytes(b);
}

/** SHA-1 of `data` (FIPS 180-4). Only used for UUIDv5: small inputs, no streaming needed. */
export function sha1(data: Uint8Array): Uint8Array {
  const bitLen = data.length * 8;
  const padded = new Uint8Array((((data.length + 8) >> 6) + 1) << 6);
  padded.set(data);
  padded[data.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bitLen / 0x1_0000_0000));
  view.setUint32(padded.length - 4, bitLen >>> 0);
  let h0 = 0x67452301, h1 = 0xefcdab89, h2 = 0x98badcfe, h3 = 0x10325476, h4 = 0xc3d2e1f0;
  const w = new Uint32Array(80);
  for (let block = 0; block < padded.length; block += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(block + i * 4);
    for (let i = 16; i < 80; i++) {
      const x = (w[i - 3] ?? 0) ^ (w[i - 8] ?? 0) ^ (w[i - 14] ?? 0) ^ (w[i - 16] ?? 0);
      w[i] = (x << 1) | (x >>> 31);
    }
    let a = h0, b = h1, c = h2, d = h3, e = h4;
    for (let i = 0; i < 80; i++) {
      let f: number, k: number;
      if (i < 20) { f = (b & c) | (~b & d); k = 0x5a827999; }
      else if (i < 40) { f = b ^ c ^ d; k = 0x6ed9eba1; }
      else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8f1bbcdc; }
      else { f = b ^ c ^ d; k = 0xca62c1d6; }
      const t = (((a << 5) | (a >>> 27)) + f + e + k + (w[i] ?? 0)) >>> 0;
      e = d; d = c; c = (b << 30) | (b >>> 2); b = a; a = t;
    }
    h0 = (h0 + a) >>> 0; h1 = (h1 + b) >>> 0; h2 = (h2 + c) >>> 0; h3 = (h3 + d) >>> 0; h4 = (h4 + e) >>> 0;
  }
  const out = new Uint8Array(20);
  const ov = new DataView(out.buffer);
  [h0, h1, h2, h3, h4].forEach((h, i) => ov.setUint32(i * 4, h));
  return out;
}

/** UUIDv5 (RFC 9562 §5.5) of `name` in `namespace`. */
export function uuidV5(namespace: Uuid, name: Uint8Array): Uuid {
  const input = new Uint8Array(16 + name.length);
  writeUuid(namespace, input, 0);
  input.set(name, 16);
  const hash = sha1(input);
  hash[6] = ((hash[6] ?? 0) & 0x0f) | 0x50;
  hash[8] = ((hash[8] ?? 0) & 0x3f) | 0x80;
  return uuidFromBytes(hash);
}

const encoder = new TextEncoder();

/**
 * The channel id of `channel` (PROTOCOL.md §5.1): a string that parses as a UUID is that UUID;
 * any other string is a name, `UUIDv5(CHANNEL_NAMESPACE, UTF-8 bytes)`, byte for byte (no
 * trimming, no normalisation). Names are 1 to 255 bytes without control characters; others, and
 * the nil UUID, throw a `RangeError`.
 */
export function channelId(channel: string): Uuid {
  let result = parseUuid(channel);
  if (result === undefined) {
    const raw = encoder.encode(channel);
    if (raw.length < 1 || raw.length > 255) {
      throw new RangeError(`a channel name is 1 to 255 bytes, not ${raw.length}`);
    }
    // C0, DEL and C1 control characters.
    if (/[\u0000-\u001f\u007f-\u009f]/.test(channel)) {
      throw new RangeError("a channel name has no control characters");
    }
    result = uuidV5(CHANNEL_NAMESPACE, raw);
  }
  if (result === NIL_UUID) throw new RangeError("the nil UUID is not a channel");
  return result;
}
