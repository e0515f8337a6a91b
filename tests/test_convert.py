"""Anthropic request -> Kiro body (kiro-api.md §4.7, §5; claude-code-traffic.md).

Expected bodies are written by hand from the spec's worked examples and rules; random
ids (agentContinuationId, conversationId) are checked for shape and then removed.
"""

from __future__ import annotations

import copy
import hashlib
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiro_fast import normalize as nz
from kiro_fast.convert import (
    ConvertedRequest,
    ConvertOptions,
    anthropic_to_kiro,
    count_tokens,
    is_web_search_request,
)
from kiro_fast.errors import ConfigError, ContextTooLong, InvalidRequest
from kiro_fast.testing.validation import ValidationSettings, validate_request

DATA = Path(__file__).parent / "data" / "requests"
OPTIONS = ConvertOptions()
#: a 1x1 PNG
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
SESSION = "6f1c2d3e-4b5a-4978-8e9f-0a1b2c3d4e5f"
#: the fixture's MCP tool whose name is over the 63-character limit
ATLASSIAN_TOOL = "mcp__claude_ai_Atlassian_Rovo__getConfluencePageDescendantsWithContentAndMetadata"

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
WEATHER_SPEC = {
    "toolSpecification": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "inputSchema": {
            "json": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": True,
            }
        },
    }
}


def convert(
    request: dict[str, Any], options: ConvertOptions = OPTIONS, **kw: Any
) -> ConvertedRequest:
    return anthropic_to_kiro(request, options, **kw)


def req(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": messages, **extra}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(use_id: str = "tu1", name: str = "get_weather") -> dict[str, Any]:
    return {"type": "tool_use", "id": use_id, "name": name, "input": {"city": "Paris"}}


def tool_result(use_id: str = "tu1", content: Any = "18C", **kw: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": use_id, "content": content, **kw}


def image(media_type: str = "image/png", data: str = PNG) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def state(converted: ConvertedRequest) -> dict[str, Any]:
    return converted.body["conversationState"]  # type: ignore[no-any-return]


def current(converted: ConvertedRequest) -> dict[str, Any]:
    return state(converted)["currentMessage"]["userInputMessage"]  # type: ignore[no-any-return]


def history(converted: ConvertedRequest) -> list[dict[str, Any]]:
    return state(converted).get("history", [])  # type: ignore[no-any-return]


def without_ids(converted: ConvertedRequest) -> dict[str, Any]:
    body = copy.deepcopy(converted.body)
    conv = body["conversationState"]
    assert UUID_RE.fullmatch(conv.pop("agentContinuationId"))
    assert conv.pop("conversationId") == converted.conversation_id
    return body


def umsg(content: str, model: str = "claude-sonnet-4.5", **extra: Any) -> dict[str, Any]:
    return {
        "userInputMessage": {"content": content, "modelId": model, "origin": "AI_EDITOR", **extra}
    }


def amsg(content: str, **extra: Any) -> dict[str, Any]:
    return {"assistantResponseMessage": {"content": content, **extra}}


# --------------------------------------------------------------------------- §4.7 worked examples


def test_worked_example_plain_text() -> None:
    converted = convert(
        {
            "model": "claude-sonnet-4-5-20250929",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hello"}],
        }
    )
    assert without_ids(converted) == {
        "conversationState": {
            "agentTaskType": "vibe",
            "chatTriggerType": "MANUAL",
            "currentMessage": {
                "userInputMessage": {
                    "userInputMessageContext": {},
                    "content": "Hello",
                    "modelId": "claude-sonnet-4.5",
                    "origin": "AI_EDITOR",
                }
            },
        }
    }
    assert UUID_RE.fullmatch(converted.conversation_id)
    assert (converted.client_model, converted.kiro_model) == (
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4.5",
    )
    assert (converted.context_window, converted.thinking, converted.fixes) == (200_000, False, [])
    assert converted.body_json == orjson.dumps(converted.body)


def test_worked_example_multi_turn_with_system_prompt() -> None:
    converted = convert(
        {
            "model": "claude-opus-4-6",
            "max_tokens": 2048,
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"},
            ],
        }
    )
    model = "claude-opus-4.6"
    assert without_ids(converted) == {
        "conversationState": {
            "agentTaskType": "vibe",
            "chatTriggerType": "MANUAL",
            "currentMessage": {
                "userInputMessage": {
                    "userInputMessageContext": {},
                    "content": "And 3+3?",
                    "modelId": model,
                    "origin": "AI_EDITOR",
                }
            },
            "history": [
                umsg("You are terse.", model),
                amsg("I will follow these instructions."),
                umsg("What is 2+2?", model),
                amsg("4"),
            ],
        }
    }
    assert converted.context_window == 1_000_000


def test_worked_example_tool_use_round_trip() -> None:
    first = convert(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "stream": True,
            "tools": [WEATHER_TOOL],
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
        }
    )
    assert current(first) == {
        "userInputMessageContext": {"tools": [WEATHER_SPEC]},
        "content": "Weather in Paris?",
        "modelId": "claude-sonnet-4.5",
        "origin": "AI_EDITOR",
    }
    second = convert(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "stream": True,
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "I'll check."},
                        {
                            "type": "tool_use",
                            "id": "tooluse_abc",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "tooluse_abc",
                            "content": "18°C, sunny",
                        }
                    ],
                },
            ],
        }
    )
    assert current(second) == {
        "userInputMessageContext": {
            "toolResults": [
                {
                    "toolUseId": "tooluse_abc",
                    "content": [{"text": "18°C, sunny"}],
                    "status": "success",
                }
            ],
            "tools": [WEATHER_SPEC],
        },
        "content": "",
        "modelId": "claude-sonnet-4.5",
        "origin": "AI_EDITOR",
    }
    assert history(second) == [
        umsg("Weather in Paris?"),
        amsg(
            "I'll check.",
            toolUses=[
                {"toolUseId": "tooluse_abc", "name": "get_weather", "input": {"city": "Paris"}}
            ],
        ),
    ]
    assert second.fixes == []


def test_worked_example_image() -> None:
    converted = convert(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 512,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        image("image/png", PNG),
                        {"type": "text", "text": "What is in this image?"},
                    ],
                }
            ],
        }
    )
    assert current(converted) == {
        "userInputMessageContext": {},
        "content": "What is in this image?",
        "modelId": "claude-haiku-4.5",
        "images": [{"format": "png", "source": {"bytes": PNG}}],
        "origin": "AI_EDITOR",
    }


