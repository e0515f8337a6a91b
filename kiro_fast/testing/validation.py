"""The upstream's request rules, written down as a validator (kiro-api.md §4.6, §11).

Owns every reason the fake rejects a ``generateAssistantResponse`` body with a 400
(``ValidationException``): each rule is a :class:`Rule` member and can be switched off
in :class:`ValidationSettings`. :func:`validate_request` returns the first broken rule
as a :class:`ValidationFailure`, or ``None`` for a body the upstream would accept.

This module is written independently of the proxy's converter on purpose: its job is
to catch the converter's mistakes, so it must never import ``kiro_fast.convert`` or
``kiro_fast.normalize``. It knows nothing about HTTP, accounts or answers either; the
two profileArn rules that depend on the caller's account (403 answers) are checked by
the route, but are named here so they can be switched off the same way.

Rule order (the first failure wins): body size, structure, user message length,
profileArn, chatTriggerType, modelId, current message role, history shape, assistant
content, tool definitions, tool declarations, tool pairing, images.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal

import orjson

from .catalog import KNOWN_MODEL_IDS

HostMode = Literal["q", "runtime"]


class Rule(StrEnum):
    """One upstream rule; the value is the reason code the fake reports."""

    #: not a JSON object, a missing ``conversationState``/``currentMessage``/``content``,
    #: a wrong type. Cannot be switched off: nothing else can be checked without it.
    MALFORMED = "malformed"
    BODY_SIZE = "body_size"
    USER_MESSAGE_LENGTH = "user_message_length"
    PROFILE_ARN_REQUIRED = "profile_arn_required"
    #: checked by the route: a Builder ID token sent with a profileArn (q host) → 403
    PROFILE_ARN_BUILDER_ID = "profile_arn_builder_id"
    #: checked by the route: a profileArn other than the account's own → 403
    PROFILE_ARN_MISMATCH = "profile_arn_mismatch"
    CHAT_TRIGGER_TYPE = "chat_trigger_type"
    MODEL_ID = "model_id"
    CURRENT_USER = "current_user"
    HISTORY_FIRST_USER = "history_first_user"
    HISTORY_ALTERNATION = "history_alternation"
    ASSISTANT_CONTENT = "assistant_content"
    TOOL_NAME_LENGTH = "tool_name_length"
    TOOL_NAME_PATTERN = "tool_name_pattern"
    TOOL_DESCRIPTION_EMPTY = "tool_description_empty"
    TOOL_DESCRIPTION_LENGTH = "tool_description_length"
    TOOL_SCHEMA = "tool_schema"
    TOOLS_DECLARED = "tools_declared"
    TOOL_UNDECLARED = "tool_undeclared"
    TOOL_USE_UNANSWERED = "tool_use_unanswered"
    TOOL_RESULT_ORPHAN = "tool_result_orphan"
    IMAGE_FORMAT = "image_format"
    IMAGE_COUNT = "image_count"
    IMAGE_SIZE = "image_size"
    #: checked by the route: Content-Type not JSON / awsJson 1.0 → 415
    CONTENT_TYPE = "content_type"


#: ``chatTriggerType`` enum of the official model; there is no ``AUTO`` (§4.2).
CHAT_TRIGGER_TYPES: Final = frozenset({"MANUAL", "DIAGNOSTIC", "INLINE_CHAT"})
#: ``ImageBlock.format`` enum (§4.3).
IMAGE_FORMATS: Final = frozenset({"jpeg", "png", "gif", "webp"})
#: The brief's tool-name pattern: the CLI's, plus hyphens (MCP tool names pass upstream).
TOOL_NAME_RE: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]*")
#: Schema keywords whose values are data, not subschemas (never inspected for type).
_DATA_KEYWORDS: Final = frozenset({"enum", "const", "default", "examples", "example"})
#: Schema keywords mapping names to subschemas.
_NAMED_SCHEMAS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)

IMPROPERLY_FORMED: Final = "Improperly formed request."
INPUT_TOO_LONG: Final = "Input is too long."
INVALID_MODEL: Final = "Invalid model. Please select a different model to continue."
PROFILE_ARN_MISSING: Final = "profileArn is required for this request."


@dataclass(frozen=True, kw_only=True)
class ValidationSettings:
    """Which rules are on and the limits they use (all on by default)."""

    disabled: frozenset[Rule] = frozenset()
    #: the official CLI rejects > 64; kiro.rs shortens anything over 63 to be safe (§4.6)
    max_tool_name_length: int = 64
    #: kiro-gateway's TOOL_DESCRIPTION_MAX_LENGTH (§5.6)
    max_tool_description_length: int = 10_000
    #: kiro-gateway's empirical payload ceiling, KIRO_MAX_PAYLOAD_BYTES (§4.6 item 12)
    max_body_bytes: int = 600_000
    #: the service's user-message limit per the Q CLI constants (§4.6 item 12)
    max_user_message_chars: int = 600_000
    #: the official CLI's per-request image limits (§4.6 item 11)
    max_images: int = 10
    max_image_bytes: int = 10 * 1024 * 1024

    def enabled(self, rule: Rule) -> bool:
        return rule not in self.disabled


DEFAULT_VALIDATION: Final = ValidationSettings()


@dataclass(frozen=True, slots=True)
class ValidationFailure:
    """Why the upstream refuses a request, and how it says so."""

    rule: Rule
    detail: str
    status: int = 400
    message: str = IMPROPERLY_FORMED
    reason: str | None = None
    error_type: str = "ValidationException"

    def body(self) -> dict[str, Any]:
        """The JSON error body the upstream sends (§9.1)."""
        return {"message": self.message, "reason": self.reason}


def too_long(rule: Rule, detail: str) -> ValidationFailure:
    return ValidationFailure(
        rule, detail, message=INPUT_TOO_LONG, reason="CONTENT_LENGTH_EXCEEDS_THRESHOLD"
    )


class _Reject(Exception):
    def __init__(self, failure: ValidationFailure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


@dataclass(slots=True)
class _Turn:
    role: Literal["user", "assistant"]
    message: dict[str, Any]
    where: str
    context: dict[str, Any] = field(default_factory=dict)


def validate_request(
    body: Any,
    settings: ValidationSettings = DEFAULT_VALIDATION,
    *,
    host_mode: HostMode = "q",
    raw_size: int | None = None,
) -> ValidationFailure | None:
    """Check a ``generateAssistantResponse`` body against every enabled rule.

    Args:
        body: the parsed JSON body.
        settings: which rules are on, and their limits.
        host_mode: ``"runtime"`` makes ``profileArn`` mandatory (§2.1).
        raw_size: the body's size in bytes if known; otherwise it is re-serialised.

    Returns:
        The first broken rule, or ``None`` when the upstream would accept the body.
    """
    try:
        _check_body_size(body, settings, raw_size)
        turns, current, state = _structure(body)
        _check_user_lengths(turns, settings)
        _check_profile_arn(body, settings, host_mode)
        _check_trigger(state, settings)
        _check_model_ids(turns, settings)
        _check_shape(turns, current, settings)
        _check_tools(turns, current, settings)
        _check_images(turns, settings)
    except _Reject as reject:
        return reject.failure
    return None


def _fail(rule: Rule, detail: str, **kwargs: Any) -> _Reject:
    return _Reject(ValidationFailure(rule, detail, **kwargs))


# --------------------------------------------------------------------------- structure


def _check_body_size(body: Any, settings: ValidationSettings, raw_size: int | None) -> None:
    if not settings.enabled(Rule.BODY_SIZE):
        return
    size = raw_size if raw_size is not None else len(orjson.dumps(body))
    if size > settings.max_body_bytes:
        detail = f"body is {size} bytes, limit {settings.max_body_bytes}"
        raise _Reject(too_long(Rule.BODY_SIZE, detail))


def _structure(body: Any) -> tuple[list[_Turn], _Turn, dict[str, Any]]:
    """Return (history turns + current turn, current turn, conversationState)."""
    if not isinstance(body, dict):
        raise _fail(Rule.MALFORMED, "body is not a JSON object")
    state = body.get("conversationState")
    if not isinstance(state, dict):
        raise _fail(Rule.MALFORMED, "conversationState missing or not an object")
    history = state.get("history")
    if history is None:
        history = []
    if not isinstance(history, list):
        raise _fail(Rule.MALFORMED, "conversationState.history is not a list")
    turns = [_turn(entry, f"history[{i}]") for i, entry in enumerate(history)]
    current = _turn(state.get("currentMessage"), "currentMessage")
    turns.append(current)
    return turns, current, state


def _turn(entry: Any, where: str) -> _Turn:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise _fail(Rule.MALFORMED, f"{where} must hold exactly one message")
    ((key, message),) = entry.items()
    if key not in ("userInputMessage", "assistantResponseMessage") or not isinstance(message, dict):
        raise _fail(Rule.MALFORMED, f"{where}: unknown message kind {key!r}")
    if not isinstance(message.get("content"), str):
        raise _fail(Rule.MALFORMED, f"{where}.content missing or not a string")
    if key == "assistantResponseMessage":
        return _Turn("assistant", message, where)
    context = message.get("userInputMessageContext")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise _fail(Rule.MALFORMED, f"{where}.userInputMessageContext is not an object")
    return _Turn("user", message, where, context)


def _check_user_lengths(turns: list[_Turn], settings: ValidationSettings) -> None:
    if not settings.enabled(Rule.USER_MESSAGE_LENGTH):
        return
    limit = settings.max_user_message_chars
    for turn in turns:
        size = len(turn.message["content"])
        if turn.role == "user" and size > limit:
            detail = f"{turn.where}.content has {size} characters, limit {limit}"
            raise _Reject(too_long(Rule.USER_MESSAGE_LENGTH, detail))


def _check_profile_arn(body: dict[str, Any], settings: ValidationSettings, mode: HostMode) -> None:
    if mode != "runtime" or not settings.enabled(Rule.PROFILE_ARN_REQUIRED):
        return
    arn = body.get("profileArn")
    if arn is None:
        raise _fail(Rule.PROFILE_ARN_REQUIRED, "no profileArn", message=PROFILE_ARN_MISSING)
    if not isinstance(arn, str) or not arn:
        raise _fail(Rule.PROFILE_ARN_REQUIRED, "empty profileArn", reason="REQUEST_BODY_INVALID")


def _check_trigger(state: dict[str, Any], settings: ValidationSettings) -> None:
    trigger = state.get("chatTriggerType")
    if settings.enabled(Rule.CHAT_TRIGGER_TYPE) and trigger not in CHAT_TRIGGER_TYPES:
        raise _fail(Rule.CHAT_TRIGGER_TYPE, f"chatTriggerType {trigger!r} is not in the enum")


def _check_model_ids(turns: list[_Turn], settings: ValidationSettings) -> None:
    if not settings.enabled(Rule.MODEL_ID):
        return
    for turn in turns:
        model = turn.message.get("modelId")
        if turn.role == "user" and model is not None and model not in KNOWN_MODEL_IDS:
            raise _fail(
                Rule.MODEL_ID,
                f"{turn.where}.modelId {model!r} is unknown",
                message=INVALID_MODEL,
                reason="INVALID_MODEL_ID",
            )


# --------------------------------------------------------------------------- conversation shape


def _check_shape(turns: list[_Turn], current: _Turn, settings: ValidationSettings) -> None:
    if settings.enabled(Rule.CURRENT_USER) and current.role != "user":
        raise _fail(Rule.CURRENT_USER, "currentMessage is not a userInputMessage")
    history = turns[:-1]
    if settings.enabled(Rule.HISTORY_FIRST_USER) and history and history[0].role != "user":
        raise _fail(Rule.HISTORY_FIRST_USER, "history starts with an assistant message")
    if settings.enabled(Rule.HISTORY_ALTERNATION):
        for before, after in zip(turns, turns[1:], strict=False):
            if before.role == after.role:
                detail = f"{before.where} and {after.where} are both {after.role} messages"
                raise _fail(Rule.HISTORY_ALTERNATION, detail)
    if settings.enabled(Rule.ASSISTANT_CONTENT):
        for turn in turns:
            if turn.role == "assistant" and turn.message["content"] == "":
                raise _fail(Rule.ASSISTANT_CONTENT, f"{turn.where}.content is empty")


# --------------------------------------------------------------------------- tools


def _check_tools(turns: list[_Turn], current: _Turn, settings: ValidationSettings) -> None:
    declared = _declared_tools(current, settings)
    uses = [(turn, use) for turn in turns for use in _tool_uses(turn)]
    has_results = any(_tool_results(turn) for turn in turns)
    if settings.enabled(Rule.TOOLS_DECLARED) and not declared and (uses or has_results):
        raise _fail(Rule.TOOLS_DECLARED, "tool uses or results present but no tools declared")
    if settings.enabled(Rule.TOOL_UNDECLARED):
        for turn, use in uses:
            name = use.get("name")
            if not isinstance(name, str) or name.lower() not in declared:
                raise _fail(Rule.TOOL_UNDECLARED, f"{turn.where}: tool {name!r} is not declared")
    _check_pairing(turns, settings)


def _declared_tools(current: _Turn, settings: ValidationSettings) -> set[str]:
    tools = current.context.get("tools")
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise _fail(Rule.MALFORMED, "currentMessage tools is not a list")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _fail(Rule.MALFORMED, f"{where} is not an object")
        spec = tool.get("toolSpecification")
        if spec is None and "cachePoint" in tool:
            continue
        if not isinstance(spec, dict):
            raise _fail(Rule.MALFORMED, f"{where}.toolSpecification missing")
        names.add(_check_tool_spec(spec, where, settings).lower())
    return names


def _check_tool_spec(spec: dict[str, Any], where: str, settings: ValidationSettings) -> str:
    name = spec.get("name")
    if not isinstance(name, str):
        raise _fail(Rule.MALFORMED, f"{where}.name missing")
    limit = settings.max_tool_name_length
    if settings.enabled(Rule.TOOL_NAME_LENGTH) and len(name) > limit:
        raise _fail(
            Rule.TOOL_NAME_LENGTH, f"{where}: name has {len(name)} characters, limit {limit}"
        )
    if settings.enabled(Rule.TOOL_NAME_PATTERN) and not TOOL_NAME_RE.fullmatch(name):
        raise _fail(Rule.TOOL_NAME_PATTERN, f"{where}: name {name!r} has forbidden characters")
    _check_description(spec.get("description"), where, settings)
    if settings.enabled(Rule.TOOL_SCHEMA):
        schema = spec.get("inputSchema")
        if not isinstance(schema, dict) or not isinstance(schema.get("json"), dict):
            raise _fail(Rule.TOOL_SCHEMA, f"{where}: inputSchema.json missing or not an object")
        problem = _schema_problem(schema["json"], "inputSchema.json")
        if problem:
            raise _fail(Rule.TOOL_SCHEMA, f"{where}: {problem}")
    return name


def _check_description(description: Any, where: str, settings: ValidationSettings) -> None:
    empty = not isinstance(description, str) or not description.strip()
    if settings.enabled(Rule.TOOL_DESCRIPTION_EMPTY) and empty:
        raise _fail(Rule.TOOL_DESCRIPTION_EMPTY, f"{where}: description is empty")
    limit = settings.max_tool_description_length
    size = len(description) if isinstance(description, str) else 0
    if settings.enabled(Rule.TOOL_DESCRIPTION_LENGTH) and size > limit:
        raise _fail(
            Rule.TOOL_DESCRIPTION_LENGTH,
            f"{where}: description has {size} characters, limit {limit}",
        )


def _schema_problem(schema: dict[str, Any], path: str) -> str | None:
    """The first ``required: null``, ``properties: null`` or non-string ``type``, if any."""
    for keyword in ("required", "properties"):
        if keyword in schema and schema[keyword] is None:
            return f"{path}.{keyword} is null"
    if "type" in schema and not isinstance(schema["type"], str):
        return f"{path}.type is not a string"
    for key, value in schema.items():
        if key in _DATA_KEYWORDS:
            continue
        for sub_path, sub in _subschemas(key, value, path):
            problem = _schema_problem(sub, sub_path)
            if problem:
                return problem
    return None


def _subschemas(key: str, value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if key in _NAMED_SCHEMAS and isinstance(value, dict):
        for name, sub in value.items():
            if isinstance(sub, dict):
                yield f"{path}.{key}.{name}", sub
    elif isinstance(value, dict):
        yield f"{path}.{key}", value
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            if isinstance(sub, dict):
                yield f"{path}.{key}[{i}]", sub


def _tool_uses(turn: _Turn) -> list[dict[str, Any]]:
    if turn.role != "assistant":
        return []
    uses = turn.message.get("toolUses")
    if uses is None:
        return []
    if not isinstance(uses, list) or not all(isinstance(u, dict) for u in uses):
        raise _fail(Rule.MALFORMED, f"{turn.where}.toolUses is not a list of objects")
    return uses


def _tool_results(turn: _Turn) -> list[dict[str, Any]]:
    results = turn.context.get("toolResults") if turn.role == "user" else None
    if results is None:
        return []
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise _fail(Rule.MALFORMED, f"{turn.where} toolResults is not a list of objects")
    return results


def _check_pairing(turns: list[_Turn], settings: ValidationSettings) -> None:
    for i, turn in enumerate(turns):
        after = turns[i + 1] if i + 1 < len(turns) else None
        if turn.role == "assistant" and after is not None:
            _check_answered(turn, after, settings)
        if turn.role == "user":
            before = turns[i - 1] if i > 0 else None
            _check_results(turn, before, settings)


def _check_answered(turn: _Turn, after: _Turn, settings: ValidationSettings) -> None:
    if not settings.enabled(Rule.TOOL_USE_UNANSWERED):
        return
    answered = {r.get("toolUseId") for r in _tool_results(after)}
    for use in _tool_uses(turn):
        if use.get("toolUseId") not in answered:
            detail = (
                f"{turn.where}: tool use {use.get('toolUseId')!r} has no result in {after.where}"
            )
            raise _fail(Rule.TOOL_USE_UNANSWERED, detail)


def _check_results(turn: _Turn, before: _Turn | None, settings: ValidationSettings) -> None:
    if not settings.enabled(Rule.TOOL_RESULT_ORPHAN):
        return
    offered = {u.get("toolUseId") for u in _tool_uses(before)} if before else set()
    seen: set[Any] = set()
    for result in _tool_results(turn):
        use_id = result.get("toolUseId")
        if use_id in seen or use_id not in offered:
            problem = "is answered twice" if use_id in seen else "answers no preceding tool use"
            raise _fail(Rule.TOOL_RESULT_ORPHAN, f"{turn.where}: tool result {use_id!r} {problem}")
        seen.add(use_id)


# --------------------------------------------------------------------------- images


def _check_images(turns: list[_Turn], settings: ValidationSettings) -> None:
    count = 0
    for turn in turns:
        images = turn.message.get("images") if turn.role == "user" else None
        if images is None:
            continue
        if not isinstance(images, list):
            raise _fail(Rule.MALFORMED, f"{turn.where}.images is not a list")
        for i, image in enumerate(images):
            _check_image(image, f"{turn.where}.images[{i}]", settings)
        count += len(images)
    if settings.enabled(Rule.IMAGE_COUNT) and count > settings.max_images:
        raise _fail(Rule.IMAGE_COUNT, f"{count} images, limit {settings.max_images}")


def _check_image(image: Any, where: str, settings: ValidationSettings) -> None:
    if not isinstance(image, dict):
        raise _fail(Rule.MALFORMED, f"{where} is not an object")
    fmt = image.get("format")
    if settings.enabled(Rule.IMAGE_FORMAT) and fmt not in IMAGE_FORMATS:
        raise _fail(Rule.IMAGE_FORMAT, f"{where}.format {fmt!r} is not in the enum")
    source = image.get("source")
    data = source.get("bytes") if isinstance(source, dict) else None
    if not isinstance(data, str):
        raise _fail(Rule.MALFORMED, f"{where}.source.bytes missing")
    size = decoded_size(data)
    if settings.enabled(Rule.IMAGE_SIZE) and size > settings.max_image_bytes:
        raise _fail(Rule.IMAGE_SIZE, f"{where} is {size} bytes, limit {settings.max_image_bytes}")


def decoded_size(b64: str) -> int:
    """Bytes that standard base64 text decodes to, without decoding it."""
    padding = len(b64) - len(b64.rstrip("="))
    return len(b64) * 3 // 4 - padding
