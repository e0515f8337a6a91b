"""Anthropic Messages output: sinks that render :class:`~kiro_fast.stream.StreamConverter` calls.

* :class:`AnthropicSSESink` — ``/v1/messages`` with ``stream: true`` (spec kiro-api.md
  §7.1–7.3): SSE bytes accumulate in a list and :meth:`~AnthropicSSESink.take` hands them
  over once per upstream read.
* :class:`BufferedSSESink` — ``/cc/v1/messages`` (§7.5): only pings leave until the end,
  then ``message_start`` carries the final input tokens and everything leaves at once.
* :class:`AnthropicMessageSink` — ``stream: false`` (§7.6): one message dict.

Strategy: every SSE event is a constant bytes template filled with ``%``; only dynamic
strings go through ``orjson.dumps`` (performance-notes §3.5). No dict is built per delta.

Thinking blocks: kiro.rs' shape ``{"type":"thinking","thinking":""}`` by default; with
``send_signature`` the block also carries ``"signature":""`` (the official API's shape).
A ``signature_delta`` is sent only with a signature the upstream really sent. kiro.rs' empty
``thinking_delta`` before a thinking block's stop is not sent: the official API does not
send one and the SDK's accumulator does not need it.

After :meth:`error` nothing but the ``error`` event is sent — no ``message_stop`` — so a
client sees a broken stream, never a clean finish with partial content.

This module knows nothing about Kiro's events; it only renders sink calls.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from .errors import KiroFastError
from .stream import BLOCK_TEXT, BLOCK_THINKING, Usage

_dumps = orjson.dumps

_MESSAGE_START: Final = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":%s,"type":"message",'
    b'"role":"assistant","content":[],"model":%s,"stop_reason":null,"stop_sequence":null,'
    b'"usage":{%s}}}\n\n'
)
_BLOCK_START_TEXT: Final = (
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":%d,"content_block":{"type":"text","text":""}}\n\n'
)
_BLOCK_START_THINKING: Final = (
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"thinking","thinking":""}}\n\n'
)
_BLOCK_START_THINKING_SIGNED: Final = (
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"thinking","thinking":"","signature":""}}\n\n'
)
_BLOCK_START_TOOL: Final = (
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"tool_use","id":%s,"name":%s,"input":{}}}\n\n'
)
_BLOCK_START_REDACTED: Final = (
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"redacted_thinking","data":%s}}\n\n'
)
_TEXT_DELTA: Final = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":%s}}\n\n'
)
_THINKING_DELTA: Final = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"thinking_delta","thinking":%s}}\n\n'
)
_SIGNATURE_DELTA: Final = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"signature_delta","signature":%s}}\n\n'
)
_INPUT_JSON_DELTA: Final = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"input_json_delta","partial_json":%s}}\n\n'
)
_BLOCK_STOP: Final = (
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
)
_MESSAGE_DELTA: Final = (
    b'event: message_delta\ndata: {"type":"message_delta",'
    b'"delta":{"stop_reason":"%s","stop_sequence":null},"usage":{%s}}\n\n'
)
_MESSAGE_STOP: Final = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
#: The official API's (and spec §7.1's) bytes, space included.
PING: Final = b'event: ping\ndata: {"type": "ping"}\n\n'
_ERROR: Final = b'event: error\ndata: {"type":"error","error":{"type":%s,"message":%s}}\n\n'

#: message_start's output count before anything was generated (kiro.rs, the official API).
START_OUTPUT_TOKENS: Final = 1


def _usage_fields(input_tokens: int, output_tokens: int, usage: Usage) -> bytes:
    """The inside of a ``usage`` object; cache fields only when non-zero."""
    out = b'"input_tokens":%d,"output_tokens":%d' % (input_tokens, output_tokens)
    if usage.cache_creation_input_tokens:
        out += b',"cache_creation_input_tokens":%d' % usage.cache_creation_input_tokens
    if usage.cache_read_input_tokens:
        out += b',"cache_read_input_tokens":%d' % usage.cache_read_input_tokens
    return out


def error_parts(exc: BaseException) -> tuple[str, str]:
    """(Anthropic ``error.type``, message) for an exception ending a response."""
    if isinstance(exc, KiroFastError):
        return exc.error_type, exc.message or type(exc).__name__
    return "api_error", str(exc) or type(exc).__name__


def render_error(exc: BaseException) -> bytes:
    """The SSE ``error`` event for ``exc``."""
    error_type, message = error_parts(exc)
    return _ERROR % (_dumps(error_type), _dumps(message))


class AnthropicSSESink:
    """Renders converter calls as Anthropic SSE bytes; :meth:`take` drains them.

    Args:
        model: the model string the client asked for (echoed back).
        message_id: ``msg_…``.
        input_estimate: ``message_start``'s ``input_tokens`` (the local estimate).
        send_signature: give thinking blocks an empty ``signature`` field (official shape).
    """

    __slots__ = ("_out", "_append", "_id", "_model", "_input_estimate", "_thinking_start", "_ended")

    def __init__(
        self,
        model: str,
        message_id: str,
        *,
        input_estimate: int,
        send_signature: bool = False,
    ) -> None:
        self._out: list[bytes] = []
        #: where content events go (BufferedSSESink points it at its held list)
        self._append = self._out.append
        # Kept as str, dumped in message_start: a kept orjson.dumps() result holds a buffer
        # of at least 4 KiB, which would be most of an idle stream's memory.
        self._id = message_id
        self._model = model
        self._input_estimate = input_estimate
        self._thinking_start = (
            _BLOCK_START_THINKING_SIGNED if send_signature else _BLOCK_START_THINKING
        )
        self._ended = False

    def take(self) -> bytes:
        """Everything rendered since the last call (``b""`` when nothing)."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    def _message_start(self, usage: Usage) -> bytes:
        fields = _usage_fields(usage.input_tokens, START_OUTPUT_TOKENS, usage)
        return _MESSAGE_START % (_dumps(self._id), _dumps(self._model), fields)

    # ------------------------------------------------------------------ StreamSink

    def start(self) -> None:
        self._append(self._message_start(Usage(self._input_estimate, START_OUTPUT_TOKENS)))

    def block_start(self, index: int, kind: str, tool_id: str | None, name: str | None) -> None:
        if kind == BLOCK_TEXT:
            self._append(_BLOCK_START_TEXT % index)
        elif kind == BLOCK_THINKING:
            self._append(self._thinking_start % index)
        else:
            self._append(_BLOCK_START_TOOL % (index, _dumps(tool_id or ""), _dumps(name or "")))

    def text(self, index: int, text: str) -> None:
        self._append(_TEXT_DELTA % (index, _dumps(text)))

    def thinking(self, index: int, text: str) -> None:
        self._append(_THINKING_DELTA % (index, _dumps(text)))

    def signature(self, index: int, sig: str) -> None:
        self._append(_SIGNATURE_DELTA % (index, _dumps(sig)))

    def redacted_thinking(self, index: int, data: str) -> None:
        self._append(_BLOCK_START_REDACTED % (index, _dumps(data)))
        self._append(_BLOCK_STOP % index)

    def tool_input(self, index: int, partial_json: str) -> None:
        self._append(_INPUT_JSON_DELTA % (index, _dumps(partial_json)))

    def block_stop(self, index: int) -> None:
        self._append(_BLOCK_STOP % index)

    def finish(self, stop_reason: str, usage: Usage) -> None:
        if self._ended:
            return
        self._ended = True
        fields = _usage_fields(usage.input_tokens, usage.output_tokens, usage)
        self._append(_MESSAGE_DELTA % (stop_reason.encode(), fields))
        self._append(_MESSAGE_STOP)

    def ping(self) -> None:
        if not self._ended:
            self._out.append(PING)

    def error(self, exc: BaseException) -> None:
        if self._ended:
            return
        self._ended = True
        self._out.append(render_error(exc))


