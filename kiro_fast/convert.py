"""Anthropic Messages request (a dict) -> Kiro ``generateAssistantResponse`` body.

Owns the content mapping of kiro-api.md §5 (the kiro.rs algorithm): which client field
becomes which upstream field, the thinking tags, the conversation id, and the input-token
estimate. Strategy, in order:

1. Parse the request into :mod:`kiro_fast.normalize`'s form (turns and tool specs),
   checking every type on the way: a wrong type anywhere raises
   :class:`~kiro_fast.errors.InvalidRequest` naming the field (``messages.2.content.0.text``)
   and nothing else escapes. Content decisions are made here (§5.4): text joined with
   ``\\n``; base64 images kept (the normaliser vets them); tool results flattened to text
   with their images lifted into the message; echoed thinking folded into the assistant
   text as ``<thinking>...</thinking>\\n\\n``; documents, redacted thinking and server-tool
   blocks ignored; unknown block types ignored, never a 400.
2. ``role: "system"`` messages (Claude Code's mid-conversation system text) are folded
   into the user turn right before them, else into the next user turn when an assistant
   precedes them, else (at the end, after an assistant) they become a user turn of their
   own. Unknown roles (``developer``) become user. Claude Code's billing-header system
   block (``x-anthropic-billing-header: ...``, different on every request) is dropped.
3. :func:`kiro_fast.normalize.normalize_turns` / ``normalize_tools`` enforce the
   upstream's rules; this module then renders the body: the system text (plus moved tool
   documentation and the thinking tags) as the first history pair, ``modelId`` and
   ``origin`` on every user message, the tools on the current message only.
4. Texts the proxy adds (the structured-output instruction, ``notes`` such as the
   truncation notice of :mod:`kiro_fast.truncation`) join the current message before the
   size checks, so they can never push a request past the upstream's limits.
5. The input-token estimate (``message_start``, ``count_tokens``) is made on what is
   sent upstream — the final system turn, history, current message and tool specs —
   with :func:`kiro_fast.tokens.estimate_input_tokens`, plus framing and the hidden prompt.
6. The body is encoded once to check the byte cap; the bytes are returned alongside it.

Ignored upstream, by design: ``max_tokens``, ``temperature``, ``top_p``, ``top_k``,
``stop_sequences``, ``tool_choice``, ``cache_control``, ``context_management``.

Must not know HTTP, credentials (``profileArn`` is added by the upstream client) or
asyncio.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from . import normalize as nz
from .errors import ConfigError, InvalidRequest
from .models import (
    DEFAULT_OPENAI_ALIAS_MODEL,
    DEFAULT_THINKING_SUFFIX,
    LARGE_CONTEXT_WINDOW,
    ModelInfo,
    resolve_model,
)
from .normalize import ASSISTANT, USER, Fixes, Image, ToolResult, ToolSpec, ToolUse, Turn
from .tokens import UPSTREAM_HIDDEN_PROMPT_TOKENS, estimate_input_tokens

#: count_tokens bodies may name no model, or any: they are estimated as for this one.
COUNT_TOKENS_FALLBACK_MODEL: Final = "claude-sonnet-4.5"
#: Claude Code's per-request system block; it changes every time and means nothing upstream.
BILLING_HEADER_PREFIX: Final = "x-anthropic-billing-header:"
#: kiro.rs's (and the Kiro IDE's) reply to the system turn.
SYSTEM_ACK: Final = "I will follow these instructions."
ORIGIN: Final = "AI_EDITOR"
CHAT_TRIGGER_TYPE: Final = "MANUAL"
AGENT_TASK_TYPE: Final = "vibe"

#: kiro.rs: enabled thinking budgets are clamped to this (and defaulted to 20,000).
MAX_THINKING_BUDGET: Final = 24_576
DEFAULT_THINKING_BUDGET: Final = 20_000
#: Anthropic's own minimum for budget_tokens.
MIN_THINKING_BUDGET: Final = 1_024
#: Budget for "enabled" without budget_tokens, from output_config.effort (our choice:
#: spaced between kiro-gateway's 4k default and kiro.rs's clamp).
EFFORT_BUDGETS: Final = {"low": 4_000, "medium": 10_000, "high": 20_000, "max": MAX_THINKING_BUDGET}
DEFAULT_EFFORT: Final = "high"
#: Present in the system text already -> no second injection (kiro.rs).
_THINKING_MARKERS: Final = ("<thinking_mode>", "<max_thinking_length>")

#: kiro.rs's guidance against truncated tool calls (§9.4), appended to these tools.
WRITE_GUIDANCE: Final = {
    "Write": (
        "\n\nKeep each call small: write at most about 50 lines. For a longer file, write "
        "the first part with this tool, then add the rest with Edit calls."
    ),
    "Edit": (
        "\n\nKeep each call small: replace at most about 50 lines. Split a larger change "
        "into several Edit calls."
    ),
}
STRUCTURED_OUTPUT_INSTRUCTION: Final = (
    "Answer with a single JSON value that conforms to the JSON Schema below. Output only "
    "the JSON, with no code fences and no other text.\nJSON Schema: "
)

_SERVER_TOOL_BLOCKS: Final = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "code_execution_tool_result",
        "container_upload",
    }
)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: A random UUID's variant digit (RFC 9562: binary 10xx) for a random hex digit.
_UUID_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
#: Distinct client model names whose resolution is kept per ConvertOptions; names are
#: client input, so the cache is bounded (a miss past it is resolved, not kept).
MODEL_CACHE_SIZE: Final = 256


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    """Conversion settings, built once from the config by the caller."""

    #: client model name (lower-case) -> upstream model id; wins over every other rule
    model_overrides: Mapping[str, str] = field(default_factory=dict)
    thinking_suffix: str = DEFAULT_THINKING_SUFFIX
    #: where gpt-4*, gpt-3.5-turbo* land
    openai_alias_model: str = DEFAULT_OPENAI_ALIAS_MODEL
    #: whole-body cap before the request is refused as too long
    max_body_bytes: int = nz.MAX_BODY_BYTES
    max_tool_name_length: int = nz.MAX_TOOL_NAME_LENGTH
    max_tool_description_chars: int = nz.MAX_TOOL_DESCRIPTION_CHARS
    max_images: int = nz.MAX_IMAGES
    max_image_bytes: int = nz.MAX_IMAGE_BYTES
    max_user_content_chars: int = nz.MAX_USER_CONTENT_CHARS
    max_tool_result_chars: int = nz.MAX_TOOL_RESULT_CHARS
    #: remove normalize.STRIPPABLE_SCHEMA_KEYWORDS from tool schemas
    strip_schema_keywords: bool = False
    #: append kiro.rs's keep-it-short guidance to the Write and Edit tools (§5.10, §9.4)
    write_guidance: bool = True
    #: tell the model to answer in JSON when output_config.format asks for a schema
    structured_output_instruction: bool = True
    #: tokens of Kiro's own hidden prompt, added to every input estimate
    hidden_prompt_tokens: int = UPSTREAM_HIDDEN_PROMPT_TOKENS
    limits: nz.Limits = field(init=False, repr=False, compare=False)
    #: client model name -> its resolution under these options (see _resolve)
    model_cache: dict[str, ModelInfo] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if self.max_tool_name_length < 2 * nz.TOOL_NAME_HASH_CHARS:
            raise ConfigError(
                f"max_tool_name_length must be at least {2 * nz.TOOL_NAME_HASH_CHARS}, "
                f"got {self.max_tool_name_length}"
            )
        # A moved description leaves a pointer naming the tool; it must fit the cap itself.
        pointer = len(nz.TOOL_DOC_POINTER.format(name="n" * self.max_tool_name_length))
        if self.max_tool_description_chars < pointer:
            raise ConfigError(
                f"max_tool_description_chars must be at least {pointer} (the pointer left "
                f"for a moved description), got {self.max_tool_description_chars}"
            )
        limits = nz.Limits(
            max_body_bytes=self.max_body_bytes,
            max_tool_name_length=self.max_tool_name_length,
            max_tool_description_chars=self.max_tool_description_chars,
            max_images=self.max_images,
            max_image_bytes=self.max_image_bytes,
            max_user_content_chars=self.max_user_content_chars,
            max_tool_result_chars=self.max_tool_result_chars,
            strip_schema_keywords=self.strip_schema_keywords,
        )
        object.__setattr__(self, "limits", limits)
        lowered = {name.lower(): kiro_id for name, kiro_id in self.model_overrides.items()}
        object.__setattr__(self, "model_overrides", lowered)


@dataclass(slots=True)
class ConvertedRequest:
    #: generateAssistantResponse body without profileArn (added per credential upstream)
    body: dict[str, Any]
    #: the model string the client sent (echoed back in responses)
    client_model: str
    #: upstream modelId
    kiro_model: str
    #: tokens (1,000,000 for Sonnet/Opus 4.6 and newer, 200,000 otherwise)
    context_window: int
    #: thinking tags were requested: the stream converter parses <thinking>
    thinking: bool
    #: upstream tool name -> client's original name, for renamed tools only
    tool_names: dict[str, str]
    #: local input estimate incl. the hidden upstream prompt (message_start, count_tokens)
    input_tokens: int
    conversation_id: str
    #: reason codes of the rules that fired, in firing order
    fixes: list[str]
    #: ``body`` already encoded with orjson (the upstream client may splice profileArn in)
    body_json: bytes = b""
    #: the client's own conversation id (Claude Code's session), None when it sent none
    client_session: str | None = None


@dataclass(slots=True)
class _Draft:
    system: str
    turns: list[Turn]
    tools: list[ToolSpec]


def anthropic_to_kiro(
    request: Mapping[str, Any],
    options: ConvertOptions,
    *,
    request_id: str = "",
    session_id: str = "",
    notes: Sequence[str] = (),
) -> ConvertedRequest:
    """Convert one /v1/messages request; InvalidRequest (or ContextTooLong) when impossible.

    ``session_id`` (Claude Code's ``X-Claude-Code-Session-Id``) becomes the
    conversationId when it is a UUID; otherwise ``metadata.user_id`` is consulted.
    ``notes`` are appended to the current user message (e.g. the truncation notice).
    """
    fixes = Fixes(request_id)
    _require_object(request)
    model_name = request.get("model")
    if not isinstance(model_name, str) or not model_name.strip():
        raise InvalidRequest("model: must be a non-empty string")
    info = _resolve(model_name, options)
    prepared = _prepare(request, info, options, fixes, notes)
    history, current, system = prepared.history, prepared.current, prepared.system
    user_texts = [system, *(turn.text for turn in history if turn.role == USER), current.text]
    nz.check_user_texts(user_texts, options.limits, fixes)
    session = client_session_id(request, session_id)
    conversation_id = session or random_uuid()
    body = _render(system, history, current, prepared.tools.specs, info.kiro_id, conversation_id)
    encoded = nz.encode_body(body, options.limits, fixes, tokens=prepared.tokens)
    return ConvertedRequest(
        body=body,
        client_model=model_name,
        kiro_model=info.kiro_id,
        context_window=info.context_window,
        thinking=prepared.thinking,
        tool_names=prepared.tools.names,
        input_tokens=prepared.tokens,
        conversation_id=conversation_id,
        fixes=fixes.codes,
        body_json=encoded,
        client_session=session,
    )


def _resolve(model_name: str, options: ConvertOptions) -> ModelInfo:
    """The model ``model_name`` maps to; clients send a handful of names, each resolved
    once per options object (a few µs of regexes every request otherwise)."""
    cache = options.model_cache
    info = cache.get(model_name)
    if info is None:
        info = resolve_model(
            model_name,
            options.model_overrides,
            thinking_suffix=options.thinking_suffix,
            openai_alias_model=options.openai_alias_model,
        )
        if len(cache) < MODEL_CACHE_SIZE:
            cache[model_name] = info
    return info


def random_uuid() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` without the UUID object
    (a third of its cost; requests need several)."""
    digits = os.urandom(16).hex()
    return (
        f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-"
        f"{_UUID_VARIANT[digits[16]]}{digits[17:20]}-{digits[20:]}"
    )


@dataclass(slots=True)
class _Prepared:
    """The normalised conversation, ready to render, and its token estimate."""

    system: str
    history: list[Turn]
    current: Turn
    tools: nz.NormalizedTools
    thinking: bool
    tokens: int


def _prepare(
    request: Mapping[str, Any],
    info: ModelInfo,
    options: ConvertOptions,
    fixes: Fixes,
    notes: Sequence[str] = (),
) -> _Prepared:
    """Everything up to the size checks: parse, normalise, add the injected texts, estimate."""
    draft = _parse(request, fixes)
    thinking_tags = _thinking_tags(request, info, fixes)
    instruction = _format_instruction(request) if options.structured_output_instruction else ""
    if options.write_guidance:
        _add_write_guidance(draft.tools)
    history, current = nz.normalize_turns(draft.turns, options.limits, fixes)
    for extra in (instruction, *notes):
        if extra:
            current.text = nz.join_texts(current.text, extra, separator="\n\n")
    tools = nz.normalize_tools(draft.tools, [*history, current], options.limits, fixes)
    system = _system_text(draft.system, tools.documentation, thinking_tags)
    tokens = _estimate(system, [*history, current], tools.specs, options.hidden_prompt_tokens)
    return _Prepared(system, history, current, tools, bool(thinking_tags), tokens)


def _system_text(system: str, documentation: str, thinking_tags: str) -> str:
    """The first history turn: thinking tags (unless present), system, tool documentation."""
    text = nz.join_texts(system, documentation, separator="\n\n")
    if thinking_tags and not any(marker in text for marker in _THINKING_MARKERS):
        text = nz.join_texts(thinking_tags, text)
    return text


def count_tokens(request: Mapping[str, Any], options: ConvertOptions) -> int:
    """/v1/messages/count_tokens: the same estimate as ``ConvertedRequest.input_tokens``.

    The model may be missing or unknown here (count_tokens is informational): the
    estimate is then made as for :data:`COUNT_TOKENS_FALLBACK_MODEL`. Size limits are
    not enforced: a request too large to send still gets its count.
    """
    _require_object(request)
    model_name = request.get("model")
    try:
        if not isinstance(model_name, str):
            raise InvalidRequest("no model")
        info = _resolve(model_name, options)
    except InvalidRequest:
        info = _resolve(COUNT_TOKENS_FALLBACK_MODEL, options)
    return _prepare(request, info, options, Fixes(count=False)).tokens


def client_session_id(request: Mapping[str, Any], session_id: str = "") -> str | None:
    """The client's own conversation id (Claude Code's session UUID), or None (kiro.rs):
    the ``X-Claude-Code-Session-Id`` header when it is a UUID, else ``metadata.user_id``."""
    if _UUID.fullmatch(session_id):
        return session_id
    metadata = request.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user_id, str):
        return _session_from_user_id(user_id)
    return None


