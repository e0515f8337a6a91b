"""StreamConverter: upstream frames → sink calls (spec kiro-api.md §6.4–6.6, §7.2, §8, §9.3–9.4).

Frames are real event-stream bytes, decoded by the project's decoder, so the converter sees
exactly what it sees in production. Expected call sequences are written by hand.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiro_fast.errors import KiroFastError, UpstreamException
from kiro_fast.eventstream import EventStreamDecoder, encode_message
from kiro_fast.stream import StreamConverter, Usage

WINDOW = 200_000
ESTIMATE = 12


# --------------------------------------------------------------------------- frames


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))


def text(content: str) -> bytes:
    return event("assistantResponseEvent", {"content": content})


def tool(tool_id: str, name: str, fragment: Any = None, stop: bool = False) -> bytes:
    payload: dict[str, Any] = {"name": name, "toolUseId": tool_id}
    if fragment is not None:
        payload["input"] = fragment
    if stop:
        payload["stop"] = True
    return event("toolUseEvent", payload)


def context(pct: float) -> bytes:
    return event("contextUsageEvent", {"contextUsagePercentage": pct})


def metering(credits: float) -> bytes:
    return event("meteringEvent", {"unit": "credit", "unitPlural": "credits", "usage": credits})


def reasoning(**fields: str) -> bytes:
    return event("reasoningContentEvent", fields)


def exception(exception_type: str, payload: dict[str, Any]) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, orjson.dumps(payload))


def error_frame(code: str, message: str) -> bytes:
    headers = {":error-code": code, ":error-message": message, ":message-type": "error"}
    return encode_message(headers, b"")


# --------------------------------------------------------------------------- sink


class Recorder:
    """A StreamSink that records its calls as tuples."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def start(self) -> None:
        self.calls.append(("start",))

    def block_start(self, index, kind, tool_id, name) -> None:
        self.calls.append(("block_start", index, kind, tool_id, name))

    def text(self, index, text) -> None:
        self.calls.append(("text", index, text))

    def thinking(self, index, text) -> None:
        self.calls.append(("thinking", index, text))

    def signature(self, index, sig) -> None:
        self.calls.append(("signature", index, sig))

    def redacted_thinking(self, index, data) -> None:
        self.calls.append(("redacted_thinking", index, data))

    def tool_input(self, index, partial_json) -> None:
        self.calls.append(("tool_input", index, partial_json))

    def block_stop(self, index) -> None:
        self.calls.append(("block_stop", index))

    def finish(self, stop_reason, usage) -> None:
        self.calls.append(("finish", stop_reason, usage))

    def ping(self) -> None:
        self.calls.append(("ping",))

    def error(self, exc) -> None:
        self.calls.append(("error", exc))


def convert(
    frames: list[bytes],
    *,
    thinking: bool = False,
    tool_names: dict[str, str] | None = None,
    window: int = WINDOW,
    finish: bool = True,
) -> tuple[StreamConverter, list[tuple[Any, ...]]]:
    sink = Recorder()
    converter = StreamConverter(
        sink,
        thinking=thinking,
        tool_names=tool_names,
        context_window=window,
        input_tokens=ESTIMATE,
    )
    decoder = EventStreamDecoder()
    for frame in frames:  # one upstream read per frame: the trickle regime
        converter.feed(decoder.feed(frame))
    if finish:
        converter.finish()
    return converter, sink.calls


WEATHER = [
    tool("tooluse_abc", "get_weather"),
    tool("tooluse_abc", "get_weather", '{"city":'),
    tool("tooluse_abc", "get_weather", ' "Paris"}'),
    tool("tooluse_abc", "get_weather", stop=True),
]


# --------------------------------------------------------------------------- text and tools


def test_text_only():
    converter, calls = convert([text("Hel"), text("lo"), metering(0.01), context(1.42)])
    assert calls == [
        ("start",),
        ("block_start", 0, "text", None, None),
        ("text", 0, "Hel"),
        ("text", 0, "lo"),
        ("block_stop", 0),
        ("finish", "end_turn", Usage(2840, 2)),
    ]
    assert not converter.truncated
    assert converter.stop_reason == "end_turn"
    assert converter.text_chars == 5
    assert converter.credits == pytest.approx(0.01)


