"""What the fake's "model" reads from a request body.

Owns the fake's understanding of a ``generateAssistantResponse`` body: the model id,
the last user message, whether tag-emulated thinking was asked for (kiro-api.md §5.9.1),
the ``[[fake:…]]`` directive that scripts the answer, and the prompt-token count that
``contextUsageEvent`` reports.

Prompt tokens — the fake's own counter, simple on purpose so tests can predict it::

    prompt_tokens = ceil(text_bytes / 4) + PROMPT_OVERHEAD_TOKENS + IMAGE_TOKENS × images

where ``text_bytes`` is the UTF-8 size of: every user and assistant ``content``
(history and current); every history ``toolUses`` name and the compact JSON
(``orjson.dumps``) of its ``input``; every ``toolResults`` content block (``text`` as is,
``json`` as compact JSON); every declared tool's name, description and compact JSON of
``inputSchema.json``. ``contextUsagePercentage`` is ``prompt_tokens / window × 100``
with the window from :func:`kiro_fast.testing.catalog.context_window`, sent unrounded,
so ``round(pct × window / 100)`` gives ``prompt_tokens`` back.

Everything here tolerates malformed bodies (validation may be off). Must not know
about HTTP, accounts or frames.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

#: Kiro's own hidden system prompt and tool preamble, in tokens (an invented constant).
PROMPT_OVERHEAD_TOKENS: Final = 2_000
#: Tokens one image counts for (an invented constant).
IMAGE_TOKENS: Final = 1_600

THINKING_ENABLED_TAG: Final = "<thinking_mode>enabled</thinking_mode>"
THINKING_ADAPTIVE_TAG: Final = "<thinking_mode>adaptive</thinking_mode>"
DIRECTIVE_OPEN: Final = "[[fake:"
DIRECTIVE_CLOSE: Final = "]]"
#: The same marker as bytes, to skip parsing bodies in benchmark modes.
DIRECTIVE_MARKER: Final = DIRECTIVE_OPEN.encode()

ThinkingMode = Literal["enabled", "adaptive"]


class DirectiveError(ValueError):
    """A ``[[fake:…]]`` directive that cannot be read (a test-author mistake)."""


@dataclass(frozen=True, slots=True)
class RequestView:
    model_id: str | None
    #: the current user message's content, with any directive removed
    current_text: str
    thinking: ThinkingMode | None
    prompt_tokens: int
    directive: dict[str, Any] | None


def read_request(body: Any) -> RequestView:
    """Extract what the answer depends on; raise :class:`DirectiveError` on a bad directive."""
    state = _dict(_dict(body).get("conversationState"))
    current = _dict(_dict(state.get("currentMessage")).get("userInputMessage"))
    content = _str(current.get("content"))
    directive, text = find_directive(content)
    if directive is None:
        directive = _directive_in_results(current)
    model = current.get("modelId")
    return RequestView(
        model_id=model if isinstance(model, str) else None,
        current_text=text,
        thinking=thinking_mode(body),
        prompt_tokens=prompt_tokens(body),
        directive=directive,
    )


def find_directive(text: str) -> tuple[dict[str, Any] | None, str]:
    """Return the first ``[[fake:…]]`` directive in ``text`` and the text without it.

    The directive is ``[[fake:{json object}]]`` or the short form ``[[fake:NAME]]``,
    which means ``{"scenario": "NAME"}``.
    """
    start = text.find(DIRECTIVE_OPEN)
    if start < 0:
        return None, text
    pos = start + len(DIRECTIVE_OPEN)
    if text.startswith("{", pos):
        try:
            value, end = json.JSONDecoder().raw_decode(text, pos)
        except ValueError as exc:
            raise DirectiveError(f"directive is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise DirectiveError("directive JSON must be an object")
    else:
        end = text.find(DIRECTIVE_CLOSE, pos)
        if end < 0:
            raise DirectiveError("directive has no closing ]]")
        value = {"scenario": text[pos:end].strip()}
    if not text.startswith(DIRECTIVE_CLOSE, end):
        raise DirectiveError("directive must end with ]]")
    return value, text[:start] + text[end + len(DIRECTIVE_CLOSE) :]


def _directive_in_results(current: dict[str, Any]) -> dict[str, Any] | None:
    for block in _result_blocks(_dict(current.get("userInputMessageContext"))):
        text = block.get("text")
        if isinstance(text, str):
            directive, _ = find_directive(text)
            if directive is not None:
                return directive
    return None


def thinking_mode(body: Any) -> ThinkingMode | None:
    """``enabled``/``adaptive`` when any user message carries the thinking_mode tag."""
    mode: ThinkingMode | None = None
    for role, message in _messages(body):
        content = _str(message.get("content"))
        if role != "user" or "<thinking_mode>" not in content:
            continue
        if THINKING_ENABLED_TAG in content:
            return "enabled"
        if THINKING_ADAPTIVE_TAG in content:
            mode = "adaptive"
    return mode


def prompt_tokens(body: Any) -> int:
    """The fake's prompt-token count of a request body (see the module docstring)."""
    text_bytes = 0
    images = 0
    for role, message in _messages(body):
        text_bytes += len(_str(message.get("content")).encode())
        if role == "assistant":
            for use in _list(message.get("toolUses")):
                use = _dict(use)
                text_bytes += len(_str(use.get("name")).encode()) + _json_size(use.get("input"))
            continue
        images += len(_list(message.get("images")))
        context = _dict(message.get("userInputMessageContext"))
        text_bytes += _results_size(context) + _tools_size(context)
    return -(-text_bytes // 4) + PROMPT_OVERHEAD_TOKENS + IMAGE_TOKENS * images


def _results_size(context: dict[str, Any]) -> int:
    size = 0
    for block in _result_blocks(context):
        if isinstance(block.get("text"), str):
            size += len(block["text"].encode())
        elif "json" in block:
            size += _json_size(block["json"])
    return size


def _tools_size(context: dict[str, Any]) -> int:
    size = 0
    for tool in _list(context.get("tools")):
        spec = _dict(_dict(tool).get("toolSpecification"))
        size += len(_str(spec.get("name")).encode()) + len(_str(spec.get("description")).encode())
        size += _json_size(_dict(spec.get("inputSchema")).get("json"))
    return size


def _result_blocks(context: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for result in _list(context.get("toolResults")):
        for block in _list(_dict(result).get("content")):
            if isinstance(block, dict):
                yield block


def _messages(body: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    state = _dict(_dict(body).get("conversationState"))
    for entry in [*_list(state.get("history")), state.get("currentMessage")]:
        entry = _dict(entry)
        if "userInputMessage" in entry:
            yield "user", _dict(entry["userInputMessage"])
        elif "assistantResponseMessage" in entry:
            yield "assistant", _dict(entry["assistantResponseMessage"])


def _json_size(value: Any) -> int:
    if value is None:
        return 0
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
