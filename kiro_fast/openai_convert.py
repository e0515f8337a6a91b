"""OpenAI requests (Chat Completions, Responses) → the Anthropic-shaped request dict.

Owns the front half of the OpenAI surface (kiro-api.md §10.4): each OpenAI request is
rewritten into the dict :func:`kiro_fast.convert.anthropic_to_kiro` accepts, so the OpenAI
endpoints ride the same conversion, normaliser and upstream call as ``/v1/messages``.
Strategy, field by field:

* ``system`` / ``developer`` messages (and ``instructions``) → ``system``, joined by ``\\n``.
* user text parts → text blocks; ``image_url`` / ``input_image`` data URLs → base64 image
  blocks; http(s) URLs and file ids → URL image blocks, which the normaliser drops with
  ``DROPPED_URL_IMAGE`` (never fetched).
* assistant ``tool_calls`` / ``function_call`` items → ``tool_use`` blocks with the
  arguments parsed (unparseable arguments become ``{}``, as Kiro-Go does: the upstream
  needs an object and history cannot be repaired); ``reasoning_content`` → a thinking block.
* a run of ``tool`` messages / ``function_call_output`` items → one user message of
  ``tool_result`` blocks.
* ``tools[type=function]`` and flat Cursor-style ``{name, description, input_schema |
  parameters}`` → Anthropic tools; other tool types (built-in, custom) are dropped.
* ``reasoning_effort`` / ``reasoning.effort`` → thinking (the model's thinking suffix is
  handled by :func:`kiro_fast.models.resolve_model` inside the converter);
  ``response_format`` / ``text.format`` JSON schemas → ``output_config.format``.
* ``tool_choice``, ``temperature``, ``top_p``, ``stop``, ``max_tokens`` and the like are
  ignored upstream (§5.7, §5.8).

A wrong type raises :class:`~kiro_fast.errors.InvalidRequest` naming the OpenAI field
(``messages.2.tool_calls.0.function.name``). Must not know HTTP, sinks or the store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .convert import ConvertOptions
from .errors import InvalidRequest
from .models import LARGE_CONTEXT_WINDOW, resolve_model

log = logging.getLogger("kiro_fast.openai_convert")

SYSTEM_ROLES: Final = frozenset({"system", "developer"})
#: OpenAI reasoning effort → the converter's effort (``none``: thinking off).
EFFORTS: Final = {
    "none": None,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "max",
}
#: ``json_object`` has no schema; this one asks for any object.
ANY_OBJECT_SCHEMA: Final = {"type": "object"}
#: Prefix of an inline image: ``data:<media type>;base64,<data>``.
DATA_URL_PREFIX: Final = "data:"
BASE64_MARKER: Final = ";base64,"
#: Text parts of messages (input_text/output_text in Responses, text in Chat).
_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})


@dataclass(slots=True)
class ChatRequest:
    """A ``/v1/chat/completions`` request, rewritten."""

    anthropic: dict[str, Any]
    stream: bool
    include_usage: bool


@dataclass(slots=True)
class ResponsesRequest:
    """A ``/v1/responses`` request, rewritten (``previous`` messages already prepended)."""

    anthropic: dict[str, Any]
    stream: bool
    #: keep the answer for a later ``previous_response_id`` (``store``, default true)
    store: bool
    #: request fields echoed in the Response object (instructions, tools, tool_choice…)
    echo: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- chat


def chat_request(request: Mapping[str, Any], options: ConvertOptions) -> ChatRequest:
    """Rewrite one Chat Completions request; InvalidRequest names the bad field."""
    model = _model(request)
    system, messages = _chat_messages(request.get("messages"))
    n = request.get("n")
    if n is not None and n != 1:
        raise InvalidRequest("n: only 1 is supported")
    out: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        out["system"] = system
    _add_user(out, request)
    tools = _tools(request.get("tools"), "tools")
    if tools:
        out["tools"] = tools
    _add_thinking(out, request.get("reasoning_effort"), "reasoning_effort", options)
    _add_format(out, _chat_format(request.get("response_format")))
    stream = _flag(request, "stream")
    stream_options = request.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidRequest("stream_options: must be an object")
    include_usage = stream and bool(stream_options and stream_options.get("include_usage"))
    return ChatRequest(out, stream, include_usage)


def _add_user(out: dict[str, Any], request: Mapping[str, Any]) -> None:
    """OpenAI's ``user`` identifies the end user: it keeps a session on one credential."""
    user = request.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("user: must be a string")
    if user:
        out["metadata"] = {"user_id": user}