def is_web_search_tool(tool: Any) -> bool:
    """Anthropic's server-side web search tool (``type: web_search_20250305`` etc.)."""
    return (
        isinstance(tool, dict)
        and isinstance(tool.get("type"), str)
        and tool["type"].startswith("web_search")
    )


def is_web_search_request(request: Any) -> bool:
    """Claude Code's WebSearch sub-request (§5.12): the only tool is the web_search server
    tool. Such a request is served by the MCP web search path, not by chat."""
    if not isinstance(request, Mapping):
        return False
    tools = request.get("tools")
    return isinstance(tools, list) and len(tools) == 1 and is_web_search_tool(tools[0])


# --------------------------------------------------------------------------- parsing


def _require_object(request: Any) -> None:
    if not isinstance(request, Mapping):
        raise InvalidRequest("request body must be a JSON object")


def _parse(request: Mapping[str, Any], fixes: Fixes) -> _Draft:
    return _Draft(
        system=_parse_system(request.get("system"), fixes),
        turns=_parse_messages(request.get("messages"), fixes),
        tools=_parse_tools(request.get("tools"), fixes),
    )


def _parse_system(value: Any, fixes: Fixes) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        pieces = [value]
    elif isinstance(value, list):
        pieces = _text_blocks(value, "system", fixes)
    else:
        raise InvalidRequest("system: must be a string or a list of text blocks")
    kept = []
    for piece in pieces:
        if piece.lstrip().startswith(BILLING_HEADER_PREFIX):
            fixes.hit(nz.DROPPED_BILLING_HEADER)
            piece = piece.lstrip().partition("\n")[2]
        kept.append(piece)
    return nz.join_texts(*kept)