class BufferedSSESink(AnthropicSSESink):
    """``/cc/v1/messages``: pings only until the end, then the whole message at once.

    ``message_start`` is rendered last, at :meth:`finish`, with the final input tokens
    (context-derived or exact) instead of the estimate, and put in front.
    """

    __slots__ = ("_held",)

    def __init__(
        self,
        model: str,
        message_id: str,
        *,
        input_estimate: int,
        send_signature: bool = False,
    ) -> None:
        super().__init__(
            model, message_id, input_estimate=input_estimate, send_signature=send_signature
        )
        self._held: list[bytes] = []
        self._append = self._held.append

    def start(self) -> None:
        """Nothing yet: message_start is rendered at finish()."""

    def finish(self, stop_reason: str, usage: Usage) -> None:
        if self._ended:
            return
        super().finish(stop_reason, usage)
        self._out.append(self._message_start(usage))
        self._out.extend(self._held)
        self._held.clear()

    def error(self, exc: BaseException) -> None:
        """The partial message is discarded; the client gets the error event alone."""
        self._held.clear()
        super().error(exc)


class AnthropicMessageSink:
    """Folds converter calls into one non-streaming Anthropic message (spec §7.6).

    The result equals what the official SDK accumulates from :class:`AnthropicSSESink`'s
    bytes for the same calls. Tool inputs are parsed (the converter sends only valid JSON).
    """

    __slots__ = ("_id", "_model", "_send_signature", "_content", "_parts", "message", "error_exc")

    def __init__(
        self,
        model: str,
        message_id: str,
        *,
        input_estimate: int,
        send_signature: bool = False,
    ) -> None:
        del input_estimate  # the final usage always replaces it
        self._id = message_id
        self._model = model
        self._send_signature = send_signature
        self._content: list[dict[str, Any]] = []
        #: fragments of the open block
        self._parts: list[str] = []
        #: the message, set by finish()
        self.message: dict[str, Any] | None = None
        #: the error that ended the response, set by error()
        self.error_exc: BaseException | None = None

    def body(self) -> bytes:
        """The finished message as JSON bytes."""
        if self.message is None:
            raise RuntimeError("the message is not finished")
        return _dumps(self.message)

    # ------------------------------------------------------------------ StreamSink

    def start(self) -> None:
        pass

    def block_start(self, index: int, kind: str, tool_id: str | None, name: str | None) -> None:
        block: dict[str, Any]
        if kind == BLOCK_TEXT:
            block = {"type": "text", "text": ""}
        elif kind == BLOCK_THINKING:
            block = {"type": "thinking", "thinking": ""}
            if self._send_signature:
                block["signature"] = ""
        else:
            block = {"type": "tool_use", "id": tool_id or "", "name": name or "", "input": {}}
        self._content.append(block)
        self._parts = []

    def text(self, index: int, text: str) -> None:
        self._parts.append(text)

    def thinking(self, index: int, text: str) -> None:
        self._parts.append(text)

    def signature(self, index: int, sig: str) -> None:
        self._content[-1]["signature"] = sig

    def redacted_thinking(self, index: int, data: str) -> None:
        self._content.append({"type": "redacted_thinking", "data": data})

    def tool_input(self, index: int, partial_json: str) -> None:
        self._parts.append(partial_json)

    def block_stop(self, index: int) -> None:
        block = self._content[-1]
        joined = "".join(self._parts)
        kind = block["type"]
        if kind == "tool_use":
            block["input"] = orjson.loads(joined) if joined else {}
        else:
            block[kind] = joined

    def finish(self, stop_reason: str, usage: Usage) -> None:
        usage_out: dict[str, int] = {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
        }
        if usage.cache_creation_input_tokens:
            usage_out["cache_creation_input_tokens"] = usage.cache_creation_input_tokens
        if usage.cache_read_input_tokens:
            usage_out["cache_read_input_tokens"] = usage.cache_read_input_tokens
        self.message = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "content": self._content,
            "model": self._model,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage_out,
        }

    def ping(self) -> None:
        pass

    def error(self, exc: BaseException) -> None:
        self.error_exc = exc
