"""OpenAI requests → Anthropic-shaped requests (kiro-api.md §10.4), rule by rule.

Expected dicts are written by hand from the mapping table; a few tests run the result
through :func:`kiro_fast.convert.anthropic_to_kiro` to check what reaches the upstream.
"""

from __future__ import annotations

from typing import Any

import pytest

from kiro_fast.convert import ConvertOptions, anthropic_to_kiro
from kiro_fast.errors import InvalidRequest
from kiro_fast.openai_convert import (
    chat_request,
    image_block,
    parse_arguments,
    responses_request,
)

OPTIONS = ConvertOptions()
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAIAAAUAAXpeqz8AAAAASUVORK5CYII="


def chat(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return chat_request({"model": "gpt-4o", "messages": messages, **fields}, OPTIONS).anthropic


def responses(input_value: Any, **fields: Any) -> dict[str, Any]:
    request = {"model": "gpt-4o", "input": input_value, **fields}
    return responses_request(request, OPTIONS).anthropic


# --------------------------------------------------------------------------- chat messages


def test_plain_user_message() -> None:
    assert chat([{"role": "user", "content": "hi"}]) == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_system_and_developer_messages_become_the_system_prompt() -> None:
    out = chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "user", "content": "hi"},
        ]
    )
    assert out["system"] == "Be brief.\nUse French."
    assert out["messages"] == [{"role": "user", "content": "hi"}]


def test_user_parts_text_and_data_url_image() -> None:
    out = chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ]
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]


def test_http_image_url_becomes_a_url_image_never_fetched() -> None:
    assert image_block("https://example.com/cat.png") == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.png"},
    }


def test_http_image_is_dropped_before_the_upstream() -> None:
    request = chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ]
    )
    converted = anthropic_to_kiro(request, OPTIONS)
    current = converted.body["conversationState"]["currentMessage"]["userInputMessage"]
    assert "images" not in current
    assert "DROPPED_URL_IMAGE" in converted.fixes


def test_assistant_tool_calls_and_a_run_of_tool_messages() -> None:
    out = chat(
        [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "25C"}],
            },
            {"role": "user", "content": "Thanks"},
        ]
    )
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "25C"}],
                },
            ],
        },
        {"role": "user", "content": "Thanks"},
    ]


def test_tool_round_trip_reaches_the_upstream_as_tool_uses_and_results() -> None:
    request = chat(
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "tooluse_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "tooluse_a", "content": "sunny"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    state = anthropic_to_kiro(request, OPTIONS).body["conversationState"]
    assistant = state["history"][-1]["assistantResponseMessage"]
    assert assistant["content"] == "Checking."
    assert assistant["toolUses"] == [
        {"toolUseId": "tooluse_a", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    context = state["currentMessage"]["userInputMessage"]["userInputMessageContext"]
    assert context["toolResults"] == [
        {"toolUseId": "tooluse_a", "content": [{"text": "sunny"}], "status": "success"}
    ]


def test_assistant_reasoning_content_is_echoed_as_thinking() -> None:
    out = chat(
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Simple sum."},
            {"role": "user", "content": "and 3+3?"},
        ]
    )
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Simple sum."},
        {"type": "text", "text": "4"},
    ]


def test_assistant_content_parts_are_joined() -> None:
    out = chat(
        [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}],
            },
            {"role": "user", "content": "q2"},
        ]
    )
    assert out["messages"][1] == {"role": "assistant", "content": "ab"}


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ({"a": 1}, {"a": 1}),
        ("", {}),
        (None, {}),
        ('{"a": 1', {}),  # cut JSON: history cannot be repaired; Kiro-Go sends {}
        ("[1, 2]", {}),
    ],
)
def test_tool_call_arguments(arguments: Any, expected: dict[str, Any]) -> None:
    assert parse_arguments(arguments, "messages.1.tool_calls.0.function") == expected


# --------------------------------------------------------------------------- chat tools, options


