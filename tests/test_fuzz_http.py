"""Fuzzing the HTTP edge: random bytes and mutated requests into ``HttpProtocol``.

The property (issue 9): whatever bytes a client sends, the connection ends in one of two
ways, and never leaks anything:

* it answers: zero or more complete, well-framed responses, each ``200`` (a request that
  is still valid), ``100`` (interim) or an error status of :data:`ERROR_STATUSES`; an
  error answer is the last thing on the connection, which then closes;
* and/or it closes.

Nothing may escape ``data_received``, nothing may be logged at ERROR (an unhandled
exception in the protocol or the application), no task may be left behind.

**Stuck**, precisely: the connection is still open a bounded time after the client's
last byte. Each example ends one of two ways, both drawn:

* *EOF*: the client half-closes. Like asyncio's transports, the mock then closes unless
  ``eof_received()`` asks to stay open (kiro_fast treats EOF as the client leaving, so a
  response still being written may be cut: the last one may be incomplete). The
  connection must be gone (``connection_lost`` called, server state idle) within
  :data:`WAIT_LIMIT` seconds.
* *silence*: the client just stops. With every read timeout set to
  :data:`SHORT_TIMEOUT`, the connection must be gone within that plus
  :data:`WAIT_LIMIT`: an unanswered head is dropped, a stalled body gets 408, an idle
  keep-alive connection is closed.

:func:`drive_case`, :func:`check_outcome` and :class:`ErrorCapture` are what
``bench/fuzz.py http`` runs on millions of cases, many connections at once;
:func:`mutated_case` generates from any ``random.Random``, so hypothesis
(``st.randoms``) and the bench share one generator. The real-socket variant at the
bottom sends a smaller sample to a running kiro_fast.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from fake_transport import MockTransport
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiro_fast.protocol import Exchange, HttpProtocol, Request, ServerOptions, ServerState

EXAMPLES = int(os.environ.get("KIRO_FAST_FUZZ_EXAMPLES", "250"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Bound on "the connection closes": generous, since a loaded CI machine is slow.
WAIT_LIMIT = 5.0
#: Read timeouts in the silence runs: short, so a dropped connection costs little.
SHORT_TIMEOUT = 0.05
#: Statuses the protocol layer answers on its own (docs/errors.md, "HTTP layer").
ERROR_STATUSES = frozenset({400, 408, 413, 431, 501})
#: Small limits so that mutations reach them without megabytes of input.
FUZZ_LIMITS: dict[str, Any] = {
    "max_body_size": 4096,
    "max_header_bytes": 8192,
    "max_header_count": 20,
}

TEXT = [(b"content-type", b"text/plain")]


class PropertyViolation(AssertionError):
    """The protocol broke the property; the message says how."""


# --------------------------------------------------------------------------- the app


async def fuzz_app(request: Request, exchange: Exchange) -> None:
    """Answers every request 200; ``/stream`` streams in three writes over two loop turns."""
    if request.path.startswith("/stream"):
        exchange.start_stream(200, TEXT)
        exchange.write(b"first;")
        await asyncio.sleep(0)  # a loop turn, so pipelined bytes arrive mid-response
        exchange.write(b"second;")
        await asyncio.sleep(0)
        exchange.write(request.body)
        exchange.end()
    else:
        exchange.send(200, TEXT, b"%s %d" % (request.method.encode("latin-1"), len(request.body)))


# --------------------------------------------------------------------------- parsing


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class Truncated(PropertyViolation):
    """The byte stream ends inside a response."""


def parse_responses(data: bytes, *, cut_ok: bool = False) -> list[Response]:
    """Split ``data`` into complete responses (interim ones included); PropertyViolation
    on bad framing, :class:`Truncated` when it ends inside a response, unless ``cut_ok``
    (the client left: the last response is dropped). Written apart from h11 on purpose."""
    try:
        return _parse(data)
    except Truncated as exc:
        if not cut_ok:
            raise
        return exc.args[1]  # type: ignore[no-any-return]


def _parse(data: bytes) -> list[Response]:
    out: list[Response] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            raise Truncated(f"truncated response head at byte {pos}", out)
        lines = data[pos:end].split(b"\r\n")
        pos = end + 4
        version, _, rest = lines[0].partition(b" ")
        if version != b"HTTP/1.1" or not rest[:3].isdigit():
            raise PropertyViolation(f"bad status line {lines[0]!r}")
        status = int(rest[:3])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise PropertyViolation(f"bad header line {line!r}")
            headers[name.strip().lower()] = value.strip()
        try:
            body, pos = _body(data, pos, status, headers)
        except Truncated as exc:
            raise Truncated(exc.args[0], out) from None
        out.append(Response(status, headers, body))
    return out


def _body(data: bytes, pos: int, status: int, headers: dict[bytes, bytes]) -> tuple[bytes, int]:
    if status < 200 or status in (204, 304):
        return b"", pos
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        if len(data) < pos + length:
            raise Truncated("truncated body")
        return data[pos : pos + length], pos + length
    if headers.get(b"transfer-encoding") == b"chunked":
        parts: list[bytes] = []
        while True:
            line_end = data.find(b"\r\n", pos)
            if line_end < 0:
                raise Truncated("truncated chunked body")
            try:
                size = int(data[pos:line_end], 16)
            except ValueError:
                raise PropertyViolation(f"bad chunk size {data[pos:line_end][:40]!r}") from None
            pos = line_end + 2
            if len(data) < pos + size + 2:
                raise Truncated("truncated chunk")
            if data[pos + size : pos + size + 2] != b"\r\n":
                raise PropertyViolation("bad chunk framing")
            if size == 0:
                return b"".join(parts), pos + 2
            parts.append(data[pos : pos + size])
            pos += size + 2
    return data[pos:], len(data)  # close-delimited (an HTTP/1.0 stream)


# --------------------------------------------------------------------------- one case


class ClosingTransport(MockTransport):
    """The mock transport, but as asyncio's and uvloop's transports behave between
    ``close()`` and ``connection_lost()``: a ``write()`` is accepted (and dropped), not an
    error. Only a write after ``connection_lost()`` is one."""

    def __init__(self) -> None:
        super().__init__()
        self.reported = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            super().write(data)
        elif self.reported:
            raise AssertionError("write after connection_lost")

    def _lose(self, exc: Exception | None) -> None:
        if not self.lost:
            super()._lose(exc)  # schedules connection_lost; "reported" right after it
            asyncio.get_running_loop().call_soon(setattr, self, "reported", True)


@dataclass
class Outcome:
    responses: list[Response]
    closed: bool
    errors: list[str] = field(default_factory=list)


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def fuzz_options(*, short: bool) -> ServerOptions:
    timeouts: dict[str, Any] = {}
    if short:
        timeouts = dict.fromkeys(
            ("header_timeout", "body_timeout", "keep_alive_timeout"), SHORT_TIMEOUT
        )
    return ServerOptions(access_log=False, **FUZZ_LIMITS, **timeouts)


class ErrorCapture:
    """ERROR records of ``kiro_fast`` loggers and loop exception reports, while active."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._log = _ErrorLog()
        self._logger = logging.getLogger("kiro_fast")
        self._level = self._logger.level

    def __enter__(self) -> ErrorCapture:
        if not self._logger.isEnabledFor(logging.ERROR):
            self._logger.setLevel(logging.ERROR)
        self._logger.addHandler(self._log)
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: self.errors.append(str(context))
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._log)
        self._logger.setLevel(self._level)
        asyncio.get_running_loop().set_exception_handler(None)
        self.errors.extend(self._log.messages)