def _text_blocks(blocks: list[Any], path: str, fixes: Fixes) -> list[str]:
    """The texts of a list of blocks in which only text blocks mean anything."""
    texts = []
    for index, block in enumerate(blocks):
        block_path = f"{path}.{index}"
        kind = _block_type(block, block_path)
        if kind == "text":
            texts.append(_string(block, "text", block_path))
        else:
            fixes.hit(nz.IGNORED_UNKNOWN_BLOCK, f"{block_path}: {kind[:50]}")
    return texts


def _parse_messages(value: Any, fixes: Fixes) -> list[Turn]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("messages: must be a non-empty list")
    turns: list[Turn] = []
    pending_system: list[str] = []
    for index, message in enumerate(value):
        path = f"messages.{index}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{path}: must be an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(f"{path}.role: must be a string")
        content = _content(message, path)
        if role == "system":
            fixes.hit(nz.FOLDED_SYSTEM_MESSAGE)
            text = _system_message_text(content, path, fixes)
            if turns and turns[-1].role == USER and not pending_system:
                turns[-1].text = nz.join_texts(turns[-1].text, text)
            else:
                pending_system.append(text)
            continue
        turn = _parse_turn(role, content, path, fixes)
        if pending_system:
            if turn.role == USER:
                turn.text = nz.join_texts(*pending_system, turn.text)
            else:
                turns.append(Turn(USER, nz.join_texts(*pending_system)))
            pending_system = []
        turns.append(turn)
    if pending_system:
        turns.append(Turn(USER, nz.join_texts(*pending_system)))
    return turns


