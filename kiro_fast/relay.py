"""Relay one converted request to the upstream and its answer to the client.

What this module owns: the attempt loop (credential lease, upstream call, failover
decisions carried out), the pump that turns each upstream read into one client write,
lazy start of the client response, SSE pings during silences, and the ending (a clean
finish, or an SSE ``error`` event once content was sent, or a JSON error before).

The hot loop (``_pump``) does per upstream read: ``decoder.feed`` → ``converter.feed``
→ ``sink.take`` → one ``exchange.write``; it awaits only the next read and, when the
transport paused writing, ``exchange.drain()``. Nothing is awaited per event.

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
from .failover import Decision, FailoverPolicy, FailoverSettings
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
    """The client side of a streaming answer: lazy start, pings, write bookkeeping."""

    __slots__ = (
        "exchange",
        "content_sent",
        "opened",
        "first_content",
        "_interval",
        "_last",
        "_timer",
        "_sink",
        "_loop",
    )

    def __init__(self, exchange: Exchange, ping_interval: float) -> None:
        self.exchange = exchange
        self.content_sent = False
        #: monotonic times: the stream object made, the first content written (0: none yet)
        self.opened = time.monotonic()
        self.first_content = 0.0
        self._interval = ping_interval
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(ping_interval, self._tick)
        self._sink: Any = None

    def attach(self, sink: Any) -> None:
        self._sink = sink

    def _tick(self) -> None:
        ex = self.exchange
        if ex.disconnected or ex.finished:
            self._timer = None
            return
        idle = self._loop.time() - self._last
        if idle >= self._interval * 0.98 and self._sink is not None and not ex.paused:
            self._sink.ping()
            self.send(self._sink.take(), content=False)
            idle = 0.0
        self._timer = self._loop.call_later(max(self._interval - idle, 0.05), self._tick)

    def send(self, data: bytes, content: bool = True) -> None:
        if not data:
            return
        ex = self.exchange
        if not ex.started:
            ex.start_stream(200, SSE_HEADERS)
        ex.write(data)
        self._last = self._loop.time()
        if content and not self.content_sent:
            self.content_sent = True
            self.first_content = time.monotonic()

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
        stream = ClientStream(exchange, self.settings.ping_interval) if plan.streaming else None
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
                stream.send(sink.take(), content=False)
            exchange.end()
            return
        status, body = plan.render_error(exc)
        headers = list(JSON_HEADERS) + [(k.encode(), v.encode()) for k, v in exc.headers.items()]
        exchange.send(status, headers, body)

    async def _attempts(self, exchange: Exchange, plan: Plan, stream: ClientStream | None) -> None:
        """Lease, attempt, decide — until one attempt succeeds or the policy gives up.

        The lease holds the credential's budget slots for the whole stream.
        """
        policy = FailoverPolicy(len(self.pool), settings=self.settings.failover)
        excluded: set[int] = set()
        prefer: int | None = None
        last: KiroFastError | None = None
        while True:
            cred: Credential | None = None
            token: str | None = None
            try:
                lease = self.pool.lease(
                    exclude=excluded, session=plan.session, model=plan.model, prefer=prefer
                )
                async with lease:
                    cred, token = lease.cred, lease.cred.access_token
                    await self._attempt(exchange, plan, stream, cred)
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
                decision = policy.decide(exc, cred.id if cred else None)
                metrics.attempt_failed(exc, decision.action)
                log.warning(
                    "attempt %d failed on %s: %s -> %s",
                    policy.attempt,
                    cred.label() if cred else "no credential",
                    exc.message or type(exc).__name__,
                    decision.action,
                )
                if cred is not None:
                    await self._carry_out(decision, cred, token, excluded)
                if decision.action == "fail":
                    raise
                prefer = cred.id if cred is not None and decision.action != "retry_other" else None
                if decision.delay:
                    await asyncio.sleep(decision.delay)

    async def _carry_out(
        self, decision: Decision, cred: Credential, token: str | None, excluded: set[int]
    ) -> None:
        """The credential's fate, then where the next attempt goes."""
        pool = self.pool
        if decision.penalty == "quota":
            await pool.quota_exhausted(cred)
        elif decision.penalty == "cooldown":
            await pool.cool_down(cred, decision.cooldown, decision.reason)
        elif decision.penalty == "failure":
            await pool.record_failure(cred)
        if decision.action == "retry_other":
            excluded.add(cred.id)
        elif decision.action == "refresh_and_retry":
            try:
                await pool.ensure_fresh(cred, stale_token=token)
            except TokenRefreshError:
                excluded.add(cred.id)

    async def _attempt(
        self, exchange: Exchange, plan: Plan, stream: ClientStream | None, cred: Credential
    ) -> None:
        sink = plan.make_sink()
        converter = plan.make_converter(sink)
        if stream is not None:
            stream.attach(sink)
        deadline = time.monotonic() + self.settings.first_byte_timeout
        response = await self.client.open_chat(
            cred, body_for(cred, plan.body), self.settings.first_byte_timeout
        )
        try:
            await self._pump(response, converter, sink, stream, deadline)
        except BaseException:
            response.close()
            raise
        response.release()
        if converter.truncated:
            metrics.truncated()
        if plan.on_done is not None:
            plan.on_done(converter, cred)
        if stream is not None:
            stream.send(sink.take())
            exchange.end()
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
        decoder = EventStreamDecoder()
        content = response.content
        try:
            chunk = await self._first_chunk(content, deadline)
            if stream is None:
                await self._fold(chunk, content, decoder, converter)
            else:
                await self._relay(chunk, content, decoder, converter, sink, stream)
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

    @staticmethod
    async def _relay(
        chunk: bytes,
        content: aiohttp.StreamReader,
        decoder: EventStreamDecoder,
        converter: StreamConverter,
        sink: Any,
        stream: ClientStream,
    ) -> None:
        """The hot loop: one client write per upstream read, no await per event."""
        feed, convert, take, send = decoder.feed, converter.feed, sink.take, stream.send
        exchange = stream.exchange
        while chunk:
            messages = feed(chunk)
            if messages:
                convert(messages)
                data = take()
                if data:
                    send(data)
                    if exchange.paused:
                        await exchange.drain()
            chunk = await content.readany()

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