async def drive_case(
    chunks: list[bytes], *, eof: bool, until: Callable[[MockTransport], bool] | None = None
) -> Outcome:
    """Feed ``chunks`` to a fresh connection (one loop turn apart), wait for ``until`` if
    given, then EOF or silence; return once the connection is gone. Raises TimeoutError
    if it never goes (stuck). Errors are not collected: see :func:`run_case`."""
    state = ServerState()
    proto = HttpProtocol(fuzz_app, fuzz_options(short=not eof), state)
    transport = ClosingTransport().connect(proto)
    await _feed(transport, chunks)
    if until is not None:
        await transport.wait_for(until, WAIT_LIMIT)
    if eof and not transport.closed and not proto.eof_received():
        transport.close()  # what asyncio's transports do when eof_received() is falsy
    async with asyncio.timeout(WAIT_LIMIT + (0 if eof else SHORT_TIMEOUT)):
        await state.wait_idle()
    # EOF means the client left (protocol.eof_received): a response in flight is cut.
    responses = parse_responses(bytes(transport.buffer), cut_ok=eof)
    return Outcome(responses, transport.lost)


async def run_case(
    chunks: list[bytes], *, eof: bool, until: Callable[[MockTransport], bool] | None = None
) -> Outcome:
    """:func:`drive_case` with the errors logged meanwhile in the outcome."""
    with ErrorCapture() as capture:
        outcome = await drive_case(chunks, eof=eof, until=until)
    outcome.errors = capture.errors
    return outcome