def test_worked_example_thinking_request() -> None:
    converted = convert(
        req(
            [user("Hi")],
            system="You are terse.",
            thinking={"type": "enabled", "budget_tokens": 10000},
        )
    )
    assert history(converted)[:2] == [
        umsg(
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>10000</max_thinking_length>"
            "\nYou are terse."
        ),
        amsg("I will follow these instructions."),
    ]
    assert converted.thinking is True


def test_thinking_without_system_gets_its_own_pair() -> None:
    converted = convert(req([user("Hi")], thinking={"type": "enabled", "budget_tokens": 10000}))
    assert history(converted) == [
        umsg(
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>10000</max_thinking_length>"
        ),
        amsg("I will follow these instructions."),
    ]


# --------------------------------------------------------------------------- thinking modes


def system_text(converted: ConvertedRequest) -> str:
    return history(converted)[0]["userInputMessage"]["content"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("extra", "tags"),
    [
        (
            {"thinking": {"type": "adaptive"}},
            "<thinking_mode>adaptive</thinking_mode><thinking_effort>high</thinking_effort>",
        ),
        (
            {"thinking": {"type": "adaptive"}, "output_config": {"effort": "medium"}},
            "<thinking_mode>adaptive</thinking_mode><thinking_effort>medium</thinking_effort>",
        ),
        (
            {"thinking": {"type": "enabled"}, "output_config": {"effort": "low"}},
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>4000</max_thinking_length>",
        ),
        (
            {"thinking": {"type": "enabled"}, "output_config": {"effort": "max"}},
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>24576</max_thinking_length>",
        ),
        (
            {"thinking": {"type": "enabled"}},
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>20000</max_thinking_length>",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 31999}},
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>24576</max_thinking_length>",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 100}},
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>1024</max_thinking_length>",
        ),
    ],
)
def test_thinking_tags(extra: dict[str, Any], tags: str) -> None:
    converted = convert(req([user("Hi")], system="Be brief.", **extra))
    assert system_text(converted) == f"{tags}\nBe brief."
    assert converted.thinking is True


def test_disabled_thinking_adds_no_tags() -> None:
    converted = convert(req([user("Hi")], system="Be brief.", thinking={"type": "disabled"}))
    assert system_text(converted) == "Be brief."
    assert converted.thinking is False


@pytest.mark.parametrize(
    ("model", "thinking", "tags"),
    [
        (
            "claude-opus-4-6-thinking",
            None,
            "<thinking_mode>adaptive</thinking_mode><thinking_effort>high</thinking_effort>",
        ),
        (
            "claude-sonnet-4-5-20250929-thinking",
            None,
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>20000</max_thinking_length>",
        ),
        (
            "claude-sonnet-4-5-thinking",
            {"type": "disabled"},
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>20000</max_thinking_length>",
        ),
        (
            "claude-sonnet-4-5-thinking",
            {"type": "enabled", "budget_tokens": 5000},
            "<thinking_mode>enabled</thinking_mode><max_thinking_length>5000</max_thinking_length>",
        ),
    ],
)
def test_thinking_suffix_forces_thinking(model: str, thinking: Any, tags: str) -> None:
    request = req([user("Hi")], system="S")
    request["model"] = model
    if thinking is not None:
        request["thinking"] = thinking
    converted = convert(request)
    assert system_text(converted) == f"{tags}\nS"
    assert converted.thinking is True


def test_tags_already_in_the_system_prompt_are_not_repeated() -> None:
    system = "<thinking_mode>enabled</thinking_mode> you may think"
    converted = convert(req([user("Hi")], system=system, thinking={"type": "adaptive"}))
    assert system_text(converted) == system
    assert converted.thinking is True


# --------------------------------------------------------------------------- content mapping


def test_billing_header_block_is_dropped_and_system_blocks_joined() -> None:
    system = [
        {
            "type": "text",
            "text": "x-anthropic-billing-header: cc_version=2.1.197.a1b; cc_entrypoint=cli;",
        },
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Main prompt.", "cache_control": {"type": "ephemeral"}},
    ]
    converted = convert(req([user("Hi")], system=system))
    assert system_text(converted) == "You are Claude Code.\nMain prompt."
    assert converted.fixes == [nz.DROPPED_BILLING_HEADER]


def test_billing_header_line_in_a_string_system_is_dropped() -> None:
    converted = convert(req([user("Hi")], system="x-anthropic-billing-header: cc=1;\nReal prompt"))
    assert system_text(converted) == "Real prompt"


@pytest.mark.parametrize(
    ("messages", "expected_history", "expected_current"),
    [
        # Claude Code: user then a trailing system message -> appended to the user turn
        ([user("prompt"), {"role": "system", "content": "sys"}], [], "prompt\nsys"),
        # before a user turn -> prepended to it
        ([{"role": "system", "content": [text("sys")]}, user("prompt")], [], "sys\nprompt"),
        # after an assistant, then a user -> joins the next user turn
        (
            [user("q"), assistant("a"), {"role": "system", "content": "sys"}, user("q2")],
            [umsg("q"), amsg("a")],
            "sys\nq2",
        ),
        # after an assistant at the end -> its own (current) user turn
        (
            [user("q"), assistant("a"), {"role": "system", "content": "sys"}],
            [umsg("q"), amsg("a")],
            "sys",
        ),
    ],
)
def test_system_role_messages_are_folded_into_user_turns(
    messages: list[Any], expected_history: list[Any], expected_current: str
) -> None:
    converted = convert(req(messages))
    assert history(converted) == expected_history
    assert current(converted)["content"] == expected_current
    assert nz.FOLDED_SYSTEM_MESSAGE in converted.fixes


def test_unknown_roles_become_user() -> None:
    converted = convert(
        req([{"role": "developer", "content": "be nice"}, assistant("ok"), user("hi")])
    )
    assert history(converted) == [umsg("be nice"), amsg("ok")]
    assert converted.fixes == [nz.MAPPED_ROLE_TO_USER]


def test_echoed_thinking_is_folded_into_assistant_text() -> None:
    converted = convert(
        req(
            [
                user("q"),
                assistant(
                    [
                        {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
                        {"type": "redacted_thinking", "data": "opaque"},
                        text("Answer."),
                    ]
                ),
                user("more"),
            ]
        )
    )
    assert history(converted)[1] == amsg("<thinking>Let me think.</thinking>\n\nAnswer.")
    assert converted.fixes == [nz.FOLDED_THINKING_BLOCK, nz.IGNORED_REDACTED_THINKING]


def test_ignored_blocks_leave_the_rest() -> None:
    converted = convert(
        req(
            [
                user(
                    [
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "JVBERi0=",
                            },
                        },
                        text("Summarise"),
                        {"type": "hologram", "payload": 1},
                        tool_use("x1"),
                    ]
                ),
                assistant(
                    [
                        {
                            "type": "server_tool_use",
                            "id": "srvtoolu_1",
                            "name": "web_search",
                            "input": {},
                        },
                        {
                            "type": "web_search_tool_result",
                            "tool_use_id": "srvtoolu_1",
                            "content": [],
                        },
                        text("Found it."),
                        image(),
                    ]
                ),
                user("thanks"),
            ]
        )
    )
    assert history(converted) == [umsg("Summarise"), amsg("Found it.")]
    assert converted.fixes == [
        nz.IGNORED_DOCUMENT,
        nz.IGNORED_UNKNOWN_BLOCK,
        nz.IGNORED_MISPLACED_BLOCK,
        nz.IGNORED_SERVER_TOOL_BLOCK,
    ]