def _content(message: dict[str, Any], path: str) -> str | list[Any]:
    content = message.get("content")
    if not isinstance(content, str | list):
        raise InvalidRequest(f"{path}.content: must be a string or a list of content blocks")
    return content


def _system_message_text(content: str | list[Any], path: str, fixes: Fixes) -> str:
    if isinstance(content, str):
        return content
    return nz.join_texts(*_text_blocks(content, f"{path}.content", fixes))


def _parse_turn(role: str, content: str | list[Any], path: str, fixes: Fixes) -> Turn:
    if role == ASSISTANT:
        return _assistant_turn(content, path, fixes)
    if role != USER:
        fixes.hit(nz.MAPPED_ROLE_TO_USER, role[:50])
    return _user_turn(content, path, fixes)


def _block_type(block: Any, path: str) -> str:
    if not isinstance(block, dict):
        raise InvalidRequest(f"{path}: must be an object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest(f"{path}.type: must be a string")
    return kind


def _string(block: dict[str, Any], key: str, path: str, *, default: str | None = None) -> str:
    value = block.get(key, default)
    if not isinstance(value, str):
        raise InvalidRequest(f"{path}.{key}: must be a string")
    return value


def _user_turn(content: str | list[Any], path: str, fixes: Fixes) -> Turn:
    turn = Turn(USER)
    if isinstance(content, str):
        turn.text = content
        return turn
    texts: list[str] = []
    for index, block in enumerate(content):
        block_path = f"{path}.content.{index}"
        kind = _block_type(block, block_path)
        if kind == "text":
            texts.append(_string(block, "text", block_path))
        elif kind == "image":
            turn.images.append(_image(block, block_path))
        elif kind == "tool_result":
            turn.tool_results.append(_tool_result(block, block_path, turn, fixes))
        else:
            _ignore_block(kind, block_path, fixes, misplaced=("tool_use", "thinking"))
    turn.text = nz.join_texts(*texts)
    return turn


def _assistant_turn(content: str | list[Any], path: str, fixes: Fixes) -> Turn:
    turn = Turn(ASSISTANT)
    if isinstance(content, str):
        turn.text = content
        return turn
    texts: list[str] = []
    thoughts: list[str] = []
    for index, block in enumerate(content):
        block_path = f"{path}.content.{index}"
        kind = _block_type(block, block_path)
        if kind == "text":
            texts.append(_string(block, "text", block_path))
        elif kind == "thinking":
            fixes.hit(nz.FOLDED_THINKING_BLOCK)
            thoughts.append(_string(block, "thinking", block_path, default=""))
        elif kind == "tool_use":
            turn.tool_uses.append(_tool_use(block, block_path))
        else:
            _ignore_block(kind, block_path, fixes, misplaced=("image", "tool_result"))
    turn.text = _with_thinking(nz.join_texts(*thoughts), nz.join_texts(*texts))
    return turn


def _with_thinking(thinking: str, text: str) -> str:
    """kiro.rs's rendering of an echoed thinking block inside the assistant's text."""
    if not thinking:
        return text
    return f"<thinking>{thinking}</thinking>\n\n{text}"


def _ignore_block(kind: str, path: str, fixes: Fixes, *, misplaced: tuple[str, ...]) -> None:
    if kind == "document":
        fixes.hit(nz.IGNORED_DOCUMENT, path)
    elif kind == "redacted_thinking":
        fixes.hit(nz.IGNORED_REDACTED_THINKING, path)
    elif kind in _SERVER_TOOL_BLOCKS:
        fixes.hit(nz.IGNORED_SERVER_TOOL_BLOCK, f"{path}: {kind}")
    elif kind in misplaced:
        fixes.hit(nz.IGNORED_MISPLACED_BLOCK, f"{path}: {kind}")
    else:
        fixes.hit(nz.IGNORED_UNKNOWN_BLOCK, f"{path}: {kind[:50]}")


def _image(block: dict[str, Any], path: str) -> Image:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{path}.source: must be an object")
    kind = _string(source, "type", f"{path}.source")
    if kind != "base64":
        reference = source.get("url") or source.get("file_id")
        return Image("", reference=reference[:200] if isinstance(reference, str) else kind)
    media_type = _string(source, "media_type", f"{path}.source", default="")
    return Image(media_type, _string(source, "data", f"{path}.source"))


def _tool_use(block: dict[str, Any], path: str) -> ToolUse:
    use_id = _string(block, "id", path)
    name = _string(block, "name", path)
    if not use_id or not name:
        raise InvalidRequest(f"{path}: tool_use needs a non-empty id and name")
    tool_input = block.get("input", {})
    if tool_input is None:
        tool_input = {}
    if not isinstance(tool_input, dict):
        raise InvalidRequest(f"{path}.input: must be an object")
    return ToolUse(use_id, name, tool_input)


def _tool_result(block: dict[str, Any], path: str, turn: Turn, fixes: Fixes) -> ToolResult:
    use_id = _string(block, "tool_use_id", path)
    is_error = block.get("is_error", False)
    if not isinstance(is_error, bool | None):
        raise InvalidRequest(f"{path}.is_error: must be a boolean")
    text = _tool_result_text(block.get("content"), f"{path}.content", turn, fixes)
    return ToolResult(use_id, text, is_error is True)


def _tool_result_text(content: Any, path: str, turn: Turn, fixes: Fixes) -> str:
    """String as is; blocks: texts joined with ``\\n``, images lifted into ``turn``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return _json_text(content, path)
    texts = []
    for index, block in enumerate(content):
        block_path = f"{path}.{index}"
        kind = _block_type(block, block_path)
        if kind == "text":
            texts.append(_string(block, "text", block_path))
        elif kind == "image":
            fixes.hit(nz.LIFTED_TOOL_RESULT_IMAGE)
            turn.images.append(_image(block, block_path))
        else:
            _ignore_block(kind, block_path, fixes, misplaced=())
    return nz.join_texts(*texts)


def _json_text(value: Any, path: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidRequest(f"{path}: cannot be encoded as JSON") from exc


def _parse_tools(value: Any, fixes: Fixes) -> list[ToolSpec]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest("tools: must be a list")
    specs = []
    for index, tool in enumerate(value):
        path = f"tools.{index}"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"{path}: must be an object")
        kind = tool.get("type")
        if kind is not None and not isinstance(kind, str):
            raise InvalidRequest(f"{path}.type: must be a string")
        if is_web_search_tool(tool):
            fixes.hit(nz.DROPPED_WEB_SEARCH_TOOL)
        elif kind not in (None, "custom"):
            fixes.hit(nz.DROPPED_UNSUPPORTED_TOOL, f"{path}: {str(kind)[:50]}")
        else:
            specs.append(_tool_spec(tool, path))
    return specs


def _tool_spec(tool: dict[str, Any], path: str) -> ToolSpec:
    name = _string(tool, "name", path)
    if not name:
        raise InvalidRequest(f"{path}.name: must be a non-empty string")
    description = tool.get("description")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise InvalidRequest(f"{path}.description: must be a string")
    return ToolSpec(name, description, tool.get("input_schema"), f"{path}.input_schema")


def _add_write_guidance(tools: list[ToolSpec]) -> None:
    for spec in tools:
        guidance = WRITE_GUIDANCE.get(spec.name)
        if guidance and guidance not in spec.description:
            spec.description += guidance


# --------------------------------------------------------------------------- thinking


def _thinking_tags(request: Mapping[str, Any], info: ModelInfo, fixes: Fixes) -> str:
    """kiro.rs's tag prefix for the system text (§5.9.1), or "" when thinking is off."""
    effort = _effort(request, fixes)
    thinking = request.get("thinking")
    mode = ""
    budget = DEFAULT_THINKING_BUDGET
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise InvalidRequest("thinking: must be an object")
        mode = _string(thinking, "type", "thinking")
        if mode == "enabled":
            budget = _budget(thinking.get("budget_tokens"), effort, fixes)
        elif mode not in ("adaptive", "disabled"):
            fixes.hit(nz.IGNORED_UNKNOWN_THINKING_TYPE, mode[:50])
            mode = ""
    if mode in ("", "disabled") and info.thinking_forced:
        # kiro.rs: the suffix means enabled/20,000, or adaptive/high on Opus 4.6; here
        # adaptive on every model of that generation (the large window marks it).
        mode = "adaptive" if info.context_window >= LARGE_CONTEXT_WINDOW else "enabled"
        budget = EFFORT_BUDGETS.get(effort or "", DEFAULT_THINKING_BUDGET)
    if mode == "enabled":
        return (
            "<thinking_mode>enabled</thinking_mode>"
            f"<max_thinking_length>{budget}</max_thinking_length>"
        )
    if mode == "adaptive":
        return (
            "<thinking_mode>adaptive</thinking_mode>"
            f"<thinking_effort>{effort or DEFAULT_EFFORT}</thinking_effort>"
        )
    return ""


def _output_config(request: Mapping[str, Any]) -> dict[str, Any]:
    config = request.get("output_config")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InvalidRequest("output_config: must be an object")
    return config


def _effort(request: Mapping[str, Any], fixes: Fixes) -> str | None:
    effort = _output_config(request).get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str):
        raise InvalidRequest("output_config.effort: must be a string")
    if effort not in EFFORT_BUDGETS:
        fixes.hit(nz.DEFAULTED_UNKNOWN_EFFORT, effort[:50])
        return DEFAULT_EFFORT
    return effort


