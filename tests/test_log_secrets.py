"""No secret reaches a log line, at debug level, in either format, on any path.

kiro_fast runs as a real process (``python -m kiro_fast serve``) with planted secrets: the
client API key, the admin key, social and IdC refresh tokens, an IdC client secret, a
``ksk_`` Kiro API key, an outbound proxy password (the proxy is real, so the password is
used) and a count_tokens key. Requests go through the normal paths, token refreshes
(good and failing), client errors, upstream errors and a credential being disabled. Every
line it writes is collected; none may contain a secret, the access tokens the fake issued
or the proxy's Basic credentials; and every line written while a request was served
carries that request's id.

The JSON run sets everything with flags and the config file; the text run uses the
kiro2api environment names ``LOG_LEVEL``, ``LOG_FORMAT`` and ``LOG_FILE``.
"""

from __future__ import annotations

import base64
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from proc_harness import (
    FakeThread,
    KiroProcess,
    SSEReader,
    messages_body,
    request,
    write_files,
)
from proxy_servers import HttpProxy

from kiro_fast.testing import FakeSettings

CLIENT_KEY = "sk-plant-client-Q7hT2mV9xK4pL8sW3nB6"
ADMIN_KEY = "sk-plant-admin-Z5rJ1cN8vE2yH6uD4qF0"
WRONG_KEY = "sk-plant-wrong-M3kX9bT6wR1zP5aG7eY2"
SOCIAL_REFRESH = "aorPlantSocial" + "Xq7Lm2Vb9Nc4Tz8Rw1Ks6Jd3Hf5Gp0" * 4
IDC_REFRESH = "aorPlantIdc" + "Pw4Ks9Bn2Vx7Lq1Zr6Tm3Hc8Jf5Gd0" * 4
CLIENT_ID = "plantClientId0123456789"
CLIENT_SECRET = "eyJplantClientSecret.Wq8Hn3Zx6Lv1Rt9Kb4Mc7Jp2Fs5Gd0"
KIRO_API_KEY = "ksk_plantKiroApiKey4Vn8Tx2Lq6Zr1Hb9Kc3Mw7Jd5"
PROXY_USER = "kfproxyuser"
PROXY_PASSWORD = "plant-proxy-pw-H8xQ3vL6nZ1tK9rB4mW7"
COUNT_KEY = "sk-plant-count-T2wK8nR5xB1vL9qZ6hM3"

PLANTED = (
    CLIENT_KEY,
    ADMIN_KEY,
    WRONG_KEY,
    SOCIAL_REFRESH,
    IDC_REFRESH,
    CLIENT_SECRET,
    KIRO_API_KEY,
    PROXY_PASSWORD,
    COUNT_KEY,
    base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode(),
)

#: A shorter window of a secret is a leak too (a "truncated for the log" token, say).
WINDOW = 16


class Stack:
    """The fake upstream and an authenticating HTTP proxy, on one loop in a thread."""

    def __init__(self) -> None:
        self.fake = FakeThread(FakeSettings(seed=11))
        self.proxy = HttpProxy(PROXY_USER, PROXY_PASSWORD)
        self.issued: set[str] = set()

    def start(self) -> Stack:
        self.fake.start()
        self.fake.call(self.proxy.start())
        accounts = self.fake.fake.accounts

        def add() -> None:
            accounts.add_social(SOCIAL_REFRESH)
            accounts.add_idc(IDC_REFRESH, CLIENT_ID, CLIENT_SECRET)
            accounts.add_api_key(KIRO_API_KEY)

        self.fake.call(add)
        return self

    def stop(self) -> None:
        self.fake.call(self.proxy.stop())
        self.fake.stop()

    def note_tokens(self) -> None:
        """Remember every token the fake has issued so far (refreshes rotate them)."""

        def tokens() -> set[str]:
            out: set[str] = set()
            for account in self.fake.fake.accounts.accounts:
                out.update(t for t in (account.access_token, account.refresh_token) if t)
            return out

        self.issued |= self.fake.call(tokens)


@pytest.fixture
def stack() -> Iterator[Stack]:
    running = Stack().start()
    yield running
    running.stop()


def files(tmp_path: Path, stack: Stack, **extra: Any) -> tuple[Path, Path]:
    credentials = [
        {"refreshToken": SOCIAL_REFRESH, "authMethod": "social"},
        {
            "refreshToken": IDC_REFRESH,
            "clientId": CLIENT_ID,
            "clientSecret": CLIENT_SECRET,
            "authMethod": "idc",
            "region": "us-east-1",
        },
        {"kiroApiKey": KIRO_API_KEY, "authMethod": "api_key"},
    ]
    config = {
        "adminApiKey": ADMIN_KEY,
        "proxyUrl": stack.proxy.url,
        "proxyUsername": PROXY_USER,
        "proxyPassword": PROXY_PASSWORD,
        "countTokensApiKey": COUNT_KEY,
        "loadBalancingMode": "round_robin",
        **extra,
    }
    return write_files(
        tmp_path, stack.fake.url, api_key=CLIENT_KEY, extra=config, credentials=credentials
    )


def auth(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"x-api-key": key, "content-type": "application/json"}