def test_tool_result_blocks_are_flattened_and_images_lifted() -> None:
    converted = convert(
        req(
            [
                user("look"),
                assistant([tool_use("tu1", "screenshot")]),
                user(
                    [
                        tool_result(
                            "tu1",
                            [text("line 1"), image("image/jpeg"), text("line 2")],
                            is_error=True,
                        )
                    ]
                ),
            ],
            tools=[
                {
                    "name": "screenshot",
                    "description": "Take one",
                    "input_schema": {"type": "object"},
                }
            ],
        )
    )
    message = current(converted)
    assert message["userInputMessageContext"]["toolResults"] == [
        {"toolUseId": "tu1", "content": [{"text": "line 1\nline 2"}], "status": "error"}
    ]
    assert message["images"] == [{"format": "jpeg", "source": {"bytes": PNG}}]
    assert history(converted)[1] == amsg(
        " ", toolUses=[{"toolUseId": "tu1", "name": "screenshot", "input": {"city": "Paris"}}]
    )
    assert converted.fixes == [nz.LIFTED_TOOL_RESULT_IMAGE, nz.FILLED_EMPTY_ASSISTANT]


def test_tool_result_with_object_content_becomes_json_text() -> None:
    converted = convert(
        req(
            [user("q"), assistant([tool_use()]), user([tool_result(content={"temp": 18})])],
            tools=[WEATHER_TOOL],
        )
    )
    results = current(converted)["userInputMessageContext"]["toolResults"]
    assert results[0]["content"] == [{"text": '{"temp":18}'}]


def test_user_text_is_kept_next_to_tool_results_and_model_id_is_on_every_user_message() -> None:
    converted = convert(
        req(
            [user("q"), assistant([tool_use()]), user([tool_result(), text("and also this")])],
            tools=[WEATHER_TOOL],
            system="S",
        )
    )
    assert current(converted)["content"] == "and also this"
    users = [
        entry["userInputMessage"] for entry in history(converted) if "userInputMessage" in entry
    ]
    assert [m["modelId"] for m in users] == ["claude-sonnet-4.5", "claude-sonnet-4.5"]
    assert all(m["origin"] == "AI_EDITOR" for m in users)
    assert "tools" not in str(history(converted))


def test_web_search_server_tool_is_not_forwarded() -> None:
    web = {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}
    converted = convert(req([user("q")], tools=[WEATHER_TOOL, web]))
    assert current(converted)["userInputMessageContext"]["tools"] == [WEATHER_SPEC]
    assert converted.fixes == [nz.DROPPED_WEB_SEARCH_TOOL]


def test_is_web_search_request() -> None:
    web = {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}
    assert is_web_search_request(req([user("Perform a web search for the query: x")], tools=[web]))
    assert not is_web_search_request(req([user("q")], tools=[web, WEATHER_TOOL]))
    assert not is_web_search_request(
        req([user("q")], tools=[{"name": "web_search", "input_schema": {}}])
    )
    assert not is_web_search_request(req([user("q")]))
    assert not is_web_search_request({"tools": "web_search"})
    assert not is_web_search_request(["not", "a", "request"])


def test_write_and_edit_tools_get_chunking_guidance_unless_disabled() -> None:
    write = {"name": "Write", "description": "Writes a file.", "input_schema": {"type": "object"}}
    converted = convert(req([user("q")], tools=[write]))
    description = current(converted)["userInputMessageContext"]["tools"][0]["toolSpecification"][
        "description"
    ]
    assert description == (
        "Writes a file.\n\nKeep each call small: write at most about 50 lines. For a longer "
        "file, write the first part with this tool, then add the rest with Edit calls."
    )
    plain = convert(req([user("q")], tools=[write]), ConvertOptions(write_guidance=False))
    assert current(plain)["userInputMessageContext"]["tools"][0]["toolSpecification"][
        "description"
    ] == ("Writes a file.")


def test_long_description_lands_in_the_system_turn_after_the_system_text() -> None:
    bash = {"name": "Bash", "description": "x" * 10_001, "input_schema": {"type": "object"}}
    converted = convert(req([user("q")], system="S", tools=[bash], thinking={"type": "adaptive"}))
    assert system_text(converted) == (
        "<thinking_mode>adaptive</thinking_mode><thinking_effort>high</thinking_effort>\nS"
        "\n\n# Tool documentation\n\n## Tool: Bash\n\n" + "x" * 10_001
    )


def test_structured_output_appends_an_instruction_to_the_current_message() -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    converted = convert(
        req(
            [user("Name this session")],
            output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}},
        )
    )
    assert current(converted)["content"] == (
        "Name this session\n\nAnswer with a single JSON value that conforms to the JSON Schema "
        "below. Output only the JSON, with no code fences and no other text.\nJSON Schema: "
        '{"type":"object","properties":{"title":{"type":"string"}},"required":["title"]}'
    )
    off = convert(
        req([user("q")], output_config={"format": {"type": "json_schema", "schema": schema}}),
        ConvertOptions(structured_output_instruction=False),
    )
    assert current(off)["content"] == "q"


def test_sampling_and_cache_fields_are_ignored() -> None:
    converted = convert(
        req(
            [user([{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}])],
            temperature=0.2,
            top_p=0.9,
            top_k=5,
            stop_sequences=["X"],
            tool_choice={"type": "any"},
            context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        )
    )
    assert current(converted)["content"] == "Hi"
    assert "temperature" not in converted.body_json.decode()
    assert state(converted)["chatTriggerType"] == "MANUAL"


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "user_id",
    [
        orjson.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": SESSION}).decode(),
        f"user_{'a' * 64}_account__session_{SESSION}",
    ],
)
def test_conversation_id_comes_from_the_claude_code_session(user_id: str) -> None:
    converted = convert(req([user("q")], metadata={"user_id": user_id}))
    assert converted.conversation_id == SESSION
    assert state(converted)["conversationId"] == SESSION


