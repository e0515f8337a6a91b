"""HttpProtocol and Exchange without sockets: raw request bytes in, exact bytes out.

Every test runs on a real event loop, once with asyncio and once with uvloop. Responses
are parsed by the small reader below (not by h11), so framing is checked independently of
the code under test. Waits are bounded waits on conditions, never sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import uvloop
from fake_transport import MockTransport

from kiro_fast.errors import RateLimited
from kiro_fast.logs import RequestIdFilter
from kiro_fast.protocol import (
    ClientDisconnected,
    Exchange,
    HttpProtocol,
    Request,
    ServerOptions,
    ServerState,
)
from kiro_fast.server import Server

# --------------------------------------------------------------------------- harness


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest):
    loop = asyncio.new_event_loop() if request.param == "asyncio" else uvloop.new_event_loop()

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        return loop.run_until_complete(asyncio.wait_for(coro, 30))

    yield runner
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


AppFn = Callable[[Request, Exchange], Awaitable[None]]


class Harness:
    def __init__(self, app: AppFn, state: ServerState | None = None, **options: Any) -> None:
        options.setdefault("access_log", False)
        self.app = app
        self.options = ServerOptions(**options)
        self.state = state if state is not None else ServerState()

    def connect(self, *, stall_close: bool = False) -> tuple[HttpProtocol, MockTransport]:
        proto = HttpProtocol(self.app, self.options, self.state)
        transport = MockTransport(stall_close=stall_close).connect(proto)
        return proto, transport


@dataclass
class Parsed:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        return orjson.loads(self.body)


def parse_responses(data: bytes, *, head_only: bool = False) -> list[Parsed]:
    """Split complete HTTP/1.1 responses; 1xx interim responses are skipped."""
    out: list[Parsed] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\r\n\r\n", pos)
        lines = data[pos:end].split(b"\r\n")
        pos = end + 4
        status = int(lines[0].split(b" ")[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        if status < 200:
            continue
        fields = dict(headers)
        if head_only:
            body = b""
        elif b"content-length" in fields:
            length = int(fields[b"content-length"])
            body = data[pos : pos + length]
            assert len(body) == length, "truncated body"
            pos += length
        elif fields.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                line_end = data.index(b"\r\n", pos)
                size = int(data[pos:line_end], 16)
                pos = line_end + 2
                if size == 0:
                    assert data[pos : pos + 2] == b"\r\n"
                    pos += 2
                    break
                parts.append(data[pos : pos + size])
                assert data[pos + size : pos + size + 2] == b"\r\n"
                pos += size + 2
            body = b"".join(parts)
        else:
            body, pos = data[pos:], len(data)
        out.append(Parsed(status, headers, body))
    return out


def req(method: str, target: str, body: bytes = b"", headers: list[str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test"]
    lines += headers or []
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo(request: Request, exchange: Exchange) -> None:
    exchange.send(200, [(b"content-type", b"text/plain")], request.method.encode() + request.body)


SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def settle(rounds: int = 10) -> None:
    """Let the loop run a few iterations (used only to show that nothing happens)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- keep-alive


def test_keep_alive_serves_two_requests_on_one_connection(run) -> None:
    async def main() -> None:
        h = Harness(echo)
        _, t = h.connect()
        t.feed(req("POST", "/a", b"one"))
        await t.wait_for(lambda t: len(parse_responses(bytes(t.buffer))) == 1)
        t.feed(req("POST", "/b", b"two"))
        await t.wait_for(lambda t: len(parse_responses(bytes(t.buffer))) == 2)
        first, second = parse_responses(t.take())
        assert (first.status, first.body) == (200, b"POSTone")
        assert (second.status, second.body) == (200, b"POSTtwo")
        for response in (first, second):
            assert response.header(b"content-length") == b"%d" % len(response.body)
            assert response.header(b"server") == b"kiro-fast"
            assert response.header(b"date") is not None
            assert response.header(b"connection") is None
        assert first.header(b"x-request-id") != second.header(b"x-request-id")
        assert not t.is_closing()

    run(main())


