"""OpenAI sinks: chat chunks, the chat completion, Responses events and the Response.

The official ``openai`` SDK is the judge: every chunk and event must validate against the
SDK's own types, the SDK's stream helpers must accumulate our bytes into what the
non-streaming sink folds, and an error after the start must make the SDK raise.
Expected sequences and numbers are written by hand from kiro-api.md §10.4 and the
frames fed in.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from test_stream import context, exception, reasoning, text, tool

from kiro_fast.errors import (
    ContextTooLong,
    InvalidRequest,
    Overloaded,
    PreviousResponseNotFound,
    UpstreamException,
    UpstreamStatusError,
)
from kiro_fast.eventstream import EventStreamDecoder
from kiro_fast.openai_sse import (
    DONE,
    PING,
    ChatCompletionSink,
    ChatCompletionSSESink,
    ResponseEnvelope,
    ResponsesSink,
    ResponsesSSESink,
    error_object,
)
from kiro_fast.stream import StreamConverter

MODEL = "gpt-4o"
CHAT_ID = "chatcmpl-5f1e2d3c4b5a69788796a5b4c3d2e1f0"
RESPONSE_ID = "resp_0a1b2c3d4e5f60718293a4b5c6d7e8f9"
CREATED = 1_767_225_600
ESTIMATE = 12
WINDOW = 200_000
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)

TOOL_ID = "tooluse_9MtKeGzpRsqdq-WYvjG1-g"
FRAMES: dict[str, dict[str, Any]] = {
    # "Hello world": 11 bytes → 3 output tokens; 9.178 % of 200,000 → 18,356 prompt tokens
    "text_only": {"frames": [text("Hello"), text(" world"), context(9.178)]},
    "text_tool": {
        "frames": [
            text("I'll check."),
            tool(TOOL_ID, "get_weather"),
            tool(TOOL_ID, "get_weather", '{"city":'),
            tool(TOOL_ID, "get_weather", ' "Paris"}'),
            tool(TOOL_ID, "get_weather", stop=True),
            context(1.42),
        ]
    },
    "two_tools": {
        "frames": [
            tool("tooluse_a", "get_weather", '{"city":"Paris"}', stop=True),
            tool("tooluse_b", "get_time", '{"tz":"CET"}', stop=True),
            context(1.0),
        ]
    },
    "thinking_text": {
        "thinking": True,
        "frames": [
            text("<thinking>\nLet me think"),
            text(".\n</thinking>\n\n"),
            text("The answer is 4."),
            context(9.178),
        ],
    },
    "native_reasoning": {
        "frames": [
            reasoning(text="Considering."),
            reasoning(signature="EqQBCkYIBxgC"),
            text("Answer."),
            context(2.5),
        ]
    },
    "truncated_tool": {
        "frames": [
            text("Writing the file."),
            tool("tooluse_x", "Write"),
            tool("tooluse_x", "Write", '{"file_path":"/tmp/a.txt",'),
            tool("tooluse_x", "Write", '"content":"line 1'),
        ]
    },
    "cut_by_exception": {
        "frames": [
            text("Partial"),
            exception("ThrottlingException", {"message": "Too many requests"}),
        ]
    },
}


def drive(sink: Any, name: str) -> None:
    """Act as the relay: start, ping, one feed + take per upstream read, finish or error."""
    scenario = FRAMES[name]
    converter = StreamConverter(
        sink,
        thinking=scenario.get("thinking", False),
        context_window=WINDOW,
        input_tokens=ESTIMATE,
    )
    decoder = EventStreamDecoder()
    converter.start()
    sink.ping()
    for frame in scenario["frames"]:
        try:
            converter.feed(decoder.feed(frame))
        except UpstreamException as exc:
            sink.error(exc)
            return
    converter.finish()


def chat_bytes(name: str, **options: Any) -> bytes:
    sink = ChatCompletionSSESink(MODEL, CHAT_ID, created=CREATED, **options)
    out = []
    scenario_sink = _Taking(sink, out)
    drive(scenario_sink, name)
    out.append(sink.take())
    return b"".join(out)


class _Taking:
    """Forwards sink calls and takes the bytes after each, as the relay does per read."""

    def __init__(self, sink: Any, out: list[bytes]) -> None:
        self._sink = sink
        self._out = out

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._sink, name)

        def call(*args: Any) -> Any:
            result = method(*args)
            self._out.append(self._sink.take())
            return result

        return call


def chat_data(raw: bytes) -> list[Any]:
    """The ``data:`` payloads in order (``"[DONE]"`` as a string); comments skipped."""
    assert raw.endswith(b"\n\n")
    payloads: list[Any] = []
    for block in raw.split(b"\n\n")[:-1]:
        if block.startswith(b":"):
            continue
        assert block.startswith(b"data: ")
        body = block[6:]
        payloads.append("[DONE]" if body == b"[DONE]" else orjson.loads(body))
    return payloads


def deltas(raw: bytes) -> list[tuple[dict[str, Any], str | None]]:
    out = []
    for payload in chat_data(raw):
        if payload == "[DONE]" or not payload["choices"]:
            continue
        choice = payload["choices"][0]
        out.append((choice["delta"], choice["finish_reason"]))
    return out


def mock_client(body: bytes, content_type: str) -> openai.OpenAI:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    return openai.OpenAI(
        api_key="test",
        base_url="http://kiro.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )


def folded_chat(name: str, **options: Any) -> dict[str, Any]:
    sink = ChatCompletionSink(MODEL, CHAT_ID, created=CREATED, **options)
    drive(sink, name)
    assert sink.completion is not None
    return sink.completion


# --------------------------------------------------------------------------- chat chunks


@pytest.mark.parametrize("name", [n for n in FRAMES if n != "cut_by_exception"])
def test_every_chunk_is_a_valid_sdk_chunk(name: str) -> None:
    payloads = chat_data(chat_bytes(name, include_usage=True))
    assert payloads[-1] == "[DONE]"
    for payload in payloads[:-1]:
        chunk = ChatCompletionChunk.model_validate(payload)
        assert chunk.id == CHAT_ID
        assert chunk.model == MODEL
        assert chunk.created == CREATED


def test_text_and_tool_call_chunks() -> None:
    assert deltas(chat_bytes("text_tool")) == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "I'll check."}, None),
        (
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": TOOL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            },
            None,
        ),
        ({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}, None),
        ({}, "tool_calls"),
    ]


def test_tool_calls_are_numbered_among_tool_calls() -> None:
    starts = [
        call
        for delta, _ in deltas(chat_bytes("two_tools"))
        for call in delta.get("tool_calls", [])
        if "id" in call
    ]
    assert [(c["index"], c["id"], c["function"]["name"]) for c in starts] == [
        (0, "tooluse_a", "get_weather"),
        (1, "tooluse_b", "get_time"),
    ]


def test_thinking_as_reasoning_content() -> None:
    received = deltas(chat_bytes("thinking_text"))
    reasoning_text = "".join(d.get("reasoning_content", "") for d, _ in received)
    content = "".join(d.get("content", "") for d, _ in received)
    assert reasoning_text == "Let me think.\n"  # only the tag and its "\\n\\n" are removed
    assert content == "The answer is 4."
    assert received[-1] == ({}, "stop")


@pytest.mark.parametrize(
    ("thinking_format", "expected"),
    [
        ("think", "<think>Let me think.\n</think>\n\nThe answer is 4."),
        ("thinking", "<thinking>Let me think.\n</thinking>\n\nThe answer is 4."),
    ],
)
def test_thinking_as_tags_in_content(thinking_format: str, expected: str) -> None:
    received = deltas(chat_bytes("thinking_text", thinking_format=thinking_format))
    assert "".join(d.get("content", "") for d, _ in received) == expected
    assert not any("reasoning_content" in d for d, _ in received)
    message = folded_chat("thinking_text", thinking_format=thinking_format)["choices"][0]["message"]
    assert message["content"] == expected
    assert "reasoning_content" not in message


def test_truncated_tool_call_finishes_with_length_and_no_tool_call() -> None:
    received = deltas(chat_bytes("truncated_tool"))
    assert not any("tool_calls" in d for d, _ in received)
    assert received[-1] == ({}, "length")
    folded = folded_chat("truncated_tool")["choices"][0]
    assert folded["finish_reason"] == "length"
    assert "tool_calls" not in folded["message"]


def test_usage_chunk_only_when_asked() -> None:
    with_usage = chat_data(chat_bytes("text_only", include_usage=True))
    assert with_usage[-2]["choices"] == []
    assert with_usage[-2]["usage"] == {
        "prompt_tokens": 18_356,
        "completion_tokens": 3,
        "total_tokens": 18_359,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    without = chat_data(chat_bytes("text_only"))
    assert all("usage" not in p for p in without if p != "[DONE]")


def test_ping_is_an_sse_comment() -> None:
    sink = ChatCompletionSSESink(MODEL, CHAT_ID, created=CREATED)
    sink.ping()
    assert sink.take() == PING == b": ping\n\n"


def test_error_after_start_is_an_error_chunk_without_done() -> None:
    raw = chat_bytes("cut_by_exception")
    assert DONE not in raw
    payloads = chat_data(raw)
    assert payloads[-1] == {
        "error": {
            "message": "upstream ThrottlingException mid-stream: Too many requests",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    client = mock_client(raw, "text/event-stream")
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Too many requests"):
        for _ in stream:
            pass


def test_sdk_stream_helper_reports_truncation() -> None:
    client = mock_client(chat_bytes("truncated_tool"), "text/event-stream")
    with (
        pytest.raises(openai.LengthFinishReasonError),
        client.chat.completions.stream(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        stream.get_final_completion()


@pytest.mark.parametrize(
    "name", [n for n in FRAMES if n not in ("cut_by_exception", "truncated_tool")]
)
def test_sdk_stream_accumulates_what_the_sink_folds(name: str) -> None:
    client = mock_client(chat_bytes(name, include_usage=True), "text/event-stream")
    with client.chat.completions.stream(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_completion()
    folded = ChatCompletion.model_validate(folded_chat(name))
    assert final.choices[0].finish_reason == folded.choices[0].finish_reason
    assert (final.choices[0].message.content or None) == (folded.choices[0].message.content or None)
    streamed_calls = [
        (c.id, c.function.name, c.function.arguments)  # type: ignore[union-attr]
        for c in final.choices[0].message.tool_calls or []
    ]
    folded_calls = [
        (c.id, c.function.name, c.function.arguments)  # type: ignore[union-attr]
        for c in folded.choices[0].message.tool_calls or []
    ]
    assert streamed_calls == folded_calls
    assert final.usage == folded.usage


def test_non_streaming_completion() -> None:
    completion = folded_chat("text_tool")
    ChatCompletion.model_validate(completion)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "I'll check.",
            "refusal": None,
            "tool_calls": [
                {
                    "id": TOOL_ID,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }


def test_non_streaming_tool_only_answer_has_null_content() -> None:
    message = folded_chat("two_tools")["choices"][0]["message"]
    assert message["content"] is None
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]


def test_non_streaming_reasoning_content() -> None:
    completion = folded_chat("native_reasoning")
    message = completion["choices"][0]["message"]
    assert message["reasoning_content"] == "Considering."
    assert message["content"] == "Answer."
    # "Considering." + "Answer." = 19 bytes → 5 output tokens, 3 of them reasoning
    assert completion["usage"]["completion_tokens"] == 5
    assert completion["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}


def test_model_name_with_percent_is_escaped() -> None:
    sink = ChatCompletionSSESink("odd%model%s", CHAT_ID, created=CREATED)
    sink.start()
    sink.block_start(0, "text", None, None)
    sink.text(0, "x")
    payloads = chat_data(sink.take())
    assert [p["model"] for p in payloads] == ["odd%model%s", "odd%model%s"]


# --------------------------------------------------------------------------- responses


def envelope() -> ResponseEnvelope:
    echo = {"instructions": None, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True}
    return ResponseEnvelope(RESPONSE_ID, CREATED, MODEL, echo)


def response_bytes(name: str, finished: list[Any] | None = None) -> bytes:
    sink = ResponsesSSESink(envelope(), on_finish=finished.append if finished is not None else None)
    out: list[bytes] = []
    drive(_Taking(sink, out), name)
    out.append(sink.take())
    return b"".join(out)


def response_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.split(b"\n\n")[:-1]:
        if block.startswith(b":"):
            continue
        name_line, data_line = block.split(b"\n")
        payload = orjson.loads(data_line[len(b"data: ") :])
        assert name_line == b"event: " + payload["type"].encode()
        events.append(payload)
    return events


def dumped(items: list[Any]) -> list[dict[str, Any]]:
    """Output items as dicts (the SDK's parsed subclasses add ``parsed: None``)."""
    return [item.model_dump(exclude_none=True) for item in items]


def folded_response(name: str) -> dict[str, Any]:
    sink = ResponsesSink(envelope())
    drive(sink, name)
    assert sink.response is not None
    return sink.response


@pytest.mark.parametrize("name", [n for n in FRAMES if n != "cut_by_exception"])
def test_every_event_is_a_valid_sdk_event_in_sequence(name: str) -> None:
    events = response_events(response_bytes(name))
    for event in events:
        EVENTS.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]


