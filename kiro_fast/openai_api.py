"""The OpenAI endpoints: ``POST /v1/chat/completions`` and ``POST /v1/responses``.

Owns the two handlers and their wiring (:func:`install`). Each handler parses the body,
rewrites it with :mod:`kiro_fast.openai_convert` into an Anthropic-shaped request, runs
the same :func:`kiro_fast.convert.anthropic_to_kiro` as ``/v1/messages`` and hands a
:class:`~kiro_fast.relay.Plan` to the same :class:`~kiro_fast.relay.Relay`: one upstream
call, one pool, one stream converter. Only the sinks (:mod:`kiro_fast.openai_sse`) and
the error shape differ.

Errors raised before the relay starts are answered here, in OpenAI's shape with a
``code`` and ``param`` where one is known (``previous_response_not_found``,
``context_length_exceeded``…); the relay uses the same renderer through the Plan.

``previous_response_id`` is served from a :class:`~kiro_fast.responses_store.ResponseStore`
owned by the installed handlers; a finished response (completed or incomplete) is stored
unless the request said ``store: false``.

Must not know Kiro's event stream or the Anthropic output shapes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import app as app_module
from . import convert, openai_convert
from .errors import InvalidRequest, KiroFastError, PreviousResponseNotFound
from .openai_sse import (
    ChatCompletionSink,
    ChatCompletionSSESink,
    OnFinish,
    ResponseEnvelope,
    ResponsesSink,
    ResponsesSSESink,
    error_body,
)
from .protocol import Exchange, Request
from .relay import JSON_HEADERS, ConverterFactory, Plan, session_key
from .responses_store import ResponseStore

if TYPE_CHECKING:
    from .app import App, AppState


def install(app: App) -> OpenAIEndpoints:
    """Register the OpenAI routes on ``app``; returns the handlers (tests reach the store)."""
    endpoints = OpenAIEndpoints(app.state)
    app.route("POST", "/v1/chat/completions", endpoints.chat_completions)
    app.route("POST", "/v1/responses", endpoints.responses)
    return endpoints


def render_error(exc: KiroFastError) -> tuple[int, bytes]:
    """The Plan's renderer: status and OpenAI error body."""
    return exc.status, error_body(exc)


