"""Scenarios against the real broker: sizes, concurrency, timeouts, cancel, broadcast, presence,
auth, takeover, the blocking front. Synchronisation is by events with deadlines, never sleeps."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import AsyncIterator, List

import pytest

import switchyard
from switchyard import blocking

from conftest import Broker, run


async def echo_worker(client: switchyard.Client, window: int = 4) -> None:
    """Answers every request with its body reversed."""
    async for req in client.requests(window=window):
        body = await req.body()
        await req.respond(body[::-1])


def test_sizes_round_trip(broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        async with await switchyard.connect(broker.url, channel=channel) as w, \
                await switchyard.connect(broker.url, channel=channel) as c:
            task = asyncio.create_task(echo_worker(w))
            mp = c.limits.max_payload
            for size in (0, 1, 1024, mp, mp + 1, 3 * mp + 5):
                data = os.urandom(size)
                assert await c.request(data, timeout=10) == data[::-1], size
            task.cancel()

    run(body)


def test_streamed_several_mib(broker: Broker, channel: uuid.UUID) -> None:
    data = os.urandom(6 * 1024 * 1024 + 17)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 256 * 1024):
            yield data[i : i + 256 * 1024]

    async def body() -> None:
        async with await switchyard.connect(broker.url, channel=channel) as w, \
                await switchyard.connect(broker.url, channel=channel) as c:

            async def streamer() -> None:
                req = await w.next_request()
                received = [chunk async for chunk in req]
                got = b"".join(received)
                assert got == data and len(received) > 1
                await req.respond_stream(got[i : i + 100_000] for i in range(0, len(got), 100_000))

            await w.set_receive_window(1)
            task = asyncio.create_task(streamer())
            response = await c.request_stream(chunks(), timeout=15)
            parts = [part async for part in response]
            assert b"".join(parts) == data and len(parts) > 1
            assert response.responder == w.client_id
            await task

    run(body, 30)


def test_sixteen_by_sixteen_interleaved(broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        receivers = [await switchyard.connect(broker.url, channel=channel) for _ in range(16)]
        senders = [await switchyard.connect(broker.url, channel=channel) for _ in range(16)]
        served = {r.client_id: 0 for r in receivers}

        async def serve(r: switchyard.Client) -> None:
            async for req in r.requests(window=4):
                data = await req.body()
                served[r.client_id] += 1
                await req.respond(r.client_id.bytes + data[::-1])

        async def send(i: int, c: switchyard.Client) -> None:
            for j in range(50):
                data = f"{i}:{j}:".encode() + os.urandom(j * 37)
                reply = await c.request(data, timeout=10)
                assert uuid.UUID(bytes=reply[:16]) in served
                assert reply[16:] == data[::-1]

        tasks = [asyncio.create_task(serve(r)) for r in receivers]
        await asyncio.gather(*(send(i, c) for i, c in enumerate(senders)))
        assert sum(served.values()) == 16 * 50
        assert sum(1 for n in served.values() if n) > 1  # load was spread
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(c.close() for c in receivers + senders))

    run(body, 40)


def test_no_receiver(broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        async with await switchyard.connect(broker.url, channel=channel) as c:
            started = time.monotonic()
            with pytest.raises(switchyard.NoReceiver):
                await c.request(b"x", timeout=0.2)
            assert time.monotonic() - started < 2
            with pytest.raises(switchyard.NoReceiver):
                await c.request(b"x", timeout=5, no_wait=True)

    run(body)


def test_timeout_cancels_receiver(broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        async with await switchyard.connect(broker.url, channel=channel) as w, \
                await switchyard.connect(broker.url, channel=channel) as c:
            await w.set_receive_window(1)
            pending = asyncio.create_task(c.request(b"slow", timeout=0.3))
            req = await w.next_request(timeout=5)
            assert await req.body() == b"slow" and 0 < req.timeout <= 0.3
            with pytest.raises(switchyard.Timeout):
                await pending
            reason = await req.wait_cancelled(timeout=5)
            assert isinstance(reason, switchyard.Cancelled)
            with pytest.raises(switchyard.Cancelled):
                await req.respond(b"too late")

    run(body)


def test_sender_abandon_and_receiver_cancel(broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        async with await switchyard.connect(broker.url, channel=channel) as w, \
                await switchyard.connect(broker.url, channel=channel) as c:
            await w.set_receive_window(2)
            # The sender's task is cancelled: the receiver gets CANCEL.
            pending = asyncio.create_task(c.request(b"a", timeout=10))
            req = await w.next_request(timeout=5)
            pending.cancel()
            assert isinstance(await req.wait_cancelled(timeout=5), switchyard.Cancelled)
            # The receiver gives up: the sender gets Cancelled.
            pending = asyncio.create_task(c.request(b"b", timeout=10))
            req = await w.next_request(timeout=5)
            await req.cancel()
            with pytest.raises(switchyard.Cancelled):
                await pending
            # And the connection is fine afterwards.
            task = asyncio.create_task(echo_worker(w))
            assert await c.request(b"ok", timeout=5) == b"ko"
            task.cancel()

    run(body)


def test_broadcast_acks_and_partial_failure(broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        async with await switchyard.connect(broker.url, channel=channel) as sender:
            with pytest.raises(switchyard.NoPeers):
                await sender.broadcast(b"anyone?", timeout=1)
            peers = [await switchyard.connect(broker.url, channel=channel) for _ in range(3)]
            got: List[bytes] = []

            async def consume(p: switchyard.Client) -> None:
                async for msg in p.broadcasts():
                    assert msg.sender == sender.client_id
                    got.append(msg.body)

            tasks = [asyncio.create_task(consume(p)) for p in peers]
            assert await sender.broadcast(b"hello all", timeout=5) == 3
            assert got == [b"hello all"] * 3
            big = os.urandom(sender.limits.max_payload * 2 + 3)
            assert await sender.broadcast(big, timeout=5) == 3
            # A fourth peer that never takes its broadcasts: it does not ack.
            silent = await switchyard.connect(broker.url, channel=channel)
            with pytest.raises(switchyard.BroadcastIncomplete) as info:
                await sender.broadcast(b"partial", timeout=0.5)
            assert info.value.missing == [silent.client_id]
            for t in tasks:
                t.cancel()
            for p in peers + [silent]:
                await p.close()

    run(body)


def test_presence_with_grace_period(broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        async with await switchyard.connect(broker.url, channel=channel) as a:
            b = await switchyard.connect(broker.url, channel=channel)
            ev = await a.next_presence(timeout=5)
            assert ev == switchyard.PresenceEvent(b.client_id, True)
            assert a.known_peers == [b.client_id] and await a.peers() == [b.client_id]
            assert await b.peers() == [a.client_id]
            await b.close()
            closed_at = time.monotonic()
            assert await a.peers() == [b.client_id]  # still listed during the grace period
            ev = await a.next_presence(timeout=5)
            assert ev == switchyard.PresenceEvent(b.client_id, False)
            assert time.monotonic() - closed_at >= 0.8  # after the 1 s grace period
            assert await a.peers() == [] and a.known_peers == []
            # A reconnect within the grace period (same client id) is invisible.
            b2 = await switchyard.connect(broker.url, channel=channel)
            assert (await a.next_presence(timeout=5)).joined
            b2_id = b2.client_id
            assert b2._link is not None
            b2._link.fail(switchyard.ConnectionLost("injected drop"))  # fault injection
            assert b2.state is switchyard.ConnectionState.RECONNECTING
            await b2.wait_connected(timeout=5)
            assert b2.client_id == b2_id
            assert await a.peers() == [b2.client_id]
            with pytest.raises(switchyard.Timeout):
                await a.next_presence(timeout=1.3)
            assert await a.ping() > 0
            await b2.close()

    run(body)


class Relay:
    """A TCP relay in front of the broker whose connections the test can cut (both sides closed
    at once, as a dropped link): the broker sees its client's connection close, the client sees
    the broker's. :meth:`accepted` waits for the n-th accepted connection."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._writers: List[asyncio.StreamWriter] = []
        self._count = 0
        self._changed = asyncio.Event()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"tcp://{host}:{port}"

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self._target)
        self._writers += [cw, uw]
        self._count += 1
        self._changed.set()

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for writer in (cw, uw):
                    writer.close()

        await asyncio.gather(pipe(cr, uw), pipe(ur, cw))

    async def accepted(self, n: int) -> None:
        while self._count < n:
            self._changed.clear()
            await self._changed.wait()

    def cut(self) -> None:
        """Closes every relayed connection (both sides, with a reset); keeps listening."""
        for writer in self._writers:
            transport = writer.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()


