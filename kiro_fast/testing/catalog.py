"""The fake upstream's model catalogue: which ``modelId`` values exist and their windows.

Owns the list served by ``ListAvailableModels`` (kiro-api.md §2.4), the set of ids the
chat endpoint accepts (§5.1; anything else is ``INVALID_MODEL_ID``) and the context
window the fake divides by when it reports ``contextUsagePercentage`` (§8.2, kiro.rs
rule: 1,000,000 tokens for the 4.6 generation and newer Claude models, 200,000 for
everything else, ``auto`` included).

``maxInputTokens`` in the listing repeats what Kiro advertises (§2.4), which differs from
the percentage window for ``auto`` and the non-Claude models; the percentage follows
the kiro.rs rule so the proxy's back-calculation can be checked against one table.

Must not know about HTTP, accounts or event streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    name: str
    rate_multiplier: float
    max_input_tokens: int
    supports_images: bool = True


#: Max output Kiro advertises for every model (§2.4).
MAX_OUTPUT_TOKENS: Final = 64_000
#: The context window of the 4.6-and-newer Claude models (since 2026-03-24, §5.1).
LARGE_WINDOW: Final = 1_000_000
#: The context window of every other model, as kiro.rs assumes (§8.2).
DEFAULT_WINDOW: Final = 200_000

MODELS: Final[tuple[ModelInfo, ...]] = (
    ModelInfo("auto", "Auto", 1.0, 1_000_000),
    ModelInfo("claude-opus-4.6", "Claude Opus 4.6", 2.2, 1_000_000),
    ModelInfo("claude-sonnet-4.6", "Claude Sonnet 4.6", 1.3, 1_000_000),
    ModelInfo("claude-opus-4.5", "Claude Opus 4.5", 2.2, 200_000),
    ModelInfo("claude-sonnet-4.5", "Claude Sonnet 4.5", 1.3, 200_000),
    ModelInfo("claude-sonnet-4", "Claude Sonnet 4", 1.3, 200_000),
    ModelInfo("claude-haiku-4.5", "Claude Haiku 4.5", 0.4, 200_000),
    ModelInfo("claude-opus-4.7", "Claude Opus 4.7", 2.2, 1_000_000),
    ModelInfo("claude-opus-4.8", "Claude Opus 4.8", 2.2, 1_000_000),
    ModelInfo("claude-opus-5", "Claude Opus 5", 2.2, 1_000_000),
    ModelInfo("claude-sonnet-5", "Claude Sonnet 5", 1.3, 1_000_000),
    ModelInfo("deepseek-3.2", "DeepSeek 3.2", 0.25, 164_000, supports_images=False),
    ModelInfo("minimax-m2.5", "MiniMax M2.5", 0.25, 196_000, supports_images=False),
    ModelInfo("minimax-m2.1", "MiniMax M2.1", 0.15, 196_000, supports_images=False),
    ModelInfo("glm-5", "GLM 5", 0.5, 200_000, supports_images=False),
    ModelInfo("qwen3-coder-next", "Qwen3 Coder Next", 0.05, 256_000, supports_images=False),
)

KNOWN_MODEL_IDS: Final[frozenset[str]] = frozenset(m.model_id for m in MODELS)

_LARGE_WINDOW_IDS: Final = frozenset(
    {
        "claude-sonnet-4.6",
        "claude-opus-4.6",
        "claude-opus-4.7",
        "claude-opus-4.8",
        "claude-opus-5",
        "claude-sonnet-5",
    }
)


def context_window(model_id: str | None) -> int:
    """Tokens that make 100 % in ``contextUsageEvent`` for this model."""
    return LARGE_WINDOW if model_id in _LARGE_WINDOW_IDS else DEFAULT_WINDOW


def list_models(max_results: int | None = None, next_token: str | None = None) -> dict[str, Any]:
    """The ``ListAvailableModels`` answer; ``nextToken`` is the offset of the next page."""
    start = int(next_token) if next_token and next_token.isdigit() else 0
    stop = len(MODELS) if not max_results else min(len(MODELS), start + max_results)
    return {
        "defaultModel": {"modelId": "auto"},
        "models": [_model_entry(m) for m in MODELS[start:stop]],
        "nextToken": str(stop) if stop < len(MODELS) else None,
    }


def _model_entry(model: ModelInfo) -> dict[str, Any]:
    return {
        "description": f"{model.name} (served by the kiro_fast fake upstream)",
        "modelId": model.model_id,
        "modelName": model.name,
        "rateMultiplier": model.rate_multiplier,
        "rateUnit": "credit",
        "supportedInputTypes": ["TEXT", "IMAGE"] if model.supports_images else ["TEXT"],
        "supportsPromptCache": model.model_id.startswith("claude-"),
        "tokenLimits": {
            "maxInputTokens": model.max_input_tokens,
            "maxOutputTokens": MAX_OUTPUT_TOKENS,
        },
    }