def _budget(value: Any, effort: str | None, fixes: Fixes) -> int:
    if value is None:
        return EFFORT_BUDGETS.get(effort or "", DEFAULT_THINKING_BUDGET)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest("thinking.budget_tokens: must be an integer")
    budget = min(max(value, MIN_THINKING_BUDGET), MAX_THINKING_BUDGET)
    if budget != value:
        fixes.hit(nz.CLAMPED_THINKING_BUDGET, f"{value} -> {budget}")
    return budget


def _format_instruction(request: Mapping[str, Any]) -> str:
    """Structured output (output_config.format, or the older top-level output_format)."""
    fmt = _output_config(request).get("format", request.get("output_format"))
    if fmt is None:
        return ""
    if not isinstance(fmt, dict):
        raise InvalidRequest("output_config.format: must be an object")
    if fmt.get("type") != "json_schema":
        return ""
    return STRUCTURED_OUTPUT_INSTRUCTION + _json_text(fmt.get("schema"), "output_config.format")


# --------------------------------------------------------------------------- rendering


def _session_from_user_id(user_id: str) -> str | None:
    """``{"session_id": "<uuid>", ...}`` (newer Claude Code) or ``..._session_<uuid>``."""
    if user_id.startswith("{"):
        try:
            data = orjson.loads(user_id)
        except orjson.JSONDecodeError:
            data = None
        session = data.get("session_id") if isinstance(data, dict) else None
        if isinstance(session, str) and _UUID.fullmatch(session):
            return session
    _, marker, rest = user_id.partition("session_")
    if marker and _UUID.fullmatch(rest[:36]):
        return rest[:36]
    return None


