"""The fake Kiro upstream over real loopback HTTP, driven by a plain aiohttp client.

Frames are decoded with ``kiro_fast.eventstream``; expected values come from the specs
(kiro-api.md §6.7 byte-exact frames, §9.1 error bodies, kiro-auth.md §3/§4/§9.1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import uvloop

from kiro_fast.errors import MessageChecksumMismatch
from kiro_fast.eventstream import EventStreamDecoder, Message
from kiro_fast.testing import (
    PROMPT_OVERHEAD_TOKENS,
    SOCIAL_PROFILE_ARN,
    FakeSettings,
    FakeUpstream,
    McpError,
    Scenario,
    ToolCall,
    Usage,
)

CHAT = "/generateAssistantResponse"
TOOL_ID_RE = re.compile(r"tooluse_[A-Za-z0-9_-]{22}")
BENCH_TEXT = "".join(f"w{i:04d} " for i in range(50))


def run(main: Callable[[], Awaitable[None]], loop: str = "asyncio") -> None:
    if loop == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[tuple[FakeUpstream, aiohttp.ClientSession]]:
    async with FakeUpstream(settings=FakeSettings(**settings)) as fake:
        async with aiohttp.ClientSession() as session:
            yield fake, session


def chat_body(
    content: str = "Hello",
    *,
    model: str = "claude-sonnet-4.5",
    history: list[dict[str, Any]] | None = None,
    context: dict[str, Any] | None = None,
    profile_arn: str | None = None,
) -> dict[str, Any]:
    """kiro-api.md §4.7.1, with optional history and message context."""
    state: dict[str, Any] = {
        "agentContinuationId": "5c1e0000-0000-4000-8000-000000000001",
        "agentTaskType": "vibe",
        "chatTriggerType": "MANUAL",
        "currentMessage": {
            "userInputMessage": {
                "userInputMessageContext": context or {},
                "content": content,
                "modelId": model,
                "origin": "AI_EDITOR",
            }
        },
        "conversationId": "9f3a0000-0000-4000-8000-000000000002",
    }
    if history:
        state["history"] = history
    body: dict[str, Any] = {"conversationState": state}
    if profile_arn:
        body["profileArn"] = profile_arn
    return body


async def post_chat(
    session: aiohttp.ClientSession,
    fake: FakeUpstream,
    body: Any,
    token: str | None,
    *,
    path: str = CHAT,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    sent = {"content-type": "application/json", **(headers or {})}
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(fake.url + path, data=data, headers=sent) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def decode(data: bytes) -> list[Message]:
    decoder = EventStreamDecoder()
    messages = decoder.feed(data)
    decoder.feed_eof()
    return messages


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(m.event_type, json.loads(m.payload)) for m in decode(data)]


def texts(evs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [p["content"] for kind, p in evs if kind == "assistantResponseEvent"]


def social(fake: FakeUpstream) -> str:
    account = fake.accounts.add_social("aorSocialRefreshToken")
    assert account.access_token is not None
    return account.access_token


# --------------------------------------------------------------------------- chat answers


def test_default_answer_streams_small_text_fragments_then_metering_and_context():
    async def main():
        async with serving() as (fake, session):
            status, headers, data = await post_chat(session, fake, chat_body(), social(fake))
            assert status == 200
            assert headers["Content-Type"] == "application/vnd.amazon.eventstream"
            assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-amzn-requestid"])
            evs = events(data)
            parts = texts(evs)
            assert "".join(parts) == fake.settings.default_text
            assert len(parts) > 3 and all(1 <= len(p) <= 24 for p in parts)
            assert [kind for kind, _ in evs[-2:]] == ["meteringEvent", "contextUsageEvent"]
            assert evs[-2][1] == {"unit": "credit", "unitPlural": "credits", "usage": 0.0123}
            # "Hello": one word (1) + one message's framing (3) + the hidden 4,134,
            # over the 200k window
            assert evs[-1][1] == {"contextUsagePercentage": 4138 / 200_000 * 100}
            assert fake.requests[0].outcome == "complete"
            assert fake.counts["generateAssistantResponse"] == 1

    run(main)


def test_context_usage_uses_the_1m_window_for_4_6_models():
    async def main():
        async with serving() as (fake, session):
            body = chat_body(" ".join(["word"] * 1000), model="claude-opus-4.6")
            _, _, data = await post_chat(session, fake, body, social(fake))
            percentage = events(data)[-1][1]["contextUsagePercentage"]
            # 1000 one-token words + 3 framing + the hidden prompt
            assert round(percentage * 1_000_000 / 100) == 1000 + 3 + PROMPT_OVERHEAD_TOKENS

    run(main)


def test_frames_are_byte_identical_to_the_spec_examples():
    # kiro-api.md §6.7: (total_length, prelude CRC, message CRC)
    expected = [
        (127, 0x7C7DB5A8, 0x9B5D0635),  # assistantResponseEvent {"content":"Hello"}
        (146, 0x4B819BC1, 0x891F7D5B),  # toolUseEvent start
        (167, 0x2240AC37, 0x2B7E30D3),  # input '{"city":'
        (167, 0x2240AC37, 0xD057D559),  # input '"Paris"}'
        (158, 0x8E7176C0, 0x39A288A2),  # stop
        (154, 0x0CF6E096, 0x1D07F03D),  # meteringEvent 0.0123
    ]

    async def main():
        async with serving(fragment_min_chars=8, fragment_max_chars=8) as (fake, session):
            call = ToolCall("get_weather", tool_use_id="tooluse_abc", raw_input='{"city":"Paris"}')
            fake.enqueue(Scenario(text="Hello", tool_calls=(call,)))
            _, _, data = await post_chat(session, fake, chat_body(), social(fake))
        frames = []
        while data:
            size = int.from_bytes(data[:4], "big")
            frames.append(data[:size])
            data = data[size:]
        head = frames[0]
        assert head.hex(" ").startswith("00 00 00 7f 00 00 00 5c 7c 7d b5 a8 0b 3a 65 76")
        for frame, (total, prelude, crc) in zip(frames, expected, strict=False):
            assert len(frame) == total
            assert int.from_bytes(frame[8:12], "big") == prelude
            assert int.from_bytes(frame[-4:], "big") == crc

    run(main)


THINKING_SYSTEM = (
    "<thinking_mode>enabled</thinking_mode><max_thinking_length>10000</max_thinking_length>\n"
    "You are terse."
)


def thinking_history(system: str) -> list[dict[str, Any]]:
    """kiro-api.md §4.7.5: the thinking tags lead the system pair."""
    return [
        {
            "userInputMessage": {
                "content": system,
                "modelId": "claude-sonnet-4.5",
                "origin": "AI_EDITOR",
            }
        },
        {"assistantResponseMessage": {"content": "I will follow these instructions."}},
    ]


def test_thinking_request_gets_a_thinking_block_with_tags_split_across_frames():
    async def main():
        async with serving() as (fake, session):
            body = chat_body(history=thinking_history(THINKING_SYSTEM))
            _, _, data = await post_chat(session, fake, body, social(fake))
            parts = texts(events(data))
            text = "".join(parts)
            thinking = fake.settings.default_thinking
            assert text == f"<thinking>\n{thinking}\n</thinking>\n\n{fake.settings.default_text}"
            assert not any("<thinking>" in p or "</thinking>" in p for p in parts)
            assert not any("</thinking>\n\n" in p for p in parts)

    run(main)


def test_adaptive_thinking_starts_with_a_whitespace_only_fragment():
    async def main():
        async with serving() as (fake, session):
            system = (
                "<thinking_mode>adaptive</thinking_mode><thinking_effort>high</thinking_effort>"
            )
            body = chat_body("Hi", model="claude-opus-4.6", history=thinking_history(system))
            _, _, data = await post_chat(session, fake, body, social(fake))
            parts = texts(events(data))
            assert parts[0].strip() == "" and parts[0]
            assert "".join(parts).startswith("\n\n<thinking>\n")

    run(main)


def test_tool_call_input_arrives_in_string_fragments_between_start_and_stop():
    scripted = {"city": "Köln", "days": 3, "units": ["metric", "°C ✓"], "nested": {"a": None}}

    async def main():
        async with serving() as (fake, session):
            fake.enqueue(Scenario.tool("get_weather", scripted, text="I'll check."))
            _, _, data = await post_chat(session, fake, chat_body(), social(fake))
            messages = decode(data)
            evs = [(m.event_type, json.loads(m.payload)) for m in messages]
            assert "".join(texts(evs)) == "I'll check."
            tool = [(m, p) for m, (k, p) in zip(messages, evs, strict=True) if k == "toolUseEvent"]
            start, *middle, stop = [p for _, p in tool]
            assert set(start) == {"name", "toolUseId"}
            assert TOOL_ID_RE.fullmatch(start["toolUseId"])
            assert stop == {"name": "get_weather", "stop": True, "toolUseId": start["toolUseId"]}
            assert len(middle) > 1
            assert all(p["toolUseId"] == start["toolUseId"] for p in middle)
            assert json.loads("".join(p["input"] for p in middle)) == scripted
            # payload keys are alphabetical (§6.3)
            first_input = tool[1][0].payload
            assert first_input.startswith(b'{"input":') and b',"name":' in first_input
            assert [k for k, _ in evs[-2:]] == ["meteringEvent", "contextUsageEvent"]

    run(main)


def test_directive_in_the_last_user_message_selects_the_scenario():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            directive = '[[fake:{"scenario":"tool","name":"get_weather","input":{"city":"Paris"}}]]'
            _, _, data = await post_chat(session, fake, chat_body(f"Weather? {directive}"), token)
            tool = [p for k, p in events(data) if k == "toolUseEvent"]
            assert json.loads("".join(p.get("input", "") for p in tool)) == {"city": "Paris"}

            _, _, data = await post_chat(session, fake, chat_body("say [[fake:echo]] back"), token)
            assert "".join(texts(events(data))) == "say  back"

            status, headers, data = await post_chat(
                session, fake, chat_body("[[fake:{bad]]"), token
            )
            assert status == 400 and headers["x-fake-rule"] == "directive"
            status, _, _ = await post_chat(session, fake, chat_body("[[fake:nonsense]]"), token)
            assert status == 400

    run(main)


def test_directive_values_are_checked_and_custom_errors_allowed():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            body = chat_body('[[fake:{"scenario":"stall","after":"two"}]]')
            status, headers, _ = await post_chat(session, fake, body, token)
            assert (status, headers["x-fake-rule"]) == (400, "directive")
            teapot = '{"status":418,"message":"short and stout","error_type":"TeapotException"}'
            body = chat_body(f'[[fake:{{"error":{teapot}}}]]')
            status, headers, data = await post_chat(session, fake, body, token)
            assert (status, headers["x-amzn-errortype"]) == (418, "TeapotException")
            assert json.loads(data) == {"message": "short and stout", "reason": None}

    run(main)


def test_enqueued_scenarios_win_over_directives_and_are_used_once():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            fake.enqueue(Scenario(text="queued"), count=2)
            body = chat_body('[[fake:{"text":"directive"}]]')
            answers = []
            for _ in range(3):
                _, _, data = await post_chat(session, fake, body, token)
                answers.append("".join(texts(events(data))))
            assert answers == ["queued", "queued", "directive"]

    run(main)


def test_metadata_and_native_reasoning_events():
    async def main():
        async with serving() as (fake, session):
            fake.enqueue(Scenario(text="ok", reasoning="Let me see.", metadata=True))
            _, _, data = await post_chat(session, fake, chat_body(), social(fake))
            evs = events(data)
            reasoning = [p for k, p in evs if k == "reasoningContentEvent"]
            assert "".join(p.get("text", "") for p in reasoning) == "Let me see."
            assert set(reasoning[-1]) == {"signature"}
            meta = [p for k, p in evs if k == "metadataEvent"][0]["tokenUsage"]
            assert meta["uncachedInputTokens"] == 1 + 3 + PROMPT_OVERHEAD_TOKENS
            # "Let me see." 11 bytes + "ok" 2 bytes → ceil(13 / 4)
            assert meta["outputTokens"] == 4
            assert meta["totalTokens"] == meta["uncachedInputTokens"] + 4

    run(main)


# --------------------------------------------------------------------------- errors


ERROR_CASES = [
    ("improperly_formed", 400, "ValidationException", "Improperly formed request.", None),
    (
        "input_too_long",
        400,
        "ValidationException",
        "Input is too long.",
        "CONTENT_LENGTH_EXCEEDS_THRESHOLD",
    ),
    (
        "monthly_limit",
        402,
        "ServiceQuotaExceededException",
        "You have reached the limit.",
        "MONTHLY_REQUEST_COUNT",
    ),
    (
        "bearer_invalid",
        403,
        "AccessDeniedException",
        "The bearer token included in the request is invalid.",
        None,
    ),
    ("suspended", 403, "AccessDeniedException", None, "TEMPORARILY_SUSPENDED"),
    ("rate_limited", 429, "ThrottlingException", None, "USER_REQUEST_RATE_EXCEEDED"),
    ("capacity", 429, "ThrottlingException", None, "INSUFFICIENT_MODEL_CAPACITY"),
    (
        "high_load",
        500,
        "InternalServerException",
        "Encountered unexpectedly high load when processing the request, please try again.",
        "MODEL_TEMPORARILY_UNAVAILABLE",
    ),
    ("unavailable", 503, "ServiceUnavailableException", None, None),
]


@pytest.mark.parametrize(("name", "status", "error_type", "message", "reason"), ERROR_CASES)
def test_every_upstream_error_body(name, status, error_type, message, reason):
    async def main():
        async with serving() as (fake, session):
            body = chat_body(f'[[fake:{{"scenario":"error","error":"{name}"}}]]')
            got_status, headers, data = await post_chat(session, fake, body, social(fake))
            assert got_status == status
            assert headers["Content-Type"] == "application/json"
            assert headers["x-amzn-errortype"] == error_type
            payload = json.loads(data)
            assert set(payload) == {"message", "reason"}
            assert payload["reason"] == reason
            if message is not None:
                assert payload["message"] == message

    run(main)


def test_suspended_message_mentions_the_suspension():
    async def main():
        async with serving() as (fake, session):
            fake.enqueue(Scenario(error="suspended"))
            _, _, data = await post_chat(session, fake, chat_body(), social(fake))
            assert "temporarily is suspended" in json.loads(data)["message"]

    run(main)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_connection_reset_before_headers(loop):
    async def main():
        async with serving() as (fake, session):
            fake.enqueue(Scenario(reset=True))
            with pytest.raises(aiohttp.ClientError):
                await post_chat(session, fake, chat_body(), social(fake))
            assert fake.requests[0].status == 0

    run(main, loop)


def test_headers_are_withheld_for_the_configured_time():
    async def main():
        async with serving() as (fake, session):
            fake.enqueue(Scenario(headers_delay_ms=150))
            loop = asyncio.get_running_loop()
            started = loop.time()
            status, _, _ = await post_chat(session, fake, chat_body(), social(fake))
            assert status == 200
            assert loop.time() - started >= 0.14

    run(main)


def test_mid_stream_exception_frame_ends_the_stream():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            fake.enqueue(Scenario(exception="ThrottlingException", exception_after=2))
            _, _, data = await post_chat(session, fake, chat_body(), token)
            messages = decode(data)
            assert len(messages) == 3
            assert [m.event_type for m in messages[:2]] == ["assistantResponseEvent"] * 2
            last = messages[-1]
            assert list(last.headers) == [":exception-type", ":content-type", ":message-type"]
            assert last.exception_type == "ThrottlingException"
            assert last.message_type == "exception"
            assert set(json.loads(last.payload)) == {"message"}

            fake.enqueue(Scenario(exception="ContentLengthExceededException", error_frame=True))
            _, _, data = await post_chat(session, fake, chat_body(), token)
            last = decode(data)[-1]
            assert last.message_type == "error"
            assert last.headers[":error-code"] == "ContentLengthExceededException"
            assert not any(m.event_type == "contextUsageEvent" for m in decode(data))

    run(main)


def test_truncation_ends_inside_a_tool_call_without_stop_or_usage_events():
    async def main():
        async with serving() as (fake, session):
            _, _, data = await post_chat(
                session, fake, chat_body("[[fake:truncate]]"), social(fake)
            )
            evs = events(data)
            kinds = {k for k, _ in evs}
            assert "meteringEvent" not in kinds and "contextUsageEvent" not in kinds
            tool = [p for k, p in evs if k == "toolUseEvent"]
            assert evs[-1][0] == "toolUseEvent"
            assert not any(p.get("stop") for p in tool)
            partial = "".join(p.get("input", "") for p in tool)
            assert partial.startswith("{")
            with pytest.raises(json.JSONDecodeError):
                json.loads(partial)

    run(main)


def test_corrupted_crc_frame_fails_the_decoder_at_that_frame():
    async def main():
        async with serving() as (fake, session):
            fake.enqueue(Scenario(corrupt_crc_at=1))
            _, _, data = await post_chat(session, fake, chat_body(), social(fake))
            with pytest.raises(MessageChecksumMismatch) as info:
                EventStreamDecoder().feed(data)
            assert len(info.value.messages) == 1

    run(main)


def test_disconnect_after_frames_cuts_the_http_body():
    async def main():
        async with serving() as (fake, session):
            fake.enqueue(Scenario(disconnect_after=2))
            with pytest.raises(aiohttp.ClientPayloadError):
                await post_chat(session, fake, chat_body(), social(fake))
            assert fake.requests[0].outcome == "closed"

    run(main)


# --------------------------------------------------------------------------- delivery


async def read_messages(resp: aiohttp.ClientResponse, decoder: EventStreamDecoder, count: int):
    out: list[Message] = []
    while len(out) < count:
        chunk = await resp.content.readany()
        assert chunk, "stream ended early"
        out += decoder.feed(chunk)
    return out


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stalled_stream_resumes_when_released(loop):
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            fake.enqueue(Scenario(stall_after=3))
            headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            async with session.post(fake.url + CHAT, json=chat_body(), headers=headers) as resp:
                decoder = EventStreamDecoder()
                first = await read_messages(resp, decoder, 3)
                assert len(first) == 3
                await fake.wait_for_stalled(1)
                assert fake.requests[0].outcome == "stalled"
                assert fake.release() == 1
                rest = decoder.feed(await resp.read())
            assert rest[-1].event_type == "contextUsageEvent"
            assert fake.requests[0].outcome == "complete"

    run(main, loop)


def test_client_leaving_a_stalled_stream_is_seen():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            fake.enqueue(Scenario(stall_after=1))
            headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            resp = await session.post(fake.url + CHAT, json=chat_body(), headers=headers)
            await read_messages(resp, EventStreamDecoder(), 1)
            await fake.wait_for_stalled(1)
            resp.close()
            await fake.wait_for_disconnects(1)
            assert fake.stalled == 0
            assert fake.requests[0].outcome == "client_gone"

    run(main)


def test_trickled_stream_delivers_the_same_answer():
    async def main():
        async with serving() as (fake, session):
            fake.enqueue(Scenario(frame_interval_ms=2))
            _, _, data = await post_chat(session, fake, chat_body(), social(fake))
            assert "".join(texts(events(data))) == fake.settings.default_text

    run(main)


def test_random_chunking_splits_frames_and_utf8_yet_decodes():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            fake.enqueue(Scenario(chunking=True))
            headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            received = bytearray()
            decoder = EventStreamDecoder()
            messages: list[Message] = []
            async with session.post(fake.url + CHAT, json=chat_body(), headers=headers) as resp:
                async for chunk in resp.content.iter_any():
                    received += chunk
                    messages += decoder.feed(chunk)
            decoder.feed_eof()
            text = "".join(json.loads(m.payload)["content"] for m in messages[:-2])
            assert text == fake.settings.unicode_text
            cuts = fake.requests[0].cuts
            assert cuts is not None
            boundaries = frame_boundaries(bytes(received))
            assert any(c not in boundaries for c in cuts)  # a write ends mid-frame
            assert any(0x80 <= received[c] <= 0xBF for c in cuts)  # ... and mid-character

    run(main)


def frame_boundaries(data: bytes) -> set[int]:
    out, pos = {0}, 0
    while pos < len(data):
        pos += int.from_bytes(data[pos : pos + 4], "big")
        out.add(pos)
    return out


def test_paced_mode_serves_the_benchmark_answer_to_concurrent_streams():
    async def main():
        async with serving(mode="paced", tick_ms=1) as (fake, session):
            token = social(fake)
            results = await asyncio.gather(
                *(post_chat(session, fake, chat_body(), token) for _ in range(8))
            )
            for status, _, data in results:
                assert status == 200
                evs = events(data)
                assert "".join(texts(evs)) == BENCH_TEXT
                assert len(texts(evs)) == 50
                assert [k for k, _ in evs[-2:]] == ["meteringEvent", "contextUsageEvent"]

    run(main)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_fast_mode_without_validation_does_not_read_the_body(loop):
    async def main():
        async with serving(mode="fast", validate=False, require_auth=False) as (fake, session):
            status, _, data = await post_chat(session, fake, b"not json", None)
            assert status == 200
            assert "".join(texts(events(data))) == BENCH_TEXT
            directive = chat_body("[[fake:text]]")
            _, _, data = await post_chat(session, fake, directive, None)
            assert "".join(texts(events(data))) == fake.settings.default_text

    run(main, loop)


def test_per_request_paced_directive():
    async def main():
        async with serving(tick_ms=1) as (fake, session):
            _, _, data = await post_chat(session, fake, chat_body("[[fake:paced]]"), social(fake))
            assert "".join(texts(events(data))) == BENCH_TEXT

    run(main)


# --------------------------------------------------------------------------- HTTP surface


def test_aws_json_target_form_and_content_types():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            for target in (
                "AmazonCodeWhispererStreamingService.GenerateAssistantResponse",
                "AmazonQDeveloperStreamingService.SendMessage",
            ):
                headers = {"x-amz-target": target, "content-type": "application/x-amz-json-1.0"}
                status, _, data = await post_chat(
                    session, fake, chat_body(), token, path="/", headers=headers
                )
                assert status == 200 and texts(events(data))
            status, headers, _ = await post_chat(
                session, fake, chat_body(), token, headers={"content-type": "text/plain"}
            )
            assert status == 415 and headers["x-fake-rule"] == "content_type"
            assert fake.counts["generateAssistantResponse"] == 3

    run(main)


def test_validation_failure_over_http_names_the_rule():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            body = chat_body()
            body["conversationState"]["chatTriggerType"] = "AUTO"
            status, headers, data = await post_chat(session, fake, body, token)
            assert status == 400
            assert headers["x-amzn-errortype"] == "ValidationException"
            assert headers["x-fake-rule"] == "chat_trigger_type"
            assert json.loads(data) == {"message": "Improperly formed request.", "reason": None}
            assert fake.requests[0].detail

            big = chat_body("x" * 600_000)
            status, _, data = await post_chat(session, fake, big, token)
            assert status == 400
            assert json.loads(data)["reason"] == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"

            status, _, _ = await post_chat(session, fake, b"{not json", token)
            assert status == 400

            fake.settings.validate = False
            status, _, _ = await post_chat(session, fake, body, token)
            assert status == 200

    run(main)


def test_profile_arn_rules():
    async def main():
        async with serving() as (fake, session):
            builder = fake.accounts.add_idc("aorB", "cid", "secret", builder_id=True)
            status, _, data = await post_chat(
                session, fake, chat_body(profile_arn=SOCIAL_PROFILE_ARN), builder.access_token
            )
            assert status == 403
            assert (
                json.loads(data)["message"]
                == "The bearer token included in the request is invalid."
            )
            status, _, _ = await post_chat(session, fake, chat_body(), builder.access_token)
            assert status == 200

            token = social(fake)
            other = "arn:aws:codewhisperer:us-east-1:111111111111:profile/OTHER"
            status, _, _ = await post_chat(session, fake, chat_body(profile_arn=other), token)
            assert status == 403
            body = chat_body(profile_arn=SOCIAL_PROFILE_ARN)
            status, _, _ = await post_chat(session, fake, body, token)
            assert status == 200

            path = "/runtime/us-east-1/generateAssistantResponse"
            status, _, data = await post_chat(session, fake, chat_body(), token, path=path)
            assert status == 400
            assert json.loads(data)["message"] == "profileArn is required for this request."

    run(main)


def test_keep_alive_pipelining_and_chunked_request_bodies():
    async def main():
        async with serving(require_auth=False) as (fake, _):
            reader, writer = await asyncio.open_connection(fake.host, fake.port)
            body = orjson.dumps(chat_body())
            plain = (
                b"POST /generateAssistantResponse HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            chunked = (
                b"POST /generateAssistantResponse HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            )
            health = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            writer.write(plain + chunked + health)  # three requests in one write
            raw = await reader.read()  # the server closes after the third
            writer.close()
            await writer.wait_closed()
            assert raw.count(b"HTTP/1.1 200 OK\r\n") == 3
            assert raw.endswith(b'{"status":"ok"}')
            assert [r.endpoint for r in fake.requests] == [
                "generateAssistantResponse",
                "generateAssistantResponse",
                "health",
            ]
            assert fake.requests[1].json == fake.requests[0].json

    run(main)


def test_recorded_requests_keep_method_path_query_headers_and_body():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            await post_chat(
                session, fake, chat_body(), token, headers={"X-Amzn-Kiro-Agent-Mode": "vibe"}
            )
            url = fake.url + "/getUsageLimits?origin=AI_EDITOR&resourceType=AGENTIC_REQUEST"
            async with session.get(url, headers={"authorization": f"Bearer {token}"}):
                pass
            chat, usage = fake.requests
            assert (chat.method, chat.path, chat.endpoint) == (
                "POST",
                CHAT,
                "generateAssistantResponse",
            )
            assert chat.headers["x-amzn-kiro-agent-mode"] == "vibe"
            assert chat.json == chat_body()
            assert usage.query == {"origin": "AI_EDITOR", "resourceType": "AGENTIC_REQUEST"}

    run(main)


# --------------------------------------------------------------------------- auth


def test_bearer_checks():
    invalid = {"message": "The bearer token included in the request is invalid.", "reason": None}

    async def main():
        async with serving() as (fake, session):
            account = fake.accounts.add_social("aorS", access_token="aoaKnown")
            for token in (None, "aoaUnknown"):
                status, headers, data = await post_chat(session, fake, chat_body(), token)
                assert (status, json.loads(data)) == (403, invalid)
                assert headers["x-amzn-errortype"] == "AccessDeniedException"
            status, _, _ = await post_chat(session, fake, chat_body(), "aoaKnown")
            assert status == 200
            assert fake.accounts.expire_access_tokens(account) == 1
            status, _, _ = await post_chat(session, fake, chat_body(), "aoaKnown")
            assert status == 403

            fake.accounts.add_api_key("ksk_test_key")
            status, _, _ = await post_chat(session, fake, chat_body(), "ksk_test_key")
            assert status == 403  # no tokentype header
            headers = {"tokentype": "API_KEY"}
            status, _, _ = await post_chat(
                session, fake, chat_body(), "ksk_test_key", headers=headers
            )
            assert status == 200

            fake.settings.require_auth = False
            status, _, _ = await post_chat(session, fake, chat_body(), "anything")
            assert status == 200

    run(main)


async def post_json(session, url: str, body: Any) -> tuple[int, dict[str, str], Any]:
    async with session.post(url, json=body) as resp:
        return resp.status, dict(resp.headers), json.loads(await resp.read() or b"null")


def test_social_refresh_rotates_the_refresh_token():
    async def main():
        async with serving() as (fake, session):
            account = fake.accounts.add_social("aorFirst")
            old_access = account.access_token
            status, _, answer = await post_json(
                session, fake.url + "/refreshToken", {"refreshToken": "aorFirst"}
            )
            assert status == 200
            assert set(answer) == {"accessToken", "refreshToken", "profileArn", "expiresIn"}
            assert answer["expiresIn"] == 3600
            assert answer["profileArn"] == SOCIAL_PROFILE_ARN
            assert answer["refreshToken"] != "aorFirst"
            assert answer["accessToken"] != old_access and len(answer["accessToken"]) >= 100
            status, _, again = await post_json(
                session, fake.url + "/refreshToken", {"refreshToken": "aorFirst"}
            )
            assert (status, again) == (400, {"message": "Invalid refresh token provided"})
            status, _, _ = await post_chat(session, fake, chat_body(), answer["accessToken"])
            assert status == 200
            refreshed = {"refreshToken": answer["refreshToken"]}
            status, _, _ = await post_json(session, fake.url + "/refreshToken", refreshed)
            assert status == 200
            assert fake.accounts.refresh_count == 3

            fake.accounts.add_idc("aorIdc", "cid", "secret")
            status, _, body = await post_json(
                session, fake.url + "/refreshToken", {"refreshToken": "aorIdc"}
            )
            assert (status, body) == (401, {"message": "Bad credentials"})

    run(main)


def test_oidc_refresh_checks_client_region_and_token():
    async def main():
        async with serving() as (fake, session):
            fake.accounts.add_idc("aorIdc", "cid", "secret", region="eu-central-1")
            body = {
                "clientId": "cid",
                "clientSecret": "secret",
                "refreshToken": "aorIdc",
                "grantType": "refresh_token",
            }
            status, headers, err = await post_json(session, fake.url + "/token", body)
            assert status == 400  # the fake pretends to be us-east-1 by default
            assert err == {
                "error": "invalid_request",
                "error_description": "Invalid token provided",
            }
            assert headers["x-amzn-errortype"] == "InvalidRequestException"

            url = fake.url + "/oidc/eu-central-1/token"
            status, _, answer = await post_json(session, url, {**body, "clientSecret": "wrong"})
            assert (status, answer["error"]) == (401, "invalid_client")
            status, _, answer = await post_json(session, url, body)
            assert status == 200
            assert set(answer) == {"accessToken", "expiresIn", "refreshToken", "tokenType"}
            assert answer["tokenType"] == "Bearer"
            status, _, err = await post_json(session, url, body)  # the old token was rotated away
            assert status == 400
            assert err == {
                "error": "invalid_grant",
                "error_description": "Invalid refresh token provided",
            }

            fake.settings.region = "eu-central-1"
            rotated = {**body, "refreshToken": answer["refreshToken"]}
            status, _, _ = await post_json(session, fake.url + "/token", rotated)
            assert status == 200
            assert fake.accounts.oidc_refresh_count == 5

    run(main)


REFRESH_BODY = {"clientId": "cid", "clientSecret": "secret", "grantType": "refresh_token"}


@pytest.mark.parametrize(
    ("kind", "status", "social_body", "oidc_error"),
    [
        ("invalid_grant", 400, {"message": "Invalid refresh token provided"}, "invalid_grant"),
        ("bad_credentials", 401, {"message": "Bad credentials"}, "invalid_client"),
        ("throttled", 429, {"message": "Rate exceeded"}, None),
        ("server_error", 500, {"message": "Internal server error"}, "server_error"),
    ],
)
def test_scripted_refresh_failures_happen_once(kind, status, social_body, oidc_error):
    async def main():
        async with serving() as (fake, session):
            fake.accounts.add_social("aorS")
            fake.accounts.add_idc("aorI", "cid", "secret")
            fake.accounts.fail_refresh(kind, endpoint="social")
            fake.accounts.fail_refresh(kind, endpoint="oidc")
            social_url, oidc_url = fake.url + "/refreshToken", fake.url + "/token"
            got_status, _, got = await post_json(session, social_url, {"refreshToken": "aorS"})
            assert (got_status, got) == (status, social_body)
            oidc = {**REFRESH_BODY, "refreshToken": "aorI"}
            got_status, _, got = await post_json(session, oidc_url, oidc)
            assert got_status == status
            if oidc_error:
                assert got["error"] == oidc_error
            # the failure was scripted once: the same tokens still refresh
            assert (await post_json(session, social_url, {"refreshToken": "aorS"}))[0] == 200
            assert (await post_json(session, oidc_url, oidc))[0] == 200
            assert fake.accounts.refresh_count == 4

    run(main)


def test_slow_and_down_refresh_faults():
    async def main():
        async with serving() as (fake, session):
            fake.accounts.add_social("aorS")
            url = fake.url + "/refreshToken"
            fake.accounts.fail_refresh("down")
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await post_json(session, url, {"refreshToken": "aorS"})
            fake.accounts.fail_refresh("slow", delay_ms=150)
            loop = asyncio.get_running_loop()
            started = loop.time()
            status, _, _ = await post_json(session, url, {"refreshToken": "aorS"})
            assert status == 200 and loop.time() - started >= 0.14

    run(main)


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_767_000_000.0

    def __call__(self) -> float:
        return self.now


def test_builder_id_device_flow():
    async def main():
        clock = ManualClock()
        async with FakeUpstream(clock=clock) as fake, aiohttp.ClientSession() as session:
            register = {
                "clientName": "Kiro",
                "clientType": "public",
                "scopes": ["codewhisperer:completions", "codewhisperer:conversations"],
                "grantTypes": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
                "issuerUrl": "https://view.awsapps.com/start",
            }
            status, _, client = await post_json(session, fake.url + "/client/register", register)
            assert status == 200
            assert set(client) == {
                "clientId",
                "clientSecret",
                "clientIdIssuedAt",
                "clientSecretExpiresAt",
            }
            raw = base64.urlsafe_b64decode(
                client["clientId"] + "=" * (-len(client["clientId"]) % 4)
            )
            assert len(raw) == 25 and raw.endswith(b"us-east-1")
            creds = {"clientId": client["clientId"], "clientSecret": client["clientSecret"]}
            start = {**creds, "startUrl": "https://view.awsapps.com/start"}
            status, _, device = await post_json(session, fake.url + "/device_authorization", start)
            assert status == 200
            assert device["interval"] == 1 and device["expiresIn"] == 600
            assert re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", device["userCode"])
            assert device["verificationUriComplete"].endswith(device["userCode"])

            poll = {**creds, "grantType": "urn:ietf:params:oauth:grant-type:device_code"}
            poll["deviceCode"] = device["deviceCode"]
            url = fake.url + "/token"
            assert (await post_json(session, url, poll))[2]["error"] == "authorization_pending"
            assert (await post_json(session, url, poll))[2]["error"] == "slow_down"
            clock.now += 1
            fake.accounts.approve_device(device["userCode"])
            status, _, tokens = await post_json(session, url, poll)
            assert status == 200
            assert set(tokens) == {"accessToken", "expiresIn", "refreshToken", "tokenType"}
            clock.now += 1
            assert (await post_json(session, url, poll))[2]["error"] == "invalid_grant"

            account = fake.accounts.accounts[-1]
            assert account.builder_id and account.client_id == client["clientId"]
            status, _, _ = await post_chat(session, fake, chat_body(), tokens["accessToken"])
            assert status == 200
            refresh = {
                **creds,
                "grantType": "refresh_token",
                "refreshToken": tokens["refreshToken"],
            }
            assert (await post_json(session, url, refresh))[0] == 200

            _, _, second = await post_json(session, fake.url + "/device_authorization", start)
            fake.accounts.deny_device(second["userCode"])
            poll["deviceCode"] = second["deviceCode"]
            assert (await post_json(session, url, poll))[2]["error"] == "access_denied"
            _, _, third = await post_json(session, fake.url + "/device_authorization", start)
            fake.accounts.expire_device(third["userCode"])
            poll["deviceCode"] = third["deviceCode"]
            assert (await post_json(session, url, poll))[2]["error"] == "expired_token"
            assert fake.accounts.register_count == 1
            assert fake.accounts.device_authorization_count == 3

            fake.settings.device_auto_approve = True
            _, _, fourth = await post_json(session, fake.url + "/device_authorization", start)
            poll["deviceCode"] = fourth["deviceCode"]
            assert (await post_json(session, url, poll))[0] == 200

    run(main)


# --------------------------------------------------------------------------- other endpoints


async def get_json(session, url: str, token: str | None) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        return resp.status, json.loads(await resp.read())


USAGE_QUERY = "/getUsageLimits?origin=AI_EDITOR&resourceType=AGENTIC_REQUEST&isEmailRequired=true"


def test_usage_limits_shape_and_tracking():
    async def main():
        async with serving() as (fake, session):
            usage = Usage(usage_limit=50.0, track_chat=True, email="someone@example.com")
            account = fake.accounts.add_social("aorS", usage=usage)
            token = account.access_token
            status, body = await get_json(session, fake.url + USAGE_QUERY, token)
            assert status == 200
            assert body["subscriptionInfo"]["subscriptionTitle"] == "KIRO PRO+"
            assert body["userInfo"]["email"] == "someone@example.com"
            (breakdown,) = body["usageBreakdownList"]
            assert breakdown["usageLimitWithPrecision"] == 50.0
            assert breakdown["currentUsageWithPrecision"] == 0.0
            assert isinstance(body["nextDateReset"], float)
            assert body["nextDateReset"] == breakdown["nextDateReset"]

            await post_chat(session, fake, chat_body(), token)
            await post_chat(session, fake, chat_body(), token)
            _, body = await get_json(session, fake.url + USAGE_QUERY, token)
            assert body["usageBreakdownList"][0]["currentUsageWithPrecision"] == pytest.approx(
                0.0246
            )

            status, body = await get_json(session, fake.url + USAGE_QUERY, "aoaUnknown")
            assert status == 403
            account.suspended = True
            status, body = await get_json(session, fake.url + USAGE_QUERY, token)
            assert (status, body["reason"]) == (403, "TEMPORARILY_SUSPENDED")

    run(main)


def test_exhausted_quota_answers_402_when_enforced():
    async def main():
        async with serving() as (fake, session):
            usage = Usage(usage_limit=0.02, track_chat=True, enforce_limit=True)
            token = fake.accounts.add_social("aorS", usage=usage).access_token
            statuses = [(await post_chat(session, fake, chat_body(), token))[0] for _ in range(3)]
            assert statuses == [200, 200, 402]

    run(main)


def test_list_available_models():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            status, body = await get_json(
                session, fake.url + "/ListAvailableModels?origin=AI_EDITOR", token
            )
            assert status == 200
            ids = {m["modelId"] for m in body["models"]}
            assert {"auto", "claude-sonnet-4.5", "claude-opus-4.6", "qwen3-coder-next"} <= ids
            assert body["defaultModel"] == {"modelId": "auto"} and body["nextToken"] is None
            sonnet = next(m for m in body["models"] if m["modelId"] == "claude-sonnet-4.5")
            assert sonnet["tokenLimits"] == {"maxInputTokens": 200_000, "maxOutputTokens": 64_000}
            assert sonnet["rateMultiplier"] == 1.3
            url = fake.url + "/ListAvailableModels?origin=AI_EDITOR&maxResults=5"
            _, page = await get_json(session, url, token)
            assert len(page["models"]) == 5 and page["nextToken"] == "5"
            _, rest = await get_json(session, url + "&nextToken=5", token)
            assert rest["models"][0]["modelId"] not in {m["modelId"] for m in page["models"]}

    run(main)


MCP_CALL = {
    "id": "web_search_tooluse_abc_1767000000000_abcdefgh",
    "jsonrpc": "2.0",
    "method": "tools/call",
    "params": {"name": "web_search", "arguments": {"query": "rust latest version"}},
}


async def post_mcp(session, fake, body, token) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}"}
    async with session.post(fake.url + "/mcp", json=body, headers=headers) as resp:
        return resp.status, json.loads(await resp.read())


def test_mcp_web_search():
    async def main():
        async with serving() as (fake, session):
            token = social(fake)
            status, body = await post_mcp(session, fake, MCP_CALL, token)
            assert status == 200
            assert body["id"] == MCP_CALL["id"] and body["error"] is None
            assert body["result"]["isError"] is False
            (content,) = body["result"]["content"]
            assert content["type"] == "text"
            found = json.loads(content["text"])
            assert found["query"] == "rust latest version" and found["error"] is None
            assert found["totalResults"] == len(found["results"]) == 3
            first = found["results"][0]
            assert set(first) == {
                "title", "url", "snippet", "publishedDate", "id", "domain",
                "maxVerbatimWordLimit", "publicDomain",
            }  # fmt: skip
            assert first["publishedDate"] == 1_735_689_600_000
            assert (await post_mcp(session, fake, MCP_CALL, token))[1] == body  # deterministic

            wrong = {**MCP_CALL, "method": "tools/list"}
            _, body = await post_mcp(session, fake, wrong, token)
            assert body["error"]["code"] == -32601
            fake.enqueue_mcp(McpError(-32000, "search backend down"))
            _, body = await post_mcp(session, fake, MCP_CALL, token)
            assert body["error"] == {"code": -32000, "message": "search backend down"}
            fake.enqueue_mcp(Scenario(error="rate_limited"))
            status, _ = await post_mcp(session, fake, MCP_CALL, token)
            assert status == 429
            status, _ = await post_mcp(session, fake, MCP_CALL, "aoaUnknown")
            assert status == 403

    run(main)


def test_profiles_for_enterprise_accounts_only():
    async def main():
        async with serving() as (fake, session):
            arn = "arn:aws:codewhisperer:eu-central-1:123456789012:profile/ABCDEFGHIJKL"
            idc = fake.accounts.add_idc("aorE", "cid", "secret", profile_arn=arn)
            headers = {
                "authorization": f"Bearer {idc.access_token}",
                "x-amz-target": "AmazonCodeWhispererService.ListAvailableProfiles",
                "content-type": "application/x-amz-json-1.0",
            }
            async with session.post(fake.url + "/", json={"maxResults": 10}, headers=headers) as r:
                body = json.loads(await r.read())
            assert body["profiles"] == [{"arn": arn, "profileName": "KiroProfile-eu-central-1"}]
            headers["authorization"] = f"Bearer {social(fake)}"
            async with session.post(
                fake.url + "/ListAvailableProfiles", json={}, headers=headers
            ) as r:
                assert json.loads(await r.read())["profiles"] == []

    run(main)


def test_unknown_paths_and_health():
    async def main():
        async with serving() as (fake, session):
            async with session.get(fake.url + "/health") as resp:
                assert (resp.status, await resp.json()) == (200, {"status": "ok"})
            async with session.get(fake.url + "/nope") as resp:
                assert resp.status == 404
            async with session.get(fake.url + CHAT) as resp:
                assert resp.status == 405

    run(main)


# --------------------------------------------------------------------------- CLI


def test_cli_prints_its_url_and_serves_until_terminated():
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiro_fast.testing", "--port", "0", "--mode", "fast"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", url)
        assert match
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b'{"status":"ok"}')
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
