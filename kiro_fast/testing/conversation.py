"""What the fake's "model" reads from a request body.

Owns the fake's understanding of a ``generateAssistantResponse`` body: the model id,
the last user message, whether tag-emulated thinking was asked for (kiro-api.md §5.9.1),
the ``[[fake:…]]`` directive that scripts the answer, and the prompt-token count that
``contextUsageEvent`` reports.

Prompt tokens — the fake's model of how the real upstream fills the context window.
The upstream counts with Claude's tokenizer and adds a hidden prompt of its own; the fake
imitates both, independently of kiro_fast's estimator (:mod:`kiro_fast.tokens`)::

    prompt_tokens = PROMPT_OVERHEAD_TOKENS + MESSAGE_TOKENS × messages
                    + TOOL_TOKENS × tools + IMAGE_TOKENS × images + Σ text_tokens(piece)

The pieces: every user and assistant ``content`` (history and current); every history
``toolUses`` name and the compact JSON (``orjson.dumps``) of its ``input``; every
``toolResults`` content block (``text`` as is, ``json`` as compact JSON); every declared
tool's name, description and compact JSON of ``inputSchema.json``.

:func:`text_tokens` splits text the way byte-level BPE tokenizers pre-tokenize it (an
ASCII word, number or punctuation cluster with its optional leading space, a whitespace
run, one non-ASCII character) and charges each piece what the only public Claude
tokenizer (the BPE ``tokenizer.json`` of Anthropic's Python SDK up to 0.3x) charges such
a piece on average — measured on English prose, Python/Cython source, JSON schemas, the
Claude Code fixture and Japanese/Chinese prose:

* a word of up to 5 letters: 1 token; 6–13 letters: 1 + (letters − 5) / 20 (measured
  1.04 at 6 and 1.21 at 10); longer: letters / 6.5;
* a number: one token per 3 digits;
* a punctuation cluster of up to 3 characters: 1 token; longer: characters / 3, at most 4;
* a whitespace run: 1 token;
* a CJK character (kana, Han, Hangul, CJK and full-width punctuation): 0.93 (common pairs
  merge); any other non-ASCII character: 1.

Against that tokenizer the model is within ±1 % on English prose and the Claude Code
texts, ±5 % on code and JSON, −6 % on Japanese and +3 % on Chinese prose.
``PROMPT_OVERHEAD_TOKENS`` is set so a bare ``hi`` (one message, one token) reports the
4,138 prompt tokens measured on the real service (Kiro-Go issue #110). The framing and
image figures are assumptions (Claude's prompt format puts a few tokens around each
message and tool; images are charged the ~1,600-token ceiling of Anthropic's formula).

``contextUsagePercentage`` is ``prompt_tokens / window × 100`` with the window from
:func:`kiro_fast.testing.catalog.context_window`, sent unrounded, so
``round(pct × window / 100)`` gives ``prompt_tokens`` back.

Everything here tolerates malformed bodies (validation may be off). Must not know
about HTTP, accounts or frames.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

#: Kiro's own hidden prompt: 4,138 prompt tokens for a bare "hi" (Kiro-Go issue #110),
#: less that message's framing and its one token.
PROMPT_OVERHEAD_TOKENS: Final = 4_134
#: Framing around each message and each tool definition (assumed).
MESSAGE_TOKENS: Final = 3
TOOL_TOKENS: Final = 8
#: Tokens one image counts for: the ceiling of Anthropic's width × height / 750 (assumed).
IMAGE_TOKENS: Final = 1_600
#: CJK characters cost slightly under one token each: frequent pairs are single tokens.
CJK_CHAR_TOKENS: Final = 0.93

#: Pre-tokenizer of byte-level BPE tokenizers, simplified: a word, a number or a
#: punctuation cluster with an optional leading space; a whitespace run; one non-ASCII
#: character.
_PIECES: Final = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[!-/:-@\[-`{-~]+|\s+|[^\x00-\x7f]")

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
    tokens = 0.0
    messages = tools = images = 0
    for role, message in _messages(body):
        messages += 1
        tokens += text_tokens(_str(message.get("content")))
        if role == "assistant":
            for use in _list(message.get("toolUses")):
                use = _dict(use)
                tokens += text_tokens(_str(use.get("name"))) + _json_tokens(use.get("input"))
            continue
        images += len(_list(message.get("images")))
        context = _dict(message.get("userInputMessageContext"))
        tokens += _results_tokens(context)
        for spec in _tool_specs(context):
            tools += 1
            tokens += text_tokens(_str(spec.get("name"))) + text_tokens(
                _str(spec.get("description"))
            )
            tokens += _json_tokens(_dict(spec.get("inputSchema")).get("json"))
    framing = MESSAGE_TOKENS * messages + TOOL_TOKENS * tools + IMAGE_TOKENS * images
    return round(tokens) + framing + PROMPT_OVERHEAD_TOKENS


def text_tokens(text: str) -> float:
    """Tokens of ``text`` in the fake's tokenizer model (see the module docstring)."""
    tokens = 0.0
    for piece in _PIECES.findall(text):
        last = piece[-1]
        if not last.isascii():
            tokens += CJK_CHAR_TOKENS if _is_cjk(ord(last)) else 1.0
        elif last.isalpha():
            size = len(piece.lstrip(" "))
            tokens += 1.0 if size <= 5 else 1 + (size - 5) / 20 if size <= 13 else size / 6.5
        elif last.isdigit():
            tokens += math.ceil(len(piece.lstrip(" ")) / 3)
        elif last.isspace():
            tokens += 1.0
        else:
            size = len(piece.lstrip(" "))
            tokens += 1.0 if size <= 3 else min(size / 3, 4.0)
    return tokens


def _is_cjk(code: int) -> bool:
    return (
        0x3000 <= code <= 0x30FF
        or 0x3400 <= code <= 0x4DBF
        or 0x4E00 <= code <= 0x9FFF
        or 0xAC00 <= code <= 0xD7AF
        or 0xFF00 <= code <= 0xFFEF
    )


def _json_tokens(value: Any) -> float:
    if value is None:
        return 0.0
    try:
        return text_tokens(orjson.dumps(value).decode())
    except TypeError:
        return 0.0


def _results_tokens(context: dict[str, Any]) -> float:
    tokens = 0.0
    for block in _result_blocks(context):
        if isinstance(block.get("text"), str):
            tokens += text_tokens(block["text"])
        elif "json" in block:
            tokens += _json_tokens(block["json"])
    return tokens


def _tool_specs(context: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for tool in _list(context.get("tools")):
        spec = _dict(tool).get("toolSpecification")
        if isinstance(spec, dict):
            yield spec


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


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
