"""The application: routes, client authentication and the endpoint handlers.

``App.__call__(request, exchange)`` is what the protocol runs for every request. It owns
the route table, the client-key check (``x-api-key`` or ``Authorization: Bearer``,
compared in constant time), JSON parsing of request bodies, and turning a
:class:`KiroFastError` raised before the response started into the API's own error
shape. The upstream conversation itself is :class:`relay.Relay`'s job.

Routes are exact paths (one dict lookup: the hot ``/v1/messages`` path never does more)
or, consulted only when no exact path matched, patterns with ``{name}`` segments such
as ``/api/admin/credentials/{id}``; a handler reads its segments with
:func:`path_param`.

Client keys: the configured ``apiKey`` is compared first (constant time, no store
access); any other key is looked up among the stored client keys and admitted within
its limits (:mod:`kiro_fast.accounting`). Every authenticated request ends as one usage
event in the state store. Admin routes (``/api/admin/…``) check their own credentials
and answer errors in kiro.rs's admin shape ``{"error":{"type","message"}}``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from . import (
    __version__,
    accounting,
    convert,
    metrics,
    models,
    openai_api,
    structured_output,
    truncation,
    websearch,
)
from .anthropic_sse import AnthropicMessageSink, AnthropicSSESink, BufferedSSESink
from .config import Config
from .count_tokens import external_count
from .errors import (
    AuthenticationError,
    InvalidRequest,
    KiroFastError,
    MethodNotAllowed,
    NotFound,
)
from .eventstream import IMPLEMENTATION
from .logs import redact
from .pool import CredentialPool
from .protocol import Exchange, Request
from .relay import JSON_HEADERS, ConverterFactory, Plan, Relay, session_key
from .stream import StreamConverter
from .upstream import UpstreamClient

log = logging.getLogger("kiro_fast.app")

Handler = Callable[[Request, Exchange], Awaitable[None]]

#: The ``{name}`` segments of the pattern route serving the running request.
_PATH_PARAMS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "kiro_fast_path_params"
)


def path_param(name: str) -> str:
    """A ``{name}`` segment of the running request's pattern route (still percent-encoded).

    Raises:
        NotFound: the route has no such segment.
    """
    value = _PATH_PARAMS.get({}).get(name)
    if value is None:
        raise NotFound(f"no path parameter {name!r}")
    return value


#: Paths whose errors use OpenAI's shape instead of Anthropic's.
OPENAI_PREFIXES: Final = ("/v1/chat/", "/v1/responses", "/v1/completions")
#: Longest part of a request body ``logRequestBodies`` logs: enough to see a request's
#: shape, never a whole conversation with its images.
LOGGED_BODY_MAX: Final = 4096
#: Paths whose errors use kiro.rs's admin shape.
ADMIN_PREFIX: Final = "/api/admin/"
#: kiro.rs admin error types for the Anthropic ones (kiro-auth.md §10.1).
_ADMIN_TYPES: Final = {"invalid_request_error": "invalid_request", "not_found_error": "not_found"}


def anthropic_error_body(status: int, error_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def openai_error_body(status: int, error_type: str, message: str) -> bytes:
    kind = {
        "invalid_request_error": "invalid_request_error",
        "authentication_error": "authentication_error",
        "permission_error": "permission_error",
        "not_found_error": "not_found_error",
        "rate_limit_error": "rate_limit_error",
        "request_too_large": "invalid_request_error",
        "overloaded_error": "server_error",
    }.get(error_type, "server_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def admin_error_body(status: int, error_type: str, message: str) -> bytes:
    kind = _ADMIN_TYPES.get(error_type, error_type)
    return orjson.dumps({"error": {"type": kind, "message": message}})


def error_body(path: str, status: int, error_type: str, message: str) -> bytes:
    """The protocol layer's renderer too: the API's own error shape for ``path``."""
    if path.startswith(OPENAI_PREFIXES):
        return openai_error_body(status, error_type, message)
    if path.startswith(ADMIN_PREFIX):
        return admin_error_body(status, error_type, message)
    return anthropic_error_body(status, error_type, message)


def log_body(request: Request) -> None:
    """``logRequestBodies``: a client request's body at debug level, secrets masked, cut
    to ``LOGGED_BODY_MAX``. Admin routes (passwords, imported tokens) are never logged."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    body = request.body
    # Masked before it is cut, so a cut never leaves an unmasked piece of a token.
    text = redact(body[: 2 * LOGGED_BODY_MAX].decode("utf-8", "replace"))[:LOGGED_BODY_MAX]
    cut = f", first {LOGGED_BODY_MAX} characters" if len(body) > LOGGED_BODY_MAX else ""
    log.debug("request body (%d bytes%s): %s", len(body), cut, text)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def _render_anthropic_error(exc: KiroFastError) -> tuple[int, bytes]:
    return exc.status, anthropic_error_body(exc.status, exc.error_type, exc.message)


