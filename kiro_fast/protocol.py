"""The HTTP/1.1 server side: an ``asyncio.Protocol`` over h11, one per TCP connection.

What this module owns:

* :class:`HttpProtocol` holds *connection* state: the transport, the ``h11.Connection``,
  one watchdog timer, read/write flow control and the keep-alive decision.
* :class:`Exchange` holds *request* state for one request/response cycle: the
  :class:`Request`, whether the response started or finished, and whether the client left.
  The application gets one per request and answers through it.
* The answers this layer gives on its own: 400/431 for bytes h11 rejects, 413 for a body
  over the cap, 408 for a stalled body, 500 when the application fails before answering.
  Their bodies come from a pluggable renderer (Anthropic's error shape by default).

Strategy:

* ``data_received`` is synchronous. It feeds h11 and loops ``next_event()``; a complete
  request starts exactly one task running ``app(request, exchange)``. Nothing is awaited
  per read.
* h11 sees the request, the response *head* and ``EndOfMessage`` only. A streamed body is
  written straight to the transport as hand-framed chunks: h11's chunked writer keeps no
  state, so skipping ``h11.Data`` leaves its state machine valid for keep-alive, and it saves
  a few microseconds per chunk (performance-notes §3.2, §3.5). Of the head, h11 renders
  only the status line and the framing headers; the other header lines are checked once
  per distinct list and spliced in (h11 would validate each one on every response).
* Few sends: the head leaves with the first chunk, the terminating chunk with the last
  one, and the chunks written during one loop iteration leave together at the start of
  the next (see :class:`Exchange`).
* Pipelining: while a response is in progress h11 answers ``PAUSED`` to further bytes; we
  then stop reading the socket and resume after ``start_next_cycle()``. Reading is *not*
  paused otherwise, so a client that hangs up mid-response is noticed at once (EOF/RST
  reaches ``connection_lost``, which cancels the application task).
* Backpressure: the transport calls ``pause_writing``/``resume_writing`` around a 64 KiB
  high-water mark; ``Exchange.drain()`` waits on it, so an application that drains before
  reading its upstream again holds at most one read's worth per stalled client.
* Timeouts are one ``call_at`` watchdog per connection, checked against the current phase
  (idle keep-alive, reading a head, reading a body) and re-armed for the remainder when it
  fires early. Phase changes cost an assignment, not a timer.

This module knows nothing about routes, authentication, the upstream or Kiro.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, cast

import h11
import orjson

from kiro_fast.errors import KiroFastError
from kiro_fast.forwarded import client_address
from kiro_fast.logs import request_id_var

__all__ = [
    "App",
    "ClientDisconnected",
    "ErrorRenderer",
    "Exchange",
    "HttpProtocol",
    "Request",
    "ServerOptions",
    "ServerState",
    "anthropic_error_body",
]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("kiro_fast.access")

Headers = list[tuple[bytes, bytes]]
ErrorRenderer = Callable[[str, int, str, str], bytes]

# --------------------------------------------------------------------------- limits

#: Claude Code sends whole conversations, with images as base64, in one request; several
#: MiB is common, tens of MiB is not. Bigger bodies are answered 413 before being read.
MAX_BODY_SIZE: Final = 32 * 1024 * 1024
#: h11 defaults to 16 KiB; nginx allows 4 × 8 KiB, Node 16 KiB, Apache 8 KiB per line.
#: Clients behind gateways accumulate forwarding headers, so allow 64 KiB in all.
MAX_HEADER_BYTES: Final = 64 * 1024
#: Apache's LimitRequestFields default. Bounds the per-request work a header flood causes.
MAX_HEADER_COUNT: Final = 100
#: Longer than the idle timeout of the clients we expect (nginx upstream keepalive_timeout
#: is 60 s), so the client closes an idle connection first and never sends a request into
#: a connection we are closing.
KEEP_ALIVE_TIMEOUT: Final = 75.0
#: From the first byte of a head (or from accept) to its end; drops slowloris clients.
HEADER_TIMEOUT: Final = 15.0
#: Longest silence while a body is arriving; a slow upload that keeps moving is fine.
BODY_TIMEOUT: Final = 60.0
#: Transport write buffer high-water mark (low is a quarter). Above it the application's
#: drain() waits, which bounds what one stalled client can make us hold.
WRITE_BUFFER_HIGH: Final = 64 * 1024
#: Below this a complete response is written as one buffer (one syscall); above it the
#: body is handed over separately to avoid copying it.
_JOIN_LIMIT: Final = 64 * 1024
#: Streamed chunks are held for the loop's next iteration up to this many bytes (see
#: Exchange): token events are a few hundred bytes; bulk writes leave at once, so a client
#: that stopped reading makes a stream hold at most this much more.
HOLD_LIMIT: Final = 8 * 1024

#: Accepted form of an incoming X-Request-Id when ``trust_request_id`` is on: it ends up
#: in logs and response headers, so nothing that could forge a log line or a header.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

_REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}
_CHUNK: Final = b"%x\r\n%b\r\n"
_JSON: Final = (b"content-type", b"application/json")
_CLOSE: Final = (b"connection", b"close")
_NO_BODY_STATUSES: Final = frozenset((204, 304))
#: Headers that decide framing or keep-alive: h11 must see them, so a list holding one is
#: never spliced past it (see _header_lines).
_FRAMING_HEADERS: Final = frozenset((b"content-length", b"transfer-encoding", b"connection"))
#: Distinct header lists whose checked rendering is kept; answers use a handful of constant
#: lists, so only one-off lists (error headers with a retry-after value) miss.
_HEADER_CACHE_LIMIT: Final = 64
_header_cache: dict[tuple[tuple[bytes, bytes], ...], bytes | None] = {}
#: h11 Response events without headers (or with only connection: close), by status.
_bare_responses: dict[tuple[int, bool], h11.Response] = {}

# Connection phases; each but _BUSY has a time limit (see HttpProtocol._limit).
_IDLE, _HEAD, _BODY, _BUSY = range(4)


def anthropic_error_body(path: str, status: int, error_type: str, message: str) -> bytes:
    """Anthropic's error shape, the default renderer for errors this layer answers."""
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Limits, timeouts and behaviour switches shared by every connection of a server."""

    max_body_size: int = MAX_BODY_SIZE
    max_header_bytes: int = MAX_HEADER_BYTES
    max_header_count: int = MAX_HEADER_COUNT
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    write_buffer_high: int = WRITE_BUFFER_HIGH
    #: accept a well-formed incoming X-Request-Id instead of generating one (behind a
    #: trusted proxy that sets it)
    trust_request_id: bool = False
    #: value of the ``server`` response header; None leaves it out
    server_header: bytes | None = b"kiro-fast"
    #: renders the body of errors answered by this layer: (path, status, type, message)
    error_body: ErrorRenderer = anthropic_error_body
    #: one INFO line per request on the ``kiro_fast.access`` logger
    access_log: bool = True
    #: listen() backlog
    backlog: int = 2048
    #: how long serve() lets in-flight requests finish after SIGTERM/SIGINT
    shutdown_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_body_size", "max_header_bytes", "max_header_count", "backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("keep_alive_timeout", "header_timeout", "body_timeout", "shutdown_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")


class ClientDisconnected(ConnectionError):
    """The client closed the connection before the response was complete."""


@dataclass(frozen=True, slots=True)
class Request:
    """One complete request as the application sees it. Immutable, except that
    :meth:`release_body` empties the body.

    ``path`` is the raw (still percent-encoded) part of the target before ``?``;
    ``query`` the part after it. Header names are lower-case, values as sent.
    """

    method: str
    target: str
    path: str
    query: str
    headers: Headers = field(repr=False)
    body: bytes = field(repr=False)
    request_id: str
    client: tuple[str, int] | None

    def release_body(self) -> None:
        """Forget the body once the application took what it needs from it: a streamed
        answer outlives its request by minutes, and a request can be megabytes."""
        object.__setattr__(self, "body", b"")

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), latin-1 decoded, or None."""
        key = name.lower().encode("latin-1")
        for header_name, value in self.headers:
            if header_name == key:
                return value.decode("latin-1")
        return None