def test_text_and_function_call_event_sequence() -> None:
    events = response_events(response_bytes("text_tool"))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    call = events[11]["item"]
    assert call["type"] == "function_call"
    assert (call["call_id"], call["name"], call["arguments"]) == (
        TOOL_ID,
        "get_weather",
        '{"city": "Paris"}',
    )
    assert events[11]["output_index"] == 1
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert [item["type"] for item in completed["output"]] == ["message", "function_call"]
    assert completed["output"][0]["content"][0]["text"] == "I'll check."


def test_thinking_becomes_a_reasoning_summary() -> None:
    events = response_events(response_bytes("thinking_text"))
    summary = "".join(
        e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta"
    )
    assert summary == "Let me think.\n"
    output = events[-1]["response"]["output"]
    assert output[0]["type"] == "reasoning"
    assert output[0]["summary"] == [{"type": "summary_text", "text": "Let me think.\n"}]
    assert output[1]["content"][0]["text"] == "The answer is 4."


def test_completed_usage() -> None:
    usage = response_events(response_bytes("text_only"))[-1]["response"]["usage"]
    assert usage == {
        "input_tokens": 18_356,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 18_359,
    }


def test_truncation_is_an_incomplete_response() -> None:
    events = response_events(response_bytes("truncated_tool"))
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert not any(item["type"] == "function_call" for item in last["response"]["output"])
    assert folded_response("truncated_tool")["status"] == "incomplete"