def test_request_fields_reach_the_app(run) -> None:
    seen: list[Request] = []

    async def app(request: Request, exchange: Exchange) -> None:
        seen.append(request)
        exchange.send(204, [], b"")

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("POST", "/v1/messages?beta=true", b"{}", ["X-Api-Key: k1", "X-Api-Key: k2"]))
        await t.wait_bytes(b"\r\n\r\n")
        (request,) = seen
        assert request.method == "POST"
        assert request.target == "/v1/messages?beta=true"
        assert (request.path, request.query) == ("/v1/messages", "beta=true")
        assert request.body == b"{}"
        assert request.header("X-API-KEY") == "k1"
        assert request.header("missing") is None
        assert (b"host", b"test") in request.headers
        assert request.client == ("127.0.0.1", 50123)
        assert len(request.request_id) == 16
        int(request.request_id, 16)
        with pytest.raises(AttributeError):
            request.body = b"changed"  # type: ignore[misc]
        (response,) = parse_responses(t.take())
        assert response.status == 204
        assert response.header(b"content-length") is None

    run(main())


def test_pipelined_requests_are_answered_in_order_one_at_a_time(run) -> None:
    calls: list[str] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def app(request: Request, exchange: Exchange) -> None:
            calls.append(request.path)
            if request.path == "/slow":
                await gate.wait()
            exchange.send(200, [], request.path.encode())

        _, t = Harness(app).connect()
        t.feed(req("GET", "/slow") + req("GET", "/fast"))
        await settle()
        assert calls == ["/slow"]
        assert not t.is_reading()  # the second request waits in h11's buffer, and the socket too
        assert t.buffer == b""
        gate.set()
        await t.wait_for(lambda t: len(parse_responses(bytes(t.buffer))) == 2)
        assert [r.body for r in parse_responses(t.take())] == [b"/slow", b"/fast"]
        assert calls == ["/slow", "/fast"]
        assert t.is_reading()
        assert not t.is_closing()

    run(main())


# --------------------------------------------------------------------------- bad requests


def error_of(response: Parsed) -> dict[str, Any]:
    body = response.json()
    assert body["type"] == "error"
    return body["error"]  # type: ignore[no-any-return]


def test_garbage_is_answered_400_and_closed(run) -> None:
    async def main() -> None:
        called = []

        async def app(request: Request, exchange: Exchange) -> None:
            called.append(request)

        _, t = Harness(app).connect()
        t.feed(b"GARBAGE\r\n\r\n")
        await t.wait_closed()
        (response,) = parse_responses(t.take())
        assert response.status == 400
        assert error_of(response) == {
            "type": "invalid_request_error",
            "message": "malformed http request",
        }
        assert response.header(b"content-type") == b"application/json"
        assert response.header(b"connection") == b"close"
        assert response.header(b"x-request-id")
        assert called == []

    run(main())


def test_declared_body_over_the_cap_is_answered_413_before_reading_it(run) -> None:
    async def main() -> None:
        _, t = Harness(echo, max_body_size=10).connect()
        t.feed(req("POST", "/v1/messages", b"x" * 11)[:-11])  # the head only
        await t.wait_closed()
        (response,) = parse_responses(t.take())
        assert response.status == 413
        assert error_of(response) == {
            "type": "request_too_large",
            "message": "request body too large (limit 10 bytes)",
        }
        assert response.header(b"connection") == b"close"

    run(main())


