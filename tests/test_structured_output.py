"""Structured output checks: fences, JSON, and the JSON Schema subset, worked by hand."""

from __future__ import annotations

from typing import Any

import pytest

from kiro_fast.structured_output import check, requested_schema, strip_fence, validate

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 20},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"enum": ["bug", "docs"]}, "maxItems": 2},
        "owner": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/person"}]},
    },
    "required": ["title", "priority"],
    "additionalProperties": False,
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string", "pattern": "^[A-Z]"}},
            "required": ["name"],
        }
    },
}


@pytest.mark.parametrize(
    "value",
    [
        {"title": "Fix", "priority": 1},
        {"title": "Fix", "priority": 5, "tags": ["bug", "docs"], "owner": None},
        {"title": "Fix", "priority": 3.0, "owner": {"name": "Ada"}},  # 3.0 is an integer
    ],
)
def test_valid_values(value: Any) -> None:
    assert validate(value, SCHEMA) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "$: expected object, got array"),
        ({"priority": 1}, "$: missing required property 'title'"),
        ({"title": "", "priority": 1}, "$.title: shorter than 1 characters"),
        ({"title": "x" * 21, "priority": 1}, "$.title: longer than 20 characters"),
        ({"title": "Fix", "priority": 0}, "$.priority: must be >= 1"),
        ({"title": "Fix", "priority": True}, "$.priority: expected integer, got boolean"),
        ({"title": "Fix", "priority": 1, "extra": 1}, "$: unexpected property 'extra'"),
        ({"title": "Fix", "priority": 1, "tags": ["ui"]}, "$.tags[0]: must be one of"),
        ({"title": "Fix", "priority": 1, "tags": ["bug"] * 3}, "$.tags: more than 2 items"),
        ({"title": "Fix", "priority": 1, "owner": {"name": "ada"}}, "$.owner: matches none"),
    ],
)
def test_invalid_values_name_the_first_problem(value: Any, problem: str) -> None:
    found = validate(value, SCHEMA)
    assert found is not None and found.startswith(problem)


def test_unknown_keywords_and_empty_schemas_accept_anything() -> None:
    assert validate({"a": 1}, {}) is None
    assert validate("x", {"type": "string", "format": "email"}) is None
    assert validate(1, True) is None


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ("  ```\n[1, 2]\n```  ", "[1, 2]"),
        ('{"a": 1}', '{"a": 1}'),
        ('Here: ```json\n{"a": 1}\n```', 'Here: ```json\n{"a": 1}\n```'),  # not a whole fence
    ],
)
def test_strip_fence(text: str, cleaned: str) -> None:
    assert strip_fence(text) == cleaned


def test_check_outcomes() -> None:
    schema = {"type": "object", "required": ["a"]}
    assert check('{"a": 1}', schema) == ("valid", '{"a": 1}', None)
    assert check('```json\n{"a": 1}\n```', schema)[:2] == ("unfenced", '{"a": 1}')
    assert check("not json", schema)[0] == "invalid_json"
    assert check('{"b": 1}', schema)[0] == "schema_mismatch"


def test_requested_schema() -> None:
    fmt = {"type": "json_schema", "schema": {"type": "object"}}
    assert requested_schema({"output_config": {"format": fmt}}) == {"type": "object"}
    assert requested_schema({"output_format": fmt}) == {"type": "object"}
    assert requested_schema({"output_config": {"effort": "high"}}) is None
    assert requested_schema({"output_config": {"format": {"type": "text"}}}) is None