class _AnthropicAnswer:
    """What an Anthropic Messages answer needs from its request, for as long as it
    streams: the sink settings and the truncation fingerprint (not the
    conversation)."""

    __slots__ = (
        "streaming",
        "_buffered",
        "_model",
        "_message_id",
        "_estimate",
        "_schema",
        "_request_id",
        "_client_session",
        "_answered",
    )

    def __init__(
        self,
        converted: convert.ConvertedRequest,
        *,
        streaming: bool,
        buffered: bool,
        schema: dict[str, Any] | None,
        request_id: str,
        answered: truncation.Answered,
    ) -> None:
        self.streaming = streaming
        self._buffered = buffered
        self._model = converted.client_model
        self._message_id = "msg_" + os.urandom(16).hex()
        self._estimate = converted.input_tokens
        self._schema = schema
        self._request_id = request_id
        self._client_session = converted.client_session
        self._answered = answered

    def make_sink(self) -> Any:
        model, message_id, estimate = self._model, self._message_id, self._estimate
        if self._schema is not None:
            kind: Any = (
                structured_output.StructuredMessageSink
                if not self.streaming
                else structured_output.StructuredBufferedSSESink
                if self._buffered
                else structured_output.StructuredSSESink
            )
            return kind(
                model,
                message_id,
                input_estimate=estimate,
                schema=self._schema,
                request_id=self._request_id,
            )
        if not self.streaming:
            return AnthropicMessageSink(model, message_id, input_estimate=estimate)
        if self._buffered:
            return BufferedSSESink(model, message_id, input_estimate=estimate)
        return AnthropicSSESink(model, message_id, input_estimate=estimate)

    def on_done(self, converter: StreamConverter, cred: Any) -> None:
        truncation.record(
            truncation.MEMORY,
            self._client_session,
            self._answered,
            truncated=converter.truncated,
            dropped_tool_calls=converter.dropped_tool_calls,
        )


@dataclass(slots=True)
class AppState:
    config: Config
    pool: CredentialPool
    client: UpstreamClient
    relay: Relay
    convert_options: convert.ConvertOptions


