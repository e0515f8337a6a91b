"""The fault matrix of ``docs/fault-matrix.md``: one test per row, checking both what the
client gets and what becomes of the credentials.

Set-up for every row (unless the row says otherwise): a real kiro_fast runtime in front of
the built-in fake Kiro upstream, two social credentials — #1 (priority 0, tried first) and
#2 (priority 1) — with valid access tokens, and a clock the test moves (cool-down ends are
exact). Faults are scripted on the fake: a named error body of kiro-api.md §9.1, a broken
delivery (reset, stall, bad CRC, exception frame), a token-endpoint fault
(``Accounts.fail_refresh``), a client that hangs up, or a disk that refuses the
credential write-back.

Expected answers are the table's, written here by hand from the spec (kiro-api.md §9.2
recommended mapping, kiro-auth.md §5.4 and §8.1); the credential state is read through the
pool's view *and* the state store, so a change that only lived in memory would fail.
Nothing waits on a timer: streams are held with the fake's ``stall_after`` and let go
with ``release()``, and every wait is on a condition with a bound.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import errno
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from pool_helpers import API_KEY, MODEL, FakeClock, Stack, arun, chats, social, stack

from kiro_fast import credentials as credentials_module
from kiro_fast.credentials import Credential
from kiro_fast.sources import KiroRsFile
from kiro_fast.testing import Scenario

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "docs" / "fault-matrix.md"

Api = Literal["anthropic", "openai"]
PATHS: dict[str, str] = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
#: docs/errors.md: the OpenAI error type for each Anthropic one.
OPENAI_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "rate_limit_error": "rate_limit_error",
    "overloaded_error": "server_error",
    "api_error": "server_error",
}
#: (api, stream) for rows whose answer comes before any content.
VARIANTS = [
    pytest.param("anthropic", False, id="anthropic"),
    pytest.param("anthropic", True, id="anthropic-stream"),
    pytest.param("openai", False, id="openai"),
    pytest.param("openai", True, id="openai-stream"),
]
STREAMING = [
    pytest.param("anthropic", id="anthropic-stream"),
    pytest.param("openai", id="openai-stream"),
]
#: Timeouts of the rows that stall: far above loopback latency, small enough to be quick.
STALL_TIMEOUTS = {"firstByteTimeout": 0.25, "streamIdleTimeout": 0.25}
#: Two credentials: attempts per request are min(3 × 2, 9) = 6 (kiro-api.md §9.2).
ATTEMPTS = 6
LONG_TEXT = "A long answer that arrives in many small fragments. " * 8
HOLD = 2  # frames sent before the fake holds a stream


# --------------------------------------------------------------------------- credential state


@dataclass(frozen=True)
class State:
    """What a row says of one credential afterwards."""

    kind: Literal["unchanged", "cooling", "disabled", "refreshed"]
    seconds: float = 0.0
    reason: str = ""


UNCHANGED = State("unchanged")
REFRESHED = State("refreshed")


def cooling(seconds: float, reason: str) -> State:
    return State("cooling", seconds, reason)


def disabled(reason: str) -> State:
    return State("disabled", reason=reason)


def first_of_next_month(now: float) -> float:
    """Midnight UTC on the 1st of next month (kiro-auth.md §7.2: quotas reset monthly)."""
    year, month = time.gmtime(now)[:2]
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


class Scene:
    """One row's world: the running stack, its clock and the refresh tokens at the start."""

    def __init__(self, s: Stack, clock: FakeClock) -> None:
        self.s = s
        self.clock = clock
        self.initial = {c.id: c.refresh_token for c in s.pool.credentials}

    @property
    def fake(self) -> Any:
        return self.s.fake

    def chat_count(self) -> int:
        return len(chats(self.s.fake))

    async def check(self, cred_id: int, expected: State) -> None:
        """``expected`` holds in the pool's view and in the state store."""
        pool = self.s.pool
        cred = pool.get(cred_id)
        assert cred is not None, f"credential #{cred_id} is gone"
        entry = await pool.state.get_credential(cred_id)
        assert entry is not None
        stored_cooldowns = await pool.state.cooldowns()
        now = self.clock()
        label = f"credential #{cred_id}"
        if expected.kind == "disabled":
            assert cred.disabled and cred.disabled_reason == expected.reason, label
            assert entry.get("disabled") is True, label
            assert entry.get("disabledReason") == expected.reason, label
        else:
            assert not cred.disabled, f"{label} disabled: {cred.disabled_reason}"
            assert not entry.get("disabled"), label
        cooldown = pool.cooldown_of(cred_id)
        stored = stored_cooldowns.get(cred_id)
        if expected.kind == "cooling":
            assert cooldown is not None, f"{label} is not cooling down"
            assert cooldown[1] == expected.reason, label
            assert cooldown[0] == pytest.approx(now + expected.seconds, abs=1.0), label
            assert stored is not None and stored[1] == expected.reason, label
            assert stored[0] == pytest.approx(cooldown[0]), label
        else:
            assert cooldown is None, f"{label} cooling down: {cooldown}"
            assert stored is None or stored[0] <= now, label
        assert entry.get("refreshToken") == cred.refresh_token, label
        if expected.kind == "refreshed":
            assert cred.refresh_token != self.initial[cred_id], f"{label} was not refreshed"
            account = self.fake.accounts.accounts[cred_id - 1]
            assert cred.refresh_token == account.refresh_token, label
        else:
            assert cred.refresh_token == self.initial[cred_id], f"{label} was refreshed"

    async def check_all(self, first: State, second: State) -> None:
        await self.check(1, first)
        await self.check(2, second)