def test_function_tools_and_flat_cursor_tools() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    out = chat(
        [{"role": "user", "content": "hi"}],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "Weather", "parameters": schema},
            },
            {"name": "read_file", "description": "Read", "input_schema": schema},
            {"name": "list_dir", "parameters": schema},
            {"type": "web_search_preview"},
        ],
    )
    assert out["tools"] == [
        {"name": "get_weather", "description": "Weather", "input_schema": schema},
        {"name": "read_file", "description": "Read", "input_schema": schema},
        {"name": "list_dir", "description": "", "input_schema": schema},
    ]


def test_tool_choice_and_sampling_fields_are_ignored() -> None:
    out = chat(
        [{"role": "user", "content": "hi"}],
        tool_choice="required",
        temperature=0.2,
        top_p=0.9,
        max_tokens=10,
        stop=["x"],
    )
    assert out == {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_user_field_becomes_the_session_key() -> None:
    # OpenAI's ``user`` names the end user; it keeps that user's requests on one credential.
    out = chat([{"role": "user", "content": "hi"}], user="u1")
    assert out["metadata"] == {"user_id": "u1"}
    with pytest.raises(InvalidRequest, match="user"):
        chat([{"role": "user", "content": "hi"}], user=5)


@pytest.mark.parametrize(
    ("effort", "expected"),
    [("low", "low"), ("minimal", "low"), ("medium", "medium"), ("high", "high"), ("xhigh", "max")],
)
def test_reasoning_effort_turns_thinking_on(effort: str, expected: str) -> None:
    # gpt-4o → claude-sonnet-4.5 (200k window): enabled thinking with an effort budget
    out = chat([{"role": "user", "content": "hi"}], reasoning_effort=effort)
    assert out["thinking"] == {"type": "enabled"}
    assert out["output_config"] == {"effort": expected}


def test_reasoning_effort_on_a_large_window_model_is_adaptive() -> None:
    request = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]}
    out = chat_request({**request, "reasoning_effort": "high"}, OPTIONS).anthropic
    assert out["thinking"] == {"type": "adaptive"}
    system = anthropic_to_kiro(out, OPTIONS).body["conversationState"]["history"][0]
    assert "<thinking_effort>high</thinking_effort>" in system["userInputMessage"]["content"]


def test_reasoning_effort_none_turns_thinking_off() -> None:
    out = chat([{"role": "user", "content": "hi"}], reasoning_effort="none")
    assert out["thinking"] == {"type": "disabled"}


def test_thinking_suffix_reaches_the_upstream_as_tags() -> None:
    request = chat_request(
        {"model": "gpt-4o-thinking", "messages": [{"role": "user", "content": "hi"}]}, OPTIONS
    )
    converted = anthropic_to_kiro(request.anthropic, OPTIONS)
    assert converted.thinking is True
    assert converted.kiro_model == "claude-sonnet-4.5"
    assert converted.client_model == "gpt-4o-thinking"


def test_response_format_json_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    out = chat(
        [{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_stream_and_include_usage() -> None:
    messages = [{"role": "user", "content": "hi"}]
    streamed = chat_request(
        {
            "model": "gpt-4o",
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        OPTIONS,
    )
    assert (streamed.stream, streamed.include_usage) == (True, True)
    plain = chat_request({"model": "gpt-4o", "messages": messages}, OPTIONS)
    assert (plain.stream, plain.include_usage) == (False, False)


# --------------------------------------------------------------------------- chat bad input


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "gpt-4o"}, "messages"),
        ({"model": "gpt-4o", "messages": []}, "messages"),
        ({"model": "gpt-4o", "messages": ["hi"]}, "messages.0"),
        ({"model": "gpt-4o", "messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages.0.content.0.type",
        ),
        (
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [{"id": "c1", "function": {}}]},
                ],
            },
            "messages.1.tool_calls.0.function.name",
        ),
        (
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": 5}}],
                    },
                ],
            },
            "messages.1.tool_calls.0.function.arguments",
        ),
        ({"model": "gpt-4o", "messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "tools": {}},
            "tools",
        ),
        (
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": ""}}],
            },
            "tools.0.function.name",
        ),
        (
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "x"}],
                "reasoning_effort": "extreme",
            },
            "reasoning_effort",
        ),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            "stream",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "system", "content": "only system"}]},
            "messages",
        ),
    ],
)
def test_bad_chat_input_names_the_field(request_fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_request(request_fields, OPTIONS)
    assert field in info.value.message


def test_unknown_model_is_rejected_by_the_converter() -> None:
    request = chat_request(
        {"model": "llama-3", "messages": [{"role": "user", "content": "x"}]}, OPTIONS
    )
    with pytest.raises(InvalidRequest, match="model not supported"):
        anthropic_to_kiro(request.anthropic, OPTIONS)


# --------------------------------------------------------------------------- responses


def test_string_input_and_instructions() -> None:
    assert responses("hello", instructions="Be brief.") == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hello"}],
        "system": "Be brief.",
    }


