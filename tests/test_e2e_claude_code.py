"""Claude Code's traffic end to end: the official SDK (or raw HTTP) → kiro_fast → the fake.

The fake upstream validates every request with the upstream's rules (kiro-api.md §4.6),
so any request kiro_fast sends that the real service would refuse fails these tests.
Expected values come from the spec, claude-code-traffic.md and the scripted scenarios.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from e2e_harness import API_KEY, Harness, directive

from kiro_fast.structured_output import STRUCTURED_OUTPUT
from kiro_fast.testing import Scenario

MODEL = "claude-opus-4-8"
FIXTURE = Path(__file__).parent / "data" / "requests" / "claude_code_opus_4_8.json"
#: Claude Code's own test for "the prompt no longer fits" (from its shipped CLI, 2.1.197).
CLAUDE_CODE_TOO_LONG = re.compile(r"prompt is too long[^0-9]*(\d+)\s*tokens?\s*>\s*(\d+)", re.I)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with Harness() as running:
        yield running


@pytest.fixture(scope="module")
def pinging() -> Iterator[Harness]:
    """Short ping period and idle timeout: silences and stalls show within a second."""
    config = {"pingInterval": 0.05, "streamIdleTimeout": 1.0}
    with Harness(config=config) as running:
        yield running


@pytest.fixture
def client(harness: Harness) -> anthropic.Anthropic:
    return harness.anthropic()  # type: ignore[no-any-return]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chats(harness: Harness) -> list[Any]:
    return harness.call(  # type: ignore[no-any-return]
        lambda: [r for r in harness.fake.requests if r.endpoint == "generateAssistantResponse"]
    )


def raw_post(harness: Harness, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", harness.runtime.port, timeout=20)
    try:
        conn.request(
            "POST",
            path,
            orjson.dumps(payload),
            {"x-api-key": API_KEY, "content-type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def fixture_request(text: str) -> dict[str, Any]:
    """The realistic 115 KB Claude Code request, its prompt replaced by ``text``."""
    request: dict[str, Any] = orjson.loads(FIXTURE.read_bytes())
    request["messages"][0]["content"][-1]["text"] = text
    return request


# --------------------------------------------------------------------------- item 2


def test_realistic_claude_code_request_is_accepted_by_the_validating_upstream(
    harness: Harness,
) -> None:
    request = fixture_request("Answer briefly. " + directive({"text": "Done."}))
    assert 100_000 < len(orjson.dumps(request)) < 130_000
    status, raw = raw_post(harness, "/v1/messages?beta=true", request)
    assert status == 200
    events = sse_events(raw)
    assert [name for name, _ in events][-1] == "message_stop"
    text = "".join(
        e["delta"].get("text", "") for name, e in events if name == "content_block_delta"
    )
    assert text.endswith("Done.")
    upstream = chats(harness)[-1]
    assert upstream.status == 200 and upstream.rule is None
    body = upstream.json
    assert "x-anthropic-billing-header" not in upstream.body.decode()
    state = body["conversationState"]
    assert state["conversationId"] == "6f1c2d3e-4b5a-4978-8e9f-0a1b2c3d4e5f"  # metadata session
    assert state["currentMessage"]["userInputMessage"]["modelId"] == "claude-opus-4.8"
    tools = state["currentMessage"]["userInputMessage"]["userInputMessageContext"]["tools"]
    assert len(tools) == 25
    assert all(len(t["toolSpecification"]["description"]) <= 10_000 for t in tools)


@pytest.mark.parametrize(
    ("answer", "expected_outcome"),
    [
        ('```json\n{"title": "Fix parser", "done": true}\n```', "unfenced"),
        ('{"title": "Fix parser", "done": true}', "valid"),
        ('{"title": 5}', "schema_mismatch"),
    ],
)
def test_structured_output_is_instructed_unfenced_and_validated(
    harness: Harness, client: anthropic.Anthropic, answer: str, expected_outcome: str
) -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "done": {"type": "boolean"}},
        "required": ["title", "done"],
        "additionalProperties": False,
    }
    before = STRUCTURED_OUTPUT[expected_outcome]
    harness.call(lambda: harness.fake.enqueue(Scenario(text=answer)))
    message = client.messages.create(
        model=MODEL,
        max_tokens=256,
        messages=user("Summarise the session as JSON."),
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    text = message.content[0].text  # type: ignore[union-attr]
    if expected_outcome == "schema_mismatch":
        assert text == '{"title": 5}'  # delivered as the model wrote it, never invented
    else:
        assert json.loads(text) == {"title": "Fix parser", "done": True}
        assert not text.startswith("```")
    assert STRUCTURED_OUTPUT[expected_outcome] == before + 1
    current = chats(harness)[-1].json["conversationState"]["currentMessage"]
    assert '"additionalProperties":false' in current["userInputMessage"]["content"]


def test_streamed_structured_output_is_checked_but_never_rewritten(
    harness: Harness, client: anthropic.Anthropic
) -> None:
    answer = '```json\n{"n": 1}\n```'
    before = STRUCTURED_OUTPUT["unfenced"]
    harness.call(lambda: harness.fake.enqueue(Scenario(text=answer)))
    with client.messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=user("JSON please"),
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": {}}}},
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == answer  # type: ignore[union-attr]
    assert STRUCTURED_OUTPUT["unfenced"] == before + 1


def test_buffered_cc_structured_output_is_checked_and_delivered_as_written(
    harness: Harness,
) -> None:
    answer = '{"n": "one"}'
    before = STRUCTURED_OUTPUT["schema_mismatch"]
    harness.call(lambda: harness.fake.enqueue(Scenario(text=answer)))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": user("JSON please"),
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }
    status, raw = raw_post(harness, "/cc/v1/messages", body)
    assert status == 200
    events = sse_events(raw)
    text = "".join(
        e["delta"].get("text", "") for name, e in events if name == "content_block_delta"
    )
    assert text == answer
    assert STRUCTURED_OUTPUT["schema_mismatch"] == before + 1


# --------------------------------------------------------------------------- item 5


def test_local_context_too_long_matches_claude_code_and_carries_numbers(
    harness: Harness,
) -> None:
    huge = " ".join(["word"] * 130_000)  # 650,000 characters: over the 600k message cap
    status, raw = raw_post(
        harness, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": user(huge)}
    )
    assert status == 400
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error"
    match = CLAUDE_CODE_TOO_LONG.search(error["message"])
    assert match is not None
    assert int(match.group(1)) > int(match.group(2))


def test_upstream_context_too_long_matches_claude_code(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=user(directive({"scenario": "error", "error": "input_too_long"})),
        )
    # Claude Code: e.message.toLowerCase().includes("prompt is too long") -> compaction
    assert "prompt is too long" in str(info.value).lower()


def test_exception_frame_after_content_is_an_sse_error_never_a_clean_stop(
    harness: Harness,
) -> None:
    # frames 30 ms apart: the text reaches the client before the exception frame
    scenario = {
        "scenario": "exception",
        "exception": "InternalServerException",
        "text": "Part of it",
        "frame_interval_ms": 30,
    }
    status, raw = raw_post(
        harness,
        "/v1/messages",
        {"model": MODEL, "max_tokens": 64, "stream": True, "messages": user(directive(scenario))},
    )
    assert status == 200
    names = [name for name, _ in sse_events(raw)]
    assert "content_block_delta" in names  # content went out first
    assert names[-1] == "error" and "message_stop" not in names
    assert sse_events(raw)[-1][1]["error"]["type"] == "overloaded_error"


def test_exception_frame_after_content_fails_the_sdk_stream(client: anthropic.Anthropic) -> None:
    scenario = {"scenario": "exception", "exception": "ThrottlingException", "text": "Partial"}
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(
            model=MODEL, max_tokens=64, messages=user(directive(scenario))
        ) as stream,
    ):
        stream.get_final_message()


# --------------------------------------------------------------------------- item 6


def test_echoed_thinking_with_signatures_is_accepted_upstream(
    harness: Harness, client: anthropic.Anthropic
) -> None:
    first = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=user("Think. " + directive({"scenario": "reasoning", "text": "First."})),
    )
    kinds = [block.type for block in first.content]
    assert kinds[0] == "thinking" and "text" in kinds
    thinking = first.content[0]
    assert thinking.signature.startswith("sig_")  # type: ignore[union-attr]
    second = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[
            *user("Think."),
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            *user("Again. " + directive({"text": "Second."})),
        ],
    )
    assert second.content[-1].text == "Second."  # type: ignore[union-attr]
    upstream = chats(harness)[-1]
    assert upstream.status == 200 and upstream.rule is None
    echoed = upstream.json["conversationState"]["history"][-1]["assistantResponseMessage"]
    assert echoed["content"].startswith("<thinking>")


def test_native_reasoning_streams_text_and_signature(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=1024,
        messages=user(directive({"scenario": "reasoning", "reasoning": "Step one.", "text": "A"})),
    ) as stream:
        final = stream.get_final_message()
    thinking = final.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == "Step one."
    assert re.fullmatch(r"sig_[0-9a-f]{32}", thinking.signature)
    assert final.content[-1].text == "A"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- item 8


@pytest.mark.parametrize("path", ["/v1/messages", "/cc/v1/messages"])
def test_pings_fill_long_silences(pinging: Harness, path: str) -> None:
    # three frames 400 ms apart: silences of 8 ping periods each
    scenario = {"scenario": "trickle", "ms": 400, "text": "slow"}
    status, raw = raw_post(
        pinging,
        path,
        {"model": MODEL, "max_tokens": 16, "stream": True, "messages": user(directive(scenario))},
    )
    assert status == 200
    names = [name for name, _ in sse_events(raw)]
    assert names.count("ping") >= 2
    assert names[-1] == "message_stop"
    text = "".join(
        e["delta"].get("text", "") for n, e in sse_events(raw) if n == "content_block_delta"
    )
    assert text == "slow"


def test_stall_after_the_first_byte_ends_with_an_error_event(pinging: Harness) -> None:
    scenario = {"scenario": "stall", "after": 2, "text": "This answer never finishes."}
    try:
        status, raw = raw_post(
            pinging,
            "/v1/messages",
            {
                "model": MODEL,
                "max_tokens": 16,
                "stream": True,
                "messages": user(directive(scenario)),
            },
        )
    finally:
        pinging.call(pinging.fake.release)
    assert status == 200
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["error"]["type"] in ("api_error", "overloaded_error")
    # no second attempt: content had reached the client
    assert len(chats(pinging)) == len([r for r in chats(pinging) if r.scenario]) >= 1
