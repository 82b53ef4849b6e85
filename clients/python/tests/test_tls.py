"""TLS against the real broker: a ``--tls-listen`` listener with a self-signed certificate for
``localhost`` and 127.0.0.1, generated at test time (``cryptography``). Request/reply over
``tls://`` (asyncio and blocking), a 2 MiB body byte-exact, and contexts that do not trust the
certificate (or name another host) failing fast with :class:`switchyard.ConnectFailed`."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import switchyard
from switchyard import blocking

from conftest import Broker, run

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

TWO_MIB = 2 * 1024 * 1024


def make_self_signed(directory: Path, name: str = "switchyard-test") -> Tuple[Path, Path]:
    """Writes ``cert.pem`` and ``key.pem`` (PKCS#8, P-256) for localhost + 127.0.0.1 into
    ``directory``; returns their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_broker(tls_cert: Tuple[Path, Path]) -> Iterator[Broker]:
    cert, key = tls_cert
    b = Broker(["--tls-listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)])
    assert b.tls_url is not None and b.tls_url.startswith("tls://")
    yield b
    b.stop()


@pytest.fixture()
def trusting(tls_cert: Tuple[Path, Path]) -> ssl.SSLContext:
    """A client context that trusts exactly the test certificate."""
    return ssl.create_default_context(cafile=str(tls_cert[0]))


def tls_url(broker: Broker) -> str:
    assert broker.tls_url is not None
    return broker.tls_url


async def echo_worker(client: switchyard.Client) -> None:
    """Answers every request with its body, unchanged."""
    async for req in client.requests(window=2):
        await req.respond(await req.body())


def test_async_request_reply_over_tls(
    tls_broker: Broker, trusting: ssl.SSLContext, channel: uuid.UUID
) -> None:
    url = tls_url(tls_broker)

    async def body() -> None:
        async with await switchyard.connect(url, channel=channel, ssl=trusting) as w, \
                await switchyard.connect(url, channel=channel, ssl=trusting) as c:
            task = asyncio.create_task(echo_worker(w))
            assert await c.request(b"hello over tls", timeout=10) == b"hello over tls"
            assert await c.ping() >= 0
            assert w.client_id in await c.peers()
            task.cancel()

    run(body)


def test_tls_by_hostname_localhost(
    tls_broker: Broker, trusting: ssl.SSLContext, channel: uuid.UUID
) -> None:
    """The certificate's DNS name verifies too (``tls://localhost:PORT``)."""
    port = tls_url(tls_broker).rsplit(":", 1)[1]

    async def body() -> None:
        async with await switchyard.connect(f"tls://localhost:{port}", channel=channel,
                                            ssl=trusting) as c:
            assert await c.ping() >= 0

    run(body)


def test_two_mib_body_byte_exact_over_tls(
    tls_broker: Broker, trusting: ssl.SSLContext, channel: uuid.UUID
) -> None:
    """2 MiB each way through TLS; the worker sits on the plain listener of the same broker,
    so one channel spans both listeners."""
    data = os.urandom(TWO_MIB)

    async def body() -> None:
        async with await switchyard.connect(tls_broker.url, channel=channel) as w, \
                await switchyard.connect(tls_url(tls_broker), channel=channel, ssl=trusting) as c:
            task = asyncio.create_task(echo_worker(w))
            got = await c.request(data, timeout=20)
            assert len(got) == TWO_MIB and got == data
            response = await c.request_stream(
                (data[i : i + 300_000] for i in range(0, len(data), 300_000)), timeout=20
            )
            parts = [part async for part in response]
            assert b"".join(parts) == data
            task.cancel()

    run(body, 40)


def test_blocking_front_over_tls(
    tls_broker: Broker, trusting: ssl.SSLContext, channel: uuid.UUID
) -> None:
    url = tls_url(tls_broker)
    with blocking.connect(url, channel=channel, ssl=trusting) as w, \
            blocking.connect(url, channel=channel, ssl=trusting) as c:
        w.set_receive_window(2)

        def serve() -> None:
            for req in w.requests():
                req.respond(req.body()[::-1])

        threading.Thread(target=serve, daemon=True).start()
        assert c.request(b"blocking tls", timeout=10) == b"slt gnikcolb"
        big = os.urandom(TWO_MIB)
        assert c.request(big, timeout=20) == big[::-1]


def test_tls_url_without_ssl_uses_default_context(
    tls_broker: Broker, channel: uuid.UUID
) -> None:
    """``tls://`` with no ``ssl=`` verifies against the system store: the self-signed
    certificate is rejected, quickly and clearly."""

    async def body() -> None:
        started = time.monotonic()
        with pytest.raises(switchyard.ConnectFailed, match="TLS handshake"):
            await switchyard.connect(tls_url(tls_broker), channel=channel, connect_timeout=5)
        assert time.monotonic() - started < 4

    run(body, 10)


def test_untrusted_certificate_fails_clearly(
    tls_broker: Broker, tmp_path: Path, channel: uuid.UUID
) -> None:
    """A context trusting a different self-signed certificate: ConnectFailed naming the TLS
    handshake and the verification failure, well before the connect timeout."""
    other_cert, _ = make_self_signed(tmp_path / "other", name="someone-else")
    other = ssl.create_default_context(cafile=str(other_cert))

    async def body() -> None:
        started = time.monotonic()
        with pytest.raises(switchyard.ConnectFailed) as info:
            await switchyard.connect(tls_url(tls_broker), channel=channel, ssl=other,
                                     connect_timeout=5)
        assert time.monotonic() - started < 4
        message = str(info.value)
        assert "TLS handshake" in message and "certificate verify failed" in message, message

    run(body, 10)

    with pytest.raises(switchyard.ConnectFailed, match="certificate verify failed"):
        blocking.connect(tls_url(tls_broker), channel=channel, ssl=other, connect_timeout=5)


def test_wrong_server_hostname_fails_clearly(
    tls_broker: Broker, trusting: ssl.SSLContext, channel: uuid.UUID
) -> None:
    """Trusted certificate, but verified against a name it does not carry."""

    async def body() -> None:
        with pytest.raises(switchyard.ConnectFailed, match="TLS handshake"):
            await switchyard.connect(tls_url(tls_broker), channel=channel, ssl=trusting,
                                     server_hostname="not-localhost.example", connect_timeout=5)

    run(body, 10)


def test_broker_still_serves_after_failed_handshakes(
    tls_broker: Broker, trusting: ssl.SSLContext, tmp_path: Path, channel: uuid.UUID
) -> None:
    other_cert, _ = make_self_signed(tmp_path / "other")
    other = ssl.create_default_context(cafile=str(other_cert))

    async def body() -> None:
        for _ in range(3):
            with pytest.raises(switchyard.ConnectFailed):
                await switchyard.connect(tls_url(tls_broker), channel=channel, ssl=other)
        async with await switchyard.connect(tls_url(tls_broker), channel=channel,
                                            ssl=trusting) as c:
            assert await c.ping() >= 0
        async with await switchyard.connect(tls_broker.url, channel=channel) as plain:
            assert await plain.ping() >= 0

    run(body)