def two_credentials(*, stale_first: bool = False, stale_second: bool = False) -> Any:
    """#1 and #2 at the fake; a stale one has no access token, so its first use refreshes."""

    def build(fake: Any) -> list[Credential]:
        first, _ = social(fake, 1, priority=0, fresh=not stale_first)
        second, _ = social(fake, 2, priority=1, fresh=not stale_second)
        return [first, second]

    return build


@contextlib.asynccontextmanager
async def scene(config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    clock = FakeClock()
    credentials = kwargs.pop("credentials", None) or two_credentials()
    async with stack(credentials, clock=clock, config=config, **kwargs) as s:
        yield Scene(s, clock)


# --------------------------------------------------------------------------- client side


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self, api: Api) -> tuple[str, str]:
        """(error type, message) of a JSON error answer in ``api``'s shape."""
        data = orjson.loads(self.body)
        if api == "anthropic":
            assert data["type"] == "error", data
        return data["error"]["type"], data["error"]["message"]


def request_body(api: Api, stream: bool, text: str = "hello") -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }
    if api == "anthropic":
        body["max_tokens"] = 64
    return orjson.dumps(body)


def client_headers() -> dict[str, str]:
    return {"x-api-key": API_KEY, "authorization": f"Bearer {API_KEY}"}


async def ask(sc: Scene, api: Api = "anthropic", stream: bool = False) -> Answer:
    s = sc.s
    async with s.http.post(
        s.url + PATHS[api], data=request_body(api, stream), headers=client_headers()
    ) as response:
        raw = await response.read()
        headers = {k.lower(): v for k, v in response.headers.items()}
        return Answer(response.status, headers, raw)


def expected_type(api: Api, anthropic_type: str) -> str:
    return anthropic_type if api == "anthropic" else OPENAI_TYPES[anthropic_type]


def expect_error(
    answer: Answer, api: Api, status: int, error_type: str, retry_after: float | None = None
) -> None:
    """A JSON error before any content: the status, the API's error type, ``retry-after``."""
    assert answer.status == status, answer.body
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    assert answer.error(api)[0] == expected_type(api, error_type), answer.body
    if retry_after is not None:
        assert int(answer.headers["retry-after"]) == pytest.approx(retry_after, abs=1)


def expect_success(answer: Answer) -> None:
    assert answer.status == 200, answer.body


def stream_error(raw: bytes, api: Api) -> str:
    """The error type of the SSE error event that ends a broken stream."""
    text = raw.decode()
    if api == "anthropic":
        match = re.search(r"event: error\ndata: (.*)\n", text)
        assert match, f"no error event in the stream: {text[-400:]}"
        data = orjson.loads(match.group(1))
        assert data["type"] == "error"
    else:
        errors = [line for line in text.split("\n") if line.startswith('data: {"error"')]
        assert errors, f"no error chunk in the stream: {text[-400:]}"
        data = orjson.loads(errors[-1][6:])
    error_type: str = data["error"]["type"]
    return error_type


def has_content(raw: bytes, api: Api) -> bool:
    if api == "anthropic":
        return b'"text_delta"' in raw
    return b'"content":"' in raw