async def _feed(transport: MockTransport, chunks: list[bytes]) -> None:
    for chunk in chunks:
        if not transport.reading and not transport.closed:
            # A pipelined request waits until the current response is done.
            await transport.wait_for(lambda t: t.reading or t.closed, WAIT_LIMIT)
        if transport.closed:
            return
        transport.feed(chunk)
        await asyncio.sleep(0)  # one loop turn: the next read is a separate event


def check_outcome(outcome: Outcome) -> str:
    """The property; returns a label for statistics."""
    if outcome.errors:
        raise PropertyViolation(f"errors were logged: {outcome.errors}")
    if not outcome.closed:
        raise PropertyViolation("the connection is still open")
    finals = [r for r in outcome.responses if r.status >= 200]
    for response in finals:
        if response.status != 200 and response.status not in ERROR_STATUSES:
            raise PropertyViolation(f"unexpected status {response.status}")
    for response in finals[:-1]:
        if response.status != 200:
            raise PropertyViolation(f"{response.status} was not the last answer")
    for response in outcome.responses:
        if response.status == 100:
            continue
        if response.status >= 400:
            if response.headers.get(b"connection") != b"close":
                raise PropertyViolation(f"{response.status} without connection: close")
            if b'"type":"error"' not in response.body:
                raise PropertyViolation(f"{response.status} body is not an error object")
    if not finals:
        return "closed"
    return "+".join(str(r.status) for r in finals[-2:])


def run_and_check(loop: asyncio.AbstractEventLoop, chunks: list[bytes], eof: bool) -> str:
    return str(loop.run_until_complete(run_and_check_async(chunks, eof)))


async def run_and_check_async(chunks: list[bytes], eof: bool) -> str:
    return check_outcome(await run_case(chunks, eof=eof))


# --------------------------------------------------------------------------- generation

BODY = b'{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}'


def _post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (path, len(body), extra, body)
    )


#: Valid requests the mutations start from (no HEAD: its answers carry no body, which a
#: byte-level parser cannot tell from the next response).
TEMPLATES: list[bytes] = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health?x=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nUser-Agent: fuzz\r\n\r\n",
    _post(b"/v1/messages", BODY),
    _post(b"/stream", BODY),
    _post(b"/v1/messages", BODY, b"Expect: 100-continue\r\n"),
    _post(b"/v1/messages", BODY, b"Connection: close\r\n"),
    b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://x/abs HTTP/1.1\r\nHost: x\r\n\r\n",
]

#: Header lines that break framing or limits in known ways.
NASTY_HEADERS: list[bytes] = [
    b"Content-Length: 99999999999999999999999",
    b"Content-Length: -1",
    b"Content-Length: 1, 2",
    b"Content-Length: 5000",
    b"Content-Length: 0x10",
    b"Content-Length: 3",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, chunked",
    b"Expect: 100-continue",
    b"Expect: 200-ok",
    b"Connection: close",
    b"Connection: upgrade\r\nUpgrade: websocket",
    b"Upgrade: h2c",
    b" folded continuation",
    b"\tfolded",
    b"X-Nul: a\x00b",
    b"X-High: \xff\xfe",
    b"No-Colon",
    b": empty-name",
    b"Bad Name: v",
    b"Host: second",
    b"X-Big: " + b"b" * 9000,
    b"\r\n".join(b"X-Many-%d: v" % i for i in range(30)),
]

GARBAGE = [
    b"\x00",
    b"\r\n",
    b"\n",
    b" ",
    b"\xff\xfe\xfd",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    b"GET / HTTP/1.1\r\n",
    b"0\r\n\r\n",
    b"zz\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
]


def mutated_case(rng: random.Random) -> tuple[list[bytes], bool]:
    """One client: 1-3 pipelined requests, 0-3 mutations, random chunking, EOF or not."""
    data = b"".join(rng.choice(TEMPLATES) for _ in range(rng.choice((1, 1, 1, 2, 3))))
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        data = rng.choice(MUTATIONS)(data, rng)
    return split(data, rng), rng.random() < 0.5


def split(data: bytes, rng: random.Random) -> list[bytes]:
    if not data:
        return [b""]
    cuts = sorted(rng.randrange(len(data)) for _ in range(rng.choice((0, 0, 1, 2, 5))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _at(data: bytes, rng: random.Random) -> int:
    return rng.randrange(len(data) + 1)


def flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ rng.randrange(1, 256)]) + data[i + 1 :]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    i = _at(data, rng)
    junk = rng.choice((rng.randbytes(rng.randrange(1, 9)), rng.choice(GARBAGE)))
    return data[:i] + junk + data[i:]