def test_text_then_tool():
    converter, calls = convert([text("I'll check."), *WEATHER, context(1.42)])
    assert calls == [
        ("start",),
        ("block_start", 0, "text", None, None),
        ("text", 0, "I'll check."),
        ("block_stop", 0),
        ("block_start", 1, "tool_use", "tooluse_abc", "get_weather"),
        ("tool_input", 1, '{"city": "Paris"}'),
        ("block_stop", 1),
        ("finish", "tool_use", Usage(2840, 7)),
    ]
    assert converter.tool_calls == 1


def test_tool_only_has_no_empty_text_block():
    _, calls = convert([*WEATHER, context(1.42)])
    assert calls[1:4] == [
        ("block_start", 0, "tool_use", "tooluse_abc", "get_weather"),
        ("tool_input", 0, '{"city": "Paris"}'),
        ("block_stop", 0),
    ]
    assert calls[-1][1] == "tool_use"


def test_text_after_a_tool_opens_a_new_text_block():
    _, calls = convert([text("a"), *WEATHER, text("b"), context(1.0)])
    assert [c[:3] for c in calls if c[0] in ("block_start", "text")] == [
        ("block_start", 0, "text"),
        ("text", 0, "a"),
        ("block_start", 1, "tool_use"),
        ("block_start", 2, "text"),
        ("text", 2, "b"),
    ]


def test_two_tools_in_sequence():
    frames = [
        tool("t1", "read", '{"path":"a"}'),
        tool("t1", "read", stop=True),
        tool("t2", "read", ""),
        tool("t2", "read", '{"path":"b"}', stop=True),
        context(1.0),
    ]
    _, calls = convert(frames)
    assert [c for c in calls if c[0] in ("block_start", "tool_input")] == [
        ("block_start", 0, "tool_use", "t1", "read"),
        ("tool_input", 0, '{"path":"a"}'),
        ("block_start", 1, "tool_use", "t2", "read"),
        ("tool_input", 1, '{"path":"b"}'),
    ]


def test_tool_name_mapped_back_to_the_clients_name():
    long_name = "mcp__server__" + "x" * 60
    frames = [tool("t1", "short_abc123", "{}", stop=True), context(1.0)]
    _, calls = convert(frames, tool_names={"short_abc123": long_name})
    assert ("block_start", 0, "tool_use", "t1", long_name) in calls


def test_tool_input_given_as_an_object():
    _, calls = convert([tool("t1", "f", {"a": [1, 2]}, stop=True), context(1.0)])
    assert ("tool_input", 0, '{"a":[1,2]}') in calls


def test_empty_tool_input_becomes_an_empty_object():
    _, calls = convert([tool("t1", "f"), tool("t1", "f", stop=True), context(1.0)])
    assert ("tool_input", 0, "{}") in calls
    assert calls[-1][1] == "tool_use"


def test_frames_of_a_finished_tool_are_ignored():
    frames = [tool("t1", "f", "{}", stop=True), tool("t1", "f", "{}", stop=True), context(1.0)]
    converter, calls = convert(frames)
    assert [c[0] for c in calls].count("tool_input") == 1
    assert converter.tool_calls == 1


# --------------------------------------------------------------------------- truncation


def test_stream_cut_inside_a_tool_call_emits_no_tool():
    frames = [text("Writing."), tool("t1", "Write"), tool("t1", "Write", '{"file_path":"/a",')]
    converter, calls = convert(frames)
    assert calls == [
        ("start",),
        ("block_start", 0, "text", None, None),
        ("text", 0, "Writing."),
        ("block_stop", 0),
        ("finish", "max_tokens", Usage(ESTIMATE, 7)),
    ]
    assert converter.truncated
    assert converter.dropped_tool_calls == 1


def test_invalid_tool_json_at_stop_is_dropped_as_truncated():
    frames = [tool("t1", "Write", '{"content": "abc'), tool("t1", "Write", stop=True), context(3.0)]
    converter, calls = convert(frames)
    assert not any(c[0] == "block_start" for c in calls)
    assert calls[-1][1] == "max_tokens"
    assert converter.truncated
    assert converter.dropped_tool_calls == 1


def test_tool_input_that_is_not_an_object_is_dropped():
    converter, calls = convert([tool("t1", "f", "[1, 2]", stop=True), context(1.0)])
    assert not any(c[0] == "block_start" for c in calls)
    assert converter.stop_reason == "max_tokens"


