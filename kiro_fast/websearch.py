"""Anthropic's ``web_search`` server tool, served through Kiro's MCP endpoint (kiro-api.md §5.12).

Claude Code's WebSearch tool sends a sub-request whose only tool is the server tool
``{"type": "web_search_20250305", "name": "web_search"}``. The upstream chat cannot run
it, so (kiro.rs's design) such a request never reaches ``generateAssistantResponse``:

1. The query is the first message's first text, less Claude Code's
   ``Perform a web search for the query: `` prefix; none is a 400.
2. ``POST {kiroApiBase}/mcp`` with the JSON-RPC ``tools/call`` of ``web_search`` and the
   MCP headers of spec §3 (the chat user agents, no opt-out / agent-mode headers,
   ``x-amzn-kiro-profile-arn`` when the credential has one). Credentials come from the
   pool like chat: an expired token is refreshed first, a rejected one is refreshed once
   and retried, a quota-exhausted one is disabled and another tried, throttling and 5xx
   are retried with backoff (:class:`kiro_fast.failover.FailoverPolicy`).
3. The answer (``result.content[0].text`` is JSON inside a string) becomes the blocks
   Claude Code expects: a short text, a ``server_tool_use`` with the query, a
   ``web_search_tool_result`` with one ``web_search_result`` per hit (the snippet as
   ``encrypted_content``, ``page_age`` from ``publishedDate``), and a Markdown summary;
   ``usage.server_tool_use.web_search_requests`` is 1.
4. Any MCP failure (all attempts failed, a JSON-RPC error, an unreadable answer) gives
   an empty result list and the summary "No results found." — never an error response.

Unlike kiro.rs, which always answers with SSE, the client's ``stream`` flag is honoured:
SSE when true, one JSON message otherwise (the SDK's non-streaming call needs JSON).

Counter (exported as a metric): :data:`WEB_SEARCH` — ``requests``, ``failures``.

Must not know the chat event stream; it renders its own small answer and writes it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from . import metrics
from .credentials import Credential
from .errors import (
    InvalidRequest,
    KiroFastError,
    TokenRefreshError,
    UpstreamError,
)
from .failover import FailoverPolicy, FailoverSettings
from .pool import CredentialPool
from .protocol import Exchange
from .relay import JSON_HEADERS, SSE_HEADERS
from .upstream import UpstreamClient
from .upstream_errors import classify

log = logging.getLogger("kiro_fast.websearch")

WEB_SEARCH: Counter[str] = metrics.CountedMap(metrics.WEB_SEARCH)

#: Claude Code's wording around the query (kiro.rs strips it the same way).
QUERY_PREFIX: Final = "Perform a web search for the query: "
#: Snippets in the summary text are cut to this many characters (kiro.rs).
SUMMARY_SNIPPET_CHARS: Final = 200
#: The summary streams in deltas of this size (kiro.rs).
SUMMARY_DELTA_CHARS: Final = 100
#: A search answers in a few seconds; the client waits on it.
MCP_TIMEOUT: Final = 30.0
NO_RESULTS: Final = "No results found."
DISCLAIMER: Final = (
    "These results come from a web search; check the sources before relying on them."
)
#: MCP headers are the chat headers less these two (spec §3).
_CHAT_ONLY_HEADERS: Final = ("x-amzn-codewhisperer-optout", "x-amzn-kiro-agent-mode")
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_SUFFIX_ALPHABET: Final = string.ascii_lowercase + string.digits


@dataclass(frozen=True, slots=True)
class SearchResult:
    title: str
    url: str
    snippet: str
    #: publishedDate, milliseconds since the epoch
    published_ms: int | None = None


def search_query(request: Mapping[str, Any]) -> str:
    """The query of a web-search sub-request (InvalidRequest when there is none)."""
    messages = request.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    content = first.get("content") if isinstance(first, dict) else None
    text: Any = content
    if isinstance(content, list):
        text = next(
            (b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"),
            None,
        )
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("web search: the first message carries no query text")
    query = text.strip()
    if query.startswith(QUERY_PREFIX):
        query = query[len(QUERY_PREFIX) :].strip()
    if not query:
        raise InvalidRequest("web search: the query is empty")
    return query


def rpc_request(query: str) -> dict[str, Any]:
    """The JSON-RPC body kiro.rs sends (its id format: tool-use id, epoch ms, suffix)."""
    token = "".join(secrets.choice(_ID_ALPHABET) for _ in range(22))
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(8))
    return {
        "id": f"web_search_tooluse_{token}_{int(time.time() * 1000)}_{suffix}",
        "jsonrpc": "2.0",
        "method": "tools/call",
        "params": {"name": "web_search", "arguments": {"query": query}},
    }


def parse_results(body: bytes) -> list[SearchResult]:
    """The hits of an MCP answer; ValueError when it is an error or unreadable."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError("MCP answer is not an object")
    error = data.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        raise ValueError(f"MCP error: {message}")
    result = data.get("result")
    content = result.get("content") if isinstance(result, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        raise ValueError("MCP answer has no content")
    inner = orjson.loads(content[0].get("text") or "null")
    hits = inner.get("results") if isinstance(inner, dict) else None
    if not isinstance(hits, list):
        raise ValueError("MCP answer has no result list")
    return [_result(hit) for hit in hits if isinstance(hit, dict)]


def _result(hit: dict[str, Any]) -> SearchResult:
    published = hit.get("publishedDate")
    return SearchResult(
        title=str(hit.get("title") or ""),
        url=str(hit.get("url") or ""),
        snippet=str(hit.get("snippet") or ""),
        published_ms=published if isinstance(published, int) and published > 0 else None,
    )


def page_age(published_ms: int | None) -> str | None:
    """``January 1, 2025`` (Anthropic's page_age style), or None."""
    if published_ms is None:
        return None
    try:
        day = datetime.fromtimestamp(published_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return f"{day:%B} {day.day}, {day.year}"


def summary(query: str, results: list[SearchResult]) -> str:
    if not results:
        return NO_RESULTS
    lines = [f'Here are the search results for "{query}":', ""]
    for number, hit in enumerate(results, 1):
        snippet = hit.snippet
        if len(snippet) > SUMMARY_SNIPPET_CHARS:
            snippet = snippet[:SUMMARY_SNIPPET_CHARS] + "..."
        lines += [f"{number}. **{hit.title}**", f"   {snippet}", f"   Source: {hit.url}", ""]
    lines.append(DISCLAIMER)
    return "\n".join(lines)


def mcp_headers(client: UpstreamClient, cred: Credential) -> dict[str, str]:
    headers = client.chat_headers(cred)
    for name in _CHAT_ONLY_HEADERS:
        headers.pop(name, None)
    if cred.profile_arn:
        headers["x-amzn-kiro-profile-arn"] = cred.profile_arn
    return headers


class WebSearch:
    """Runs one search against the pool with chat's failover rules."""

    def __init__(
        self,
        pool: CredentialPool,
        client: UpstreamClient,
        failover: FailoverSettings | None = None,
    ) -> None:
        self.pool = pool
        self.client = client
        self.failover = failover

    async def search(self, query: str) -> list[SearchResult]:
        """The hits; an empty list when every attempt failed (logged and counted)."""
        WEB_SEARCH["requests"] += 1
        try:
            return await self._attempts(rpc_request(query))
        except (KiroFastError, ValueError) as exc:
            WEB_SEARCH["failures"] += 1
            message = exc.message if isinstance(exc, KiroFastError) else str(exc)
            log.warning("web search failed, answering with no results: %s", message)
            return []

    async def answer(
        self, request: Mapping[str, Any], exchange: Exchange, *, input_tokens: int
    ) -> None:
        """Answer a web-search sub-request on ``exchange``: SSE when it asked to stream."""
        query = search_query(request)
        model = request.get("model")
        model = model if isinstance(model, str) else ""
        blocks = answer_blocks(query, await self.search(query))
        message_id = "msg_" + uuid.uuid4().hex
        if request.get("stream") is True:
            exchange.start_stream(200, SSE_HEADERS)
            exchange.write(sse(model, message_id, input_tokens, blocks))
            exchange.end()
        else:
            body = orjson.dumps(message(model, message_id, input_tokens, blocks))
            exchange.send(200, JSON_HEADERS, body)

    async def _attempts(self, body: dict[str, Any]) -> list[SearchResult]:
        policy = FailoverPolicy(len(self.pool), settings=self.failover)
        excluded: set[int] = set()
        prefer: int | None = None
        while True:
            cred: Credential | None = None
            token: str | None = None
            try:
                # NoCredentialAvailable (or CredentialsBusy) ends the search
                async with self.pool.lease(exclude=excluded, prefer=prefer) as lease:
                    cred, token = lease.cred, lease.cred.access_token
                    return await self._call(cred, body)
            except (UpstreamError, TokenRefreshError) as exc:
                if cred is None:
                    raise
                decision = policy.decide(exc, cred.id)
                if await self.pool.apply(decision, cred, token):
                    excluded.add(cred.id)
                if decision.action == "fail":
                    raise
                prefer = cred.id if decision.action != "retry_other" else None
                if decision.delay:
                    await asyncio.sleep(decision.delay)

    async def _call(self, cred: Credential, body: dict[str, Any]) -> list[SearchResult]:
        status, raw = await self.client.call_json(
            "POST",
            self.client.api_base(cred) + "/mcp",
            cred=cred,
            headers=mcp_headers(self.client, cred),
            json_body=body,
            timeout=MCP_TIMEOUT,
        )
        if status != 200:
            raise classify(status, raw)
        try:
            return parse_results(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"unreadable MCP answer: {exc}") from None


# --------------------------------------------------------------------------- the answer


def answer_blocks(query: str, results: list[SearchResult]) -> list[dict[str, Any]]:
    """The content blocks of the synthesised message."""
    tool_id = "srvtoolu_" + secrets.token_hex(16)
    return [
        {"type": "text", "text": f'I\'ll search for "{query}".'},
        {"type": "server_tool_use", "id": tool_id, "name": "web_search", "input": {"query": query}},
        {
            "type": "web_search_tool_result",
            "tool_use_id": tool_id,
            "content": [
                {
                    "type": "web_search_result",
                    "title": hit.title,
                    "url": hit.url,
                    "encrypted_content": hit.snippet,
                    "page_age": page_age(hit.published_ms),
                }
                for hit in results
            ],
        },
        {"type": "text", "text": summary(query, results)},
    ]


def _usage(input_tokens: int, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    chars = len(blocks[0]["text"]) + len(blocks[-1]["text"])
    return {
        "input_tokens": input_tokens,
        "output_tokens": max(1, (chars + 3) // 4),
        "server_tool_use": {"web_search_requests": 1},
    }


def message(
    model: str, message_id: str, input_tokens: int, blocks: list[dict[str, Any]]
) -> dict[str, Any]:
    """The non-streaming Anthropic message."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": blocks,
        "model": model,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _usage(input_tokens, blocks),
    }


def sse(model: str, message_id: str, input_tokens: int, blocks: list[dict[str, Any]]) -> bytes:
    """The same message as Anthropic SSE events (kiro.rs's event order)."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0},
    }
    out = [_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            out.append(_block_start(index, {"type": "text", "text": ""}))
            text = block["text"]
            for at in range(0, len(text), SUMMARY_DELTA_CHARS):
                delta = {"type": "text_delta", "text": text[at : at + SUMMARY_DELTA_CHARS]}
                out.append(_event("content_block_delta", _delta(index, delta)))
        else:
            out.append(_block_start(index, block))  # input/results complete at the start
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    usage = _usage(input_tokens, blocks)
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    out.append(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    out.append(_event("message_stop", {"type": "message_stop"}))
    return b"".join(out)


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    payload = {"type": "content_block_start", "index": index, "content_block": block}
    return _event("content_block_start", payload)


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