def test_chunked_body_over_the_cap_is_answered_413(run) -> None:
    async def main() -> None:
        h = Harness(echo, max_body_size=10)
        _, t = h.connect()
        t.feed(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
        assert not t.is_closing()
        t.feed(b"6\r\nghijkl\r\n")
        await t.wait_closed()
        assert [r.status for r in parse_responses(t.take())] == [413]
        assert not h.state.tasks

    run(main())


def test_body_at_the_cap_is_accepted(run) -> None:
    async def main() -> None:
        _, t = Harness(echo, max_body_size=10).connect()
        t.feed(req("POST", "/", b"x" * 10))
        await t.wait_bytes(b"x" * 10)
        assert parse_responses(t.take())[0].body == b"POST" + b"x" * 10

    run(main())


def test_oversized_head_is_answered_431(run) -> None:
    async def main() -> None:
        _, t = Harness(echo, max_header_bytes=1024).connect()
        t.feed(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2000)
        await t.wait_closed()
        (response,) = parse_responses(t.take())
        assert response.status == 431
        assert error_of(response)["message"] == "request header fields too large"

    run(main())


def test_header_flood_is_answered_431(run) -> None:
    async def main() -> None:
        _, t = Harness(echo, max_header_count=100).connect()
        flood = [f"X-H{i}: v" for i in range(100)]  # plus Host: 101 fields
        t.feed(req("GET", "/", headers=flood))
        await t.wait_closed()
        (response,) = parse_responses(t.take())
        assert response.status == 431
        assert error_of(response)["message"] == "too many header fields (limit 100)"

    run(main())


def test_header_count_at_the_limit_is_accepted(run) -> None:
    async def main() -> None:
        _, t = Harness(echo, max_header_count=100).connect()
        t.feed(req("GET", "/", headers=[f"X-H{i}: v" for i in range(99)]))
        await t.wait_bytes(b"GET")
        assert parse_responses(t.take())[0].status == 200

    run(main())


def test_expect_100_continue_gets_an_interim_response(run) -> None:
    async def main() -> None:
        _, t = Harness(echo).connect()
        t.feed(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        await t.wait_bytes(b"\r\n\r\n")
        assert t.take() == b"HTTP/1.1 100 \r\n\r\n"
        t.feed(b"hi")
        await t.wait_bytes(b"POSThi")

    run(main())


# --------------------------------------------------------------------------- timeouts


def test_slowloris_is_dropped_at_the_header_timeout(run) -> None:
    async def main() -> None:
        h = Harness(echo, header_timeout=0.05)
        _, t = h.connect()
        t.feed(b"GET / HTTP/1.1\r\n")
        t.feed(b"Host: t\r\n")
        await t.wait_closed()
        assert t.buffer == b""
        await settle()
        assert not h.state.connections

    run(main())


def test_silent_fresh_connection_is_dropped_at_the_header_timeout(run) -> None:
    async def main() -> None:
        _, t = Harness(echo, header_timeout=0.05, keep_alive_timeout=60).connect()
        await t.wait_closed()
        assert t.buffer == b""

    run(main())


def test_idle_keep_alive_connection_is_closed(run) -> None:
    async def main() -> None:
        _, t = Harness(echo, keep_alive_timeout=0.05, header_timeout=60).connect()
        t.feed(req("GET", "/"))
        await t.wait_bytes(b"GET")
        await t.wait_closed()
        assert [r.status for r in parse_responses(t.take())] == [200]

    run(main())


def test_stalled_body_is_answered_408(run) -> None:
    async def main() -> None:
        _, t = Harness(echo, body_timeout=0.05).connect()
        t.feed(req("POST", "/", b"0123456789")[:-8])
        await t.wait_closed()
        (response,) = parse_responses(t.take())
        assert response.status == 408
        assert error_of(response)["message"] == "request body not received in time"

    run(main())


def test_a_busy_response_is_not_subject_to_read_timeouts(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def app(request: Request, exchange: Exchange) -> None:
            exchange.start_stream(200, SSE_HEADERS)
            await gate.wait()
            exchange.write(b"late")
            exchange.end()

        harness = Harness(app, header_timeout=0.01, body_timeout=0.01, keep_alive_timeout=10)
        _, t = harness.connect()
        t.feed(req("GET", "/"))
        await t.wait_bytes(b"\r\n\r\n")
        # Outlive every read timeout by waiting on a timer of our own; the watchdog stays quiet.
        await asyncio.sleep(0.05)
        assert not t.is_closing()
        gate.set()
        await t.wait_bytes(b"0\r\n\r\n")
        assert parse_responses(t.take())[0].body == b"late"

    run(main())


# --------------------------------------------------------------------------- streaming


def test_streamed_chunks_are_framed_byte_exact(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS)
        exchange.write(b"event: ping\ndata: {}\n\n")
        exchange.write(b"")
        exchange.write(b"x" * 300)
        exchange.end()

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("POST", "/v1/messages", b"{}"))
        await t.wait_bytes(b"0\r\n\r\n")
        head, _, body = bytes(t.buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        lines = head.split(b"\r\n")[1:]
        assert b"content-type: text/event-stream" in lines
        assert b"cache-control: no-cache" in lines
        assert b"x-accel-buffering: no" in lines
        assert b"Transfer-Encoding: chunked" in lines
        assert not any(line.lower().startswith(b"content-length") for line in lines)
        assert body == (
            b"16\r\nevent: ping\ndata: {}\n\n\r\n"
            + b"12c\r\n"
            + b"x" * 300
            + b"\r\n"
            + b"0\r\n\r\n"
        )
        # The head, then the chunks and the terminator: written in one loop iteration,
        # they leave in one send.
        assert len(t.writes) == 2

    run(main())


def test_end_keeps_the_connection_alive_for_the_next_request(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        if request.path == "/stream":
            exchange.start_stream(200, SSE_HEADERS)
            exchange.write(b"data: 1\n\n")
            exchange.end()
        else:
            await echo(request, exchange)

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("POST", "/stream", b"{}"))
        await t.wait_bytes(b"0\r\n\r\n")
        t.feed(req("POST", "/next", b"after"))
        await t.wait_bytes(b"POSTafter")
        first, second = parse_responses(t.take())
        assert first.body == b"data: 1\n\n"
        assert second.body == b"POSTafter"
        assert not t.is_closing()

    run(main())


def test_http10_stream_is_raw_and_closes(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS)
        exchange.write(b"data: 1\n\n")
        exchange.end()

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(b"GET / HTTP/1.0\r\n\r\n")
        await t.wait_closed()
        head, _, body = t.take().partition(b"\r\n\r\n")
        assert b"Connection: close" in head.split(b"\r\n")
        assert body == b"data: 1\n\n"

    run(main())


def test_head_requests_get_headers_without_a_body(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        if request.path == "/stream":
            exchange.start_stream(200, SSE_HEADERS)
            exchange.write(b"data: 1\n\n")
            exchange.end()
        else:
            exchange.send(200, [(b"content-type", b"text/plain")], b"hello")

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("HEAD", "/"))
        await t.wait_bytes(b"\r\n\r\n")
        t.feed(req("HEAD", "/stream"))
        await t.wait_for(lambda t: t.buffer.count(b"\r\n\r\n") == 2)
        t.feed(req("GET", "/"))
        await t.wait_bytes(b"hello")
        data = t.take()
        plain, streamed, rest = data.split(b"\r\n\r\n", 2)
        assert b"content-length: 5" in plain.split(b"\r\n")
        assert b"Transfer-Encoding: chunked" in streamed.split(b"\r\n")
        (get,) = parse_responses(rest)
        assert get.body == b"hello"
        assert not t.is_closing()

    run(main())


# --------------------------------------------------------------------------- flow control


def test_drain_blocks_while_writing_is_paused(run) -> None:
    async def main() -> None:
        step = asyncio.Event()
        draining = asyncio.Event()
        log: list[str] = []

        async def app(request: Request, exchange: Exchange) -> None:
            exchange.start_stream(200, SSE_HEADERS)
            exchange.write(b"one")
            await step.wait()
            exchange.write(b"two")
            if exchange.paused:
                draining.set()
                await exchange.drain()
                log.append("resumed")
            exchange.write(b"three")
            exchange.end()

        proto, t = Harness(app).connect()
        assert t.write_limits == (64 * 1024, None)
        t.feed(req("GET", "/"))
        await t.wait_bytes(b"3\r\none\r\n")
        proto.pause_writing()
        step.set()
        await asyncio.wait_for(draining.wait(), 5)
        await settle()
        assert log == []
        assert t.buffer.endswith(b"3\r\ntwo\r\n")  # nothing after "two" while paused
        proto.resume_writing()
        await t.wait_bytes(b"0\r\n\r\n")
        assert log == ["resumed"]
        assert parse_responses(t.take())[0].body == b"onetwothree"

    run(main())


def test_drain_returns_at_once_when_not_paused(run) -> None:
    async def main() -> None:
        done = asyncio.Event()

        async def app(request: Request, exchange: Exchange) -> None:
            exchange.start_stream(200, SSE_HEADERS)
            assert not exchange.paused
            await exchange.drain()
            exchange.end()
            done.set()

        _, t = Harness(app).connect()
        t.feed(req("GET", "/"))
        await asyncio.wait_for(done.wait(), 5)

    run(main())


# --------------------------------------------------------------------------- disconnects


def test_client_disconnect_mid_stream_cancels_the_app_and_wakes_drain(run) -> None:
    async def main() -> None:
        draining = asyncio.Event()
        cancelled = asyncio.Event()
        outcome: list[str] = []
        exchanges: list[Exchange] = []

        async def app(request: Request, exchange: Exchange) -> None:
            exchanges.append(exchange)
            exchange.on_disconnect(lambda: outcome.append("callback"))
            exchange.start_stream(200, SSE_HEADERS)
            exchange.write(b"data: 1\n\n")
            draining.set()
            try:
                await exchange.drain()
            except asyncio.CancelledError:
                outcome.append("cancelled")
                try:
                    await exchange.drain()
                except ClientDisconnected:
                    outcome.append("drain raised")
                exchange.write(b"ignored")  # no effect, no error
                cancelled.set()
                raise

        h = Harness(app)
        proto, t = h.connect()
        proto.pause_writing()  # a client that reads nothing
        t.feed(req("GET", "/"))
        await asyncio.wait_for(draining.wait(), 5)
        watcher = asyncio.ensure_future(exchanges[0].wait_disconnected())
        await settle()
        assert not watcher.done()
        before = bytes(t.buffer)
        t.client_disconnect()
        await asyncio.wait_for(cancelled.wait(), 5)
        await asyncio.wait_for(watcher, 5)
        await asyncio.wait_for(h.state.wait_idle(), 5)
        assert [o for o in outcome if o != "callback"] == ["cancelled", "drain raised"]
        assert outcome.count("callback") == 1
        assert exchanges[0].disconnected and not exchanges[0].finished
        assert bytes(t.buffer) == before

    run(main())


def test_disconnect_while_waiting_upstream_is_noticed(run, caplog) -> None:
    async def main() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def app(request: Request, exchange: Exchange) -> None:
            started.set()
            try:
                await asyncio.Event().wait()  # an upstream that never answers
            except asyncio.CancelledError:
                cancelled.set()
                raise

        h = Harness(app)
        _, t = h.connect()
        t.feed(req("POST", "/v1/messages", b"{}"))
        await asyncio.wait_for(started.wait(), 5)
        t.client_disconnect()
        await asyncio.wait_for(cancelled.wait(), 5)
        await asyncio.wait_for(h.state.wait_idle(), 5)
        assert t.buffer == b""

    with caplog.at_level(logging.INFO, logger="kiro_fast.protocol"):
        run(main())
    (record,) = [r for r in caplog.records if r.name == "kiro_fast.protocol"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == "client disconnected before the response completed"
    assert len(record.request_id) == 16


def test_access_log_line_carries_request_id_and_status(run, caplog) -> None:
    async def main() -> bytes | None:
        _, t = Harness(echo, access_log=True).connect()
        t.feed(req("POST", "/v1/messages?beta=true", b"{}"))
        await t.wait_bytes(b"POST{}")
        await settle()
        return parse_responses(t.take())[0].header(b"x-request-id")

    with caplog.at_level(logging.INFO, logger="kiro_fast.access"):
        request_id = run(main())
    (record,) = [r for r in caplog.records if r.name == "kiro_fast.access"]
    assert record.getMessage() == '127.0.0.1 "POST /v1/messages?beta=true" 200'
    assert record.request_id == request_id.decode()
    assert record.status == 200


# --------------------------------------------------------------------------- app errors


def test_app_exception_before_the_response_is_a_500_in_anthropic_shape(run, caplog) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        raise ValueError("boom")

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("POST", "/v1/messages", b"{}"))
        await t.wait_bytes(b"}}")
        (response,) = parse_responses(t.take())
        assert response.status == 500
        assert response.json() == {
            "type": "error",
            "error": {"type": "api_error", "message": "internal server error"},
        }
        assert not t.is_closing()  # the response was complete; keep-alive stands

    with caplog.at_level(logging.ERROR, logger="kiro_fast.protocol"):
        run(main())
    (record,) = [r for r in caplog.records if r.name == "kiro_fast.protocol"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


def test_kiro_fast_error_is_rendered_with_its_own_status_and_headers(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        raise RateLimited("slow down", headers={"retry-after": "7"})

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("GET", "/"))
        await t.wait_bytes(b"}}")
        (response,) = parse_responses(t.take())
        assert response.status == 429
        assert response.header(b"retry-after") == b"7"
        assert error_of(response) == {"type": "rate_limit_error", "message": "slow down"}

    run(main())


def test_error_renderer_is_pluggable(run) -> None:
    def openai_style(path: str, status: int, error_type: str, message: str) -> bytes:
        return orjson.dumps({"error": {"path": path, "code": status, "message": message}})

    async def app(request: Request, exchange: Exchange) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        _, t = Harness(app, error_body=openai_style).connect()
        t.feed(req("POST", "/v1/chat/completions?x=1", b"{}"))
        await t.wait_bytes(b"}}")
        (response,) = parse_responses(t.take())
        assert response.json() == {
            "error": {
                "path": "/v1/chat/completions",
                "code": 500,
                "message": "internal server error",
            }
        }

    run(main())


def test_app_exception_after_the_stream_started_closes_the_connection(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS)
        exchange.write(b"data: 1\n\n")
        raise ValueError("boom")

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("GET", "/"))
        await t.wait_closed()
        assert t.buffer.endswith(b"data: 1\n\n\r\n")  # no terminating chunk: truncated

    run(main())


def test_app_returning_without_a_response_is_a_500(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        return None

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("GET", "/"))
        await t.wait_bytes(b"}}")
        assert parse_responses(t.take())[0].status == 500

    run(main())


def test_misuse_of_the_exchange_raises(run) -> None:
    errors: list[str] = []

    async def app(request: Request, exchange: Exchange) -> None:
        try:
            exchange.write(b"x")
        except RuntimeError:
            errors.append("write before start")
        exchange.send(200, [], b"ok")
        try:
            exchange.send(200, [], b"again")
        except RuntimeError:
            errors.append("second send")

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("GET", "/"))
        await t.wait_bytes(b"ok")
        await settle()
        assert errors == ["write before start", "second send"]
        assert [r.body for r in parse_responses(t.take())] == [b"ok"]

    run(main())


# --------------------------------------------------------------------------- request ids


def test_request_id_is_on_the_response_and_in_log_records_inside_the_app(run) -> None:
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Capture()
    handler.addFilter(RequestIdFilter())
    app_logger = logging.getLogger("tests.protocol.app")
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.INFO)

    async def app(request: Request, exchange: Exchange) -> None:
        app_logger.info("handling")
        await asyncio.sleep(0)
        app_logger.info("still handling")
        exchange.send(200, [], b"ok")

    async def main() -> list[bytes | None]:
        _, t = Harness(app).connect()
        t.feed(req("GET", "/"))
        await t.wait_bytes(b"ok")
        t.feed(req("GET", "/"))
        await t.wait_for(lambda t: t.buffer.count(b"ok") == 2)
        app_logger.info("outside")
        return [r.header(b"x-request-id") for r in parse_responses(t.take())]

    try:
        ids = run(main())
    finally:
        app_logger.removeHandler(handler)
    assert [r.request_id for r in records] == [  # type: ignore[attr-defined]
        ids[0].decode(),
        ids[0].decode(),
        ids[1].decode(),
        ids[1].decode(),
        "-",
    ]


def test_incoming_request_id_is_used_only_when_trusted_and_well_formed(run) -> None:
    async def main() -> list[bytes | None]:
        out = []
        for trusted, value in [(True, "abc-123"), (True, "a" * 65), (False, "abc-123")]:
            _, t = Harness(echo, trust_request_id=trusted).connect()
            t.feed(req("GET", "/", headers=[f"X-Request-Id: {value}"]))
            await t.wait_bytes(b"GET")
            out.append(parse_responses(t.take())[0].header(b"x-request-id"))
        return out

    accepted, too_long, untrusted = run(main())
    assert accepted == b"abc-123"
    assert too_long is not None and len(too_long) == 16 and too_long != b"a" * 65
    assert untrusted is not None and untrusted != b"abc-123"


# --------------------------------------------------------------------------- shutdown


def test_graceful_shutdown_closes_idle_finishes_busy_and_cancels_stuck(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        stuck_cancelled = asyncio.Event()

        async def app(request: Request, exchange: Exchange) -> None:
            if request.path == "/idle":
                exchange.send(200, [], b"done")
                return
            exchange.start_stream(200, SSE_HEADERS)
            exchange.write(b"data: 1\n\n")
            if request.path == "/busy":
                await gate.wait()
                exchange.write(b"data: 2\n\n")
                exchange.end()
                return
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                stuck_cancelled.set()
                raise

        server = Server(app, ServerOptions(access_log=False))
        harness = Harness(app, state=server.state)
        _, idle = harness.connect()
        _, busy = harness.connect()
        _, stuck = harness.connect()
        _, fresh = harness.connect()
        idle.feed(req("GET", "/idle"))
        busy.feed(req("GET", "/busy"))
        stuck.feed(req("GET", "/stuck"))
        for t in (idle, busy, stuck):
            await t.wait_bytes(b"\r\n\r\n")

        shutdown = asyncio.ensure_future(server.shutdown(timeout=0.5))
        await idle.wait_closed()
        await fresh.wait_closed()
        assert not busy.is_closing() and not stuck.is_closing()
        gate.set()
        await busy.wait_closed()
        assert parse_responses(busy.take())[0].body == b"data: 1\n\ndata: 2\n\n"
        assert not shutdown.done()
        await asyncio.wait_for(shutdown, 10)
        assert stuck_cancelled.is_set()
        assert stuck.is_closing()
        assert not server.state.connections and not server.state.tasks

    run(main())


def test_shutdown_before_the_response_starts_adds_connection_close(run) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def app(request: Request, exchange: Exchange) -> None:
            await gate.wait()
            exchange.send(200, [], b"bye")

        proto, t = Harness(app).connect()
        t.feed(req("GET", "/"))
        await settle()
        proto.shutdown()
        assert not t.is_closing()
        gate.set()
        await t.wait_closed()
        (response,) = parse_responses(t.take())
        assert response.header(b"connection") == b"close"
        assert response.body == b"bye"

    run(main())


def test_shutdown_drops_a_client_that_stopped_reading_at_the_deadline(run) -> None:
    async def main() -> None:
        server = Server(echo, ServerOptions(access_log=False))
        _, t = Harness(echo, state=server.state).connect(stall_close=True)
        t.feed(req("GET", "/"))
        await t.wait_bytes(b"GET")
        await asyncio.wait_for(server.shutdown(timeout=0.05), 10)
        assert t.aborted  # close() alone would wait for the flush forever
        assert server.state.idle

    run(main())


# --------------------------------------------------------------------------- coalesced writes


def test_first_chunk_leaves_with_the_head_and_last_with_the_terminator(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS, b"first")
        exchange.write(b"middle")
        exchange.end(b"the end")

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("POST", "/v1/messages", b"{}"))
        await t.wait_bytes(b"0\r\n\r\n")
        assert len(t.writes) == 2
        head, sep, first = t.writes[0].partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert first == b"5\r\nfirst\r\n"
        assert t.writes[1] == b"6\r\nmiddle\r\n7\r\nthe end\r\n0\r\n\r\n"
        (response,) = parse_responses(t.take())
        assert response.body == b"firstmiddlethe end"

    run(main())


def test_a_whole_stream_leaves_in_one_write_and_the_connection_stays_open(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS, b"data: all\n\n", end=True)
        assert exchange.finished
        exchange.end(b"ignored: already finished")

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("POST", "/v1/messages", b"{}"))
        await t.wait_bytes(b"0\r\n\r\n")
        (write,) = t.writes
        assert write.endswith(b"\r\n\r\nb\r\ndata: all\n\n\r\n0\r\n\r\n")
        t.feed(req("POST", "/v1/messages", b"{}"))
        await t.wait_for(lambda t: len(t.writes) == 2)
        responses = parse_responses(t.take())
        assert [r.body for r in responses] == [b"data: all\n\n"] * 2
        assert not t.is_closing()

    run(main())