def test_reconnect_through_a_cut_link_within_the_grace_period(
    broker: Broker, channel: uuid.UUID
) -> None:
    """The link under a client is cut (relay), not the broker: the client reconnects presenting
    its first WELCOME's resume secret, keeps its id, and its peers see no PEER_LEFT."""

    async def body() -> None:
        relay = Relay(broker.addr)
        url = await relay.start()
        policy = switchyard.ReconnectPolicy(initial_delay=0.01, max_delay=0.05)
        try:
            async with await switchyard.connect(broker.url, channel=channel) as a, \
                    await switchyard.connect(url, channel=channel, reconnect=policy) as b:
                b_id, secret = b.client_id, b.resume_secret
                assert await a.next_presence(timeout=5) == switchyard.PresenceEvent(b_id, True)
                worker = asyncio.create_task(echo_worker(b, 1))
                assert await a.request(b"abc", timeout=5) == b"cba"
                relay.cut()  # the broker sees b's connection close: its grace period starts
                await asyncio.wait_for(relay.accepted(2), 5)  # b's reconnect through the relay
                await b.wait_connected(timeout=5)
                assert b.state is switchyard.ConnectionState.CONNECTED
                assert b.client_id == b_id and b.resume_secret == secret
                assert await a.peers() == [b_id]
                # The receive window was re-issued: a's request reaches b over its new link.
                assert await a.request(b"xyz", timeout=5) == b"zyx"
                # No PEER_LEFT (nor a second PEER_JOINED) once the 1 s grace period is over.
                with pytest.raises(switchyard.Timeout):
                    await a.next_presence(timeout=1.5)
                assert a.known_peers == [b_id]
                worker.cancel()
        finally:
            await relay.close()

    run(body)


