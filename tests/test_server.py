"""Server on real loopback sockets: listeners, keep-alive, streaming, shutdown, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Coroutine
from typing import Any

import pytest
import uvloop

from kiro_fast import server as server_module
from kiro_fast.protocol import Exchange, Request, ServerOptions
from kiro_fast.server import Server, install_loop, new_event_loop, new_event_loop_policy, serve

WAIT = 10.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest):
    loop = asyncio.new_event_loop() if request.param == "asyncio" else uvloop.new_event_loop()

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        return loop.run_until_complete(asyncio.wait_for(coro, 60))

    yield runner
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


async def app(request: Request, exchange: Exchange) -> None:
    if request.path == "/stream":
        exchange.start_stream(200, [(b"content-type", b"text/event-stream")])
        for i in range(3):
            exchange.write(b"data: %d\n\n" % i)
            if exchange.paused:
                await exchange.drain()
        exchange.end()
    else:
        exchange.send(200, [(b"content-type", b"text/plain")], b"hello " + request.body)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one response framed by Content-Length or chunked encoding."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), None)
    if length is not None:
        return head, await reader.readexactly(length)
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return head, body
        body += chunk[:-2]


def test_requests_over_real_sockets_then_shutdown(run) -> None:
    async def main() -> None:
        server = Server(app, ServerOptions(access_log=False))
        await server.start("127.0.0.1", 0)
        port = server.bound_port
        assert port > 0
        assert [s.getsockname()[1] for s in server.sockets] == [port]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nworld")
        head, body = await asyncio.wait_for(read_response(reader), WAIT)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nx-request-id: " in head
        assert body == b"hello world"
        writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")  # same connection
        head, body = await asyncio.wait_for(read_response(reader), WAIT)
        assert b"Transfer-Encoding: chunked" in head
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert len(server.state.connections) == 1

        await asyncio.wait_for(server.shutdown(timeout=5), WAIT)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the server
        assert server.state.idle  # no connection, no task left
        assert not server.sockets
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()

    run(main())


def test_listens_on_a_given_socket(run) -> None:
    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = Server(app, ServerOptions(access_log=False))
        await server.start(sock=sock)
        assert server.bound_port == port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        head, body = await asyncio.wait_for(read_response(reader), WAIT)
        assert body == b"hello "
        writer.close()
        await writer.wait_closed()
        await server.shutdown(timeout=5)

    run(main())


def test_serve_stops_gracefully_on_sigterm(run) -> None:
    async def main() -> None:
        ready: asyncio.Future[Server] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(
            serve(app, ServerOptions(access_log=False, shutdown_timeout=5), ready=ready.set_result)
        )
        server = await asyncio.wait_for(ready, WAIT)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        _, body = await asyncio.wait_for(read_response(reader), WAIT)
        assert body == b"hello "
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, WAIT)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        assert not server.state.connections and not server.state.tasks
        writer.close()
        await writer.wait_closed()

    run(main())
    # serve() removed its handlers again: SIGTERM has its default action back.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_loop_selection_prefers_uvloop() -> None:
    assert isinstance(new_event_loop_policy(), uvloop.EventLoopPolicy)
    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    try:
        assert install_loop() == "uvloop"
        assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
    finally:
        asyncio.set_event_loop_policy(None)


def test_loop_selection_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "uvloop", None)
    assert type(new_event_loop_policy()) is asyncio.DefaultEventLoopPolicy
    try:
        assert install_loop() == "asyncio"
        assert type(asyncio.get_event_loop_policy()) is asyncio.DefaultEventLoopPolicy
    finally:
        asyncio.set_event_loop_policy(None)
    loop = new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
