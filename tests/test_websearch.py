"""The web_search server tool through Kiro's MCP endpoint (kiro-api.md §5.12), end to end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from e2e_harness import Harness

from kiro_fast.errors import InvalidRequest
from kiro_fast.testing import McpError, Scenario
from kiro_fast.websearch import NO_RESULTS, WEB_SEARCH, page_age, search_query

MODEL = "claude-opus-4-8"
WEB_SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}
QUERY = "rust latest version"


def sub_request(query: str = QUERY) -> list[dict[str, Any]]:
    """Claude Code's WebSearch sub-request message."""
    return [{"role": "user", "content": f"Perform a web search for the query: {query}"}]


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with Harness() as running:
        yield running


@pytest.fixture
def client(harness: Harness) -> anthropic.Anthropic:
    return harness.anthropic()  # type: ignore[no-any-return]


def mcp_requests(harness: Harness) -> list[Any]:
    return harness.call(  # type: ignore[no-any-return]
        lambda: [r for r in harness.fake.requests if r.endpoint == "mcp"]
    )


def chat_count(harness: Harness) -> int:
    return harness.call(lambda: harness.fake.counts["generateAssistantResponse"])  # type: ignore[no-any-return]


def check_blocks(message: Any, query: str, results: int) -> None:
    kinds = [block.type for block in message.content]
    assert kinds == ["text", "server_tool_use", "web_search_tool_result", "text"]
    use, found = message.content[1], message.content[2]
    assert use.name == "web_search" and use.input == {"query": query}
    assert use.id.startswith("srvtoolu_") and found.tool_use_id == use.id
    assert len(found.content) == results
    assert message.stop_reason == "end_turn"
    assert message.usage.server_tool_use.web_search_requests == 1


def test_web_search_non_streaming(harness: Harness, client: anthropic.Anthropic) -> None:
    chats = chat_count(harness)
    message = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        tools=[WEB_SEARCH_TOOL],  # type: ignore[list-item]
        messages=sub_request(),  # type: ignore[arg-type]
    )
    # the fake's deterministic hits (three by default) for the query
    check_blocks(message, QUERY, 3)
    first = message.content[2].content[0]  # type: ignore[union-attr]
    assert first.title == f"{QUERY} - result 1"
    assert first.url == "https://example1.com/rust-latest-version"
    assert first.page_age == "January 1, 2025"
    assert first.encrypted_content.startswith(f"Result 1 about {QUERY}")
    summary = message.content[3].text  # type: ignore[union-attr]
    assert summary.startswith(f'Here are the search results for "{QUERY}":')
    assert "https://example3.com/rust-latest-version" in summary
    assert chat_count(harness) == chats  # never sent to the chat endpoint
    rpc = mcp_requests(harness)[-1]
    assert rpc.json["method"] == "tools/call"
    assert rpc.json["params"] == {"name": "web_search", "arguments": {"query": QUERY}}
    assert rpc.json["id"].startswith("web_search_tooluse_")
    assert rpc.headers["authorization"].startswith("Bearer ")
    assert "x-amzn-kiro-agent-mode" not in rpc.headers
    assert "x-amzn-codewhisperer-optout" not in rpc.headers


def test_web_search_streaming(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=1024,
        tools=[WEB_SEARCH_TOOL],  # type: ignore[list-item]
        messages=sub_request("python asyncio timeout"),  # type: ignore[arg-type]
    ) as stream:
        final = stream.get_final_message()
    check_blocks(final, "python asyncio timeout", 3)


@pytest.mark.parametrize(
    "failure",
    [
        McpError(-32603, "Internal error"),
        Scenario(error="internal"),
        Scenario(error="improperly_formed"),
    ],
)
def test_mcp_failure_gives_empty_results_not_an_error(
    harness: Harness, client: anthropic.Anthropic, failure: Any
) -> None:
    before = WEB_SEARCH["failures"]
    # a 500 is retried (chat's policy): every attempt fails
    harness.call(lambda: harness.fake.enqueue_mcp(failure, count=9))
    try:
        message = client.messages.create(
            model=MODEL,
            max_tokens=1024,
            tools=[WEB_SEARCH_TOOL],  # type: ignore[list-item]
            messages=sub_request(),  # type: ignore[arg-type]
        )
    finally:
        harness.call(lambda: harness.fake.router.mcp_queue.clear())
    check_blocks(message, QUERY, 0)
    assert message.content[3].text == NO_RESULTS  # type: ignore[union-attr]
    assert WEB_SEARCH["failures"] == before + 1


def test_rejected_token_is_refreshed_once_like_chat(
    harness: Harness, client: anthropic.Anthropic
) -> None:
    refreshes = harness.call(lambda: harness.fake.accounts.refresh_count)
    harness.call(lambda: harness.fake.accounts.expire_access_tokens())
    message = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        tools=[WEB_SEARCH_TOOL],  # type: ignore[list-item]
        messages=sub_request(),  # type: ignore[arg-type]
    )
    check_blocks(message, QUERY, 3)
    assert harness.call(lambda: harness.fake.accounts.refresh_count) == refreshes + 1


def test_web_search_among_other_tools_goes_to_chat(
    harness: Harness, client: anthropic.Anthropic
) -> None:
    chats = chat_count(harness)
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=[
            WEB_SEARCH_TOOL,  # type: ignore[list-item]
            {"name": "Read", "description": "Read a file", "input_schema": {"type": "object"}},
        ],
        messages=[{"role": "user", "content": "hello"}],
    )
    assert chat_count(harness) == chats + 1


def test_switched_off_the_tool_is_dropped_and_chat_answers() -> None:
    with Harness(config={"webSearch": False}) as off:
        client = off.anthropic()
        message = client.messages.create(
            model=MODEL,
            max_tokens=64,
            tools=[WEB_SEARCH_TOOL],  # type: ignore[list-item]
            messages=sub_request(),  # type: ignore[arg-type]
        )
        assert [block.type for block in message.content] == ["text"]
        assert off.call(lambda: off.fake.counts["mcp"]) == 0


def test_query_extraction_and_page_age() -> None:
    assert search_query({"messages": sub_request("x y")}) == "x y"
    blocks = [{"type": "text", "text": "plain query"}]
    assert search_query({"messages": [{"role": "user", "content": blocks}]}) == "plain query"
    with pytest.raises(InvalidRequest, match="no query"):
        search_query({"messages": [{"role": "user", "content": []}]})
    assert page_age(1_735_689_600_000) == "January 1, 2025"
    assert page_age(None) is None