def test_coalesced_writes_to_an_http10_client_are_raw(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS, b"one ", end=request.path == "/whole")
        if request.path != "/whole":
            exchange.end(b"two")

    async def main() -> None:
        for path, body in (("/whole", b"one "), ("/split", b"one two")):
            _, t = Harness(app).connect()
            t.feed(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            await t.wait_closed()
            head, _, rest = t.writes[0].partition(b"\r\n\r\n")
            assert b"Connection: close" in head.split(b"\r\n")
            assert rest == b"one "
            assert b"".join(t.writes).partition(b"\r\n\r\n")[2] == body

    run(main())


def test_coalesced_bytes_are_dropped_for_head_requests(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS, b"data: 1\n\n", end=True)

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("HEAD", "/"))
        await t.wait_bytes(b"\r\n\r\n")
        (write,) = t.writes
        assert write.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
        assert b"data: 1" not in write

    run(main())


def test_stream_head_lines_in_order_without_per_request_validation(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS)
        exchange.end()

    async def main() -> None:
        _, t = Harness(app).connect()
        for _ in range(2):  # the second head comes from the cached rendering
            t.feed(req("POST", "/v1/messages", b"{}"))
            await t.wait_bytes(b"0\r\n\r\n")
            head = t.take().partition(b"\r\n\r\n")[0].split(b"\r\n")
            assert head[0] == b"HTTP/1.1 200 OK"
            names = [line.partition(b":")[0].lower() for line in head[1:]]
            assert names == [
                b"date",
                b"server",
                b"content-type",
                b"cache-control",
                b"x-accel-buffering",
                b"x-request-id",
                b"transfer-encoding",
            ]
            assert b"server: kiro-fast" in head
            assert b"content-type: text/event-stream" in head

    run(main())


