/**
 * Scenarios against the real broker binary over TCP: sizes, streaming, concurrency, timeouts,
 * cancel and abort, broadcast, presence, auth, takeover, close. Synchronisation is by events
 * with deadlines, never by sleeps.
 */

import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";

import {
  BroadcastIncomplete,
  Cancelled,
  type Client,
  ClientIdInUse,
  Closed,
  ConnectionLost,
  NoPeers,
  NoReceiver,
  Reconnecting,
  Replaced,
  Timeout,
  Unauthorized,
  type ConnectOptions,
  connect as rawConnect,
} from "../src/index.js";
import { Broker, Relay, freshChannel, randomBytes, reversed, within } from "./broker.js";

let broker: Broker;
let tokenBroker: Broker;

before(async () => {
  [broker, tokenBroker] = await Promise.all([
    Broker.start(["--presence-grace-ms", "1000"]),
    Broker.start(["--auth-token", "s3cret"]),
  ]);
});

/** Every client a test opened; closed after each test, even a failed one (no reconnect loop may outlive it). */
const opened: Client[] = [];

async function connect(url: string, options: ConnectOptions): Promise<Client> {
  const client = await rawConnect(url, options);
  opened.push(client);
  return client;
}

afterEach(async () => {
  await Promise.all(opened.splice(0).map((c) => c.close()));
});

after(async () => {
  await Promise.all([broker?.stop(), tokenBroker?.stop()]);
});

/** Answers every request with its body reversed, until the client closes. */
async function echoWorker(client: Client, window = 4): Promise<void> {
  for await (const req of client.requests({ window })) {
    const body = await req.body();
    await req.respond(reversed(body));
  }
}

/** Connects `n` clients to `channel` on the shared broker. */
function clients(n: number, channel: string): Promise<Client[]> {
  return Promise.all(Array.from({ length: n }, () => connect(broker.url, { channel })));
}

const T = { timeout: 30_000 };

test("sizes 0 .. 3 × max_payload + 5 round-trip byte-exact (S01)", T, async () => {
  const channel = freshChannel();
  const [w, c] = (await clients(2, channel)) as [Client, Client];
  const worker = echoWorker(w);
  const mp = c.limits.maxPayload;
  for (const size of [0, 1, 1024, mp - 1, mp, mp + 1, 3 * mp + 5]) {
    const data = randomBytes(size);
    assert.deepEqual(await c.request(data, { timeoutMs: 10_000 }), reversed(data), `size ${size}`);
  }
  assert.equal(new TextDecoder().decode(await c.request("olleh", { timeoutMs: 5000 })), "hello");
  await Promise.all([c.close(), w.close()]);
  await worker; // the iteration ends with the close
});

test("several MiB streamed both ways, byte-exact, from AsyncIterable and ReadableStream (S02)", T, async () => {
  const channel = freshChannel();
  const [w, c] = (await clients(2, channel)) as [Client, Client];
  const data = randomBytes(6 * 1024 * 1024 + 17);
  const piece = 256 * 1024;
  async function* chunks(): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < data.length; i += piece) yield data.subarray(i, i + piece);
  }
  w.setReceiveWindow(1);
  const streamer = (async () => {
    for (let round = 0; round < 2; round++) {
      const req = await w.nextRequest({ timeoutMs: 10_000 });
      const received: Uint8Array[] = [];
      for await (const chunk of req) received.push(chunk);
      assert.ok(received.length > 1, "the request arrived in several chunks");
      const got = Buffer.concat(received);
      assert.ok(got.equals(data));
      await req.respondStream((function* () {
        for (let i = 0; i < got.length; i += 100_000) yield got.subarray(i, i + 100_000);
      })());
    }
  })();
  const response = await c.requestStream(chunks(), { timeoutMs: 20_000 });
  const parts: Uint8Array[] = [];
  for await (const part of response) parts.push(part);
  assert.ok(parts.length > 1);
  assert.ok(Buffer.concat(parts).equals(data));
  assert.equal(response.responder, w.clientId);
  let offset = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offset >= data.length) return controller.close();
      controller.enqueue(data.subarray(offset, offset + piece));
      offset += piece;
    },
  });
  const whole = await c.request(stream, { timeoutMs: 20_000 });
  assert.ok(Buffer.from(whole).equals(data));
  await streamer;
  await Promise.all([c.close(), w.close()]);
});