async def stream_past_content(sc: Scene, api: Api) -> bytes:
    """Start a streaming request whose upstream stream the fake holds after ``HOLD``
    frames; read until content reached the client, then let the fake go on.

    Returns every byte the client got, to the end of the stream.
    """
    s = sc.s
    async with s.http.post(
        s.url + PATHS[api], data=request_body(api, True), headers=client_headers()
    ) as response:
        assert response.status == 200
        got = b""
        while not has_content(got, api):
            line = await asyncio.wait_for(response.content.readline(), 10)
            assert line, f"stream ended before any content: {got!r}"
            got += line
        await sc.fake.wait_for_stalled(1)
        sc.fake.release()
        return got + await asyncio.wait_for(response.read(), 10)


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Wait for a condition (sync or async predicate); fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- upstream error bodies


@dataclass(frozen=True)
class BodyRow:
    error: str  # a name in kiro_fast.testing.ERRORS (kiro-api.md §9.1)
    status: int
    error_type: str
    first: State
    second: State
    calls: int  # chat requests the upstream sees
    retry_after: float | None = None


MONTH = -1.0  # retry-after / cool-down: until the 1st of next month

BODY_ROWS = [
    BodyRow("improperly_formed", 400, "invalid_request_error", UNCHANGED, UNCHANGED, 1),
    BodyRow("input_too_long", 400, "invalid_request_error", UNCHANGED, UNCHANGED, 1),
    BodyRow("invalid_model", 400, "invalid_request_error", UNCHANGED, UNCHANGED, 1),
    BodyRow("profile_arn_required", 400, "invalid_request_error", UNCHANGED, UNCHANGED, 1),
    BodyRow(
        "monthly_limit",
        429,
        "rate_limit_error",
        cooling(MONTH, "QuotaExceeded"),
        cooling(MONTH, "QuotaExceeded"),
        2,
        MONTH,
    ),
    BodyRow("bearer_invalid", 502, "api_error", REFRESHED, REFRESHED, 4),
    BodyRow("suspended", 502, "api_error", UNCHANGED, UNCHANGED, 2),
    BodyRow(
        "rate_limited",
        429,
        "rate_limit_error",
        cooling(10, "RateLimited"),
        cooling(10, "RateLimited"),
        2,
        10,
    ),
    BodyRow(
        "suspicious_activity",
        429,
        "rate_limit_error",
        cooling(300, "AccountThrottled"),
        cooling(300, "AccountThrottled"),
        2,
        300,
    ),
    BodyRow("capacity", 529, "overloaded_error", UNCHANGED, UNCHANGED, ATTEMPTS),
    BodyRow("high_load", 529, "overloaded_error", UNCHANGED, UNCHANGED, ATTEMPTS),
    BodyRow("internal", 529, "overloaded_error", UNCHANGED, UNCHANGED, ATTEMPTS),
    BodyRow("unavailable", 529, "overloaded_error", UNCHANGED, UNCHANGED, ATTEMPTS),
]


def _month(state: State, now: float) -> State:
    if state.seconds != MONTH:
        return state
    return State(state.kind, first_of_next_month(now) - now, state.reason)


@pytest.mark.parametrize(("api", "stream"), VARIANTS)
@pytest.mark.parametrize("row", BODY_ROWS, ids=[r.error for r in BODY_ROWS])
@arun
async def test_upstream_error_body(row: BodyRow, api: Api, stream: bool) -> None:
    """Every §9.1 error body, on every attempt: the §9.2 client mapping and each
    credential's fate."""
    async with scene({"rateLimitCooldown": 10, "throttleCooldown": 300}) as sc:
        sc.fake.enqueue(Scenario(error=row.error), count=20)
        answer = await ask(sc, api, stream)
        now = sc.clock()
        retry_after = row.retry_after
        if retry_after == MONTH:
            retry_after = first_of_next_month(now) - now
        expect_error(answer, api, row.status, row.error_type, retry_after)
        assert sc.chat_count() == row.calls
        await sc.check_all(_month(row.first, now), _month(row.second, now))


