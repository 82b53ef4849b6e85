/**
 * Unit tests of the sans-IO core: frames, the decoder, control payloads, channel names, URLs,
 * the session's routing. No sockets, no broker.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { test } from "node:test";

import {
  BroadcastIncomplete,
  BrokerError,
  NoReceiver,
  NotASwitchyardBroker,
  ProtocolError,
  errorFromCode,
} from "../src/errors.js";
import {
  Decoder,
  Flags,
  type Frame,
  type FrameInit,
  FrameType,
  decodeError,
  decodePeers,
  decodeU32,
  decodeWelcome,
  encodeError,
  encodeFrame,
  encodeWelcome,
} from "../src/protocol.js";
import { Session, type SessionEvent } from "../src/session.js";
import { parseAddress } from "../src/url.js";
import { CHANNEL_NAMESPACE, channelId, sha1, uuidToBytes, uuidV5 } from "../src/uuid.js";
import { REPO } from "./broker.js";

const A = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa";
const B = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";
const C = "cccccccc-cccc-cccc-cccc-cccccccccccc";
const CH = "11111111-1111-1111-1111-111111111111";
const utf8 = new TextEncoder();

/** The frames of PROTOCOL.md §12, read from the document itself. */
function workedExample(): Uint8Array[] {
  const text = readFileSync(resolve(REPO, "PROTOCOL.md"), "utf8");
  const section = text.slice(text.indexOf("## 12. Worked example"), text.indexOf("## 13."));
  return [...section.matchAll(/```hex\n([\s\S]*?)```/g)].map((m) =>
    Uint8Array.from((m[1] ?? "").trim().split(/\s+/), (h) => parseInt(h, 16)),
  );
}

function decodeOne(raw: Uint8Array): Frame {
  const d = new Decoder();
  d.feed(raw);
  const frame = d.next();
  assert.ok(frame);
  assert.equal(d.next(), null);
  assert.equal(d.buffered, 0);
  return frame;
}

