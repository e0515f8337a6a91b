"""Model-name mapping (kiro-api.md §5.1, claude-code-traffic.md) and the /v1/models list."""

from __future__ import annotations

import pytest

from kiro_fast.errors import InvalidRequest
from kiro_fast.models import list_models, resolve_model

MAPPING = [
    # Claude Code's current names (claude-code-traffic.md)
    ("claude-opus-4-8", "claude-opus-4.8", 1_000_000),
    ("claude-sonnet-5", "claude-sonnet-5", 1_000_000),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4.5", 200_000),
    # kiro.rs table (§5.1)
    ("claude-sonnet-4-6", "claude-sonnet-4.6", 1_000_000),
    ("claude-opus-4-6", "claude-opus-4.6", 1_000_000),
    ("claude-opus-4-5-20251101", "claude-opus-4.5", 200_000),
    ("claude-haiku-4-5-20251001", "claude-haiku-4.5", 200_000),
    ("claude-haiku-4-5", "claude-haiku-4.5", 200_000),
    ("claude-sonnet-4-20250514", "claude-sonnet-4", 200_000),
    ("claude-opus-4-7", "claude-opus-4.7", 1_000_000),
    # kiro-gateway normalisation: [1m] suffix, dotted ids, upper case, legacy order
    ("claude-sonnet-4-6[1m]", "claude-sonnet-4.6", 1_000_000),
    ("claude-opus-4.6[1m]", "claude-opus-4.6", 1_000_000),
    ("Claude-Sonnet-4-5", "claude-sonnet-4.5", 200_000),
    ("claude-4.5-opus-high", "claude-opus-4.5", 200_000),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4.5", 200_000),
    # older than anything known: the closest (oldest) model of the family
    ("claude-3-5-sonnet", "claude-sonnet-4", 200_000),
    ("claude-3-5-sonnet-20241022", "claude-sonnet-4", 200_000),
    ("claude-3-opus-20240229", "claude-opus-4.5", 200_000),
    ("claude-opus-4-1-20250805", "claude-opus-4.5", 200_000),
    ("claude-3-haiku-20240307", "claude-haiku-4.5", 200_000),
    # newer than anything known: the newest model of the family not above it
    ("claude-opus-9", "claude-opus-5", 1_000_000),
    ("claude-opus-4-9", "claude-opus-4.8", 1_000_000),
    ("claude-sonnet-4-7", "claude-sonnet-4.6", 1_000_000),
    ("claude-sonnet-7-2", "claude-sonnet-5", 1_000_000),
    ("claude-haiku-6", "claude-haiku-4.5", 200_000),
    # family without a version: kiro.rs defaults
    ("sonnet", "claude-sonnet-4.5", 200_000),
    ("opus", "claude-opus-4.6", 1_000_000),
    ("claude-haiku-latest", "claude-haiku-4.5", 200_000),
    # "claude" without a family
    ("claude-2.1", "claude-sonnet-4.5", 200_000),
    # known upstream ids pass through
    ("claude-sonnet-4.5", "claude-sonnet-4.5", 200_000),
    ("claude-opus-4.8", "claude-opus-4.8", 1_000_000),
    ("auto", "auto", 200_000),
    ("auto-kiro", "auto", 200_000),
    ("deepseek-3.2", "deepseek-3.2", 200_000),
    ("qwen3-coder-next", "qwen3-coder-next", 200_000),
    # OpenAI aliases
    ("gpt-4o", "claude-sonnet-4.5", 200_000),
    ("gpt-4", "claude-sonnet-4.5", 200_000),
    ("gpt-4-turbo-2024-04-09", "claude-sonnet-4.5", 200_000),
    ("gpt-3.5-turbo", "claude-sonnet-4.5", 200_000),
]


@pytest.mark.parametrize(("name", "kiro_id", "window"), MAPPING)
def test_model_mapping(name: str, kiro_id: str, window: int) -> None:
    info = resolve_model(name)
    assert (info.kiro_id, info.context_window) == (kiro_id, window)
    assert info.thinking_forced is False


@pytest.mark.parametrize(
    ("name", "kiro_id"),
    [
        ("claude-opus-4-6-thinking", "claude-opus-4.6"),
        ("claude-sonnet-4-5-20250929-thinking", "claude-sonnet-4.5"),
        ("claude-opus-4-6-thinking[1m]", "claude-opus-4.6"),
        ("CLAUDE-OPUS-4-8-THINKING", "claude-opus-4.8"),
    ],
)
def test_thinking_suffix_is_stripped_and_forces_thinking(name: str, kiro_id: str) -> None:
    info = resolve_model(name)
    assert info.kiro_id == kiro_id
    assert info.thinking_forced is True


def test_custom_thinking_suffix() -> None:
    info = resolve_model("claude-opus-4-6-think", thinking_suffix="-think")
    assert (info.kiro_id, info.thinking_forced) == ("claude-opus-4.6", True)
    assert resolve_model("claude-opus-4-6-thinking", thinking_suffix="").thinking_forced is False


def test_family_is_reported() -> None:
    assert resolve_model("claude-opus-4-8").family == "opus"
    assert resolve_model("claude-haiku-4-5").family == "haiku"
    assert resolve_model("gpt-4o").family == "sonnet"
    assert resolve_model("glm-5").family == "other"


def test_overrides_win_over_every_rule() -> None:
    overrides = {"claude-opus-4-8": "claude-opus-4.6", "my-model": "claude-opus-4.9"}
    assert resolve_model("Claude-Opus-4-8", overrides).kiro_id == "claude-opus-4.6"
    custom = resolve_model("my-model", overrides)
    assert (custom.kiro_id, custom.context_window, custom.family) == (
        "claude-opus-4.9",
        1_000_000,
        "opus",
    )
    # the cleaned name (suffix removed) is consulted too, and the suffix still forces thinking
    forced = resolve_model("my-model-thinking", overrides)
    assert (forced.kiro_id, forced.thinking_forced) == ("claude-opus-4.9", True)


def test_openai_alias_target_is_configurable() -> None:
    assert resolve_model("gpt-4o", openai_alias_model="claude-opus-4.6").kiro_id == (
        "claude-opus-4.6"
    )


@pytest.mark.parametrize("name", ["gpt-5", "llama-3-70b", "gemini-2.5-pro", "", "o3-mini"])
def test_unknown_non_claude_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match="model not supported"):
        resolve_model(name)


def test_list_models_has_kiro_rs_and_newer_models_with_thinking_variants() -> None:
    entries = list_models()
    ids = [entry["id"] for entry in entries]
    for expected in (
        "claude-opus-4-6",
        "claude-sonnet-4-6",
        "claude-opus-4-5-20251101",
        "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5-20251001",
        "claude-opus-4-8",
        "claude-sonnet-5",
    ):
        assert expected in ids
        assert expected + "-thinking" in ids
    assert len(ids) == len(set(ids))
    first = entries[ids.index("claude-sonnet-4-5-20250929")]
    assert first["object"] == "model"
    assert first["type"] == "model"
    assert first["owned_by"] == "anthropic"
    assert first["max_tokens"] == 64_000
    assert first["created_at"] == "2025-09-29T00:00:00Z"
    assert first["display_name"] == "Claude Sonnet 4.5"
    assert entries[ids.index("claude-opus-4-8")]["context_window"] == 1_000_000


def test_every_listed_model_resolves() -> None:
    for entry in list_models():
        resolve_model(entry["id"])