def exercise(port: int, stack: Stack) -> list[str]:
    """Every path worth logging; returns the request ids, in order."""
    ids: list[str] = []
    fake = stack.fake.fake

    def send(body: bytes | None, headers: dict[str, str], path: str = "/v1/messages") -> int:
        status, response_headers, _ = request(port, "POST" if body else "GET", path, body, headers)
        ids.append(response_headers["x-request-id"])
        return status

    assert send(None, {}, "/health") == 200
    for _ in range(3):  # round robin: each credential once; two of them refresh first
        assert send(messages_body("hello"), auth()) == 200
    stream = SSEReader(port, "/v1/messages", messages_body("hi", stream=True), auth())
    ids.append(stream.headers["x-request-id"])
    stream.until("message_stop")
    stream.close()
    assert send(messages_body("hi"), auth(WRONG_KEY)) == 401
    bearer = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
    assert send(messages_body("hi"), bearer) == 200
    assert send(b"{not json", auth()) == 400
    failing = '[[fake:{"scenario":"error","error":"improperly_formed"}]]'
    assert send(messages_body("boom " + failing), auth()) == 400
    stack.note_tokens()
    # Refreshes that fail: transient, then a dead refresh token (the credential is disabled).
    stack.fake.call(lambda: fake.accounts.expire_access_tokens())
    stack.fake.call(lambda: fake.accounts.fail_refresh("server_error", 1))
    for _ in range(3):
        send(messages_body("again"), auth())
    stack.fake.call(lambda: fake.accounts.expire_access_tokens())
    stack.fake.call(lambda: fake.accounts.fail_refresh("invalid_grant", 2))
    for _ in range(3):
        send(messages_body("once more"), auth())
    stack.note_tokens()
    assert stack.fake.call(lambda: stack.proxy.connections) > 0  # the password was used
    return ids


def assert_no_secret(text: str, stack: Stack) -> None:
    assert text.strip(), "nothing was logged"
    for secret in (*PLANTED, *stack.issued):
        for start in range(4, len(secret) - WINDOW + 1, WINDOW // 2):
            window = secret[start : start + WINDOW]
            assert window not in text, f"a secret leaked into the logs: …{window}…"


def logged(process: KiroProcess, work: Callable[[], list[str]]) -> list[str]:
    """Run ``work``; if it fails, say what kiro_fast logged meanwhile."""
    try:
        return work()
    except AssertionError as exc:
        tail = "\n".join(process.lines[-40:])
        raise AssertionError(f"{exc}\nkiro_fast logged:\n{tail}") from None


def access_line(request_id: str) -> Callable[[dict[str, Any]], bool]:
    def match(record: dict[str, Any]) -> bool:
        return bool(record["logger"] == "kiro_fast.access" and record["request_id"] == request_id)

    return match


def listening_port(process: KiroProcess) -> int:
    return int(process.wait_line(r"listening on http://[^:]+:(\d+)").group(1))


def test_json_debug_logs_hold_no_secret_and_carry_request_ids(tmp_path: Path, stack: Stack) -> None:
    config, credentials = files(tmp_path, stack, logFormat="json")
    process = KiroProcess(
        ["serve", "-c", str(config), "--credentials", str(credentials), "--log-level", "debug"],
        cwd=tmp_path,
    )
    try:
        port = listening_port(process)
        ids = logged(process, lambda: exercise(port, stack))
        for request_id in ids:  # every request has its access line
            process.wait_record(access_line(request_id))
    finally:
        process.signal(signal.SIGTERM)
        assert process.wait_exit() == 0
    records = process.records()
    assert len(records) == len(process.lines), "every line is one JSON object"
    assert any(r["level"] == "debug" for r in records)
    assert any(r["logger"] == "kiro_fast.access" and r["status"] == 401 for r in records)
    assert_no_secret("\n".join(process.lines), stack)
    assert_request_lines_carry_their_id(records, ids)


def assert_request_lines_carry_their_id(records: list[dict[str, Any]], ids: list[str]) -> None:
    """Requests ran one after another: between a request's first line and its access
    line, kiro_fast served nothing else, so every line there belongs to it."""
    by_id = {rid: [i for i, r in enumerate(records) if r["request_id"] == rid] for rid in ids}
    for rid, positions in by_id.items():
        assert positions, f"request {rid} left no line"
        first, last = positions[0], positions[-1]
        assert records[last]["logger"] == "kiro_fast.access"
        strays = [r for r in records[first:last] if r["request_id"] != rid]
        assert not strays, f"lines inside request {rid} without its id: {strays}"
    inside = sum(len(p) for p in by_id.values())
    assert inside > 2 * len(ids), "a request logs more than its access line at debug level"


def test_text_logs_from_the_kiro2api_environment_hold_no_secret(
    tmp_path: Path, stack: Stack
) -> None:
    config, credentials = files(tmp_path, stack)
    config_values = orjson.loads(config.read_bytes())
    del config_values["apiKey"]  # from the environment this time
    config.write_bytes(orjson.dumps(config_values))
    log_file = tmp_path / "kiro_fast.log"
    env = {
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "text",
        "LOG_FILE": str(log_file),
        "KIRO_FAST_API_KEY": CLIENT_KEY,
    }
    process = KiroProcess(
        ["serve", "-c", str(config), "--credentials", str(credentials)], cwd=tmp_path, env=env
    )
    try:
        port = listening_port(process)
        ids = logged(process, lambda: exercise(port, stack))
    finally:
        process.signal(signal.SIGTERM)
        assert process.wait_exit() == 0
    written = log_file.read_text()
    lines = written.splitlines()
    assert lines == process.lines, "the file gets every line stderr gets"
    assert any(" DEBUG " in line for line in lines)
    text_line = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+ \[([^\]]+)\] ")
    assert all(text_line.match(line) for line in lines if not line.startswith((" ", "Trace")))
    for request_id in ids:
        access = [
            line for line in lines if f"[{request_id}]" in line and "kiro_fast.access" in line
        ]
        assert len(access) == 1
    assert_no_secret(written, stack)
