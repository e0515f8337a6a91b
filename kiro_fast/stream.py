"""Upstream event-stream messages → calls on a sink (spec kiro-api.md §6.3–6.6, §7.2, §8, §9.3–9.4).

:class:`StreamConverter` is the one place that understands Kiro's response events. It turns
decoded :class:`~kiro_fast.eventstream.Message` objects into a well-formed sequence of
:class:`StreamSink` calls; sinks render them (Anthropic SSE, one Anthropic message, OpenAI
chunks…). It is sans-IO: no sockets, no asyncio, no clock.

Guarantees to every sink (kiro.rs' SSE state machine, §7.2):

* exactly one ``start()``, before anything else;
* at most one block open at a time; deltas only for the open block; every block stopped
  once; indexes count up from 0 without gaps;
* ``finish()`` once, after every block is stopped — or never, when ``feed()`` raised.
  On any failure (``feed()`` raised, the upstream read failed) the handler calls
  ``sink.error()`` itself and never :meth:`StreamConverter.finish`: a broken stream must
  reach the client as an error, never as a clean finish with partial content.

Decisions:

* Text blocks open lazily on the first text, so a tool-only answer has no empty text block;
  text after a tool call opens a new block.
* Tool calls are buffered until their ``stop: true`` frame, validated as a JSON object, then
  sent whole (start, one ``tool_input``, stop). A cut or invalid call is never sent as if it
  were complete (§9.4): it is dropped and the message ends with ``max_tokens``.
* A body that ends without ``contextUsageEvent`` (or ``metadataEvent`` usage) was cut by the
  upstream: ``truncated`` is set and the stop reason is ``max_tokens``.
* Stop reason: ``model_context_window_exceeded`` (context usage ≥ 100 %) > ``max_tokens``
  (truncated, or an answer of thinking only, which also gets kiro.rs' one-space text block)
  > ``tool_use`` > ``end_turn``.
* Native ``reasoningContentEvent``: ``text`` → thinking deltas, ``signature`` →
  ``signature()`` on that block, ``redactedContent`` → a whole ``redacted_thinking`` block.
* Output tokens are estimated from the UTF-8 size of what the model produced (4 bytes per
  token: ASCII ~4 chars, CJK ~1.3 chars per token, near kiro.rs' per-fragment rules), summed
  per event and divided once at the end, unless the upstream reports exact usage.

This module must not know any output format: no Anthropic or OpenAI JSON here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from .errors import UpstreamException
from .thinking import TEXT, THINKING, THINKING_END, Piece, ThinkingParser

if TYPE_CHECKING:
    from .eventstream import Message

BLOCK_TEXT: Final = "text"
BLOCK_THINKING: Final = "thinking"
BLOCK_TOOL_USE: Final = "tool_use"
#: kinds in block_start(); redacted thinking arrives whole through redacted_thinking()
BLOCK_KINDS: Final = (BLOCK_TEXT, BLOCK_THINKING, BLOCK_TOOL_USE)

END_TURN: Final = "end_turn"
TOOL_USE: Final = "tool_use"
MAX_TOKENS: Final = "max_tokens"
CONTEXT_WINDOW_EXCEEDED: Final = "model_context_window_exceeded"

#: UTF-8 bytes per output token for the local estimate (kiro.rs: ~4 Western chars per token).
BYTES_PER_TOKEN: Final = 4
#: Exception types/reasons that mean "the output hit its size limit" (kiro.rs, kiro2api).
CONTENT_LENGTH_EXCEPTION: Final = "ContentLengthExceededException"
CONTENT_LENGTH_REASON: Final = "CONTENT_LENGTH_EXCEEDS_THRESHOLD"
#: Upstream message text is cut to this length in error messages.
MAX_ERROR_TEXT: Final = 500

_loads = orjson.loads


@dataclass(slots=True)
class Usage:
    """Token usage of one message, Anthropic semantics.

    ``input_tokens`` excludes the cache fields (Anthropic counts the prompt as
    input + cache read + cache creation); see :attr:`prompt_tokens`.
    """

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: uncached input plus cache reads and writes."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens


class StreamSink(Protocol):
    """What :class:`StreamConverter` drives. Calls arrive in the order the module promises."""

    def start(self) -> None:
        """The message begins (sinks know the input estimate from their constructor)."""

    def block_start(self, index: int, kind: str, tool_id: str | None, name: str | None) -> None:
        """Open block ``index``; ``kind`` is one of :data:`BLOCK_KINDS`; tool_id/name for tools."""

    def text(self, index: int, text: str) -> None: ...

    def thinking(self, index: int, text: str) -> None: ...

    def signature(self, index: int, sig: str) -> None:
        """A signature sent by the upstream for thinking block ``index`` (never invented)."""

    def redacted_thinking(self, index: int, data: str) -> None:
        """A whole redacted-thinking block (no start/stop calls around it)."""

    def tool_input(self, index: int, partial_json: str) -> None: ...

    def block_stop(self, index: int) -> None: ...

    def finish(self, stop_reason: str, usage: Usage) -> None: ...

    def ping(self) -> None:
        """Keep-alive during silences; called by the handler, never by the converter."""

    def error(self, exc: BaseException) -> None:
        """The stream broke after it started; no finish() follows."""


@dataclass(slots=True)
class _ToolCall:
    name: str
    parts: list[str] = field(default_factory=list)


class StreamConverter:
    """Kiro event-stream messages → :class:`StreamSink` calls, for one response.

    Args:
        sink: receives the calls.
        thinking: run the ``<thinking>`` tag parser over the text (tag emulation was requested).
        tool_names: upstream tool name → the client's name (shortened names mapped back).
        context_window: the model's context size, for ``contextUsageEvent`` percentages.
        input_tokens: the local estimate of the prompt, used until the upstream tells better.
    """

    __slots__ = (
        "_sink",
        "_sink_text",
        "_parser",
        "_plain",
        "_tool_names",
        "_context_window",
        "_input_estimate",
        "_next_index",
        "_open",
        "_open_kind",
        "_text_blocks",
        "_thinking_blocks",
        "_tool_blocks",
        "_tools",
        "_tools_done",
        "_dropped_tools",
        "_length_exceeded",
        "_thinking_only",
        "_complete",
        "_cut",
        "_context_pct",
        "_exact",
        "_out_bytes",
        "_text_chars",
        "_credits",
        "_started",
        "_closed",
        "_stop_reason",
        "_usage",
    )

    def __init__(
        self,
        sink: StreamSink,
        *,
        thinking: bool = False,
        tool_names: Mapping[str, str] | None = None,
        context_window: int,
        input_tokens: int,
    ) -> None:
        self._sink = sink
        self._sink_text = sink.text
        self._parser = ThinkingParser() if thinking else None
        #: text goes straight into text blocks (thinking off, or the parser is done)
        self._plain = not thinking
        self._tool_names: Mapping[str, str] = tool_names or {}
        self._context_window = context_window
        self._input_estimate = input_tokens
        self._next_index = 0
        self._open = -1
        self._open_kind = ""
        self._text_blocks = 0
        self._thinking_blocks = 0
        self._tool_blocks = 0
        self._tools: dict[str, _ToolCall] = {}
        #: finished tool calls; None until the first (an empty set costs 216 bytes a stream)
        self._tools_done: set[str] | None = None
        self._dropped_tools = 0
        self._length_exceeded = False
        self._thinking_only = False
        #: a contextUsageEvent or metadata usage arrived: the upstream finished its answer
        self._complete = False
        #: the body ended without that event (set by finish)
        self._cut = False
        self._context_pct: float | None = None
        self._exact: Usage | None = None
        self._out_bytes = 0
        self._text_chars = 0
        self._credits = 0.0
        self._started = False
        self._closed = False
        self._stop_reason: str | None = None
        self._usage: Usage | None = None

    # ------------------------------------------------------------------ read-only state

    @property
    def started(self) -> bool:
        return self._started

    @property
    def finished(self) -> bool:
        """finish() ran (False after feed() raised)."""
        return self._stop_reason is not None

    @property
    def truncated(self) -> bool:
        """The upstream cut the answer: no end-of-answer event, a cut or invalid tool call,
        or a content-length exception. Final only after :meth:`finish`."""
        return self._length_exceeded or self._dropped_tools > 0 or self._cut

    @property
    def stop_reason(self) -> str | None:
        """Set by :meth:`finish`."""
        return self._stop_reason

    @property
    def usage(self) -> Usage:
        """Final after :meth:`finish`; before it, the best numbers known so far."""
        return self._usage if self._usage is not None else self._compute_usage()

    @property
    def blocks(self) -> int:
        """Content blocks sent to the sink so far."""
        return self._next_index

    @property
    def text_chars(self) -> int:
        """Characters of text and thinking sent to the sink so far."""
        return self._text_chars

    @property
    def tool_calls(self) -> int:
        return self._tool_blocks

    @property
    def dropped_tool_calls(self) -> int:
        """Tool calls cut or invalid, never sent (final after :meth:`finish`)."""
        return self._dropped_tools

    @property
    def credits(self) -> float:
        """Sum of ``meteringEvent`` usage (Kiro credits)."""
        return self._credits

    @property
    def context_usage_percentage(self) -> float | None:
        return self._context_pct

    # ------------------------------------------------------------------ driving

    def start(self) -> None:
        """Begin the message (idempotent); call when the upstream answered 200."""
        if not self._started:
            self._started = True
            self._sink.start()

    def feed(self, messages: Iterable[Message]) -> None:
        """Consume decoded messages.

        Raises:
            UpstreamException: an exception or error frame other than a content-length
                one, or an unreadable payload. Calls already made stay in the sink; the
                converter is closed, and the handler ends the response with ``sink.error()``.
        """
        if self._closed:
            return
        if not self._started:
            self.start()
        try:
            for message in messages:
                event_type = message.event_type
                if event_type == "assistantResponseEvent":
                    try:
                        content = _loads(message.payload)["content"]
                    except (KeyError, TypeError):
                        continue
                    if not content or type(content) is not str:
                        continue
                    if not self._plain:
                        self._route(self._tag_pieces(content))
                        continue
                    if self._open_kind != BLOCK_TEXT:
                        self._open_block(BLOCK_TEXT)
                    self._text_chars += len(content)
                    self._out_bytes += len(content) if content.isascii() else len(content.encode())
                    self._sink_text(self._open, content)
                elif event_type == "toolUseEvent":
                    self._on_tool(_loads(message.payload))
                else:
                    self._on_other(message)
        except orjson.JSONDecodeError as exc:
            self._closed = True
            raise UpstreamException(f"upstream sent an unreadable event: {exc}") from exc

    def finish(self) -> None:
        """The upstream body ended: close everything and report stop reason and usage."""
        if self._closed:
            return
        if not self._started:
            self.start()
        self._closed = True
        self._cut = not self._complete
        if self._parser is not None and not self._parser.done:
            self._route(self._parser.flush())
        self._close_block()
        if self._tools:
            self._dropped_tools += len(self._tools)
            self._tools.clear()
        if self._thinking_blocks and not (self._text_blocks or self._tool_blocks):
            # kiro.rs: a thinking-only answer spent its budget thinking; clients need a text block
            self._thinking_only = True
            self._open_block(BLOCK_TEXT)
            self._sink_text(self._open, " ")
            self._close_block()
        self._stop_reason = self._decide_stop_reason()
        self._usage = self._compute_usage()
        self._sink.finish(self._stop_reason, self._usage)

    # ------------------------------------------------------------------ blocks

    def _open_block(self, kind: str, tool_id: str | None = None, name: str | None = None) -> int:
        if self._open >= 0:
            self._sink.block_stop(self._open)
        index = self._next_index
        self._next_index = index + 1
        self._open = index
        self._open_kind = kind
        if kind == BLOCK_TEXT:
            self._text_blocks += 1
        elif kind == BLOCK_THINKING:
            self._thinking_blocks += 1
        else:
            self._tool_blocks += 1
        self._sink.block_start(index, kind, tool_id, name)
        return index

    def _close_block(self) -> None:
        if self._open >= 0:
            self._sink.block_stop(self._open)
            self._open = -1
            self._open_kind = ""

    def _emit(self, kind: str, text: str) -> None:
        """Send text or thinking, opening a block of that kind when another kind is open."""
        if self._open_kind != kind:
            self._open_block(kind)
        if text:
            self._text_chars += len(text)
            self._out_bytes += len(text) if text.isascii() else len(text.encode())
            if kind == BLOCK_TEXT:
                self._sink_text(self._open, text)
            else:
                self._sink.thinking(self._open, text)

    # ------------------------------------------------------------------ text with tags

    def _tag_pieces(self, content: str) -> list[Piece]:
        parser = self._parser
        assert parser is not None
        pieces = parser.feed(content)
        if parser.done:
            self._plain = True
        return pieces

    def _route(self, pieces: list[Piece]) -> None:
        for kind, text in pieces:
            if kind == TEXT:
                self._emit(BLOCK_TEXT, text)
            elif kind == THINKING:
                self._emit(BLOCK_THINKING, text)
            elif kind == THINKING_END and self._open_kind == BLOCK_THINKING:
                self._close_block()

    # ------------------------------------------------------------------ tool calls

    def _on_tool(self, data: Any) -> None:
        tool_id = data.get("toolUseId") if type(data) is dict else None
        done = self._tools_done
        if not isinstance(tool_id, str) or (done is not None and tool_id in done):
            return
        call = self._tools.get(tool_id)
        if call is None:
            self._text_boundary()
            call = self._tools[tool_id] = _ToolCall(name="")
        name = data.get("name")
        if name and not call.name and isinstance(name, str):
            call.name = name
        fragment = data.get("input")
        if fragment is not None:
            if type(fragment) is not str:
                fragment = orjson.dumps(fragment).decode()
            if fragment:
                call.parts.append(fragment)
                self._out_bytes += len(fragment)
        if data.get("stop") is True:
            del self._tools[tool_id]
            if done is None:
                done = self._tools_done = set()
            done.add(tool_id)
            self._emit_tool(tool_id, call)

    def _text_boundary(self) -> None:
        """A tool call begins: release text held by the tag parser and close the open block."""
        if self._parser is not None and not self._parser.done:
            self._route(self._parser.flush())
            self._plain = True
        self._close_block()

    def _emit_tool(self, tool_id: str, call: _ToolCall) -> None:
        raw = "".join(call.parts)
        if not raw or raw.isspace():
            raw = "{}"
        try:
            valid = type(_loads(raw)) is dict
        except orjson.JSONDecodeError:
            valid = False
        if not valid:
            self._dropped_tools += 1
            return
        index = self._open_block(
            BLOCK_TOOL_USE, tool_id, self._tool_names.get(call.name, call.name)
        )
        self._sink.tool_input(index, raw)
        self._close_block()

    # ------------------------------------------------------------------ other events

    def _on_other(self, message: Message) -> None:
        message_type = message.message_type
        if message_type == "exception" or message_type == "error":
            self._on_exception(message)
            return
        event_type = message.event_type
        if event_type == "contextUsageEvent":
            self._on_context_usage(_loads(message.payload))
        elif event_type == "meteringEvent":
            data = _loads(message.payload)
            usage = data.get("usage") if type(data) is dict else None
            if isinstance(usage, int | float):
                self._credits += usage
        elif event_type == "metadataEvent" or event_type == "messageMetadataEvent":
            self._on_metadata(_loads(message.payload))
        elif event_type == "reasoningContentEvent":
            self._on_reasoning(_loads(message.payload))

    def _on_context_usage(self, data: Any) -> None:
        pct = data.get("contextUsagePercentage") if type(data) is dict else None
        self._complete = True
        if isinstance(pct, int | float):
            self._context_pct = float(pct)

    def _on_metadata(self, data: Any) -> None:
        usage = data.get("tokenUsage") if type(data) is dict else None
        if type(usage) is not dict:
            return  # conversationId / utteranceId only
        self._complete = True
        self._exact = Usage(
            input_tokens=_int(usage.get("uncachedInputTokens", usage.get("inputTokens"))),
            output_tokens=_int(usage.get("outputTokens")),
            cache_read_input_tokens=_int(usage.get("cacheReadInputTokens")),
            cache_creation_input_tokens=_int(usage.get("cacheWriteInputTokens")),
        )
        pct = usage.get("contextUsagePercentage")
        if self._context_pct is None and isinstance(pct, int | float):
            self._context_pct = float(pct)

    def _on_reasoning(self, data: Any) -> None:
        if type(data) is not dict:
            return
        redacted = data.get("redactedContent")
        if redacted and isinstance(redacted, str):
            self._close_block()
            index = self._next_index
            self._next_index = index + 1
            self._thinking_blocks += 1
            self._sink.redacted_thinking(index, redacted)
        text = data.get("text")
        if text and isinstance(text, str):
            self._emit(BLOCK_THINKING, text)
        signature = data.get("signature")
        if signature and isinstance(signature, str):
            if self._open_kind != BLOCK_THINKING:
                self._open_block(BLOCK_THINKING)
            self._sink.signature(self._open, signature)

    def _on_exception(self, message: Message) -> None:
        headers = message.headers
        if message.message_type == "exception":
            kind = message.exception_type
        else:
            kind = headers.get(":error-code")
        text, reason = _exception_text(message.payload, headers.get(":error-message"))
        if kind == CONTENT_LENGTH_EXCEPTION or reason == CONTENT_LENGTH_REASON:
            self._length_exceeded = True
            return
        self._closed = True
        raise _upstream_exception(str(kind) if kind else None, text, reason)

    # ------------------------------------------------------------------ the end

    def _decide_stop_reason(self) -> str:
        if self._context_pct is not None and self._context_pct >= 100.0:
            return CONTEXT_WINDOW_EXCEEDED
        if self.truncated or self._thinking_only:
            return MAX_TOKENS
        if self._tool_blocks:
            return TOOL_USE
        return END_TURN

    def _compute_usage(self) -> Usage:
        output = max(1, -(-self._out_bytes // BYTES_PER_TOKEN))
        exact = self._exact
        if exact is not None:
            return Usage(
                input_tokens=exact.input_tokens,
                output_tokens=exact.output_tokens or output,
                cache_read_input_tokens=exact.cache_read_input_tokens,
                cache_creation_input_tokens=exact.cache_creation_input_tokens,
            )
        pct = self._context_pct
        if pct is not None and pct > 0:
            # kiro.rs' order of operations, so both round the same way
            return Usage(int(pct * self._context_window / 100.0), output)
        return Usage(self._input_estimate, output)


def _int(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def _exception_text(payload: bytes, header_message: Any) -> tuple[str, str | None]:
    """(message, reason) of an exception/error frame; payloads are usually ``{"message"}``."""
    try:
        data: Any = _loads(payload) if payload else None
    except orjson.JSONDecodeError:
        data = bytes(payload).decode("utf-8", "replace")
    reason: str | None = None
    if type(data) is dict:
        text = data.get("message") or data.get("Message") or header_message or ""
        raw_reason = data.get("reason")
        reason = raw_reason if isinstance(raw_reason, str) else None
    else:
        text = header_message or (data if isinstance(data, str) else "")
    return str(text)[:MAX_ERROR_TEXT], reason


def _exception_kind(exception_type: str | None, text: str, reason: str | None) -> str:
    signals = f"{exception_type} {reason} {text}"
    if "Input is too long" in signals:
        return "context_too_long"
    if "MONTHLY_REQUEST_COUNT" in signals or exception_type == "ServiceQuotaExceededException":
        return "quota"
    if (
        "INSUFFICIENT_MODEL_CAPACITY" in signals
        or "MODEL_TEMPORARILY_UNAVAILABLE" in signals
        or "unexpectedly high load" in signals
        or exception_type in ("InternalServerException", "ServiceUnavailableException")
    ):
        return "capacity"
    if exception_type == "ThrottlingException":
        return "throttled"
    return "other"


def _upstream_exception(
    exception_type: str | None, text: str, reason: str | None
) -> UpstreamException:
    """The error for a mid-stream exception frame, classified like HTTP errors are."""
    label = exception_type or "error frame"
    return UpstreamException(
        f"upstream {label} mid-stream: {text or 'no message'}",
        exception_type=exception_type,
        kind=_exception_kind(exception_type, text, reason),
    )