/** A deterministic PRNG (mulberry32), so failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("the worked example of PROTOCOL.md §12 decodes, and encodes back to the same bytes (U01)", () => {
  const frames = workedExample();
  assert.equal(frames.length, 10);
  const decoded = frames.map(decodeOne);
  frames.forEach((raw, i) => assert.deepEqual(encodeFrame(decoded[i] as Frame), raw));
  const [hello, welcome, receive, , welcomeA, , start, , , reply] = decoded as Frame[] & { length: 10 };
  assert.equal(hello?.type, FrameType.HELLO);
  assert.equal(hello?.clientId, B);
  assert.equal(hello?.channelId, CH);
  assert.deepEqual(decodeWelcome((welcome as Frame).payload), {
    limits: { maxPayload: 1_048_576, defaultTimeoutMs: 30_000, maxTimeoutMs: 3_600_000, heartbeatMs: 0 },
    peers: [],
  });
  assert.equal(decodeU32((receive as Frame).payload, "RECEIVE"), 1);
  assert.deepEqual(decodeWelcome((welcomeA as Frame).payload).peers, [B]);
  assert.equal(start?.type, FrameType.START);
  assert.equal(start?.flags, Flags.REQUEST);
  assert.equal(start?.requestId, C);
  assert.equal(start?.timeoutMs, 5000);
  assert.equal(start?.sequence, 0);
  assert.equal(start?.final, true);
  assert.deepEqual(start?.payload, utf8.encode("ping"));
  assert.equal(reply?.flags, Flags.RESPONSE);
  assert.equal(reply?.clientId, B);
  assert.deepEqual(reply?.payload, utf8.encode("pong"));
  assert.equal(reply?.final, true);
});

test("every strict prefix of a frame needs more (U02)", () => {
  const raw = workedExample()[4] as Uint8Array; // WELCOME with one peer: header + payload
  for (let cut = 0; cut < raw.length; cut++) {
    const d = new Decoder();
    d.feed(raw.subarray(0, cut));
    assert.equal(d.next(), null, `prefix of ${cut} bytes`);
    d.feed(raw.subarray(cut));
    assert.deepEqual(encodeFrame(d.next() as Frame), raw);
  }
});

test("random splits of the whole example decode to the same frames (U03)", () => {
  const frames = workedExample();
  const all = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of frames) {
    all.set(f, at);
    at += f.length;
  }
  const expected = frames.map(decodeOne);
  const rand = prng(12);
  for (let round = 0; round < 200; round++) {
    const d = new Decoder();
    const got: Frame[] = [];
    let pos = 0;
    while (pos < all.length) {
      const step = 1 + Math.floor(rand() * 90);
      d.feed(all.slice(pos, pos + step));
      pos += step;
      for (let f = d.next(); f; f = d.next()) got.push(f);
    }
    assert.deepEqual(got, expected);
  }
});

test("garbage only ever throws ProtocolError, and the decoder stays failed (U04)", () => {
  const rand = prng(7);
  const valid = workedExample()[6] as Uint8Array;
  for (let round = 0; round < 2000; round++) {
    let data: Uint8Array;
    if (round % 2) {
      data = Uint8Array.from({ length: Math.floor(rand() * 300) }, () => Math.floor(rand() * 256));
    } else {
      data = Uint8Array.from(valid); // a valid frame with a few bytes flipped
      for (let k = 0; k < 3; k++) data[Math.floor(rand() * data.length)] = Math.floor(rand() * 256);
    }
    const d = new Decoder(1000);
    d.feed(data);
    try {
      while (d.next());
    } catch (err) {
      assert.ok(err instanceof ProtocolError, `threw ${String(err)}`);
      assert.throws(() => d.next(), ProtocolError);
    }
  }
});

test("header checks run in order: version, type, flags, payload_len (U05)", () => {
  const hello = workedExample()[0] as Uint8Array;
  const cases: [(h: Uint8Array) => void, RegExp][] = [
    [(h) => { h[0] = 2; h[1] = 0x0f; }, /version/],
    [(h) => { h[1] = 0x0f; h[3] = 0x10; }, /frame type/],
    [(h) => { h[3] = 0x10; h.set([0x7f, 0xff, 0xff, 0xff], 60); }, /flag/],
    [(h) => h.set([0x7f, 0xff, 0xff, 0xff], 60), /payload_len/],
  ];
  for (const [mutate, message] of cases) {
    const header = Uint8Array.from(hello);
    mutate(header);
    const d = new Decoder();
    d.feed(header);
    assert.throws(() => d.next(), (e: unknown) => e instanceof ProtocolError && message.test(e.message));
    assert.throws(() => d.next(), ProtocolError);
  }
});

test("payload_len is checked before any payload byte arrives (U06)", () => {
  const header = encodeFrame({ type: FrameType.START, flags: Flags.REQUEST });
  new DataView(header.buffer).setUint32(60, 2000);
  const d = new Decoder(1000);
  d.feed(header);
  assert.throws(() => d.next(), ProtocolError);
});

test("control payloads (U07)", () => {
  const body = encodeError(0x0105, "x", [A, B]);
  assert.deepEqual(decodeError(body), { code: 0x0105, text: "x", peers: [A, B] });
  assert.throws(() => decodeError(Uint8Array.from([...body, 0])), ProtocolError);
  assert.throws(() => decodeError(Uint8Array.from([0, 1, 0, 2, 0xff, 0xfe])), ProtocolError); // not UTF-8
  assert.throws(() => decodeWelcome(new Uint8Array(19)), ProtocolError);
  assert.deepEqual(decodePeers(Uint8Array.from([0, 0, 0, 1, ...uuidToBytes(A)])), [A]);
  const err = errorFromCode(0x0105, "late", [A]);
  assert.ok(err instanceof BroadcastIncomplete);
  assert.deepEqual(err.missing, [A]);
  assert.ok(errorFromCode(0x0100, "") instanceof NoReceiver);
  const unknown = errorFromCode(0x7777, "new");
  assert.ok(unknown instanceof BrokerError);
  assert.equal(unknown.code, 0x7777);
  assert.equal(unknown.isConnectionFatal, false);
  assert.equal(errorFromCode(0x0002, "").isConnectionFatal, true);
});

test("SHA-1 and UUIDv5 agree with the standard vectors (U16)", () => {
  const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
  assert.equal(hex(sha1(utf8.encode("abc"))), "a9993e364706816aba3e25717850c26c9cd0d89d");
  assert.equal(hex(sha1(new Uint8Array(0))), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  const long = utf8.encode("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq");
  assert.equal(hex(sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
  // The namespace is UUIDv5(NAMESPACE_URL, "switchyard:channel") (PROTOCOL.md §5.1).
  assert.equal(uuidV5("6ba7b811-9dad-11d1-80b4-00c04fd430c8", utf8.encode("switchyard:channel")), CHANNEL_NAMESPACE);
});

test("channel names: the PROTOCOL vector, Python uuid.uuid5 vectors, UUID forms, refusals (U08)", () => {
  assert.equal(channelId("orders"), "f69ae7c9-cd0a-5ed4-97e2-813bd5200f61");
  // Computed with Python: uuid.uuid5(uuid.UUID("dda4c0a4-9209-58ee-bed8-816189f73351"), name).
  const vectors: [string, string][] = [
    ["Orders", "8f874b38-f6d3-55de-abd5-c8da862124c7"],
    [" orders", "e05ba286-237e-567d-911a-5f04dba655dd"],
    ["a", "024f8d72-7c98-50ad-8a19-e2598df5773e"],
    ["ééé", "4beb6536-9b77-5fa9-afd5-5f6867700d5f"],
    ["日本語", "4e324812-638e-5255-a65a-681662d79de7"],
    ["switchyard", "f0a6a2f6-7558-55c8-bc7f-294d9b4fd85a"],
    ["a/b:c?d", "e71dd62d-243a-5e21-8a80-8324f43d4180"],
    ["x".repeat(255), "22855ad9-8af1-51aa-ae01-c6678f33ebcd"],
    ["🚀 rockets", "0884aa6b-6e25-5d9b-a06e-b7b000bda20e"],
  ];
  for (const [name, id] of vectors) assert.equal(channelId(name), id, name);
  const u = "f69ae7c9-cd0a-5ed4-97e2-813bd5200f61";
  for (const text of [u, u.replace(/-/g, ""), `{${u}}`, `urn:uuid:${u}`, u.toUpperCase(), `URN:UUID:${u}`]) {
    assert.equal(channelId(text), u, text);
  }
  for (const bad of ["", "a".repeat(256), "a\nb", "\x7f", "\u0085", "00000000-0000-0000-0000-000000000000"]) {
    assert.throws(() => channelId(bad), RangeError, JSON.stringify(bad));
  }
  assert.ok(channelId("é".repeat(127))); // 254 bytes
});

test("URLs pick the transport (U09)", () => {
  assert.deepEqual(parseAddress("tcp://h:1"), { kind: "tcp", host: "h", port: 1 });
  assert.deepEqual(parseAddress("h:2"), { kind: "tcp", host: "h", port: 2 });
  assert.deepEqual(parseAddress("h"), { kind: "tcp", host: "h", port: 7878 });
  assert.deepEqual(parseAddress("[::1]:4"), { kind: "tcp", host: "::1", port: 4 });
  assert.deepEqual(parseAddress("ws://h:5/x"), { kind: "ws", url: "ws://h:5/x" });
  assert.deepEqual(parseAddress("WSS://h/"), { kind: "ws", url: "wss://h/" });
  for (const bad of ["http://h:1", "h:x", "tcp://", "h:70000", "tls://h:1"]) {
    assert.throws(() => parseAddress(bad), TypeError, bad);
  }
});

function brokerFrame(init: FrameInit): Uint8Array {
  return encodeFrame({ channelId: CH, ...init });
}

function welcomedSession(): Session {
  const session = new Session(CH, A);
  const events = session.receive(
    brokerFrame({
      type: FrameType.WELCOME,
      clientId: A,
      payload: encodeWelcome({ maxPayload: 4, defaultTimeoutMs: 1000, maxTimeoutMs: 10_000, heartbeatMs: 0 }, [B]),
    }),
  );
  assert.equal(events.length, 1);
  assert.equal(events[0]?.kind, "welcome");
  return session;
}

function decodeAll(frames: readonly Uint8Array[]): Frame[] {
  const d = new Decoder();
  for (const f of frames) d.feed(f);
  const out: Frame[] = [];
  for (let f = d.next(); f; f = d.next()) out.push(f);
  return out;
}

test("session: a request split at max_payload, its response, late frames ignored (U10)", () => {
  const session = welcomedSession();
  const id = session.startRequest(1000);
  const frames = decodeAll(session.bodyFrames(id, utf8.encode("0123456789"), true));
  assert.deepEqual(
    frames.map((f) => [f.type, f.sequence, f.final, new TextDecoder().decode(f.payload)]),
    [[FrameType.START, 0, false, "0123"], [FrameType.CHUNK, 1, false, "4567"], [FrameType.END, 2, true, "89"]],
  );
  assert.equal(frames[0]?.timeoutMs, 1000);
  assert.equal(frames[1]?.timeoutMs, 0);
  const events = session.receive(
    new Uint8Array([
      ...brokerFrame({ type: FrameType.START, flags: Flags.RESPONSE, clientId: B, requestId: id, payload: utf8.encode("ok") }),
      ...brokerFrame({ type: FrameType.END, flags: Flags.RESPONSE, requestId: id, sequence: 1, final: true }),
    ]),
  );
  assert.deepEqual(events, [
    { kind: "response-data", requestId: id, data: utf8.encode("ok"), end: false, responder: B },
    { kind: "response-data", requestId: id, data: new Uint8Array(0), end: true },
  ]);
  assert.equal(session.tracked(), 0);
  const late = brokerFrame({ type: FrameType.ERROR, requestId: id, payload: encodeError(0x0106, "?") });
  assert.deepEqual(session.receive(late), []);
});

test("session: PING gets a PONG, a request error is routed, garbage kills the session (U11)", () => {
  const session = welcomedSession();
  assert.deepEqual(session.receive(brokerFrame({ type: FrameType.PING, sequence: 7 })), []);
  const [pong] = decodeAll(session.output);
  assert.equal(pong?.type, FrameType.PONG);
  assert.equal(pong?.sequence, 7);
  const id = session.startRequest(0);
  const [failed] = session.receive(brokerFrame({ type: FrameType.ERROR, requestId: id, payload: encodeError(0x0100, "none") }));
  assert.ok(failed?.kind === "response-failed" && failed.error instanceof NoReceiver);
  const [dead] = session.receive(new Uint8Array(64).fill(9));
  assert.ok(dead?.kind === "connection-failed" && dead.error instanceof ProtocolError);
  assert.deepEqual(session.receive(utf8.encode("more")), []);
});

test("session: an HTTP answer is NotASwitchyardBroker (U12)", () => {
  const session = new Session(CH);
  const [event] = session.receive(utf8.encode(`HTTP/1.1 400 Bad Request\r\n${"x".repeat(64)}`));
  assert.ok(event?.kind === "connection-failed" && event.error instanceof NotASwitchyardBroker);
});

test("session: an incoming request, its response, a cancel (U14)", () => {
  const session = welcomedSession();
  const rid = C;
  const events: SessionEvent[] = session.receive(
    brokerFrame({ type: FrameType.START, flags: Flags.REQUEST, clientId: B, requestId: rid, timeoutMs: 900, final: true, payload: utf8.encode("hi") }),
  );
  assert.deepEqual(events, [
    { kind: "request-data", requestId: rid, data: utf8.encode("hi"), end: true, start: true, sender: B, timeoutMs: 900 },
  ]);
  const [reply] = decodeAll(session.responseFrames(rid, utf8.encode("yo"), true));
  assert.ok(reply && reply.type === FrameType.START && reply.flags === Flags.RESPONSE && reply.final);
  assert.equal(session.tracked(), 0);
  session.receive(brokerFrame({ type: FrameType.START, flags: Flags.REQUEST, clientId: B, requestId: A, payload: utf8.encode("x") }));
  const [cancelled] = session.receive(brokerFrame({ type: FrameType.CANCEL, flags: Flags.REQUEST, requestId: A, final: true }));
  assert.equal(cancelled?.kind, "request-failed");
  assert.deepEqual(session.responseFrames(A, utf8.encode("late"), true), []); // nothing goes out for it
  assert.equal(session.tracked(), 0);
});

test("session: broadcast assembly and its single ACK (U13)", () => {
  const session = welcomedSession();
  const rid = C;
  const flags = Flags.REQUEST | Flags.BROADCAST;
  const events = session.receive(
    new Uint8Array([
      ...brokerFrame({ type: FrameType.START, flags, clientId: B, requestId: rid, payload: utf8.encode("ab") }),
      ...brokerFrame({ type: FrameType.END, flags, requestId: rid, sequence: 1, final: true, payload: utf8.encode("c") }),
    ]),
  );
  assert.deepEqual(events, [{ kind: "broadcast", requestId: rid, sender: B, body: utf8.encode("abc") }]);
  assert.ok(session.ackFrame(rid));
  assert.equal(session.ackFrame(rid), undefined);
});

test("session: an out-of-order response frame is a protocol error (U15)", () => {
  const session = welcomedSession();
  const id = session.startRequest(0);
  session.bodyFrames(id, new Uint8Array(0), true);
  const [event] = session.receive(brokerFrame({ type: FrameType.CHUNK, flags: Flags.RESPONSE, requestId: id, sequence: 1 }));
  assert.ok(event?.kind === "connection-failed" && event.error instanceof ProtocolError);
});

test("session: PRESENCE_OVERFLOW is a notice; the session re-asks PEERS and reports the difference (U17)", () => {
  const session = welcomedSession(); // peers: [B]
  const D = "dddddddd-dddd-dddd-dddd-dddddddddddd";
  const E = "eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee";
  assert.deepEqual(session.receive(brokerFrame({ type: FrameType.PEER_JOINED, clientId: C, final: true })), [
    { kind: "presence", peer: C, joined: true },
  ]);
  assert.deepEqual(session.peers, [B, C]);
  // The broker dropped presence frames (C left, D joined) and then sent the marker: not fatal.
  const notice = brokerFrame({ type: FrameType.ERROR, final: true, payload: encodeError(0x0200, "presence events dropped") });
  assert.deepEqual(session.receive(notice), [{ kind: "presence-resync" }]);
  const [question] = decodeAll(session.output.splice(0));
  assert.ok(question);
  assert.equal(question.type, FrameType.PEERS);
  assert.equal(question.flags, 0);
  assert.equal(question.payload.length, 0);
  assert.equal(question.channelId, CH);
  // A caller's PEERS question sent after the session's own: answers come in question order.
  const callers = decodeAll([session.peersFrame()]);
  assert.equal(callers[0]?.payload.length, 0);
  const peersAnswer = (ids: string[]): Uint8Array => {
    const payload = new Uint8Array(4 + 16 * ids.length);
    new DataView(payload.buffer).setUint32(0, ids.length);
    ids.forEach((id, i) => payload.set(uuidToBytes(id), 4 + 16 * i));
    return brokerFrame({ type: FrameType.PEERS, final: true, payload });
  };
  // The answer to the session's question: the difference as events, no `peers` event (nobody asked).
  assert.deepEqual(session.receive(peersAnswer([B, D])), [
    { kind: "presence", peer: C, joined: false },
    { kind: "presence", peer: D, joined: true },
  ]);
  assert.deepEqual(session.peers, [B, D]);
  // Presence frames after the marker are complete again; the caller's answer matches: no difference.
  assert.deepEqual(session.receive(brokerFrame({ type: FrameType.PEER_JOINED, clientId: E, final: true })), [
    { kind: "presence", peer: E, joined: true },
  ]);
  assert.deepEqual(session.receive(peersAnswer([B, D, E])), [{ kind: "peers", peers: [B, D, E] }]);
  // Another notice this client does not know (≥ 0x0200, nil request id) is ignored, not fatal.
  assert.deepEqual(session.receive(brokerFrame({ type: FrameType.ERROR, final: true, payload: encodeError(0x0201, "?") })), []);
  assert.ok((session.receive(brokerFrame({ type: FrameType.PING, sequence: 3, final: true })), session.output.length === 1));
  assert.equal(session.tracked(), 0);
});

test("session: the resume secret, frames without flags or payloads, FINAL on every broker frame (U18)", () => {
  const secret = "5b5b5b5b-5b5b-5b5b-5b5b-5b5b5b5b5b5b";
  const session = new Session(CH, A);
  const [hello] = decodeAll([session.helloFrame(utf8.encode("tok"), secret)]);
  assert.ok(hello && hello.type === FrameType.HELLO && hello.flags === 0);
  assert.equal(hello.requestId, secret);
  assert.deepEqual(hello.payload, utf8.encode("tok"));
  assert.equal(decodeAll([new Session(CH).helloFrame(new Uint8Array(0))])[0]?.requestId, "00000000-0000-0000-0000-000000000000");
  // The WELCOME (FINAL, as the broker sends it) carries the secret in its request id field.
  const [welcome] = session.receive(
    brokerFrame({
      type: FrameType.WELCOME,
      clientId: A,
      requestId: secret,
      final: true,
      payload: encodeWelcome({ maxPayload: 1024, defaultTimeoutMs: 1000, maxTimeoutMs: 10_000, heartbeatMs: 0 }, []),
    }),
  );
  assert.ok(welcome?.kind === "welcome" && welcome.resume === secret);
  // Every broker-originated frame has FINAL set (§13.3): all accepted.
  const bid = session.startBroadcast(0);
  const rid = session.startRequest(0);
  const inbound = [
    brokerFrame({ type: FrameType.PEER_JOINED, clientId: B, final: true }),
    brokerFrame({ type: FrameType.PEER_LEFT, clientId: B, final: true }),
    brokerFrame({ type: FrameType.PING, sequence: 0, final: true }), // the half-close probe (§1)
    brokerFrame({ type: FrameType.PONG, sequence: 1, final: true }),
    brokerFrame({ type: FrameType.PEERS, final: true, payload: new Uint8Array(4) }),
    brokerFrame({ type: FrameType.ACK, flags: Flags.BROADCAST, requestId: bid, final: true, payload: new Uint8Array([0, 0, 0, 2]) }),
    brokerFrame({ type: FrameType.CANCEL, flags: Flags.RESPONSE, clientId: B, requestId: rid, final: true }),
    brokerFrame({ type: FrameType.ERROR, final: true, requestId: C, payload: encodeError(0x0106, "unknown") }),
  ];
  const events = inbound.flatMap((raw) => session.receive(raw));
  assert.ok(!events.some((e) => e.kind === "connection-failed"), JSON.stringify(events));
  assert.deepEqual(
    events.map((e) => e.kind),
    ["presence", "presence", "pong", "peers", "broadcast-done", "response-failed"],
  );
  // Frames we send: HELLO, PING, PONG, PEERS, RECEIVE without flags; PING, PONG, CANCEL, PEERS, a peer's ACK without payload.
  session.receive(
    brokerFrame({ type: FrameType.START, flags: Flags.REQUEST | Flags.BROADCAST, clientId: B, requestId: C, final: true, payload: utf8.encode("b") }),
  );
  const rid2 = session.startRequest(0);
  session.receive(brokerFrame({ type: FrameType.START, flags: Flags.REQUEST, clientId: B, requestId: B, payload: utf8.encode("x") }));
  const sent = decodeAll([
    ...session.output.splice(0), // the PONG
    session.pingFrame().frame,
    session.peersFrame(),
    session.receiveFrame(3),
    session.ackFrame(C) as Uint8Array,
    ...session.bodyFrames(rid2, utf8.encode("q"), false),
    session.cancelRequestFrame(rid2) as Uint8Array,
    session.cancelIncomingFrame(B) as Uint8Array,
  ]);
  const byType = (t: number): Frame[] => sent.filter((f) => f.type === t);
  for (const t of [FrameType.PING, FrameType.PONG, FrameType.PEERS, FrameType.RECEIVE]) {
    assert.equal(byType(t).length, 1, `one ${t}`);
    assert.equal(byType(t)[0]?.flags, 0, `no flags on ${t}`);
  }
  for (const t of [FrameType.PING, FrameType.PONG, FrameType.PEERS, FrameType.ACK, FrameType.CANCEL]) {
    assert.ok(byType(t).length >= 1, `a ${t} was sent`);
    for (const f of byType(t)) assert.equal(f.payload.length, 0, `no payload on ${t}`);
  }
  assert.equal(byType(FrameType.PONG)[0]?.sequence, 0);
  assert.equal(byType(FrameType.ACK)[0]?.flags, Flags.BROADCAST);
  assert.deepEqual(byType(FrameType.CANCEL).map((f) => f.flags), [Flags.REQUEST, Flags.RESPONSE]);
});
