"""Time to first byte at c=1: a blocking-socket client over one keep-alive connection.

```
.venv/bin/python bench/ttfb.py URL PATH --body FILE [--api-key KEY] [--count 3000] [--warmup 20]
```

Sends ``count + warmup`` POSTs one after the other on one connection and prints one JSON
object: p50/p99 (µs) of the time from the request's ``send`` to the first byte of the
answer (``ttfb_*``) and to its terminating chunk (``total_*``), the number of requests
timed and the number of errors. The first ``warmup`` requests are not timed.

The answer must be ``200`` with ``Transfer-Encoding: chunked``; it ends at the terminating
chunk. :func:`fetch` (one request, the de-chunked body) is what ``bench/e2e.py`` uses to
check each server answers correctly before it is measured.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

#: recv() size: a whole 50-event answer (about 8 KB of SSE) fits in one read.
RECV_SIZE: Final = 65536
#: A stalled server fails the run instead of hanging it.
SOCKET_TIMEOUT: Final = 10.0
_END: Final = b"\r\n0\r\n\r\n"


class BadAnswer(Exception):
    """The server answered something other than a complete chunked 200."""


def build_request(host: str, port: int, path: str, body: bytes, api_key: str | None) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"anthropic-version: 2023-06-01\r\nContent-Length: {len(body)}\r\n"
    )
    if api_key:
        head += f"x-api-key: {api_key}\r\n"
    return head.encode() + b"\r\n" + body


def connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(sock: socket.socket, request: bytes) -> tuple[int, int, bytes]:
    """One request: (ns to first byte, ns to the end, raw answer)."""
    recv = sock.recv
    started = time.perf_counter_ns()
    sock.sendall(request)
    data = recv(RECV_SIZE)
    first = time.perf_counter_ns()
    if not data:
        raise BadAnswer("connection closed before an answer")
    buf = bytearray(data)
    while not buf.endswith(_END):
        data = recv(RECV_SIZE)
        if not data:
            raise BadAnswer("connection closed inside an answer")
        buf += data
    return first - started, time.perf_counter_ns() - started, bytes(buf)


def check_head(raw: bytes) -> int:
    """Offset of the body; raises BadAnswer unless a chunked 200."""
    end = raw.find(b"\r\n\r\n")
    head = raw[:end].lower()
    if end < 0 or not head.startswith(b"http/1.1 200") or b"transfer-encoding: chunked" not in head:
        raise BadAnswer(f"unexpected answer head: {raw[:200]!r}")
    return end + 4


def dechunk(raw: bytes, start: int) -> bytes:
    out: list[bytes] = []
    pos = start
    while True:
        line_end = raw.index(b"\r\n", pos)
        size = int(raw[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[line_end + 2 : line_end + 2 + size])
        pos = line_end + 2 + size + 2


def fetch(url: str, path: str, body: bytes, api_key: str | None) -> bytes:
    """One request on a new connection; the de-chunked body of a 200."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with connect(host, port) as sock:
        raw = exchange(sock, build_request(host, port, path, body, api_key))[2]
    return dechunk(raw, check_head(raw))


def percentile(sorted_values: Sequence[int], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def measure(
    url: str, path: str, body: bytes, api_key: str | None, count: int, warmup: int
) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(host, port, path, body, api_key)
    ttfb: list[int] = []
    total: list[int] = []
    errors = 0
    sock = connect(host, port)
    try:
        for i in range(count + warmup):
            try:
                first, whole, raw = exchange(sock, request)
                check_head(raw)
            except (BadAnswer, OSError):
                errors += 1
                sock.close()
                sock = connect(host, port)
                continue
            if i >= warmup:
                ttfb.append(first)
                total.append(whole)
    finally:
        sock.close()
    ttfb.sort()
    total.sort()
    return {
        "requests": len(ttfb),
        "errors": errors,
        "ttfb_p50_us": percentile(ttfb, 50) / 1000,
        "ttfb_p99_us": percentile(ttfb, 99) / 1000,
        "total_p50_us": percentile(total, 50) / 1000,
        "total_p99_us": percentile(total, 99) / 1000,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/ttfb.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("path")
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--api-key")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    with open(args.body, "rb") as fh:
        body = fh.read()
    result = measure(args.url, args.path, body, args.api_key, args.count, args.warmup)
    print(json.dumps(result), flush=True)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