def test_illegal_header_in_a_stream_head_is_refused_before_any_byte(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, [(b"x-bad", b"evil\r\ninjected: yes")])

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("GET", "/"))
        await t.wait_closed()
        assert b"injected" not in t.take()

    run(main())


def test_framing_headers_from_the_app_go_through_h11(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, [(b"content-type", b"text/plain"), (b"connection", b"close")])
        exchange.end(b"bye")

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("GET", "/"))
        await t.wait_closed()
        (response,) = parse_responses(t.take())
        assert response.header(b"connection") == b"close"
        assert response.header(b"x-request-id")
        assert response.body == b"bye"

    run(main())


def test_release_body_empties_only_the_body() -> None:
    request = Request("POST", "/v1/messages", "/v1/messages", "", [], b"{...}", "id1", None)
    request.release_body()
    assert request.body == b""
    assert (request.method, request.path, request.request_id) == ("POST", "/v1/messages", "id1")


def test_a_written_chunk_leaves_with_the_next_loop_iteration(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS)
        exchange.write(b"one")
        exchange.write(b"two")
        await transport.wait_bytes(b"3\r\ntwo\r\n")  # sent without end(): not held back
        exchange.write(b"three")
        await transport.wait_bytes(b"5\r\nthree\r\n")
        exchange.end()

    async def main() -> None:
        nonlocal transport
        _, transport = Harness(app).connect()
        transport.feed(req("POST", "/v1/messages", b"{}"))
        await transport.wait_bytes(b"0\r\n\r\n")
        assert transport.writes[1:] == [
            b"3\r\none\r\n3\r\ntwo\r\n",
            b"5\r\nthree\r\n",
            b"0\r\n\r\n",
        ]

    transport: Any = None
    run(main())


