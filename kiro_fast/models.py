"""Model names: client model string -> upstream ``modelId``, context window, /v1/models list.

Owns the table of upstream model ids (kiro-api.md §5.1, §2.4) and the one function that
maps whatever a client sends onto it. Strategy, first match wins:

1. The name is lower-cased; a ``[1m]``-style bracket suffix is removed and the thinking
   suffix (``-thinking`` by default) is removed and remembered (it forces thinking on).
2. The override table (client name, lower-case -> upstream id) wins; it is consulted
   with the full lower-cased name first, then with the cleaned name.
3. An upstream id that is already known (``claude-sonnet-4.5``, ``deepseek-3.2``) passes
   through; ``auto-kiro`` is kiro-gateway's alias for ``auto``.
4. OpenAI names (``gpt-4o``, ``gpt-4*``, ``gpt-3.5-turbo*``) map to a configurable model.
5. Any other name that says ``claude``, ``opus``, ``sonnet`` or ``haiku`` is parsed into
   a family and a version (``claude-opus-4-8``, ``claude-sonnet-4-5-20250929``,
   ``claude-3-5-sonnet``, ``claude-4.5-opus-high``) and mapped to the known model of that
   family with the highest version not above the requested one, or, when the request is
   older than everything known, to the oldest model of the family (the closest one). A
   name with a family but no version gets kiro.rs's family default. A plausible Claude
   name is never rejected: Claude Code sends names newer than any fixed table.
6. Anything else is :class:`~kiro_fast.errors.InvalidRequest` ``model not supported``.

Context window (kiro.rs rule, shared with the fake upstream's catalogue): 1,000,000 tokens
for Sonnet and Opus 4.6 and newer, 200,000 for every other model.

This is a leaf module: it knows nothing of requests, HTTP or credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from .errors import InvalidRequest

#: Context window of Sonnet/Opus 4.6 and newer (Kiro raised them on 2026-03-24, §5.1).
LARGE_CONTEXT_WINDOW: Final = 1_000_000
#: Context window of every other model (kiro.rs's token maths, §8.2).
DEFAULT_CONTEXT_WINDOW: Final = 200_000
#: First version that has the large window.
_LARGE_WINDOW_SINCE: Final = (4, 6)
#: Families whose newest generations have the large window (Haiku stays at 200k).
_LARGE_WINDOW_FAMILIES: Final = frozenset({"sonnet", "opus"})
#: Max output Kiro advertises for every model (§2.4); served in /v1/models.
MAX_OUTPUT_TOKENS: Final = 64_000

DEFAULT_THINKING_SUFFIX: Final = "-thinking"
#: Where OpenAI-style names land unless configured otherwise (Kiro-Go's choice, §5.1).
DEFAULT_OPENAI_ALIAS_MODEL: Final = "claude-sonnet-4.5"

CLAUDE_FAMILIES: Final = ("opus", "sonnet", "haiku")

#: Upstream Claude ids with (family, version). Order inside a family does not matter.
_CLAUDE_MODELS: Final[dict[str, tuple[str, tuple[int, int]]]] = {
    "claude-sonnet-4": ("sonnet", (4, 0)),
    "claude-sonnet-4.5": ("sonnet", (4, 5)),
    "claude-sonnet-4.6": ("sonnet", (4, 6)),
    "claude-sonnet-5": ("sonnet", (5, 0)),
    "claude-haiku-4.5": ("haiku", (4, 5)),
    "claude-opus-4.5": ("opus", (4, 5)),
    "claude-opus-4.6": ("opus", (4, 6)),
    "claude-opus-4.7": ("opus", (4, 7)),
    "claude-opus-4.8": ("opus", (4, 8)),
    "claude-opus-5": ("opus", (5, 0)),
}
#: Non-Claude ids Kiro lists (§2.4); they pass through unchanged.
_OTHER_MODELS: Final = frozenset(
    {"auto", "deepseek-3.2", "glm-5", "minimax-m2.1", "minimax-m2.5", "qwen3-coder-next"}
)
KNOWN_MODEL_IDS: Final = frozenset(_CLAUDE_MODELS) | _OTHER_MODELS

#: A name with a family but no version: kiro.rs's mapping for "sonnet"/"opus"/"haiku".
_FAMILY_DEFAULTS: Final = {
    "sonnet": "claude-sonnet-4.5",
    "opus": "claude-opus-4.6",
    "haiku": "claude-haiku-4.5",
}
#: "claude" without a family (claude-2.1, claude-instant-1.2): the general default.
_FALLBACK_FAMILY: Final = "sonnet"

_ALIASES: Final = {"auto-kiro": "auto"}
_OPENAI_PREFIXES: Final = ("gpt-4", "gpt-3.5-turbo")

#: ``[1m]``, ``[200k]``: Claude Code's context-size markers, anywhere in the name.
_BRACKETS = re.compile(r"\[[^\]]*\]")
_SEPARATORS = re.compile(r"[-._:@/\s]+")
#: A version component: 1-2 digits (a date such as 20250929 is not one).
_VERSION_PART = re.compile(r"\d{1,2}")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    kiro_id: str
    context_window: int
    #: "opus", "sonnet", "haiku", or "other" for non-Claude ids
    family: str
    #: the client name carried the thinking suffix
    thinking_forced: bool


def resolve_model(
    name: str,
    overrides: Mapping[str, str] = MappingProxyType({}),
    *,
    thinking_suffix: str = DEFAULT_THINKING_SUFFIX,
    openai_alias_model: str = DEFAULT_OPENAI_ALIAS_MODEL,
) -> ModelInfo:
    """Map a client model name to the upstream model; raise InvalidRequest if impossible."""
    lowered = name.strip().lower()
    base = _BRACKETS.sub("", lowered).strip()
    thinking = bool(thinking_suffix) and base.endswith(thinking_suffix.lower())
    if thinking:
        base = base[: -len(thinking_suffix)]
    kiro_id = overrides.get(lowered) or overrides.get(base) or _map_name(base, openai_alias_model)
    if kiro_id is None:
        raise InvalidRequest(f"model not supported: {name[:200]}")
    family = family_of(kiro_id)
    return ModelInfo(kiro_id, context_window(kiro_id), family, thinking)


def _map_name(base: str, openai_alias_model: str) -> str | None:
    if base in KNOWN_MODEL_IDS:
        return base
    if base in _ALIASES:
        return _ALIASES[base]
    if base.startswith(_OPENAI_PREFIXES):
        return openai_alias_model
    parsed = _parse_claude_name(base)
    if parsed is None:
        return None
    family, version = parsed
    return _best_model(family, version)


def _parse_claude_name(name: str) -> tuple[str, tuple[int, int] | None] | None:
    """(family, version) of a Claude-looking name, or None when it is not one."""
    tokens = [t for t in _SEPARATORS.split(name) if t]
    index = next((i for i, t in enumerate(tokens) if t in CLAUDE_FAMILIES), -1)
    if index < 0:
        if not any(t.startswith("claude") for t in tokens):
            return None
        return _FALLBACK_FAMILY, None
    family = tokens[index]
    after = _leading_version(tokens[index + 1 :])
    if after is not None:
        return family, after
    return family, _leading_version(list(reversed(tokens[:index])), reverse=True)


def _leading_version(tokens: list[str], *, reverse: bool = False) -> tuple[int, int] | None:
    """Up to two 1-2 digit tokens at the start of ``tokens`` as (major, minor)."""
    parts: list[int] = []
    for token in tokens:
        if len(parts) == 2 or not _VERSION_PART.fullmatch(token):
            break
        parts.append(int(token))
    if not parts:
        return None
    if reverse:
        parts.reverse()
    return (parts[0], parts[1] if len(parts) > 1 else 0)


def _best_model(family: str, version: tuple[int, int] | None) -> str:
    if version is None:
        return _FAMILY_DEFAULTS[family]
    candidates = sorted(
        (v, model_id) for model_id, (fam, v) in _CLAUDE_MODELS.items() if fam == family
    )
    not_newer = [model_id for v, model_id in candidates if v <= version]
    return not_newer[-1] if not_newer else candidates[0][1]


def family_of(kiro_id: str) -> str:
    known = _CLAUDE_MODELS.get(kiro_id)
    if known is not None:
        return known[0]
    parsed = _parse_claude_name(kiro_id)
    return parsed[0] if parsed is not None and "claude" in kiro_id else "other"


def context_window(kiro_id: str) -> int:
    """Tokens of context the upstream gives ``kiro_id`` (also for ids outside the table)."""
    known = _CLAUDE_MODELS.get(kiro_id)
    if known is not None:
        family, version = known
    else:
        parsed = _parse_claude_name(kiro_id) if "claude" in kiro_id else None
        if parsed is None or parsed[1] is None:
            return DEFAULT_CONTEXT_WINDOW
        family, version = parsed[0], parsed[1]
    if family in _LARGE_WINDOW_FAMILIES and version >= _LARGE_WINDOW_SINCE:
        return LARGE_CONTEXT_WINDOW
    return DEFAULT_CONTEXT_WINDOW


# --------------------------------------------------------------------------- /v1/models

#: The models served by /v1/models: kiro.rs's list plus the newer names Claude Code uses.
#: (client id, display name); each is also listed with the thinking suffix.
_LISTED: Final = (
    ("claude-opus-5", "Claude Opus 5"),
    ("claude-sonnet-5", "Claude Sonnet 5"),
    ("claude-opus-4-8", "Claude Opus 4.8"),
    ("claude-opus-4-7", "Claude Opus 4.7"),
    ("claude-opus-4-6", "Claude Opus 4.6"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-opus-4-5-20251101", "Claude Opus 4.5"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
    ("claude-sonnet-4-20250514", "Claude Sonnet 4"),
)
#: ``created`` for ids without a date in their name (2026-01-01T00:00:00Z).
_UNDATED_CREATED: Final = 1_767_225_600
_DATE_IN_ID = re.compile(r"-(\d{4})(\d{2})(\d{2})$")


def list_models(thinking_suffix: str = DEFAULT_THINKING_SUFFIX) -> list[dict[str, Any]]:
    """The /v1/models entries: Anthropic fields (``type``, ``created_at``) plus kiro.rs's."""
    entries: list[dict[str, Any]] = []
    for model_id, display in _LISTED:
        created = _created(model_id)
        window = context_window(resolve_model(model_id).kiro_id)
        for suffix, label in (("", ""), (thinking_suffix, " (thinking)")):
            entries.append(
                {
                    "id": model_id + suffix,
                    "object": "model",
                    "type": "model",
                    "display_name": display + label,
                    "created": created,
                    "created_at": datetime.fromtimestamp(created, UTC).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                    "owned_by": "anthropic",
                    "max_tokens": MAX_OUTPUT_TOKENS,
                    "context_window": window,
                }
            )
    return entries


def _created(model_id: str) -> int:
    match = _DATE_IN_ID.search(model_id)
    if match is None:
        return _UNDATED_CREATED
    year, month, day = (int(g) for g in match.groups())
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())