def test_session_header_wins_and_bad_ids_fall_back_to_a_random_uuid() -> None:
    other = str(uuid.uuid4())
    assert convert(req([user("q")]), session_id=other).conversation_id == other
    bad = req([user("q")], metadata={"user_id": '{"session_id": "not-a-uuid"}'})
    first, second = convert(bad), convert(bad, session_id="nope")
    assert UUID_RE.fullmatch(first.conversation_id)
    assert first.conversation_id != second.conversation_id
    assert state(first)["agentContinuationId"] != state(second)["agentContinuationId"]


# --------------------------------------------------------------------------- tokens


def test_input_tokens_estimate_what_goes_upstream_with_the_hidden_prompt() -> None:
    request = req([user(" ".join(["alpha"] * 100))], system=" ".join(["beta"] * 100))
    # upstream texts: the system text, "I will follow these instructions.", the user text
    # = 205 word runs x 1.04 + 1 punctuation run x 1.03 = 214.23 -> 214 tokens;
    # 3 messages (system pair + current) x 3 framing = 9; hidden prompt 4,134
    assert convert(request).input_tokens == 214 + 9 + 4_134
    assert count_tokens(request, OPTIONS) == 214 + 9 + 4_134
    assert count_tokens(request, ConvertOptions(hidden_prompt_tokens=0)) == 223
    # count_tokens bodies carry no max_tokens and may carry any model string (or none):
    # "hello world" -> 2.08 -> 2 tokens, one message -> 3
    for body in (
        {"model": "whatever", "messages": [user("hello world")]},
        {"messages": [user("hello world")]},
    ):
        assert count_tokens(body, ConvertOptions(hidden_prompt_tokens=0)) == 5


def test_input_tokens_count_tools_images_and_tool_traffic() -> None:
    request = req(
        [
            user("Weather?"),
            assistant([tool_use()]),
            user([tool_result(content="sunny"), image(), text("thanks")]),
        ],
        tools=[WEATHER_TOOL],
    )
    converted = convert(request, ConvertOptions(hidden_prompt_tokens=0, write_guidance=False))
    no_image = convert(
        req(
            [user("Weather?"), assistant([tool_use()]), user([tool_result(content="sunny")])],
            tools=[WEATHER_TOOL],
        ),
        ConvertOptions(hidden_prompt_tokens=0, write_guidance=False),
    )
    # the image is 1,600 tokens; "thanks" one word run (1.04, rounded with the rest)
    assert converted.input_tokens - no_image.input_tokens in (1_601, 1_602)


def test_count_tokens_rejects_bad_input_and_does_not_count_rule_hits() -> None:
    with pytest.raises(InvalidRequest, match="messages"):
        count_tokens({"model": "x"}, OPTIONS)
    before = nz.RULE_HITS[nz.MAPPED_ROLE_TO_USER]
    count_tokens({"messages": [{"role": "developer", "content": "x"}]}, OPTIONS)
    assert nz.RULE_HITS[nz.MAPPED_ROLE_TO_USER] == before


def test_model_overrides_are_matched_ignoring_case() -> None:
    options = ConvertOptions(model_overrides={"Claude-Opus-4-8": "claude-opus-4.6"})
    converted = convert({**req([user("q")]), "model": "claude-opus-4-8"}, options)
    assert (converted.kiro_model, current(converted)["modelId"]) == ("claude-opus-4.6",) * 2


def test_options_validate_the_tool_name_limit() -> None:
    with pytest.raises(ConfigError, match="max_tool_name_length"):
        ConvertOptions(max_tool_name_length=10)
    # the pointer left for a moved description ("Full documentation: see the section
    # '## Tool: <63 characters>' in the system prompt.") is 132 characters: a smaller cap
    # could never be met
    with pytest.raises(ConfigError, match="max_tool_description_chars must be at least 132"):
        ConvertOptions(max_tool_description_chars=131)
    assert ConvertOptions(max_tool_description_chars=132).limits.max_tool_description_chars
    assert ConvertOptions(max_body_bytes=123).limits.max_body_bytes == 123


# --------------------------------------------------------------------------- every reason code


LONG_NAME = "mcp__claude_ai_Atlassian_Rovo__getConfluencePageDescendantsWithContent"


