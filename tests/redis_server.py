"""A throw-away ``redis-server`` for tests: loopback only, a temp dir, no persistence.

``RedisServer`` starts the Debian binary (``/usr/bin/redis-server`` unless told
otherwise) on a free port of 127.0.0.1, waits until it answers ``PING``, and stops it
(SIGTERM, then SIGKILL) by its own process id. Use it as a context manager::

    with RedisServer() as server:
        url = server.url  # redis://127.0.0.1:PORT/0

``redis_server_missing()`` says why it cannot run (for a skip reason), or ``None``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Final

import pytest

DEFAULT_BINARY: Final = "/usr/bin/redis-server"
#: How long a fresh server may take to answer PING.
START_TIMEOUT: Final = 10.0
#: A free port can be taken by someone else between our probe and the server's bind.
START_ATTEMPTS: Final = 5


def redis_server_missing(binary: str = DEFAULT_BINARY) -> str | None:
    """Why no test server can be started, or ``None`` when it can."""
    if not os.access(binary, os.X_OK):
        return f"{binary} is not installed (apt-get install redis-server)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process owned by a test session."""

    def __init__(self, binary: str = DEFAULT_BINARY) -> None:
        self.binary = binary
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        missing = redis_server_missing(self.binary)
        if missing:
            raise RuntimeError(missing)
        self._dir = Path(tempfile.mkdtemp(prefix="kiro-fast-redis-"))
        for _ in range(START_ATTEMPTS):
            if self._try_start(_free_port()):
                return self
        log = self._dir / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server did not start:\n{tail}")

    def _try_start(self, port: int) -> bool:
        assert self._dir is not None
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False  # most likely the port was taken meanwhile
            if _answers_ping(port):
                self._proc, self.port = proc, port
                return True
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: A missing redis-server fails the tests instead of skipping them (CI sets it).
REQUIRE_ALL = os.environ.get("KIRO_FAST_REQUIRE_ALL") == "1"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    missing = redis_server_missing()
    if missing:
        if REQUIRE_ALL:
            pytest.fail(f"KIRO_FAST_REQUIRE_ALL=1 but {missing}")
        pytest.skip(missing)
    with RedisServer() as server:
        yield server
