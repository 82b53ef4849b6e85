/**
 * Broker restarts (the reconnect rules) and fake brokers — `node:net` servers in the test — that
 * misbehave or need to be watched frame by frame: always a clear error, never a hang.
 */

import assert from "node:assert/strict";
import * as net from "node:net";
import { afterEach, test } from "node:test";

import {
  type Client,
  ConnectFailed,
  type ConnectOptions,
  ConnectionLost,
  GoingAway,
  LimitExceeded,
  NotASwitchyardBroker,
  ProtocolError,
  Reconnecting,
  SwitchyardError,
  Timeout,
  connect as rawConnect,
} from "../src/index.js";
import { Decoder, Flags, type Frame, FrameType, encodeError, encodeFrame, encodeWelcome } from "../src/protocol.js";
import { NIL_UUID, randomUuid } from "../src/uuid.js";
import { Broker, freshChannel, within } from "./broker.js";

const opened: Client[] = [];
const servers: net.Server[] = [];
const brokers: Broker[] = [];

async function connect(url: string, options: ConnectOptions): Promise<Client> {
  const client = await rawConnect(url, options);
  opened.push(client);
  return client;
}

afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.close()));
  for (const s of servers.splice(0)) s.close();
  await Promise.all(brokers.splice(0).map((b) => b.kill()));
});

const T = { timeout: 20_000 };

// ----- the real broker, restarted ---------------------------------------------------------------

test("reconnect across a broker restart on the same port: ConnectionLost, Reconnecting, same id, window re-issued (S13)", T, async () => {
  const channel = freshChannel();
  const first = await Broker.start();
  brokers.push(first);
  const policy = { initialDelayMs: 20, maxDelayMs: 200 };
  const c = await connect(first.url, { channel, reconnect: policy });
  const w = await connect(first.url, { channel, reconnect: policy });
  const id = c.clientId;
  w.setReceiveWindow(1);
  const inFlight = c.request("never answered", { timeoutMs: 30_000 });
  inFlight.catch(() => undefined);
  const held = await w.nextRequest({ timeoutMs: 5000 }); // assigned: truly in flight
  await first.kill();
  await assert.rejects(inFlight, ConnectionLost); // never retried: at-most-once
  assert.ok((await held.waitCancelled({ timeoutMs: 5000 })) instanceof ConnectionLost);
  await assert.rejects(c.request("while down", { timeoutMs: 1000 }), Reconnecting);
  assert.equal(c.state, "reconnecting");
  const second = await Broker.start([], first.addr);
  brokers.push(second);
  await c.waitConnected({ timeoutMs: 10_000 });
  await w.waitConnected({ timeoutMs: 10_000 });
  assert.equal(c.clientId, id);
  const serving = (async () => {
    for await (const req of w.requests()) await req.respond(`back:${await req.text()}`); // no new window: re-issued
  })();
  assert.equal(new TextDecoder().decode(await c.request("x", { timeoutMs: 5000 })), "back:x");
  await Promise.all([c.close(), w.close()]);
  await serving;
});

test("no reconnect when disabled: the client closes on the first loss (S14)", T, async () => {
  const b = await Broker.start();
  brokers.push(b);
  const c = await connect(b.url, { channel: "x", reconnect: false });
  const closed = within(
    c.waitConnected().then(async () => {
      for (;;) await c.ping({ timeoutMs: 1000 });
    }),
    5000,
  );
  closed.catch(() => undefined); // observed below, after the kill
  await b.kill();
  await assert.rejects(closed, ConnectionLost);
  assert.equal(c.state, "closed");
});

test("the first connect is not retried: nobody listening is ConnectFailed (S22)", T, async () => {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  await assert.rejects(rawConnect(`127.0.0.1:${port}`, { channel: "x" }), ConnectFailed);
});

// ----- fake brokers -----------------------------------------------------------------------------

/** One accepted connection of a fake broker, read frame by frame. */
class FakeConn {
  private readonly decoder = new Decoder();
  private readonly frames: Frame[] = [];
  private waiter: (() => void) | undefined;
  private ended = false;

  constructor(readonly socket: net.Socket) {
    socket.on("data", (d: Buffer) => {
      this.decoder.feed(new Uint8Array(d));
      for (let f = this.decoder.next(); f; f = this.decoder.next()) this.frames.push(f);
      this.waiter?.();
    });
    socket.on("close", () => {
      this.ended = true;
      this.waiter?.();
    });
    socket.on("error", () => undefined);
  }

  /** The next frame the client sent; rejects when the client closed first. */
  async next(): Promise<Frame> {
    for (;;) {
      const f = this.frames.shift();
      if (f) return f;
      if (this.ended) throw new Error("the client closed");
      await new Promise<void>((r) => (this.waiter = r));
    }
  }