class App:
    """Route table and handlers."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._api_key = (state.config.api_key or "").encode()
        self.routes: dict[str, dict[str, tuple[Handler, bool]]] = {}
        #: pattern routes: (segments, methods), consulted only when no exact path matched
        self.patterns: list[tuple[tuple[str, ...], dict[str, tuple[Handler, bool]]]] = []
        self.client_keys = accounting.ClientKeyGate(state.pool.state)
        #: runtime settings; polled per request (one clock comparison) when set
        self.live: Any = None
        self._install()

    def route(self, method: str, path: str, handler: Handler, *, auth: bool = True) -> None:
        """Register ``handler`` for ``method path`` (``auth``: the client key is required).

        A path with ``{name}`` segments is a pattern; the handler reads them with
        :func:`path_param`.
        """
        if "{" not in path:
            self.routes.setdefault(path, {})[method] = (handler, auth)
            return
        segments = tuple(path.strip("/").split("/"))
        for known, methods in self.patterns:
            if known == segments:
                methods[method] = (handler, auth)
                return
        self.patterns.append((segments, {method: (handler, auth)}))

    def apply_config(self, config: Config, options: convert.ConvertOptions) -> None:
        """Take changed runtime settings: count_tokens API, thinking suffix (both APIs)."""
        self.state.config = config
        self.state.convert_options = options
        if self.openai is not None:
            self.openai.options = dataclasses.replace(
                options, openai_alias_model=config.openai_alias_model
            )

    def _install(self) -> None:
        self.route("GET", "/", self.root, auth=False)
        self.route("HEAD", "/", self.root, auth=False)
        self.route("GET", "/health", self.health, auth=False)
        self.route("GET", "/v1/models", self.list_models)
        for prefix in ("/v1", "/cc/v1"):
            buffered = prefix == "/cc/v1"
            self.route("POST", prefix + "/messages", self._messages_handler(buffered))
            self.route("POST", prefix + "/messages/count_tokens", self.count_tokens)
        self.openai: openai_api.OpenAIEndpoints | None = openai_api.install(self)
        metrics.install(self)

    # ------------------------------------------------------------------ dispatch

    async def __call__(self, request: Request, exchange: Exchange) -> None:
        started = time.monotonic()
        record = metrics.request_started()
        if self.live is not None:
            self.live.poll()
        try:
            handler, auth = self._resolve(request)
            if auth:
                await self._authenticate(request)
                if self.state.config.log_request_bodies and request.body:
                    log_body(request)
            await handler(request, exchange)
        except KiroFastError as exc:
            self._send_error(request, exchange, exc)
        finally:
            note = accounting.CURRENT.get()
            if note is not None:
                self.client_keys.finish(note, request.path, exchange)
            metrics.request_finished(record, self.routes, request, exchange)
            log.debug(
                "%s %s done in %.1f ms",
                request.method,
                request.path,
                (time.monotonic() - started) * 1e3,
            )

    def _resolve(self, request: Request) -> tuple[Handler, bool]:
        """The handler and whether it needs the client key."""
        methods = self.routes.get(request.path)
        if methods is None:
            methods = self._match_pattern(request.path)
            if methods is None:
                raise NotFound(f"no route for {request.method} {request.path}")
        entry = methods.get(request.method)
        if entry is None:
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        return entry

    def _match_pattern(self, path: str) -> dict[str, tuple[Handler, bool]] | None:
        parts = path.strip("/").split("/")
        for segments, methods in self.patterns:
            if len(segments) != len(parts):
                continue
            params: dict[str, str] = {}
            for want, got in zip(segments, parts, strict=True):
                if want[:1] == "{":
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                _PATH_PARAMS.set(params)
                return methods
        return None

    async def _authenticate(self, request: Request) -> None:
        """The configured key (fast, no store access) or a stored client key within its
        limits. The request's usage note becomes current (``accounting.CURRENT``) once
        the key is known, so a request refused for a limit is counted too.

        Raises:
            AuthenticationError: no key, or not a valid one.
            PermissionDenied, RateLimited: a client key's allow-list or limits.
        """
        presented = request.header("x-api-key")
        if presented is None:
            authorization = request.header("authorization") or ""
            if authorization[:7].lower() == "bearer ":
                presented = authorization[7:].strip()
        if not presented:
            raise AuthenticationError("missing API key: send x-api-key or Authorization: Bearer")
        if self._api_key and hmac.compare_digest(presented.encode(), self._api_key):
            accounting.CURRENT.set(accounting.RequestNote(None))
            return
        key = await self.client_keys.lookup(presented)
        if key is None or not key.enabled:
            raise AuthenticationError("invalid API key")
        note = accounting.RequestNote(key.id)
        note.models = key.models
        accounting.CURRENT.set(note)
        metrics.note_client_key(key.name)
        note.model = await self.client_keys.admit(key, request.body, self._kiro_model)

    def _kiro_model(self, name: str) -> str | None:
        options = self.state.convert_options
        return accounting.kiro_model_of(name, options.thinking_suffix, options.model_overrides)

    def _send_error(self, request: Request, exchange: Exchange, exc: KiroFastError) -> None:
        if exchange.started or exchange.disconnected:
            log.warning("error after the response started: %s", exc.message)
            return
        body = error_body(request.path, exc.status, exc.error_type, exc.message)
        headers = list(JSON_HEADERS) + [(k.encode(), v.encode()) for k, v in exc.headers.items()]
        exchange.send(exc.status, headers, body)

    # ------------------------------------------------------------------ simple endpoints

    async def root(self, request: Request, exchange: Exchange) -> None:
        body = orjson.dumps({"name": "kiro_fast", "version": __version__})
        exchange.send(200, JSON_HEADERS, body)  # the protocol writes no body for HEAD

    async def health(self, request: Request, exchange: Exchange) -> None:
        pool = self.state.pool
        body = {
            "status": "ok" if pool.available() else "degraded",
            "version": __version__,
            "eventstream": IMPLEMENTATION,
            "credentials": {"total": len(pool), "available": len(pool.available())},
        }
        exchange.send(200, JSON_HEADERS, orjson.dumps(body))

    async def list_models(self, request: Request, exchange: Exchange) -> None:
        """The models this client may use: a client key's allow-list filters the list."""
        data = models.list_models()
        note = accounting.CURRENT.get()
        if note is not None and note.models is not None:
            allowed = note.models
            data = [
                m
                for m in data
                if accounting.model_allowed(allowed, m["id"], self._kiro_model(m["id"]))
            ]
        body = {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        exchange.send(200, JSON_HEADERS, orjson.dumps(body))

    async def count_tokens(self, request: Request, exchange: Exchange) -> None:
        """The configured external counter's figure, else (on any failure) the estimate."""
        payload = parse_json_object(request.body)
        tokens = await external_count(self.state.client, self.state.config, payload)
        if tokens is None:
            tokens = convert.count_tokens(payload, self.state.convert_options)
        exchange.send(200, JSON_HEADERS, orjson.dumps({"input_tokens": max(1, tokens)}))

    # ------------------------------------------------------------------ messages

    def _messages_handler(self, buffered: bool) -> Handler:
        # A partial, not a wrapper coroutine: one frame less per request, for the
        # length of the stream.
        return functools.partial(self.messages, buffered=buffered)

    async def messages(self, request: Request, exchange: Exchange, *, buffered: bool) -> None:
        payload = parse_json_object(request.body)
        config = self.state.config
        if config.web_search and convert.is_web_search_request(payload):
            estimate = convert.count_tokens(payload, self.state.convert_options)
            search = websearch.WebSearch(
                self.state.pool, self.state.client, self.state.relay.settings.failover
            )
            await search.answer(payload, exchange, input_tokens=estimate)
            return
        plan = self._messages_plan(request, payload, buffered)
        # Only what the answer needs lives as long as the stream: the request body, its
        # parsed dict and the converted request are each as large as the conversation.
        # (The plan is built by a plain function so that its locals are gone too.)
        request.release_body()
        del payload
        await self.state.relay.run(exchange, plan)

    def _messages_plan(self, request: Request, payload: dict[str, Any], buffered: bool) -> Plan:
        config = self.state.config
        session_header = request.header("x-claude-code-session-id") or ""
        history = payload.get("messages")
        history = history if isinstance(history, list) else []
        notes: list[str] = []
        if config.truncation_note:
            session = convert.client_session_id(payload, session_header)
            note = truncation.MEMORY.note_for(session, history)
            if note is not None:
                notes.append(note)
        converted = convert.anthropic_to_kiro(
            payload,
            self.state.convert_options,
            request_id=request.request_id,
            session_id=session_header,
            notes=notes,
        )
        if notes:
            truncation.TRUNCATION["notes"] += 1
        answer = _AnthropicAnswer(
            converted,
            streaming=payload.get("stream") is True,
            buffered=buffered,
            schema=structured_output.requested_schema(payload),
            request_id=request.request_id,
            answered=truncation.Answered(history, fingerprint=config.truncation_note),
        )
        return Plan(
            body=converted.body_json,
            make_sink=answer.make_sink,
            make_converter=ConverterFactory(converted),
            streaming=answer.streaming,
            render_error=_render_anthropic_error,
            on_done=answer.on_done,
            session=session_key(payload),
            model=converted.kiro_model,
        )