@arun
async def test_suspended_account_is_disabled_after_max_failures() -> None:
    """403 TEMPORARILY_SUSPENDED counts one failure per request; ``maxFailures`` in a row
    disable the credential (reason TooManyFailures), as kiro.rs does."""
    async with scene({"maxFailures": 3}) as sc:
        sc.fake.enqueue(Scenario(error="suspended"), count=20)
        for _ in range(2):
            expect_error(await ask(sc), "anthropic", 502, "api_error")
            await sc.check_all(UNCHANGED, UNCHANGED)
        expect_error(await ask(sc), "anthropic", 502, "api_error")
        await sc.check_all(disabled("TooManyFailures"), disabled("TooManyFailures"))
        assert sc.chat_count() == 6
        # Nothing is left to serve: the pool says so without calling the upstream.
        expect_error(await ask(sc), "anthropic", 529, "overloaded_error")
        assert sc.chat_count() == 6


# --------------------------------------------------------------------------- connections


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(("api", "stream"), VARIANTS)
@arun
async def test_upstream_refuses_connections(api: Api, stream: bool) -> None:
    config = {"kiroApiBase": f"http://127.0.0.1:{closed_port()}"}
    async with scene(config) as sc:
        answer = await ask(sc, api, stream)
        expect_error(answer, api, 502, "api_error")
        await sc.check_all(UNCHANGED, UNCHANGED)


@pytest.mark.parametrize(("api", "stream"), VARIANTS)
@arun
async def test_upstream_resets_before_answering(api: Api, stream: bool) -> None:
    async with scene() as sc:
        sc.fake.enqueue(Scenario(reset=True), count=20)
        expect_error(await ask(sc, api, stream), api, 502, "api_error")
        assert sc.chat_count() == ATTEMPTS  # retried on the same credential, no switch
        await sc.check_all(UNCHANGED, UNCHANGED)


@arun
async def test_upstream_reset_once_is_retried_invisibly() -> None:
    async with scene() as sc:
        sc.fake.enqueue(Scenario(reset=True))
        expect_success(await ask(sc))
        assert sc.chat_count() == 2
        await sc.check_all(UNCHANGED, UNCHANGED)


@pytest.mark.parametrize("api", ["anthropic", "openai"])
@arun
async def test_upstream_closes_mid_body_before_content(api: Api) -> None:
    """Non-streaming: nothing reached the client yet, so every attempt is retried."""
    async with scene() as sc:
        sc.fake.enqueue(Scenario(text=LONG_TEXT, disconnect_after=HOLD), count=20)
        expect_error(await ask(sc, api), api, 502, "api_error")
        assert sc.chat_count() == ATTEMPTS
        await sc.check_all(UNCHANGED, UNCHANGED)


@pytest.mark.parametrize("api", STREAMING)
@arun
async def test_upstream_closes_mid_stream(api: Api) -> None:
    """Content reached the client: no retry, the stream ends with an error event."""
    async with scene() as sc:
        sc.fake.enqueue(Scenario(text=LONG_TEXT, stall_after=HOLD, disconnect_after=HOLD + 1))
        raw = await stream_past_content(sc, api)
        assert stream_error(raw, api) == expected_type(api, "api_error")
        assert b"message_stop" not in raw and b"[DONE]" not in raw
        assert sc.chat_count() == 1
        await sc.check_all(UNCHANGED, UNCHANGED)


# --------------------------------------------------------------------------- stalls


@pytest.mark.parametrize(("api", "stream"), VARIANTS[:3])
@arun
async def test_upstream_stalls_before_the_head(api: Api, stream: bool) -> None:
    async with scene(STALL_TIMEOUTS) as sc:
        sc.fake.enqueue(Scenario(headers_delay_ms=60_000), count=20)
        expect_error(await ask(sc, api, stream), api, 504, "api_error")
        assert sc.chat_count() == ATTEMPTS
        await sc.check_all(UNCHANGED, UNCHANGED)


@pytest.mark.parametrize(("api", "stream"), VARIANTS[:3])
@arun
async def test_upstream_stalls_before_the_first_event(api: Api, stream: bool) -> None:
    async with scene(STALL_TIMEOUTS) as sc:
        sc.fake.enqueue(Scenario(stall_after=0), count=20)
        answer = await ask(sc, api, stream)
        expect_error(answer, api, 504, "api_error")
        assert "first-byte" in answer.error(api)[1]
        assert sc.chat_count() == ATTEMPTS
        await sc.check_all(UNCHANGED, UNCHANGED)