def test_no_context_usage_event_means_truncated():
    converter, calls = convert([text("Hello"), metering(0.02)])
    assert calls[-1] == ("finish", "max_tokens", Usage(ESTIMATE, 2))
    assert converter.truncated


def test_content_length_exception_ends_with_max_tokens():
    frames = [text("abc"), exception("ContentLengthExceededException", {"message": "too long"})]
    converter, calls = convert(frames)
    assert calls[-1][:2] == ("finish", "max_tokens")
    assert converter.truncated


def test_content_length_reason_ends_with_max_tokens():
    payload = {"message": "Input is too long.", "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD"}
    frames = [text("abc"), exception("ValidationException", payload), context(50.0)]
    converter, calls = convert(frames)
    assert calls[-1][:2] == ("finish", "max_tokens")
    assert converter.truncated


# --------------------------------------------------------------------------- exceptions


def test_other_exception_frame_raises_and_keeps_earlier_calls():
    sink = Recorder()
    converter = StreamConverter(sink, context_window=WINDOW, input_tokens=ESTIMATE)
    frames = text("Partial") + exception(
        "InternalServerException", {"message": "Encountered an internal error."}
    )
    with pytest.raises(UpstreamException) as info:
        converter.feed(EventStreamDecoder().feed(frames))
    assert info.value.exception_type == "InternalServerException"
    assert "Encountered an internal error." in info.value.message
    assert sink.calls == [
        ("start",),
        ("block_start", 0, "text", None, None),
        ("text", 0, "Partial"),
    ]
    converter.finish()  # the handler may still call it: nothing more reaches the sink
    assert len(sink.calls) == 3
    assert not converter.finished
    assert not converter.truncated


@pytest.mark.parametrize(
    ("exception_type", "payload", "status", "error_type", "retryable"),
    [
        (
            "ThrottlingException",
            {"message": "Too many requests", "reason": "USER_REQUEST_RATE_EXCEEDED"},
            429,
            "rate_limit_error",
            True,
        ),
        (
            "ThrottlingException",
            {"message": "The model is temporarily busy", "reason": "INSUFFICIENT_MODEL_CAPACITY"},
            529,
            "overloaded_error",
            True,
        ),
        (
            "InternalServerException",
            {"message": "Encountered unexpectedly high load when processing the request."},
            529,
            "overloaded_error",
            True,
        ),
        (
            "ServiceQuotaExceededException",
            {"message": "You have reached the limit.", "reason": "MONTHLY_REQUEST_COUNT"},
            429,
            "rate_limit_error",
            False,
        ),
        ("AccessDeniedException", {"message": "denied"}, 502, "api_error", False),
    ],
)
def test_exception_frames_are_classified(exception_type, payload, status, error_type, retryable):
    with pytest.raises(UpstreamException) as info:
        convert([exception(exception_type, payload)])
    exc = info.value
    assert (exc.status, exc.error_type, exc.retryable) == (status, error_type, retryable)
    assert exc.exception_type == exception_type
    assert isinstance(exc, KiroFastError)


def test_error_frame_raises_with_its_code():
    with pytest.raises(UpstreamException) as info:
        convert([text("a"), error_frame("InternalFailure", "something broke")])
    assert info.value.exception_type == "InternalFailure"
    assert "something broke" in info.value.message


def test_unreadable_payload_raises_an_upstream_error():
    bad = encode_message({":event-type": "assistantResponseEvent", ":message-type": "event"}, b"{")
    with pytest.raises(UpstreamException):
        convert([bad])


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("window", "pct", "expected"),
    [(200_000, 9.178, 18_356), (1_000_000, 9.178, 91_780), (200_000, 61.49, 122_980)],
)
def test_context_usage_gives_input_tokens(window, pct, expected):
    converter, calls = convert([text("ok"), context(pct)], window=window)
    assert calls[-1][2].input_tokens == expected
    assert converter.usage.input_tokens == expected


def test_context_full_stops_with_model_context_window_exceeded():
    converter, calls = convert([*WEATHER, context(100.0)])
    assert calls[-1][:2] == ("finish", "model_context_window_exceeded")
    assert calls[-1][2].input_tokens == WINDOW