def test_unauthorized(token_broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        for token in (None, "wrong"):
            with pytest.raises(switchyard.Unauthorized):
                await switchyard.connect(token_broker.url, channel=channel, token=token)
        async with await switchyard.connect(token_broker.url, channel=channel, token="s3cret") as c:
            assert await c.ping() >= 0

    run(body)


def test_takeover_replaces(broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        first = await switchyard.connect(broker.url, channel=channel)
        # Without the id's resume secret: refused, and the first client is undisturbed.
        with pytest.raises(switchyard.ClientIdInUse):
            await switchyard.connect(broker.url, channel=channel, client_id=first.client_id)
        assert await first.ping() >= 0
        assert len(first.resume_secret) == 16
        second = await switchyard.connect(
            broker.url,
            channel=channel,
            client_id=first.client_id,
            resume_secret=first.resume_secret,
        )
        with pytest.raises(switchyard.Replaced):
            for _ in range(100):  # the REPLACED arrives asynchronously; ping until it has
                await first.ping(timeout=1)
        assert first.state is switchyard.ConnectionState.CLOSED  # no reconnect after REPLACED
        assert await second.ping() >= 0
        await second.close()

    run(body)


def test_closed_client(broker: Broker, channel: uuid.UUID) -> None:
    async def body() -> None:
        c = await switchyard.connect(broker.url, channel=channel)
        await c.set_receive_window(1)
        loop_done = asyncio.Event()

        async def loop() -> None:
            async for _ in c.requests():
                pass
            loop_done.set()

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)
        await c.close()
        await asyncio.wait_for(loop_done.wait(), 5)  # the iteration simply ends
        await task
        with pytest.raises(switchyard.Closed):
            await c.request(b"x")
        await c.close()  # idempotent

    run(body)


def test_blocking_front(broker: Broker, channel: uuid.UUID) -> None:
    with blocking.connect(broker.url, channel=channel) as w, \
            blocking.connect(broker.url, channel=str(channel)) as c:
        assert w.channel_id == c.channel_id == channel
        w.set_receive_window(2)

        def serve() -> None:
            for req in w.requests():
                data = req.body()
                if data == b"stream":
                    req.respond_stream([b"a", b"b", b"c"])
                else:
                    req.respond(data.upper())

        worker = threading.Thread(target=serve, daemon=True)
        worker.start()
        assert c.request(b"hi", timeout=5) == b"HI"
        big = os.urandom(2 * c.limits.max_payload + 1)
        resp = c.request_stream(iter([big[:10], big[10:]]), timeout=10)
        assert resp.read() == big.upper()
        assert b"".join(c.request_stream(b"stream", timeout=5)) == b"abc"
        results: List[bytes] = []
        threads = [threading.Thread(target=lambda i=i: results.append(c.request(b"t%d" % i, timeout=5)))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(results) == sorted(b"T%d" % i for i in range(8))
        got = []

        def take() -> None:
            got.append(w.next_broadcast(timeout=5).body)

        taker = threading.Thread(target=take)
        taker.start()
        assert c.broadcast(b"all", timeout=5) == 1
        taker.join(5)
        assert got == [b"all"]
        assert c.peers() == [w.client_id] and c.ping() > 0
        with pytest.raises(switchyard.Timeout):
            c.next_presence(timeout=0.05)
    worker.join(5)
    assert not worker.is_alive()  # the iteration ended with the close
