"""Anthropic sinks: SSE bytes, the /cc/v1 buffered variant and the non-streaming message.

Golden transcripts in ``tests/data/transcripts`` were written by hand from spec kiro-api.md
§7.1–7.3; the official ``anthropic`` SDK is the judge of everything else: it must read our
SSE bytes, and its accumulated message must equal :class:`AnthropicMessageSink`'s fold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from test_stream import context, event, exception, reasoning, text, tool

from kiro_fast.anthropic_sse import (
    PING,
    AnthropicMessageSink,
    AnthropicSSESink,
    BufferedSSESink,
)
from kiro_fast.errors import Overloaded, UpstreamException
from kiro_fast.eventstream import EventStreamDecoder
from kiro_fast.stream import StreamConverter, Usage

TRANSCRIPTS = Path(__file__).parent / "data" / "transcripts"
MESSAGE_ID = "msg_3c0e4a7b9d1f2e6c8a5b0d3f7e9c1a2b"
MODEL = "claude-sonnet-4-5-20250929"
ESTIMATE = 12
#: what the SDK sends; the SDK warns about deprecated names such as MODEL
REQUEST_MODEL = "kiro-test-model"

SCENARIOS: dict[str, dict[str, Any]] = {
    "text_only": {"frames": [text("Hello"), text(" world"), context(9.178)]},
    "text_tool": {
        "frames": [
            text("I'll check."),
            tool("tooluse_9MtKeGzpRsqdq-WYvjG1-g", "get_weather"),
            tool("tooluse_9MtKeGzpRsqdq-WYvjG1-g", "get_weather", '{"city":'),
            tool("tooluse_9MtKeGzpRsqdq-WYvjG1-g", "get_weather", ' "Paris"}'),
            tool("tooluse_9MtKeGzpRsqdq-WYvjG1-g", "get_weather", stop=True),
            context(1.42),
        ]
    },
    "thinking_text": {
        "thinking": True,
        "frames": [
            text("<thin"),
            text("king>\nLet me think"),
            text(".\n</thinking>\n"),
            text("\nThe answer is 4."),
            context(9.178),
        ],
    },
    "truncated_tool": {
        "frames": [
            text("Writing the file."),
            tool("tooluse_x", "Write"),
            tool("tooluse_x", "Write", '{"file_path":"/tmp/a.txt",'),
            tool("tooluse_x", "Write", '"content":"line 1'),
        ]
    },
    "native_reasoning": {
        "frames": [
            reasoning(text="Considering."),
            reasoning(text=" Done."),
            reasoning(signature="EqQBCkYIBxgC"),
            text("Answer."),
            context(2.5),
        ]
    },
    "cjk_text": {"window": 1_000_000, "frames": [text("你好，"), text("世界 🌍"), context(9.178)]},
}


def drive(sink: Any, frames: list[bytes], *, thinking: bool = False, window: int = 200_000):
    """Act as the handler: start, ping, then one feed + take per upstream read."""
    converter = StreamConverter(
        sink, thinking=thinking, context_window=window, input_tokens=ESTIMATE
    )
    decoder = EventStreamDecoder()
    taken = []
    converter.start()
    sink.ping()
    for frame in frames:
        try:
            converter.feed(decoder.feed(frame))
        except UpstreamException as exc:
            sink.error(exc)
            break
        if hasattr(sink, "take"):
            taken.append(sink.take())
    else:
        converter.finish()
    if hasattr(sink, "take"):
        taken.append(sink.take())
    return converter, taken


def sse_bytes(name: str, **sink_options: Any) -> bytes:
    scenario = SCENARIOS[name]
    sink = AnthropicSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE, **sink_options)
    _, taken = drive(
        sink,
        scenario["frames"],
        thinking=scenario.get("thinking", False),
        window=scenario.get("window", 200_000),
    )
    return b"".join(taken)


def parse_sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in data.split(b"\n\n"):
        if not chunk:
            continue
        name_line, data_line = chunk.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        payload = orjson.loads(data_line[6:])
        assert payload["type"] == name_line[7:].decode()
        events.append((name_line[7:].decode(), payload))
    assert data.endswith(b"\n\n")
    return events


def sdk_accumulate(data: bytes) -> dict[str, Any]:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for name, payload in parse_sse(data):
        if name == "ping":
            continue
        snapshot = accumulate_event(event=payload, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    message = snapshot.to_dict()
    message.pop("stop_details", None)
    return message


# --------------------------------------------------------------------------- golden bytes


@pytest.mark.parametrize("name", SCENARIOS)
def test_sse_matches_the_golden_transcript(name):
    assert sse_bytes(name) == (TRANSCRIPTS / f"{name}.sse").read_bytes()


def test_error_mid_stream_matches_the_golden_transcript():
    sink = AnthropicSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    payload = {"message": "Too many requests, please wait before trying again."}
    frames = [text("Partial"), exception("ThrottlingException", payload), context(1.0)]
    _, taken = drive(sink, frames)
    assert b"".join(taken) == (TRANSCRIPTS / "error_mid_stream.sse").read_bytes()


def test_ping_bytes():
    assert PING == b'event: ping\ndata: {"type": "ping"}\n\n'


def test_take_returns_each_byte_once():
    sink = AnthropicSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    _, taken = drive(sink, SCENARIOS["text_only"]["frames"])
    assert taken[-1].endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert sink.take() == b""
    assert b"".join(taken).count(b"event: message_start") == 1


def test_signature_field_on_request():
    data = sse_bytes("thinking_text", send_signature=True)
    assert b'"content_block":{"type":"thinking","thinking":"","signature":""}' in data
    assert b"signature_delta" not in data


def test_no_signature_is_invented():
    assert b"signature" not in sse_bytes("thinking_text")


def test_cache_usage_fields_only_when_present():
    usage = {
        "uncachedInputTokens": 100,
        "outputTokens": 42,
        "cacheReadInputTokens": 2000,
        "cacheWriteInputTokens": 0,
    }
    sink = AnthropicSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    _, taken = drive(sink, [text("hi"), event("metadataEvent", {"tokenUsage": usage})])
    assert (
        b'"usage":{"input_tokens":100,"output_tokens":42,"cache_read_input_tokens":2000}}'
        in b"".join(taken)
    )


def test_strings_are_json_escaped():
    frames = [tool("t1", 'we"ird\\name', '{"q": "a\\"b"}', stop=True), context(1.0)]
    sink = AnthropicSSESink(MODEL, 'msg_"x', input_estimate=ESTIMATE)
    _, taken = drive(sink, frames)
    events = parse_sse(b"".join(taken))
    assert events[0][1]["message"]["id"] == 'msg_"x'
    start = next(p for n, p in events if n == "content_block_start")
    assert start["content_block"]["name"] == 'we"ird\\name'
    delta = next(p for n, p in events if n == "content_block_delta")
    assert orjson.loads(delta["delta"]["partial_json"]) == {"q": 'a"b'}


# --------------------------------------------------------------------------- errors


def test_error_ends_the_stream_without_message_stop():
    sink = AnthropicSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    sink.start()
    sink.block_start(0, "text", None, None)
    sink.text(0, "partial")
    sink.error(Overloaded("upstream overloaded: busy"))
    sink.finish("end_turn", Usage(1, 1))
    sink.ping()
    events = parse_sse(sink.take())
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "upstream overloaded: busy"},
        },
    )
    assert all(name not in ("message_delta", "message_stop", "ping") for name, _ in events)


def test_foreign_exception_is_an_api_error():
    sink = AnthropicSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    sink.error(ConnectionResetError("reset by peer"))
    assert parse_sse(sink.take()) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "reset by peer"}})
    ]


def test_sdk_raises_on_the_error_event():
    sink = AnthropicSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    payload = {"message": "busy", "reason": "INSUFFICIENT_MODEL_CAPACITY"}
    _, taken = drive(sink, [text("Partial"), exception("ThrottlingException", payload)])
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk_stream(b"".join(taken))
    assert "overloaded_error" in str(info.value)


# --------------------------------------------------------------------------- the official SDK


def sdk_client(body: bytes, content_type: str) -> anthropic.Anthropic:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    transport = httpx2.MockTransport(answer)
    return anthropic.Anthropic(
        api_key="test",
        base_url="http://kiro.test",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


def sdk_stream(data: bytes) -> dict[str, Any]:
    client = sdk_client(data, "text/event-stream")
    request = {
        "model": REQUEST_MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with client.messages.stream(**request) as stream:
        message = stream.get_final_message()
    result = message.to_dict()
    result.pop("stop_details", None)
    return result


def folded(name: str, **sink_options: Any) -> dict[str, Any]:
    scenario = SCENARIOS[name]
    sink = AnthropicMessageSink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE, **sink_options)
    drive(
        sink,
        scenario["frames"],
        thinking=scenario.get("thinking", False),
        window=scenario.get("window", 200_000),
    )
    assert sink.message is not None
    return sink.message


@pytest.mark.parametrize("name", SCENARIOS)
def test_message_fold_equals_the_sdk_accumulation(name):
    message = folded(name)
    data = sse_bytes(name)
    accumulated = sdk_accumulate(data)
    accumulated["stop_sequence"] = None  # the SDK leaves the unset None out of to_dict()
    assert accumulated == message
    streamed = sdk_stream(data)
    streamed["stop_sequence"] = None
    assert streamed == message


@pytest.mark.parametrize("send_signature", [False, True])
def test_sdk_reads_thinking_blocks_with_and_without_signature(send_signature):
    streamed = sdk_stream(sse_bytes("thinking_text", send_signature=send_signature))
    assert streamed["content"][0]["thinking"] == "Let me think.\n"
    assert streamed["content"][0].get("signature", "") == ""
    assert (
        folded("thinking_text", send_signature=send_signature)["content"][0]
        == (streamed["content"][0])
    )


def test_non_streaming_message_shape():
    assert folded("native_reasoning") == {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Considering. Done.", "signature": "EqQBCkYIBxgC"},
            {"type": "text", "text": "Answer."},
        ],
        "model": MODEL,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5000, "output_tokens": 7},
    }
    assert folded("text_tool")["content"][1] == {
        "type": "tool_use",
        "id": "tooluse_9MtKeGzpRsqdq-WYvjG1-g",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }


def test_sdk_reads_the_non_streaming_body():
    sink = AnthropicMessageSink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    drive(sink, SCENARIOS["text_tool"]["frames"])
    client = sdk_client(sink.body(), "application/json")
    message = client.messages.create(
        model=REQUEST_MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.stop_reason == "tool_use"
    assert message.content[1].input == {"city": "Paris"}
    assert message.usage.input_tokens == 2840


def test_message_sink_keeps_the_error():
    sink = AnthropicMessageSink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    _, _ = drive(sink, [text("a"), exception("InternalServerException", {"message": "x"})])
    assert isinstance(sink.error_exc, UpstreamException)
    assert sink.message is None
    with pytest.raises(RuntimeError):
        sink.body()


def test_redacted_thinking_block():
    frames = [reasoning(redactedContent="c2VjcmV0"), text("Hi"), context(1.0)]
    sse_sink = AnthropicSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    _, taken = drive(sse_sink, frames)
    message_sink = AnthropicMessageSink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    drive(message_sink, frames)
    assert message_sink.message is not None
    assert message_sink.message["content"][0] == {"type": "redacted_thinking", "data": "c2VjcmV0"}
    assert sdk_accumulate(b"".join(taken))["content"] == message_sink.message["content"]


# --------------------------------------------------------------------------- /cc/v1 buffered


def test_buffered_sink_sends_only_pings_until_the_end():
    sink = BufferedSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    converter = StreamConverter(sink, context_window=200_000, input_tokens=ESTIMATE)
    decoder = EventStreamDecoder()
    converter.start()
    sink.ping()
    assert sink.take() == PING
    for frame in SCENARIOS["text_tool"]["frames"]:
        converter.feed(decoder.feed(frame))
        assert sink.take() == b""
    sink.ping()
    assert sink.take() == PING
    converter.finish()
    final = sink.take()
    streaming = sse_bytes("text_tool").replace(PING, b"")
    rewritten = streaming.replace(
        b'"usage":{"input_tokens":12,"output_tokens":1}',
        b'"usage":{"input_tokens":2840,"output_tokens":1}',
    )
    assert rewritten != streaming
    assert final == rewritten


def test_buffered_sink_keeps_the_estimate_without_context_usage():
    sink = BufferedSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    _, taken = drive(sink, SCENARIOS["truncated_tool"]["frames"])
    events = parse_sse(b"".join(taken))
    assert events[0][0] == "ping"
    assert events[1][1]["message"]["usage"] == {"input_tokens": ESTIMATE, "output_tokens": 1}
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_buffered_sink_error_discards_the_partial_message():
    sink = BufferedSSESink(MODEL, MESSAGE_ID, input_estimate=ESTIMATE)
    _, taken = drive(
        sink, [text("Partial"), exception("InternalServerException", {"message": "x"})]
    )
    events = parse_sse(b"".join(taken))
    assert [name for name, _ in events] == ["ping", "error"]