def _chat_messages(value: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("messages: must be a non-empty list")
    system: list[str] = []
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the open run of tool messages
    for index, message in enumerate(value):
        path = f"messages.{index}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{path}: must be an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(f"{path}.role: must be a string")
        if role == "tool":
            block = _tool_message(message, path)
            if results is None:
                results = []
                out.append({"role": "user", "content": results})
            results.append(block)
            continue
        if role in SYSTEM_ROLES:
            system.append(_plain_text(message.get("content"), f"{path}.content"))
            continue
        results = None
        if role == "user":
            out.append({"role": "user", "content": _user_content(message.get("content"), path)})
        elif role == "assistant":
            out.append({"role": "assistant", "content": _assistant_content(message, path)})
        else:
            allowed = "system, developer, user, assistant or tool"
            raise InvalidRequest(f"{path}.role: must be {allowed}; got {role[:50]!r}")
    if not out:
        raise InvalidRequest("messages: needs at least one user message besides system messages")
    return "\n".join(text for text in system if text), out


def _user_content(content: Any, path: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}.content: must be a string or a list of content parts")
    return [_user_part(part, f"{path}.content.{i}") for i, part in enumerate(content)]


def _user_part(part: Any, path: str) -> dict[str, Any]:
    kind = _part_type(part, path)
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": _string(part, "text", path)}
    if kind == "image_url":
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        if not isinstance(url, str):
            raise InvalidRequest(f"{path}.image_url.url: must be a string")
        return image_block(url)
    if kind == "input_image":
        return _input_image(part, path)
    return {"type": kind}  # audio, files: the converter records and ignores them


def _assistant_content(message: dict[str, Any], path: str) -> str | list[dict[str, Any]]:
    text = _assistant_text(message.get("content"), f"{path}.content")
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise InvalidRequest(f"{path}.reasoning_content: must be a string")
    calls = message.get("tool_calls")
    if calls is None:
        calls = []
    if not isinstance(calls, list):
        raise InvalidRequest(f"{path}.tool_calls: must be a list")
    if not reasoning and not calls:
        return text
    blocks: list[dict[str, Any]] = []
    if reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning})
    if text:
        blocks.append({"type": "text", "text": text})
    blocks.extend(_tool_call(call, f"{path}.tool_calls.{i}") for i, call in enumerate(calls))
    return blocks