def with_tool(tool: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return req([user("q")], tools=[tool], **extra)


def schema_tool(schema: Any) -> dict[str, Any]:
    return {"name": "t", "description": "d", "input_schema": schema}


#: code -> (request, options); converting fires the code (or raises, for REJECTED_*)
CODE_CASES: dict[str, tuple[dict[str, Any], ConvertOptions]] = {
    nz.DROPPED_TRAILING_PREFILL: (req([user("q"), assistant("prefill")]), OPTIONS),
    nz.MERGED_CONSECUTIVE_USER: (req([user("a"), user("b"), assistant("x"), user("c")]), OPTIONS),
    nz.MERGED_CONSECUTIVE_ASSISTANT: (
        req([user("a"), assistant("x"), assistant("y"), user("c")]),
        OPTIONS,
    ),
    nz.INSERTED_LEADING_USER: (req([assistant("hello"), user("c")]), OPTIONS),
    nz.INSERTED_SYNTHETIC_ASSISTANT: (req([user("a"), user("b")]), OPTIONS),
    nz.FILLED_EMPTY_ASSISTANT: (
        req([user("a"), assistant([tool_use()]), user([tool_result()])], tools=[WEATHER_TOOL]),
        OPTIONS,
    ),
    nz.FILLED_EMPTY_CURRENT_MESSAGE: (req([user("")]), OPTIONS),
    nz.REMOVED_ORPHAN_TOOL_USE: (
        req(
            [user("a"), assistant([text("x"), tool_use()]), user("no result")], tools=[WEATHER_TOOL]
        ),
        OPTIONS,
    ),
    nz.REMOVED_DUPLICATE_TOOL_USE: (
        req(
            [
                user("a"),
                assistant([tool_use()]),
                user([tool_result()]),
                assistant([tool_use()]),
                user("x"),
            ],
            tools=[WEATHER_TOOL],
        ),
        OPTIONS,
    ),
    nz.ORPHAN_TOOL_RESULT_TO_TEXT: (req([user([tool_result("ghost")])]), OPTIONS),
    nz.REMOVED_DUPLICATE_TOOL_RESULT: (
        req(
            [user("a"), assistant([tool_use()]), user([tool_result(), tool_result()])],
            tools=[WEATHER_TOOL],
        ),
        OPTIONS,
    ),
    nz.FILLED_EMPTY_TOOL_RESULT: (
        req(
            [user("a"), assistant([tool_use()]), user([tool_result(content="")])],
            tools=[WEATHER_TOOL],
        ),
        OPTIONS,
    ),
    nz.TRUNCATED_TOOL_RESULT: (
        req(
            [user("a"), assistant([tool_use()]), user([tool_result(content="x" * 50)])],
            tools=[WEATHER_TOOL],
        ),
        ConvertOptions(max_tool_result_chars=10),
    ),
    nz.DROPPED_URL_IMAGE: (
        req(
            [
                user(
                    [
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                        text("q"),
                    ]
                )
            ]
        ),
        OPTIONS,
    ),
    nz.DROPPED_EMPTY_IMAGE: (req([user([image(data=""), text("q")])]), OPTIONS),
    nz.DROPPED_UNSUPPORTED_IMAGE_FORMAT: (req([user([image("image/bmp"), text("q")])]), OPTIONS),
    nz.DROPPED_OVERSIZED_IMAGE: (
        req([user([image(), text("q")])]),
        ConvertOptions(max_image_bytes=10),
    ),
    nz.DROPPED_EXCESS_IMAGES: (req([user([image() for _ in range(11)] + [text("q")])]), OPTIONS),
    nz.REMOVED_DUPLICATE_TOOL: (req([user("q")], tools=[WEATHER_TOOL, WEATHER_TOOL]), OPTIONS),
    nz.ADDED_PLACEHOLDER_TOOL: (
        req([user("a"), assistant([tool_use()]), user([tool_result()])]),
        OPTIONS,
    ),
    nz.SHORTENED_TOOL_NAME: (with_tool({**WEATHER_TOOL, "name": LONG_NAME}), OPTIONS),
    nz.SANITIZED_TOOL_NAME: (with_tool({**WEATHER_TOOL, "name": "my.tool"}), OPTIONS),
    nz.FILLED_EMPTY_TOOL_DESCRIPTION: (
        with_tool({"name": "t", "input_schema": {"type": "object"}}),
        OPTIONS,
    ),
    nz.MOVED_LONG_TOOL_DESCRIPTION: (
        with_tool({**WEATHER_TOOL, "description": "d" * 10_001}),
        OPTIONS,
    ),
    nz.FIXED_SCHEMA_NOT_OBJECT: (with_tool({"name": "t", "description": "d"}), OPTIONS),
    nz.FIXED_SCHEMA_ROOT_TYPE: (with_tool(schema_tool({"properties": {}})), OPTIONS),
    nz.FIXED_SCHEMA_REQUIRED: (
        with_tool(schema_tool({"type": "object", "required": None})),
        OPTIONS,
    ),
    nz.FIXED_SCHEMA_PROPERTIES: (
        with_tool(schema_tool({"type": "object", "properties": None})),
        OPTIONS,
    ),
    nz.FIXED_SCHEMA_TYPE: (
        with_tool(
            schema_tool({"type": "object", "properties": {"a": {"type": ["string", "null"]}}})
        ),
        OPTIONS,
    ),
    nz.STRIPPED_SCHEMA_KEYWORDS: (
        with_tool(
            schema_tool(
                {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}
            )
        ),
        ConvertOptions(strip_schema_keywords=True),
    ),
    nz.REJECTED_OVERSIZED_MESSAGE: (
        req([user("x" * 100)]),
        ConvertOptions(max_user_content_chars=50),
    ),
    nz.REJECTED_OVERSIZED_BODY: (req([user("x" * 2000)]), ConvertOptions(max_body_bytes=1000)),
    nz.DROPPED_BILLING_HEADER: (
        req([user("q")], system="x-anthropic-billing-header: a=b;"),
        OPTIONS,
    ),
    nz.FOLDED_SYSTEM_MESSAGE: (req([user("q"), {"role": "system", "content": "s"}]), OPTIONS),
    nz.MAPPED_ROLE_TO_USER: (req([{"role": "developer", "content": "q"}]), OPTIONS),
    nz.FOLDED_THINKING_BLOCK: (
        req(
            [
                user("q"),
                assistant([{"type": "thinking", "thinking": "t", "signature": "s"}, text("a")]),
                user("q"),
            ]
        ),
        OPTIONS,
    ),
    nz.IGNORED_REDACTED_THINKING: (
        req(
            [
                user("q"),
                assistant([{"type": "redacted_thinking", "data": "x"}, text("a")]),
                user("q"),
            ]
        ),
        OPTIONS,
    ),
    nz.IGNORED_DOCUMENT: (req([user([{"type": "document", "source": {}}, text("q")])]), OPTIONS),
    nz.IGNORED_SERVER_TOOL_BLOCK: (
        req(
            [
                user("q"),
                assistant(
                    [{"type": "server_tool_use", "id": "s", "name": "web_search"}, text("a")]
                ),
                user("q"),
            ]
        ),
        OPTIONS,
    ),
    nz.IGNORED_MISPLACED_BLOCK: (req([user([tool_use(), text("q")])]), OPTIONS),
    nz.IGNORED_UNKNOWN_BLOCK: (req([user([{"type": "hologram"}, text("q")])]), OPTIONS),
    nz.LIFTED_TOOL_RESULT_IMAGE: (
        req(
            [user("a"), assistant([tool_use()]), user([tool_result(content=[image()])])],
            tools=[WEATHER_TOOL],
        ),
        OPTIONS,
    ),
    nz.DROPPED_WEB_SEARCH_TOOL: (
        with_tool({"type": "web_search_20250305", "name": "web_search"}),
        OPTIONS,
    ),
    nz.DROPPED_UNSUPPORTED_TOOL: (with_tool({"type": "bash_20250124", "name": "bash"}), OPTIONS),
    nz.CLAMPED_THINKING_BUDGET: (
        req([user("q")], thinking={"type": "enabled", "budget_tokens": 31999}),
        OPTIONS,
    ),
    nz.DEFAULTED_UNKNOWN_EFFORT: (
        req([user("q")], thinking={"type": "adaptive"}, output_config={"effort": "extreme"}),
        OPTIONS,
    ),
    nz.IGNORED_UNKNOWN_THINKING_TYPE: (req([user("q")], thinking={"type": "auto"}), OPTIONS),
}
REJECTING = {nz.REJECTED_OVERSIZED_MESSAGE, nz.REJECTED_OVERSIZED_BODY}


def test_every_reason_code_has_an_end_to_end_case() -> None:
    assert set(CODE_CASES) == nz.ALL_REASON_CODES


@pytest.mark.parametrize("code", sorted(CODE_CASES))
def test_reason_code_fires_end_to_end(code: str) -> None:
    request, options = CODE_CASES[code]
    before = nz.RULE_HITS[code]
    if code in REJECTING:
        with pytest.raises(ContextTooLong, match="^prompt is too long: "):
            convert(request, options, request_id="r1")
    else:
        assert code in convert(request, options, request_id="r1").fixes
    assert nz.RULE_HITS[code] == before + 1


# --------------------------------------------------------------------------- bad input


BAD_INPUT = [
    (["not", "an", "object"], "request body must be a JSON object"),
    ({"messages": [user("q")]}, "model: must be a non-empty string"),
    (req([user("q")], model=5), "model: must be a non-empty string"),
    (req([user("q")], model="gpt-5"), "model not supported: gpt-5"),
    ({"model": "claude-sonnet-4-5"}, "messages: must be a non-empty list"),
    (req([]), "messages: must be a non-empty list"),
    (req("hello"), "messages: must be a non-empty list"),  # type: ignore[arg-type]
    (req([5]), "messages.0: must be an object"),
    (req([{"content": "x"}]), "messages.0.role: must be a string"),
    (req([{"role": "user"}]), "messages.0.content: must be a string or a list"),
    (req([user(5)]), "messages.0.content: must be a string or a list"),
    (req([user(["x"])]), "messages.0.content.0: must be an object"),
    (req([user([{"text": "x"}])]), "messages.0.content.0.type: must be a string"),
    (req([user([{"type": "text", "text": 5}])]), "messages.0.content.0.text: must be a string"),
    (req([user([{"type": "image"}])]), "messages.0.content.0.source: must be an object"),
    (
        req([user([{"type": "image", "source": {"type": "base64"}}])]),
        "messages.0.content.0.source.data",
    ),
    (
        req([user("q"), assistant([{"type": "tool_use", "name": "x"}]), user("q")]),
        "messages.1.content.0.id",
    ),
    (
        req([user("q"), assistant([{**tool_use(), "input": [1]}]), user("q")]),
        "messages.1.content.0.input: must be an object",
    ),
    (req([user([{"type": "tool_result"}])]), "messages.0.content.0.tool_use_id: must be a string"),
    (
        req([user([tool_result(is_error="yes")])]),
        "messages.0.content.0.is_error: must be a boolean",
    ),
    (req([user([tool_result(content=[5])])]), "messages.0.content.0.content.0: must be an object"),
    (req([user("q")], system=5), "system: must be a string or a list"),
    (req([user("q")], system=[{"type": "text"}]), "system.0.text: must be a string"),
    (req([user("q")], tools="x"), "tools: must be a list"),
    (req([user("q")], tools=[5]), "tools.0: must be an object"),
    (req([user("q")], tools=[{"description": "x"}]), "tools.0.name: must be a string"),
    (req([user("q")], tools=[{"name": ""}]), "tools.0.name: must be a non-empty string"),
    (
        req([user("q")], tools=[{"name": "a", "description": 5}]),
        "tools.0.description: must be a string",
    ),
    (req([user("q")], tools=[{"name": "a", "type": 5}]), "tools.0.type: must be a string"),
    (req([user("q")], thinking="on"), "thinking: must be an object"),
    (req([user("q")], thinking={}), "thinking.type: must be a string"),
    (
        req([user("q")], thinking={"type": "enabled", "budget_tokens": "big"}),
        "thinking.budget_tokens",
    ),
    (
        req([user("q")], thinking={"type": "enabled", "budget_tokens": True}),
        "thinking.budget_tokens",
    ),
    (req([user("q")], output_config="high"), "output_config: must be an object"),
    (req([user("q")], output_config={"effort": 3}), "output_config.effort: must be a string"),
    (req([user("q")], output_config={"format": "json"}), "output_config.format: must be an object"),
    (
        req([user("q"), assistant([{**tool_use(), "input": {"n": 2**70}}]), user([tool_result()])]),
        "cannot be encoded as JSON",
    ),
    (req([assistant("only me")]), "messages: must contain a user message"),
]


@pytest.mark.parametrize(("request_body", "message"), BAD_INPUT)
def test_bad_input_is_invalid_request_naming_the_field(request_body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        convert(request_body)
    assert message in caught.value.message
    assert (caught.value.status, caught.value.error_type) == (400, "invalid_request_error")


# --------------------------------------------------------------------------- Claude Code traffic


def load(name: str) -> dict[str, Any]:
    return orjson.loads((DATA / name).read_bytes())  # type: ignore[no-any-return]


def check_invariants(converted: ConvertedRequest, limits: nz.Limits = OPTIONS.limits) -> None:
    conv = state(converted)
    turns = [*conv.get("history", []), conv["currentMessage"]]
    roles = [
        "userInputMessage" if "userInputMessage" in t else "assistantResponseMessage" for t in turns
    ]
    assert roles == ["userInputMessage", "assistantResponseMessage"] * (len(roles) // 2) + [
        "userInputMessage"
    ]
    assert "x-anthropic-billing-header" not in converted.body_json.decode()
    for entry in turns:
        message = entry.get("userInputMessage") or entry["assistantResponseMessage"]
        assert isinstance(message["content"], str)
        if "assistantResponseMessage" in entry:
            assert message["content"] != ""
        else:
            assert message["modelId"] == converted.kiro_model
    tools = conv["currentMessage"]["userInputMessage"]["userInputMessageContext"].get("tools", [])
    for tool in tools:
        spec = tool["toolSpecification"]
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,62}", spec["name"])
        assert 0 < len(spec["description"].strip()) <= limits.max_tool_description_chars
        assert spec["inputSchema"]["json"]["type"] == "object"
        assert "null" not in orjson.dumps(spec["inputSchema"]["json"]).decode()
    assert len(converted.body_json) <= limits.max_body_bytes


def test_claude_code_request_converts_cleanly() -> None:
    request = load("claude_code_opus_4_8.json")
    assert 100_000 < len(orjson.dumps(request)) < 130_000
    converted = convert(request, request_id="cc-1")
    check_invariants(converted)
    assert (converted.kiro_model, converted.context_window) == ("claude-opus-4.8", 1_000_000)
    assert converted.conversation_id == SESSION
    assert converted.thinking is True
    system = system_text(converted)
    assert system.startswith(
        "<thinking_mode>adaptive</thinking_mode><thinking_effort>high</thinking_effort>\n"
        "You are Claude Code, Anthropic's official CLI for Claude.\n"
        "You are an interactive CLI tool"
    )
    assert "\n\n# Tool documentation\n\n## Tool: Bash\n\nBash: " in system
    assert "\n\n## Tool: Workflow\n\nWorkflow: " in system
    tools = current(converted)["userInputMessageContext"]["tools"]
    names = [tool["toolSpecification"]["name"] for tool in tools]
    assert len(names) == 25
    short = ATLASSIAN_TOOL[:54] + "_" + hashlib.sha256(ATLASSIAN_TOOL.encode()).hexdigest()[:8]
    assert short in names
    assert converted.tool_names == {short: ATLASSIAN_TOOL}
    # the mid-conversation system message joined the prompt; no role "system" upstream
    content = current(converted)["content"]
    assert content.startswith("<system-reminder>\nAs you answer")
    assert (
        "Fix the failing test in tests/test_parser.py and explain the cause.\ngitStatus:" in content
    )
    assert sorted(converted.fixes) == sorted(
        [
            nz.DROPPED_BILLING_HEADER,
            nz.FOLDED_SYSTEM_MESSAGE,
            nz.SHORTENED_TOOL_NAME,
            nz.MOVED_LONG_TOOL_DESCRIPTION,
        ]
    )
    assert converted.input_tokens == count_tokens(request, OPTIONS)
    assert 20_000 < converted.input_tokens < 40_000


def claude_code_follow_up() -> dict[str, Any]:
    """The fixture one turn later: thinking echoed with its signature, a Read result with
    line numbers, a permission-denied Bash result, then the user's next words."""
    request = load("claude_code_opus_4_8.json")
    request["messages"] += [
        assistant(
            [
                {
                    "type": "thinking",
                    "thinking": "I should read the test first.",
                    "signature": "EqQBCkgI==",
                },
                text("Let me look at the test."),
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "Read",
                    "input": {"file_path": "/repo/tests/test_parser.py"},
                },
            ]
        ),
        user(
            [
                tool_result(
                    "toolu_01", "     1\timport pytest\n     2\t\n     3\tdef test_empty():\n"
                )
            ]
        ),
        assistant(
            [
                {"type": "thinking", "thinking": "Run it.", "signature": "EqQBCkgJ=="},
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "Bash",
                    "input": {"command": "pytest -x"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_03",
                    "name": ATLASSIAN_TOOL,
                    "input": {"cloudId": "c", "pageId": "p"},
                },
            ]
        ),
        user(
            [
                tool_result("toolu_02", "Permission to use Bash has been denied.", is_error=True),
                tool_result("toolu_03", [text("page body")]),
                {
                    "type": "text",
                    "text": "run it with -q instead",
                    "cache_control": {"type": "ephemeral"},
                },
            ]
        ),
    ]
    return request


