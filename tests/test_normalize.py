"""The normaliser's rules (kiro-api.md §4.6, §5.3, §5.5, §5.6), one or more tests per code.

Inputs are the normaliser's own form (turns and tool specs); every expected value is
written by hand from the spec.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiro_fast import normalize as nz
from kiro_fast.errors import ContextTooLong, InvalidRequest
from kiro_fast.normalize import (
    ASSISTANT,
    USER,
    Fixes,
    Image,
    Limits,
    ToolResult,
    ToolSpec,
    ToolUse,
    Turn,
)

LIMITS = Limits()
#: a 1x1 PNG
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def u(text: str = "", **kw: Any) -> Turn:
    return Turn(USER, text, **kw)


def a(text: str = "", **kw: Any) -> Turn:
    return Turn(ASSISTANT, text, **kw)


def use(use_id: str, name: str = "get_weather") -> ToolUse:
    return ToolUse(use_id, name, {"city": "Paris"})


def result(use_id: str, text: str = "18C", is_error: bool = False) -> ToolResult:
    return ToolResult(use_id, text, is_error)


def run(turns: list[Turn], limits: Limits = LIMITS) -> tuple[list[Turn], Turn, list[str]]:
    fixes = Fixes()
    history, current = nz.normalize_turns(turns, limits, fixes)
    return history, current, fixes.codes


def shape(turns: list[Turn]) -> list[tuple[str, str]]:
    return [(turn.role, turn.text) for turn in turns]


# --------------------------------------------------------------------------- turns


def test_clean_conversation_is_untouched() -> None:
    history, current, codes = run([u("What is 2+2?"), a("4"), u("And 3+3?")])
    assert shape(history) == [(USER, "What is 2+2?"), (ASSISTANT, "4")]
    assert (current.role, current.text) == (USER, "And 3+3?")
    assert codes == []


def test_trailing_assistant_prefill_is_dropped() -> None:
    history, current, codes = run([u("Hi"), a("Once upon"), a("a time")])
    assert history == []
    assert current.text == "Hi"
    assert codes == [nz.DROPPED_TRAILING_PREFILL]


def test_only_assistant_messages_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="messages: must contain a user message"):
        run([a("prefill")])


def test_consecutive_user_turns_are_merged() -> None:
    first = u("part one", images=[Image("image/png", PNG)], tool_results=[])
    second = u("part two", images=[Image("image/jpeg", PNG)])
    history, current, codes = run([first, second, a("ok"), u("next")])
    assert shape(history) == [(USER, "part one\npart two"), (ASSISTANT, "ok")]
    assert [image.format for image in history[0].images] == ["png", "jpeg"]
    assert codes == [nz.MERGED_CONSECUTIVE_USER]


def test_consecutive_assistant_turns_are_merged_with_blank_ones_skipped() -> None:
    turns = [
        u("go"),
        a("first", tool_uses=[use("t1")]),
        a("   "),
        a("second", tool_uses=[use("t2")]),
        u(tool_results=[result("t1"), result("t2")]),
    ]
    history, current, codes = run(turns)
    assert shape(history) == [(USER, "go"), (ASSISTANT, "first\n\nsecond")]
    assert [tool.id for tool in history[1].tool_uses] == ["t1", "t2"]
    assert [r.tool_use_id for r in current.tool_results] == ["t1", "t2"]
    assert codes == [nz.MERGED_CONSECUTIVE_ASSISTANT]


def test_history_starting_with_assistant_gets_a_user_first() -> None:
    history, current, codes = run([a("Hello, how can I help?"), u("Explain X")])
    assert shape(history) == [(USER, "(empty)"), (ASSISTANT, "Hello, how can I help?")]
    assert codes == [nz.INSERTED_LEADING_USER]


def test_user_run_before_current_gets_a_synthetic_assistant() -> None:
    history, current, codes = run([u("one"), u("two")])
    assert shape(history) == [(USER, "one"), (ASSISTANT, "OK")]
    assert current.text == "two"
    assert codes == [nz.INSERTED_SYNTHETIC_ASSISTANT]


@given(st.lists(st.sampled_from([USER, ASSISTANT]), min_size=1, max_size=12))
def test_any_role_sequence_alternates_after_normalising(roles: list[str]) -> None:
    if USER not in roles:
        return
    turns = [Turn(role, f"m{i}") for i, role in enumerate(roles)]
    history, current, _ = run(turns)
    assert current.role == USER
    expected = [USER if i % 2 == 0 else ASSISTANT for i in range(len(history))]
    assert [turn.role for turn in history] == expected
    assert len(history) % 2 == 0


# --------------------------------------------------------------------------- pairing


def test_unanswered_tool_use_is_removed() -> None:
    turns = [
        u("go"),
        a("calling", tool_uses=[use("t1"), use("t2")]),
        u(tool_results=[result("t1")]),
    ]
    history, current, codes = run(turns)
    assert [tool.id for tool in history[1].tool_uses] == ["t1"]
    assert codes == [nz.REMOVED_ORPHAN_TOOL_USE]


def test_tool_use_answered_only_later_is_removed_and_late_result_becomes_text() -> None:
    turns = [
        u("go"),
        a("calling", tool_uses=[use("t1")]),
        u("no answer here"),
        a("hmm"),
        u(tool_results=[result("t1", "late")]),
    ]
    history, current, codes = run(turns)
    assert history[1].tool_uses == []
    assert current.tool_results == []
    assert current.text == "[Result of tool call t1]\nlate"
    assert codes == [nz.REMOVED_ORPHAN_TOOL_USE, nz.ORPHAN_TOOL_RESULT_TO_TEXT]


def test_duplicate_tool_use_id_is_removed() -> None:
    turns = [
        u("go"),
        a("one", tool_uses=[use("t1")]),
        u(tool_results=[result("t1")]),
        a("again", tool_uses=[use("t1")]),
        u("next"),
    ]
    history, current, codes = run(turns)
    assert [tool.id for tool in history[1].tool_uses] == ["t1"]
    assert history[3].tool_uses == []
    assert codes == [nz.REMOVED_DUPLICATE_TOOL_USE]


def test_orphan_tool_result_becomes_text_with_error_marker() -> None:
    turns = [u("go"), a("done"), u("see", tool_results=[result("ghost", "boom", is_error=True)])]
    history, current, codes = run(turns)
    assert current.tool_results == []
    assert current.text == "see\n[Error result of tool call ghost]\nboom"
    assert codes == [nz.ORPHAN_TOOL_RESULT_TO_TEXT]


def test_duplicate_tool_result_is_removed() -> None:
    turns = [
        u("go"),
        a("calling", tool_uses=[use("t1")]),
        u(tool_results=[result("t1", "first"), result("t1", "second")]),
    ]
    history, current, codes = run(turns)
    assert [(r.tool_use_id, r.text) for r in current.tool_results] == [("t1", "first")]
    assert codes == [nz.REMOVED_DUPLICATE_TOOL_RESULT]


def test_result_repeated_in_a_later_turn_is_removed() -> None:
    turns = [
        u("go"),
        a("calling", tool_uses=[use("t1")]),
        u(tool_results=[result("t1")]),
        a("thanks"),
        u("more", tool_results=[result("t1")]),
    ]
    _, current, codes = run(turns)
    assert current.tool_results == []
    assert current.text == "more"
    assert codes == [nz.REMOVED_DUPLICATE_TOOL_RESULT]


def test_empty_tool_result_is_filled() -> None:
    turns = [u("go"), a("", tool_uses=[use("t1")]), u(tool_results=[result("t1", "  ")])]
    _, current, codes = run(turns)
    assert current.tool_results[0].text == "(no output)"
    assert nz.FILLED_EMPTY_TOOL_RESULT in codes


def test_huge_tool_result_is_truncated() -> None:
    turns = [u("go"), a("x", tool_uses=[use("t1")]), u(tool_results=[result("t1", "a" * 30)])]
    _, current, codes = run(turns, Limits(max_tool_result_chars=10))
    assert current.tool_results[0].text == "a" * 10 + "\n[... 20 characters truncated ...]"
    assert codes == [nz.TRUNCATED_TOOL_RESULT]


# --------------------------------------------------------------------------- empty texts


def test_assistant_with_only_tool_uses_gets_a_space() -> None:
    turns = [u("go"), a("", tool_uses=[use("t1")]), u(tool_results=[result("t1")])]
    history, current, codes = run(turns)
    assert history[1].text == " "
    assert current.text == ""  # an empty current message is fine next to tool results
    assert codes == [nz.FILLED_EMPTY_ASSISTANT]


def test_history_user_with_only_tool_results_stays_empty() -> None:
    turns = [
        u("go"),
        a("x", tool_uses=[use("t1")]),
        u(tool_results=[result("t1")]),
        a("done"),
        u("thanks"),
    ]
    history, _, codes = run(turns)
    assert history[2].text == ""
    assert codes == []


def test_empty_current_message_gets_a_placeholder() -> None:
    history, current, codes = run([u("hello"), a("hi"), u("  ")])
    assert current.text == "Continue"
    assert codes == [nz.FILLED_EMPTY_CURRENT_MESSAGE]


# --------------------------------------------------------------------------- images


def test_supported_images_get_their_format_and_lose_a_data_url_prefix() -> None:
    images = [
        Image("image/jpg", PNG),
        Image("IMAGE/WEBP", PNG),
        Image("image/gif", "data:image/gif;base64," + PNG),
    ]
    _, current, codes = run([u("look", images=images)])
    assert [(i.format, i.data) for i in current.images] == [
        ("jpeg", PNG),
        ("webp", PNG),
        ("gif", PNG),
    ]
    assert codes == []


@pytest.mark.parametrize(
    ("image", "code", "note"),
    [
        (
            Image("", reference="https://example.com/cat.png"),
            nz.DROPPED_URL_IMAGE,
            "[image omitted: only inline base64 images can be forwarded]",
        ),
        (
            Image("image/bmp", PNG),
            nz.DROPPED_UNSUPPORTED_IMAGE_FORMAT,
            "[image omitted: unsupported type 'image/bmp']",
        ),
        (Image("image/png", ""), nz.DROPPED_EMPTY_IMAGE, "[image omitted: no image data]"),
        (
            Image("image/png", "A" * 16),  # 16 base64 chars = 12 bytes
            nz.DROPPED_OVERSIZED_IMAGE,
            "[image omitted: 12 bytes > 8 bytes]",
        ),
    ],
)
def test_unusable_images_are_dropped_with_a_note(image: Image, code: str, note: str) -> None:
    _, current, codes = run([u("look", images=[image])], Limits(max_image_bytes=8))
    assert current.images == []
    assert current.text == f"look\n{note}"
    assert codes == [code]


def test_images_over_the_count_limit_drop_the_oldest() -> None:
    old = [Image("image/png", f"{i}" * 8) for i in range(2)]
    new = [Image("image/png", f"{i}" * 8) for i in range(2, 5)]
    history, current, codes = run(
        [u("old", images=old), a("seen"), u("new", images=new)], Limits(max_images=3)
    )
    assert history[0].images == []
    assert history[0].text == "old\n[2 image(s) omitted: at most 3 per request]"
    assert [i.data for i in current.images] == ["22222222", "33333333", "44444444"]
    assert codes == [nz.DROPPED_EXCESS_IMAGES]


def test_decoded_base64_size() -> None:
    assert nz.decoded_base64_size("") == 0
    assert nz.decoded_base64_size("QQ==") == 1
    assert nz.decoded_base64_size("QUI=") == 2
    assert nz.decoded_base64_size("QUJD") == 3


# --------------------------------------------------------------------------- sizes


def test_oversized_user_message_is_context_too_long() -> None:
    fixes = Fixes()
    with pytest.raises(ContextTooLong) as caught:
        nz.check_user_texts(["short", "ab " * 1334], Limits(max_user_content_chars=1000), fixes)
    assert fixes.codes == [nz.REJECTED_OVERSIZED_MESSAGE]
    # 1334 words x 1.04 = 1387.36 -> 1387 tokens over 4002 chars; the maximum scales with
    # the limit: 1387 * 1000 // 4002 = 346
    assert caught.value.message.startswith("prompt is too long: 1387 tokens > 346 maximum")
    # the wording Claude Code's CLI parses to size its compaction (its regex, verbatim)
    assert re.search(r"prompt is too long[^0-9]*(\d+)\s*tokens?\s*>\s*(\d+)", caught.value.message)
    assert caught.value.status == 400
    assert caught.value.error_type == "invalid_request_error"


def test_body_over_the_byte_cap_is_context_too_long() -> None:
    fixes = Fixes()
    body = {"text": "a" * 1000}
    with pytest.raises(ContextTooLong) as caught:
        nz.encode_body(body, Limits(max_body_bytes=503 + nz.BODY_RESERVE_BYTES), fixes, tokens=2012)
    # {"text":"a...a"} is 1 + 6 + 1 + 1002 + 1 = 1011 bytes; 2012 * 503 // 1011 = 1001
    assert caught.value.message == (
        "prompt is too long: 2012 tokens > 1001 maximum "
        "(upstream request bytes: 1011, the upstream accepts 503)"
    )
    assert fixes.codes == [nz.REJECTED_OVERSIZED_BODY]


def test_body_under_the_cap_is_returned_encoded() -> None:
    assert nz.encode_body({"a": [1, "é"]}, LIMITS, Fixes(), tokens=1) == '{"a":[1,"é"]}'.encode()


def test_unencodable_body_is_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="cannot be encoded as JSON"):
        nz.encode_body({"input": {"n": 2**70}}, LIMITS, Fixes(), tokens=1)


# --------------------------------------------------------------------------- tools


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def tools_of(
    specs: list[ToolSpec],
    turns: Sequence[Turn] = (),
    limits: Limits = LIMITS,
) -> tuple[nz.NormalizedTools, list[str]]:
    fixes = Fixes()
    out = nz.normalize_tools(list(specs), list(turns), limits, fixes)
    return out, fixes.codes


def spec_of(out: nz.NormalizedTools, index: int = 0) -> dict[str, Any]:
    return out.specs[index]["toolSpecification"]  # type: ignore[no-any-return]


def test_clean_tool_gets_kiro_rs_schema_canonicalisation() -> None:
    out, codes = tools_of([ToolSpec("get_weather", "Get the weather for a city", WEATHER)])
    assert out.specs == [
        {
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
    ]
    assert out.documentation == ""
    assert out.names == {}
    assert codes == []


def test_duplicate_tool_names_keep_the_first_case_insensitively() -> None:
    out, codes = tools_of([ToolSpec("Read", "first", WEATHER), ToolSpec("read", "second", WEATHER)])
    assert [spec["toolSpecification"]["description"] for spec in out.specs] == ["first"]
    assert codes == [nz.REMOVED_DUPLICATE_TOOL]


def test_tool_used_in_history_but_not_declared_gets_a_placeholder() -> None:
    turns = [a("x", tool_uses=[use("t1", "lookup")])]
    out, codes = tools_of([ToolSpec("get_weather", "Weather", WEATHER)], turns)
    assert spec_of(out, 1) == {
        "name": "lookup",
        "description": "Tool used in conversation history",
        "inputSchema": {
            "json": {
                "type": "object",
                "properties": {},
                "required": [],
                "additionalProperties": True,
            }
        },
    }
    assert codes == [nz.ADDED_PLACEHOLDER_TOOL]


def test_history_tool_matching_a_declared_one_ignoring_case_needs_no_placeholder() -> None:
    turns = [a("x", tool_uses=[use("t1", "READ")])]
    out, codes = tools_of([ToolSpec("Read", "Reads files", WEATHER)], turns)
    assert len(out.specs) == 1
    assert turns[0].tool_uses[0].name == "Read"
    assert codes == []


def sha8(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def test_long_tool_name_is_shortened_deterministically_with_a_reverse_map() -> None:
    long_name = "mcp__claude_ai_Atlassian_Rovo__getConfluencePageDescendantsWithContent"
    assert len(long_name) == 70
    short = "mcp__claude_ai_Atlassian_Rovo__getConfluencePageDescen_" + sha8(long_name)
    assert len(short) == 63
    turns = [a("x", tool_uses=[use("t1", long_name)])]
    out, codes = tools_of([ToolSpec(long_name, "Pages", WEATHER)], turns)
    assert spec_of(out)["name"] == short
    assert turns[0].tool_uses[0].name == short
    assert out.names == {short: long_name}
    assert codes == [nz.SHORTENED_TOOL_NAME]
    assert nz.upstream_tool_name(long_name) == short


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("my.tool", "my_tool"),
        ("get weather", "get_weather"),
        ("9lives", "t9lives"),
        ("_private", "t_private"),
        ("outil_météo", "outil_m_t_o"),
    ],
)
def test_tool_name_with_invalid_characters_is_sanitised(name: str, prefix: str) -> None:
    out, codes = tools_of([ToolSpec(name, "d", WEATHER)])
    assert spec_of(out)["name"] == f"{prefix}_{sha8(name)}"
    assert out.names == {f"{prefix}_{sha8(name)}": name}
    assert codes == [nz.SANITIZED_TOOL_NAME]


def test_valid_names_pass_unchanged() -> None:
    for name in ("Bash", "mcp__github__create_pull_request", "my-tool", "a" * 63):
        assert nz.upstream_tool_name(name) == name


def test_empty_tool_description_is_filled() -> None:
    out, codes = tools_of([ToolSpec("lookup", "  ", WEATHER)])
    assert spec_of(out)["description"] == "Tool: lookup"
    assert codes == [nz.FILLED_EMPTY_TOOL_DESCRIPTION]


def test_long_tool_description_moves_to_the_system_prompt() -> None:
    out, codes = tools_of(
        [ToolSpec("Bash", "Runs commands. " * 3, WEATHER), ToolSpec("Read", "short", WEATHER)],
        limits=Limits(max_tool_description_chars=20),
    )
    assert spec_of(out)["description"] == (
        "Full documentation: see the section '## Tool: Bash' in the system prompt."
    )
    assert spec_of(out, 1)["description"] == "short"
    assert out.documentation == (
        "# Tool documentation\n\n## Tool: Bash\n\nRuns commands. Runs commands. Runs commands. "
    )
    assert codes == [nz.MOVED_LONG_TOOL_DESCRIPTION]


# --------------------------------------------------------------------------- schemas


def fix_schema(schema: Any, strip: bool = False) -> tuple[dict[str, Any], list[str]]:
    fixes = Fixes()
    return nz.normalize_schema(
        schema, strip_keywords=strip, fixes=fixes, path="tools.0"
    ), fixes.codes


@pytest.mark.parametrize("schema", [None, "object", [], 5])
def test_non_object_schema_becomes_the_empty_object_schema(schema: Any) -> None:
    assert fix_schema(schema) == (
        {"type": "object", "properties": {}, "required": [], "additionalProperties": True},
        [nz.FIXED_SCHEMA_NOT_OBJECT],
    )


def test_schema_without_root_type_gets_object() -> None:
    assert fix_schema({"properties": {"q": {"type": "string"}}}) == (
        {
            "properties": {"q": {"type": "string"}},
            "type": "object",
            "required": [],
            "additionalProperties": True,
        },
        [nz.FIXED_SCHEMA_ROOT_TYPE],
    )


def test_null_required_and_properties_are_fixed_at_every_level() -> None:
    schema = {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": None, "required": None}},
        "required": None,
    }
    fixed, codes = fix_schema(schema)
    assert fixed == {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": {}, "required": []}},
        "required": [],
        "additionalProperties": True,
    }
    assert codes == [nz.FIXED_SCHEMA_PROPERTIES, nz.FIXED_SCHEMA_REQUIRED]


def test_required_keeps_only_strings() -> None:
    fixed, codes = fix_schema({"type": "object", "properties": {}, "required": ["a", 1, None]})
    assert fixed["required"] == ["a"]
    assert codes == [nz.FIXED_SCHEMA_REQUIRED]


def test_non_string_types_are_fixed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "maybe": {"type": ["string", "null"], "description": "optional text"},
            "single": {"type": ["integer"]},
            "odd": {"type": 5, "description": "kept without a type"},
            "both": {"type": ["number", "null"], "anyOf": [{"minimum": 0}]},
        },
    }
    fixed, codes = fix_schema(schema)
    assert fixed["properties"] == {
        "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "optional text"},
        "single": {"type": "integer"},
        "odd": {"description": "kept without a type"},
        "both": {"type": "number", "anyOf": [{"minimum": 0}]},
    }
    assert codes == [nz.FIXED_SCHEMA_TYPE]


def test_schema_keywords_are_kept_by_default_and_property_names_are_not_keywords() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["a", "b"]},
            "required": {"type": "boolean"},
            "env": {"type": "object", "propertyNames": {"pattern": "^[A-Z]+$"}},
        },
        "required": ["type"],
        "additionalProperties": False,
    }
    fixed, codes = fix_schema(schema)
    assert fixed == schema
    assert codes == []


def test_strip_flag_removes_2020_12_and_annotation_keywords_everywhere() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "env": {
                "type": "object",
                "propertyNames": {"pattern": "^[A-Z]+$"},
                "additionalProperties": {"type": "string"},
            },
            "items": {"type": "array", "items": {"type": "object", "additionalProperties": False}},
        },
        "required": ["env"],
        "additionalProperties": False,
    }
    fixed, codes = fix_schema(schema, strip=True)
    assert fixed == {
        "type": "object",
        "properties": {
            "env": {"type": "object"},
            "items": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["env"],
    }
    assert codes == [nz.STRIPPED_SCHEMA_KEYWORDS]


def test_objects_under_unknown_keywords_are_repaired_but_data_keywords_are_not() -> None:
    schema = {
        "type": "object",
        "properties": {},
        "x-ui": {"type": ["string", "null"]},
        "default": {"type": ["a"]},
        "enum": [{"required": None}],
    }
    fixed, codes = fix_schema(schema)
    assert fixed["x-ui"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert fixed["default"] == {"type": ["a"]}
    assert fixed["enum"] == [{"required": None}]
    assert codes == [nz.FIXED_SCHEMA_TYPE]


def test_unevaluated_properties_suppresses_the_additional_properties_default() -> None:
    fixed, _ = fix_schema({"type": "object", "properties": {}, "unevaluatedProperties": False})
    assert "additionalProperties" not in fixed


def test_absurdly_deep_schema_is_invalid_request() -> None:
    schema: dict[str, Any] = {"type": "object"}
    node = schema
    for _ in range(100):
        node["properties"] = {"x": {"type": "object"}}
        node = node["properties"]["x"]
    with pytest.raises(InvalidRequest, match="tools.0: nested deeper than 64 levels"):
        fix_schema(schema)


# --------------------------------------------------------------------------- bookkeeping


def test_fixes_records_each_code_once_and_counts_requests() -> None:
    before = nz.RULE_HITS[nz.MERGED_CONSECUTIVE_USER]
    run([u("a"), u("b"), u("c"), a("x"), u("d")])
    assert nz.RULE_HITS[nz.MERGED_CONSECUTIVE_USER] == before + 1
    quiet = Fixes(count=False)
    nz.normalize_turns([u("a"), u("b"), a("x"), u("d")], LIMITS, quiet)
    assert quiet.codes == [nz.MERGED_CONSECUTIVE_USER]
    assert nz.RULE_HITS[nz.MERGED_CONSECUTIVE_USER] == before + 1


def test_fired_rules_are_logged_at_debug_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="kiro_fast.normalize"):
        nz.normalize_turns([u("a"), a("x"), a("y"), u("b")], LIMITS, Fixes("req-42"))
    records = [r for r in caplog.records if r.name == "kiro_fast.normalize"]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert "req-42" in records[0].getMessage()
    assert nz.MERGED_CONSECUTIVE_ASSISTANT in records[0].getMessage()


def test_reason_code_registry_is_complete_and_stable() -> None:
    constants = {
        value
        for name, value in vars(nz).items()
        if name.isupper() and isinstance(value, str) and value == name
    }
    assert constants == nz.ALL_REASON_CODES
    assert len(nz.ALL_REASON_CODES) == 47