def delete(data: bytes, rng: random.Random) -> bytes:
    i = _at(data, rng)
    return data[:i] + data[i + rng.randrange(1, 20) :]


def duplicate(data: bytes, rng: random.Random) -> bytes:
    i = _at(data, rng)
    j = min(len(data), i + rng.randrange(1, 40))
    return data[:j] + data[i:j] + data[j:]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: _at(data, rng)]


def bare_newline(data: bytes, rng: random.Random) -> bytes:
    spots = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\r\n"]
    if not spots:
        return data
    i = rng.choice(spots)
    return data[:i] + data[i + 1 :]


def add_header(data: bytes, rng: random.Random) -> bytes:
    i = data.find(b"\r\n")
    if i < 0:
        return data + rng.choice(NASTY_HEADERS)
    return data[: i + 2] + rng.choice(NASTY_HEADERS) + b"\r\n" + data[i + 2 :]


def swap_method(data: bytes, rng: random.Random) -> bytes:
    method = rng.choice(
        (b"DELETE", b"PUT", b"PATCH", b"CONNECT", b"TRACE", b"get", b"G\xc9T", b"", b"A" * 300)
    )
    return method + data[data.find(b" ") :] if b" " in data else method + data


def long_target(data: bytes, rng: random.Random) -> bytes:
    i = data.find(b" /")
    if i < 0:
        return data
    return data[: i + 2] + b"a" * rng.choice((100, 5000, 9000)) + data[i + 2 :]


def prepend_garbage(data: bytes, rng: random.Random) -> bytes:
    return rng.choice(GARBAGE) + data


MUTATIONS = [
    flip,
    flip,
    insert_bytes,
    delete,
    duplicate,
    truncate,
    bare_newline,
    add_header,
    add_header,
    swap_method,
    long_target,
    prepend_garbage,
]


def random_bytes_case(rng: random.Random) -> tuple[list[bytes], bool]:
    size = rng.choice((0, 1, 4, 16, 64, 512, 4096, 20000))
    return split(rng.randbytes(size), rng), rng.random() < 0.5


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


@FUZZ_SETTINGS
@given(
    data=st.binary(max_size=2048),
    cuts=st.lists(st.integers(0, 2048), max_size=4),
    eof=st.booleans(),
)
def test_random_bytes_get_an_error_or_a_close(
    loop: asyncio.AbstractEventLoop, data: bytes, cuts: list[int], eof: bool
) -> None:
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] or [b""]
    event(run_and_check(loop, chunks, eof))


@FUZZ_SETTINGS
@given(rng=st.randoms(use_true_random=False))
def test_mutated_requests_are_answered_or_refused_and_closed(
    loop: asyncio.AbstractEventLoop, rng: random.Random
) -> None:
    chunks, eof = mutated_case(rng)
    event(run_and_check(loop, chunks, eof))


@FUZZ_SETTINGS
@given(
    picks=st.lists(st.integers(0, len(TEMPLATES) - 1), min_size=1, max_size=4),
    rng=st.randoms(use_true_random=False),
)
def test_valid_pipelines_in_any_chunking_are_all_answered(
    loop: asyncio.AbstractEventLoop, picks: list[int], rng: random.Random
) -> None:
    """Unmutated requests, cut anywhere: every one gets its 200, in order (up to the first
    that asks to close). The client hangs up once it has every answer."""
    requests = [TEMPLATES[i] for i in picks]
    closing = next(
        (n for n, r in enumerate(requests) if b"Connection: close" in r or b"HTTP/1.0" in r),
        len(requests) - 1,
    )

    def answered(transport: MockTransport) -> bool:
        responses = parse_responses(bytes(transport.buffer), cut_ok=True)
        return transport.closed or sum(r.status >= 200 for r in responses) > closing

    chunks = split(b"".join(requests), rng)
    outcome = loop.run_until_complete(run_case(chunks, eof=True, until=answered))
    check_outcome(outcome)
    finals = [r for r in outcome.responses if r.status >= 200]
    assert [r.status for r in finals] == [200] * (closing + 1)
    interim = [r for r in outcome.responses if r.status == 100]
    assert len(interim) == sum(b"100-continue" in r for r in requests[: closing + 1])


HTTP10_POST = _post(b"/stream", b"{}").replace(b"HTTP/1.1", b"HTTP/1.0")
CLOSE_POST = _post(b"/stream", b"{}", b"Connection: close\r\n")
TWO_GETS = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2