def test_metadata_event_gives_exact_usage():
    usage = {
        "uncachedInputTokens": 100,
        "outputTokens": 42,
        "totalTokens": 2192,
        "cacheReadInputTokens": 2000,
        "cacheWriteInputTokens": 50,
    }
    converter, calls = convert([text("hello"), event("metadataEvent", {"tokenUsage": usage})])
    assert calls[-1] == ("finish", "end_turn", Usage(100, 42, 2000, 50))
    assert not converter.truncated
    assert converter.usage.prompt_tokens == 2150


def test_metadata_without_token_usage_is_not_an_end_marker():
    payload = {"conversationId": "c", "utteranceId": "u"}
    converter, _ = convert([text("hello"), event("messageMetadataEvent", payload)])
    assert converter.truncated


def test_output_tokens_estimated_from_utf8_bytes():
    # 40 ASCII bytes -> 10 tokens; 4 CJK chars (12 bytes) -> 3 tokens
    _, calls = convert([text("a" * 40), context(1.0)])
    assert calls[-1][2].output_tokens == 10
    _, calls = convert([text("你好世界"), context(1.0)])
    assert calls[-1][2].output_tokens == 3


def test_unicode_text_passes_through_unchanged():
    _, calls = convert([text("你好，"), text("世界 🌍"), context(1.0)])
    assert [c[2] for c in calls if c[0] == "text"] == ["你好，", "世界 🌍"]


def test_unknown_events_are_ignored():
    frames = [
        event("followupPromptEvent", {"followupPrompt": {"content": "x", "userIntent": "y"}}),
        text("a"),
        event("codeReferenceEvent", {"references": []}),
        event("somethingNew", {"x": 1}),
        context(1.0),
    ]
    _, calls = convert(frames)
    assert [c[0] for c in calls] == ["start", "block_start", "text", "block_stop", "finish"]


# --------------------------------------------------------------------------- thinking


def test_thinking_then_text():
    frames = [text("<thin"), text("king>\nplan"), text("</thinking>\n\nAnswer"), context(1.0)]
    _, calls = convert(frames, thinking=True)
    assert calls == [
        ("start",),
        ("block_start", 0, "thinking", None, None),
        ("thinking", 0, "plan"),
        ("block_stop", 0),
        ("block_start", 1, "text", None, None),
        ("text", 1, "Answer"),
        ("block_stop", 1),
        ("finish", "end_turn", Usage(2000, 3)),
    ]


def test_thinking_off_leaves_tags_in_the_text():
    _, calls = convert([text("<thinking>\nx</thinking>\n\nA"), context(1.0)])
    assert [c for c in calls if c[0] == "text"] == [("text", 0, "<thinking>\nx</thinking>\n\nA")]


def test_end_tag_right_before_a_tool_call_closes_thinking():
    frames = [text("<thinking>\nuse a tool</thinking>"), *WEATHER, context(1.0)]
    _, calls = convert(frames, thinking=True)
    assert calls[1:6] == [
        ("block_start", 0, "thinking", None, None),
        ("thinking", 0, "use a tool"),
        ("block_stop", 0),
        ("block_start", 1, "tool_use", "tooluse_abc", "get_weather"),
        ("tool_input", 1, '{"city": "Paris"}'),
    ]


def test_text_held_by_the_parser_is_released_before_a_tool():
    _, calls = convert([text("Let me look <"), *WEATHER, context(1.0)], thinking=True)
    assert [c for c in calls if c[0] == "text"] == [("text", 0, "Let me look "), ("text", 0, "<")]
    assert calls.index(("block_stop", 0)) < calls.index(
        ("block_start", 1, "tool_use", "tooluse_abc", "get_weather")
    )


def test_leading_whitespace_before_thinking_is_not_a_block():
    frames = [text("\n\n"), text("<thinking>\nx</thinking>\n\nA"), context(1.0)]
    _, calls = convert(frames, thinking=True)
    assert calls[1] == ("block_start", 0, "thinking", None, None)


def test_thinking_only_answer_gets_a_space_text_block_and_max_tokens():
    converter, calls = convert([text("<thinking>\nhmm"), context(1.0)], thinking=True)
    assert calls[1:] == [
        ("block_start", 0, "thinking", None, None),
        ("thinking", 0, "hmm"),
        ("block_stop", 0),
        ("block_start", 1, "text", None, None),
        ("text", 1, " "),
        ("block_stop", 1),
        ("finish", "max_tokens", Usage(2000, 1)),
    ]
    assert not converter.truncated