@arun
async def test_upstream_stall_once_is_retried_invisibly() -> None:
    async with scene({"firstByteTimeout": 1.0}) as sc:  # the retry must beat it
        sc.fake.enqueue(Scenario(stall_after=0))
        expect_success(await ask(sc, stream=True))
        assert sc.chat_count() == 2
        await sc.check_all(UNCHANGED, UNCHANGED)


@pytest.mark.parametrize("api", STREAMING)
@arun
async def test_upstream_stalls_between_events(api: Api) -> None:
    """The stream went quiet after content: ``streamIdleTimeout``, then an error event."""
    async with scene({"streamIdleTimeout": 0.25}) as sc:
        sc.fake.enqueue(Scenario(text=LONG_TEXT, stall_after=HOLD))
        s = sc.s
        async with s.http.post(
            s.url + PATHS[api], data=request_body(api, True), headers=client_headers()
        ) as response:
            assert response.status == 200
            raw = await asyncio.wait_for(response.read(), 10)
        assert has_content(raw, api)
        assert stream_error(raw, api) == expected_type(api, "api_error")
        assert sc.chat_count() == 1
        await sc.check_all(UNCHANGED, UNCHANGED)


@arun
async def test_upstream_stalls_between_events_before_content() -> None:
    """Non-streaming: the client has nothing yet, so the silent stream is retried."""
    async with scene(STALL_TIMEOUTS) as sc:
        sc.fake.enqueue(Scenario(text=LONG_TEXT, stall_after=HOLD), count=20)
        expect_error(await ask(sc), "anthropic", 504, "api_error")
        assert sc.chat_count() == ATTEMPTS
        await sc.check_all(UNCHANGED, UNCHANGED)


# --------------------------------------------------------------------------- broken frames


@pytest.mark.parametrize(("api", "stream"), VARIANTS)
@arun
async def test_bad_crc_before_content(api: Api, stream: bool) -> None:
    async with scene() as sc:
        sc.fake.enqueue(Scenario(corrupt_crc_at=0), count=20)
        expect_error(await ask(sc, api, stream), api, 502, "api_error")
        assert sc.chat_count() == ATTEMPTS
        await sc.check_all(UNCHANGED, UNCHANGED)


@arun
async def test_bad_crc_once_is_retried_invisibly() -> None:
    async with scene() as sc:
        sc.fake.enqueue(Scenario(corrupt_crc_at=0))
        expect_success(await ask(sc, stream=True))
        assert sc.chat_count() == 2
        await sc.check_all(UNCHANGED, UNCHANGED)


@pytest.mark.parametrize("api", STREAMING)
@arun
async def test_bad_crc_mid_stream(api: Api) -> None:
    async with scene() as sc:
        sc.fake.enqueue(Scenario(text=LONG_TEXT, stall_after=HOLD, corrupt_crc_at=HOLD))
        raw = await stream_past_content(sc, api)
        assert stream_error(raw, api) == expected_type(api, "api_error")
        assert sc.chat_count() == 1
        await sc.check_all(UNCHANGED, UNCHANGED)


@pytest.mark.parametrize(("api", "stream"), VARIANTS)
@arun
async def test_exception_frame_before_content(api: Api, stream: bool) -> None:
    """An exception frame first is the HTTP error it stands for: ThrottlingException is the
    account's throttle — both credentials cool down, the client gets a 429."""
    async with scene({"throttleCooldown": 300}) as sc:
        sc.fake.enqueue(Scenario(exception="ThrottlingException", exception_after=0), count=20)
        expect_error(await ask(sc, api, stream), api, 429, "rate_limit_error", 300)
        assert sc.chat_count() == 2
        await sc.check_all(cooling(300, "AccountThrottled"), cooling(300, "AccountThrottled"))


@arun
async def test_exception_frame_once_is_retried_invisibly() -> None:
    """InternalServerException first: capacity, retried on the same credential."""
    async with scene() as sc:
        sc.fake.enqueue(Scenario(exception="InternalServerException", exception_after=0))
        expect_success(await ask(sc, stream=True))
        assert sc.chat_count() == 2
        await sc.check_all(UNCHANGED, UNCHANGED)


@pytest.mark.parametrize("api", STREAMING)
@arun
async def test_exception_frame_mid_stream(api: Api) -> None:
    async with scene() as sc:
        sc.fake.enqueue(
            Scenario(
                text=LONG_TEXT,
                stall_after=HOLD,
                exception="ThrottlingException",
                exception_after=HOLD + 1,
            )
        )
        raw = await stream_past_content(sc, api)
        assert stream_error(raw, api) == expected_type(api, "rate_limit_error")
        assert sc.chat_count() == 1
        await sc.check_all(UNCHANGED, UNCHANGED)