class _HttpDate:
    """The ``date`` header value, formatted at most once per second; also the rendered
    ``date`` and ``server`` lines every spliced response head starts with."""

    __slots__ = ("_second", "_value", "_lines", "_lines_key")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""
        self._lines = b""
        self._lines_key: tuple[int, bytes | None] = (-1, None)

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
        return self._value

    def lines(self, server: bytes | None) -> bytes:
        """``date: …\\r\\nserver: …\\r\\n`` (no server line for None)."""
        value = self()
        key = (self._second, server)
        if key != self._lines_key:
            date = b"date: %s\r\n" % value
            if server is None:
                self._lines = date
            else:
                extra = _header_lines([(b"server", server)])
                if extra is None:
                    raise h11.LocalProtocolError("the server header must be a plain value")
                self._lines = date + extra
            self._lines_key = key
        return self._lines


_http_date = _HttpDate()


def _header_lines(headers: Headers) -> bytes | None:
    """``name: value\\r\\n`` lines for ``headers``, checked by h11 once per distinct list.

    h11 validates and normalises every header on every response it sends (~3 µs each);
    letting it see only the framing headers and splicing these lines into its output
    saves that. The check is h11's own (building an ``h11.Response`` validates the
    headers; ``LocalProtocolError`` as before). ``None``: the list holds a framing or
    connection header, so h11 must render all of it.
    """
    key: tuple[tuple[bytes, bytes], ...] | None = tuple(headers)
    try:
        if key in _header_cache:
            return _header_cache[key]
    except TypeError:  # an unhashable item (a list instead of a tuple): checked, not kept
        key = None
    checked = h11.Response(status_code=200, headers=headers).headers
    lines: bytes | None = None
    if not any(name in _FRAMING_HEADERS for name, _ in checked):
        lines = b"".join(b"%s: %s\r\n" % item for item in checked.raw_items())
    if key is not None and len(_header_cache) < _HEADER_CACHE_LIMIT:
        _header_cache[key] = lines
    return lines