@pytest.mark.parametrize(
    ("data", "eof", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True, "200"),
        (b"\x16\x03\x01\x02\x00", True, "400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", False, "closed"),  # head never ends: dropped
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", False, "408"),
        (TWO_GETS + b"\x00", False, "200+400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", True, "413"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", True, "501"),
        (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", True, "501"),
        # an old HTTP/1.0 client's extra CRLF after its body must not cut the answer
        (HTTP10_POST + b"\r\n", False, "200"),
        (CLOSE_POST + b"GET / HTTP/1.1\r\n", False, "200"),
        # h11 takes any HTTP/1.x; a streamed answer must be framed as h11 declared it
        (b"GET /stream HTTP/1.2\r\nHost: x\r\n\r\n", False, "200"),
    ],
    ids=[
        "valid",
        "tls",
        "endless-head",
        "stalled-body",
        "pipelined-garbage",
        "too-big",
        "transfer-coding",
        "connect",
        "http10-extra-crlf",
        "bytes-after-close",
        "http-1.2-stream",
    ],
)
def test_hand_written_cases(
    loop: asyncio.AbstractEventLoop, data: bytes, eof: bool, expected: str
) -> None:
    assert run_and_check(loop, [data], eof) == expected


def test_the_oracle_catches_a_connection_left_open(loop: asyncio.AbstractEventLoop) -> None:
    async def silent_forever(request: Request, exchange: Exchange) -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        proto = HttpProtocol(silent_forever, fuzz_options(short=True), ServerState())
        transport = MockTransport().connect(proto)
        transport.feed(TEMPLATES[0])
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(SHORT_TIMEOUT * 4):
                await transport.wait_closed()
        proto.abort()

    loop.run_until_complete(main())
    with pytest.raises(PropertyViolation, match="still open"):
        check_outcome(Outcome([], closed=False))
    with pytest.raises(PropertyViolation, match="not the last"):
        check_outcome(
            Outcome([Response(400, {b"connection": b"close"}, b'{"type":"error"}')] * 2, True)
        )


# --------------------------------------------------------------------------- real sockets

REAL_EXAMPLES = max(20, EXAMPLES // 6)
#: A running kiro_fast also answers these from its routes (no key, unknown path, method).
REAL_STATUSES = ERROR_STATUSES | {200, 401, 404, 405}


@pytest.fixture(scope="module")
def harness() -> Iterator[Any]:
    from e2e_harness import Harness  # noqa: PLC0415 - only the real-socket tests need it

    with Harness() as running:
        yield running


def send_raw(port: int, chunks: list[bytes], eof: bool = True) -> tuple[bytes, bool]:
    """Send, then half-close (or go silent); read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_LIMIT * 2) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
            if eof:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server refused early and closed: its answer may still be readable
        received = bytearray()
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return bytes(received), True
            except TimeoutError:
                return bytes(received), False
            if not data:
                return bytes(received), True
            received += data


@settings(FUZZ_SETTINGS, max_examples=REAL_EXAMPLES)
@given(rng=st.randoms(use_true_random=False))
def test_real_sockets_mutated_requests(harness: Any, rng: random.Random) -> None:
    chunks, _ = mutated_case(rng)
    # Always EOF: a silent client with a stalled body is held for the full 60 s body
    # timeout, which the mock-transport property above already covers.
    received, closed = send_raw(harness.runtime.port, chunks)
    assert closed, "the server kept the connection open with no answer"
    for response in parse_responses(received, cut_ok=True):
        assert response.status in REAL_STATUSES | {100}


def test_real_server_is_healthy_and_idle_after_fuzzing(harness: Any) -> None:
    received, closed = send_raw(
        harness.runtime.port,
        [b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
        False,
    )
    assert closed
    assert [r.status for r in parse_responses(received)] == [200]
    harness.wait_for(lambda: harness.runtime.server.state.idle)


def test_a_deadline_already_past_does_not_break_the_watchdog(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Found by ``bench/fuzz.py http`` under load: for a deadline already past, uvloop's
    ``call_at`` returns a plain ``Handle`` (no ``when()``), and the next read re-armed the
    watchdog through it. A 0 s head timeout makes every deadline past at once."""

    async def main() -> bool:
        options = ServerOptions(header_timeout=0, access_log=False)
        proto = HttpProtocol(fuzz_app, options, ServerState())
        transport = MockTransport().connect(proto)
        transport.feed(b"GET / HT")  # re-arms the watchdog before the first one fired
        await transport.wait_closed()
        return bool(transport.buffer)

    assert loop.run_until_complete(main()) is False  # dropped without an answer
