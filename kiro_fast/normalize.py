"""The upstream's validation rules, applied in one place, each with a reason code.

Owns every rule of kiro-api.md §4.6 that a client request can break: strict user/assistant
alternation and the first/last turn rules, merging of consecutive same-role turns, the
trailing assistant prefill, tool_use/tool_result pairing, tools used in history but not
declared, empty texts, tool name length and characters (with a reversible mapping), long
tool descriptions, malformed tool schemas, image count/size/format, per-field caps and the
whole-body byte cap. It also owns the registry of reason codes, including the codes the
converter's content mapping (kiro-api.md §5.4) records, so :data:`ALL_REASON_CODES` is
the complete list.

Strategy: the converter parses a client request into a small intermediate form
(:class:`Turn`, :class:`ToolSpec`, both in client order and unvalidated); the functions
here rewrite that form until it satisfies the upstream, and the converter then renders
the Kiro body from it. Any front end (Anthropic now, OpenAI later) that produces turns
gets the same guarantees. A rule that fires calls :meth:`Fixes.hit`: the code lands in
the request's ``fixes`` list, in :data:`RULE_HITS` (once per request; exported as a
metric) and in a DEBUG line of logger ``kiro_fast.normalize`` with the request id.

Must not know the Anthropic or OpenAI request shapes, HTTP, or credentials.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from . import metrics
from .errors import ContextTooLong, InvalidRequest
from .tokens import text_tokens

logger = logging.getLogger("kiro_fast.normalize")

#: Requests in which each rule fired (a request counts once per code).
RULE_HITS: Counter[str] = metrics.CountedMap(metrics.RULE_HITS)

# --------------------------------------------------------------------------- reason codes
# Turns (§4.6 rules 1, 2, 10; §5.3)
DROPPED_TRAILING_PREFILL: Final = "DROPPED_TRAILING_PREFILL"
MERGED_CONSECUTIVE_USER: Final = "MERGED_CONSECUTIVE_USER"
MERGED_CONSECUTIVE_ASSISTANT: Final = "MERGED_CONSECUTIVE_ASSISTANT"
INSERTED_LEADING_USER: Final = "INSERTED_LEADING_USER"
INSERTED_SYNTHETIC_ASSISTANT: Final = "INSERTED_SYNTHETIC_ASSISTANT"
FILLED_EMPTY_ASSISTANT: Final = "FILLED_EMPTY_ASSISTANT"
FILLED_EMPTY_CURRENT_MESSAGE: Final = "FILLED_EMPTY_CURRENT_MESSAGE"
# Tool pairing (§4.6 rules 3, 4; §5.5)
REMOVED_ORPHAN_TOOL_USE: Final = "REMOVED_ORPHAN_TOOL_USE"
REMOVED_DUPLICATE_TOOL_USE: Final = "REMOVED_DUPLICATE_TOOL_USE"
ORPHAN_TOOL_RESULT_TO_TEXT: Final = "ORPHAN_TOOL_RESULT_TO_TEXT"
REMOVED_DUPLICATE_TOOL_RESULT: Final = "REMOVED_DUPLICATE_TOOL_RESULT"
FILLED_EMPTY_TOOL_RESULT: Final = "FILLED_EMPTY_TOOL_RESULT"
TRUNCATED_TOOL_RESULT: Final = "TRUNCATED_TOOL_RESULT"
# Images (§4.6 rule 11)
DROPPED_URL_IMAGE: Final = "DROPPED_URL_IMAGE"
DROPPED_EMPTY_IMAGE: Final = "DROPPED_EMPTY_IMAGE"
DROPPED_UNSUPPORTED_IMAGE_FORMAT: Final = "DROPPED_UNSUPPORTED_IMAGE_FORMAT"
DROPPED_OVERSIZED_IMAGE: Final = "DROPPED_OVERSIZED_IMAGE"
DROPPED_EXCESS_IMAGES: Final = "DROPPED_EXCESS_IMAGES"
# Tools (§4.6 rules 5-8; §5.6)
REMOVED_DUPLICATE_TOOL: Final = "REMOVED_DUPLICATE_TOOL"
ADDED_PLACEHOLDER_TOOL: Final = "ADDED_PLACEHOLDER_TOOL"
SHORTENED_TOOL_NAME: Final = "SHORTENED_TOOL_NAME"
SANITIZED_TOOL_NAME: Final = "SANITIZED_TOOL_NAME"
FILLED_EMPTY_TOOL_DESCRIPTION: Final = "FILLED_EMPTY_TOOL_DESCRIPTION"
MOVED_LONG_TOOL_DESCRIPTION: Final = "MOVED_LONG_TOOL_DESCRIPTION"
FIXED_SCHEMA_NOT_OBJECT: Final = "FIXED_SCHEMA_NOT_OBJECT"
FIXED_SCHEMA_ROOT_TYPE: Final = "FIXED_SCHEMA_ROOT_TYPE"
FIXED_SCHEMA_REQUIRED: Final = "FIXED_SCHEMA_REQUIRED"
FIXED_SCHEMA_PROPERTIES: Final = "FIXED_SCHEMA_PROPERTIES"
FIXED_SCHEMA_TYPE: Final = "FIXED_SCHEMA_TYPE"
STRIPPED_SCHEMA_KEYWORDS: Final = "STRIPPED_SCHEMA_KEYWORDS"
# Size (§4.6 rule 12): these reject the request with ContextTooLong
REJECTED_OVERSIZED_MESSAGE: Final = "REJECTED_OVERSIZED_MESSAGE"
REJECTED_OVERSIZED_BODY: Final = "REJECTED_OVERSIZED_BODY"
# Content mapping, recorded by the converter's parser (§5.2, §5.4, §5.6, §5.9)
DROPPED_BILLING_HEADER: Final = "DROPPED_BILLING_HEADER"
FOLDED_SYSTEM_MESSAGE: Final = "FOLDED_SYSTEM_MESSAGE"
MAPPED_ROLE_TO_USER: Final = "MAPPED_ROLE_TO_USER"
FOLDED_THINKING_BLOCK: Final = "FOLDED_THINKING_BLOCK"
IGNORED_REDACTED_THINKING: Final = "IGNORED_REDACTED_THINKING"
IGNORED_DOCUMENT: Final = "IGNORED_DOCUMENT"
IGNORED_SERVER_TOOL_BLOCK: Final = "IGNORED_SERVER_TOOL_BLOCK"
IGNORED_MISPLACED_BLOCK: Final = "IGNORED_MISPLACED_BLOCK"
IGNORED_UNKNOWN_BLOCK: Final = "IGNORED_UNKNOWN_BLOCK"
LIFTED_TOOL_RESULT_IMAGE: Final = "LIFTED_TOOL_RESULT_IMAGE"
DROPPED_WEB_SEARCH_TOOL: Final = "DROPPED_WEB_SEARCH_TOOL"
DROPPED_UNSUPPORTED_TOOL: Final = "DROPPED_UNSUPPORTED_TOOL"
CLAMPED_THINKING_BUDGET: Final = "CLAMPED_THINKING_BUDGET"
DEFAULTED_UNKNOWN_EFFORT: Final = "DEFAULTED_UNKNOWN_EFFORT"
IGNORED_UNKNOWN_THINKING_TYPE: Final = "IGNORED_UNKNOWN_THINKING_TYPE"

ALL_REASON_CODES: Final[frozenset[str]] = frozenset(
    {
        DROPPED_TRAILING_PREFILL,
        MERGED_CONSECUTIVE_USER,
        MERGED_CONSECUTIVE_ASSISTANT,
        INSERTED_LEADING_USER,
        INSERTED_SYNTHETIC_ASSISTANT,
        FILLED_EMPTY_ASSISTANT,
        FILLED_EMPTY_CURRENT_MESSAGE,
        REMOVED_ORPHAN_TOOL_USE,
        REMOVED_DUPLICATE_TOOL_USE,
        ORPHAN_TOOL_RESULT_TO_TEXT,
        REMOVED_DUPLICATE_TOOL_RESULT,
        FILLED_EMPTY_TOOL_RESULT,
        TRUNCATED_TOOL_RESULT,
        DROPPED_URL_IMAGE,
        DROPPED_EMPTY_IMAGE,
        DROPPED_UNSUPPORTED_IMAGE_FORMAT,
        DROPPED_OVERSIZED_IMAGE,
        DROPPED_EXCESS_IMAGES,
        REMOVED_DUPLICATE_TOOL,
        ADDED_PLACEHOLDER_TOOL,
        SHORTENED_TOOL_NAME,
        SANITIZED_TOOL_NAME,
        FILLED_EMPTY_TOOL_DESCRIPTION,
        MOVED_LONG_TOOL_DESCRIPTION,
        FIXED_SCHEMA_NOT_OBJECT,
        FIXED_SCHEMA_ROOT_TYPE,
        FIXED_SCHEMA_REQUIRED,
        FIXED_SCHEMA_PROPERTIES,
        FIXED_SCHEMA_TYPE,
        STRIPPED_SCHEMA_KEYWORDS,
        REJECTED_OVERSIZED_MESSAGE,
        REJECTED_OVERSIZED_BODY,
        DROPPED_BILLING_HEADER,
        FOLDED_SYSTEM_MESSAGE,
        MAPPED_ROLE_TO_USER,
        FOLDED_THINKING_BLOCK,
        IGNORED_REDACTED_THINKING,
        IGNORED_DOCUMENT,
        IGNORED_SERVER_TOOL_BLOCK,
        IGNORED_MISPLACED_BLOCK,
        IGNORED_UNKNOWN_BLOCK,
        LIFTED_TOOL_RESULT_IMAGE,
        DROPPED_WEB_SEARCH_TOOL,
        DROPPED_UNSUPPORTED_TOOL,
        CLAMPED_THINKING_BUDGET,
        DEFAULTED_UNKNOWN_EFFORT,
        IGNORED_UNKNOWN_THINKING_TYPE,
    }
)

# --------------------------------------------------------------------------- limits
#: kiro-gateway's KIRO_MAX_PAYLOAD_BYTES; peers saw rejections from ~615 KB (§4.6 rule 12).
MAX_BODY_BYTES: Final = 600_000
#: Room kept under the cap for the profileArn the upstream client adds per credential
#: (an ARN is about 80 bytes).
BODY_RESERVE_BYTES: Final = 256
#: kiro.rs shortens above 63 ("Kiro errors when a tool name is longer than 63").
MAX_TOOL_NAME_LENGTH: Final = 63
#: kiro-gateway's TOOL_DESCRIPTION_MAX_LENGTH; longer descriptions drew 400s.
MAX_TOOL_DESCRIPTION_CHARS: Final = 10_000
#: The official CLI's limits: at most 10 images per request, 10 MiB each.
MAX_IMAGES: Final = 10
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
#: The service's own limits per the official CLI: user message / tool response characters.
MAX_USER_CONTENT_CHARS: Final = 600_000
MAX_TOOL_RESULT_CHARS: Final = 800_000
#: Real tool schemas nest a handful of levels; anything deeper is refused, not recursed.
MAX_SCHEMA_DEPTH: Final = 64
#: A shortened name ends with "_" and this many hex digits of SHA-256(original name).
TOOL_NAME_HASH_CHARS: Final = 8


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = MAX_BODY_BYTES
    max_tool_name_length: int = MAX_TOOL_NAME_LENGTH
    max_tool_description_chars: int = MAX_TOOL_DESCRIPTION_CHARS
    max_images: int = MAX_IMAGES
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_user_content_chars: int = MAX_USER_CONTENT_CHARS
    max_tool_result_chars: int = MAX_TOOL_RESULT_CHARS
    #: drop the JSON-Schema keywords in STRIPPABLE_SCHEMA_KEYWORDS (kiro-gateway style)
    strip_schema_keywords: bool = False


# --------------------------------------------------------------------------- texts
#: kiro-gateway's synthetic first user turn (a history must not start with assistant).
SYNTHETIC_USER_TEXT: Final = "(empty)"
#: kiro.rs's synthetic assistant after a run of user turns.
SYNTHETIC_ASSISTANT_TEXT: Final = "OK"
#: kiro.rs's content for an assistant turn without text (only tool uses).
EMPTY_ASSISTANT_TEXT: Final = " "
#: Current message with no text, no tool results and no images.
EMPTY_CURRENT_TEXT: Final = "Continue"
EMPTY_TOOL_RESULT_TEXT: Final = "(no output)"
PLACEHOLDER_TOOL_DESCRIPTION: Final = "Tool used in conversation history"
TOOL_DOCS_HEADING: Final = "# Tool documentation"
TOOL_DOC_POINTER: Final = (
    "Full documentation: see the section '## Tool: {name}' in the system prompt."
)

USER: Final = "user"
ASSISTANT: Final = "assistant"

#: Media types the upstream takes, and the `format` it wants for each.
IMAGE_FORMATS: Final = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
}

#: Keywords removed when Limits.strip_schema_keywords is set: what kiro-gateway strips,
#: plus annotation-only and 2020-12-only keywords no peer is known to send upstream.
STRIPPABLE_SCHEMA_KEYWORDS: Final = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "$anchor",
        "$dynamicAnchor",
        "$dynamicRef",
        "additionalProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "deprecated",
        "readOnly",
        "writeOnly",
        "examples",
    }
)
#: Keywords whose value is a map of name -> schema.
_SCHEMA_MAP_KEYS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
#: Keywords whose value is data, never a schema: copied verbatim.
_SCHEMA_DATA_KEYS: Final = frozenset({"enum", "const", "default", "examples", "example"})

_VALID_TOOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_INVALID_TOOL_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


# --------------------------------------------------------------------------- the form


@dataclass(slots=True)
class Image:
    media_type: str
    #: base64 bytes as the client sent them (may carry a ``data:...;base64,`` prefix)
    data: str = ""
    #: set when the client sent a reference (url, file id) instead of bytes
    reference: str = ""
    #: set by the normaliser: jpeg, png, gif or webp
    format: str = ""


@dataclass(slots=True)
class ToolUse:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(slots=True)
class ToolResult:
    tool_use_id: str
    text: str
    is_error: bool = False


@dataclass(slots=True)
class Turn:
    role: str
    text: str = ""
    images: list[Image] = field(default_factory=list)
    tool_uses: list[ToolUse] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)


@dataclass(slots=True)
class ToolSpec:
    name: str
    description: str
    schema: Any
    #: where the schema came from, for error messages ("tools.3.input_schema")
    path: str = ""


@dataclass(slots=True)
class NormalizedTools:
    #: the upstream ``tools`` entries ({"toolSpecification": ...})
    specs: list[dict[str, Any]]
    #: text for the end of the system prompt (moved descriptions), "" when none
    documentation: str
    #: upstream name -> client name, for renamed tools only
    names: dict[str, str]


class Fixes:
    """The reason codes that fired for one request."""

    __slots__ = ("codes", "count", "request_id")

    def __init__(self, request_id: str = "", *, count: bool = True) -> None:
        self.request_id = request_id
        #: distinct codes in the order they first fired
        self.codes: list[str] = []
        #: whether hits go into RULE_HITS (count_tokens calls do not)
        self.count = count

    def hit(self, code: str, detail: str = "") -> None:
        if code not in self.codes:
            self.codes.append(code)
            if self.count:
                RULE_HITS[code] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("request %s: %s %s", self.request_id or "-", code, detail)


def join_texts(*texts: str, separator: str = "\n") -> str:
    """Join the non-empty texts."""
    return separator.join(text for text in texts if text)


# --------------------------------------------------------------------------- turns


def normalize_turns(turns: list[Turn], limits: Limits, fixes: Fixes) -> tuple[list[Turn], Turn]:
    """(history, current) satisfying §4.6 rules 1-4, 10 and 11. Mutates the turns.

    Sizes (rule 12) are checked on the final texts by :func:`check_user_texts` and
    :func:`encode_body`, once the caller has added what it adds (system turn, notes).
    """
    turns = _drop_trailing_prefill(turns, fixes)
    current = turns[-1]
    history = _merge_runs(turns[:-1], fixes)
    _fix_alternation(history, fixes)
    every = [*history, current]
    _pair_tool_calls(every, fixes)
    _cap_tool_results(every, limits, fixes)
    _fill_empty_texts(history, current, fixes)
    _limit_images(every, limits, fixes)
    return history, current


def _drop_trailing_prefill(turns: list[Turn], fixes: Fixes) -> list[Turn]:
    end = len(turns)
    while end and turns[end - 1].role != USER:
        end -= 1
    if end == 0:
        raise InvalidRequest("messages: must contain a user message")
    if end < len(turns):
        fixes.hit(DROPPED_TRAILING_PREFILL, f"{len(turns) - end} assistant message(s)")
    return turns[:end]


def _merge_runs(turns: list[Turn], fixes: Fixes) -> list[Turn]:
    merged: list[Turn] = []
    for turn in turns:
        previous = merged[-1] if merged else None
        if previous is None or previous.role != turn.role:
            merged.append(turn)
            continue
        if turn.role == USER:
            fixes.hit(MERGED_CONSECUTIVE_USER)
            previous.text = join_texts(previous.text, turn.text)
        else:
            fixes.hit(MERGED_CONSECUTIVE_ASSISTANT)
            previous.text = join_texts(
                _non_blank(previous.text), _non_blank(turn.text), separator="\n\n"
            )
        previous.images += turn.images
        previous.tool_uses += turn.tool_uses
        previous.tool_results += turn.tool_results
    return merged


def _non_blank(text: str) -> str:
    return text if text.strip() else ""


def _fix_alternation(history: list[Turn], fixes: Fixes) -> None:
    """After merging, roles alternate; make the history start with user, end with assistant."""
    if history and history[0].role != USER:
        fixes.hit(INSERTED_LEADING_USER)
        history.insert(0, Turn(USER, SYNTHETIC_USER_TEXT))
    if history and history[-1].role == USER:
        fixes.hit(INSERTED_SYNTHETIC_ASSISTANT)
        history.append(Turn(ASSISTANT, SYNTHETIC_ASSISTANT_TEXT))


def _pair_tool_calls(turns: list[Turn], fixes: Fixes) -> None:
    """Each tool use answered by the next turn, each result answering the previous turn."""
    seen_uses: set[str] = set()
    answered: set[str] = set()
    for index, turn in enumerate(turns):
        if turn.role == ASSISTANT:
            turn.tool_uses = _unique_tool_uses(turn.tool_uses, seen_uses, fixes)
            continue
        previous = turns[index - 1] if index and turns[index - 1].role == ASSISTANT else None
        open_ids = {use.id for use in previous.tool_uses} if previous else set()
        _match_results(turn, open_ids, answered, fixes)
        if previous is not None and open_ids:
            for use_id in open_ids:
                fixes.hit(REMOVED_ORPHAN_TOOL_USE, use_id)
            previous.tool_uses = [use for use in previous.tool_uses if use.id not in open_ids]


def _unique_tool_uses(uses: list[ToolUse], seen: set[str], fixes: Fixes) -> list[ToolUse]:
    kept: list[ToolUse] = []
    for use in uses:
        if use.id in seen:
            fixes.hit(REMOVED_DUPLICATE_TOOL_USE, use.id)
            continue
        seen.add(use.id)
        kept.append(use)
    return kept


def _match_results(turn: Turn, open_ids: set[str], answered: set[str], fixes: Fixes) -> None:
    """Keep results answering ``open_ids`` (removed from it); drop repeats; orphans -> text."""
    kept: list[ToolResult] = []
    orphans: list[str] = []
    for result in turn.tool_results:
        if result.tool_use_id in open_ids:
            open_ids.discard(result.tool_use_id)
            answered.add(result.tool_use_id)
            kept.append(result)
        elif result.tool_use_id in answered:
            fixes.hit(REMOVED_DUPLICATE_TOOL_RESULT, result.tool_use_id)
        else:
            fixes.hit(ORPHAN_TOOL_RESULT_TO_TEXT, result.tool_use_id)
            orphans.append(_result_as_text(result))
    turn.tool_results = kept
    if orphans:
        turn.text = join_texts(turn.text, *orphans)


def _result_as_text(result: ToolResult) -> str:
    label = "Error result" if result.is_error else "Result"
    return f"[{label} of tool call {result.tool_use_id}]\n{result.text}"


def _cap_tool_results(turns: Sequence[Turn], limits: Limits, fixes: Fixes) -> None:
    cap = limits.max_tool_result_chars
    for turn in turns:
        for result in turn.tool_results:
            if not result.text.strip():
                fixes.hit(FILLED_EMPTY_TOOL_RESULT, result.tool_use_id)
                result.text = EMPTY_TOOL_RESULT_TEXT
            elif len(result.text) > cap:
                cut = len(result.text) - cap
                fixes.hit(TRUNCATED_TOOL_RESULT, f"{result.tool_use_id}: {cut} chars cut")
                result.text = f"{result.text[:cap]}\n[... {cut} characters truncated ...]"


def _fill_empty_texts(history: list[Turn], current: Turn, fixes: Fixes) -> None:
    for turn in history:
        if turn.role == ASSISTANT and not turn.text.strip():
            fixes.hit(FILLED_EMPTY_ASSISTANT)
            turn.text = EMPTY_ASSISTANT_TEXT
    if not current.text.strip() and not current.tool_results and not current.images:
        fixes.hit(FILLED_EMPTY_CURRENT_MESSAGE)
        current.text = EMPTY_CURRENT_TEXT


# --------------------------------------------------------------------------- images


def _limit_images(turns: Sequence[Turn], limits: Limits, fixes: Fixes) -> None:
    for turn in turns:
        if turn.images:
            turn.images = [image for image in turn.images if _image_ok(image, turn, limits, fixes)]
    excess = sum(len(turn.images) for turn in turns) - limits.max_images
    for turn in turns:  # oldest first: the newest images matter most
        if excess <= 0:
            break
        dropped = min(excess, len(turn.images))
        if dropped:
            fixes.hit(DROPPED_EXCESS_IMAGES, f"{dropped} image(s)")
            turn.images = turn.images[dropped:]
            excess -= dropped
            turn.text = join_texts(
                turn.text, f"[{dropped} image(s) omitted: at most {limits.max_images} per request]"
            )


def _image_ok(image: Image, turn: Turn, limits: Limits, fixes: Fixes) -> bool:
    problem = _image_problem(image, limits)
    if problem is None:
        return True
    code, note = problem
    fixes.hit(code, note)
    turn.text = join_texts(turn.text, f"[image omitted: {note}]")
    return False


def _image_problem(image: Image, limits: Limits) -> tuple[str, str] | None:
    """(code, note) when the image cannot go upstream; fills ``format``, strips data URLs."""
    if image.reference:
        return DROPPED_URL_IMAGE, "only inline base64 images can be forwarded"
    image_format = IMAGE_FORMATS.get(image.media_type.strip().lower())
    if image_format is None:
        return DROPPED_UNSUPPORTED_IMAGE_FORMAT, f"unsupported type {image.media_type[:50]!r}"
    if image.data.startswith("data:"):
        image.data = image.data.partition(",")[2]
    size = decoded_base64_size(image.data)
    if size == 0:
        return DROPPED_EMPTY_IMAGE, "no image data"
    if size > limits.max_image_bytes:
        return DROPPED_OVERSIZED_IMAGE, f"{size} bytes > {limits.max_image_bytes} bytes"
    image.format = image_format
    return None


def decoded_base64_size(data: str) -> int:
    """Bytes that ``data`` decodes to, without decoding it."""
    length = len(data.rstrip("="))
    return length * 3 // 4


# --------------------------------------------------------------------------- sizes


def prompt_too_long(tokens: int, size: int, limit: int, what: str) -> ContextTooLong:
    """The error Claude Code compacts on: Anthropic's "prompt is too long: N tokens > M
    maximum" wording, M scaled from the size limit; ``what`` names the measured thing."""
    maximum = max(0, min(tokens - 1, tokens * limit // max(size, 1)))
    return ContextTooLong(
        f"prompt is too long: {tokens} tokens > {maximum} maximum "
        f"({what}: {size}, the upstream accepts {limit})"
    )


def check_user_texts(texts: Iterable[str], limits: Limits, fixes: Fixes) -> None:
    """ContextTooLong when one user message (system turn included) passes the service's
    character limit."""
    limit = limits.max_user_content_chars
    for text in texts:
        if len(text) > limit:
            fixes.hit(REJECTED_OVERSIZED_MESSAGE, f"{len(text)} chars")
            raise prompt_too_long(text_tokens(text), len(text), limit, "user message characters")


def encode_body(body: dict[str, Any], limits: Limits, fixes: Fixes, *, tokens: int) -> bytes:
    """The body as JSON bytes; ContextTooLong above the byte cap less the ARN reserve."""
    try:
        encoded = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidRequest(f"request cannot be encoded as JSON: {exc}") from exc
    limit = limits.max_body_bytes - BODY_RESERVE_BYTES
    if len(encoded) > limit:
        fixes.hit(REJECTED_OVERSIZED_BODY, f"{len(encoded)} bytes")
        raise prompt_too_long(tokens, len(encoded), limit, "upstream request bytes")
    # orjson hands over its whole output buffer (4 KiB at least, several times the JSON for
    # a few KiB); the body lives until the answer's first content, so keep an exact copy.
    return bytes(memoryview(encoded))


# --------------------------------------------------------------------------- tools


def normalize_tools(
    declared: list[ToolSpec], turns: Sequence[Turn], limits: Limits, fixes: Fixes
) -> NormalizedTools:
    """Upstream tool list for ``declared`` plus placeholders for tools only used in
    ``turns``; renames the turns' tool uses to the upstream names (§4.6 rules 5-8)."""
    specs = _unique_tools(declared, fixes)
    names: dict[str, str] = {}
    upstream = [_upstream_name(spec.name, limits, fixes, names) for spec in specs]
    by_lower = {spec.name.lower(): name for spec, name in zip(specs, upstream, strict=True)}
    for turn in turns:
        for use in turn.tool_uses:
            name = by_lower.get(use.name.lower())
            if name is None:
                fixes.hit(ADDED_PLACEHOLDER_TOOL, use.name[:100])
                specs.append(ToolSpec(use.name, PLACEHOLDER_TOOL_DESCRIPTION, placeholder_schema()))
                name = _upstream_name(use.name, limits, fixes, names)
                upstream.append(name)
                by_lower[use.name.lower()] = name
            use.name = name
    docs: list[str] = []
    entries = [
        _tool_entry(spec, name, limits, fixes, docs)
        for spec, name in zip(specs, upstream, strict=True)
    ]
    documentation = join_texts(TOOL_DOCS_HEADING, *docs, separator="\n\n") if docs else ""
    return NormalizedTools(entries, documentation, names)


def _unique_tools(declared: list[ToolSpec], fixes: Fixes) -> list[ToolSpec]:
    seen: set[str] = set()
    kept: list[ToolSpec] = []
    for spec in declared:
        key = spec.name.lower()
        if key in seen:
            fixes.hit(REMOVED_DUPLICATE_TOOL, spec.name[:100])
            continue
        seen.add(key)
        kept.append(spec)
    return kept


def upstream_tool_name(name: str, max_length: int = MAX_TOOL_NAME_LENGTH) -> str:
    """``name`` if the upstream takes it, else a deterministic valid name of at most
    ``max_length`` characters: the name with invalid characters replaced by ``_``
    (prefixed with ``t`` when it does not start with a letter), cut, then ``_`` and the
    first 8 hex digits of SHA-256(name), so distinct names stay distinct."""
    if len(name) <= max_length and _VALID_TOOL_NAME.fullmatch(name):
        return name
    clean = _INVALID_TOOL_NAME_CHARS.sub("_", name)
    if not clean[:1].isalpha():
        clean = "t" + clean
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    keep = max_length - TOOL_NAME_HASH_CHARS - 1
    return f"{clean[:keep]}_{digest[:TOOL_NAME_HASH_CHARS]}"


def _upstream_name(name: str, limits: Limits, fixes: Fixes, names: dict[str, str]) -> str:
    upstream = upstream_tool_name(name, limits.max_tool_name_length)
    if upstream != name:
        if len(name) > limits.max_tool_name_length:
            fixes.hit(SHORTENED_TOOL_NAME, f"{name[:100]} -> {upstream}")
        if not _VALID_TOOL_NAME.fullmatch(name):
            fixes.hit(SANITIZED_TOOL_NAME, f"{name[:100]} -> {upstream}")
        names[upstream] = name
    return upstream


def _tool_entry(
    spec: ToolSpec, name: str, limits: Limits, fixes: Fixes, docs: list[str]
) -> dict[str, Any]:
    schema = normalize_schema(
        spec.schema, strip_keywords=limits.strip_schema_keywords, fixes=fixes, path=spec.path
    )
    return {
        "toolSpecification": {
            "name": name,
            "description": _description(spec.description, name, limits, fixes, docs),
            "inputSchema": {"json": schema},
        }
    }


def _description(text: str, name: str, limits: Limits, fixes: Fixes, docs: list[str]) -> str:
    if not text.strip():
        fixes.hit(FILLED_EMPTY_TOOL_DESCRIPTION, name)
        return f"Tool: {name}"
    if len(text) > limits.max_tool_description_chars:
        fixes.hit(MOVED_LONG_TOOL_DESCRIPTION, f"{name}: {len(text)} chars")
        docs.append(f"## Tool: {name}\n\n{text}")
        return TOOL_DOC_POINTER.format(name=name)
    return text


def placeholder_schema() -> dict[str, Any]:
    """The schema for a tool the client did not describe: an object taking anything."""
    return {"type": "object", "properties": {}, "required": [], "additionalProperties": True}


# --------------------------------------------------------------------------- schemas


def normalize_schema(
    schema: Any, *, strip_keywords: bool = False, fixes: Fixes, path: str = ""
) -> dict[str, Any]:
    """A copy of ``schema`` the upstream accepts (kiro.rs rules, applied at every level):
    the root is an object schema; ``required`` is a list of strings; ``properties`` is a
    map; ``type`` is a string (a list of types becomes ``anyOf``). With ``strip_keywords``
    the keywords in STRIPPABLE_SCHEMA_KEYWORDS are removed as well."""
    if not isinstance(schema, dict):
        fixes.hit(FIXED_SCHEMA_NOT_OBJECT, path)
        return placeholder_schema()
    fixer = _SchemaFixer(strip_keywords, fixes, path)
    out = fixer.walk(schema, 0)
    if out.get("type") != "object":
        fixes.hit(FIXED_SCHEMA_ROOT_TYPE, path)
        if "anyOf" not in schema:
            # a root type list became anyOf; the root is an object whatever it said
            out.pop("anyOf", None)
        out["type"] = "object"
    if not isinstance(out.get("properties"), dict):
        out["properties"] = {}
    if not strip_keywords:
        out.setdefault("required", [])
        if "unevaluatedProperties" not in out:
            out.setdefault("additionalProperties", True)
    return out


class _SchemaFixer:
    __slots__ = ("fixes", "path", "strip")

    def __init__(self, strip: bool, fixes: Fixes, path: str) -> None:
        self.strip = strip
        self.fixes = fixes
        self.path = path

    def walk(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequest(f"{self.path}: nested deeper than {MAX_SCHEMA_DEPTH} levels")
        out: dict[str, Any] = {}
        for key, value in node.items():
            if self.strip and key in STRIPPABLE_SCHEMA_KEYWORDS:
                self.fixes.hit(STRIPPED_SCHEMA_KEYWORDS, f"{self.path}: {key}")
            elif key == "type":
                self._type(node, value, out)
            elif key == "required":
                out[key] = self._required(value)
            elif key in _SCHEMA_MAP_KEYS:
                out[key] = self._schema_map(key, value, depth)
            elif key in _SCHEMA_DATA_KEYS:
                out[key] = value
            else:
                # items, anyOf, not... and unknown keywords alike: an object inside may
                # be read as a schema upstream, so it gets the same repairs
                out[key] = self._sub(value, depth)
        return out

    def _sub(self, value: Any, depth: int) -> Any:
        if isinstance(value, dict):
            return self.walk(value, depth + 1)
        if isinstance(value, list):
            return [self.walk(v, depth + 1) if isinstance(v, dict) else v for v in value]
        return value

    def _schema_map(self, key: str, value: Any, depth: int) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fixes.hit(FIXED_SCHEMA_PROPERTIES, f"{self.path}: {key}")
            return {}
        return {name: self._sub(sub, depth) for name, sub in value.items()}

    def _required(self, value: Any) -> list[str]:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        self.fixes.hit(FIXED_SCHEMA_REQUIRED, self.path)
        if isinstance(value, str):
            return [value]
        return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []

    def _type(self, node: dict[str, Any], value: Any, out: dict[str, Any]) -> None:
        if isinstance(value, str):
            out["type"] = value
            return
        self.fixes.hit(FIXED_SCHEMA_TYPE, self.path)
        names = [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
        if len(names) == 1:
            out["type"] = names[0]
        elif names and "anyOf" not in node:
            out["anyOf"] = [{"type": name} for name in names]
        elif names:
            out["type"] = next((name for name in names if name != "null"), names[0])
