"""Fuzzing the request converters: schema-shaped random bodies in, a valid body or a 400 out.

The property (issue 9): for any body a client can send to ``/v1/messages``, the path
``app.parse_json_object`` → ``convert.anthropic_to_kiro`` either raises a 4xx
:class:`~kiro_fast.errors.InvalidRequest` (``ContextTooLong`` included) or returns a body
the fake upstream's independent validator (:func:`kiro_fast.testing.validate_request`)
accepts, with ``body_json`` the encoding of ``body``. Nothing else may escape: a
``KeyError``, ``TypeError`` or ``RecursionError`` would be a 500 for the client.
``count_tokens`` obeys the same rule.

The strategies build bodies shaped like the Messages schema, so most examples get past
the type checks and reach the normaliser: every block kind (text, image, tool_use,
tool_result, thinking, redacted_thinking, document, server-tool blocks, unknown kinds),
misplaced blocks, roles in any order (system, developer, junk), tool ids from a small pool
so uses and results pair up sometimes, tools with odd names and odd JSON schemas, image
sources of every kind, thinking and output configs, billing-header system blocks, empty
and huge strings, and any Unicode. A fraction of the values are replaced by wrong types.
Bodies are then encoded as JSON in one of three ways, one of which escapes everything
(``\\ud83d\\ude00`` surrogate pairs, lone surrogates) and one writes lone surrogates raw
(invalid UTF-8): those must become a clean 400 at the JSON parser.

:func:`check_anthropic_body` and :func:`check_openai_body` are the oracles
``bench/fuzz.py convert`` runs on millions of cases. Examples are derandomized;
``KIRO_FAST_FUZZ_EXAMPLES`` raises the count for a deeper local run.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import string
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiro_fast.app import parse_json_object
from kiro_fast.convert import ConvertOptions, anthropic_to_kiro, count_tokens
from kiro_fast.errors import InvalidRequest, KiroFastError
from kiro_fast.testing import validate_request

EXAMPLES = int(os.environ.get("KIRO_FAST_FUZZ_EXAMPLES", "250"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: The option sets a deployment can choose; each must keep the property.
OPTION_SETS = (
    ConvertOptions(),
    ConvertOptions(strip_schema_keywords=True, write_guidance=False),
    ConvertOptions(
        max_images=2,
        max_image_bytes=1_000,
        max_tool_result_chars=2_000,
        max_user_content_chars=5_000,
    ),
    ConvertOptions(max_body_bytes=20_000, structured_output_instruction=False),
)

OPENAI_CONVERT_SPEC = importlib.util.find_spec("kiro_fast.openai_convert")


# --------------------------------------------------------------------------- oracles


class PropertyViolation(AssertionError):
    """The converter broke the property; the message says how."""


def check_anthropic_body(
    raw: bytes, options: ConvertOptions = OPTION_SETS[0], session_id: str = ""
) -> str:
    """Run one raw /v1/messages body through the app's parser and the converter.

    Returns ``"ok"`` or ``"400"``; raises :class:`PropertyViolation` (or lets a foreign
    exception escape) when the property does not hold.
    """
    try:
        payload = parse_json_object(raw)
    except KiroFastError as exc:
        return _client_error(exc)
    return check_anthropic_payload(payload, options, session_id)


def check_anthropic_payload(
    payload: Any, options: ConvertOptions = OPTION_SETS[0], session_id: str = ""
) -> str:
    """The property for an already parsed body (also what the OpenAI front end hands on)."""
    try:
        tokens = count_tokens(payload, options)
    except KiroFastError as exc:
        _client_error(exc)
    else:
        if not isinstance(tokens, int) or tokens < 0:
            raise PropertyViolation(f"count_tokens returned {tokens!r}")
    try:
        converted = anthropic_to_kiro(payload, options, request_id="fuzz", session_id=session_id)
    except KiroFastError as exc:
        return _client_error(exc)
    if converted.body_json != orjson.dumps(converted.body):
        raise PropertyViolation("body_json is not the encoding of body")
    failure = validate_request(converted.body)
    if failure is not None:
        raise PropertyViolation(f"the fake upstream rejects the converted body: {failure}")
    return "ok"


def check_openai_body(raw: bytes, route: str, options: ConvertOptions = OPTION_SETS[0]) -> str:
    """An OpenAI body (``route``: ``chat`` or ``responses``) through
    ``kiro_fast.openai_convert``, then on through the Anthropic converter."""
    from kiro_fast import openai_convert  # noqa: PLC0415 - optional until issue 7 lands

    try:
        payload = parse_json_object(raw)
        if route == "chat":
            anthropic = openai_convert.chat_request(payload, options).anthropic
        else:
            anthropic = openai_convert.responses_request(payload, options).anthropic
    except KiroFastError as exc:
        return _client_error(exc)
    return check_anthropic_payload(anthropic, options)


def _client_error(exc: KiroFastError) -> str:
    if not isinstance(exc, InvalidRequest) or not 400 <= exc.status < 500:
        raise PropertyViolation(f"{type(exc).__name__} ({exc.status}) is not a clean 400: {exc}")
    if not exc.message:
        raise PropertyViolation(f"{type(exc).__name__} without a message")
    return "400"


# --------------------------------------------------------------------------- leaves

PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
#: sizes around the converter's and the validator's limits (600,000 chars / bytes)
HUGE_SIZES = [0, 1, 9_999, 10_001, 70_000, 599_999, 600_001, 800_001]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Pick a strategy with the given weights (``st.one_of`` flattens nested ``one_of``s,
    so repeating a branch there does not weigh it); shrinks towards the first choice."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]

    def choose(index: int) -> st.SearchStrategy[Any]:
        return table[index]

    return st.integers(0, len(table) - 1).flatmap(choose)


#: a value of any JSON type; one branch (``weighted`` is not flattened into a ``one_of``)
WRONG = weighted(
    (1, st.none()),
    (1, st.booleans()),
    (1, st.integers(-(2**64), 2**64)),
    (1, st.floats(allow_nan=False)),
    (1, st.text(max_size=4)),
    (1, st.lists(st.integers(), max_size=2)),
    (1, st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
)


def maybe_wrong(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes anything: with a dozen fields a body, a higher
    rate would make nearly every body a 400 at the first type check."""
    return weighted((40, strategy), (1, WRONG))