@arun
async def test_content_length_exception_ends_with_max_tokens() -> None:
    """ContentLengthExceededException is the output limit, not a failure (§9.3)."""
    async with scene() as sc:
        sc.fake.enqueue(
            Scenario(text=LONG_TEXT, exception="ContentLengthExceededException", exception_after=3)
        )
        answer = await ask(sc)
        expect_success(answer)
        assert orjson.loads(answer.body)["stop_reason"] == "max_tokens"
        await sc.check_all(UNCHANGED, UNCHANGED)


# --------------------------------------------------------------------------- token endpoint

TOKEN_FAULTS = [
    pytest.param("down", cooling(30, "RefreshFailed"), id="down"),
    pytest.param("slow", cooling(30, "RefreshFailed"), id="slow"),
    pytest.param("throttled", cooling(30, "RefreshFailed"), id="429"),
    pytest.param("server_error", cooling(30, "RefreshFailed"), id="5xx"),
    pytest.param("invalid_grant", disabled("InvalidRefreshToken"), id="invalid_grant"),
    pytest.param("bad_credentials", disabled("InvalidRefreshToken"), id="bad_credentials"),
]
#: The slow token endpoint answers after this; ``authTimeout`` gives up long before.
SLOW_REFRESH_MS = 60_000
TOKEN_CONFIG = {"authTimeout": 5.0, "refreshFailureCooldown": 30}
#: The slow row's ``authTimeout``: the only row where the token endpoint must time out.
SLOW_AUTH_TIMEOUT = 0.25


@pytest.mark.parametrize(("fault", "first"), TOKEN_FAULTS)
@arun
async def test_token_endpoint_fault(fault: str, first: State) -> None:
    """#1 needs a refresh and the token endpoint fails it; #2 serves the request."""
    config = {**TOKEN_CONFIG, "authTimeout": SLOW_AUTH_TIMEOUT} if fault == "slow" else TOKEN_CONFIG
    async with scene(config, credentials=two_credentials(stale_first=True)) as sc:
        sc.fake.accounts.fail_refresh(fault, 1, delay_ms=SLOW_REFRESH_MS)  # type: ignore[arg-type]
        expect_success(await ask(sc))
        assert sc.fake.accounts.refresh_count == 1
        assert sc.chat_count() == 1
        await sc.check_all(first, UNCHANGED)


@arun
async def test_revoked_refresh_token_disables_the_credential() -> None:
    """The refresh token died without a scripted fault (revoked): same as invalid_grant."""
    async with scene(TOKEN_CONFIG, credentials=two_credentials(stale_first=True)) as sc:
        sc.fake.accounts.revoke_refresh_token(sc.fake.accounts.accounts[0])
        expect_success(await ask(sc))
        await sc.check_all(disabled("InvalidRefreshToken"), UNCHANGED)


@pytest.mark.parametrize(
    ("fault", "status", "error_type", "retry_after", "state"),
    [
        pytest.param("down", 429, "rate_limit_error", 30, cooling(30, "RefreshFailed"), id="down"),
        pytest.param(
            "server_error", 429, "rate_limit_error", 30, cooling(30, "RefreshFailed"), id="5xx"
        ),
        pytest.param(
            "invalid_grant",
            529,
            "overloaded_error",
            None,
            disabled("InvalidRefreshToken"),
            id="invalid_grant",
        ),
    ],
)
@pytest.mark.parametrize("api", ["anthropic", "openai"])
@arun
async def test_token_endpoint_fault_for_every_credential(
    api: Api, fault: str, status: int, error_type: str, retry_after: float | None, state: State
) -> None:
    stale = two_credentials(stale_first=True, stale_second=True)
    async with scene(TOKEN_CONFIG, credentials=stale) as sc:
        sc.fake.accounts.fail_refresh(fault, 20)  # type: ignore[arg-type]
        expect_error(await ask(sc, api), api, status, error_type, retry_after)
        assert sc.chat_count() == 0
        await sc.check_all(state, state)


