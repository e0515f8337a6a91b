"""Runtime settings changed through the admin API apply to the next request without a
restart (kiro-auth.md §2.3's settings page): the identity sent upstream, the proxy, the
pool strategy, timeouts and pings, the thinking suffix and the minimum usage threshold —
in the process that took the change at once, and in another process sharing the SQLite
state file within about a second (``live_settings.CHECK_INTERVAL``).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_helpers import MODEL, Admin, Http, eventually
from e2e_harness import API_KEY, REFRESH_TOKEN, Harness, directive
from proc_harness import KiroProcess, write_files
from proxy_servers import HttpProxy

from kiro_fast.credentials import Credential
from kiro_fast.testing import FakeUpstream, Usage

ADMIN_KEY = "sk-admin-" + "l" * 24
SECOND_TOKEN = "aorSecond" + "s" * 120


def two_accounts(fake: FakeUpstream) -> list[Credential]:
    fake.accounts.add_social(REFRESH_TOKEN, usage=Usage(usage_limit=2000, current_usage=1900))
    fake.accounts.add_social(SECOND_TOKEN)
    return [
        Credential(id=1, auth_method="social", refresh_token=REFRESH_TOKEN),
        Credential(id=2, auth_method="social", refresh_token=SECOND_TOKEN, priority=1),
    ]


@pytest.fixture
def harness() -> Iterator[Harness]:
    with Harness(config={"adminApiKey": ADMIN_KEY}, credentials=two_accounts) as running:
        yield running


@pytest.fixture
def http(harness: Harness) -> Http:
    return Http(harness.url)


@pytest.fixture
def admin(http: Http) -> Admin:
    return Admin(http, ADMIN_KEY)


def chats(fake: FakeUpstream) -> list[Any]:
    return [r for r in fake.requests if r.endpoint == "generateAssistantResponse"]


def served_by(harness: Harness) -> int:
    """Which of the two accounts answered the last chat (1 or 2)."""
    last = chats(harness.fake)[-1].headers["authorization"]
    tokens = [a.access_token for a in harness.fake.accounts.accounts]
    return tokens.index(last.removeprefix("Bearer ")) + 1


def test_identity_changes_on_the_next_request(harness: Harness, http: Http, admin: Admin) -> None:
    assert http.chat(API_KEY).status == 200
    agent = chats(harness.fake)[-1].headers["user-agent"]
    assert "KiroIDE-0.11.107-" in agent and "md/nodejs#22.22.0" in agent
    admin.ok(
        "PUT",
        "/settings",
        {"kiroVersion": "0.12.34", "nodeVersion": "24.1.0", "systemVersion": "linux#6.1.0"},
    )
    assert http.chat(API_KEY).status == 200
    headers = chats(harness.fake)[-1].headers
    assert "KiroIDE-0.12.34-" in headers["user-agent"]
    assert "md/nodejs#24.1.0" in headers["user-agent"] and "os/linux#6.1.0" in headers["user-agent"]
    assert "KiroIDE-0.12.34-" in headers["x-amz-user-agent"]


def test_strategy_changes_on_the_next_request(harness: Harness, http: Http, admin: Admin) -> None:
    for _ in range(3):
        assert http.chat(API_KEY).status == 200
        assert served_by(harness) == 1  # priority: always the first
    admin.ok("PUT", "/settings", {"loadBalancingMode": "round_robin"})
    seen = []
    for _ in range(4):
        assert http.chat(API_KEY).status == 200
        seen.append(served_by(harness))
    assert sorted(seen) == [1, 1, 2, 2] and seen[0] != seen[1]


def test_proxy_changes_on_the_next_request(harness: Harness, http: Http, admin: Admin) -> None:
    proxy = HttpProxy("pat", "proxy-password-live")
    harness.call(proxy.start())
    try:
        assert http.chat(API_KEY).status == 200 and proxy.connections == 0
        admin.ok(
            "PUT",
            "/settings",
            {"proxyUrl": proxy.url, "proxyUsername": "pat", "proxyPassword": "proxy-password-live"},
        )
        assert http.chat(API_KEY, "through the proxy").status == 200
        assert b"generateAssistantResponse" in proxy.client_bytes
        assert b"through the proxy" in proxy.client_bytes
        admin.ok("PUT", "/settings", {"proxyUrl": None})
        assert http.chat(API_KEY, "direct again").status == 200
        assert b"direct again" not in proxy.client_bytes
    finally:
        harness.call(proxy.stop())


def test_first_byte_timeout_and_ping_interval_change(
    harness: Harness, http: Http, admin: Admin
) -> None:
    slow = directive({"text": "late but fine", "headers_delay_ms": 700})
    assert http.chat(API_KEY, slow).status == 200  # within the harness's 3 s
    admin.ok("PUT", "/settings", {"firstByteTimeout": 0.3})
    answer = http.chat(API_KEY, slow)
    assert answer.status == 504 and answer.json["error"]["type"] == "api_error"
    admin.ok("PUT", "/settings", {"firstByteTimeout": 5, "pingInterval": 0.1})
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": slow}],
    }
    streamed = http.request("POST", "/v1/messages", body, {"x-api-key": API_KEY})
    assert streamed.status == 200
    events = [line for line in streamed.body.decode().splitlines() if line.startswith("event:")]
    assert events.index("event: ping") < events.index("event: content_block_delta")


def test_thinking_suffix_changes_on_the_next_request(
    harness: Harness, http: Http, admin: Admin
) -> None:
    assert http.chat(API_KEY, model=MODEL + "-thinking").status == 200
    assert b"<thinking_mode>" in chats(harness.fake)[-1].body
    admin.ok("PUT", "/settings", {"thinkingSuffix": "-deep"})
    assert http.chat(API_KEY, model=MODEL + "-deep").status == 200
    assert b"<thinking_mode>" in chats(harness.fake)[-1].body
    assert http.openai_chat(API_KEY, model=MODEL + "-deep").status == 200
    assert b"<thinking_mode>" in chats(harness.fake)[-1].body
    assert http.chat(API_KEY, model=MODEL).status == 200
    assert b"<thinking_mode>" not in chats(harness.fake)[-1].body


def test_minimum_usage_threshold_skips_low_credentials(
    harness: Harness, http: Http, admin: Admin
) -> None:
    assert http.chat(API_KEY).status == 200 and served_by(harness) == 1
    admin.ok("PUT", "/settings", {"minUsageThreshold": 500})
    verified = admin.ok("POST", "/credentials/verify", {})["results"]
    assert [r["balance"]["remaining"] for r in verified] == [100.0, 2000.0]
    for _ in range(2):
        assert http.chat(API_KEY).status == 200 and served_by(harness) == 2
    admin.ok("POST", "/credentials/2/disabled", {"disabled": True})
    refused = http.chat(API_KEY)
    assert refused.status == 529 and "minUsageThreshold" in refused.json["error"]["message"]
    admin.ok("PUT", "/settings", {"minUsageThreshold": None})
    assert http.chat(API_KEY).status == 200 and served_by(harness) == 1


def test_a_change_reaches_another_process_sharing_the_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    shared = {"adminApiKey": ADMIN_KEY, "stateUrl": f"sqlite:///{database}"}
    with Harness(config=shared) as harness:
        admin = Admin(Http(harness.url), ADMIN_KEY)
        worker_dir = tmp_path / "worker"
        worker_dir.mkdir()
        # No file of its own: it serves the credential the first process put in the store.
        config, creds = write_files(
            worker_dir, harness.fake.url, api_key=API_KEY, extra=shared, credentials=[]
        )
        process = KiroProcess(
            ["serve", "-c", str(config), "--credentials", str(creds)], cwd=worker_dir
        )
        try:
            port = int(process.wait_line(r"listening on http://[^:]+:(\d+)").group(1))
            other = Http(f"http://127.0.0.1:{port}")
            assert other.chat(API_KEY).status == 200
            assert "KiroIDE-0.11.107-" in chats(harness.fake)[-1].headers["user-agent"]
            admin.ok("PUT", "/settings", {"kiroVersion": "0.13.0"})

            def other_process_uses_it() -> bool:
                assert other.chat(API_KEY).status == 200
                return "KiroIDE-0.13.0-" in chats(harness.fake)[-1].headers["user-agent"]

            eventually(other_process_uses_it, timeout=15)
            # ...and its own admin API reports the value stored by the first process.
            view = Admin(other, ADMIN_KEY).ok("GET", "/settings")
            assert view["settings"]["kiroVersion"] == "0.13.0"
            assert view["overridden"] == ["kiroVersion"]
        finally:
            process.signal(signal.SIGTERM)
            assert process.wait_exit() == 0