#: any code point, with lone surrogates (which hypothesis otherwise leaves out) common
ANY_TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=()),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
    ),
    max_size=12,
)
PLAIN_TEXT = st.text(max_size=16)
HUGE_TEXT = st.builds(
    lambda char, size: char * size,
    st.sampled_from(["a", "é", "日", "😀", " ", "\n"]),
    st.sampled_from(HUGE_SIZES),
)
TEXT = weighted((6, PLAIN_TEXT), (2, ANY_TEXT), (1, st.just("")), (1, HUGE_TEXT))
DIRECTIVES = st.sampled_from(
    ["<thinking>x</thinking>", "</thinking>", "<thinking_mode>enabled</thinking_mode>"]
)


def block(kind: str, required: dict[str, Any], optional: dict[str, Any] | None = None) -> Any:
    fields = {"type": st.just(kind), **{k: maybe_wrong(v) for k, v in required.items()}}
    return st.fixed_dictionaries(fields, optional=optional or {})


CACHE = {"cache_control": st.just({"type": "ephemeral"}), "citations": WRONG}
TOOL_IDS = st.sampled_from(["toolu_1", "toolu_2", "toolu_3", "", "tooluse_ü", "t" * 300])
TOOL_NAMES = st.one_of(
    st.sampled_from(
        [
            "get_weather",
            "Read",
            "read",
            "Write",
            "Edit",
            "mcp__server__do.thing",
            "bad name!",
            "9lives",
            "x" * 63,
            "y" * 64,
            "mcp__" + "z" * 120,
            "日本語",
            "-",
            "_",
        ]
    ),
    st.text(max_size=10),
)

MEDIA_TYPES = st.sampled_from(
    ["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/svg+xml", "", "png"]
)
IMAGE_DATA = st.one_of(
    st.just(PNG),
    st.just("data:image/png;base64," + PNG),
    st.just("not base64 at all!"),
    st.just(""),
    st.just("QUFB" * 600),  # 1,800 bytes: over OPTION_SETS[2]'s image cap
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
)
SOURCE = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("base64"), "media_type": maybe_wrong(MEDIA_TYPES), "data": IMAGE_DATA}
    ),
    st.fixed_dictionaries({"type": st.just("url"), "url": maybe_wrong(st.just("https://x/y.png"))}),
    st.fixed_dictionaries({"type": st.just("file"), "file_id": maybe_wrong(st.just("file_1"))}),
    st.fixed_dictionaries({"type": maybe_wrong(st.sampled_from(["text", "content", "bogus"]))}),
)
IMAGE = block("image", {"source": SOURCE}, CACHE)
TEXT_BLOCK = block("text", {"text": TEXT}, CACHE)

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    PLAIN_TEXT,
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PLAIN_TEXT, inner, max_size=3),
    max_leaves=12,
)
DEEP = st.builds(
    lambda depth, kind: orjson.loads(
        ("[" * depth + "]" * depth) if kind else '{"a":' * depth + "1" + "}" * depth
    ),
    st.sampled_from([63, 65, 200, 256, 300, 700]),
    st.booleans(),
)
TOOL_INPUT = st.one_of(st.dictionaries(PLAIN_TEXT, JSON_VALUE, max_size=4), st.none(), DEEP)