def test_claude_code_follow_up_converts_cleanly() -> None:
    converted = convert(claude_code_follow_up())
    check_invariants(converted)
    turns = history(converted)
    # system pair, the folded first prompt, then the assistant/user rounds
    assert turns[3] == amsg(
        "<thinking>I should read the test first.</thinking>\n\nLet me look at the test.",
        toolUses=[
            {
                "toolUseId": "toolu_01",
                "name": "Read",
                "input": {"file_path": "/repo/tests/test_parser.py"},
            }
        ],
    )
    assert turns[5]["assistantResponseMessage"]["content"] == "<thinking>Run it.</thinking>\n\n"
    renamed = turns[5]["assistantResponseMessage"]["toolUses"][1]["name"]
    assert converted.tool_names[renamed].startswith("mcp__claude_ai_Atlassian_Rovo__")
    message = current(converted)
    assert message["content"] == "run it with -q instead"
    assert message["userInputMessageContext"]["toolResults"] == [
        {
            "toolUseId": "toolu_02",
            "content": [{"text": "Permission to use Bash has been denied."}],
            "status": "error",
        },
        {"toolUseId": "toolu_03", "content": [{"text": "page body"}], "status": "success"},
    ]


# --------------------------------------------------------------------------- robustness

KEYS = st.sampled_from(
    [
        "role",
        "content",
        "type",
        "text",
        "source",
        "media_type",
        "data",
        "id",
        "name",
        "input",
        "tool_use_id",
        "is_error",
        "thinking",
        "signature",
        "model",
        "messages",
        "system",
        "tools",
        "description",
        "input_schema",
        "budget_tokens",
        "effort",
        "format",
        "schema",
        "properties",
        "required",
        "metadata",
        "user_id",
        "output_config",
        "url",
    ]
) | st.text(max_size=4)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "user",
            "assistant",
            "system",
            "developer",
            "text",
            "image",
            "tool_use",
            "tool_result",
            "thinking",
            "redacted_thinking",
            "document",
            "base64",
            "url",
            "image/png",
            "image/bmp",
            "enabled",
            "adaptive",
            "disabled",
            "object",
            "json_schema",
            "custom",
            "web_search_2025",
            "claude-sonnet-4-5",
            "high",
            PNG,
        ]
    )
)
JSONISH = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=40,
)
ROLES = st.sampled_from(["user", "assistant", "system", "developer"])
IDS = st.sampled_from(["t1", "t2", "t3"])
NAMES = st.sampled_from(["get_weather", "Read", "read", "Bad.Name", "x" * 70, "9lives"])
SMALL_TEXT = st.text(max_size=8)
SOURCE = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["base64", "base64", "url"]),
        "media_type": st.sampled_from(["image/png", "image/jpeg", "image/bmp", ""]),
        "data": st.sampled_from([PNG, "", "data:image/png;base64," + PNG]),
    }
)
IMAGE_BLOCK = st.fixed_dictionaries({"type": st.just("image"), "source": SOURCE})
TEXT_BLOCK = st.fixed_dictionaries({"type": st.just("text"), "text": SMALL_TEXT})
VALID_BLOCK = st.one_of(
    TEXT_BLOCK,
    IMAGE_BLOCK,
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": IDS,
            "name": NAMES,
            "input": st.dictionaries(st.text(max_size=3), JSONISH, max_size=2),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_result"),
            "tool_use_id": IDS,
            "content": st.none() | SMALL_TEXT | st.lists(TEXT_BLOCK | IMAGE_BLOCK, max_size=2),
            "is_error": st.booleans(),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("thinking"), "thinking": SMALL_TEXT, "signature": SMALL_TEXT}
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["redacted_thinking", "document", "server_tool_use", "hologram"])}
    ),
)
BLOCK = st.one_of(VALID_BLOCK, VALID_BLOCK, VALID_BLOCK, JSONISH)
MESSAGE = st.fixed_dictionaries(
    {"role": ROLES, "content": SMALL_TEXT | st.lists(BLOCK, max_size=4)}
)
SCHEMA = st.one_of(
    JSONISH,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["object", "string"]) | JSONISH},
        optional={
            "properties": st.dictionaries(SMALL_TEXT, JSONISH, max_size=3) | st.none(),
            "required": JSONISH,
        },
    ),
)
TOOL = st.one_of(
    st.fixed_dictionaries(
        {"name": NAMES},
        optional={"description": st.none() | SMALL_TEXT, "input_schema": SCHEMA},
    ),
    st.just({"type": "web_search_20250305", "name": "web_search"}),
    JSONISH,
)
SHAPED = st.fixed_dictionaries(
    {"model": st.just("claude-sonnet-4-5"), "messages": st.lists(MESSAGE, min_size=1, max_size=6)},
    optional={
        "system": SMALL_TEXT | st.lists(TEXT_BLOCK, max_size=2) | JSONISH,
        "tools": st.lists(TOOL, max_size=3),
        "thinking": st.sampled_from(
            [{"type": "enabled", "budget_tokens": 5000}, {"type": "adaptive"}]
        )
        | JSONISH,
        "output_config": JSONISH,
        "metadata": JSONISH,
    },
)


