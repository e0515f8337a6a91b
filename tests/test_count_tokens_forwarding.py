"""count_tokens forwarded to a configured external endpoint (kiro-api.md §8.4), with fallback.

A tiny local HTTP server plays the external Anthropic-compatible counter.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from e2e_harness import Harness

from kiro_fast.count_tokens import COUNT_TOKENS

COUNTER_KEY = "ct-secret-key"


class Counter:
    """The external counter: records requests, answers what the test sets."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.status = 200
        self.body: bytes = b'{"input_tokens": 12345}'
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers["content-length"])
                payload = json.loads(self.rfile.read(length))
                headers = {k.lower(): v for k, v in self.headers.items()}
                counter.requests.append((headers, payload))
                self.send_response(counter.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(counter.body)))
                self.end_headers()
                self.wfile.write(counter.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1/messages/count_tokens"


@pytest.fixture(scope="module")
def counter() -> Iterator[Counter]:
    running = Counter()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


def harness_for(counter: Counter, auth_type: str) -> Harness:
    config = {
        "countTokensApiUrl": counter.url,
        "countTokensApiKey": COUNTER_KEY,
        "countTokensAuthType": auth_type,
    }
    return Harness(config=config)


REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "hello world"}],
}


@pytest.mark.parametrize(
    ("auth_type", "header", "value"),
    [("x-api-key", "x-api-key", COUNTER_KEY), ("bearer", "authorization", "Bearer " + COUNTER_KEY)],
)
def test_forwarded_with_the_configured_key(
    counter: Counter, auth_type: str, header: str, value: str
) -> None:
    counter.status, counter.body = 200, b'{"input_tokens": 12345}'
    before = COUNT_TOKENS["forwarded"]
    with harness_for(counter, auth_type) as harness:
        client = harness.anthropic()
        counted = client.messages.count_tokens(**REQUEST)
    assert counted.input_tokens == 12345
    headers, payload = counter.requests[-1]
    assert headers[header] == value
    assert payload["messages"] == REQUEST["messages"] and payload["system"] == "Be brief."
    assert COUNT_TOKENS["forwarded"] == before + 1


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b'{"error": "boom"}'), (200, b"not json"), (200, b'{"input_tokens": "many"}')],
)
def test_any_failure_falls_back_to_the_local_estimate(
    counter: Counter, status: int, body: bytes
) -> None:
    counter.status, counter.body = status, body
    before = COUNT_TOKENS["fallback"]
    with harness_for(counter, "x-api-key") as harness:
        client = harness.anthropic()
        counted = client.messages.count_tokens(**REQUEST)
    # local: "Be brief." 2 words + "." , the system ack (5 words + "."), "hello world";
    # 9 word runs x 1.04 + 2 punctuation runs x 1.03 = 11.42 -> 11; 3 messages x 3; 4,134
    assert counted.input_tokens == 11 + 9 + 4_134
    assert COUNT_TOKENS["fallback"] == before + 1


def test_unreachable_counter_falls_back(counter: Counter) -> None:
    config = {"countTokensApiUrl": "http://127.0.0.1:9/count_tokens"}
    with Harness(config=config) as harness:
        client = harness.anthropic()
        assert client.messages.count_tokens(**REQUEST).input_tokens == 11 + 9 + 4_134
