"""Relay one converted request to the upstream and its answer to the client.

What this module owns: the attempt loop (credential lease, upstream call, failover
decisions carried out), the pump that turns each upstream read into one client write,
lazy start of the client response, SSE pings during silences, a stream's upstream idle
timeout, and the ending (a clean finish, or an SSE ``error`` event once content was sent,
or a JSON error before).

The hot loop (``_pump``) does per upstream read: ``decoder.feed`` → ``converter.feed``
→ ``sink.take`` → one ``exchange.write``; it awaits only the next read and, when the
transport paused writing, ``exchange.drain()``. Nothing is awaited or scheduled per event:
pings and the idle timeout share one timer per stream. The head goes out with the first
bytes and the terminating chunk with the last (one write each).

Formats are the sinks' business (Anthropic SSE, Anthropic JSON, OpenAI …); this module
only moves bytes and decides when.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
import orjson

from . import metrics
from .convert import ConvertedRequest
from .credentials import Credential
from .errors import (
    CredentialsBusy,
    EventStreamError,
    KiroFastError,
    NoCredentialAvailable,
    TokenRefreshError,
    TruncatedStream,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .eventstream import EventStreamDecoder
from .failover import FailoverPolicy, FailoverSettings
from .pool import CredentialPool
from .protocol import Exchange
from .stream import StreamConverter
from .upstream import UpstreamClient
from .upstream_errors import client_error

log = logging.getLogger("kiro_fast.relay")

SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS: Final = [(b"content-type", b"application/json")]
#: Longest session key kept for stickiness (Claude Code's ids are ~100 characters).
SESSION_KEY_MAX: Final = 256
#: Shortest re-arm of a stream's timer, so a ping missed by a hair is no busy loop.
MIN_TICK: Final = 0.05
#: How early a timer may fire (uvloop's timers have millisecond resolution).
TIMER_SLACK: Final = 0.001


class Sink(Protocol):
    """What the relay needs from a sink, beyond :class:`stream.StreamSink`'s calls."""

    def take(self) -> bytes: ...
    def ping(self) -> None: ...
    def error(self, exc: BaseException) -> None: ...


@dataclass(slots=True)
class RelaySettings:
    first_byte_timeout: float
    ping_interval: float
    failover: FailoverSettings = field(default_factory=FailoverSettings)


@dataclass(slots=True)
class Plan:
    """Everything one request needs besides I/O, prepared by the handler."""

    body: bytes  # upstream JSON body without profileArn
    make_sink: Callable[[], Any]
    make_converter: Callable[[Any], StreamConverter]
    streaming: bool
    render_error: Callable[[KiroFastError], tuple[int, bytes]]  # JSON error response
    on_done: Callable[[StreamConverter, Credential], None] | None = None
    #: the client's session (Anthropic ``metadata.user_id``): keeps it on one credential
    session: str | None = None
    #: the upstream model id: FREE accounts are not offered Opus
    model: str | None = None


class ConverterFactory:
    """``Plan.make_converter`` for a converted request: the four settings the event
    converter needs from it, kept instead of the request (or a closure over it)."""

    __slots__ = ("_thinking", "_tool_names", "_context_window", "_input_tokens")

    def __init__(self, converted: ConvertedRequest) -> None:
        self._thinking = converted.thinking
        self._tool_names = converted.tool_names
        self._context_window = converted.context_window
        self._input_tokens = converted.input_tokens

    def __call__(self, sink: Any) -> StreamConverter:
        return StreamConverter(
            sink,
            thinking=self._thinking,
            tool_names=self._tool_names,
            context_window=self._context_window,
            input_tokens=self._input_tokens,
        )


def session_key(payload: Mapping[str, Any]) -> str | None:
    """The session a request belongs to: Anthropic ``metadata.user_id`` (Claude Code puts
    its account and session ids there), else ``None``."""
    metadata = payload.get("metadata")
    if isinstance(metadata, dict):
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and user_id:
            return user_id[:SESSION_KEY_MAX]
    return None


def body_for(cred: Credential, body: bytes) -> bytes:
    """Top-level ``profileArn`` only for social logins (Builder ID / IdC must not send it)."""
    if cred.auth_method != "social" or not cred.profile_arn:
        return body
    return b'{"profileArn":' + orjson.dumps(cred.profile_arn) + b"," + body[1:]