def _render(
    system: str,
    history: list[Turn],
    current: Turn,
    tools: list[dict[str, Any]],
    model_id: str,
    conversation_id: str,
) -> dict[str, Any]:
    rendered: list[dict[str, Any]] = []
    if system:
        rendered.append({"userInputMessage": _user_message(Turn(USER, system), model_id)})
        rendered.append({"assistantResponseMessage": {"content": SYSTEM_ACK}})
    rendered.extend(_history_entry(turn, model_id) for turn in history)
    message = _user_message(current, model_id)
    context = message.setdefault("userInputMessageContext", {})
    if tools:
        context["tools"] = tools
    state: dict[str, Any] = {
        "agentContinuationId": random_uuid(),
        "agentTaskType": AGENT_TASK_TYPE,
        "chatTriggerType": CHAT_TRIGGER_TYPE,
        "currentMessage": {"userInputMessage": message},
        "conversationId": conversation_id,
    }
    if rendered:
        state["history"] = rendered
    return {"conversationState": state}


def _history_entry(turn: Turn, model_id: str) -> dict[str, Any]:
    if turn.role == USER:
        return {"userInputMessage": _user_message(turn, model_id)}
    message: dict[str, Any] = {"content": turn.text}
    if turn.tool_uses:
        message["toolUses"] = [
            {"toolUseId": use.id, "name": use.name, "input": use.input} for use in turn.tool_uses
        ]
    return {"assistantResponseMessage": message}