TOOL_USE = block("tool_use", {"id": TOOL_IDS, "name": TOOL_NAMES, "input": TOOL_INPUT}, CACHE)
RESULT_CONTENT = st.one_of(
    st.none(),
    TEXT,
    st.lists(st.one_of(TEXT_BLOCK, IMAGE, block("document", {})), max_size=3),
    JSON_VALUE,
    DEEP,
)
TOOL_RESULT = block(
    "tool_result",
    {"tool_use_id": TOOL_IDS, "content": RESULT_CONTENT},
    {"is_error": maybe_wrong(st.booleans()), **CACHE},
)
THINKING = block(
    "thinking", {"thinking": st.one_of(TEXT, DIRECTIVES)}, {"signature": maybe_wrong(PLAIN_TEXT)}
)
OTHER_BLOCKS = maybe_wrong(
    st.one_of(
        block("redacted_thinking", {"data": PLAIN_TEXT}),
        block("document", {"source": SOURCE}),
        block(
            "server_tool_use", {"id": TOOL_IDS, "name": st.just("web_search"), "input": TOOL_INPUT}
        ),
        block("web_search_tool_result", {"tool_use_id": TOOL_IDS, "content": JSON_VALUE}),
        block("mcp_tool_use", {"id": TOOL_IDS, "name": TOOL_NAMES}),
        block("container_upload", {"file_id": PLAIN_TEXT}),
        st.fixed_dictionaries({"type": st.text(max_size=20)}),
        st.fixed_dictionaries({"text": PLAIN_TEXT}),  # no type
    )
)
BLOCK = weighted(
    (3, TEXT_BLOCK), (1, IMAGE), (2, TOOL_USE), (2, TOOL_RESULT), (1, THINKING), (1, OTHER_BLOCKS)
)
ROLES = weighted(
    (8, st.sampled_from(["user", "user", "assistant", "assistant", "system", "developer"])),
    (1, maybe_wrong(st.text(max_size=8))),
)
MESSAGE = st.fixed_dictionaries(
    {"role": ROLES, "content": maybe_wrong(st.one_of(TEXT, st.lists(BLOCK, max_size=5)))},
    optional={"name": PLAIN_TEXT, "id": PLAIN_TEXT},
)

# --------------------------------------------------------------------------- schemas

SCHEMA_TYPES = maybe_wrong(
    st.one_of(
        st.sampled_from(
            ["object", "string", "array", "integer", "number", "boolean", "null", "any", ""]
        ),
        st.lists(st.sampled_from(["string", "null", "object", "int"]), max_size=3),
    )
)
PROPERTY_NAMES = st.one_of(st.sampled_from(["a", "path", "$ref", "type", ""]), PLAIN_TEXT)


def schema_node(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {},
        optional={
            "type": SCHEMA_TYPES,
            "description": maybe_wrong(TEXT),
            "properties": maybe_wrong(st.dictionaries(PROPERTY_NAMES, children, max_size=3)),
            "required": maybe_wrong(st.lists(PROPERTY_NAMES, max_size=3)),
            "items": st.one_of(children, st.lists(children, max_size=2)),
            "additionalProperties": st.one_of(st.booleans(), children),
            "anyOf": st.lists(children, max_size=3),
            "oneOf": maybe_wrong(st.lists(children, max_size=2)),
            "allOf": st.lists(children, max_size=2),
            "not": children,
            "$ref": maybe_wrong(st.just("#/$defs/x")),
            "$defs": st.dictionaries(PROPERTY_NAMES, children, max_size=2),
            "definitions": WRONG,
            "$schema": st.just("http://json-schema.org/draft-07/schema#"),
            "enum": st.lists(JSON_LEAF, max_size=3),
            "const": JSON_VALUE,
            "default": JSON_VALUE,
            "format": st.sampled_from(["uri", "date-time", "email", "junk"]),
            "pattern": st.sampled_from(["^a+$", "(", ""]),
            "minLength": WRONG,
            "examples": JSON_VALUE,
        },
    )


