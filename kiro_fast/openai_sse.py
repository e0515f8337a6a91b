"""OpenAI output: sinks that render :class:`~kiro_fast.stream.StreamConverter` calls.

* :class:`ChatCompletionSSESink` — ``/v1/chat/completions`` with ``stream: true``
  (kiro-api.md §10.4): ``chat.completion.chunk`` SSE lines, then ``data: [DONE]``.
* :class:`ChatCompletionSink` — ``stream: false``: one ``chat.completion`` object.
* :class:`ResponsesSSESink` — ``/v1/responses`` with ``stream: true``: the typed events of
  the Responses API (``response.created`` … ``response.completed``), each with its
  ``sequence_number``, shaped as the official ``openai`` SDK's types define them.
* :class:`ResponsesSink` — ``stream: false``: one ``response`` object.

Strategy: as in :mod:`kiro_fast.anthropic_sse`, every per-delta line is a bytes template
built once per response (the response's constant fields already filled in, ``%``
escaped) and filled with ``%``; only the dynamic strings go through ``orjson.dumps``.
Whole objects (the ``response`` in ``response.created``/``completed``, finished output
items) are built as dicts, a handful of times per response.

Mapping decisions:

* Chat: thinking goes to ``delta.reasoning_content``, or inside ``content`` wrapped in
  ``<thinking>``/``<think>`` tags (``openaiThinkingFormat``); tool calls are numbered by
  their order among tool calls (``tool_calls[].index``), not by block index.
* ``finish_reason`` / status: ``tool_use`` → ``tool_calls``; ``max_tokens`` and
  ``model_context_window_exceeded`` (truncation, §9.4) → ``length`` / an ``incomplete``
  response with ``incomplete_details.reason = max_output_tokens``; else ``stop`` /
  ``completed``.
* Responses: each text block is one ``message`` item with one ``output_text`` part,
  each thinking block one ``reasoning`` item with one summary part (what Codex shows),
  each tool call one ``function_call`` item (``call_id`` is the upstream tool-use id).
  Signatures are dropped; a redacted-thinking block becomes a reasoning item carrying
  ``encrypted_content``.
* Errors after the stream started: chat sends ``data: {"error": {…}}`` and no
  ``[DONE]``; Responses sends ``response.failed`` and then an ``error`` event whose data
  carries the nested ``error`` object the live API sends (so the SDK raises) besides the
  documented top-level ``code``/``message``/``param``. Never a clean finish.
* Pings are SSE comments (``: ping``); neither API has a ping event.

This module knows nothing about Kiro's events, HTTP or the response store.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from .errors import (
    AuthenticationError,
    ContextTooLong,
    KiroFastError,
    PreviousResponseNotFound,
)
from .stream import BLOCK_TEXT, BLOCK_THINKING, CONTEXT_WINDOW_EXCEEDED, MAX_TOKENS, TOOL_USE, Usage

_dumps = orjson.dumps

THINKING_FORMATS: Final = ("reasoning_content", "thinking", "think")
#: Tags around thinking inside ``content`` for the tag formats (closing tag, then a gap).
_THINKING_TAGS: Final = {
    "thinking": ("<thinking>", "</thinking>\n\n"),
    "think": ("<think>", "</think>\n\n"),
}
PING: Final = b": ping\n\n"
DONE: Final = b"data: [DONE]\n\n"
#: Rough UTF-8 bytes per token, for the reasoning-token share of the output (as stream.py).
_BYTES_PER_TOKEN: Final = 4

#: Anthropic error type → OpenAI error type.
_OPENAI_TYPES: Final = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "request_too_large": "invalid_request_error",
    "overloaded_error": "server_error",
}
#: OpenAI ``code`` values clients act on (Codex: context_length_exceeded,
#: insufficient_quota, rate_limit_exceeded, server_is_overloaded).
_CODES_BY_KIND: Final = {
    "context_too_long": "context_length_exceeded",
    "quota": "insufficient_quota",
}
_CODES_BY_TYPE: Final = {
    "rate_limit_error": "rate_limit_exceeded",
    "overloaded_error": "server_is_overloaded",
    "api_error": "server_error",
}
#: "messages.2.content: must be …" → param "messages.2.content".
_PARAM = re.compile(r"([A-Za-z_][\w.]*): ")


# --------------------------------------------------------------------------- errors


def error_object(exc: BaseException) -> dict[str, Any]:
    """OpenAI's ``{"message", "type", "param", "code"}`` for an exception."""
    if not isinstance(exc, KiroFastError):
        message = str(exc) or type(exc).__name__
        return {"message": message, "type": "server_error", "param": None, "code": "server_error"}
    message = exc.message or type(exc).__name__
    param: str | None = None
    code: str | None = _CODES_BY_KIND.get(getattr(exc, "kind", ""))
    if isinstance(exc, PreviousResponseNotFound):
        param, code = "previous_response_id", "previous_response_not_found"
    elif isinstance(exc, ContextTooLong):
        code = "context_length_exceeded"
    elif isinstance(exc, AuthenticationError):
        code = "invalid_api_key"
    elif exc.status == 400:
        match = _PARAM.match(message)
        param = match.group(1) if match else None
    if code is None:
        code = _CODES_BY_TYPE.get(exc.error_type)
    return {
        "message": message,
        "type": _OPENAI_TYPES.get(exc.error_type, "server_error"),
        "param": param,
        "code": code,
    }


