"""Fixtures: the real broker binary, started per session (plain and with a token) or per test
(for restarts). The binary is ``$SWITCHYARD_BIN`` or ``<repo>/target/debug/switchyard``; nothing
is built here. Brokers are stopped by PID."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, List, Optional, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")
_LISTENING = re.compile(r"switchyard listening on (\S+)")
_LISTENING_TLS = re.compile(r"switchyard listening for TLS on (\S+)")


def broker_binary() -> Path:
    env = os.environ.get("SWITCHYARD_BIN")
    path = Path(env) if env else REPO / "target" / "debug" / "switchyard"
    if not path.is_file():
        pytest.fail(f"no broker binary at {path} (build it: cargo build --bin switchyard)")
    return path


class Broker:
    """One broker process. ``url`` is ``tcp://ADDR`` as read from its stderr (``tls_url`` too,
    ``tls://ADDR``, when ``args`` has ``--tls-listen``)."""

    def __init__(self, args: List[str], listen: str = "127.0.0.1:0") -> None:
        self.args = args
        cmd = [str(broker_binary()), "--listen", listen, "--metrics-listen", "off",
               "--log-level", "info", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.log: List[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 10
        self.addr = self._await_line(_LISTENING, deadline)
        self.url = f"tcp://{self.addr}"
        #: ``tls://ADDR`` of the TLS listener when started with ``--tls-listen``, else None.
        self.tls_url: Optional[str] = None
        if "--tls-listen" in args:
            self.tls_url = f"tls://{self._await_line(_LISTENING_TLS, deadline)}"

    def _await_line(self, pattern: "re.Pattern[str]", deadline: float) -> str:
        """The first group of the first stderr line matching ``pattern`` (before ``deadline``)."""
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"broker did not report its address: {self.log}") from None
            if line is None:
                raise RuntimeError(f"broker exited: {self.log}")
            found = pattern.search(line)
            if found:
                return found.group(1)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (drain), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    b = Broker(["--presence-grace-ms", "1000"])
    yield b
    b.stop()


@pytest.fixture(scope="session")
def token_broker() -> Iterator[Broker]:
    b = Broker(["--auth-token", "s3cret"])
    yield b
    b.stop()


@pytest.fixture()
def broker_factory() -> Iterator[Callable[..., Broker]]:
    """Starts brokers on demand (``listen=`` to reuse a port); all stopped at the end."""
    started: List[Broker] = []

    def start(*args: str, listen: str = "127.0.0.1:0") -> Broker:
        b = Broker(list(args), listen)
        started.append(b)
        return b

    yield start
    for b in started:
        b.kill()


@pytest.fixture()
def channel() -> uuid.UUID:
    """A fresh channel per test, so tests sharing a broker never see each other."""
    return uuid.uuid4()


def run(coro_fn: Callable[[], Awaitable[T]], limit: float = 20.0) -> T:
    """Runs an async test body with a hard time limit (no test may hang)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), limit)

    return asyncio.run(bounded())


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "slow: a scenario that takes seconds")