def test_error_after_start_fails_the_response_and_the_sdk_raises() -> None:
    raw = response_bytes("cut_by_exception")
    events = response_events(raw)
    assert [e["type"] for e in events[-2:]] == ["response.failed", "error"]
    failed = events[-2]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "rate_limit_exceeded",
        "message": "upstream ThrottlingException mid-stream: Too many requests",
    }
    assert events[-1]["code"] == "rate_limit_exceeded"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert not any(e["type"] == "response.completed" for e in events)
    client = mock_client(raw, "text/event-stream")
    with (
        pytest.raises(openai.APIError, match="Too many requests"),
        client.responses.stream(model=MODEL, input="hi") as stream,
    ):
        stream.get_final_response()


def test_error_before_any_event_still_opens_the_response() -> None:
    sink = ResponsesSSESink(envelope())
    sink.ping()
    sink.error(Overloaded("upstream overloaded"))
    types = [e["type"] for e in response_events(sink.take())]
    assert types == ["response.created", "response.in_progress", "response.failed", "error"]


@pytest.mark.parametrize("name", [n for n in FRAMES if n != "cut_by_exception"])
def test_sdk_stream_accumulates_what_the_sink_folds_responses(name: str) -> None:
    client = mock_client(response_bytes(name), "text/event-stream")
    folded = Response.model_validate(folded_response(name))
    if folded.status == "incomplete":
        with client.responses.stream(model=MODEL, input="hi") as stream:
            events = list(stream)
        assert events[-1].type == "response.incomplete"
        assert dumped(events[-1].response.output) == dumped(folded.output)  # type: ignore[union-attr]
        return
    with client.responses.stream(model=MODEL, input="hi") as stream:
        final = stream.get_final_response()
    assert dumped(final.output) == dumped(folded.output)
    assert final.usage == folded.usage
    assert final.output_text == folded.output_text


