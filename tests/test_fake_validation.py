"""The fake upstream's request rules (kiro-api.md §4.6), checked with bodies written by hand.

Each well-formed body is one of the spec's worked examples (§4.7); each broken body
breaks exactly one rule, and the test names the rule it expects.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kiro_fast.testing import (
    IMAGE_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    Rule,
    ValidationSettings,
    context_window,
    prompt_tokens,
    validate_request,
)
from kiro_fast.testing.conversation import text_tokens

#: Large bodies would first break the 600 kB body cap; these tests look past it.
NO_BODY_CAP = ValidationSettings(max_body_bytes=64 * 1024 * 1024)


# §4.7.1 Plain text
PLAIN: dict[str, Any] = {
    "conversationState": {
        "agentContinuationId": "5c1e0000-0000-4000-8000-000000000001",
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
        "conversationId": "9f3a0000-0000-4000-8000-000000000002",
    },
    "profileArn": "arn:aws:codewhisperer:us-east-1:123456789012:profile/EXAMPLEPROFILE",
}

# §4.7.2 Multi-turn with system prompt
MULTI_TURN: dict[str, Any] = {
    "conversationState": {
        "agentTaskType": "vibe",
        "chatTriggerType": "MANUAL",
        "currentMessage": {
            "userInputMessage": {
                "userInputMessageContext": {},
                "content": "And 3+3?",
                "modelId": "claude-opus-4.6",
                "origin": "AI_EDITOR",
            }
        },
        "conversationId": "c1",
        "history": [
            {
                "userInputMessage": {
                    "content": "You are terse.",
                    "modelId": "claude-opus-4.6",
                    "origin": "AI_EDITOR",
                }
            },
            {"assistantResponseMessage": {"content": "I will follow these instructions."}},
            {
                "userInputMessage": {
                    "content": "What is 2+2?",
                    "modelId": "claude-opus-4.6",
                    "origin": "AI_EDITOR",
                }
            },
            {"assistantResponseMessage": {"content": "4"}},
        ],
    }
}

WEATHER_TOOL: dict[str, Any] = {
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

# §4.7.3 Tool-use round trip, request 2
TOOL_ROUND_TRIP: dict[str, Any] = {
    "conversationState": {
        "chatTriggerType": "MANUAL",
        "currentMessage": {
            "userInputMessage": {
                "userInputMessageContext": {
                    "toolResults": [
                        {
                            "toolUseId": "tooluse_abc",
                            "content": [{"text": "18°C, sunny"}],
                            "status": "success",
                        }
                    ],
                    "tools": [WEATHER_TOOL],
                },
                "content": "",
                "modelId": "claude-sonnet-4.5",
                "origin": "AI_EDITOR",
            }
        },
        "conversationId": "c2",
        "history": [
            {
                "userInputMessage": {
                    "content": "Weather in Paris?",
                    "modelId": "claude-sonnet-4.5",
                    "origin": "AI_EDITOR",
                }
            },
            {
                "assistantResponseMessage": {
                    "content": "I'll check.",
                    "toolUses": [
                        {
                            "toolUseId": "tooluse_abc",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        }
                    ],
                }
            },
        ],
    }
}

# §4.7.4 Image (a 1x1 PNG)
PNG_1X1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
    "AAAABJRU5ErkJggg=="
)
IMAGE: dict[str, Any] = {
    "conversationState": {
        "chatTriggerType": "MANUAL",
        "currentMessage": {
            "userInputMessage": {
                "userInputMessageContext": {},
                "content": "What is in this image?",
                "modelId": "claude-haiku-4.5",
                "images": [{"format": "png", "source": {"bytes": PNG_1X1}}],
                "origin": "AI_EDITOR",
            }
        },
        "conversationId": "c3",
    }
}


def current(body: dict[str, Any]) -> dict[str, Any]:
    return body["conversationState"]["currentMessage"]["userInputMessage"]


def history(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body["conversationState"]["history"]


def rule_of(body: Any, settings: ValidationSettings | None = None, **kwargs: Any) -> Rule | None:
    failure = validate_request(body, settings or ValidationSettings(), **kwargs)
    return failure.rule if failure else None


@pytest.mark.parametrize("body", [PLAIN, MULTI_TURN, TOOL_ROUND_TRIP, IMAGE])
def test_spec_examples_are_accepted(body):
    assert validate_request(body) is None


def test_empty_history_list_and_empty_history_user_content_are_accepted():
    body = copy.deepcopy(MULTI_TURN)
    history(body)[2]["userInputMessage"]["content"] = ""
    assert validate_request(body) is None
    body = copy.deepcopy(PLAIN)
    body["conversationState"]["history"] = []
    assert validate_request(body) is None


def test_whitespace_assistant_content_is_accepted():
    body = copy.deepcopy(TOOL_ROUND_TRIP)
    history(body)[1]["assistantResponseMessage"]["content"] = " "  # kiro.rs's placeholder
    assert validate_request(body) is None


def test_unknown_fields_and_tool_names_with_hyphens_are_accepted():
    body = copy.deepcopy(TOOL_ROUND_TRIP)
    body["inferenceConfig"] = {"maxTokens": 100}
    current(body)["userInputMessageContext"]["tools"].append(
        {
            "toolSpecification": {
                "name": "mcp__fs-server__read_file",
                "description": "Read",
                "inputSchema": {
                    "json": {"type": "object", "properties": {"type": {"type": "string"}}}
                },
            }
        }
    )
    assert validate_request(body) is None


def broken(base: dict[str, Any], change) -> dict[str, Any]:
    body = copy.deepcopy(base)
    change(body)
    return body


def _two_assistants(body):
    history(body).insert(2, {"assistantResponseMessage": {"content": "again"}})


def _two_users(body):
    history(body).insert(1, {"userInputMessage": {"content": "more"}})


def _assistant_first(body):
    del history(body)[0]


def _current_assistant(body):
    body["conversationState"]["currentMessage"] = {"assistantResponseMessage": {"content": "x"}}


def _empty_assistant(body):
    history(body)[3]["assistantResponseMessage"]["content"] = ""


def _unanswered_tool_use(body):
    current(body)["userInputMessageContext"]["toolResults"] = []


def _orphan_result(body):
    results = current(body)["userInputMessageContext"]["toolResults"]
    results[0]["toolUseId"] = "tooluse_other"


def _duplicate_result(body):
    results = current(body)["userInputMessageContext"]["toolResults"]
    results.append(copy.deepcopy(results[0]))


def _no_tools(body):
    del current(body)["userInputMessageContext"]["tools"]


def _undeclared_tool(body):
    history(body)[1]["assistantResponseMessage"]["toolUses"][0]["name"] = "get_time"


def _spec(body):
    return current(body)["userInputMessageContext"]["tools"][0]["toolSpecification"]


def _long_name(body):
    _spec(body)["name"] = "t" * 65
    history(body)[1]["assistantResponseMessage"]["toolUses"][0]["name"] = "t" * 65


def _bad_name(body):
    _spec(body)["name"] = "get.weather"
    history(body)[1]["assistantResponseMessage"]["toolUses"][0]["name"] = "get.weather"


def _empty_description(body):
    _spec(body)["description"] = ""


def _long_description(body):
    _spec(body)["description"] = "d" * 10_001


def _required_null(body):
    _spec(body)["inputSchema"]["json"]["required"] = None


def _properties_null(body):
    _spec(body)["inputSchema"]["json"]["properties"] = None


def _nested_type_list(body):
    _spec(body)["inputSchema"]["json"]["properties"]["city"]["type"] = ["string", "null"]


def _trigger_auto(body):
    body["conversationState"]["chatTriggerType"] = "AUTO"


def _trigger_missing(body):
    del body["conversationState"]["chatTriggerType"]


def _bmp_image(body):
    current(body)["images"][0]["format"] = "bmp"


def _eleven_images(body):
    current(body)["images"] = [{"format": "png", "source": {"bytes": PNG_1X1}}] * 11


def _huge_image(body):
    current(body)["images"][0]["source"]["bytes"] = "A" * (14 * 1024 * 1024)  # 10.5 MiB decoded


def _unknown_model(body):
    current(body)["modelId"] = "claude-sonnet-4-5-20250929"


def _long_user_message(body):
    current(body)["content"] = "x" * 600_001


@pytest.mark.parametrize(
    ("base", "change", "rule"),
    [
        (MULTI_TURN, _two_assistants, Rule.HISTORY_ALTERNATION),
        (MULTI_TURN, _two_users, Rule.HISTORY_ALTERNATION),
        (MULTI_TURN, _assistant_first, Rule.HISTORY_FIRST_USER),
        (MULTI_TURN, _current_assistant, Rule.CURRENT_USER),
        (MULTI_TURN, _empty_assistant, Rule.ASSISTANT_CONTENT),
        (TOOL_ROUND_TRIP, _unanswered_tool_use, Rule.TOOL_USE_UNANSWERED),
        (TOOL_ROUND_TRIP, _orphan_result, Rule.TOOL_USE_UNANSWERED),
        (TOOL_ROUND_TRIP, _duplicate_result, Rule.TOOL_RESULT_ORPHAN),
        (TOOL_ROUND_TRIP, _no_tools, Rule.TOOLS_DECLARED),
        (TOOL_ROUND_TRIP, _undeclared_tool, Rule.TOOL_UNDECLARED),
        (TOOL_ROUND_TRIP, _long_name, Rule.TOOL_NAME_LENGTH),
        (TOOL_ROUND_TRIP, _bad_name, Rule.TOOL_NAME_PATTERN),
        (TOOL_ROUND_TRIP, _empty_description, Rule.TOOL_DESCRIPTION_EMPTY),
        (TOOL_ROUND_TRIP, _long_description, Rule.TOOL_DESCRIPTION_LENGTH),
        (TOOL_ROUND_TRIP, _required_null, Rule.TOOL_SCHEMA),
        (TOOL_ROUND_TRIP, _properties_null, Rule.TOOL_SCHEMA),
        (TOOL_ROUND_TRIP, _nested_type_list, Rule.TOOL_SCHEMA),
        (PLAIN, _trigger_auto, Rule.CHAT_TRIGGER_TYPE),
        (PLAIN, _trigger_missing, Rule.CHAT_TRIGGER_TYPE),
        (IMAGE, _bmp_image, Rule.IMAGE_FORMAT),
        (IMAGE, _eleven_images, Rule.IMAGE_COUNT),
        (PLAIN, _unknown_model, Rule.MODEL_ID),
    ],
)
def test_each_rule_rejects_its_broken_body(base, change, rule):
    body = broken(base, change)
    assert rule_of(body) == rule
    # Switched off, the same body passes that rule (and no other breaks).
    assert rule_of(body, ValidationSettings(disabled=frozenset({rule}))) not in (rule,)


def test_orphan_result_after_unanswered_use_is_caught_when_use_rule_is_off():
    body = broken(TOOL_ROUND_TRIP, _orphan_result)
    settings = ValidationSettings(disabled=frozenset({Rule.TOOL_USE_UNANSWERED}))
    assert rule_of(body, settings) == Rule.TOOL_RESULT_ORPHAN


def test_result_in_first_history_message_is_an_orphan():
    body = copy.deepcopy(TOOL_ROUND_TRIP)
    history(body)[0]["userInputMessage"]["userInputMessageContext"] = {
        "toolResults": [
            {"toolUseId": "tooluse_zzz", "content": [{"text": "x"}], "status": "success"}
        ]
    }
    assert rule_of(body) == Rule.TOOL_RESULT_ORPHAN


def test_tool_declaration_is_case_insensitive():
    body = copy.deepcopy(TOOL_ROUND_TRIP)
    history(body)[1]["assistantResponseMessage"]["toolUses"][0]["name"] = "GET_Weather"
    assert validate_request(body) is None


def test_image_over_ten_mib_is_rejected():
    body = broken(IMAGE, _huge_image)
    assert rule_of(body) == Rule.BODY_SIZE
    assert rule_of(body, NO_BODY_CAP) == Rule.IMAGE_SIZE


def test_user_message_over_600k_characters_is_input_too_long():
    body = broken(PLAIN, _long_user_message)
    failure = validate_request(body, NO_BODY_CAP)
    assert failure is not None and failure.rule == Rule.USER_MESSAGE_LENGTH
    assert failure.reason == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"
    current(body)["content"] = "x" * 600_000
    assert validate_request(body, NO_BODY_CAP) is None


def test_error_bodies_follow_the_upstream():
    failure = validate_request(broken(MULTI_TURN, _two_assistants))
    assert failure is not None
    assert (failure.status, failure.error_type) == (400, "ValidationException")
    assert failure.body() == {"message": "Improperly formed request.", "reason": None}

    failure = validate_request(broken(PLAIN, _unknown_model))
    assert failure is not None
    assert failure.body() == {
        "message": "Invalid model. Please select a different model to continue.",
        "reason": "INVALID_MODEL_ID",
    }

    failure = validate_request(broken(PLAIN, _long_user_message), NO_BODY_CAP)
    assert failure is not None
    assert failure.body() == {
        "message": "Input is too long.",
        "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD",
    }


def test_body_over_the_cap_is_input_too_long():
    failure = validate_request(PLAIN, raw_size=600_001)
    assert failure is not None and failure.rule == Rule.BODY_SIZE
    assert failure.reason == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"
    assert validate_request(PLAIN, raw_size=600_000) is None
    small = ValidationSettings(max_body_bytes=100)
    assert rule_of(PLAIN, small) == Rule.BODY_SIZE  # measured by re-serialising


def test_configurable_limits():
    body = broken(TOOL_ROUND_TRIP, lambda b: None)
    _spec(body)["name"] = "n" * 64
    history(body)[1]["assistantResponseMessage"]["toolUses"][0]["name"] = "n" * 64
    assert validate_request(body) is None
    assert rule_of(body, ValidationSettings(max_tool_name_length=63)) == Rule.TOOL_NAME_LENGTH
    _spec(body)["description"] = "d" * 20
    assert rule_of(body, ValidationSettings(max_tool_description_length=19)) == (
        Rule.TOOL_DESCRIPTION_LENGTH
    )


def test_profile_arn_rules_in_runtime_mode():
    without = broken(PLAIN, lambda b: b.pop("profileArn"))
    assert validate_request(without) is None  # the q host does not need it
    failure = validate_request(without, host_mode="runtime")
    assert failure is not None and failure.rule == Rule.PROFILE_ARN_REQUIRED
    assert failure.body() == {"message": "profileArn is required for this request.", "reason": None}
    empty = broken(PLAIN, lambda b: b.update(profileArn=""))
    failure = validate_request(empty, host_mode="runtime")
    assert failure is not None and failure.reason == "REQUEST_BODY_INVALID"
    assert validate_request(PLAIN, host_mode="runtime") is None


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"conversationState": None},
        {"conversationState": {"chatTriggerType": "MANUAL"}},
        broken(PLAIN, lambda b: current(b).pop("content")),
        broken(PLAIN, lambda b: b["conversationState"].update(history={"a": 1})),
        broken(MULTI_TURN, lambda b: history(b).append({"systemMessage": {"content": "x"}})),
    ],
)
def test_malformed_bodies(body):
    assert rule_of(body) == Rule.MALFORMED


def test_prompt_token_counter_matches_its_definition():
    overhead = PROMPT_OVERHEAD_TOKENS
    assert overhead == 4_134
    # PLAIN: "Hello" is one word (1) + one message's framing (3): a bare greeting reports
    # the 4,138 prompt tokens measured on the real service
    assert prompt_tokens(PLAIN) == 4_138
    # MULTI_TURN: "You are terse." You, " are", " terse", "." = 4;
    # "I will follow these instructions." I, " will", " follow" (6 letters: 1.05),
    # " these", " instructions" (12: 1.35), "." = 6.4; "What is 2+2?" 6; "4" 1;
    # "And 3+3?" And, " 3", "+", "3", "?" = 5 -> 22.4 -> 22, + 5 messages x 3
    assert prompt_tokens(MULTI_TURN) == 22 + 15 + overhead
    # TOOL_ROUND_TRIP: "Weather in Paris?" 4.1 (Weather: 7 letters 1.1); "I'll check." 5;
    # use name get_weather 3.1 (get, "_", weather); input {"city":"Paris"} 5;
    # result "18°C, sunny" 5 ("18", "°", "C", ",", " sunny"); tool name 3.1;
    # description 6.1; schema JSON 25.58 (4-character clusters like '":{"' 4/3,
    # "additionalProperties" 20/6.5) -> 56.98 -> 57, + 3 messages x 3 + 1 tool x 8
    assert prompt_tokens(TOOL_ROUND_TRIP) == 57 + 9 + 8 + overhead
    # IMAGE: "What is in this image?" 6 + 3 framing + one image
    assert prompt_tokens(IMAGE) == 6 + 3 + IMAGE_TOKENS + overhead


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello", 1.0),
        (" hello", 1.0),
        ("letters", 1.1),  # 7 letters: 1 + 2/20
        ("internationalization", 20 / 6.5),
        ("123456", 2),  # one token per 3 digits
        ("::", 1.0),
        ('"}}],"', 2.0),  # 6 characters / 3
        ("=" * 40, 4.0),  # capped
        ("\n\n    ", 1.0),  # one whitespace run
        ("日本語", 3 * 0.93),
        ("é", 1.0),
    ],
)
def test_fake_tokenizer_model(text, expected):
    assert text_tokens(text) == pytest.approx(expected)


def test_context_windows():
    for model in ("claude-sonnet-4.6", "claude-opus-4.6", "claude-opus-4.7", "claude-opus-5"):
        assert context_window(model) == 1_000_000
    for model in ("claude-sonnet-4.5", "claude-haiku-4.5", "auto", "glm-5", None):
        assert context_window(model) == 200_000