SCHEMA_LEAF = maybe_wrong(
    st.one_of(
        st.fixed_dictionaries(
            {}, optional={"type": SCHEMA_TYPES, "description": PLAIN_TEXT, "enum": WRONG}
        ),
    )
)
SCHEMA = st.recursive(SCHEMA_LEAF, schema_node, max_leaves=10)
TOOL_TYPES = st.sampled_from(
    [
        None,
        "custom",
        "web_search_20250305",
        "bash_20250124",
        "text_editor_20250429",
        "computer_20250124",
        "x",
    ]
)
TOOL = maybe_wrong(
    st.one_of(
        st.fixed_dictionaries(
            {"name": maybe_wrong(TOOL_NAMES)},
            optional={
                "type": maybe_wrong(TOOL_TYPES),
                "description": maybe_wrong(st.one_of(TEXT, st.none())),
                "input_schema": st.one_of(SCHEMA, DEEP),
                "cache_control": WRONG,
            },
        ),
        st.just({"type": "web_search_20250305", "name": "web_search", "max_uses": 5}),
    )
)

# --------------------------------------------------------------------------- top level

MODELS = weighted(
    (
        40,
        st.sampled_from(
            [
                "claude-sonnet-4-5",
                "claude-sonnet-4-5-20250929",
                "claude-opus-4-6-thinking",
                "claude-haiku-4-5",
                "claude-3-7-sonnet-latest",
                "claude-sonnet-4.6[1m]",
                "CLAUDE-SONNET-4-6",
                "gpt-4o",
                "claude-unknown-9",
                "llama-3",
            ]
        ),
    ),
    (1, st.sampled_from(["", "   "])),
    (1, PLAIN_TEXT),
    (1, WRONG),
)
SYSTEM = maybe_wrong(
    st.one_of(
        TEXT,
        st.lists(
            st.one_of(
                TEXT_BLOCK,
                st.builds(
                    lambda rest: {
                        "type": "text",
                        "text": "x-anthropic-billing-header: cc=1;\n" + rest,
                    },
                    PLAIN_TEXT,
                ),
                IMAGE,
            ),
            max_size=3,
        ),
    )
)
THINKING_CONFIG = maybe_wrong(
    st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("enabled")},
            optional={
                "budget_tokens": st.one_of(
                    st.sampled_from([0, 1023, 1024, 24_576, 24_577, 10**12, -5]), WRONG
                )
            },
        ),
        st.fixed_dictionaries(
            {"type": maybe_wrong(st.sampled_from(["adaptive", "disabled", "on"]))}
        ),
    )
)
OUTPUT_FORMAT = maybe_wrong(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("json_schema"), "schema": st.one_of(SCHEMA, DEEP)}),
        st.fixed_dictionaries({"type": maybe_wrong(st.just("text"))}),
    )
)
OUTPUT_CONFIG = maybe_wrong(
    st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "effort": maybe_wrong(st.sampled_from(["low", "medium", "high", "max", "extreme"])),
                "format": OUTPUT_FORMAT,
            },
        ),
    )
)
SESSION_UUID = "6f1c2d3e-4b5a-4978-8e9f-0a1b2c3d4e5f"
METADATA = maybe_wrong(
    st.one_of(
        st.fixed_dictionaries(
            {
                "user_id": maybe_wrong(
                    st.sampled_from(
                        [
                            "user_abc_account__session_" + SESSION_UUID,
                            json.dumps({"session_id": SESSION_UUID, "device_id": "d"}),
                            '{"session_id": 5}',
                            "{not json",
                            "session_",
                        ]
                    )
                )
            }
        ),
    )
)
ANTHROPIC_BODY = st.fixed_dictionaries(
    {
        "model": MODELS,
        "messages": weighted(
            (30, st.lists(MESSAGE, min_size=1, max_size=8)), (1, st.just([])), (1, WRONG)
        ),
    },
    optional={
        "max_tokens": maybe_wrong(st.integers(1, 64_000)),
        "stream": maybe_wrong(st.booleans()),
        "system": SYSTEM,
        "tools": maybe_wrong(st.lists(TOOL, max_size=4)),
        "tool_choice": WRONG,
        "thinking": THINKING_CONFIG,
        "output_config": OUTPUT_CONFIG,
        "output_format": OUTPUT_FORMAT,
        "metadata": METADATA,
        "temperature": WRONG,
        "stop_sequences": WRONG,
        "context_management": WRONG,
    },
)