def _user_message(turn: Turn, model_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"content": turn.text, "modelId": model_id, "origin": ORIGIN}
    if turn.images:
        message["images"] = [
            {"format": image.format, "source": {"bytes": image.data}} for image in turn.images
        ]
    if turn.tool_results:
        message["userInputMessageContext"] = {
            "toolResults": [
                {
                    "toolUseId": result.tool_use_id,
                    "content": [{"text": result.text}],
                    "status": "error" if result.is_error else "success",
                }
                for result in turn.tool_results
            ]
        }
    return message


# --------------------------------------------------------------------------- tokens


def _estimate(system: str, turns: list[Turn], tools: list[dict[str, Any]], overhead: int) -> int:
    """The prompt the upstream will count: every text it is sent, as rendered by _render."""
    texts: list[str] = []
    values: list[Any] = []
    images = 0
    if system:
        texts += (system, SYSTEM_ACK)
    for turn in turns:
        texts.append(turn.text)
        texts.extend(result.text for result in turn.tool_results)
        for use in turn.tool_uses:
            texts.append(use.name)
            values.append(use.input)
        images += len(turn.images)
    for tool in tools:
        spec = tool["toolSpecification"]
        texts += (spec["name"], spec["description"])
        values.append(spec["inputSchema"]["json"])
    return estimate_input_tokens(
        texts,
        values,
        images=images,
        messages=len(turns) + (2 if system else 0),
        tools=len(tools),
        overhead=overhead,
    )