test("8 senders × 8 receivers interleaved, byte-exact, load spread (S03)", T, async () => {
  const channel = freshChannel();
  const receivers = await clients(8, channel);
  const senders = await clients(8, channel);
  const served = new Map(receivers.map((r) => [r.clientId, 0]));
  const serving = receivers.map(async (r) => {
    for await (const req of r.requests({ window: 4 })) {
      const data = await req.body();
      served.set(r.clientId, (served.get(r.clientId) ?? 0) + 1);
      await req.respond(Buffer.concat([Buffer.from(r.clientId), reversed(data)]));
    }
  });
  await Promise.all(
    senders.map(async (c, i) => {
      for (let j = 0; j < 40; j++) {
        const data = Buffer.concat([Buffer.from(`${i}:${j}:`), randomBytes(j * 997)]);
        const reply = Buffer.from(await c.request(data, { timeoutMs: 10_000 }));
        assert.ok(served.has(reply.subarray(0, 36).toString()));
        assert.ok(reply.subarray(36).equals(reversed(data)));
      }
    }),
  );
  const counts = [...served.values()];
  assert.equal(counts.reduce((a, b) => a + b, 0), 8 * 40);
  assert.ok(counts.filter((n) => n > 0).length > 1, "load was spread");
  await Promise.all([...receivers, ...senders].map((c) => c.close()));
  await Promise.all(serving);
});

test("NO_RECEIVER: after the timeout, and at once with noWait (S04)", T, async () => {
  const c = await connect(broker.url, { channel: freshChannel() });
  const started = Date.now();
  await assert.rejects(c.request("x", { timeoutMs: 200 }), NoReceiver);
  assert.ok(Date.now() - started < 2000);
  await assert.rejects(c.request("x", { timeoutMs: 5000, noWait: true }), NoReceiver);
  await c.close();
});

test("TIMEOUT: the sender gets Timeout, the receiver a CANCEL (S05)", T, async () => {
  const [w, c] = (await clients(2, freshChannel())) as [Client, Client];
  w.setReceiveWindow(1);
  const pending = c.request("slow", { timeoutMs: 300 });
  pending.catch(() => undefined);
  const req = await w.nextRequest({ timeoutMs: 5000 });
  assert.equal(await req.text(), "slow");
  assert.ok(req.timeoutMs > 0 && req.timeoutMs <= 300);
  await assert.rejects(pending, Timeout);
  assert.ok((await req.waitCancelled({ timeoutMs: 5000 })) instanceof Cancelled);
  assert.ok(req.signal.aborted);
  await assert.rejects(req.respond("too late"), Cancelled);
  await Promise.all([c.close(), w.close()]);
});

test("abort ⇒ the receiver sees CANCEL; the receiver's cancel ⇒ the sender gets Cancelled (S07)", T, async () => {
  const [w, c] = (await clients(2, freshChannel())) as [Client, Client];
  w.setReceiveWindow(2);
  const controller = new AbortController();
  const aborted = c.request("a", { timeoutMs: 10_000, signal: controller.signal });
  const held = await w.nextRequest({ timeoutMs: 5000 });
  controller.abort(new Error("user gave up"));
  await assert.rejects(aborted, (e: unknown) => e instanceof Cancelled && (e.cause as Error).message === "user gave up");
  assert.ok((await held.waitCancelled({ timeoutMs: 5000 })) instanceof Cancelled);
  // Already aborted: nothing is sent.
  await assert.rejects(c.request("z", { signal: AbortSignal.abort() }), Cancelled);
  // Leaving a response iteration early cancels too.
  const response = await c.requestStream("b", { timeoutMs: 10_000 });
  const second = await w.nextRequest({ timeoutMs: 5000 });
  const responding = second.respondStream((async function* () {
    yield new Uint8Array([1]);
    await second.waitCancelled({ timeoutMs: 5000 }); // keep the response open until the CANCEL
  })());
  for await (const chunk of response) {
    assert.deepEqual(chunk, new Uint8Array([1]));
    break;
  }
  assert.ok((await second.waitCancelled({ timeoutMs: 5000 })) instanceof Cancelled);
  await assert.rejects(responding, Cancelled); // the stream stops: nothing more goes out
  // The receiver gives up: the sender gets Cancelled.
  const pending = c.request("c", { timeoutMs: 10_000 });
  const third = await w.nextRequest({ timeoutMs: 5000 });
  third.cancel();
  await assert.rejects(pending, Cancelled);
  // And the connection is fine afterwards.
  const worker = echoWorker(w);
  assert.equal(new TextDecoder().decode(await c.request("ko", { timeoutMs: 5000 })), "ok");
  await Promise.all([c.close(), w.close()]);
  await worker;
});