# --------------------------------------------------------------------------- encoding


def encode(body: Any, how: str) -> bytes:
    """``ascii``: everything escaped (surrogate pairs as two escapes, lone ones as one);
    ``utf8``: raw UTF-8, lone surrogates written raw (invalid UTF-8); ``orjson``: what a
    well-behaved client sends (lone surrogates cannot be encoded, so escape them)."""
    if how == "ascii":
        return json.dumps(body, ensure_ascii=True).encode()
    if how == "utf8":
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


ENCODINGS = st.sampled_from(["orjson", "orjson", "ascii", "utf8"])
SESSIONS = st.sampled_from(["", SESSION_UUID, "not-a-uuid", "ü"])


# --------------------------------------------------------------------------- tests


@FUZZ_SETTINGS
@given(
    body=ANTHROPIC_BODY,
    how=ENCODINGS,
    options=st.sampled_from(OPTION_SETS),
    session=SESSIONS,
)
def test_anthropic_bodies_convert_or_get_a_clean_400(
    body: dict[str, Any], how: str, options: ConvertOptions, session: str
) -> None:
    event(check_anthropic_body(encode(body, how), options, session))


@FUZZ_SETTINGS
@given(body=ANTHROPIC_BODY, options=st.sampled_from(OPTION_SETS))
def test_parsed_bodies_with_lone_surrogates_convert_or_get_a_clean_400(
    body: dict[str, Any], options: ConvertOptions
) -> None:
    """A front end that builds the dict itself (not from orjson) may leave lone
    surrogates in strings: the converter must still answer 400, not fail encoding."""
    event(check_anthropic_payload(body, options))


VALID_CORE = st.fixed_dictionaries(
    {
        "model": st.just("claude-sonnet-4-5"),
        "max_tokens": st.just(64),
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "assistant"]),
                    "content": st.one_of(
                        PLAIN_TEXT,
                        st.lists(st.one_of(TEXT_BLOCK, TOOL_USE, TOOL_RESULT), max_size=3),
                    ),
                }
            ),
            min_size=1,
            max_size=6,
        ),
    }
)


@FUZZ_SETTINGS
@given(body=VALID_CORE)
def test_well_typed_conversations_are_mostly_accepted(body: dict[str, Any]) -> None:
    """Guards the fuzzer itself: well-typed bodies must get through, not all be 400s.

    A plain-text conversation of user/assistant turns in any order with at least one user
    turn is always convertible (the normaliser merges, pads and drops a trailing prefill),
    so it must convert.
    """
    messages = body["messages"]
    plain = all(isinstance(m["content"], str) for m in messages)
    has_user = any(m["role"] == "user" for m in messages)
    outcome = check_anthropic_body(encode(body, "orjson"))
    event(outcome)
    if plain and has_user:
        assert outcome == "ok"


# --------------------------------------------------------------------------- OpenAI