  /** Reads the HELLO and answers WELCOME with `heartbeatMs`; returns the HELLO. */
  async welcome(heartbeatMs = 0): Promise<Frame> {
    const hello = await this.next();
    assert.equal(hello.type, FrameType.HELLO);
    const limits = { maxPayload: 1 << 20, defaultTimeoutMs: 30_000, maxTimeoutMs: 3_600_000, heartbeatMs };
    const clientId = hello.clientId === NIL_UUID ? randomUuid() : hello.clientId; // a reconnect keeps its id
    this.socket.write(encodeFrame({ type: FrameType.WELCOME, clientId, channelId: hello.channelId, payload: encodeWelcome(limits) }));
    return hello;
  }
}

/** A `node:net` server whose connections `handler` drives; resolves with its `host:port`. */
async function fakeBroker(handler: (conn: FakeConn) => Promise<void>): Promise<string> {
  const server = net.createServer((socket) => {
    handler(new FakeConn(socket)).catch(() => socket.destroy());
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

test("an HTTP server is not a broker (S15)", T, async () => {
  const addr = await fakeBroker(async (conn) => {
    await conn.next().catch(() => undefined);
    conn.socket.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  await assert.rejects(rawConnect(addr, { channel: "orders" }), (e: unknown) => e instanceof NotASwitchyardBroker && /does not speak/.test(e.message));
});

test("a silent server times out the connect, naming the likely cause (S16)", T, async () => {
  const addr = await fakeBroker(async () => undefined); // accepts, never answers
  await assert.rejects(
    rawConnect(addr, { channel: "orders", connectTimeoutMs: 300 }),
    (e: unknown) => e instanceof Timeout && /switchyard broker/.test(e.message),
  );
});

const garbage: [string, Uint8Array][] = [
  ["a bad version", new Uint8Array(64).fill(7)],
  ["an unknown frame type", Uint8Array.from([1, 0x42, ...new Uint8Array(62)])],
  ["undefined flags", Uint8Array.from([1, FrameType.START, 0x80, 0, ...new Uint8Array(60)])],
  ["a payload_len over the limit", Uint8Array.from([1, FrameType.START, 0, 1, ...new Uint8Array(56), 0xff, 0xff, 0xff, 0xff])],
];

for (const [what, bytes] of garbage) {
  test(`garbage after the WELCOME (${what}): ProtocolError, closed, no reconnect (S17)`, T, async () => {
    const addr = await fakeBroker(async (conn) => {
      await conn.welcome();
      await conn.next(); // the request's START
      conn.socket.write(bytes);
    });
    const c = await connect(addr, { channel: "orders" });
    await assert.rejects(within(c.request("ping", { timeoutMs: 30_000 }), 5000), ProtocolError);
    assert.equal(c.state, "closed");
    await assert.rejects(c.ping(), ProtocolError);
  });
}

test("a truncated frame, then close, during the handshake (S18)", T, async () => {
  const addr = await fakeBroker(async (conn) => {
    const hello = await conn.next();
    const welcome = encodeFrame({ type: FrameType.WELCOME, clientId: randomUuid(), channelId: hello.channelId, payload: encodeWelcome({ maxPayload: 1 << 20, defaultTimeoutMs: 1, maxTimeoutMs: 1, heartbeatMs: 0 }) });
    conn.socket.end(welcome.subarray(0, 30));
  });
  await assert.rejects(within(rawConnect(addr, { channel: "orders" }), 5000), (e: unknown) => e instanceof NotASwitchyardBroker || e instanceof ConnectFailed);
});

test("PING is answered with PONG echoing its sequence; ping() measures a round trip (S19)", T, async () => {
  let pong: Frame | undefined;
  const addr = await fakeBroker(async (conn) => {
    await conn.welcome();
    conn.socket.write(encodeFrame({ type: FrameType.PING, sequence: 41 }));
    pong = await conn.next();
    const ping = await conn.next();
    assert.equal(ping.type, FrameType.PING);
    conn.socket.write(encodeFrame({ type: FrameType.PONG, sequence: ping.sequence }));
  });
  const c = await connect(addr, { channel: "orders" });
  assert.ok((await c.ping({ timeoutMs: 5000 })) >= 0); // answered after our PONG: it was sent first
  assert.equal(pong?.type, FrameType.PONG);
  assert.equal(pong?.sequence, 41);
});

test("the local deadline ends a request the broker never answers, and sends CANCEL (S06)", T, async () => {
  let cancel: Frame | undefined;
  let start: Frame | undefined;
  const addr = await fakeBroker(async (conn) => {
    await conn.welcome();
    start = await conn.next();
    cancel = await conn.next();
  });
  const c = await connect(addr, { channel: "orders", deadlineGraceMs: 50 });
  const started = Date.now();
  await assert.rejects(c.request("x", { timeoutMs: 100 }), Timeout);
  assert.ok(Date.now() - started >= 140);
  await c.ping({ timeoutMs: 50 }).catch(() => undefined); // the CANCEL went out before this PING
  await within((async () => { while (!cancel) await new Promise((r) => setImmediate(r)); })(), 2000, "CANCEL");
  assert.equal(cancel?.type, FrameType.CANCEL);
  assert.equal(cancel?.flags, Flags.REQUEST);
  assert.equal(cancel?.requestId, start?.requestId);
  assert.equal(start?.timeoutMs, 100);
});

test("GOING_AWAY: new operations fail with GoingAway; the close is a ConnectionLost and the client reconnects (S21)", T, async () => {
  let connections = 0;
  let reconnected: () => void = () => undefined;
  const secondHello = new Promise<void>((r) => (reconnected = r));
  const addr = await fakeBroker(async (conn) => {
    connections++;
    await conn.welcome();
    if (connections === 1) {
      const ping = await conn.next();
      conn.socket.write(encodeFrame({ type: FrameType.ERROR, final: true, payload: encodeError(0x000a, "draining") }));
      conn.socket.end(encodeFrame({ type: FrameType.PONG, sequence: ping.sequence })); // then the close
    } else {
      reconnected();
      for (;;) {
        const ping = await conn.next();
        conn.socket.write(encodeFrame({ type: FrameType.PONG, sequence: ping.sequence }));
      }
    }
  });
  const c = await connect(addr, { channel: "orders", reconnect: { initialDelayMs: 10 } });
  const id = c.clientId;
  await c.ping({ timeoutMs: 5000 }); // the GOING_AWAY came just before the PONG
  await assert.rejects(c.request("x", { timeoutMs: 1000 }), GoingAway);
  await assert.rejects(c.broadcast("x", { timeoutMs: 1000 }), GoingAway);
  await within(secondHello, 5000, "the reconnect");
  await c.waitConnected({ timeoutMs: 5000 });
  assert.ok((await c.ping({ timeoutMs: 1000 })) >= 0);
  assert.equal(c.clientId, id);
});

test("a broker that stops answering heartbeats is given up, and the client reconnects (S20)", T, async () => {
  let connections = 0;
  const addr = await fakeBroker(async (conn) => {
    connections++;
    await conn.welcome(connections === 1 ? 30 : 0); // the first one is silent: never a PONG
    if (connections > 1) {
      for (;;) {
        const ping = await conn.next();
        conn.socket.write(encodeFrame({ type: FrameType.PONG, sequence: ping.sequence }));
      }
    }
  });
  const c = await connect(addr, { channel: "orders", heartbeatMisses: 2, reconnect: { initialDelayMs: 10 } });
  const id = c.clientId;
  const pending = c.request("x", { timeoutMs: 10_000 });
  await assert.rejects(within(pending, 5000), ConnectionLost);
  await c.waitConnected({ timeoutMs: 5000 });
  assert.ok((await c.ping({ timeoutMs: 1000 })) >= 0);
  assert.equal(connections, 2);
  assert.equal(c.clientId, id);
});

// ----- the real broker, at its limits and draining ----------------------------------------------

test("LIMIT_EXCEEDED: per request (the channel's waiting queue) and at connect (the connection limit) (S23)", T, async () => {
  const b = await Broker.start(["--max-waiting-per-channel", "1", "--max-connections", "2", "--max-connections-per-ip", "2"]);
  brokers.push(b);
  const channel = freshChannel();
  const c = await connect(b.url, { channel });
  const waiting = c.request("first", { timeoutMs: 2000 }); // waits: no receiver
  waiting.catch(() => undefined);
  await assert.rejects(c.request("second", { timeoutMs: 2000 }), LimitExceeded);
  assert.ok((await c.ping()) >= 0, "the connection stays open");
  const w = await connect(b.url, { channel });
  await assert.rejects(rawConnect(b.url, { channel }), LimitExceeded); // the third connection: not retried
  const serving = (async () => {
    for await (const req of w.requests({ window: 1 })) await req.respond(await req.body());
  })();
  assert.equal(new TextDecoder().decode(await waiting), "first");
  await w.close();
  await serving;
});

test("SIGTERM drain: GOING_AWAY reaches the client, new requests fail with GoingAway, the held one completes (S24)", T, async () => {
  const b = await Broker.start(["--drain-deadline-ms", "5000"]);
  brokers.push(b);
  const channel = freshChannel();
  const c = await connect(b.url, { channel, reconnect: false });
  const w = await connect(b.url, { channel, reconnect: false });
  w.setReceiveWindow(1);
  const pending = c.request("in flight", { timeoutMs: 10_000 });
  const held = await w.nextRequest({ timeoutMs: 5000 });
  const stopping = b.stop();
  await within((async () => {
    for (;;) {
      try {
        await c.ping({ timeoutMs: 1000 }); // a real round trip each time, until the GOING_AWAY is in
      } catch (e) {
        if (e instanceof GoingAway) return;
        throw e;
      }
    }
  })(), 5000, "GOING_AWAY");
  await assert.rejects(c.request("new", { timeoutMs: 1000 }), GoingAway);
  await held.respond(`done:${await held.text()}`);
  assert.equal(new TextDecoder().decode(await pending), "done:in flight");
  await within(stopping, 8000, "the broker's exit");
});