class ClientStream:
    """The client side of a streaming answer: lazy start, pings, write bookkeeping, and
    the upstream idle timeout while an attempt streams (see :meth:`watch`).

    One timer per stream serves both: it fires when a ping or the idle deadline is due
    and re-arms itself, so nothing is scheduled per write or per upstream read.
    """

    __slots__ = (
        "exchange",
        "content_sent",
        "opened",
        "first_content",
        "read_at",
        "clock",
        "_interval",
        "_last",
        "_timer",
        "_timer_at",
        "_sink",
        "_loop",
        "_plan",
        "_content",
        "_idle_limit",
    )

    def __init__(self, exchange: Exchange, ping_interval: float, plan: Plan | None = None) -> None:
        self.exchange = exchange
        self.content_sent = False
        #: monotonic times: the stream object made, the first content written (0: none yet)
        self.opened = time.monotonic()
        self.first_content = 0.0
        self._interval = ping_interval
        self._loop = loop = asyncio.get_running_loop()
        #: the loop's clock; the relay stamps :attr:`read_at` with it on every upstream read
        self.clock = loop.time
        self._last = loop.time()
        #: loop time of the last upstream read (or of the end of a wait for the client)
        self.read_at = self._last
        self._sink: Any = None
        #: its upstream body is dropped once content reached the client: no retry needs it
        self._plan = plan
        self._content: aiohttp.StreamReader | None = None
        self._idle_limit = 0.0
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0
        self._arm(self._last + ping_interval)

    def attach(self, sink: Any) -> None:
        self._sink = sink

    def watch(self, content: aiohttp.StreamReader, idle_limit: float) -> None:
        """Fail ``content``'s reads with ``TimeoutError`` after ``idle_limit`` s without an
        upstream read, until :meth:`unwatch`.

        This is the ``streamIdleTimeout`` aiohttp's ``sock_read`` would enforce, minus
        its timer re-armed on every read: the relay stamps :attr:`read_at` per read and
        this stream's one timer checks it when due. A wait for a slow client (drain)
        does not count as upstream silence.
        """
        self._content = content
        self._idle_limit = idle_limit
        now = self.read_at = self.clock()
        deadline = now + idle_limit
        if self._timer is not None and deadline < self._timer_at:
            self._timer.cancel()
            self._arm(deadline)

    def unwatch(self) -> None:
        self._content = None

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._tick)
        self._timer_at = when

    def _tick(self) -> None:
        self._timer = None
        ex = self.exchange
        if ex.disconnected or ex.finished:
            return
        now = self.clock()
        idle = now - self._last
        paused = ex.paused
        if idle >= self._interval * 0.98 and self._sink is not None and not paused:
            self._sink.ping()
            self.send(self._sink.take(), content=False)
            idle = 0.0
        due = now + max(self._interval - idle, MIN_TICK)
        content = self._content
        if content is not None:
            if paused:  # waiting for the client, not for the upstream
                self.read_at = now
            deadline = self.read_at + self._idle_limit
            if now >= deadline - TIMER_SLACK:
                self._content = None
                content.set_exception(TimeoutError("no upstream data within streamIdleTimeout"))
            elif deadline < due:
                due = deadline
        self._arm(due)

    def send(self, data: bytes, content: bool = True) -> None:
        if not data:
            return
        ex = self.exchange
        if ex.started:
            ex.write(data)
        else:
            ex.start_stream(200, SSE_HEADERS, data)
        self._last = self.clock()
        if content and not self.content_sent:
            self._content_started()

    def finish(self, data: bytes, content: bool = True) -> None:
        """The last bytes and the end of the response, in one write."""
        ex = self.exchange
        if ex.started:
            ex.end(data)
        else:
            ex.start_stream(200, SSE_HEADERS, data, end=True)
        if content and data and not self.content_sent:
            self._content_started()

    def _content_started(self) -> None:
        self.content_sent = True
        self.first_content = time.monotonic()
        if self._plan is not None:
            # No retry after content (Relay._attempts): the upstream body, as large as the
            # conversation, need not live as long as the stream.
            self._plan.body = b""

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Relay:
    """Runs requests against the pool with failover."""

    def __init__(
        self, pool: CredentialPool, client: UpstreamClient, settings: RelaySettings
    ) -> None:
        self.pool = pool
        self.client = client
        self.settings = settings

    async def run(self, exchange: Exchange, plan: Plan) -> None:
        metrics.note_model(plan.model)
        self._begin(plan)
        stream = (
            ClientStream(exchange, self.settings.ping_interval, plan) if plan.streaming else None
        )
        try:
            await self._attempts(exchange, plan, stream)
        except _AfterContent as exc:
            self._fail(exchange, plan, stream, client_error(exc.cause))
        except KiroFastError as exc:
            self._fail(exchange, plan, stream, client_error(exc))
        finally:
            if stream is not None:
                stream.close()
                metrics.stream_done(stream.opened, stream.first_content, time.monotonic())

    def _begin(self, plan: Plan) -> None:
        """Hook: the plan is about to run (subclasses note what it is for)."""

    def _done(self, plan: Plan, converter: StreamConverter, cred: Credential) -> None:
        """Hook: an attempt delivered the whole answer from ``cred``."""
        if plan.on_done is not None:
            plan.on_done(converter, cred)

    def _fail(
        self, exchange: Exchange, plan: Plan, stream: ClientStream | None, exc: KiroFastError
    ) -> None:
        if exchange.disconnected or exchange.finished:
            return
        if exchange.started:
            metrics.broken(exc.error_type)
            sink = plan.make_sink()
            sink.error(exc)
            if stream is not None:
                stream.finish(sink.take(), content=False)
            else:
                exchange.end()
            return
        status, body = plan.render_error(exc)
        headers = list(JSON_HEADERS) + [(k.encode(), v.encode()) for k, v in exc.headers.items()]
        exchange.send(status, headers, body)

    async def _attempts(self, exchange: Exchange, plan: Plan, stream: ClientStream | None) -> None:
        """Lease, attempt, decide — until one attempt succeeds or the policy gives up.

        The lease holds the credential's budget slots for the whole stream.
        """
        # The policy and the exclusions exist from the first failure on: most requests
        # never fail, and both would otherwise live as long as the stream.
        credentials = len(self.pool)
        policy: FailoverPolicy | None = None
        excluded: set[int] | None = None
        prefer: int | None = None
        last: KiroFastError | None = None
        while True:
            cred: Credential | None = None
            token: str | None = None
            try:
                lease = self.pool.lease(
                    exclude=excluded or (), session=plan.session, model=plan.model, prefer=prefer
                )
                async with lease:
                    cred, token = lease.cred, lease.cred.access_token
                    # Opening and delivering run in frames of their own; only _pump's
                    # and this one live as long as the stream.
                    sink = plan.make_sink()
                    converter = plan.make_converter(sink)
                    response, deadline = await self._open(plan, stream, sink, cred)
                    await self._pump(response, converter, sink, stream, deadline)
                    self._deliver(exchange, plan, stream, cred, converter, sink)
                metrics.attempt_ok()
                return
            except CredentialsBusy:
                raise  # the pool knows when a credential frees up: retry-after says so
            except NoCredentialAvailable:
                # After failures, the client learns why the credentials ran out.
                if last is not None:
                    raise last from None
                raise
            except (UpstreamError, TokenRefreshError) as exc:
                last = exc
                if stream is not None and stream.content_sent:
                    metrics.attempt_failed(exc, "fail")
                    raise _AfterContent(exc) from exc
                if policy is None or excluded is None:
                    policy = FailoverPolicy(credentials, settings=self.settings.failover)
                    excluded = set()
                decision = policy.decide(exc, cred.id if cred else None)
                metrics.attempt_failed(exc, decision.action)
                log.warning(
                    "attempt %d failed on %s: %s -> %s",
                    policy.attempt,
                    cred.label() if cred else "no credential",
                    exc.message or type(exc).__name__,
                    decision.action,
                )
                if cred is not None and await self.pool.apply(decision, cred, token):
                    excluded.add(cred.id)
                if decision.action == "fail":
                    raise
                prefer = cred.id if cred is not None and decision.action != "retry_other" else None
                if decision.delay:
                    await asyncio.sleep(decision.delay)

    async def _open(
        self, plan: Plan, stream: ClientStream | None, sink: Any, cred: Credential
    ) -> tuple[aiohttp.ClientResponse, float]:
        """One attempt's upstream response, and the deadline for its first event."""
        if stream is not None:
            stream.attach(sink)
        deadline = time.monotonic() + self.settings.first_byte_timeout
        client = self.client
        # A stream's idle timeout is watched by its ClientStream instead of aiohttp's
        # per-read sock_read timer (see ClientStream.watch).
        response = await client.open_chat(
            cred,
            body_for(cred, plan.body),
            self.settings.first_byte_timeout,
            sock_read=stream is None,
        )
        if stream is not None:
            stream.watch(response.content, client.idle_timeout)
        return response, deadline

    def _deliver(
        self,
        exchange: Exchange,
        plan: Plan,
        stream: ClientStream | None,
        cred: Credential,
        converter: StreamConverter,
        sink: Any,
    ) -> None:
        """The whole answer arrived: account for it and end the response."""
        if converter.truncated:
            metrics.truncated()
        self._done(plan, converter, cred)
        if stream is not None:
            stream.finish(sink.take())
        else:
            exchange.send(200, JSON_HEADERS, sink.body())

    async def _pump(
        self,
        response: aiohttp.ClientResponse,
        converter: StreamConverter,
        sink: Any,
        stream: ClientStream | None,
        deadline: float,
    ) -> None:
        """Read, decode and convert the whole answer (for a stream, the hot loop), then
        release the response; close it on any failure.

        The loop makes one client write per upstream read and awaits nothing per event.
        It is written out here rather than in a helper coroutine, whose frame every open
        stream would keep. A read that brought the upstream's terminating chunk leaves
        its events to :meth:`ClientStream.finish`, in the write that ends the response.
        Nothing of a read (chunk, decoded frames, rendered bytes) is held while waiting
        for the next one or for a slow client: up to three times a read's size per stream.
        """
        decoder = EventStreamDecoder()
        content = response.content
        try:
            try:
                chunk = await self._first_chunk(content, deadline)
                if stream is None:
                    await self._fold(chunk, content, decoder, converter)
                else:
                    feed, convert, take = decoder.feed, converter.feed, sink.take
                    send, exchange, clock = stream.send, stream.exchange, stream.clock
                    at_eof = content.is_eof
                    while chunk:
                        stream.read_at = clock()
                        messages = feed(chunk)
                        chunk = b""
                        if messages:
                            convert(messages)
                            del messages
                            if not at_eof():
                                data = take()
                                if data:
                                    send(data)
                                    del data
                                    if exchange.paused:
                                        await exchange.drain()
                                        stream.read_at = clock()
                        chunk = await content.readany()
            except UpstreamTimeout:
                raise  # no first event: _first_chunk said so
            except TimeoutError as exc:
                metrics.stall()
                raise UpstreamTimeout("upstream went silent mid-stream") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamUnavailable("upstream stream broke off") from exc
            except EventStreamError as exc:
                if exc.messages:
                    converter.feed(exc.messages)  # type: ignore[arg-type]
                raise
            try:
                decoder.feed_eof()
            except TruncatedStream:
                log.warning("upstream body ended inside an event-stream frame")
            converter.finish()
        except BaseException:
            response.close()
            raise
        finally:
            if stream is not None:
                stream.unwatch()
        response.release()

    @staticmethod
    async def _fold(
        chunk: bytes,
        content: aiohttp.StreamReader,
        decoder: EventStreamDecoder,
        converter: StreamConverter,
    ) -> None:
        feed, convert = decoder.feed, converter.feed
        while chunk:
            messages = feed(chunk)
            if messages:
                convert(messages)
            chunk = await content.readany()

    @staticmethod
    async def _first_chunk(content: aiohttp.StreamReader, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                return await content.readany()
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream sent no event before the first-byte timeout") from exc


class _AfterContent(KiroFastError):
    """An upstream failure after content reached the client: no retry, an SSE error."""

    def __init__(self, cause: KiroFastError) -> None:
        super().__init__(cause.message)
        self.cause = cause