def error_body(exc: BaseException) -> bytes:
    """The JSON body of an error answer: ``{"error": {…}}``."""
    return _dumps({"error": error_object(exc)})


def _escape(template: bytes) -> bytes:
    """Make bytes safe to prefix a ``%`` template (model names may contain ``%``)."""
    return template.replace(b"%", b"%%")


def finish_reason(stop_reason: str) -> str:
    if stop_reason == TOOL_USE:
        return "tool_calls"
    if stop_reason == MAX_TOKENS or stop_reason == CONTEXT_WINDOW_EXCEEDED:
        return "length"
    return "stop"


def chat_usage(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    prompt = usage.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def _reasoning_tokens(thinking_bytes: int, usage: Usage) -> int:
    return min(-(-thinking_bytes // _BYTES_PER_TOKEN), usage.output_tokens)


# --------------------------------------------------------------------------- chat


class ChatCompletionSSESink:
    """Renders converter calls as ``chat.completion.chunk`` SSE lines; :meth:`take` drains.

    Args:
        model: the model string the client asked for (echoed back).
        completion_id: ``chatcmpl-…``.
        created: Unix seconds.
        thinking_format: one of :data:`THINKING_FORMATS`.
        include_usage: ``stream_options.include_usage``: a last chunk with ``usage``.
    """

    __slots__ = (
        "_out",
        "_role_chunk",
        "_tpl_content",
        "_tpl_reasoning",
        "_tpl_tool_start",
        "_tpl_tool_args",
        "_tpl_finish",
        "_tpl_usage",
        "_tags",
        "_include_usage",
        "_kind",
        "_tool",
        "_thinking_bytes",
        "_ended",
    )

    def __init__(
        self,
        model: str,
        completion_id: str,
        *,
        created: int,
        thinking_format: str = "reasoning_content",
        include_usage: bool = False,
    ) -> None:
        self._out: list[bytes] = []
        head = _escape(
            b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":'
            % (_dumps(completion_id), created, _dumps(model))
        )

        def delta(fields: bytes) -> bytes:
            # concatenation, not %: the escaped head must stay escaped
            return head + b'[{"index":0,"delta":{' + fields + b'},"finish_reason":null}]}\n\n'

        self._role_chunk = delta(b'"role":"assistant","content":%s') % b'""'
        self._tpl_content = delta(b'"content":%s')
        self._tpl_reasoning = delta(b'"reasoning_content":%s')
        self._tpl_tool_start = delta(
            b'"tool_calls":[{"index":%d,"id":%s,"type":"function",'
            b'"function":{"name":%s,"arguments":""}}]'
        )
        self._tpl_tool_args = delta(b'"tool_calls":[{"index":%d,"function":{"arguments":%s}}]')
        self._tpl_finish = head + b'[{"index":0,"delta":{},"finish_reason":"%s"}]}\n\n'
        self._tpl_usage = head + b'[],"usage":%s}\n\n'
        self._tags = _THINKING_TAGS.get(thinking_format)
        self._include_usage = include_usage
        self._kind = ""
        self._tool = -1
        self._thinking_bytes = 0
        self._ended = False

    def take(self) -> bytes:
        """Everything rendered since the last call (``b""`` when nothing)."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    # ------------------------------------------------------------------ StreamSink

    def start(self) -> None:
        self._out.append(self._role_chunk)

    def block_start(self, index: int, kind: str, tool_id: str | None, name: str | None) -> None:
        self._kind = kind
        if kind == BLOCK_TEXT:
            return
        if kind == BLOCK_THINKING:
            if self._tags is not None:
                self._out.append(self._tpl_content % _dumps(self._tags[0]))
            return
        self._tool += 1
        self._out.append(
            self._tpl_tool_start % (self._tool, _dumps(tool_id or ""), _dumps(name or ""))
        )

    def text(self, index: int, text: str) -> None:
        self._out.append(self._tpl_content % _dumps(text))

    def thinking(self, index: int, text: str) -> None:
        self._thinking_bytes += len(text)
        if self._tags is None:
            self._out.append(self._tpl_reasoning % _dumps(text))
        else:
            self._out.append(self._tpl_content % _dumps(text))

    def signature(self, index: int, sig: str) -> None:
        pass

    def redacted_thinking(self, index: int, data: str) -> None:
        pass

    def tool_input(self, index: int, partial_json: str) -> None:
        self._out.append(self._tpl_tool_args % (self._tool, _dumps(partial_json)))

    def block_stop(self, index: int) -> None:
        if self._kind == BLOCK_THINKING and self._tags is not None:
            self._out.append(self._tpl_content % _dumps(self._tags[1]))
        self._kind = ""

    def finish(self, stop_reason: str, usage: Usage) -> None:
        if self._ended:
            return
        self._ended = True
        out = self._out
        out.append(self._tpl_finish % finish_reason(stop_reason).encode())
        if self._include_usage:
            reasoning = _reasoning_tokens(self._thinking_bytes, usage)
            out.append(self._tpl_usage % _dumps(chat_usage(usage, reasoning)))
        out.append(DONE)

    def ping(self) -> None:
        if not self._ended:
            self._out.append(PING)

    def error(self, exc: BaseException) -> None:
        if self._ended:
            return
        self._ended = True
        self._out.append(b"data: " + error_body(exc) + b"\n\n")


class ChatCompletionSink:
    """Folds converter calls into one ``chat.completion`` object (``stream: false``)."""

    __slots__ = (
        "_id",
        "_model",
        "_created",
        "_tags",
        "_texts",
        "_thinking",
        "_calls",
        "_kind",
        "completion",
        "error_exc",
    )

    def __init__(
        self,
        model: str,
        completion_id: str,
        *,
        created: int,
        thinking_format: str = "reasoning_content",
    ) -> None:
        self._id = completion_id
        self._model = model
        self._created = created
        self._tags = _THINKING_TAGS.get(thinking_format)
        self._texts: list[str] = []
        self._thinking: list[str] = []
        self._calls: list[dict[str, Any]] = []
        self._kind = ""
        #: the completion, set by finish()
        self.completion: dict[str, Any] | None = None
        #: the error that ended the response, set by error()
        self.error_exc: BaseException | None = None

    def body(self) -> bytes:
        if self.completion is None:
            raise RuntimeError("the completion is not finished")
        return _dumps(self.completion)

    # ------------------------------------------------------------------ StreamSink

    def start(self) -> None:
        pass

    def block_start(self, index: int, kind: str, tool_id: str | None, name: str | None) -> None:
        self._kind = kind
        if kind == BLOCK_THINKING and self._tags is not None:
            self._texts.append(self._tags[0])
        elif kind not in (BLOCK_TEXT, BLOCK_THINKING):
            function = {"name": name or "", "arguments": ""}
            self._calls.append({"id": tool_id or "", "type": "function", "function": function})

    def text(self, index: int, text: str) -> None:
        self._texts.append(text)

    def thinking(self, index: int, text: str) -> None:
        self._thinking.append(text)
        if self._tags is not None:
            self._texts.append(text)

    def signature(self, index: int, sig: str) -> None:
        pass

    def redacted_thinking(self, index: int, data: str) -> None:
        pass

    def tool_input(self, index: int, partial_json: str) -> None:
        self._calls[-1]["function"]["arguments"] += partial_json

    def block_stop(self, index: int) -> None:
        if self._kind == BLOCK_THINKING and self._tags is not None:
            self._texts.append(self._tags[1])
        self._kind = ""

    def finish(self, stop_reason: str, usage: Usage) -> None:
        thinking = "".join(self._thinking)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self._texts) or (None if self._calls else ""),
            "refusal": None,
        }
        if thinking and self._tags is None:
            message["reasoning_content"] = thinking
        if self._calls:
            message["tool_calls"] = self._calls
        reasoning = _reasoning_tokens(len(thinking.encode()), usage)
        self.completion = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason(stop_reason),
                }
            ],
            "usage": chat_usage(usage, reasoning),
        }

    def ping(self) -> None:
        pass

    def error(self, exc: BaseException) -> None:
        self.error_exc = exc


# --------------------------------------------------------------------------- responses


class ResponseEnvelope:
    """The constant part of one Response object: ids, model, the echoed request fields."""

    __slots__ = ("response_id", "created_at", "model", "echo", "_serial")

    def __init__(self, response_id: str, created_at: int, model: str, echo: dict[str, Any]) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.model = model
        self.echo = echo
        self._serial = response_id.partition("_")[2] or response_id

    def item_id(self, prefix: str, index: int) -> str:
        """A unique output-item id without a syscall per item (``msg_<response>_<n>``)."""
        return f"{prefix}_{self._serial}_{index}"

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "usage": usage,
            **self.echo,
        }


def responses_usage(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    prompt = usage.prompt_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_input_tokens,
            "cache_write_tokens": usage.cache_creation_input_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": prompt + usage.output_tokens,
    }


def response_status(stop_reason: str) -> str:
    return "incomplete" if finish_reason(stop_reason) == "length" else "completed"


#: Called once with the finished output items (a completed or incomplete response).
OnFinish = Callable[[list[dict[str, Any]]], None]


class ResponsesSink:
    """Folds converter calls into one Response object (``/v1/responses``, ``stream: false``).

    Args:
        envelope: ids, model and echoed request fields.
        on_finish: receives the output items when the response finished (the store).
    """

    __slots__ = (
        "envelope",
        "output",
        "_parts",
        "_kind",
        "_item",
        "_thinking_bytes",
        "_on_finish",
        "response",
        "error_exc",
    )

    def __init__(self, envelope: ResponseEnvelope, *, on_finish: OnFinish | None = None) -> None:
        self.envelope = envelope
        #: finished output items
        self.output: list[dict[str, Any]] = []
        #: fragments of the open item
        self._parts: list[str] = []
        self._kind = ""
        self._item: dict[str, Any] = {}
        self._thinking_bytes = 0
        self._on_finish = on_finish
        #: the Response object, set by finish()
        self.response: dict[str, Any] | None = None
        self.error_exc: BaseException | None = None

    def body(self) -> bytes:
        if self.response is None:
            raise RuntimeError("the response is not finished")
        return _dumps(self.response)

    # ------------------------------------------------------------------ items

    def _open_item(self, kind: str, tool_id: str | None, name: str | None) -> dict[str, Any]:
        index = len(self.output)
        self._kind = kind
        self._parts = []
        if kind == BLOCK_TEXT:
            item_id = self.envelope.item_id("msg", index)
            item = {"id": item_id, "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}  # fmt: skip
        elif kind == BLOCK_THINKING:
            item = {"id": self.envelope.item_id("rs", index), "type": "reasoning", "summary": []}
        else:
            item = {"id": self.envelope.item_id("fc", index), "type": "function_call",
                    "status": "in_progress", "call_id": tool_id or "", "name": name or "",
                    "arguments": ""}  # fmt: skip
        self._item = item
        return item

    def _close_item(self) -> tuple[dict[str, Any], str]:
        """The open item, finished, appended to ``output``; and its joined text."""
        joined = "".join(self._parts)
        kind = self._kind
        item = dict(self._item)
        if kind == BLOCK_TEXT:
            item["status"] = "completed"
            item["content"] = [{"type": "output_text", "text": joined, "annotations": []}]
        elif kind == BLOCK_THINKING:
            item["summary"] = [{"type": "summary_text", "text": joined}]
        else:
            item["status"] = "completed"
            item["arguments"] = joined
        self.output.append(item)
        self._kind = ""
        return item, joined

    def _finish_response(self, stop_reason: str, usage: Usage) -> dict[str, Any]:
        reasoning = _reasoning_tokens(self._thinking_bytes, usage)
        status = response_status(stop_reason)
        response = self.envelope.response(status, self.output, responses_usage(usage, reasoning))
        if status == "completed":
            response["completed_at"] = int(time.time())
        self.response = response
        if self._on_finish is not None:
            self._on_finish(self.output)
        return response

    # ------------------------------------------------------------------ StreamSink

    def start(self) -> None:
        pass

    def block_start(self, index: int, kind: str, tool_id: str | None, name: str | None) -> None:
        self._open_item(kind, tool_id, name)

    def text(self, index: int, text: str) -> None:
        self._parts.append(text)

    def thinking(self, index: int, text: str) -> None:
        self._thinking_bytes += len(text)
        self._parts.append(text)

    def signature(self, index: int, sig: str) -> None:
        pass

    def redacted_thinking(self, index: int, data: str) -> None:
        item_id = self.envelope.item_id("rs", len(self.output))
        self.output.append(
            {"id": item_id, "type": "reasoning", "summary": [], "encrypted_content": data}
        )

    def tool_input(self, index: int, partial_json: str) -> None:
        self._parts.append(partial_json)

    def block_stop(self, index: int) -> None:
        self._close_item()

    def finish(self, stop_reason: str, usage: Usage) -> None:
        self._finish_response(stop_reason, usage)

    def ping(self) -> None:
        pass

    def error(self, exc: BaseException) -> None:
        self.error_exc = exc


_EVENT: Final = b"event: %s\ndata: %s\n\n"


class ResponsesSSESink(ResponsesSink):
    """Renders converter calls as Responses API stream events; :meth:`take` drains them.

    ``emitted`` tells the handler this sink's events reached the client, so an error
    after that must be rendered by this sink (its sequence numbers and items), not a
    fresh one.
    """

    __slots__ = (
        "_out",
        "_seq",
        "_index",
        "_item_json",
        "_started",
        "_ended",
        "emitted",
    )

    def __init__(self, envelope: ResponseEnvelope, *, on_finish: OnFinish | None = None) -> None:
        super().__init__(envelope, on_finish=on_finish)
        self._out: list[bytes] = []
        self._seq = 0
        #: output_index of the open item
        self._index = 0
        self._item_json = b'""'
        self._started = False
        self._ended = False
        self.emitted = False

    def take(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        if self._started:
            self.emitted = True
        return data

    def _event(self, kind: str, payload: dict[str, Any]) -> None:
        """A whole event built from a dict (lifecycle and item events, a few per item)."""
        body = {"type": kind, "sequence_number": self._seq, **payload}
        self._seq += 1
        self._out.append(_EVENT % (kind.encode(), _dumps(body)))

    # ------------------------------------------------------------------ StreamSink

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        response = self.envelope.response("in_progress", [])
        self._event("response.created", {"response": response})
        self._event("response.in_progress", {"response": response})

    def block_start(self, index: int, kind: str, tool_id: str | None, name: str | None) -> None:
        self._index = len(self.output)
        item = self._open_item(kind, tool_id, name)
        # An exact copy: a kept orjson.dumps() result holds a buffer of at least 4 KiB.
        self._item_json = bytes(memoryview(_dumps(item["id"])))
        self._event("response.output_item.added", {"output_index": self._index, "item": item})
        where = {"item_id": item["id"], "output_index": self._index}
        if kind == BLOCK_TEXT:
            part = {"type": "output_text", "text": "", "annotations": []}
            self._event("response.content_part.added", {**where, "content_index": 0, "part": part})
        elif kind == BLOCK_THINKING:
            part = {"type": "summary_text", "text": ""}
            self._event(
                "response.reasoning_summary_part.added", {**where, "summary_index": 0, "part": part}
            )

    def text(self, index: int, text: str) -> None:
        self._parts.append(text)
        seq = self._seq
        self._seq = seq + 1
        self._out.append(
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"sequence_number":%d,"item_id":%s,"output_index":%d,"content_index":0,'
            b'"delta":%s,"logprobs":[]}\n\n' % (seq, self._item_json, self._index, _dumps(text))
        )

    def thinking(self, index: int, text: str) -> None:
        self._thinking_bytes += len(text)
        self._parts.append(text)
        seq = self._seq
        self._seq = seq + 1
        self._out.append(
            b"event: response.reasoning_summary_text.delta\n"
            b'data: {"type":"response.reasoning_summary_text.delta","sequence_number":%d,'
            b'"item_id":%s,"output_index":%d,"summary_index":0,"delta":%s}\n\n'
            % (seq, self._item_json, self._index, _dumps(text))
        )

    def redacted_thinking(self, index: int, data: str) -> None:
        output_index = len(self.output)
        super().redacted_thinking(index, data)
        item = self.output[-1]
        self._event("response.output_item.added", {"output_index": output_index, "item": item})
        self._event("response.output_item.done", {"output_index": output_index, "item": item})

    def tool_input(self, index: int, partial_json: str) -> None:
        self._parts.append(partial_json)
        seq = self._seq
        self._seq = seq + 1
        self._out.append(
            b"event: response.function_call_arguments.delta\n"
            b'data: {"type":"response.function_call_arguments.delta","sequence_number":%d,'
            b'"item_id":%s,"output_index":%d,"delta":%s}\n\n'
            % (seq, self._item_json, self._index, _dumps(partial_json))
        )

    def block_stop(self, index: int) -> None:
        kind = self._kind
        item, joined = self._close_item()
        where = {"item_id": item["id"], "output_index": self._index}
        if kind == BLOCK_TEXT:
            part = item["content"][0]
            self._event("response.output_text.done", {**where, "content_index": 0,
                                                      "text": joined, "logprobs": []})  # fmt: skip
            self._event("response.content_part.done", {**where, "content_index": 0, "part": part})
        elif kind == BLOCK_THINKING:
            part = item["summary"][0]
            self._event(
                "response.reasoning_summary_text.done",
                {**where, "summary_index": 0, "text": joined},
            )
            self._event(
                "response.reasoning_summary_part.done", {**where, "summary_index": 0, "part": part}
            )
        else:
            self._event("response.function_call_arguments.done", {**where, "arguments": joined})
        self._event("response.output_item.done", {"output_index": self._index, "item": item})

    def finish(self, stop_reason: str, usage: Usage) -> None:
        if self._ended:
            return
        self._ended = True
        response = self._finish_response(stop_reason, usage)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        self._event(kind, {"response": response})

    def ping(self) -> None:
        if not self._ended:
            self._out.append(PING)

    def error(self, exc: BaseException) -> None:
        if self._ended:
            return
        self.start()  # a client must see response.created before response.failed
        self._ended = True
        self.error_exc = exc
        details = error_object(exc)
        failure = {"code": details["code"] or "server_error", "message": details["message"]}
        response = self.envelope.response("failed", self.output, error=failure)
        self._event("response.failed", {"response": response})
        self._event(
            "error",
            {
                "code": details["code"],
                "message": details["message"],
                "param": details["param"],
                "error": details,
            },
        )