@arun
async def test_token_endpoint_down_while_the_old_token_still_serves() -> None:
    """Inside the refresh margin but well before expiry, a failed refresh is no failure."""

    def near_expiry(fake: Any) -> list[Credential]:
        creds: list[Credential] = two_credentials()(fake)
        assert creds[0].expires_at is not None
        creds[0].expires_at = time.time() + 300  # refreshed within 600 s of expiry
        return creds

    async with scene(TOKEN_CONFIG, credentials=near_expiry) as sc:
        sc.fake.accounts.fail_refresh("down", 1)
        expect_success(await ask(sc))
        assert sc.fake.accounts.refresh_count == 1
        assert sc.chat_count() == 1
        await sc.check_all(UNCHANGED, UNCHANGED)


# --------------------------------------------------------------------------- client disconnects


def raw_request(api: Api, stream: bool) -> bytes:
    body = request_body(api, stream)
    head = (
        f"POST {PATHS[api]} HTTP/1.1\r\nhost: kiro-fast\r\nx-api-key: {API_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@contextlib.contextmanager
def kiro_records() -> Iterator[list[logging.LogRecord]]:
    """Every record kiro_fast logs meanwhile (any level)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger("kiro_fast")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


DISCONNECT_STAGES = [
    pytest.param(Scenario(headers_delay_ms=60_000), b"", id="before_upstream_answered"),
    pytest.param(Scenario(stall_after=0), b"", id="waiting_for_first_byte"),
    pytest.param(Scenario(text=LONG_TEXT, stall_after=HOLD), b'"text_delta"', id="mid_stream"),
    pytest.param(Scenario(text=LONG_TEXT, stall_after=HOLD), b"event: ping", id="during_ping"),
]


@pytest.mark.parametrize(("scenario", "read_until"), DISCONNECT_STAGES)
@arun
async def test_client_disconnects(scenario: Scenario, read_until: bytes) -> None:
    """The client hangs up: the upstream call is cancelled at once, nothing is retried,
    the credential is not blamed and its concurrency slot is free again."""
    config = {"pingInterval": 0.05, "maxConcurrentPerCredential": 1, "queueTimeout": 5}
    async with scene(config) as sc:
        sc.fake.enqueue(scenario)
        with kiro_records() as records:
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.s.runtime.port)
            writer.write(raw_request("anthropic", True))
            await writer.drain()
            if read_until:
                await asyncio.wait_for(reader.readuntil(read_until), 10)
            elif scenario.stall_after == 0:
                await sc.fake.wait_for_stalled(1)
            else:
                await sc.fake.wait_until(lambda: sc.chat_count() >= 1)
            writer.transport.abort()
            await sc.fake.wait_for_disconnects(1)
            await until(_slot_free(sc, 1), "the credential's concurrency slot was given back")
        assert sc.chat_count() == 1  # never retried
        errors = [r for r in records if r.levelno >= logging.WARNING]
        assert not errors, [r.getMessage() for r in errors]
        await sc.check_all(UNCHANGED, UNCHANGED)
        expect_success(await ask(sc))  # the credential serves the next request


def _slot_free(sc: Scene, cred_id: int) -> Callable[[], Awaitable[bool]]:
    async def free() -> bool:
        return await sc.s.pool.state.slots_in_use(f"cred:{cred_id}") == 0

    return free


# --------------------------------------------------------------------------- disk


class _Os:
    """The ``os`` module as the credentials writer sees it, with some calls replaced."""

    def __init__(self, **replaced: Any) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


class _Tempfile:
    def __init__(self, **replaced: Any) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(tempfile, name)


def _raise(code: int) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


def inject_disk_fault(
    kind: str, monkeypatch: pytest.MonkeyPatch, directory: Path
) -> Callable[[], None]:
    """Make the credential write-back fail; returns how to lift the fault.

    ENOSPC: the temp file's ``fsync`` reports the full disk (where a buffered write's
    failure surfaces). EROFS: creating the temp file fails, as on a read-only mount.
    EACCES: the directory is made read-only (``chmod 0555``) — except as root, which
    ignores permissions, where creating the temp file is made to fail the same way.
    Only :func:`kiro_fast.credentials.atomic_write` sees the replaced calls.
    """
    if kind == "ENOSPC":
        monkeypatch.setattr(credentials_module, "os", _Os(fsync=_raise(errno.ENOSPC)))
    elif kind == "EROFS":
        monkeypatch.setattr(credentials_module, "tempfile", _Tempfile(mkstemp=_raise(errno.EROFS)))
    elif os.geteuid() != 0:
        directory.chmod(0o555)
        return lambda: directory.chmod(0o755)
    else:
        monkeypatch.setattr(credentials_module, "tempfile", _Tempfile(mkstemp=_raise(errno.EACCES)))
    return monkeypatch.undo


@pytest.mark.parametrize("kind", ["ENOSPC", "EROFS", "EACCES"])
@arun
async def test_credential_write_back_fails(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refreshed token cannot be written back: the request still succeeds (the token
    is in memory and in the state store), one ERROR without a secret, the old file stays
    as it was, and the next successful write catches up."""
    directory = tmp_path / "creds"
    directory.mkdir()
    path = directory / "credentials.json"
    issued: list[str] = []

    def from_file(fake: Any) -> list[Credential]:
        cred, account = social(fake, 1, fresh=False)
        assert account.refresh_token and account.access_token
        issued.extend([account.refresh_token, account.access_token])
        entry = {"id": 1, "refreshToken": cred.refresh_token, "authMethod": "social"}
        path.write_bytes(orjson.dumps([entry]))
        return []

    source = KiroRsFile(path)
    async with scene(TOKEN_CONFIG, credentials=from_file, sources=[source]) as sc:
        before = path.read_bytes()
        lift = inject_disk_fault(kind, monkeypatch, directory)
        with kiro_records() as records:
            expect_success(await ask(sc))
        account = sc.fake.accounts.accounts[0]
        cred = sc.s.pool.get(1)
        assert cred is not None and cred.refresh_token == account.refresh_token
        assert cred.refresh_token != sc.initial[1]  # rotated, and kept
        entry = await sc.s.pool.state.get_credential(1)
        assert entry is not None and entry["refreshToken"] == account.refresh_token
        assert path.read_bytes() == before
        assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]
        failures = [r for r in records if r.levelno >= logging.ERROR]
        assert [r.name for r in failures] == ["kiro_fast.credentials"], failures
        logged = "\n".join(r.getMessage() for r in records)
        assert "cannot write credential #1 back" in logged
        issued.extend(t for t in (account.refresh_token, account.access_token) if t)
        for secret in issued:
            assert secret[:16] not in logged and secret[-16:] not in logged
        lift()
        # The next change written (a forced refresh after the upstream rejects the
        # token) carries every rotation the file missed.
        sc.fake.accounts.expire_access_tokens()
        expect_success(await ask(sc))
        saved = orjson.loads(path.read_bytes())
        assert saved[0]["refreshToken"] == account.refresh_token == sc.s.pool.get(1).refresh_token  # type: ignore[union-attr]
        assert saved[0]["accessToken"] == account.access_token