test("broadcast: NoPeers, acks from every peer (split bodies too), partial failure (S08)", T, async () => {
  const channel = freshChannel();
  const sender = await connect(broker.url, { channel });
  await assert.rejects(sender.broadcast("anyone?", { timeoutMs: 1000 }), NoPeers);
  const peers = await clients(3, channel);
  const got: string[] = [];
  const consuming = peers.map(async (p) => {
    for await (const msg of p.broadcasts()) {
      assert.equal(msg.sender, sender.clientId);
      got.push(msg.body.length > 100 ? `big:${msg.body.length}` : msg.text());
    }
  });
  assert.equal(await sender.broadcast("hello all", { timeoutMs: 5000 }), 3);
  assert.deepEqual(got, ["hello all", "hello all", "hello all"]);
  const big = randomBytes(sender.limits.maxPayload * 2 + 3);
  assert.equal(await sender.broadcast(big, { timeoutMs: 5000 }), 3);
  // A fourth peer that never takes its broadcasts: it does not ack.
  const silent = await connect(broker.url, { channel });
  await assert.rejects(
    sender.broadcast("partial", { timeoutMs: 500 }),
    (e: unknown) => e instanceof BroadcastIncomplete && e.missing.length === 1 && e.missing[0] === silent.clientId,
  );
  await Promise.all([...peers, silent, sender].map((c) => c.close()));
  await Promise.all(consuming);
});

