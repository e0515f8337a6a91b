"""Failover: the policy's decision per upstream signal, and the whole path — client,
kiro_fast, the fake upstream — for each rule of kiro-api.md §9.2 and kiro-auth.md §8.1.

Upstream answers come from the fake's named errors (its ERRORS table mirrors the spec's
bodies); the expected client answers are the spec's mapping.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from pool_helpers import API_KEY, MODEL, FakeClock, account_of, arun, chats, social, stack

from kiro_fast.errors import (
    EventStreamError,
    NoCredentialAvailable,
    TokenRefreshError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from kiro_fast.failover import (
    FailoverPolicy,
    FailoverSettings,
    attempt_budget,
    backoff,
    retry_after_seconds,
)
from kiro_fast.relay import session_key
from kiro_fast.testing import Scenario, Usage
from kiro_fast.upstream_errors import classify

# --------------------------------------------------------------------------- the policy


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def upstream(name: str, retry_after: str | None = None) -> UpstreamStatusError:
    """The classified error for one of the spec's upstream answers."""
    bodies = {
        "improperly_formed": (400, {"message": "Improperly formed request.", "reason": None}),
        "input_too_long": (
            400,
            {"message": "Input is too long.", "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD"},
        ),
        "monthly": (
            402,
            {"message": "You have reached the limit.", "reason": "MONTHLY_REQUEST_COUNT"},
        ),
        "bearer": (
            403,
            {"message": "The bearer token included in the request is invalid.", "reason": None},
        ),
        "suspended": (
            403,
            {"message": "temporarily is suspended", "reason": "TEMPORARILY_SUSPENDED"},
        ),
        "user_rate": (
            429,
            {"message": "Too many requests", "reason": "USER_REQUEST_RATE_EXCEEDED"},
        ),
        "suspicious": (429, {"message": "Due to suspicious activity, ...", "reason": None}),
        "high_load": (
            500,
            {
                "message": "Encountered unexpectedly high load",
                "reason": "MODEL_TEMPORARILY_UNAVAILABLE",
            },
        ),
        "unavailable": (503, {"message": "Service Unavailable", "reason": None}),
    }
    status, body = bodies[name]
    headers = {"retry-after": retry_after} if retry_after else {}
    return classify(status, orjson.dumps(body), headers)


def test_attempt_budget_is_three_per_credential_at_most_nine() -> None:
    assert [attempt_budget(n) for n in (0, 1, 2, 3, 4, 10)] == [1, 3, 6, 9, 9, 9]