# --------------------------------------------------------------------------- the table


def table_tests() -> set[str]:
    """The tests the table's last column cites, as ``name`` or ``name[param id]``."""
    names: set[str] = set()
    for line in TABLE.read_text().splitlines():
        if line.startswith("|") and "`test_" in line:
            names.update(re.findall(r"`(test_\w+(?:\[[\w-]+\])?)`", line.rsplit("|", 2)[-2]))
    return names


def param_ids(test: Any) -> set[str]:
    """The ids of every ``parametrize`` on a test function."""
    ids: set[str] = set()
    for mark in getattr(test, "pytestmark", []):
        if mark.name == "parametrize":
            explicit = mark.kwargs.get("ids")
            values = mark.args[1]
            ids.update(
                explicit or (v if isinstance(v, str) else getattr(v, "id", None) for v in values)
            )
    ids.discard(None)  # type: ignore[arg-type]
    return ids


def test_every_row_of_the_table_has_its_test_and_every_test_its_row() -> None:
    tests = {name: value for name, value in globals().items() if name.startswith("test_")}
    del tests["test_every_row_of_the_table_has_its_test_and_every_test_its_row"]
    cited = table_tests()
    assert len(cited) > 40, "the table cites too few tests"
    for citation in cited:
        name, _, param = citation.rstrip("]").partition("[")
        assert name in tests, f"the table cites {citation}, which does not exist"
        if param:
            assert param in param_ids(tests[name]), f"the table cites {citation}: no such id"
    bare = {c.partition("[")[0] for c in cited}
    assert set(tests) - bare == set(), "tests without a row in docs/fault-matrix.md"