test("presence: joins, leaves after the grace period, an invisible reconnect (S09)", T, async () => {
  const channel = freshChannel();
  const a = await connect(broker.url, { channel });
  const b = await connect(broker.url, { channel });
  assert.deepEqual(await a.nextPresence({ timeoutMs: 5000 }), { peer: b.clientId, joined: true });
  assert.deepEqual(a.knownPeers, [b.clientId]);
  assert.deepEqual(await a.peers(), [b.clientId]);
  assert.deepEqual(await b.peers(), [a.clientId]);
  await b.close();
  const closedAt = Date.now();
  assert.deepEqual(await a.peers(), [b.clientId]); // still listed during the grace period
  assert.deepEqual(await a.nextPresence({ timeoutMs: 5000 }), { peer: b.clientId, joined: false });
  assert.ok(Date.now() - closedAt >= 800, "PEER_LEFT after the 1 s grace period");
  assert.deepEqual(await a.peers(), []);
  assert.deepEqual(a.knownPeers, []);
  // A reconnect within the grace period under the same client id is invisible to the others.
  const b2 = await connect(broker.url, { channel, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
  assert.equal((await a.nextPresence({ timeoutMs: 5000 })).joined, true);
  const id = b2.clientId;
  // Fault injection (as the Python test): drop b2's link from the inside.
  (b2 as unknown as { link: { fail(e: Error): void } }).link.fail(new ConnectionLost("injected drop"));
  assert.equal(b2.state, "reconnecting");
  await assert.rejects(b2.ping(), Reconnecting);
  await b2.waitConnected({ timeoutMs: 5000 });
  assert.equal(b2.clientId, id);
  assert.deepEqual(await a.peers(), [id]);
  await assert.rejects(a.nextPresence({ timeoutMs: 1300 }), Timeout); // no PEER_LEFT / PEER_JOINED
  assert.ok((await a.ping()) >= 0);
  const watching = (async () => {
    const seen: string[] = [];
    for await (const ev of a.presence()) seen.push(`${ev.joined ? "+" : "-"}${ev.peer}`);
    return seen;
  })();
  await b2.close();
  await a.close();
  assert.deepEqual(await watching, []); // the iteration ends with the close
});

test("a link cut under the client (relay) resumes the same id within the grace period; peers see nothing (S26)", T, async () => {
  const channel = freshChannel();
  const relay = await Relay.start(broker.addr);
  try {
    const a = await connect(broker.url, { channel });
    const b = await connect(relay.url, { channel, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
    const id = b.clientId;
    const secret = Uint8Array.from(b.resumeSecret);
    assert.deepEqual(await a.nextPresence({ timeoutMs: 5000 }), { peer: id, joined: true });
    void echoWorker(b, 1).catch(() => undefined);
    assert.equal(new TextDecoder().decode(await a.request("abc", { timeoutMs: 5000 })), "cba");
    relay.cut(); // the broker sees b's connection close: its grace period starts
    await within(relay.accepted(2), 5000, "the reconnect through the relay");
    await b.waitConnected({ timeoutMs: 5000 });
    assert.equal(b.state, "connected");
    assert.equal(b.clientId, id); // resumed with the first WELCOME's secret, not CLIENT_ID_IN_USE
    assert.deepEqual(b.resumeSecret, secret);
    assert.deepEqual(await a.peers(), [id]);
    // The receive window was re-issued: a's request reaches b over its new link.
    assert.equal(new TextDecoder().decode(await a.request("xyz", { timeoutMs: 5000 })), "zyx");
    // No PEER_LEFT (nor a second PEER_JOINED) once the 1 s grace period is over.
    await assert.rejects(a.nextPresence({ timeoutMs: 1500 }), Timeout);
    assert.deepEqual(a.knownPeers, [id]);
  } finally {
    await relay.close();
  }
});

test("unauthorized: no token, a wrong one; the right one connects (S10)", T, async () => {
  const channel = freshChannel();
  await assert.rejects(connect(tokenBroker.url, { channel }), Unauthorized);
  await assert.rejects(connect(tokenBroker.url, { channel, token: "wrong" }), Unauthorized);
  const c = await connect(tokenBroker.url, { channel, token: "s3cret" });
  assert.ok((await c.ping()) >= 0);
  await c.close();
});

test("takeover: the old connection gets Replaced and does not reconnect (S11)", T, async () => {
  const channel = freshChannel();
  const first = await connect(broker.url, { channel });
  // Without the id's resume secret: refused (not retried), and the first client is undisturbed.
  await assert.rejects(connect(broker.url, { channel, clientId: first.clientId, reconnect: false }), ClientIdInUse);
  assert.ok((await first.ping()) >= 0);
  assert.equal(first.resumeSecret.length, 16);
  await assert.rejects(connect(broker.url, { channel, clientId: first.clientId, resumeSecret: new Uint8Array(16).fill(7) }), ClientIdInUse);
  await assert.rejects(connect(broker.url, { channel, resumeSecret: new Uint8Array(3) }), TypeError);
  const second = await connect(broker.url, { channel, clientId: first.clientId, resumeSecret: first.resumeSecret });
  await within(first.waitConnected().then(
    async () => {
      for (;;) await first.ping({ timeoutMs: 1000 }); // the REPLACED arrives asynchronously
    },
  ).catch((e: unknown) => assert.ok(e instanceof Replaced, String(e))), 5000);
  assert.equal(first.state, "closed");
  await assert.rejects(first.waitConnected(), Replaced);
  assert.ok((await second.ping()) >= 0);
  await second.close();
});

test("a closed client: iterations end, calls reject with Closed, close is idempotent (S12)", T, async () => {
  const c = await connect(broker.url, { channel: freshChannel() });
  const loop = (async () => {
    for await (const req of c.requests({ window: 1 })) req.cancel();
    return "ended";
  })();
  await c.close();
  assert.equal(await within(loop, 5000), "ended");
  await assert.rejects(c.request("x"), Closed);
  await assert.rejects(c.broadcast("x"), Closed);
  assert.equal(c.state, "closed");
  await c.close();
});

test("an early response: the receiver answers before the request body is complete; the sender stops sending (S25)", T, async () => {
  const [w, c] = (await clients(2, freshChannel())) as [Client, Client];
  w.setReceiveWindow(1);
  let produced = 0;
  let sourceClosed: () => void = () => undefined;
  const closed = new Promise<void>((r) => (sourceClosed = r));
  let answered: () => void = () => undefined;
  const answeredP = new Promise<void>((r) => (answered = r));
  async function* endless(): AsyncGenerator<Uint8Array> {
    try {
      for (;;) {
        produced++;
        yield new Uint8Array(1000).fill(produced & 0xff);
        if (produced === 3) await answeredP; // more only once the answer is in
      }
    } finally {
      sourceClosed(); // the client stopped reading the source
    }
  }
  const response = await c.requestStream(endless(), { timeoutMs: 10_000 });
  const req = await w.nextRequest({ timeoutMs: 5000 });
  const first = await req[Symbol.asyncIterator]().next();
  assert.equal(first.done, false);
  await req.respond("enough");
  assert.equal(await response.text(), "enough");
  answered();
  await within(closed, 5000, "the source's close");
  assert.ok(produced <= 4, `produced ${produced} chunks`);
  assert.ok((await c.ping()) >= 0);
});
