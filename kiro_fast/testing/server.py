"""The fake upstream's HTTP/1.1 server: one ``asyncio.Protocol`` per connection.

Owns the sockets: parsing requests (h11, a fresh parser per request), keep-alive,
writing answers, and the timing of streamed bodies. Routes decide *what* to answer
(:mod:`~kiro_fast.testing.routes`); this module decides *when bytes go out*:

* Response heads are byte templates; h11 is used only to read requests.
* An event-stream body without a delivery plan goes out as head + all frames + the
  last chunk in **one** ``transport.write``; nothing is awaited per frame.
* Paced streams are advanced by one global ticker (``loop.call_at`` every
  ``tick_ms``), one frame per stream per tick; trickled and chunked streams by their own
  ``call_later`` chain; stalled streams wait for :meth:`FakeUpstream.release` or the
  client to go away. Every timer is the event loop's, so tests synchronise on
  :meth:`FakeUpstream.wait_until` and friends instead of sleeping.

Runs on whatever loop is running (asyncio or uvloop), in the proxy's process or alone
(``python -m kiro_fast.testing``). Must not know the request rules or the answers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import time
from collections.abc import Callable
from http import HTTPStatus
from types import TracebackType
from typing import Final, cast

import h11

from .accounts import Accounts
from .replies import LAST_CHUNK, CloseReply, DelayedReply, JsonReply, Reply, StreamReply
from .routes import RecordedRequest, Router, parse_query
from .scenarios import McpError, Scenario
from .settings import FakeSettings

log = logging.getLogger("kiro_fast.testing")

_STREAM_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: application/vnd.amazon.eventstream\r\n"
    b"transfer-encoding: chunked\r\n"
    b"x-amzn-requestid: %s\r\n"
    b"%s\r\n"
)
_JSON_HEAD: Final = (
    b"HTTP/1.1 %d %s\r\n"
    b"content-type: application/json\r\n"
    b"content-length: %d\r\n"
    b"x-amzn-requestid: %s\r\n"
    b"%s%s\r\n"
)
_CLOSE: Final = b"connection: close\r\n"
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_RST_LINGER: Final = struct.pack("ii", 1, 0)
#: Bytes a busy connection buffers from a pipelining client before it stops reading.
_PENDING_LIMIT: Final = 1024 * 1024
_PHRASES: Final = {s.value: s.phrase.encode() for s in HTTPStatus}


class FakeUpstream:
    """A fake Kiro upstream on loopback; see the package docstring for the whole API.

    Args:
        host: interface to listen on.
        port: TCP port; 0 picks a free one (read :attr:`url` after :meth:`start`).
        settings: behaviour switches; mutable while running.
        clock: wall clock for token expiry and the device flow (tests may fake it).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        settings: FakeSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.port = port
        self.settings = settings or FakeSettings()
        self.accounts = Accounts(self.settings, clock=clock)
        self.router = Router(self.settings, self.accounts)
        #: every request received, in order (when ``settings.record_requests``)
        self.requests: list[RecordedRequest] = []
        #: streams the client left before they were complete
        self.client_disconnects = 0
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[_Connection] = set()
        self._stalled: list[_Stream] = []
        self._paced: dict[_Stream, None] = {}
        self._tick_handle: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        self._in_tick = False
        self._stopping = False
        self._waiters: list[asyncio.Future[None]] = []
        self._ids = itertools.count(1)

    # ----------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """``http://host:port`` (valid after :meth:`start`)."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = False
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection, stalled or not."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for conn in list(self._connections):
            conn.abort()
        await self._server.wait_closed()
        self._server = None
        self._notify()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------------- scripting

    def enqueue(self, scenario: Scenario, count: int = 1) -> None:
        """Answer the next ``count`` accepted chat requests with ``scenario``."""
        self.router.chat_queue.extend([scenario] * count)

    def enqueue_mcp(self, item: Scenario | McpError, count: int = 1) -> None:
        """Script the next ``POST /mcp`` answers: a scenario's error/reset/delay or an RPC error."""
        self.router.mcp_queue.extend([item] * count)

    @property
    def counts(self) -> dict[str, int]:
        """Requests per endpoint name (``generateAssistantResponse``, ``token``…)."""
        return self.router.counts

    @property
    def stalled(self) -> int:
        """Streams now waiting for :meth:`release`."""
        return len(self._stalled)

    def release(self) -> int:
        """Let every stalled stream send the rest of its frames; return how many."""
        streams, self._stalled = self._stalled, []
        for stream in streams:
            stream.released = True
            stream.advance()
        self._notify()
        return len(streams)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate()`` holds; it is re-checked on every state change.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter

    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        await self.wait_until(lambda: len(self.requests) >= count, timeout)

    async def wait_for_stalled(self, count: int = 1, timeout: float = 10.0) -> None:
        await self.wait_until(lambda: len(self._stalled) >= count, timeout)

    async def wait_for_disconnects(self, count: int = 1, timeout: float = 10.0) -> None:
        await self.wait_until(lambda: self.client_disconnects >= count, timeout)

    # ----------------------------------------------------------------------- internals

    def _notify(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _request_id(self) -> bytes:
        return b"00000000-fa4e-4000-8000-%012x" % next(self._ids)

    def _stall(self, stream: _Stream) -> None:
        stream.recorded.outcome = "stalled"
        self._stalled.append(stream)
        self._notify()

    def _pace(self, stream: _Stream) -> None:
        """Give ``stream`` its next frame on the next tick of the global ticker."""
        self._paced[stream] = None
        if self._tick_handle is None and not self._in_tick and self._loop is not None:
            self._next_tick = self._loop.time() + self.settings.tick_ms / 1000
            self._tick_handle = self._loop.call_at(self._next_tick, self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        streams = list(self._paced)
        self._paced.clear()
        self._in_tick = True
        try:
            for stream in streams:
                stream.advance()
        finally:
            self._in_tick = False
        if self._paced and self._loop is not None:
            # Keep the cadence; when late, tick at once rather than drift.
            self._next_tick = max(self._next_tick + self.settings.tick_ms / 1000, self._loop.time())
            self._tick_handle = self._loop.call_at(self._next_tick, self._tick)

    def _forget(self, stream: _Stream) -> None:
        self._paced.pop(stream, None)
        if stream in self._stalled:
            self._stalled.remove(stream)


class _Stream:
    """One event-stream body on its way out, following its delivery plan."""

    __slots__ = ("conn", "reply", "pieces", "index", "recorded", "released", "handle", "done")

    def __init__(self, conn: _Connection, reply: StreamReply, recorded: RecordedRequest) -> None:
        self.conn = conn
        self.reply = reply
        self.pieces = reply.pieces()
        self.index = 0
        self.recorded = recorded
        self.released = False
        self.handle: asyncio.TimerHandle | None = None
        self.done = False
        recorded.cuts = reply.delivery.cuts

    def start(self, head: bytes) -> None:
        delivery = self.reply.delivery
        plain = not (delivery.interval_ms or delivery.paced)
        if plain and delivery.stall_after is None and delivery.disconnect_after is None:
            body = self.reply.body.joined if delivery.cuts is None else b"".join(self.pieces)
            self.conn.write(head + body + LAST_CHUNK)
            self.index = len(self.pieces)
            self._complete()
            return
        self.advance(head)

    def _limit(self) -> int:
        delivery = self.reply.delivery
        limit = len(self.pieces)
        if delivery.stall_after is not None and not self.released:
            limit = min(limit, delivery.stall_after)
        if delivery.disconnect_after is not None:
            limit = min(limit, delivery.disconnect_after)
        return limit

    def advance(self, prefix: bytes = b"") -> None:
        """Send what is due now, then arrange for the rest."""
        self.handle = None
        if self.done or self.conn.closed:
            return
        delivery = self.reply.delivery
        limit = self._limit()
        stop = limit if not (delivery.interval_ms or delivery.paced) else min(limit, self.index + 1)
        out = prefix + b"".join(self.pieces[self.index : stop])
        self.index = max(self.index, stop)
        finished = self.index >= len(self.pieces)
        if finished:
            out += LAST_CHUNK
        if out:
            self.conn.write(out)
        if finished:
            self._complete()
        elif self.index >= limit:
            self._pause(delivery.disconnect_after)
        elif delivery.paced:
            self.conn.fake._pace(self)
        elif self.conn.loop is not None:
            self.handle = self.conn.loop.call_later(delivery.interval_ms / 1000, self.advance)

    def _pause(self, disconnect_after: int | None) -> None:
        if disconnect_after is not None and self.index >= disconnect_after:
            self.done = True
            self.recorded.outcome = "closed"
            self.conn.close()
        else:
            self.conn.fake._stall(self)

    def _complete(self) -> None:
        self.done = True
        self.recorded.outcome = "complete"
        self.conn.response_done()

    def cancel(self) -> None:
        self.done = True
        if self.handle is not None:
            self.handle.cancel()
        self.conn.fake._forget(self)


class _Connection(asyncio.Protocol):
    """One client connection: requests in order, one answer at a time."""

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = h11.Connection(h11.SERVER)
        self.closed = False
        self.busy = False
        self.keep_alive = True
        self.pending = bytearray()
        self.reading = False
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.recorded: RecordedRequest | None = None
        self.stream: _Stream | None = None
        self.timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        self.fake._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fake._connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        recorded = self.recorded
        if self.busy and recorded is not None and recorded.outcome in ("pending", "stalled"):
            recorded.outcome = "client_gone"
            if not self.fake._stopping:
                self.fake.client_disconnects += 1
        if self.stream is not None:
            self.stream.cancel()
        self.fake._notify()

    def data_received(self, data: bytes) -> None:
        if self.busy:
            self.pending += data
            if len(self.pending) > _PENDING_LIMIT and self.transport is not None:
                self.transport.pause_reading()
            return
        self.parser.receive_data(data)
        self._read_events()

    def eof_received(self) -> bool | None:
        return None

    # ----------------------------------------------------------------------- requests

    def _read_events(self) -> None:
        self.reading = True
        try:
            self._next_events()
        finally:
            self.reading = False

    def _next_events(self) -> None:
        # Reads ``self.parser`` afresh each turn: a synchronous answer replaces it.
        while not self.busy and not self.closed:
            try:
                event = self.parser.next_event()
            except h11.RemoteProtocolError as exc:
                self._write_json(exc.error_status_hint, b'{"message":"Bad Request"}', close=True)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._begin(event)
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > self.fake.settings.max_request_bytes:
                    self._write_json(413, b'{"message":"Request Entity Too Large"}', close=True)
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()

    def _begin(self, request: h11.Request) -> None:
        self.request = request
        self.body = bytearray()
        connection = b""
        for name, value in request.headers:
            if name == b"connection":
                connection = value.lower()
        if request.http_version == b"1.0":
            self.keep_alive = b"keep-alive" in connection
        else:
            self.keep_alive = b"close" not in connection
        if self.parser.they_are_waiting_for_100_continue:
            self.write(_CONTINUE)

    def _dispatch(self) -> None:
        request = self.request
        assert request is not None
        self.busy = True
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        path, _, query = request.target.decode("latin-1").partition("?")
        method = request.method.decode("ascii")
        recorded = RecordedRequest(method, path, parse_query(query), headers, bytes(self.body))
        self.recorded = recorded
        if self.fake.settings.record_requests:
            self.fake.requests.append(recorded)
        try:
            reply = self.fake.router.handle(recorded)
        except Exception:
            log.exception("fake upstream: handler failed for %s %s", method, path)
            reply = JsonReply.of(500, {"message": "fake upstream bug", "reason": None})
        self.execute(reply)
        self.fake._notify()

    # ----------------------------------------------------------------------- answers

    def execute(self, reply: Reply) -> None:
        self.timer = None
        if self.closed:
            return
        recorded = self.recorded
        assert recorded is not None
        if isinstance(reply, DelayedReply):
            assert self.loop is not None
            self.timer = self.loop.call_later(reply.delay_ms / 1000, self.execute, reply.then)
        elif isinstance(reply, JsonReply):
            recorded.status = reply.status
            recorded.outcome = "complete"
            extra = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in reply.headers)
            self._write_json(reply.status, reply.body, extra=extra, close=not self.keep_alive)
        elif isinstance(reply, CloseReply):
            recorded.status = 0
            recorded.outcome = "closed"
            self.abort() if reply.reset else self.close()
        else:
            recorded.status = 200
            self.stream = _Stream(self, reply, recorded)
            close = b"" if self.keep_alive else _CLOSE
            self.stream.start(_STREAM_HEAD % (self.fake._request_id(), close))

    def _write_json(self, status: int, body: bytes, *, extra: bytes = b"", close: bool) -> None:
        phrase = _PHRASES.get(status, b"Unknown")
        head = _JSON_HEAD % (
            status,
            phrase,
            len(body),
            self.fake._request_id(),
            extra,
            _CLOSE if close else b"",
        )
        self.write(head + body)
        if close:
            self.close()
        else:
            self.response_done()

    def response_done(self) -> None:
        """The answer is complete: close, or read the next request."""
        self.stream = None
        self.fake._notify()
        if not self.keep_alive:
            self.close()
            return
        leftover = self.parser.trailing_data[0] + bytes(self.pending)
        self.parser = h11.Connection(h11.SERVER)
        self.pending = bytearray()
        self.busy = False
        if self.transport is not None:
            self.transport.resume_reading()
        if leftover:
            self.parser.receive_data(leftover)
            if not self.reading:
                self._read_events()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), not a FIN."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
            except OSError:
                pass
        self.transport.abort()