def test_a_held_chunk_is_dropped_once_the_client_left(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS)
        exchange.write(b"never sent")
        transport.client_disconnect()
        await exchange.wait_disconnected()

    async def main() -> None:
        nonlocal transport
        _, transport = Harness(app).connect()
        transport.feed(req("POST", "/v1/messages", b"{}"))
        await transport.wait_for(lambda t: t.lost)
        assert b"never sent" not in bytes(transport.buffer)

    transport: Any = None
    run(main())


def test_held_chunks_go_out_before_an_app_failure_closes_the_connection(run) -> None:
    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS)
        exchange.write(b"partial")
        raise RuntimeError("broke mid-stream")

    async def main() -> None:
        _, t = Harness(app).connect()
        t.feed(req("POST", "/v1/messages", b"{}"))
        await t.wait_closed()
        assert bytes(t.buffer).endswith(b"7\r\npartial\r\n")

    run(main())


def test_a_big_write_leaves_at_once_with_what_was_held(run) -> None:
    from kiro_fast.protocol import HOLD_LIMIT

    big = b"x" * HOLD_LIMIT

    async def app(request: Request, exchange: Exchange) -> None:
        exchange.start_stream(200, SSE_HEADERS)
        exchange.write(b"small")
        assert len(transport.writes) == 1  # the head; the small chunk is held
        exchange.write(big)
        # Sent now, so paused (and drain) see it: no more than HOLD_LIMIT is ever held.
        assert transport.writes[1] == b"5\r\nsmall\r\n" + b"%x\r\n%s\r\n" % (len(big), big)
        exchange.end()

    async def main() -> None:
        nonlocal transport
        _, transport = Harness(app).connect()
        transport.feed(req("POST", "/v1/messages", b"{}"))
        await transport.wait_bytes(b"\r\n0\r\n\r\n")
        assert transport.writes[2:] == [b"0\r\n\r\n"]

    transport: Any = None
    run(main())