class ServerState:
    """The live connections and application tasks of one server.

    ``wait_idle()`` returns once both sets are empty; graceful shutdown waits on it. It
    also gathers the streamed chunks written during one loop iteration (see
    :meth:`Exchange.write`) and sends them at the start of the next one.
    """

    __slots__ = ("connections", "tasks", "_waiters", "_held")

    def __init__(self) -> None:
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []
        #: exchanges holding chunks written during this loop iteration
        self._held: list[Exchange] = []

    def hold(self, exchange: Exchange, loop: asyncio.AbstractEventLoop) -> None:
        """``exchange`` holds a chunk: send it (and every other held one) from the loop."""
        if not self._held:
            loop.call_soon(self._send_held)
        self._held.append(exchange)

    def _send_held(self) -> None:
        held, self._held = self._held, []
        for exchange in held:
            exchange._send_held()

    @property
    def idle(self) -> bool:
        return not self.connections and not self.tasks

    def discard_connection(self, connection: HttpProtocol) -> None:
        self.connections.discard(connection)
        self._wake_if_idle()

    def discard_task(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._wake_if_idle()

    async def wait_idle(self) -> None:
        if self.idle:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake_if_idle(self) -> None:
        if self._waiters and self.idle:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


# --------------------------------------------------------------------------- exchange


class Exchange:
    """One request/response cycle: the application's handle to answer one request.

    Either ``send()`` a complete response, or ``start_stream()``, ``write()`` any number of
    chunks and ``end()``. After each write, ``if exchange.paused: await exchange.drain()``
    keeps memory bounded when the client reads slowly. Once the client is gone, writes are
    ignored, ``drain()`` raises :class:`ClientDisconnected` and the application task is
    cancelled.

    A small chunk given to ``write()`` leaves when the loop has run what is ready now (at
    the start of its next iteration), in one send with whatever else this exchange wrote
    meanwhile, or with ``end()``'s bytes if that comes first. With many streams, the
    chunks that one burst of upstream reads produced then go out back to back: a client
    (or a local nginx) is woken once for them instead of once per chunk, which costs the
    sender a cross-CPU wake-up each time. The delay is one loop iteration; ``paused``
    reflects held bytes once they were sent, and at most :data:`HOLD_LIMIT` bytes are held
    (a bigger write leaves at once, with what was held).
    """

    __slots__ = (
        "request",
        "started",
        "finished",
        "disconnected",
        "status",
        "_proto",
        "_conn",
        "_transport",
        "_writable",
        "_chunked",
        "_callbacks",
        "_held",
    )

    def __init__(self, proto: HttpProtocol, request: Request) -> None:
        self.request = request
        self.started = False
        self.finished = False
        self.disconnected = False
        #: status of the response sent (0 until one started)
        self.status = 0
        self._proto = proto
        self._conn = proto._conn
        self._transport = proto._transport
        self._writable = False
        self._chunked = False
        self._callbacks: list[Callable[[], object]] | None = None
        #: framed chunks written but not sent yet (see the class docstring)
        self._held: bytes | None = None

    @property
    def paused(self) -> bool:
        """True while the transport's write buffer is above its high-water mark."""
        return self._proto._write_paused

    def send(self, status: int, headers: Headers, body: bytes) -> None:
        """Send a complete response with ``Content-Length``; ``headers`` carry no framing."""
        if not self._begin(status):
            return
        conn = self._conn
        framing: Headers = []
        if status not in _NO_BODY_STATUSES:
            framing.append((b"content-length", b"%d" % len(body)))
        head = self._head(status, headers, framing)
        if body and self._body_allowed(status):
            # Through h11 once, so its Content-Length accounting ends in DONE.
            conn.send_with_data_passthrough(h11.Data(data=body))
        else:
            body = b""
        conn.send(h11.EndOfMessage())
        if len(body) <= _JOIN_LIMIT:
            self._transport.write(head + body if body else head)
        else:
            self._transport.writelines((head, body))
        self._complete()

    def start_stream(
        self, status: int, headers: Headers, first: bytes = b"", *, end: bool = False
    ) -> None:
        """Send the head of a streamed response (``Transfer-Encoding: chunked``).

        ``first``, when given, is the body's first chunk: it leaves in the same write as
        the head. With ``end`` the body is complete: the terminating chunk goes in that
        write too and the response is finished (one send instead of three).
        """
        if not self._begin(status):
            return
        head = self._head(status, headers, [])
        self._writable = writable = self._body_allowed(status)
        # h11 frames an unknown-length body as chunked for peers of HTTP/1.1 and up
        # (h11 accepts any 1.x) and as close-delimited raw bytes for HTTP/1.0 ones;
        # write() must match, by h11's own comparison.
        version = self._conn.their_http_version
        self._chunked = chunked = version is not None and version >= b"1.1"
        tail = b""
        if end:
            self._writable = False
            tail = self._conn.send(h11.EndOfMessage()) or b""
        if first and writable:
            if chunked:
                head = b"%b%x\r\n%b\r\n%b" % (head, len(first), first, tail)
            else:
                head = b"".join((head, first, tail))
        elif tail:
            head += tail
        self._transport.write(head)
        if end:
            self._complete()

    def write(self, data: bytes) -> None:
        """Send one chunk of a streamed body (held until the loop's next iteration; see
        the class docstring). Empty data does nothing."""
        if self._writable:
            if data:
                framed = _CHUNK % (len(data), data) if self._chunked else data
                held = self._held
                if held is not None:
                    framed = held + framed
                if len(framed) >= HOLD_LIMIT:
                    self._held = None
                    self._transport.write(framed)
                elif held is None:
                    self._held = framed
                    proto = self._proto
                    proto._state.hold(self, proto._loop)
                else:
                    self._held = framed
        elif not self.started or (self.finished and not self.disconnected):
            raise RuntimeError("write() is only valid between start_stream() and end()")

    async def drain(self) -> None:
        """Wait while the transport paused writing; raise ClientDisconnected if gone."""
        proto = self._proto
        if proto._write_paused and not self.disconnected:
            await proto._wait_writable()
        if self.disconnected:
            raise ClientDisconnected("the client closed the connection")

    def end(self, last: bytes = b"") -> None:
        """Finish a streamed response (terminating chunk); keep-alive decides what next.

        ``last``, when given, is the body's last chunk: it leaves in the same write as the
        terminating chunk.
        """
        if self.finished or self.disconnected:
            return
        if not self.started:
            raise RuntimeError("end() before start_stream()")
        if not (last and self._writable):
            last = b""
        self._writable = False
        tail = self._conn.send(h11.EndOfMessage()) or b""
        if last:
            if self._chunked:
                tail = b"%x\r\n%b\r\n%b" % (len(last), last, tail)
            else:
                tail = last + tail
        held, self._held = self._held, None
        if held is not None:
            tail = held + tail
        if tail:
            self._transport.write(tail)
        self._complete()

    def on_disconnect(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (soon, from the loop) once the client is gone."""
        if self.disconnected:
            self._proto._loop.call_soon(callback)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    async def wait_disconnected(self) -> None:
        """Return once the client is gone (to race against a long upstream wait)."""
        if self.disconnected:
            return
        waiter: asyncio.Future[None] = self._proto._loop.create_future()
        self.on_disconnect(lambda: _resolve(waiter))
        await waiter

    # ----------------------------------------------------------------- internals

    def _head(self, status: int, headers: Headers, framing: Headers) -> bytes:
        """The response head. h11 sees only ``framing`` (and ``connection: close``), which
        drive its state machine; ``date``, ``server``, ``headers`` and ``x-request-id`` are
        spliced into its output, checked once per distinct list (see _header_lines). The
        lines come out in the order h11 gave them before."""
        proto = self._proto
        lines = _header_lines(headers)
        if lines is None:  # framing headers in the list: h11 renders everything
            out = proto._response_headers(self.request.request_id, headers)
            out.extend(framing)
            head = self._conn.send(
                h11.Response(status_code=status, headers=out, reason=_reason(status))
            )
            assert head is not None
            return head
        first = _http_date.lines(proto._opts.server_header)
        close = not proto._keep_alive
        event: h11.Response | None
        if framing:
            event = h11.Response(
                status_code=status,
                headers=[*framing, _CLOSE] if close else framing,
                reason=_reason(status),
            )
        else:  # a stream's head: the same few events every time (h11 never changes one)
            event = _bare_responses.get((status, close))
            if event is None:
                event = _bare_responses[status, close] = h11.Response(
                    status_code=status, headers=[_CLOSE] if close else [], reason=_reason(status)
                )
        head = self._conn.send(event)
        assert head is not None
        # The request id is generated hex or matched _SAFE_REQUEST_ID: nothing to check.
        request_id = self.request.request_id.encode("ascii")
        # After the status line, so h11's framing lines stay last, as they were.
        cut = head.index(b"\r\n") + 2
        return b"%b%b%bx-request-id: %b\r\n%b" % (head[:cut], first, lines, request_id, head[cut:])

    def _send_held(self) -> None:
        """Send the held chunks, unless the client left or the connection is closing."""
        held = self._held
        if held is not None:
            self._held = None
            if self._writable and not self._transport.is_closing():
                self._transport.write(held)

    def _begin(self, status: int) -> bool:
        if self.started:
            raise RuntimeError("the response has already started")
        self.started = True
        self.status = status
        return not self.disconnected

    def _body_allowed(self, status: int) -> bool:
        return status not in _NO_BODY_STATUSES and self.request.method != "HEAD"

    def _complete(self) -> None:
        self.finished = True
        self._proto._response_complete()

    def _disconnect(self) -> None:
        self.disconnected = True
        self._writable = False
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            self._proto._loop.call_soon(callback)

    async def _run(self, app: App) -> None:
        request_id_var.set(self.request.request_id)
        try:
            await app(self.request, self)
        except Exception as exc:  # the edge of the application: every failure ends here
            self._fail(exc)
        else:
            if not self.finished and not self.disconnected:
                self._fail(None)

    def _fail(self, exc: Exception | None) -> None:
        if self.disconnected or isinstance(exc, ClientDisconnected):
            logger.debug("application stopped: client disconnected")
        elif self.started:
            if exc is None:
                logger.error("application returned without ending its response")
            else:
                logger.error("application failed after the response started", exc_info=exc)
            self._proto._close()
        elif isinstance(exc, KiroFastError):
            logger.info("answered %d: %s", exc.status, exc.message or type(exc).__name__)
            self._send_error(exc.status, exc.error_type, exc.message, _encode(exc.headers))
        else:
            if exc is None:
                logger.error("application returned without a response")
            else:
                logger.error("unhandled error in application", exc_info=exc)
            self._send_error(500, "api_error", "internal server error", [])

    def _send_error(self, status: int, error_type: str, message: str, headers: Headers) -> None:
        if not message:
            message = _reason(status).decode().lower() or "error"
        body = self._proto._opts.error_body(self.request.path, status, error_type, message)
        self.send(status, [_JSON, *headers], body)


App = Callable[[Request, Exchange], Awaitable[None]]


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


def _encode(headers: dict[str, str]) -> Headers:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


# --------------------------------------------------------------------------- connection


class HttpProtocol(asyncio.Protocol):
    """Connection state for one TCP connection; see the module docstring."""

    __slots__ = (
        "_app",
        "_opts",
        "_state",
        "_loop",
        "_conn",
        "_transport",
        "_client",
        "_head",
        "_headers",
        "_request_id",
        "_body_parts",
        "_body_size",
        "_exchange",
        "_task",
        "_phase",
        "_since",
        "_timer",
        "_timer_at",
        "_read_paused",
        "_write_paused",
        "_drain_waiter",
        "_keep_alive",
        "_closed",
    )

    _transport: asyncio.Transport

    def __init__(
        self,
        app: App,
        options: ServerOptions,
        state: ServerState,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._app = app
        self._opts = options
        self._state = state
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=options.max_header_bytes)
        self._client: tuple[str, int] | None = None
        # the request being read
        self._head: h11.Request | None = None
        self._headers: Headers = []
        self._request_id = ""
        self._body_parts: list[bytes | bytearray] = []
        self._body_size = 0
        # the request being answered
        self._exchange: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        # watchdog: the phase, when it started (or, reading a body, the last read)
        self._phase = _HEAD
        self._since = 0.0
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._keep_alive = True
        self._closed = False

    # ----------------------------------------------------------------- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._state.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = (str(peer[0]), int(peer[1]))
        _set_nodelay(transport)
        transport.set_write_buffer_limits(high=self._opts.write_buffer_high)
        # A fresh connection owes us a complete head within header_timeout.
        self._since = self._loop.time()
        self._watch()

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _IDLE:
            self._phase = _HEAD
            self._since = self._loop.time()
        elif phase == _BODY:
            self._since = self._loop.time()
        self._conn.receive_data(data)
        self._handle_events()

    def eof_received(self) -> bool | None:
        # HTTP clients do not half-close; treat EOF as the end of the connection.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        exchange = self._exchange
        if exchange is not None and not exchange.finished and not exchange.disconnected:
            exchange._disconnect()
            task = self._task
            if task is not None and not task.done():
                logger.info(
                    "client disconnected before the response completed",
                    extra={"request_id": exchange.request.request_id},
                )
                task.cancel()
        self._wake_writer()
        self._state.discard_connection(self)

    def pause_writing(self) -> None:
        """Called by the transport when its write buffer passes the high-water mark."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """Called by the transport when its write buffer drains below the low-water mark."""
        self._write_paused = False
        self._wake_writer()

    # ----------------------------------------------------------------- server control

    def shutdown(self) -> None:
        """Graceful shutdown: close now if idle, else close after the current response."""
        self._keep_alive = False
        if self._task is None:
            self._close()

    def abort(self) -> None:
        """Hard stop: cancel the application task and drop the connection."""
        exchange = self._exchange
        if exchange is not None and not exchange.finished:
            exchange._disconnect()  # whatever the cancelled task still writes goes nowhere
        if self._task is not None:
            self._task.cancel()
        self._closed = True
        self._cancel_timer()
        # Even after close(): a transport still flushing to a client that reads nothing
        # would otherwise never report connection_lost.
        self._transport.abort()

    # ----------------------------------------------------------------- request reading

    def _handle_events(self) -> None:
        conn = self._conn
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._on_protocol_error(exc)
                return
            if isinstance(event, h11.Data):
                if not self._on_body(event.data):
                    return
            elif isinstance(event, h11.Request):
                if not self._on_head(event):
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._on_request_complete()
            elif event is h11.NEED_DATA:
                if self._phase != _BUSY:
                    self._watch()
                return
            elif event is h11.PAUSED:
                # A pipelined request while we still answer the last one: it waits in
                # h11's buffer, and the socket with it.
                self._pause_reading()
                return
            else:  # ConnectionClosed: only after receive_data(b""), which we never call
                self._close()
                return

    def _on_head(self, head: h11.Request) -> bool:
        self._head = head
        # One copy, used for every check and handed to the Request: h11's Headers is a
        # Sequence whose iteration goes through __getitem__. h11 lower-cases names with
        # bytes.lower() (what iterating it would give), from the raw items.
        headers = self._headers = [
            (name.lower(), value) for name, value in head.headers.raw_items()
        ]
        self._request_id = self._new_request_id(headers)
        self._phase = _BODY
        self._since = self._loop.time()
        opts = self._opts
        if len(headers) > opts.max_header_count:
            self._reject(431, f"too many header fields (limit {opts.max_header_count})")
            return False
        if head.method == b"CONNECT":
            # h11 turns a 2xx answer to CONNECT into a tunnel; this is not a proxy.
            self._reject(501, "CONNECT is not supported")
            return False
        for name, value in headers:
            if name == b"content-length":
                if int(value) > opts.max_body_size:
                    self._reject(413, _too_large(opts.max_body_size))
                    return False
                break
        if self._conn.they_are_waiting_for_100_continue:
            interim = self._conn.send(h11.InformationalResponse(status_code=100, headers=[]))
            if interim:
                self._transport.write(interim)
        return True

    def _on_body(self, data: bytes | bytearray) -> bool:
        size = self._body_size + len(data)
        if size > self._opts.max_body_size:
            self._reject(413, _too_large(self._opts.max_body_size))
            return False
        self._body_size = size
        self._body_parts.append(data)
        return True

    def _on_request_complete(self) -> None:
        head = self._head
        assert head is not None
        parts = self._body_parts
        target = head.target.decode("latin-1")
        path, _, query = target.partition("?")
        request = Request(
            method=head.method.decode("latin-1"),
            target=target,
            path=path,
            query=query,
            headers=self._headers,
            body=b"".join(parts) if parts else b"",
            request_id=self._request_id,
            client=self._client,
        )
        self._head = None
        self._headers = []
        self._body_parts = []
        self._body_size = 0
        self._phase = _BUSY
        # No deadline while the application answers (the watchdog would only re-check and
        # return); a cancelled timer frees its handle, which an open stream would keep.
        self._cancel_timer()
        exchange = self._exchange = Exchange(self, request)
        # Named by the request id, an existing string: on 3.11 an unnamed task formats a
        # "Task-N" string of its own, held as long as the stream.
        task = self._task = self._loop.create_task(
            exchange._run(self._app), name=request.request_id
        )
        self._state.tasks.add(task)
        task.add_done_callback(self._on_task_done)

    def _new_request_id(self, headers: Headers) -> str:
        if self._opts.trust_request_id:
            for name, value in headers:
                if name == b"x-request-id":
                    if _SAFE_REQUEST_ID.fullmatch(value):
                        return value.decode("ascii")
                    break
        return os.urandom(8).hex()

    def _on_protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self._task is not None:
            # Bytes behind the request being answered (after "Connection: close", or
            # garbage pipelined after it): answering now would cut into that response.
            # Finish it, read nothing more, then close.
            logger.info("closing after this response: %s", str(exc)[:200])
            self._keep_alive = False
            self._pause_reading()
            return
        status = exc.error_status_hint
        logger.info("rejecting malformed request from %s: %s", self._client, str(exc)[:200])
        if status == 431:
            self._reject(431, "request header fields too large")
        else:
            self._reject(status, "malformed http request")

    def _reject(self, status: int, message: str) -> None:
        """Answer an error this layer detected, then close the connection."""
        request_id = self._request_id or os.urandom(8).hex()
        head = self._head
        path = head.target.partition(b"?")[0].decode("latin-1") if head is not None else ""
        error_type = "request_too_large" if status == 413 else "invalid_request_error"
        body = self._opts.error_body(path, status, error_type, message)
        headers = self._response_headers(request_id, [_JSON, _CLOSE])
        headers.append((b"content-length", b"%d" % len(body)))
        if head is not None and head.method == b"HEAD":
            body = b""
        logger.info("answered %d: %s", status, message, extra={"request_id": request_id})
        try:
            out = self._conn.send(
                h11.Response(status_code=status, headers=headers, reason=_reason(status))
            )
        except h11.LocalProtocolError:  # too late for a response; closing says enough
            out = None
        if out is not None:
            self._transport.write(out + body)
        self._close()

    # ----------------------------------------------------------------- responding

    def _response_headers(self, request_id: str, headers: Headers) -> Headers:
        out: Headers = [(b"date", _http_date())]
        server = self._opts.server_header
        if server is not None:
            out.append((b"server", server))
        out.extend(headers)
        out.append((b"x-request-id", request_id.encode("ascii")))
        if not self._keep_alive:
            out.append(_CLOSE)
        return out

    def _response_complete(self) -> None:
        # HTTP/1.0 and "Connection: close" exchanges end here; keep-alive ones move on
        # when the task finishes (_on_task_done), so one connection runs one task at a time.
        if self._conn.our_state is h11.MUST_CLOSE:
            self._close()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        self._state.discard_task(task)
        self._task = None
        failed = not task.cancelled() and task.exception() is not None
        if failed:  # raised while answering a failure (a renderer or h11 rejecting headers)
            logger.error("error while answering an application failure", exc_info=task.exception())
        exchange = self._exchange
        if exchange is not None and self._opts.access_log:
            self._log_access(exchange)
        if self._closed:
            return
        if failed or task.cancelled() or exchange is None or not exchange.finished:
            self._close()
        else:
            self._next_cycle()

    def _next_cycle(self) -> None:
        conn = self._conn
        if not self._keep_alive or conn.our_state is not h11.DONE:
            self._close()
            return
        conn.start_next_cycle()
        self._exchange = None
        self._request_id = ""
        self._since = self._loop.time()
        if self._read_paused:
            # A pipelined request is buffered: serve it now.
            self._read_paused = False
            self._transport.resume_reading()
            self._phase = _HEAD
            self._handle_events()
        else:
            self._phase = _IDLE
            self._watch()

    def _log_access(self, exchange: Exchange) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        request = exchange.request
        status = exchange.status if exchange.started else 0
        peer = request.client[0] if request.client else "-"
        # The forwarded address only when the peer is a trusted proxy (see forwarded).
        client = client_address(peer, request.headers)
        access_logger.info(
            '%s "%s %s" %d%s%s',
            client,
            request.method,
            request.target,
            status,
            " (client disconnected)" if exchange.disconnected else "",
            "" if client == peer else " via " + peer,
            extra={"request_id": request.request_id, "status": status, "client": client},
        )

    # ----------------------------------------------------------------- flow control

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()

    async def _wait_writable(self) -> None:
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self._loop.create_future()
        await waiter

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            _resolve(waiter)

    # ----------------------------------------------------------------- timers and closing

    def _limit(self) -> float:
        opts = self._opts
        phase = self._phase
        if phase == _IDLE:
            return opts.keep_alive_timeout
        if phase == _HEAD:
            return opts.header_timeout
        return opts.body_timeout

    def _watch(self) -> None:
        """Make sure the watchdog fires no later than the current phase's deadline."""
        deadline = self._since + self._limit()
        timer = self._timer
        if timer is not None:
            # Not timer.when(): for a deadline already past, uvloop's call_at() returns a
            # plain Handle, which has none (a loop late by a whole timeout, or a 0 s one).
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)
        self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or self._phase == _BUSY:
            return
        if self._loop.time() < self._since + self._limit():
            self._watch()
        elif self._phase == _IDLE:
            self._close()
        elif self._phase == _HEAD:
            logger.info(
                "closing connection from %s: request head not received in time", self._client
            )
            self._close()
        else:
            self._reject(408, "request body not received in time")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cancel_timer()
            if self._exchange is not None:
                self._exchange._send_held()  # what was written goes before the close
            self._transport.close()


def _too_large(limit: int) -> str:
    return f"request body too large (limit {limit} bytes)"


def _set_nodelay(transport: asyncio.Transport) -> None:
    # uvloop already sets TCP_NODELAY; stock asyncio does too since 3.6 but not on every
    # platform. Streams must never wait on Nagle + delayed ACK (performance-notes §3.5.8).
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # pseudo-sockets without setsockopt
        pass