def _assistant_text(content: Any, path: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string, null or a list of content parts")
    texts = []
    for index, part in enumerate(content):
        part_path = f"{path}.{index}"
        kind = _part_type(part, part_path)
        if kind in _TEXT_PARTS:
            texts.append(_string(part, "text", part_path))
        elif kind == "refusal":
            texts.append(_string(part, "refusal", part_path))
    return "".join(texts)


def _tool_call(call: Any, path: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise InvalidRequest(f"{path}: must be an object")
    call_id = _non_empty(call, "id", path)
    if call.get("type") == "custom":
        custom = _object(call.get("custom"), f"{path}.custom")
        name = _non_empty(custom, "name", f"{path}.custom")
        return tool_use(call_id, name, {"input": _string(custom, "input", f"{path}.custom")})
    function = _object(call.get("function"), f"{path}.function")
    name = _non_empty(function, "name", f"{path}.function")
    arguments = parse_arguments(function.get("arguments"), f"{path}.function")
    return tool_use(call_id, name, arguments)


def _tool_message(message: dict[str, Any], path: str) -> dict[str, Any]:
    call_id = _non_empty(message, "tool_call_id", path)
    return tool_result(call_id, message.get("content"), f"{path}.content")


# --------------------------------------------------------------------------- responses


def responses_request(
    request: Mapping[str, Any],
    options: ConvertOptions,
    previous: list[dict[str, Any]] | None = None,
) -> ResponsesRequest:
    """Rewrite one Responses request; ``previous`` are the stored messages it continues."""
    model = _model(request)
    instructions = request.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("instructions: must be a string")
    system, messages = _input_items(request.get("input"))
    messages = [*(previous or []), *messages]
    if not messages:
        raise InvalidRequest("input: must be a non-empty string or list of items")
    out: dict[str, Any] = {"model": model, "messages": messages}
    system_text = "\n".join(text for text in (instructions or "", *system) if text)
    if system_text:
        out["system"] = system_text
    _add_user(out, request)
    tools = _tools(request.get("tools"), "tools")
    if tools:
        out["tools"] = tools
    reasoning = request.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise InvalidRequest("reasoning: must be an object")
    effort = reasoning.get("effort") if reasoning else None
    _add_thinking(out, effort, "reasoning.effort", options)
    _add_format(out, _text_format(request.get("text")))
    store = request.get("store")
    if store is not None and not isinstance(store, bool):
        raise InvalidRequest("store: must be a boolean")
    echo = {
        "instructions": instructions,
        "tools": request.get("tools") or [],
        "tool_choice": request.get("tool_choice") or "auto",
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": request.get("previous_response_id"),
        "metadata": request.get("metadata") or {},
        "reasoning": reasoning,
        "max_output_tokens": request.get("max_output_tokens"),
        "temperature": request.get("temperature"),
        "top_p": request.get("top_p"),
        "store": store is not False,
    }
    return ResponsesRequest(out, _flag(request, "stream"), store is not False, echo)


class _Conversation:
    """Anthropic messages built item by item: adjacent items of one turn share a message."""

    __slots__ = ("messages", "system", "_open")

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.system: list[str] = []
        #: (role, kind) of the last message when it can take more blocks
        self._open: tuple[str, str] | None = None

    def add(self, role: str, kind: str, blocks: list[dict[str, Any]]) -> None:
        """Append ``blocks``; merged into the last message when it has the same role and kind."""
        if self._open == (role, kind):
            self.messages[-1]["content"].extend(blocks)
            return
        self.messages.append({"role": role, "content": blocks})
        self._open = (role, kind)


def _input_items(value: Any) -> tuple[list[str], list[dict[str, Any]]]:
    if value is None:
        return [], []
    if isinstance(value, str):
        return [], [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise InvalidRequest("input: must be a string or a list of items")
    conversation = _Conversation()
    for index, item in enumerate(value):
        _input_item(conversation, item, f"input.{index}")
    return conversation.system, conversation.messages


def _input_item(conversation: _Conversation, item: Any, path: str) -> None:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{path}: must be an object")
    kind = item.get("type", "message" if "role" in item else None)
    if not isinstance(kind, str):
        raise InvalidRequest(f"{path}.type: must be a string")
    if kind == "message":
        _message_item(conversation, item, path)
    elif kind in ("function_call", "custom_tool_call"):
        call_id = _non_empty(item, "call_id", path)
        name = _non_empty(item, "name", path)
        if kind == "function_call":
            arguments = parse_arguments(item.get("arguments"), path)
        else:
            arguments = {"input": _string(item, "input", path)}
        conversation.add("assistant", "turn", [tool_use(call_id, name, arguments)])
    elif kind in ("function_call_output", "custom_tool_call_output"):
        call_id = _non_empty(item, "call_id", path)
        block = tool_result(call_id, item.get("output"), f"{path}.output")
        conversation.add("user", "results", [block])
    else:
        log.debug("%s: input item of type %s ignored", path, kind[:50])


def _message_item(conversation: _Conversation, item: dict[str, Any], path: str) -> None:
    role = item.get("role")
    if not isinstance(role, str):
        raise InvalidRequest(f"{path}.role: must be a string")
    content = item.get("content")
    if role in SYSTEM_ROLES:
        conversation.system.append(_plain_text(content, f"{path}.content"))
    elif role == "assistant":
        text = _assistant_text(content, f"{path}.content")
        if text:
            conversation.add("assistant", "turn", [{"type": "text", "text": text}])
    elif role == "user":
        if isinstance(content, str):
            blocks = [{"type": "text", "text": content}]
        else:
            parts = _user_content(content, path)
            blocks = parts if isinstance(parts, list) else [{"type": "text", "text": parts}]
        conversation.add("user", "message", blocks)
    else:
        raise InvalidRequest(
            f"{path}.role: must be user, assistant, system or developer; got {role[:50]!r}"
        )


def _input_image(part: dict[str, Any], path: str) -> dict[str, Any]:
    url = part.get("image_url")
    if url is None:
        file_id = part.get("file_id")
        reference = file_id if isinstance(file_id, str) else "file"
        return {"type": "image", "source": {"type": "file", "file_id": reference}}
    if not isinstance(url, str):
        raise InvalidRequest(f"{path}.image_url: must be a string")
    return image_block(url)


# --------------------------------------------------------------------------- shared pieces


def image_block(url: str) -> dict[str, Any]:
    """An Anthropic image block for an OpenAI image URL (base64 for data URLs)."""
    if url.startswith(DATA_URL_PREFIX):
        head, marker, data = url.partition(BASE64_MARKER)
        if marker:
            media_type = head[len(DATA_URL_PREFIX) :].strip()
            return {
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            }
    return {"type": "image", "source": {"type": "url", "url": url}}


def tool_use(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def tool_result(call_id: str, content: Any, path: str) -> dict[str, Any]:
    """A ``tool_result`` block from a tool message's or function output's content."""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if content is None or isinstance(content, str):
        block["content"] = content or ""
    elif isinstance(content, list):
        block["content"] = [_result_part(part, f"{path}.{i}") for i, part in enumerate(content)]
    else:
        raise InvalidRequest(f"{path}: must be a string or a list of content parts")
    return block


def _result_part(part: Any, path: str) -> dict[str, Any]:
    kind = _part_type(part, path)
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": _string(part, "text", path)}
    if kind == "input_image":
        return _input_image(part, path)
    if kind == "image_url":
        return _user_part(part, path)
    return {"type": kind}


def parse_arguments(arguments: Any, path: str) -> dict[str, Any]:
    """Tool-call arguments (a JSON string, or already an object) as an object."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        raise InvalidRequest(f"{path}.arguments: must be a JSON string")
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        log.debug("%s.arguments: not a JSON object; sent upstream as {}", path)
        return {}
    return parsed


def _tools(value: Any, path: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{path}: must be a list")
    tools = []
    for index, tool in enumerate(value):
        converted = _tool(tool, f"{path}.{index}")
        if converted is not None:
            tools.append(converted)
    return tools


def _tool(tool: Any, path: str) -> dict[str, Any] | None:
    """Chat ``{type: function, function: {…}}``, Responses/Cursor flat ``{name, …}``."""
    if not isinstance(tool, dict):
        raise InvalidRequest(f"{path}: must be an object")
    kind = tool.get("type")
    if kind not in (None, "function"):
        log.debug("%s: tool of type %s dropped (only function tools reach Kiro)", path, kind)
        return None
    spec = tool
    if isinstance(tool.get("function"), dict):
        spec, path = tool["function"], f"{path}.function"
    name = _non_empty(spec, "name", path)
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(f"{path}.description: must be a string")
    schema = spec.get("parameters", spec.get("input_schema"))
    out: dict[str, Any] = {"name": name, "description": description or ""}
    if schema is not None:
        out["input_schema"] = schema
    return out


def _add_thinking(out: dict[str, Any], effort: Any, path: str, options: ConvertOptions) -> None:
    if effort is None:
        return
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise InvalidRequest(f"{path}: must be one of {', '.join(EFFORTS)}")
    level = EFFORTS[effort]
    if level is None:
        out["thinking"] = {"type": "disabled"}
        return
    info = resolve_model(
        out["model"],
        options.model_overrides,
        thinking_suffix=options.thinking_suffix,
        openai_alias_model=options.openai_alias_model,
    )
    # the converter's rule for the thinking suffix: adaptive from the 4.6 generation on
    adaptive = info.context_window >= LARGE_CONTEXT_WINDOW
    out["thinking"] = {"type": "adaptive" if adaptive else "enabled"}
    out.setdefault("output_config", {})["effort"] = level


def _chat_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    fmt = _object(value, "response_format")
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = _object(fmt.get("json_schema"), "response_format.json_schema")
        return {"type": "json_schema", "schema": spec.get("schema", ANY_OBJECT_SCHEMA)}
    if kind == "json_object":
        return {"type": "json_schema", "schema": ANY_OBJECT_SCHEMA}
    return None


def _text_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    fmt = _object(value, "text").get("format")
    if fmt is None:
        return None
    fmt = _object(fmt, "text.format")
    kind = fmt.get("type")
    if kind == "json_schema":
        return {"type": "json_schema", "schema": fmt.get("schema", ANY_OBJECT_SCHEMA)}
    if kind == "json_object":
        return {"type": "json_schema", "schema": ANY_OBJECT_SCHEMA}
    return None


def _add_format(out: dict[str, Any], fmt: dict[str, Any] | None) -> None:
    if fmt is not None:
        out.setdefault("output_config", {})["format"] = fmt


def _model(request: Mapping[str, Any]) -> str:
    if not isinstance(request, Mapping):
        raise InvalidRequest("request body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model: must be a non-empty string")
    return model


def _flag(request: Mapping[str, Any], key: str) -> bool:
    value = request.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"{key}: must be a boolean")
    return value is True


def _plain_text(content: Any, path: str) -> str:
    """System content: a string or a list of text parts, joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string or a list of text parts")
    texts = []
    for index, part in enumerate(content):
        part_path = f"{path}.{index}"
        if _part_type(part, part_path) in _TEXT_PARTS:
            texts.append(_string(part, "text", part_path))
    return "\n".join(texts)


def _part_type(part: Any, path: str) -> str:
    if not isinstance(part, dict):
        raise InvalidRequest(f"{path}: must be an object")
    kind = part.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest(f"{path}.type: must be a string")
    return kind


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{path}: must be an object")
    return value


def _string(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{path}.{key}: must be a string")
    return value


def _non_empty(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{path}.{key}: must be a non-empty string")
    return value
