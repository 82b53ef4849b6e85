"""Broker restarts (reconnect rules) and fake brokers that misbehave: always a clear exception,
never a hang."""

from __future__ import annotations

import asyncio
import uuid
from typing import Awaitable, Callable

import pytest

import switchyard
from switchyard import _protocol as p

from conftest import Broker, run


def test_reconnect_across_broker_restart(broker_factory: Callable[..., Broker]) -> None:
    channel = uuid.uuid4()
    first = broker_factory()

    async def body() -> None:
        policy = switchyard.ReconnectPolicy(initial_delay=0.05, max_delay=0.2)
        c = await switchyard.connect(first.url, channel=channel, reconnect=policy)
        w = await switchyard.connect(first.url, channel=channel, reconnect=policy)
        client_id = c.client_id
        await w.set_receive_window(1)
        in_flight = asyncio.create_task(c.request(b"never answered", timeout=30))
        held = await w.next_request(timeout=5)  # assigned, so it is truly in flight
        first.kill()
        with pytest.raises(switchyard.ConnectionLost):
            await in_flight  # never retried: at-most-once
        assert isinstance(await held.wait_cancelled(5), switchyard.ConnectionLost)
        with pytest.raises(switchyard.Reconnecting):
            await c.request(b"while down", timeout=1)
        broker_factory(listen=first.addr)  # a new broker on the same port
        await c.wait_connected(timeout=10)
        await w.wait_connected(timeout=10)
        assert c.client_id == client_id

        async def serve() -> None:
            async for req in w.requests():  # the window was re-issued by the reconnect
                await req.respond(b"back:" + await req.body())

        task = asyncio.create_task(serve())
        assert await c.request(b"x", timeout=5) == b"back:x"
        task.cancel()
        await c.close()
        await w.close()

    run(body)


def test_no_reconnect_when_disabled(broker_factory: Callable[..., Broker]) -> None:
    b = broker_factory()

    async def body() -> None:
        c = await switchyard.connect(b.url, channel="x", reconnect=None)
        b.kill()
        with pytest.raises(switchyard.SwitchyardError):
            for _ in range(100):
                await c.ping(timeout=1)
        assert c.state is switchyard.ConnectionState.CLOSED

    run(body)


async def fake_broker(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
) -> "tuple[asyncio.AbstractServer, str]":
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


def welcome_for(hello: bytes) -> bytes:
    d = p.Decoder()
    d.feed(hello)
    frame = d.next_frame()
    assert frame is not None and frame.frame_type == p.HELLO
    return p.encode(p.Frame(p.WELCOME, client_id=uuid.uuid4(), channel_id=frame.channel_id,
                            payload=p.encode_welcome(p.Limits(heartbeat_ms=0), [])))


def test_http_server_is_not_a_broker() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(64)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def body() -> None:
        server, addr = await fake_broker(handler)
        with pytest.raises(switchyard.NotASwitchyardBroker, match="does not speak"):
            await switchyard.connect(addr, channel="orders")
        server.close()

    run(body)


def test_silent_server_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    async def body() -> None:
        server, addr = await fake_broker(handler)
        with pytest.raises(switchyard.Timeout, match="switchyard broker"):
            await switchyard.connect(addr, channel="orders", connect_timeout=0.3)
        server.close()

    run(body)


@pytest.mark.parametrize("garbage", [
    b"\x07" * 64,  # bad version
    bytes([1, 0x42]) + bytes(62),  # unknown frame type
    bytes([1, p.START, 0x80, 0]) + bytes(60),  # undefined flags
    bytes([1, p.START, 0, 1]) + bytes(56) + b"\xff\xff\xff\xff",  # payload_len
])
def test_garbage_after_welcome(garbage: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(welcome_for(await reader.readexactly(64)))
        await reader.readexactly(64)  # the request's START
        writer.write(garbage)
        await writer.drain()
        await reader.read()

    async def body() -> None:
        server, addr = await fake_broker(handler)
        c = await switchyard.connect(addr, channel="orders")
        with pytest.raises(switchyard.ProtocolError):
            await c.request(b"ping", timeout=30)
        assert c.state is switchyard.ConnectionState.CLOSED  # no reconnect after garbage
        with pytest.raises(switchyard.ProtocolError):
            await c.ping()
        server.close()

    run(body)


def test_truncated_frame_then_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await reader.readexactly(64)
        writer.write(welcome_for(hello)[:30])
        writer.close()

    async def body() -> None:
        server, addr = await fake_broker(handler)
        with pytest.raises((switchyard.NotASwitchyardBroker, switchyard.ConnectFailed)):
            await switchyard.connect(addr, channel="orders")
        server.close()

    run(body)