def test_non_streaming_response_object() -> None:
    response = folded_response("text_tool")
    parsed = Response.model_validate(response)
    assert parsed.id == RESPONSE_ID
    assert parsed.object == "response"
    assert parsed.status == "completed"
    assert parsed.output_text == "I'll check."
    call = parsed.output[1]
    assert call.type == "function_call"
    assert call.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]


def test_on_finish_receives_the_output_items() -> None:
    finished: list[Any] = []
    response_bytes("text_tool", finished)
    assert len(finished) == 1
    assert [item["type"] for item in finished[0]] == ["message", "function_call"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            PreviousResponseNotFound("previous response with id 'resp_x' not found"),
            {
                "type": "invalid_request_error",
                "param": "previous_response_id",
                "code": "previous_response_not_found",
            },
        ),
        (
            InvalidRequest("messages.2.content: must be a string or a list of content parts"),
            {"type": "invalid_request_error", "param": "messages.2.content", "code": None},
        ),
        (
            InvalidRequest("model not supported: llama"),
            {"type": "invalid_request_error", "param": None, "code": None},
        ),
        (
            ContextTooLong("prompt is too long"),
            {"type": "invalid_request_error", "param": None, "code": "context_length_exceeded"},
        ),
        (
            UpstreamStatusError("limit", upstream_status=402, kind="quota"),
            {"type": "rate_limit_error", "param": None, "code": "insufficient_quota"},
        ),
        (
            UpstreamStatusError("busy", upstream_status=500, kind="capacity"),
            {"type": "server_error", "param": None, "code": "server_is_overloaded"},
        ),
        (
            UpstreamStatusError("slow down", upstream_status=429, kind="throttled"),
            {"type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"},
        ),
    ],
)
def test_error_objects(exc: Exception, expected: dict[str, Any]) -> None:
    result = error_object(exc)
    assert result["message"] == str(exc)
    assert {k: result[k] for k in ("type", "param", "code")} == expected
