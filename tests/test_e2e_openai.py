"""The OpenAI Chat Completions and Responses APIs end to end, with the official ``openai`` SDK.

Client → kiro_fast (real sockets) → the built-in fake Kiro upstream. The same upstream
call, pool and stream converter serve the Anthropic path; these tests check what an
OpenAI-shaped client (Cherry Studio, Cursor, OpenCode, Codex) relies on. Expected
outcomes come from kiro-api.md §10 and the scenario the fake was told to play.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from e2e_harness import API_KEY, Harness, directive

from kiro_fast import openai_api
from kiro_fast.runtime import Runtime
from kiro_fast.testing import Scenario

MODEL = "gpt-4o"
PNG_1X1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
RESPONSES_WEATHER_TOOL = {"type": "function", "strict": False, **WEATHER_TOOL["function"]}


def install_openai(runtime: Runtime) -> None:
    """The app installs the OpenAI routes itself once wired; until then, install them here."""
    if "/v1/responses" not in runtime.app.routes:
        openai_api.install(runtime.app)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with Harness(setup=install_openai) as running:
        yield running


@pytest.fixture
def client(harness: Harness) -> openai.OpenAI:
    return harness.openai()  # type: ignore[no-any-return]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat_requests(harness: Harness) -> list[dict[str, Any]]:
    def find() -> list[dict[str, Any]]:
        return [
            r.json for r in harness.fake.requests if r.path.endswith("/generateAssistantResponse")
        ]

    return harness.call(find)  # type: ignore[no-any-return]


def last_upstream_state(harness: Harness) -> dict[str, Any]:
    return chat_requests(harness)[-1]["conversationState"]  # type: ignore[no-any-return]


def raw_post(harness: Harness, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", harness.runtime.port, timeout=20)
    try:
        conn.request(
            "POST",
            path,
            body,
            {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- chat completions


def test_chat_create(harness: Harness, client: openai.OpenAI) -> None:
    text = "Paris is the capital of France."
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            *user("Capital? " + directive({"text": text})),
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == text
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens >= 1
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    state = last_upstream_state(harness)
    assert state["currentMessage"]["userInputMessage"]["modelId"] == "claude-sonnet-4.5"
    assert state["history"][0]["userInputMessage"]["content"] == "Answer briefly."


def test_chat_stream_collects_the_text(client: openai.OpenAI) -> None:
    text = "Streaming arrives in small fragments, all of them."
    stream = client.chat.completions.create(
        model=MODEL, messages=user(directive({"text": text})), stream=True
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == text
    assert len(pieces) > 1  # the fake splits text into several fragments
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_chat_stream_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=user(directive({"text": "Counted."})),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens >= 1
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_chat_tool_round_trip(harness: Harness, client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=user(
            "Weather in Paris? "
            + directive({"scenario": "tool", "name": "get_weather", "input": {"city": "Paris"}})
        ),
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    second = client.chat.completions.create(
        model=MODEL,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            *user("Weather in Paris?"),
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {
                "role": "tool",
                "tool_call_id": call.id,
                "content": "18°C, sunny " + directive({"text": "It is sunny."}),
            },
        ],
    )
    assert second.choices[0].message.content == "It is sunny."
    assert second.choices[0].finish_reason == "stop"
    state = last_upstream_state(harness)
    context = state["currentMessage"]["userInputMessage"]["userInputMessageContext"]
    assert context["toolResults"][0]["toolUseId"] == call.id
    assert state["history"][-1]["assistantResponseMessage"]["toolUses"] == [
        {"toolUseId": call.id, "name": "get_weather", "input": {"city": "Paris"}}
    ]


def test_chat_streamed_tool_call(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=user(
            directive({"scenario": "text_tool", "name": "get_weather", "input": {"city": "Rome"}})
        ),
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "I'll check."
    call = message.tool_calls[0]  # type: ignore[index]
    assert call.id.startswith("tooluse_")
    assert json.loads(call.function.arguments) == {"city": "Rome"}  # type: ignore[union-attr]


def test_thinking_suffix_streams_reasoning_content(harness: Harness, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL + "-thinking",
        messages=user("Think first. " + directive({"scenario": "thinking", "text": "Answer."})),
        stream=True,
    )
    reasoning, content = [], []
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
        content.append(delta.content or "")
    assert "".join(reasoning).strip()
    assert "".join(content) == "Answer."
    system = last_upstream_state(harness)["history"][0]["userInputMessage"]["content"]
    assert "<thinking_mode>enabled</thinking_mode>" in system


def test_reasoning_effort_non_streaming(harness: Harness, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        reasoning_effort="low",
        messages=user(directive({"scenario": "thinking", "text": "Done."})),
    )
    message = completion.choices[0].message
    assert message.content == "Done."
    assert (message.model_extra or {}).get("reasoning_content")
    system = last_upstream_state(harness)["history"][0]["userInputMessage"]["content"]
    assert "<max_thinking_length>4000</max_thinking_length>" in system


def test_chat_image_data_url_reaches_upstream(harness: Harness, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}},
                ],
            }
        ],
    )
    current = last_upstream_state(harness)["currentMessage"]["userInputMessage"]
    assert current["images"] == [{"format": "png", "source": {"bytes": PNG_1X1}}]


# --------------------------------------------------------------------------- responses


def test_responses_create(harness: Harness, client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, instructions="Be brief.", input="Hi " + directive({"text": "Hello there."})
    )
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "Hello there."
    assert response.model == MODEL
    assert response.instructions == "Be brief."
    assert response.usage is not None and response.usage.output_tokens >= 1
    history = last_upstream_state(harness)["history"]
    assert history[0]["userInputMessage"]["content"] == "Be brief."


def test_responses_stream_event_sequence(client: openai.OpenAI) -> None:
    text = "Streamed through the Responses API."
    with client.responses.stream(model=MODEL, input=directive({"text": text})) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == text
    assert final.usage is not None and final.usage.total_tokens > 0


def test_responses_function_call_round_trip(harness: Harness, client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        tools=[RESPONSES_WEATHER_TOOL],  # type: ignore[list-item]
        input=directive({"scenario": "tool", "name": "get_weather", "input": {"city": "Oslo"}}),
        store=False,
    )
    call = first.output[-1]
    assert call.type == "function_call"
    assert call.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
    # Codex's way: the whole conversation again, with the function output
    second = client.responses.create(
        model=MODEL,
        tools=[RESPONSES_WEATHER_TOOL],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "type": "function_call",
                "call_id": call.call_id,  # type: ignore[union-attr]
                "name": "get_weather",
                "arguments": call.arguments,  # type: ignore[union-attr]
            },
            {
                "type": "function_call_output",
                "call_id": call.call_id,  # type: ignore[union-attr]
                "output": "-3°C " + directive({"text": "It is cold."}),
            },
        ],
    )
    assert second.output_text == "It is cold."
    state = last_upstream_state(harness)
    results = state["currentMessage"]["userInputMessage"]["userInputMessageContext"]["toolResults"]
    assert results[0]["toolUseId"] == call.call_id  # type: ignore[union-attr]


def test_responses_streamed_function_call(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL,
        tools=[RESPONSES_WEATHER_TOOL],  # type: ignore[list-item]
        input=directive({"scenario": "tool", "name": "get_weather", "input": {"city": "Lima"}}),
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert json.loads(arguments) == {"city": "Lima"}
    call = final.output[-1]
    assert call.type == "function_call"
    assert call.status == "completed"  # type: ignore[union-attr]


def test_previous_response_id_continues_the_conversation(
    harness: Harness, client: openai.OpenAI
) -> None:
    first = client.responses.create(
        model=MODEL, input="My name is Ada. " + directive({"text": "Hello Ada."})
    )
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input="What is my name? " + directive({"text": "Your name is Ada."}),
    )
    assert second.output_text == "Your name is Ada."
    assert second.previous_response_id == first.id
    requests = chat_requests(harness)
    state = requests[-1]["conversationState"]
    texts = [
        entry.get("userInputMessage", entry.get("assistantResponseMessage"))["content"]
        for entry in state["history"]
    ]
    assert texts[0].startswith("My name is Ada.")
    assert texts[1] == "Hello Ada."
    assert state["currentMessage"]["userInputMessage"]["content"].startswith("What is my name?")
    assert state["conversationId"] == requests[-2]["conversationState"]["conversationId"]


def test_unknown_previous_response_id_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, previous_response_id="resp_missing", input="hi")
    assert info.value.status_code == 400
    assert info.value.code == "previous_response_not_found"
    assert info.value.param == "previous_response_id"


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input=directive({"text": "ok"}), store=False)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, previous_response_id=first.id, input="again")


# --------------------------------------------------------------------------- error shapes


def test_bad_key_is_an_authentication_error(harness: Harness) -> None:
    bad = harness.openai(api_key="wrong")
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model=MODEL, messages=user("hi"))  # type: ignore[arg-type]
    assert info.value.status_code == 401
    assert info.value.body["type"] == "authentication_error"  # type: ignore[index]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_malformed_json_is_a_400_in_openai_shape(harness: Harness, path: str) -> None:
    status, raw = raw_post(harness, path, b'{"model": ')
    assert status == 400
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_unknown_model_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="llama-3-70b", messages=user("hi"))  # type: ignore[arg-type]
    assert "model not supported" in info.value.message


def test_bad_field_names_the_param(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}],  # type: ignore[list-item]
        )
    assert info.value.param == "messages.0.content.0.text"


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("error", "status", "exception"),
    [
        ("rate_limited", 429, openai.RateLimitError),
        ("high_load", 529, openai.InternalServerError),
        ("input_too_long", 400, openai.BadRequestError),
        ("improperly_formed", 400, openai.BadRequestError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_map_to_openai_errors(
    client: openai.OpenAI, error: str, status: int, exception: type[Exception], stream: bool
) -> None:
    with pytest.raises(exception) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=user(directive({"scenario": "error", "error": error})),  # type: ignore[arg-type]
            stream=stream,
        )
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert set(info.value.body) == {"message", "type", "param", "code"}  # type: ignore[attr-defined]


def test_input_too_long_carries_the_context_length_code(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model=MODEL, input=directive({"scenario": "error", "error": "input_too_long"})
        )
    assert info.value.code == "context_length_exceeded"


def test_rate_limit_on_responses(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(
            model=MODEL,
            input=directive({"scenario": "error", "error": "rate_limited"}),
            stream=True,
        )
    assert info.value.code == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) > 0


def test_transient_error_is_retried_invisibly(harness: Harness, client: openai.OpenAI) -> None:
    harness.call(lambda: harness.fake.enqueue(Scenario(error="high_load")))
    completion = client.chat.completions.create(
        model=MODEL, messages=user(directive({"text": "recovered"}))
    )
    assert completion.choices[0].message.content == "recovered"


def test_chat_mid_stream_cut_raises(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=user(directive({"scenario": "disconnect", "after": 3})),
        stream=True,
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_responses_mid_stream_cut_raises(client: openai.OpenAI) -> None:
    seen: list[str] = []
    numbers: list[int] = []
    with (
        pytest.raises(openai.APIError),
        client.responses.stream(
            model=MODEL, input=directive({"scenario": "disconnect", "after": 3})
        ) as stream,
    ):
        for event in stream:
            seen.append(event.type)
            numbers.append(event.sequence_number)
    assert seen[0] == "response.created"
    assert seen[-1] == "response.failed"
    assert "response.completed" not in seen
    assert numbers == list(range(len(numbers)))  # the failure continues the same stream


def test_chat_truncation_mid_tool_is_length_without_a_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=user(
            directive({"scenario": "truncate", "name": "Write", "input": {"content": "x" * 500}})
        ),
        stream=True,
    )
    chunks = list(stream)
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    completion = client.chat.completions.create(
        model=MODEL,
        messages=user(
            directive({"scenario": "truncate", "name": "Write", "input": {"content": "y" * 400}})
        ),
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.tool_calls is None


def test_responses_truncation_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=directive({"scenario": "truncate", "name": "Write", "input": {"content": "z" * 400}}),
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert all(item.type != "function_call" for item in response.output)


# --------------------------------------------------------------------------- configuration


def test_thinking_format_and_alias_model_are_configurable() -> None:
    config = {"openaiThinkingFormat": "think", "openaiAliasModel": "claude-opus-4.6"}
    with Harness(config=config, setup=install_openai) as configured:
        client = configured.openai()
        completion = client.chat.completions.create(
            model="gpt-4-turbo",
            reasoning_effort="medium",
            messages=user(directive({"scenario": "thinking", "text": "Done."})),
        )
        content = completion.choices[0].message.content or ""
        assert content.startswith("<think>")
        assert content.endswith("</think>\n\nDone.")
        assert (completion.choices[0].message.model_extra or {}).get("reasoning_content") is None
        state = last_upstream_state(configured)
        assert state["currentMessage"]["userInputMessage"]["modelId"] == "claude-opus-4.6"