def assert_converted_or_invalid(request: Any) -> None:
    try:
        converted = convert(request)
    except InvalidRequest:
        return
    assert converted.body_json == orjson.dumps(converted.body)
    assert validate_request(converted.body) is None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(JSONISH)
def test_random_values_are_converted_or_invalid_request(request: Any) -> None:
    assert_converted_or_invalid(request)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(SHAPED)
def test_random_request_shapes_are_converted_or_invalid_request(request: dict[str, Any]) -> None:
    assert_converted_or_invalid(request)


# --------------------------------------------------------------------------- fake validator


def tricky_corpus() -> list[tuple[str, dict[str, Any], ConvertOptions]]:
    corpus = [
        (code, request, options)
        for code, (request, options) in CODE_CASES.items()
        if code not in REJECTING
    ]
    corpus.append(("claude_code", load("claude_code_opus_4_8.json"), OPTIONS))
    corpus.append(("claude_code_follow_up", claude_code_follow_up(), OPTIONS))
    corpus.append(
        (
            "interrupted_session",
            req(
                [
                    user("q"),
                    assistant([tool_use("a1")]),
                    assistant([text("retrying"), tool_use("a2", "Other.Tool")]),
                    user([tool_result("a2"), tool_result("a1"), tool_result("zz")]),
                    user("also"),
                    {"role": "system", "content": "note"},
                    assistant(""),
                    assistant([tool_use("a3", "READ")]),
                ],
                tools=[WEATHER_TOOL, {"name": "Read", "description": "", "input_schema": None}],
            ),
            OPTIONS,
        )
    )
    return corpus


