"""Scripted behaviours of the chat endpoint, and how they become frames.

Owns :class:`Scenario` (what one chat request gets: an answer's content, a failure,
a delivery plan), the named error answers of kiro-api.md §9.1 (:data:`ERRORS`), the
``[[fake:…]]`` directive vocabulary (:meth:`Scenario.from_directive`) and
:func:`render`, which turns a scenario plus the request into a
:class:`~kiro_fast.testing.replies.Reply`.

Directive presets (``{"scenario": NAME, ...}``; any :class:`Scenario` field may be given
as well, and ``name``/``input``/``id`` describe one tool call, ``calls`` several)::

    text         the default answer (or "text")       echo       repeat the user's message
    thinking     <thinking> block, then the answer    reasoning  reasoningContentEvent frames
    tool         one tool call (name, input, id)      text_tool  "I'll check." + one tool call
    tools        two tool calls                       metadata   add a metadataEvent
    error        an HTTP error ("error": NAME)        reset      TCP reset before headers
    slow_headers headers after "ms" (100)             trickle    one frame every "ms" (20)
    stall        stop after "after" frames (2)        disconnect close after "after" frames (2)
    exception    an exception frame ("exception": TYPE, "after": N)
    truncate     end inside a tool call: no stop frame, no metering/context events
    bad_crc      corrupt the CRC of frame "at" (1)    chunked    random TCP chunking
    bench        the canned 50-frame answer           paced      the same, one frame per tick

Must not know about sockets, the event loop or accounts.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from typing import Any, Final

from . import frames
from .catalog import context_window
from .conversation import DirectiveError, RequestView
from .replies import CloseReply, DelayedReply, Delivery, FramedBody, JsonReply, Reply, StreamReply
from .settings import FakeSettings


@dataclass(frozen=True, slots=True)
class HttpError:
    """A non-200 upstream answer: ``{"message", "reason"}`` plus ``x-amzn-errortype``."""

    status: int
    message: str
    reason: str | None = None
    error_type: str | None = None

    def reply(self, rule: str | None = None) -> JsonReply:
        body = {"message": self.message, "reason": self.reason}
        return JsonReply.of(self.status, body, error_type=self.error_type, rule=rule)


BEARER_INVALID: Final = "The bearer token included in the request is invalid."

#: Every upstream error body of kiro-api.md §9.1 and kiro-auth.md §8.1, by name.
ERRORS: Final[dict[str, HttpError]] = {
    "improperly_formed": HttpError(400, "Improperly formed request.", None, "ValidationException"),
    "input_too_long": HttpError(
        400, "Input is too long.", "CONTENT_LENGTH_EXCEEDS_THRESHOLD", "ValidationException"
    ),
    "invalid_model": HttpError(
        400,
        "Invalid model. Please select a different model to continue.",
        "INVALID_MODEL_ID",
        "ValidationException",
    ),
    "profile_arn_required": HttpError(
        400, "profileArn is required for this request.", None, "ValidationException"
    ),
    "monthly_limit": HttpError(
        402, "You have reached the limit.", "MONTHLY_REQUEST_COUNT", "ServiceQuotaExceededException"
    ),
    "bearer_invalid": HttpError(403, BEARER_INVALID, None, "AccessDeniedException"),
    "suspended": HttpError(
        403,
        "Your User ID (d-9067c98495.fake-user) temporarily is suspended. We've locked your"
        " account as a security precaution.",
        "TEMPORARILY_SUSPENDED",
        "AccessDeniedException",
    ),
    "rate_limited": HttpError(
        429,
        "Too many requests, please wait before trying again.",
        "USER_REQUEST_RATE_EXCEEDED",
        "ThrottlingException",
    ),
    "capacity": HttpError(
        429,
        "The model is temporarily busy. Please try again later.",
        "INSUFFICIENT_MODEL_CAPACITY",
        "ThrottlingException",
    ),
    "suspicious_activity": HttpError(
        429,
        "Due to suspicious activity, we are imposing temporary limits on how frequently your"
        " account (d-9067c98495.fake-user) can send a request to Kiro while we investigate.",
        None,
        "ThrottlingException",
    ),
    "high_load": HttpError(
        500,
        "Encountered unexpectedly high load when processing the request, please try again.",
        "MODEL_TEMPORARILY_UNAVAILABLE",
        "InternalServerException",
    ),
    "internal": HttpError(
        500,
        "Encountered an unexpected error when processing the request, please try again.",
        None,
        "InternalServerException",
    ),
    "unavailable": HttpError(
        503, "Service Unavailable. Please try again later.", None, "ServiceUnavailableException"
    ),
}

#: Messages of mid-stream exception frames, by ``:exception-type`` (§9.3).
EXCEPTION_MESSAGES: Final[dict[str, str]] = {
    "ThrottlingException": "Too many requests, please wait before trying again.",
    "ContentLengthExceededException": "The response exceeded the maximum content length.",
    "InternalServerException": "Encountered an unexpected error when processing the request.",
    "ValidationException": "Input is too long.",
    "ServiceQuotaExceededException": "You have reached the limit.",
}


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    input: Any = field(default_factory=dict)
    #: ``None``: a fresh ``tooluse_…`` id from the seeded generator
    tool_use_id: str | None = None
    #: sent verbatim instead of ``json.dumps(input)`` (e.g. deliberately broken JSON)
    raw_input: str | None = None

    def input_json(self) -> str:
        if self.raw_input is not None:
            return self.raw_input
        return json.dumps(self.input, ensure_ascii=False)

    @classmethod
    def from_json(cls, value: Any) -> ToolCall:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise DirectiveError("a tool call needs a string 'name'")
        return cls(value["name"], value.get("input", {}), value.get("id"), value.get("raw_input"))


DEFAULT_TOOL: Final = ToolCall("get_weather", {"city": "Paris"})
#: A large Write call, the kind the upstream truncates (§9.4).
LARGE_WRITE: Final = ToolCall(
    "Write",
    {"file_path": "/tmp/fake/report.md", "content": "".join(f"line {i}\n" for i in range(200))},
)


_OPTIONAL_INT: Final = (int, type(None))
#: What each scalar field of :class:`Scenario` may hold (directives are untyped JSON).
_FIELD_KINDS: Final[dict[str, tuple[type, ...]]] = {
    "text": (str, type(None)),
    "thinking": (bool, str, type(None)),
    "reasoning": (bool, str, type(None)),
    "metering_usage": (int, float, type(None)),
    "exception": (str, type(None)),
    "exception_message": (str, type(None)),
    "exception_after": _OPTIONAL_INT,
    "corrupt_crc_at": _OPTIONAL_INT,
    "disconnect_after": _OPTIONAL_INT,
    "stall_after": _OPTIONAL_INT,
    "headers_delay_ms": (int, float),
    "frame_interval_ms": (int, float),
    **dict.fromkeys(
        ("echo", "metadata", "bench", "reset", "error_frame", "truncate", "chunking", "paced"),
        (bool,),
    ),
}


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """What one chat request gets. The default instance is the normal text answer.

    Content: ``text`` (``None``: the default answer, or nothing when there are tool
    calls), ``echo`` (the user's own message back), ``thinking`` (``None``: only when the
    request asked with a ``<thinking_mode>`` tag; ``True``: always; a string: that
    text), ``reasoning`` (native ``reasoningContentEvent`` frames), ``tool_calls``,
    ``metadata`` (a ``metadataEvent``), ``bench`` (the canned benchmark answer).

    Failures: ``error`` (a name in :data:`ERRORS` or an :class:`HttpError`), ``reset``
    (TCP reset before the headers), ``exception`` (an exception frame of that type
    after ``exception_after`` frames, default after the content; the stream then
    ends), ``error_frame`` (send it as a ``:message-type: error`` frame instead),
    ``truncate`` (end inside the last tool call, or halfway through the text, without
    metering/context events), ``corrupt_crc_at`` (flip that frame's CRC),
    ``disconnect_after`` (close after N frames without ending the HTTP body).

    Delivery: ``headers_delay_ms`` (time to first byte), ``frame_interval_ms`` (slow
    trickle), ``stall_after`` (stop after N frames — N write slices when chunking —
    until ``FakeUpstream.release()``),
    ``chunking`` (random TCP slices that split frames and UTF-8 characters),
    ``paced`` (one frame per tick of the global ticker).
    """

    text: str | None = None
    echo: bool = False
    thinking: bool | str | None = None
    reasoning: bool | str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    metadata: bool = False
    bench: bool = False
    metering_usage: float | None = None
    error: str | HttpError | None = None
    reset: bool = False
    exception: str | None = None
    exception_message: str | None = None
    exception_after: int | None = None
    error_frame: bool = False
    truncate: bool = False
    corrupt_crc_at: int | None = None
    disconnect_after: int | None = None
    headers_delay_ms: float = 0.0
    frame_interval_ms: float = 0.0
    stall_after: int | None = None
    chunking: bool = False
    paced: bool = False

    def __post_init__(self) -> None:
        calls = tuple(
            c if isinstance(c, ToolCall) else ToolCall.from_json(c) for c in self.tool_calls
        )
        object.__setattr__(self, "tool_calls", calls)
        if isinstance(self.error, str) and self.error not in ERRORS:
            raise ValueError(f"unknown error {self.error!r}; known: {', '.join(ERRORS)}")
        for name, kinds in _FIELD_KINDS.items():
            value = getattr(self, name)
            if not isinstance(value, kinds) or (isinstance(value, int | float) and value < 0):
                raise ValueError(f"{name} cannot be {value!r}")

    @classmethod
    def tool(cls, name: str, input: Any = None, *, text: str | None = None) -> Scenario:
        """One tool call, optionally after some text."""
        return cls(text=text, tool_calls=(ToolCall(name, {} if input is None else input),))

    def http_error(self) -> HttpError | None:
        return ERRORS[self.error] if isinstance(self.error, str) else self.error

    @classmethod
    def from_directive(cls, directive: dict[str, Any]) -> Scenario:
        """Build a scenario from a ``[[fake:…]]`` directive (see the module docstring).

        Raises:
            DirectiveError: an unknown preset or field, or a value of the wrong kind.
        """
        fields = dict(directive)
        preset = fields.pop("scenario", None)
        if preset is not None and preset not in PRESETS:
            raise DirectiveError(f"unknown scenario {preset!r}; known: {', '.join(PRESETS)}")
        defaults, alias = PRESETS[preset] if preset else ({}, None)
        values: dict[str, Any] = dict(defaults)
        if alias and alias[0] in fields:
            values[alias[1]] = fields.pop(alias[0])
        values.update(_tool_fields(fields))
        unknown = set(fields) - _FIELD_NAMES
        if unknown:
            raise DirectiveError(f"unknown directive keys: {', '.join(sorted(unknown))}")
        values.update(fields)
        try:
            if isinstance(values.get("error"), dict):  # {"status", "message", ...}
                values["error"] = HttpError(**values["error"])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise DirectiveError(str(exc)) from None


_FIELD_NAMES: Final = frozenset(f.name for f in dataclasses.fields(Scenario))


def _tool_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if "calls" in fields:
        calls = fields.pop("calls")
        if not isinstance(calls, list):
            raise DirectiveError("'calls' must be a list of tool calls")
        return {"tool_calls": tuple(ToolCall.from_json(c) for c in calls)}
    one = {key: fields.pop(key) for key in ("name", "input", "id", "raw_input") if key in fields}
    return {"tool_calls": (ToolCall.from_json(one),)} if one else {}


#: preset name → (field defaults, optional (alias key, field it sets))
PRESETS: Final[dict[str, tuple[dict[str, Any], tuple[str, str] | None]]] = {
    "text": ({}, None),
    "echo": ({"echo": True}, None),
    "thinking": ({"thinking": True}, None),
    "reasoning": ({"reasoning": True}, None),
    "tool": ({"tool_calls": (DEFAULT_TOOL,)}, None),
    "text_tool": ({"text": "I'll check.", "tool_calls": (DEFAULT_TOOL,)}, None),
    "tools": (
        {"tool_calls": (DEFAULT_TOOL, ToolCall("get_time", {"timezone": "Europe/Paris"}))},
        None,
    ),
    "metadata": ({"metadata": True}, None),
    "error": ({"error": "improperly_formed"}, None),
    "reset": ({"reset": True}, None),
    "slow_headers": ({"headers_delay_ms": 100.0}, ("ms", "headers_delay_ms")),
    "trickle": ({"frame_interval_ms": 20.0}, ("ms", "frame_interval_ms")),
    "stall": ({"stall_after": 2}, ("after", "stall_after")),
    "disconnect": ({"disconnect_after": 2}, ("after", "disconnect_after")),
    "exception": ({"exception": "ThrottlingException"}, ("after", "exception_after")),
    "truncate": (
        {"truncate": True, "text": "I'll write the file.", "tool_calls": (LARGE_WRITE,)},
        None,
    ),
    "bad_crc": ({"corrupt_crc_at": 1}, ("at", "corrupt_crc_at")),
    "chunked": ({"chunking": True}, None),
    "bench": ({"bench": True}, None),
    "paced": ({"bench": True, "paced": True}, None),
}

DEFAULT_SCENARIO: Final = Scenario()
BENCH_SCENARIO: Final = Scenario(bench=True)
PACED_BENCH_SCENARIO: Final = Scenario(bench=True, paced=True)


# --------------------------------------------------------------------------- rendering


@dataclass(slots=True)
class RenderContext:
    settings: FakeSettings
    #: seeded per request, so answers do not depend on other requests' timing
    rng: random.Random


_bench_body: FramedBody | None = None


def bench_body() -> FramedBody:
    """The canned benchmark answer, framed once per process."""
    global _bench_body
    if _bench_body is None:
        _bench_body = FramedBody(frames.bench_frames())
    return _bench_body


def render(scenario: Scenario, view: RequestView | None, ctx: RenderContext) -> Reply:
    """The reply a scenario gives to a request (``view`` is ``None`` when unread)."""
    reply = _render(scenario, view, ctx)
    if scenario.headers_delay_ms > 0:
        return DelayedReply(scenario.headers_delay_ms, reply)
    return reply


def _render(scenario: Scenario, view: RequestView | None, ctx: RenderContext) -> Reply:
    error = scenario.http_error()
    if error is not None:
        return error.reply()
    if scenario.reset:
        return CloseReply(reset=True)
    if scenario.bench:
        delivery = _delivery(scenario, None, ctx)
        return StreamReply(bench_body(), delivery, frames.BENCH_METERING)
    answer = _Answer(scenario, view, ctx)
    built = answer.build()
    if scenario.corrupt_crc_at is not None:
        at = min(scenario.corrupt_crc_at, len(built) - 1)
        built[at] = frames.corrupt_crc(built[at])
    return StreamReply(FramedBody(built), _delivery(scenario, built, ctx), answer.metered)


def _delivery(scenario: Scenario, built: list[bytes] | None, ctx: RenderContext) -> Delivery:
    cuts = None
    interval = scenario.frame_interval_ms
    if scenario.chunking and built is not None:
        cuts = _chunk_cuts(built, ctx)
        interval = interval or ctx.settings.chunk_interval_ms
    return Delivery(
        interval_ms=interval,
        paced=scenario.paced,
        stall_after=scenario.stall_after,
        disconnect_after=scenario.disconnect_after,
        cuts=cuts,
    )


def _chunk_cuts(built: list[bytes], ctx: RenderContext) -> tuple[int, ...]:
    """Random cut points, plus one inside the first multi-byte UTF-8 character."""
    size = sum(len(f) for f in built)
    cuts: set[int] = set()
    pos = ctx.rng.randint(1, ctx.settings.chunk_max_bytes)
    while pos < size:
        cuts.add(pos)
        pos += ctx.rng.randint(1, ctx.settings.chunk_max_bytes)
    inside = _inside_multibyte(built)
    if inside is not None:
        cuts.add(inside)
    return tuple(sorted(cuts))


def _inside_multibyte(built: list[bytes]) -> int | None:
    offset = 0
    for frame in built:
        start, end = frames.payload_span(frame)
        for i in range(start, end):
            if frame[i] >= 0xC2:  # a UTF-8 lead byte: the next byte continues the character
                return offset + i + 1
        offset += len(frame)
    return None


class _Answer:
    """Builds the frames of one streamed answer."""

    def __init__(self, scenario: Scenario, view: RequestView | None, ctx: RenderContext) -> None:
        self.scenario = scenario
        self.view = view
        self.ctx = ctx
        self.settings = ctx.settings
        self.output_bytes = 0
        self.metered = 0.0

    def split(self, value: str, cuts: list[int] | None = None) -> list[str]:
        self.output_bytes += len(value.encode())
        s = self.settings
        return frames.split_text(
            value, self.ctx.rng, s.fragment_min_chars, s.fragment_max_chars, cuts or ()
        )

    def build(self) -> list[bytes]:
        scenario = self.scenario
        out = self.reasoning_frames()
        text_frames = [frames.text(part) for part in self.split(*self.answer_text())]
        tool_blocks = [self.tool_frames(call) for call in scenario.tool_calls]
        if scenario.truncate:
            return out + self.truncated(text_frames, tool_blocks)
        out += text_frames
        for block in tool_blocks:
            out += block
        if scenario.exception:
            return self.with_exception(out)
        return out + self.end_frames()

    def reasoning_frames(self) -> list[bytes]:
        reasoning = self.scenario.reasoning
        if reasoning is None or reasoning is False:
            return []
        value = self.settings.default_reasoning if reasoning is True else reasoning
        out = [frames.reasoning(part) for part in self.split(value)]
        out.append(frames.reasoning_signature(f"sig_{self.ctx.rng.getrandbits(128):032x}"))
        return out

    def answer_text(self) -> tuple[str, list[int]]:
        """The text of the ``assistantResponseEvent``s and the forced fragment cuts."""
        visible = self.visible_text()
        thinking = self.thinking_text()
        if thinking is None:
            return visible, []
        adaptive = self.view is not None and self.view.thinking == "adaptive"
        lead = "\n\n" if adaptive else ""
        head = lead + "<thinking>\n"
        close_at = len(head) + len(thinking) + 1
        full = head + thinking + "\n</thinking>\n\n" + visible
        # Cuts: after the whitespace-only lead, inside <thinking>, before its "\n",
        # inside </thinking>, and between the two "\n" after it (§5.9.2 edge cases).
        cuts = [len(lead), len(lead) + 4, len(head) - 1, close_at + 5, close_at + 12]
        return full, cuts

    def visible_text(self) -> str:
        scenario = self.scenario
        if scenario.text is not None:
            return scenario.text
        if scenario.echo:
            return self.view.current_text if self.view else ""
        if scenario.tool_calls:
            return ""
        return self.settings.unicode_text if scenario.chunking else self.settings.default_text

    def thinking_text(self) -> str | None:
        thinking = self.scenario.thinking
        if thinking is False:
            return None
        if isinstance(thinking, str):
            return thinking
        asked = self.view is not None and self.view.thinking is not None
        if thinking is True or (asked and not self.scenario.reasoning):
            return self.settings.default_thinking
        return None

    def tool_frames(self, call: ToolCall) -> list[bytes]:
        tool_id = call.tool_use_id or frames.tool_use_id(self.ctx.rng)
        return frames.tool_use(tool_id, call.name, self.split(call.input_json()))

    def truncated(self, text_frames: list[bytes], tool_blocks: list[list[bytes]]) -> list[bytes]:
        """The upstream's cut (§9.4): inside the last tool call, else halfway through the text."""
        if not tool_blocks:
            return text_frames[: max(1, len(text_frames) // 2)]
        *complete, last = tool_blocks
        inputs = len(last) - 2
        kept = last[: 1 + max(1, inputs // 2)] if inputs > 1 else last[:1]
        return text_frames + [f for block in complete for f in block] + kept

    def with_exception(self, out: list[bytes]) -> list[bytes]:
        scenario = self.scenario
        kind = scenario.exception or "ThrottlingException"
        message = scenario.exception_message or EXCEPTION_MESSAGES.get(kind, "Fake exception.")
        at = len(out) if scenario.exception_after is None else scenario.exception_after
        encode = frames.error if scenario.error_frame else frames.exception
        return out[:at] + [encode(kind, message)]

    def end_frames(self) -> list[bytes]:
        view = self.view
        prompt = view.prompt_tokens if view else 0
        percentage = prompt / context_window(view.model_id if view else None) * 100
        usage = self.scenario.metering_usage
        self.metered = self.settings.metering_usage if usage is None else usage
        out = []
        if self.scenario.metadata:
            output_tokens = -(-self.output_bytes // 4)
            out.append(frames.metadata(prompt, output_tokens, percentage))
        out += [frames.metering(self.metered), frames.context_usage(percentage)]
        return out


# --------------------------------------------------------------------------- MCP web search


@dataclass(frozen=True, slots=True)
class McpError:
    """A JSON-RPC ``error`` object in an HTTP 200 answer of ``POST /mcp`` (§5.12)."""

    code: int = -32603
    message: str = "Internal error"


#: publishedDate of the first search result (2025-01-01, ms), then one day apart.
_FIRST_PUBLISHED_MS: Final = 1_735_689_600_000


def web_search_results(query: str, count: int) -> list[dict[str, Any]]:
    """Deterministic search results for a query: the same query gives the same list."""
    slug = "-".join("".join(c if c.isalnum() else " " for c in query.lower()).split()) or "query"
    return [
        {
            "domain": f"example{i}.com",
            "id": f"fake-{slug}-{i}",
            "maxVerbatimWordLimit": 30,
            "publicDomain": False,
            "publishedDate": _FIRST_PUBLISHED_MS + (i - 1) * 86_400_000,
            "snippet": f"Result {i} about {query}: a deterministic snippet from the fake upstream.",
            "title": f"{query} - result {i}",
            "url": f"https://example{i}.com/{slug}",
        }
        for i in range(1, count + 1)
    ]