def test_input_items_with_function_calls_and_outputs() -> None:
    out = responses(
        [
            {"role": "developer", "content": "Use metric units."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather?"}],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking."}],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "18C"},
            {"type": "function_call_output", "call_id": "c2", "output": "noon"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ],
        instructions="Be brief.",
    )
    assert out["system"] == "Be brief.\nUse metric units."
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "c2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "noon"},
            ],
        },
    ]


def test_input_image_data_url() -> None:
    out = responses(
        [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is it?"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
                ],
            }
        ]
    )
    assert out["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }


def test_function_tools_only_and_reasoning_effort() -> None:
    schema = {"type": "object", "properties": {}}
    out = responses(
        "hi",
        tools=[
            {
                "type": "function",
                "name": "shell",
                "description": "Run",
                "parameters": schema,
                "strict": False,
            },
            {"type": "web_search"},
            {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
        ],
        reasoning={"effort": "medium", "summary": "auto"},
    )
    assert out["tools"] == [{"name": "shell", "description": "Run", "input_schema": schema}]
    assert out["thinking"] == {"type": "enabled"}
    assert out["output_config"] == {"effort": "medium"}


def test_previous_messages_are_prepended() -> None:
    previous = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada."}]},
    ]
    request = {"model": "gpt-4o", "input": "What is my name?"}
    out = responses_request(request, OPTIONS, previous).anthropic
    assert out["messages"] == [*previous, {"role": "user", "content": "What is my name?"}]


def test_store_and_echo_fields() -> None:
    rewritten = responses_request(
        {"model": "gpt-4o", "input": "hi", "store": False, "stream": True, "metadata": {"k": "v"}},
        OPTIONS,
    )
    assert rewritten.store is False
    assert rewritten.stream is True
    assert rewritten.echo["metadata"] == {"k": "v"}
    assert rewritten.echo["tool_choice"] == "auto"
    assert rewritten.echo["parallel_tool_calls"] is True


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "gpt-4o"}, "input"),
        ({"model": "gpt-4o", "input": 3}, "input"),
        ({"model": "gpt-4o", "input": [3]}, "input.0"),
        ({"model": "gpt-4o", "input": [{"type": 3}]}, "input.0.type"),
        ({"model": "gpt-4o", "input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
        (
            {"model": "gpt-4o", "input": [{"type": "function_call", "name": "f"}]},
            "input.0.call_id",
        ),
        (
            {
                "model": "gpt-4o",
                "input": [{"type": "function_call_output", "call_id": "c", "output": 5}],
            },
            "input.0.output",
        ),
        ({"model": "gpt-4o", "input": "hi", "instructions": ["x"]}, "instructions"),
        ({"model": "gpt-4o", "input": "hi", "reasoning": "high"}, "reasoning"),
        ({"model": "gpt-4o", "input": "hi", "reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"model": "gpt-4o", "input": "hi", "store": "no"}, "store"),
    ],
)
def test_bad_responses_input_names_the_field(request_fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        responses_request(request_fields, OPTIONS)
    assert field in info.value.message