@pytest.mark.parametrize("strip", [False, True])
def test_fake_upstream_validator_accepts_every_converted_request(strip: bool) -> None:
    for name, request, options in tricky_corpus():
        if strip:
            options = ConvertOptions(
                strip_schema_keywords=True, max_tool_result_chars=options.max_tool_result_chars
            )
        converted = convert(request, options)
        failure = validate_request(converted.body)
        assert failure is None, f"{name}: {failure}"


# --------------------------------------------------------------------------- limits agree

#: Tight limits so random requests run into them; the converter gets the same numbers
#: the fake upstream enforces (tool names: the converter's 63 against the service's 64).
LIMITS = st.fixed_dictionaries(
    {
        "description": st.sampled_from([150, 200, 10_000]),
        "images": st.sampled_from([0, 1, 2, 10]),
        "image_bytes": st.sampled_from([10, 10 * 1024 * 1024]),
        "user_chars": st.sampled_from([4, 12, 40, 600_000]),
        "body_bytes": st.sampled_from([1_500, 3_000, 600_000]),
    }
)
NOTES = st.lists(st.sampled_from(["", "note", "[kiro_fast] a longer note " * 3]), max_size=2)
LONG_TOOLS = st.lists(
    st.fixed_dictionaries(
        {"name": NAMES, "description": st.text(max_size=300), "input_schema": SCHEMA}
    ),
    max_size=2,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(SHAPED, LIMITS, NOTES, LONG_TOOLS)
def test_no_normalised_request_is_refused_under_any_limits(
    request: dict[str, Any], limits: dict[str, int], notes: list[str], tools: list[Any]
) -> None:
    """The normaliser's promise, with the fake upstream as the judge: whatever the limits
    and injected notes (structured-output instruction, truncation note), a request is
    either refused locally (400) or accepted by the upstream's rules with those limits."""
    options = ConvertOptions(
        max_tool_description_chars=limits["description"],
        max_images=limits["images"],
        max_image_bytes=limits["image_bytes"],
        max_user_content_chars=limits["user_chars"],
        max_body_bytes=limits["body_bytes"],
    )
    rules = ValidationSettings(
        max_tool_description_length=limits["description"],
        max_images=limits["images"],
        max_image_bytes=limits["image_bytes"],
        max_user_message_chars=limits["user_chars"],
        max_body_bytes=limits["body_bytes"],
    )
    if isinstance(request.get("tools"), list):
        request = {**request, "tools": request["tools"] + tools}
    try:
        converted = anthropic_to_kiro(request, options, notes=notes)
    except InvalidRequest:
        return
    # the profileArn a social credential adds must still fit (the relay splices it in)
    arn = b'"profileArn":"arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK",'
    raw = len(converted.body_json) + len(arn)
    assert validate_request(converted.body, rules, raw_size=raw) is None
    for note in notes:
        assert note in current(converted)["content"]


# --------------------------------------------------------------------------- ids and models


def test_random_uuid_is_a_version_4_uuid_string() -> None:
    from kiro_fast.convert import random_uuid

    values = {random_uuid() for _ in range(2000)}
    assert len(values) == 2000
    for value in values:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_model_resolution_is_kept_per_options_object() -> None:
    import dataclasses

    from kiro_fast import convert as cv

    options = ConvertOptions()
    first = cv._resolve("claude-sonnet-4-5", options)
    assert cv._resolve("claude-sonnet-4-5", options) is first
    assert options.model_cache == {"claude-sonnet-4-5": first}
    with pytest.raises(InvalidRequest):
        cv._resolve("no-such-model", options)
    assert "no-such-model" not in options.model_cache
    overridden = dataclasses.replace(options, model_overrides={"claude-sonnet-4-5": "other"})
    assert overridden.model_cache == {}
    assert cv._resolve("claude-sonnet-4-5", overridden).kiro_id == "other"


def test_model_cache_is_bounded() -> None:
    from kiro_fast import convert as cv

    options = ConvertOptions()
    for n in range(cv.MODEL_CACHE_SIZE + 50):
        cv._resolve(f"claude-sonnet-4-5-{n:08d}", options)
    assert len(options.model_cache) == cv.MODEL_CACHE_SIZE
