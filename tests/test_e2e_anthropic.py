"""The Anthropic Messages API end to end, with the official ``anthropic`` SDK as the client.

Client → kiro_fast (real sockets) → the built-in fake Kiro upstream (real event-stream
frames). Expected outcomes come from the spec (kiro-api.md §7, §9) and the scenario the
fake was told to play, never from kiro_fast's own output.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from e2e_harness import API_KEY, Harness, directive

MODEL = "claude-sonnet-4-6"
PNG_1X1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with Harness() as running:
        yield running


@pytest.fixture
def client(harness: Harness) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=harness.url, api_key=API_KEY, max_retries=0, timeout=20
    ) as sdk:
        yield sdk


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def last_upstream_body(harness: Harness) -> dict[str, Any]:
    def find() -> dict[str, Any]:
        chats = [r for r in harness.fake.requests if r.path.endswith("/generateAssistantResponse")]
        return chats[-1].json  # type: ignore[no-any-return]

    return harness.call(find)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- happy paths


def test_create_returns_the_upstream_text(harness: Harness, client: anthropic.Anthropic) -> None:
    text = "Paris is the capital of France."
    message = client.messages.create(
        model=MODEL, max_tokens=256, messages=user("Capital? " + directive({"text": text}))
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == text  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens >= 1
    body = last_upstream_body(harness)
    state = body["conversationState"]
    assert state["chatTriggerType"] == "MANUAL"
    assert state["currentMessage"]["userInputMessage"]["modelId"] == "claude-sonnet-4.6"


def test_stream_get_final_message(client: anthropic.Anthropic) -> None:
    text = "Streaming arrives in small fragments, all of them."
    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=user(directive({"text": text}))
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == text
    assert len(pieces) > 1  # the fake splits text into several fragments
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"


def test_tool_round_trip(harness: Harness, client: anthropic.Anthropic) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "Get the weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    first = client.messages.create(
        model=MODEL,
        max_tokens=256,
        tools=tools,  # type: ignore[arg-type]
        messages=user(
            "Weather in Paris? "
            + directive(
                {"scenario": "text_tool", "name": "get_weather", "input": {"city": "Paris"}}
            )
        ),
    )
    assert first.stop_reason == "tool_use"
    tool_use = next(b for b in first.content if b.type == "tool_use")
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Paris"}
    second = client.messages.create(
        model=MODEL,
        max_tokens=256,
        tools=tools,  # type: ignore[arg-type]
        messages=[
            *user("Weather in Paris?"),
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": tool_use.id,
                        "content": "18°C, sunny " + directive({"text": "It is sunny."}),
                    }
                ],
            },
        ],
    )
    assert second.content[0].text == "It is sunny."  # type: ignore[union-attr]
    upstream = last_upstream_body(harness)["conversationState"]
    results = upstream["currentMessage"]["userInputMessage"]["userInputMessageContext"][
        "toolResults"
    ]
    assert results[0]["toolUseId"] == tool_use.id
    assert upstream["history"][-1]["assistantResponseMessage"]["toolUses"][0]["input"] == {
        "city": "Paris"
    }


def test_streamed_tool_call_arrives_whole(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=256,
        tools=[{"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}],
        messages=user(directive({"scenario": "tool", "name": "lookup", "input": {"q": "x" * 300}})),
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].input == {"q": "x" * 300}  # type: ignore[union-attr]


def test_thinking_blocks(harness: Harness, client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=user("Think first. " + directive({"scenario": "thinking", "text": "Answer."})),
    )
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "text"]
    assert message.content[0].thinking  # type: ignore[union-attr]
    assert message.content[1].text == "Answer."  # type: ignore[union-attr]
    history = last_upstream_body(harness)["conversationState"]["history"]
    assert "<thinking_mode>enabled</thinking_mode>" in history[0]["userInputMessage"]["content"]


def test_image_reaches_upstream(harness: Harness, client: anthropic.Anthropic) -> None:
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG_1X1},
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    current = last_upstream_body(harness)["conversationState"]["currentMessage"]["userInputMessage"]
    assert current["images"] == [{"format": "png", "source": {"bytes": PNG_1X1}}]


def test_count_tokens(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model=MODEL, messages=user("hi"))
    long = client.messages.count_tokens(model=MODEL, messages=user("hello world " * 2000))
    assert short.input_tokens >= 1
    assert long.input_tokens > short.input_tokens + 3000


def test_models_list(client: anthropic.Anthropic) -> None:
    ids = [m.id for m in client.models.list()]
    assert "claude-sonnet-4-5-20250929" in ids
    assert any(i.endswith("-thinking") for i in ids)


def test_bad_key_is_an_authentication_error(harness: Harness) -> None:
    with (
        anthropic.Anthropic(base_url=harness.url, api_key="wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError) as info,
    ):
        bad.messages.create(model=MODEL, max_tokens=16, messages=user("hi"))
    assert info.value.status_code == 401
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_bearer_authorization_is_accepted(harness: Harness) -> None:
    with anthropic.Anthropic(
        base_url=harness.url, auth_token=API_KEY, api_key=None, max_retries=0
    ) as bearer:
        message = bearer.messages.create(
            model=MODEL, max_tokens=16, messages=user(directive({"text": "ok"}))
        )
    assert message.content[0].text == "ok"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- wire level


def raw_post(
    harness: Harness, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", harness.runtime.port, timeout=20)
    try:
        conn.request(
            "POST",
            path,
            body,
            {"x-api-key": API_KEY, "content-type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_sse_sequence_on_the_wire(harness: Harness) -> None:
    body = json.dumps(
        {
            "model": MODEL,
            "max_tokens": 64,
            "stream": True,
            "messages": user(directive({"text": "Hi there"})),
        }
    ).encode()
    status, headers, raw = raw_post(harness, "/v1/messages?beta=true", body)
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-request-id"]
    names = [name for name, _ in sse_events(raw)]
    assert names[0] == "message_start"
    assert names[1] == "content_block_start"
    assert set(names[2:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    events = sse_events(raw)
    assert (
        "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta") == "Hi there"
    )
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_malformed_json_is_a_400_in_anthropic_shape(harness: Harness) -> None:
    status, _, raw = raw_post(harness, "/v1/messages", b'{"model": ')
    assert status == 400
    error = json.loads(raw)
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"


def test_missing_messages_is_a_400(harness: Harness) -> None:
    status, _, raw = raw_post(
        harness, "/v1/messages", json.dumps({"model": MODEL, "max_tokens": 5}).encode()
    )
    assert status == 400
    assert "messages" in json.loads(raw)["error"]["message"]


def test_unknown_route_is_a_404(harness: Harness) -> None:
    status, _, raw = raw_post(harness, "/v1/nothing", b"{}")
    assert status == 404
    assert json.loads(raw)["error"]["type"] == "not_found_error"


def test_cc_endpoint_reports_context_derived_input_tokens_in_message_start(
    harness: Harness,
) -> None:
    body = json.dumps(
        {
            "model": MODEL,
            "max_tokens": 64,
            "stream": True,
            "messages": user(directive({"text": "Hello"})),
        }
    ).encode()
    status, _, raw = raw_post(harness, "/cc/v1/messages", body)
    assert status == 200
    events = sse_events(raw)
    start = events[0][1]["message"]["usage"]["input_tokens"]
    final = events[-2][1]["usage"]["input_tokens"]
    assert start == final  # message_start rewritten with the upstream-derived figure


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("error", "status", "error_type", "exception"),
    [
        ("improperly_formed", 400, "invalid_request_error", anthropic.BadRequestError),
        ("input_too_long", 400, "invalid_request_error", anthropic.BadRequestError),
        ("rate_limited", 429, "rate_limit_error", anthropic.RateLimitError),
        ("high_load", 529, "overloaded_error", anthropic.APIStatusError),
    ],
)
def test_upstream_errors_map_to_anthropic_errors(
    client: anthropic.Anthropic,
    error: str,
    status: int,
    error_type: str,
    exception: type[Exception],
) -> None:
    with pytest.raises(exception) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=16,
            messages=user(directive({"scenario": "error", "error": error})),
        )
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert info.value.body["error"]["type"] == error_type  # type: ignore[attr-defined]


def test_context_too_long_uses_text_claude_code_compacts_on(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=16,
            messages=user(directive({"scenario": "error", "error": "input_too_long"})),
        )
    assert "prompt is too long" in info.value.body["error"]["message"]  # type: ignore[index]


def test_rate_limit_carries_retry_after(harness: Harness) -> None:
    body = json.dumps(
        {
            "model": MODEL,
            "max_tokens": 8,
            "messages": user(directive({"scenario": "error", "error": "rate_limited"})),
        }
    ).encode()
    status, headers, _ = raw_post(harness, "/v1/messages", body)
    assert status == 429
    assert int(headers["retry-after"]) > 0


def test_transient_error_is_retried_invisibly(
    harness: Harness, client: anthropic.Anthropic
) -> None:
    from kiro_fast.testing import Scenario

    harness.call(lambda: harness.fake.enqueue(Scenario(error="high_load")))
    message = client.messages.create(
        model=MODEL, max_tokens=16, messages=user(directive({"text": "recovered"}))
    )
    assert message.content[0].text == "recovered"  # type: ignore[union-attr]


def test_bearer_invalid_forces_one_refresh_and_succeeds(
    harness: Harness, client: anthropic.Anthropic
) -> None:
    before = harness.call(lambda: harness.fake.accounts.refresh_count)
    harness.call(lambda: harness.fake.accounts.expire_access_tokens())
    message = client.messages.create(
        model=MODEL, max_tokens=16, messages=user(directive({"text": "fresh"}))
    )
    assert message.content[0].text == "fresh"  # type: ignore[union-attr]
    assert harness.call(lambda: harness.fake.accounts.refresh_count) == before + 1


def test_mid_stream_cut_reaches_the_client_as_an_error(client: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(
            model=MODEL,
            max_tokens=64,
            messages=user(directive({"scenario": "disconnect", "after": 3})),
        ) as stream,
    ):
        stream.get_final_message()


def test_truncated_tool_call_is_never_delivered_as_complete(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=256,
        tools=[
            {"name": "Write", "description": "Write a file", "input_schema": {"type": "object"}}
        ],
        messages=user(
            directive(
                {
                    "scenario": "truncate",
                    "name": "Write",
                    "input": {"path": "a.txt", "content": "x" * 500},
                }
            )
        ),
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert all(block.type != "tool_use" for block in final.content)


def test_truncated_non_streaming_answer_ends_with_max_tokens(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=256,
        tools=[
            {"name": "Write", "description": "Write a file", "input_schema": {"type": "object"}}
        ],
        messages=user(
            directive({"scenario": "truncate", "name": "Write", "input": {"content": "y" * 400}})
        ),
    )
    assert message.stop_reason == "max_tokens"
    assert all(block.type != "tool_use" for block in message.content)


def test_bad_crc_before_content_is_retried(harness: Harness, client: anthropic.Anthropic) -> None:
    from kiro_fast.testing import Scenario

    harness.call(lambda: harness.fake.enqueue(Scenario(text="never seen", corrupt_crc_at=0)))
    message = client.messages.create(
        model=MODEL, max_tokens=16, messages=user(directive({"text": "clean"}))
    )
    assert message.content[0].text == "clean"  # type: ignore[union-attr]


def test_stall_before_first_byte_fails_over(harness: Harness, client: anthropic.Anthropic) -> None:
    from kiro_fast.testing import Scenario

    harness.call(lambda: harness.fake.enqueue(Scenario(text="stalled", stall_after=0)))
    try:
        message = client.messages.create(
            model=MODEL, max_tokens=16, messages=user(directive({"text": "after stall"}))
        )
    finally:
        harness.call(harness.fake.release)
    assert message.content[0].text == "after stall"  # type: ignore[union-attr]
