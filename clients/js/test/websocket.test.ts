/**
 * The WebSocket transport against an in-process fake `WebSocket` (Node 20 has no global one and
 * the broker's WebSocket listener does not exist yet): frames split across binary messages and
 * several frames in one message decode; a text message is a ProtocolError; the browser entry
 * point refuses tcp:// URLs.
 */

import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { connect as browserConnect } from "../src/browser.js";
import { ConnectFailed, ProtocolError } from "../src/errors.js";
import { connect } from "../src/index.js";
import { Decoder, Flags, type Frame, FrameType, encodeFrame, encodeWelcome } from "../src/protocol.js";
import { randomUuid } from "../src/uuid.js";

type Listener = (ev: { data?: unknown; code?: number }) => void;

/** A minimal stand-in for the WHATWG WebSocket; `serve` plays the broker. */
class FakeWebSocket {
  static serve: (ws: FakeWebSocket, frame: Frame) => void = () => undefined;
  static last: FakeWebSocket | undefined;
  readonly OPEN = 1;
  readyState = 0;
  bufferedAmount = 0;
  binaryType = "blob";
  readonly sent: Frame[] = [];
  private readonly listeners = new Map<string, Listener[]>();
  private readonly decoder = new Decoder();

  constructor(readonly url: string) {
    FakeWebSocket.last = this;
    setImmediate(() => {
      this.readyState = 1;
      this.emit("open", {});
    });
  }

  addEventListener(type: string, fn: Listener): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), fn]);
  }

  emit(type: string, ev: { data?: unknown; code?: number }): void {
    for (const fn of this.listeners.get(type) ?? []) fn(ev);
  }

  send(data: Uint8Array): void {
    assert.equal(this.binaryType, "arraybuffer");
    this.decoder.feed(Uint8Array.from(data));
    for (let f = this.decoder.next(); f; f = this.decoder.next()) {
      this.sent.push(f);
      FakeWebSocket.serve(this, f);
    }
  }

  /** Delivers `bytes` to the client as binary messages cut at `cuts`. */
  deliver(bytes: Uint8Array, cuts: number[]): void {
    let from = 0;
    for (const to of [...cuts, bytes.length]) {
      const piece = bytes.slice(from, to);
      setImmediate(() => this.emit("message", { data: piece.buffer }));
      from = to;
    }
  }

  close(): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setImmediate(() => this.emit("close", { code: 1000 }));
  }
}

const g = globalThis as { WebSocket?: unknown };
const original = g.WebSocket;
afterEach(() => {
  g.WebSocket = original;
});

test("over WebSocket: frames split across messages, several frames per message (W01)", { timeout: 10_000 }, async () => {
  g.WebSocket = FakeWebSocket;
  FakeWebSocket.serve = (ws, frame) => {
    if (frame.type === FrameType.HELLO) {
      const limits = { maxPayload: 1 << 20, defaultTimeoutMs: 30_000, maxTimeoutMs: 3_600_000, heartbeatMs: 0 };
      const welcome = encodeFrame({ type: FrameType.WELCOME, clientId: randomUuid(), channelId: frame.channelId, payload: encodeWelcome(limits) });
      ws.deliver(welcome, [1, 40, 64, 70]); // the header and the payload both split
    } else if (frame.type === FrameType.START) {
      const base = { flags: Flags.RESPONSE, channelId: frame.channelId, requestId: frame.requestId };
      const reply = new Uint8Array([
        ...encodeFrame({ ...base, type: FrameType.START, payload: new TextEncoder().encode("po") }),
        ...encodeFrame({ ...base, type: FrameType.END, sequence: 1, final: true, payload: new TextEncoder().encode("ng") }),
      ]);
      ws.deliver(reply, [10, 100]); // one message ends mid-frame, the next holds the rest of two
    } else if (frame.type === FrameType.PING) {
      ws.deliver(encodeFrame({ type: FrameType.PONG, sequence: frame.sequence }), []);
    }
  };
  const c = await connect("ws://broker.test/switchyard", { channel: "orders" });
  assert.equal(FakeWebSocket.last?.url, "ws://broker.test/switchyard");
  assert.equal(new TextDecoder().decode(await c.request("ping", { timeoutMs: 1000 })), "pong");
  assert.ok((await c.ping()) >= 0);
  // A text message is a protocol violation: the client closes with ProtocolError.
  FakeWebSocket.last?.emit("message", { data: "hello" });
  await assert.rejects(c.ping(), ProtocolError);
  assert.equal(c.state, "closed");
});

test("the browser entry point refuses tcp:// (it has no node:net) (W02)", async () => {
  await assert.rejects(browserConnect("tcp://127.0.0.1:1", { channel: "orders" }), ConnectFailed);
});

test("no global WebSocket: ConnectFailed naming the requirement (W03)", async () => {
  g.WebSocket = undefined;
  await assert.rejects(connect("ws://127.0.0.1:1", { channel: "orders" }), (e: unknown) => e instanceof ConnectFailed && /WebSocket/.test(e.message));
});