OPENAI_TEXT = st.one_of(PLAIN_TEXT, ANY_TEXT, HUGE_TEXT)
OPENAI_CONTENT_PART = maybe_wrong(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": maybe_wrong(OPENAI_TEXT)}),
        st.fixed_dictionaries(
            {
                "type": st.just("image_url"),
                "image_url": maybe_wrong(
                    st.fixed_dictionaries(
                        {
                            "url": st.sampled_from(
                                ["data:image/png;base64," + PNG, "https://x/y.png", "data:,", ""]
                            )
                        },
                        optional={"detail": st.sampled_from(["low", "high", "auto"])},
                    )
                ),
            }
        ),
        st.fixed_dictionaries({"type": st.sampled_from(["input_audio", "file", "refusal", "zzz"])}),
    )
)
OPENAI_TOOL_CALL = st.fixed_dictionaries(
    {
        "id": maybe_wrong(TOOL_IDS),
        "type": maybe_wrong(st.just("function")),
        "function": maybe_wrong(
            st.fixed_dictionaries(
                {
                    "name": maybe_wrong(TOOL_NAMES),
                    "arguments": maybe_wrong(
                        st.one_of(
                            JSON_VALUE.map(lambda v: json.dumps(v)),
                            st.sampled_from(["{", "", "null", "[1]", '{"a":1}']),
                        )
                    ),
                }
            )
        ),
    }
)
OPENAI_MESSAGE = weighted(
    (
        5,
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["system", "developer", "user", "user"]),
                "content": maybe_wrong(
                    st.one_of(OPENAI_TEXT, st.lists(OPENAI_CONTENT_PART, max_size=3))
                ),
            },
            optional={"name": PLAIN_TEXT},
        ),
    ),
    (
        3,
        st.fixed_dictionaries(
            {"role": st.just("assistant")},
            optional={
                "content": st.one_of(
                    st.none(), OPENAI_TEXT, st.lists(OPENAI_CONTENT_PART, max_size=2)
                ),
                "tool_calls": maybe_wrong(st.lists(OPENAI_TOOL_CALL, max_size=3)),
                "reasoning_content": PLAIN_TEXT,
                "refusal": st.none(),
            },
        ),
    ),
    (
        2,
        st.fixed_dictionaries(
            {
                "role": st.just("tool"),
                "tool_call_id": maybe_wrong(TOOL_IDS),
                "content": maybe_wrong(
                    st.one_of(OPENAI_TEXT, st.lists(OPENAI_CONTENT_PART, max_size=2))
                ),
            }
        ),
    ),
    (1, st.fixed_dictionaries({"role": st.sampled_from(["function", "bot", ""])})),
    (1, WRONG),
)
OPENAI_TOOL = maybe_wrong(
    st.one_of(
        st.fixed_dictionaries(
            {
                "type": maybe_wrong(st.just("function")),
                "function": maybe_wrong(
                    st.fixed_dictionaries(
                        {"name": maybe_wrong(TOOL_NAMES)},
                        optional={
                            "description": maybe_wrong(TEXT),
                            "parameters": st.one_of(SCHEMA, DEEP),
                            "strict": st.booleans(),
                        },
                    )
                ),
            }
        ),
    )
)
USER_HI = {"role": "user", "content": "hi"}
OPENAI_CHAT_BODY = st.fixed_dictionaries(
    {
        "model": MODELS,
        "messages": weighted(
            (10, st.lists(OPENAI_MESSAGE, min_size=1, max_size=8)),
            (20, st.lists(OPENAI_MESSAGE, max_size=7).map(lambda rest: [USER_HI, *rest])),
            (1, st.just([])),
            (1, WRONG),
        ),
    },
    optional={
        "stream": maybe_wrong(st.booleans()),
        "stream_options": maybe_wrong(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "max_tokens": maybe_wrong(st.integers(1, 10_000)),
        "max_completion_tokens": WRONG,
        "tools": maybe_wrong(st.lists(OPENAI_TOOL, max_size=3)),
        "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), WRONG),
        "reasoning_effort": maybe_wrong(st.sampled_from(["low", "medium", "high", "minimal"])),
        "response_format": st.one_of(
            st.fixed_dictionaries(
                {
                    "type": st.just("json_schema"),
                    "json_schema": maybe_wrong(
                        st.fixed_dictionaries({"name": PLAIN_TEXT, "schema": SCHEMA})
                    ),
                }
            ),
            st.fixed_dictionaries({"type": st.sampled_from(["json_object", "text"])}),
            WRONG,
        ),
        "n": maybe_wrong(st.just(1)),
        "user": WRONG,
    },
)
RESPONSES_INPUT_ITEM = maybe_wrong(
    st.one_of(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "assistant", "system", "developer"]),
                "content": maybe_wrong(
                    st.one_of(
                        OPENAI_TEXT,
                        st.lists(
                            st.one_of(
                                st.fixed_dictionaries(
                                    {
                                        "type": st.sampled_from(
                                            ["input_text", "output_text", "text"]
                                        ),
                                        "text": maybe_wrong(OPENAI_TEXT),
                                    }
                                ),
                                st.fixed_dictionaries(
                                    {
                                        "type": st.just("input_image"),
                                        "image_url": maybe_wrong(
                                            st.just("data:image/png;base64," + PNG)
                                        ),
                                    }
                                ),
                                WRONG,
                            ),
                            max_size=3,
                        ),
                    )
                ),
            },
            optional={"type": st.just("message")},
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("function_call"),
                "call_id": maybe_wrong(TOOL_IDS),
                "name": maybe_wrong(TOOL_NAMES),
                "arguments": maybe_wrong(st.sampled_from(["{}", '{"a":1}', "{", ""])),
            }
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("function_call_output"),
                "call_id": maybe_wrong(TOOL_IDS),
                "output": maybe_wrong(OPENAI_TEXT),
            }
        ),
        st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "web_search_call", "zzz"])}),
    )
)
OPENAI_RESPONSES_BODY = st.fixed_dictionaries(
    {
        "model": MODELS,
        "input": maybe_wrong(st.one_of(OPENAI_TEXT, st.lists(RESPONSES_INPUT_ITEM, max_size=6))),
    },
    optional={
        "instructions": maybe_wrong(TEXT),
        "stream": maybe_wrong(st.booleans()),
        "tools": maybe_wrong(
            st.lists(
                st.one_of(
                    st.fixed_dictionaries(
                        {
                            "type": st.just("function"),
                            "name": maybe_wrong(TOOL_NAMES),
                            "parameters": st.one_of(SCHEMA, DEEP),
                        },
                        optional={"description": maybe_wrong(TEXT)},
                    ),
                    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "file_search"])}),
                    WRONG,
                ),
                max_size=3,
            )
        ),
        "reasoning": st.one_of(
            st.fixed_dictionaries({"effort": maybe_wrong(st.sampled_from(["low", "high"]))}),
            WRONG,
        ),
        "text": st.one_of(
            st.fixed_dictionaries(
                {
                    "format": st.one_of(
                        st.fixed_dictionaries(
                            {"type": st.just("json_schema"), "name": PLAIN_TEXT, "schema": SCHEMA}
                        ),
                        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
                        WRONG,
                    )
                }
            ),
            WRONG,
        ),
        "store": maybe_wrong(st.booleans()),
        "max_output_tokens": WRONG,
    },
)