class OpenAIEndpoints:
    """The two handlers, with the conversion options and the response store they share."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        config = state.config
        self.options = dataclasses.replace(
            state.convert_options, openai_alias_model=config.openai_alias_model
        )
        self.thinking_format = config.openai_thinking_format
        self.store = ResponseStore(config.previous_responses_max, config.previous_responses_ttl)

    # ------------------------------------------------------------------ chat

    async def chat_completions(self, request: Request, exchange: Exchange) -> None:
        try:
            payload = app_module.parse_json_object(request.body)
            chat = openai_convert.chat_request(payload, self.options)
            converted = self._convert(chat.anthropic, request, "")
        except KiroFastError as exc:
            _send_error(exchange, exc)
            return
        completion_id = "chatcmpl-" + os.urandom(16).hex()
        created = int(time.time())
        model = converted.client_model
        thinking_format = self.thinking_format
        streaming, include_usage = chat.stream, chat.include_usage

        def make_sink() -> Any:
            if streaming:
                return ChatCompletionSSESink(
                    model,
                    completion_id,
                    created=created,
                    thinking_format=thinking_format,
                    include_usage=include_usage,
                )
            return ChatCompletionSink(
                model, completion_id, created=created, thinking_format=thinking_format
            )

        plan = self._plan(converted, make_sink, streaming, session_key(chat.anthropic))
        # The body, its parsed dicts and the converted request (each as large as the
        # conversation) need not live as long as the stream.
        request.release_body()
        del payload, chat, converted
        await self.state.relay.run(exchange, plan)

    # ------------------------------------------------------------------ responses

    async def responses(self, request: Request, exchange: Exchange) -> None:
        try:
            payload = app_module.parse_json_object(request.body)
            previous, session_id = self._previous(payload.get("previous_response_id"))
            rewritten = openai_convert.responses_request(payload, self.options, previous)
            if not session_id:
                session_id = _string_or_empty(payload.get("prompt_cache_key"))
            converted = self._convert(rewritten.anthropic, request, session_id)
        except KiroFastError as exc:
            _send_error(exchange, exc)
            return
        response_id = "resp_" + os.urandom(16).hex()
        envelope = ResponseEnvelope(
            response_id, int(time.time()), converted.client_model, rewritten.echo
        )
        on_finish: OnFinish | None = None
        if rewritten.store:
            on_finish = self._storer(
                response_id, rewritten.anthropic["messages"], converted.conversation_id
            )
        sinks: list[ResponsesSSESink] = []
        streaming = rewritten.stream

        def make_sink() -> Any:
            if not streaming:
                return ResponsesSink(envelope, on_finish=on_finish)
            if sinks and sinks[-1].emitted:
                return sinks[-1]  # the relay's error rendering continues this stream
            sink = ResponsesSSESink(envelope, on_finish=on_finish)
            sinks.append(sink)
            return sink

        plan = self._plan(converted, make_sink, streaming, session_key(rewritten.anthropic))
        request.release_body()
        del payload, rewritten, converted
        await self.state.relay.run(exchange, plan)

    def _previous(self, response_id: Any) -> tuple[list[dict[str, Any]] | None, str]:
        """The stored conversation ``previous_response_id`` continues, and its session."""
        if response_id is None:
            return None, ""
        if not isinstance(response_id, str) or not response_id:
            raise InvalidRequest("previous_response_id: must be a non-empty string")
        stored = self.store.get(response_id)
        if stored is None:
            raise PreviousResponseNotFound(
                f"previous response with id {response_id[:100]!r} not found"
            )
        return stored.messages, stored.conversation_id

    def _storer(
        self, response_id: str, messages: list[dict[str, Any]], conversation_id: str
    ) -> OnFinish:
        store = self.store

        def on_finish(output: list[dict[str, Any]]) -> None:
            answer = assistant_message(output)
            history = [*messages, answer] if answer is not None else list(messages)
            store.put(response_id, history, conversation_id)

        return on_finish

    # ------------------------------------------------------------------ shared

    def _convert(
        self, anthropic: dict[str, Any], request: Request, session_id: str
    ) -> convert.ConvertedRequest:
        return convert.anthropic_to_kiro(
            anthropic, self.options, request_id=request.request_id, session_id=session_id
        )

    @staticmethod
    def _plan(
        converted: convert.ConvertedRequest,
        make_sink: Callable[[], Any],
        streaming: bool,
        session: str | None,
    ) -> Plan:
        """The relay's plan; it keeps of ``converted`` only what the answer needs."""
        return Plan(
            body=converted.body_json,
            make_sink=make_sink,
            make_converter=ConverterFactory(converted),
            streaming=streaming,
            render_error=render_error,
            session=converted.client_session or session,
            model=converted.kiro_model,
        )


def assistant_message(output: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A response's output items as one Anthropic assistant message (reasoning left out)."""
    blocks: list[dict[str, Any]] = []
    for item in output:
        kind = item.get("type")
        if kind == "message":
            text = "".join(part.get("text", "") for part in item.get("content", []))
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "function_call":
            arguments = openai_convert.parse_arguments(item.get("arguments"), "output")
            blocks.append(openai_convert.tool_use(item["call_id"], item["name"], arguments))
    return {"role": "assistant", "content": blocks} if blocks else None


def _send_error(exchange: Exchange, exc: KiroFastError) -> None:
    headers = list(JSON_HEADERS) + [(k.encode(), v.encode()) for k, v in exc.headers.items()]
    exchange.send(exc.status, headers, error_body(exc))


def _string_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""