def test_native_reasoning_with_signature():
    frames = [
        reasoning(text="Considering."),
        reasoning(text=" Done."),
        reasoning(signature="EqQBCkYIBxgC"),
        text("Answer."),
        context(1.0),
    ]
    _, calls = convert(frames)
    assert calls[1:-1] == [
        ("block_start", 0, "thinking", None, None),
        ("thinking", 0, "Considering."),
        ("thinking", 0, " Done."),
        ("signature", 0, "EqQBCkYIBxgC"),
        ("block_stop", 0),
        ("block_start", 1, "text", None, None),
        ("text", 1, "Answer."),
        ("block_stop", 1),
    ]


def test_native_redacted_reasoning_is_a_whole_block():
    frames = [reasoning(redactedContent="c2VjcmV0"), text("Hi"), context(1.0)]
    _, calls = convert(frames)
    assert calls[1:4] == [
        ("redacted_thinking", 0, "c2VjcmV0"),
        ("block_start", 1, "text", None, None),
        ("text", 1, "Hi"),
    ]


# --------------------------------------------------------------------------- lifecycle


def test_start_is_sent_once_and_early():
    sink = Recorder()
    converter = StreamConverter(sink, context_window=WINDOW, input_tokens=ESTIMATE)
    converter.start()
    converter.start()
    assert sink.calls == [("start",)]
    converter.feed([])
    converter.finish()
    converter.finish()
    assert [c[0] for c in sink.calls] == ["start", "finish"]


def test_empty_upstream_body_is_truncated_with_no_blocks():
    converter, calls = convert([])
    assert calls == [("start",), ("finish", "max_tokens", Usage(ESTIMATE, 1))]
    assert converter.truncated
    assert converter.blocks == 0


def test_feed_after_finish_is_ignored():
    sink = Recorder()
    converter = StreamConverter(sink, context_window=WINDOW, input_tokens=ESTIMATE)
    converter.finish()
    converter.feed(EventStreamDecoder().feed(text("late")))
    assert [c[0] for c in sink.calls] == ["start", "finish"]


def test_read_boundaries_do_not_change_the_calls():
    frames = [text("<thinking>\nplan</thinking>\n\nI'll"), text(" check."), *WEATHER, context(2.0)]
    _, one_per_read = convert(frames, thinking=True)
    data = b"".join(frames)
    for size in (1, 7, 64, len(data)):
        sink = Recorder()
        converter = StreamConverter(
            sink, thinking=True, context_window=WINDOW, input_tokens=ESTIMATE
        )
        decoder = EventStreamDecoder()
        for offset in range(0, len(data), size):
            converter.feed(decoder.feed(data[offset : offset + size]))
        converter.finish()
        assert sink.calls == one_per_read, size


# --------------------------------------------------------------------------- invariants

_fragments = st.sampled_from(
    ["Hi", " ", "\n\n", "<thinking>", "\n", "</thinking>", "</thinking>\n\n", "`", "x<", "好"]
)
_frames = st.one_of(
    _fragments.map(text),
    st.tuples(
        st.sampled_from(["t1", "t2"]),
        st.sampled_from([None, "", "{", '"a":1', "}", {"k": 1}]),
        st.booleans(),
    ).map(lambda t: tool(t[0], "f", t[1], t[2])),
    st.sampled_from(["r", ""]).map(lambda s: reasoning(text=s, signature="sig") if s else b""),
    st.just(context(5.0)),
)


def check_invariants(calls: list[tuple[Any, ...]]) -> None:
    assert calls[0] == ("start",)
    assert calls.count(("start",)) == 1
    open_index = None
    next_index = 0
    for call in calls[1:-1]:
        name = call[0]
        if name == "block_start":
            assert open_index is None and call[1] == next_index
            open_index, next_index = call[1], next_index + 1
        elif name == "block_stop":
            assert call[1] == open_index
            open_index = None
        elif name == "redacted_thinking":
            assert open_index is None and call[1] == next_index
            next_index += 1
        else:
            assert call[1] == open_index, call
            if name == "tool_input":
                assert isinstance(orjson.loads(call[2]), dict)
    assert open_index is None
    assert calls[-1][0] == "finish"


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frames, max_size=25), thinking=st.booleans())
def test_any_stream_gives_a_well_formed_call_sequence(frames, thinking):
    _, calls = convert([f for f in frames if f], thinking=thinking)
    check_invariants(calls)