requires_openai_convert = pytest.mark.skipif(
    OPENAI_CONVERT_SPEC is None,
    reason="kiro_fast.openai_convert does not exist yet (issue 7); the strategies are ready",
)


@requires_openai_convert
@FUZZ_SETTINGS
@given(body=OPENAI_CHAT_BODY, how=ENCODINGS, options=st.sampled_from(OPTION_SETS))
def test_openai_chat_bodies_convert_or_get_a_clean_400(
    body: dict[str, Any], how: str, options: ConvertOptions
) -> None:
    event(check_openai_body(encode(body, how), "chat", options))


@requires_openai_convert
@FUZZ_SETTINGS
@given(body=OPENAI_RESPONSES_BODY, how=ENCODINGS, options=st.sampled_from(OPTION_SETS))
def test_openai_responses_bodies_convert_or_get_a_clean_400(
    body: dict[str, Any], how: str, options: ConvertOptions
) -> None:
    event(check_openai_body(encode(body, how), "responses", options))


# --------------------------------------------------------------------------- the oracle itself


def test_the_oracle_rejects_a_converter_that_leaks_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("content")

    monkeypatch.setitem(globals(), "anthropic_to_kiro", broken)
    body = orjson.dumps(
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    )
    with pytest.raises(KeyError):
        check_anthropic_body(body)


def test_the_oracle_rejects_a_body_the_upstream_would_refuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = anthropic_to_kiro

    def bad_history(*args: Any, **kwargs: Any) -> Any:
        converted = real(*args, **kwargs)
        state = converted.body["conversationState"]
        state["history"] = [{"assistantResponseMessage": {"content": "first"}}]
        converted.body_json = orjson.dumps(converted.body)
        return converted

    monkeypatch.setitem(globals(), "anthropic_to_kiro", bad_history)
    body = orjson.dumps(
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    )
    with pytest.raises(PropertyViolation, match="history_first_user"):
        check_anthropic_body(body)


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (
            b'{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"\\ud83d\\ude00"}]}',
            "ok",
        ),
        (b'{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"\\ud800"}]}', "400"),
        (
            b'{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
            "400",
        ),
        (b'{"model":"claude-sonnet-4-5","messages":[]}', "400"),
        (
            b'{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"'
            + string.ascii_letters.encode()
            + b'"}]}',
            "ok",
        ),
    ],
    ids=["surrogate-pair", "lone-surrogate", "raw-surrogate", "no-messages", "plain"],
)
def test_hand_written_cases(raw: bytes, outcome: str) -> None:
    assert check_anthropic_body(raw) == outcome