def test_backoff_doubles_is_capped_and_adds_at_most_a_quarter() -> None:
    low, high = FixedRandom(0.0), FixedRandom(0.999999)
    assert [round(backoff(n, low), 6) for n in range(6)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert backoff(1, high) == pytest.approx(0.5, rel=1e-5)
    assert backoff(9, high) == pytest.approx(2.5, rel=1e-5)


@pytest.mark.parametrize(
    ("error", "action", "penalty"),
    [
        ("improperly_formed", "fail", ""),
        ("input_too_long", "fail", ""),
        ("monthly", "retry_other", "quota"),
        ("bearer", "refresh_and_retry", ""),
        ("suspended", "retry_other", "failure"),
        ("user_rate", "retry_other", "cooldown"),
        ("suspicious", "retry_other", "cooldown"),
        ("high_load", "retry_same", ""),
        ("unavailable", "retry_same", ""),
    ],
)
def test_decision_per_upstream_signal(error: str, action: str, penalty: str) -> None:
    decision = FailoverPolicy(3).decide(upstream(error), cred_id=1)
    assert (decision.action, decision.penalty) == (action, penalty)
    if action == "retry_same":
        assert decision.delay > 0


def test_account_throttling_cools_down_long_and_user_rate_limits_short() -> None:
    settings = FailoverSettings(throttle_cooldown=300, rate_limit_cooldown=10)
    policy = FailoverPolicy(3, settings=settings)
    assert policy.decide(upstream("suspicious"), 1).cooldown == 300
    assert policy.decide(upstream("user_rate"), 2).cooldown == 10
    assert policy.decide(upstream("user_rate", retry_after="45"), 3).cooldown == 45


def test_with_one_credential_429s_back_off_on_it_instead_of_cooling_it() -> None:
    decision = FailoverPolicy(1).decide(upstream("suspicious"), 1)
    assert (decision.action, decision.penalty) == ("retry_same", "")
    assert decision.delay > 0


def test_a_second_bearer_rejection_moves_on_and_counts_a_failure() -> None:
    policy = FailoverPolicy(2)
    assert policy.decide(upstream("bearer"), 1).action == "refresh_and_retry"
    second = policy.decide(upstream("bearer"), 1)
    assert (second.action, second.penalty) == ("retry_other", "failure")
    assert policy.decide(upstream("bearer"), 2).action == "refresh_and_retry"


@pytest.mark.parametrize(
    "error",
    [UpstreamTimeout("slow"), UpstreamUnavailable("reset"), EventStreamError("bad crc")],
)
def test_network_and_stream_failures_retry_the_same_credential(error: Any) -> None:
    decision = FailoverPolicy(2).decide(error, 1)
    assert (decision.action, decision.penalty) == ("retry_same", "")


def test_other_errors_end_the_request() -> None:
    assert FailoverPolicy(2).decide(NoCredentialAvailable("none"), None).action == "fail"
    assert FailoverPolicy(2).decide(TokenRefreshError("x"), 1).action == "retry_other"


def test_the_budget_ends_retries_but_keeps_the_penalty() -> None:
    policy = FailoverPolicy(1)
    assert policy.decide(upstream("high_load"), 1).action == "retry_same"
    assert policy.decide(upstream("high_load"), 1).action == "retry_same"
    last = policy.decide(upstream("monthly"), 1)
    assert (last.action, last.penalty) == ("fail", "quota")


def test_retry_after_header_values() -> None:
    assert retry_after_seconds("30") == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds("0") is None
    assert retry_after_seconds("9999999") == 86400.0


def test_session_key_is_metadata_user_id() -> None:
    uid = "user_abc_account__session_0b6c9c39-2d8a-4c4e-9b8e-1d2f0e4c5a6b"
    assert session_key({"metadata": {"user_id": uid}}) == uid
    assert session_key({"metadata": {}}) is None
    assert session_key({"metadata": "x"}) is None
    assert session_key({}) is None
    assert len(session_key({"metadata": {"user_id": "u" * 1000}}) or "") == 256


# --------------------------------------------------------------------------- end to end


def three_accounts(first_usage: Usage | None = None) -> Any:
    def build(fake: Any) -> list[Any]:
        creds = []
        for index in range(3):
            usage = first_usage if index == 0 else None
            cred, _ = social(fake, index + 1, priority=index, usage=usage)
            creds.append(cred)
        return creds

    return build


def served_by(s: Any) -> list[int]:
    """Which fake account (1-based) each chat request carried the token of."""
    accounts = s.fake.accounts.accounts
    return [accounts.index(account_of(s.fake, r)) + 1 for r in chats(s.fake)]


@arun
async def test_quota_exhausted_on_one_of_three_accounts() -> None:
    exhausted = Usage(usage_limit=50, current_usage=50, enforce_limit=True)
    async with stack(three_accounts(exhausted)) as s:
        status, _, body = await s.ask()
        assert status == 200, body
        assert served_by(s) == [1, 2]
        assert [r.status for r in chats(s.fake)] == [402, 200]
        cooldown = s.pool.cooldown_of(1)
        assert cooldown is not None and cooldown[1] == "QuotaExceeded"
        status, _, _ = await s.ask()
        assert status == 200
        assert served_by(s) == [1, 2, 2]  # account 1 is not tried again until its reset


@arun
async def test_all_accounts_throttled_is_a_429_with_retry_after() -> None:
    clock = FakeClock()
    async with stack(three_accounts(), clock=clock, config={"throttleCooldown": 300}) as s:
        s.fake.enqueue(Scenario(error="suspicious_activity"), count=3)
        status, headers, body = await s.ask()
        assert status == 429
        assert body["error"]["type"] == "rate_limit_error"
        assert headers["retry-after"] == "300"
        assert sorted(served_by(s)) == [1, 2, 3]  # each account tried once
        status, headers, _ = await s.ask()  # refused at once, no upstream call
        assert status == 429 and headers["retry-after"] == "300"
        assert len(chats(s.fake)) == 3
        clock.advance(301)
        status, _, _ = await s.ask()
        assert status == 200


@arun
async def test_a_user_rate_limit_cools_down_briefly_and_switches() -> None:
    clock = FakeClock()
    async with stack(three_accounts(), clock=clock, config={"rateLimitCooldown": 10}) as s:
        s.fake.enqueue(Scenario(error="rate_limited"))
        status, _, _ = await s.ask()
        assert status == 200
        assert served_by(s) == [1, 2]
        assert s.pool.cooldown_of(1) == (clock() + 10, "RateLimited")
        clock.advance(11)
        await s.ask()
        assert served_by(s)[-1] == 1


@arun
async def test_high_load_backs_off_and_retries_the_same_account() -> None:
    async with stack(three_accounts()) as s:
        s.fake.enqueue(Scenario(error="high_load"), count=2)
        status, _, _ = await s.ask()
        assert status == 200
        assert served_by(s) == [1, 1, 1]
        assert s.pool.cooldown_of(1) is None


@arun
async def test_a_400_is_never_retried() -> None:
    async with stack(three_accounts()) as s:
        s.fake.enqueue(Scenario(error="improperly_formed"))
        status, _, body = await s.ask()
        assert status == 400
        assert body["error"]["type"] == "invalid_request_error"
        assert len(chats(s.fake)) == 1


@arun
async def test_consecutive_failures_disable_an_account() -> None:
    async with stack(three_accounts(), config={"maxFailures": 3}) as s:
        s.fake.accounts.accounts[0].suspended = True
        for _ in range(3):
            status, _, _ = await s.ask()
            assert status == 200
        assert served_by(s) == [1, 2, 1, 2, 1, 2]
        first = s.pool.get(1)
        assert first is not None and first.disabled and first.disabled_reason == "TooManyFailures"
        await s.ask()
        assert served_by(s)[-1] == 2 and len(chats(s.fake)) == 7


@arun
async def test_the_retry_budget_is_nine_attempts_at_most() -> None:
    def four(fake: Any) -> list[Any]:
        return [social(fake, n)[0] for n in range(1, 5)]

    async with stack(four) as s:
        s.fake.enqueue(Scenario(error="high_load"), count=20)
        status, _, body = await s.ask()
        assert status == 529
        assert body["error"]["type"] == "overloaded_error"
        assert len(chats(s.fake)) == 9


@arun
async def test_a_stream_broken_after_content_is_not_retried() -> None:
    async with stack(three_accounts()) as s:
        s.fake.enqueue(Scenario(text="partial answer " * 10, disconnect_after=3))
        body = {
            "model": MODEL,
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        async with s.http.post(
            s.url + "/v1/messages",
            data=orjson.dumps(body),
            headers={"x-api-key": API_KEY, "content-type": "application/json"},
        ) as response:
            assert response.status == 200
            text = (await response.read()).decode()
        assert "event: error" in text
        assert len(chats(s.fake)) == 1


@arun
async def test_bearer_invalid_refreshes_that_account_once_instead_of_switching() -> None:
    async with stack(three_accounts()) as s:
        s.fake.accounts.expire_access_tokens(s.fake.accounts.accounts[0])
        status, _, _ = await s.ask()
        assert status == 200
        first, second = chats(s.fake)
        assert (first.status, second.status) == (403, 200)
        assert account_of(s.fake, second) is s.fake.accounts.accounts[0]
        assert s.fake.accounts.refresh_count == 1


@arun
async def test_a_claude_code_session_keeps_its_account() -> None:
    config = {"loadBalancingMode": "round_robin", "sessionAffinity": True}
    session = {"user_id": "user_9f2c_account__session_0b6c9c39-2d8a-4c4e-9b8e-1d2f0e4c5a6b"}
    async with stack(three_accounts(), config=config) as s:
        for _ in range(3):
            status, _, _ = await s.ask(metadata=session)
            assert status == 200
        assert served_by(s) == [1, 1, 1]
        await s.ask()
        await s.ask()
        assert served_by(s)[3:] == [2, 3]  # without a session the accounts take turns
