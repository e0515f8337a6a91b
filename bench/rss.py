"""Memory benchmarks' helpers: slow-reader clients and a long-stream upstream.

```
rss.py idle URL PATH --body FILE [--api-key K] --steps 1000,5000
rss.py stall URL PATH --body FILE [--api-key K] --clients 50
rss.py big-upstream [--port 0]
```

``idle`` opens streaming requests until ``steps[0]`` are open, each read up to its first
body bytes and then left unread (``pause_reading``), prints ``READY <n>`` and waits for a
line on stdin; then it opens more up to the next step, and so on. After the last step the
next stdin line closes everything and it prints ``CLOSED``. ``bench/e2e.py`` reads the
server's RSS at each ``READY``.

``stall`` connects ``clients`` sockets with a 16 KiB receive buffer, sends one request on
each and never reads; it prints ``READY`` once every request is sent and closes all on the
next stdin line.

``big-upstream`` is a fake Kiro upstream for stalled-reader tests: every POST whose body
contains ``BIGSTREAM:<MiB>`` (anywhere: kiro_fast carries the user's text into the Kiro
body) gets a chunked event stream of about MiB mebibytes of ``assistantResponseEvent``
frames (1,000 characters each), then the usual metering and context-usage events. It
writes only while its transport is below the high-water mark, so it holds almost nothing
itself; whatever the proxy reads, the proxy holds. Prints its URL.

Everything binds and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sys
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

#: How many connection attempts run at once while opening idle streams.
OPEN_CONCURRENCY: Final = 200
#: A stalled reader's receive buffer (performance-notes §2.E).
STALL_RCVBUF: Final = 16 * 1024
#: Frames per HTTP chunk the big upstream writes (about 64 KiB a chunk).
BIG_FRAMES_PER_CHUNK: Final = 60
BIG_TEXT: Final = "a" * 1000
#: Where the request body says how long its answer is; 0 gets one chunk (a warm-up).
BIG_MARKER: Final = re.compile(rb"BIGSTREAM:(\d+)")
BIG_WRITE_HIGH: Final = 256 * 1024
#: Giving up on one stream's first bytes.
FIRST_BYTES_TIMEOUT: Final = 30.0


def build_request(host: str, port: int, path: str, body: bytes, api_key: str | None) -> bytes:
    from ttfb import build_request as build  # noqa: PLC0415 - sibling module in bench/

    return build(host, port, path, body, api_key)


# --------------------------------------------------------------------------- idle streams


class _SlowReader(asyncio.Protocol):
    """Sends one request, reads until the first body bytes, then stops reading."""

    def __init__(self, request: bytes, ready: asyncio.Future[bool]) -> None:
        self.request = request
        self.ready = ready
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0 and len(self.buf) > end + 4 and not self.ready.done():
            ok = self.buf.startswith(b"HTTP/1.1 200")
            self.ready.set_result(ok)
            assert self.transport is not None
            self.transport.pause_reading()
            self.buf = bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)


async def _open_one(
    host: str, port: int, request: bytes, gate: asyncio.Semaphore, keep: list[asyncio.Transport]
) -> bool:
    loop = asyncio.get_running_loop()
    async with gate:
        ready: asyncio.Future[bool] = loop.create_future()
        try:
            transport, _ = await loop.create_connection(
                lambda: _SlowReader(request, ready), host, port
            )
        except OSError:
            return False
        keep.append(transport)
        try:
            return await asyncio.wait_for(ready, FIRST_BYTES_TIMEOUT)
        except TimeoutError:
            return False


async def _readline() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def idle(url: str, path: str, body: bytes, api_key: str | None, steps: list[int]) -> int:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(host, port, path, body, api_key)
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    keep: list[asyncio.Transport] = []
    failed = 0
    for step in steps:
        todo = step - len(keep)
        results = await asyncio.gather(
            *(_open_one(host, port, request, gate, keep) for _ in range(todo))
        )
        failed += results.count(False)
        print(f"READY {len(keep)} failed={failed}", flush=True)
        await _readline()
    for transport in keep:
        transport.abort()
    print("CLOSED", flush=True)
    return 0 if failed == 0 else 1


# --------------------------------------------------------------------------- stalled readers


async def stall(url: str, path: str, body: bytes, api_key: str | None, clients: int) -> int:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(host, port, path, body, api_key)
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    for _ in range(clients):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_RCVBUF)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, request)
        socks.append(sock)
    print(f"READY {len(socks)}", flush=True)
    await _readline()
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    print("CLOSED", flush=True)
    return 0


# --------------------------------------------------------------------------- big upstream


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _BigStream(asyncio.Protocol):
    """Answers each POST with a long event stream, written as fast as the peer reads."""

    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )

    def __init__(self, piece: bytes, tail: bytes) -> None:
        self.piece = piece
        self.tail = tail
        self.buf = bytearray()
        self.remaining = 0
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=BIG_WRITE_HIGH)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.remaining:
            return  # one answer at a time; the next request waits in buf
        self._next_request()

    def _next_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip() == b"content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        found = BIG_MARKER.search(bytes(self.buf[end + 4 : end + 4 + length]))
        mib = int(found.group(1)) if found else 1
        del self.buf[: end + 4 + length]
        self.remaining = max(1, mib * 1024 * 1024 // len(self.piece))
        assert self.transport is not None
        self.transport.write(self.head)
        self._produce()

    def _produce(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.remaining and not self.paused and not transport.is_closing():
            transport.write(self.piece)
            self.remaining -= 1
            if not self.remaining:
                transport.write(self.tail)
                self._next_request()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._produce()


async def big_upstream(port: int) -> int:
    from kiro_fast.testing import frames  # noqa: PLC0415 - only this command needs it

    piece = _chunk(frames.text(BIG_TEXT) * BIG_FRAMES_PER_CHUNK)
    tail = _chunk(frames.metering(0.01) + frames.context_usage(1.0)) + b"0\r\n\r\n"
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _BigStream(piece, tail), "127.0.0.1", port)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
    return 0


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/rss.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("idle", "stall"):
        cmd = sub.add_parser(name)
        cmd.add_argument("url")
        cmd.add_argument("path")
        cmd.add_argument("--body", required=True)
        cmd.add_argument("--api-key")
        cmd.add_argument("--steps", default="1000,5000")
        cmd.add_argument("--clients", type=int, default=50)
    big = sub.add_parser("big-upstream")
    big.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "big-upstream":
        import signal  # noqa: PLC0415

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            return asyncio.run(big_upstream(args.port))
        except (KeyboardInterrupt, SystemExit):
            return 0
    with open(args.body, "rb") as fh:
        body = fh.read()
    if args.command == "idle":
        steps = [int(s) for s in args.steps.split(",")]
        return asyncio.run(idle(args.url, args.path, body, args.api_key, steps))
    return asyncio.run(stall(args.url, args.path, body, args.api_key, args.clients))


if __name__ == "__main__":
    sys.exit(main())
