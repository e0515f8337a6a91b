"""The pool: strategies, session stickiness, model filtering, budgets and the bounded wait
queue, cool-downs and failure counts, usage, and what several pools sharing one state
store (several processes) see of each other.

Selection rules: kiro-auth.md §8 (priority and balanced from kiro.rs, optimal from
kiro2api, §7.3 remaining, §7.5 FREE accounts and Opus), §12 (caps, retry-after).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pool_helpers import FakeClock, arun, fake_upstream, pool_for, social

from kiro_fast import pool as pool_module
from kiro_fast.credentials import Credential
from kiro_fast.errors import CredentialsBusy, NoCredentialAvailable
from kiro_fast.pool import CredentialPool, Lease, PoolSettings
from kiro_fast.state import MemoryStore
from kiro_fast.testing import Bonus, FreeTrial, Usage
from kiro_fast.usage_limits import first_of_next_month, parse_usage

DEADLINE = 10.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (checked every loop turn), failing after ``DEADLINE``."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


async def pick(pool: CredentialPool, **kwargs: Any) -> int:
    async with pool.lease(**kwargs) as lease:
        return lease.cred.id


@contextlib.asynccontextmanager
async def pool_of(
    count: int,
    *,
    settings: PoolSettings | None = None,
    clock: FakeClock | None = None,
    priorities: list[int] | None = None,
    usages: list[Usage | None] | None = None,
    state: MemoryStore | None = None,
) -> AsyncIterator[tuple[Any, CredentialPool]]:
    clock = clock or FakeClock()
    async with fake_upstream() as fake:
        creds = []
        for index in range(count):
            usage = usages[index] if usages else None
            cred, _ = social(fake, index + 1, usage=usage, now=clock())
            cred.priority = priorities[index] if priorities else 0
            creds.append(cred)
        store = state if state is not None else MemoryStore(clock=clock)
        async with pool_for(fake, creds, clock=clock, settings=settings, state=store) as pool:
            yield fake, pool


# --------------------------------------------------------------------------- strategies


@arun
async def test_priority_serves_the_lowest_priority_number_while_it_is_usable() -> None:
    async with pool_of(3, priorities=[2, 0, 1]) as (_fake, pool):
        assert [await pick(pool) for _ in range(3)] == [2, 2, 2]
        assert await pick(pool, exclude={2}) == 3


@arun
async def test_round_robin_takes_turns() -> None:
    async with pool_of(3, settings=PoolSettings(strategy="round_robin")) as (_fake, pool):
        assert [await pick(pool) for _ in range(5)] == [1, 2, 3, 1, 2]


@arun
async def test_least_used_prefers_fewer_streams_then_fewer_successes() -> None:
    async with pool_of(2, settings=PoolSettings(strategy="least_used")) as (_fake, pool):
        async with pool.lease() as held:
            assert held.cred.id == 1
            assert await pick(pool) == 2  # 1 is busy with a stream
        # both served once now; then 1 serves again and 2 becomes the less used
        assert [await pick(pool) for _ in range(3)] == [1, 2, 1]


@arun
async def test_most_quota_prefers_the_most_remaining_credits() -> None:
    usages = [
        Usage(usage_limit=100, current_usage=90),
        Usage(usage_limit=100, current_usage=10),
        Usage(usage_limit=100, current_usage=50),
    ]
    settings = PoolSettings(strategy="most_quota")
    async with pool_of(3, settings=settings, usages=usages) as (_fake, pool):
        await pool.refresh_usage()
        assert await pick(pool) == 2
        assert await pick(pool, exclude={2}) == 3


@arun
async def test_remaining_is_base_plus_active_trial_plus_active_bonuses() -> None:
    usage = Usage(
        usage_limit=50,
        current_usage=10,
        free_trial=FreeTrial(usage_limit=500, current_usage=100, status="ACTIVE"),
        bonuses=[
            Bonus(usage_limit=100, current_usage=20, status="ACTIVE"),
            Bonus(code="OLD", usage_limit=1000, current_usage=0, status="EXPIRED"),
        ],
        subscription_title="KIRO FREE",
    )
    async with pool_of(1, usages=[usage]) as (_fake, pool):
        info = await pool.usage(pool.credentials[0])
    assert (info.limit, info.used, info.remaining) == (650.0, 130.0, 520.0)
    assert info.subscription_title == "KIRO FREE"
    assert info.email == "user1@example.com"


def test_remaining_prefers_the_credit_breakdown_and_reads_strings() -> None:
    answer = {
        "nextDateReset": "1769904000",
        "usageBreakdownList": [
            {"resourceType": "OTHER", "usageLimit": 5, "currentUsage": 0},
            {"resourceType": "CREDIT", "usageLimitWithPrecision": "80.5", "currentUsage": 80},
        ],
    }
    info = parse_usage(answer, now=0.0)
    assert (info.limit, info.remaining, info.next_reset) == (80.5, 0.5, 1769904000.0)
    assert (
        parse_usage({"usageBreakdownList": [{"usageLimit": 9, "currentUsage": 12}]}, 0).remaining
        == 0
    )


@arun
async def test_usage_is_cached_for_its_ttl() -> None:
    clock = FakeClock()
    settings = PoolSettings(usage_ttl=300)
    async with pool_of(1, clock=clock, settings=settings) as (fake, pool):
        cred = pool.credentials[0]
        await pool.usage(cred)
        await pool.usage(cred)
        assert fake.router.counts["getUsageLimits"] == 1
        clock.advance(301)
        await pool.usage(cred)
        await pool.usage(cred, force=True)
        assert fake.router.counts["getUsageLimits"] == 3
        request = [r for r in fake.requests if r.endpoint == "getUsageLimits"][-1]
        assert request.query["origin"] == "AI_EDITOR"
        assert request.query["resourceType"] == "AGENTIC_REQUEST"
        assert request.query["profileArn"] == cred.profile_arn  # social logins send it


@arun
async def test_usage_teaches_the_pool_the_subscription_and_email() -> None:
    async with pool_of(1, usages=[Usage(subscription_title="KIRO PRO")]) as (_fake, pool):
        cred = pool.credentials[0]
        await pool.usage(cred)
        stored = await pool.state.get_credential(cred.id)
        assert stored is not None
        assert stored["subscriptionTitle"] == "KIRO PRO"
        assert stored["email"] == "user1@example.com"


@arun
async def test_free_accounts_never_get_opus() -> None:
    async with pool_of(2) as (_fake, pool):
        first, second = pool.credentials
        first.subscription_title, second.subscription_title = "KIRO FREE", "KIRO PRO"
        assert await pick(pool, model="claude-opus-4.5") == 2
        assert await pick(pool, model="claude-sonnet-4.5") == 1
        second.subscription_title = "KIRO FREE"
        with pytest.raises(NoCredentialAvailable) as info:
            await pick(pool, model="claude-opus-4.5")
        assert "FREE" in info.value.message


# --------------------------------------------------------------------------- stickiness


@arun
async def test_a_session_stays_on_its_credential_until_the_affinity_expires() -> None:
    clock = FakeClock()
    settings = PoolSettings(strategy="round_robin", session_affinity_ttl=600)
    async with pool_of(3, clock=clock, settings=settings) as (_fake, pool):
        assert await pick(pool, session="user_a_session_1") == 1
        assert await pick(pool) == 2
        assert await pick(pool, session="user_a_session_1") == 1
        assert await pick(pool, session="user_b_session_2") == 2  # turn after 1
        clock.advance(601)
        assert await pick(pool, session="user_a_session_1") == 3


@arun
async def test_a_sticky_credential_that_cools_down_is_left() -> None:
    settings = PoolSettings(session_affinity_ttl=600, strategy="round_robin")
    async with pool_of(2, settings=settings) as (_fake, pool):
        assert await pick(pool, session="s") == 1
        await pool.cool_down(pool.credentials[0], 60, "RateLimited")
        assert await pick(pool, session="s") == 2
        assert await pick(pool, session="s") == 2


# --------------------------------------------------------------------------- budgets


@arun
async def test_a_full_credential_is_skipped_and_a_waiter_gets_the_freed_slot() -> None:
    settings = PoolSettings(max_concurrent_per_credential=1, queue_timeout=DEADLINE)
    async with pool_of(2, settings=settings) as (_fake, pool):
        first = pool.lease()
        await first.__aenter__()
        second = pool.lease()
        await second.__aenter__()
        assert (first.cred.id, second.cred.id) == (1, 2)
        third = asyncio.ensure_future(pick(pool))
        await until(lambda: pool.waiting == 1, "the third request to queue")
        await first.__aexit__(None, None, None)
        assert await third == 1
        await second.__aexit__(None, None, None)
        assert await pool.state.slots_in_use("cred:1") == 0
        assert await pool.state.slots_in_use("cred:2") == 0


@arun
async def test_when_everything_stays_busy_the_answer_is_a_429_not_a_hang() -> None:
    settings = PoolSettings(max_concurrent_per_credential=1, queue_timeout=0.05)
    async with pool_of(1, settings=settings) as (_fake, pool):
        async with pool.lease():
            with pytest.raises(CredentialsBusy) as info:
                await pick(pool)
    assert info.value.status == 429
    assert info.value.error_type == "rate_limit_error"
    assert int(info.value.headers["retry-after"]) >= 1


@arun
async def test_a_full_queue_refuses_at_once() -> None:
    settings = PoolSettings(max_concurrent_per_credential=1, queue_size=0, queue_timeout=DEADLINE)
    async with pool_of(1, settings=settings) as (_fake, pool):
        async with pool.lease():
            started = time.monotonic()
            with pytest.raises(CredentialsBusy) as info:
                await pick(pool)
            assert time.monotonic() - started < DEADLINE / 2
    assert "queue is full" in info.value.message


@arun
async def test_the_overall_cap_counts_every_credential() -> None:
    settings = PoolSettings(max_concurrent_requests=1, queue_timeout=0.05)
    async with pool_of(2, settings=settings) as (_fake, pool):
        async with pool.lease() as held:
            assert held.cred.id == 1
            with pytest.raises(CredentialsBusy):
                await pick(pool)
        assert await pick(pool) == 1
        assert await pool.state.slots_in_use("global") == 0


@arun
async def test_requests_per_minute_per_credential() -> None:
    clock = FakeClock()
    settings = PoolSettings(rpm_per_credential=2, queue_timeout=0.05)
    async with pool_of(1, clock=clock, settings=settings) as (_fake, pool):
        assert [await pick(pool), await pick(pool)] == [1, 1]
        with pytest.raises(CredentialsBusy) as info:
            await pick(pool)
        assert 59 <= int(info.value.headers["retry-after"]) <= 60
        clock.advance(61)
        assert await pick(pool) == 1


@arun
async def test_rate_capped_credentials_fall_through_to_the_next() -> None:
    settings = PoolSettings(rpm_per_credential=1, queue_timeout=0.05)
    async with pool_of(2, settings=settings) as (_fake, pool):
        assert [await pick(pool), await pick(pool)] == [1, 2]


@arun
async def test_a_failed_attempt_gives_its_slot_back() -> None:
    settings = PoolSettings(max_concurrent_per_credential=1)
    async with pool_of(1, settings=settings) as (_fake, pool):
        with pytest.raises(RuntimeError):
            async with pool.lease():
                raise RuntimeError("the upstream broke")
        assert await pool.state.slots_in_use("cred:1") == 0


@arun
async def test_a_long_stream_keeps_renewing_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "SLOT_RENEW", 0.01)
    clock = FakeClock()
    settings = PoolSettings(max_concurrent_per_credential=1)
    async with pool_of(1, clock=clock, settings=settings) as (_fake, pool):
        store = pool.state
        extended = 0
        real_extend = store.extend_slot

        async def counting(scope: str, token: str, lease: float) -> bool:
            nonlocal extended
            extended += 1
            return await real_extend(scope, token, lease)

        monkeypatch.setattr(store, "extend_slot", counting)
        async with pool.lease():
            clock.advance(pool_module.SLOT_LEASE - 10)
            before = extended
            await until(lambda: extended > before, "a renewal")
            clock.advance(60)  # past the first lease: only the renewal keeps it
            assert await store.slots_in_use("cred:1") == 1


@arun
async def test_pools_sharing_a_store_share_the_caps() -> None:
    name = f"caps-{time.monotonic_ns()}"
    settings = PoolSettings(max_concurrent_per_credential=1, queue_timeout=0.05)
    async with (
        pool_of(1, settings=settings, state=MemoryStore(name)) as (_f1, one),
        pool_of(1, settings=settings, state=MemoryStore(name)) as (_f2, other),
    ):
        async with one.lease():
            with pytest.raises(CredentialsBusy):
                await pick(other)


# --------------------------------------------------------------------------- fates


@arun
async def test_consecutive_failures_disable_and_a_success_resets_the_count() -> None:
    settings = PoolSettings(max_failures=3)
    async with pool_of(1, settings=settings) as (_fake, pool):
        cred = pool.credentials[0]
        await pool.record_failure(cred)
        await pool.record_failure(cred)
        await pick(pool)  # a success in between
        await pool.record_failure(cred)
        await pool.record_failure(cred)
        assert not cred.disabled
        await pool.record_failure(cred)
        assert cred.disabled and cred.disabled_reason == "TooManyFailures"
        stored = await pool.state.get_credential(cred.id)
        assert stored is not None and stored["disabledReason"] == "TooManyFailures"
        with pytest.raises(NoCredentialAvailable) as info:
            await pick(pool)
        assert "disabled" in info.value.message


@arun
async def test_quota_exhaustion_lasts_until_the_reported_reset_date() -> None:
    clock = FakeClock()
    reset = clock() + 5 * 86400
    async with pool_of(2, clock=clock, usages=[Usage(next_date_reset=reset), None]) as (
        _fake,
        pool,
    ):
        first = pool.credentials[0]
        await pool.usage(first)
        await pool.quota_exhausted(first)
        assert pool.cooldown_of(first.id) == (reset, "QuotaExceeded")
        assert (await pool.state.cooldowns())[first.id] == (reset, "QuotaExceeded")
        assert await pick(pool) == 2
        clock.now = reset + 1
        assert await pick(pool) == 1


def test_without_a_reported_date_quota_resets_on_the_first_of_next_month() -> None:
    mid_december = calendar.timegm((2026, 12, 15, 8, 30, 0))
    assert first_of_next_month(mid_december) == calendar.timegm((2027, 1, 1, 0, 0, 0))


@arun
async def test_all_cooling_down_is_a_429_with_the_earliest_end() -> None:
    clock = FakeClock()
    async with pool_of(2, clock=clock) as (_fake, pool):
        first, second = pool.credentials
        await pool.cool_down(first, 300, "AccountThrottled")
        await pool.cool_down(second, 10, "RateLimited")
        with pytest.raises(CredentialsBusy) as info:
            await pick(pool)
        assert info.value.headers["retry-after"] == "10"
        clock.advance(11)
        assert await pick(pool) == 2


@arun
async def test_an_empty_pool_is_a_529() -> None:
    async with fake_upstream() as fake, pool_for(fake) as pool:
        with pytest.raises(NoCredentialAvailable) as info:
            await pick(pool)
    assert info.value.status == 529
    assert "no Kiro credential" in info.value.message


@arun
async def test_another_pool_sees_disables_cooldowns_and_new_credentials_after_a_sync() -> None:
    name = f"view-{time.monotonic_ns()}"
    clock = FakeClock()
    async with pool_of(2, clock=clock, state=MemoryStore(name, clock=clock)) as (fake, one):
        store = MemoryStore(name, clock=clock)
        async with pool_for(fake, clock=clock, state=store) as other:
            assert [c.id for c in other.credentials] == [1, 2]
            await one.disable(one.credentials[0], "Manual")
            await one.cool_down(one.credentials[1], 60, "RateLimited")
            newcomer, _ = social(fake, 9, now=clock())
            await one.state.put_credential({"id": 9, "refreshToken": newcomer.refresh_token})
            await other.sync()
            by_id = {c.id: c for c in other.credentials}
            assert by_id[1].disabled and by_id[1].disabled_reason == "Manual"
            assert other.cooldown_of(2) is not None
            assert 9 in by_id and by_id[9].machine_id  # derived and stored at first sight
            stored = await store.get_credential(9)
            assert stored is not None and stored["machineId"] == by_id[9].machine_id


@arun
async def test_enable_clears_the_reason_and_the_cooldown() -> None:
    async with pool_of(1) as (_fake, pool):
        cred = pool.credentials[0]
        await pool.disable(cred, "Manual")
        await pool.cool_down(cred, 60, "RateLimited")
        await pool.enable(cred)
        assert not cred.disabled and cred.disabled_reason is None
        assert await pick(pool) == 1


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError):
        CredentialPool(None, MemoryStore(), settings=PoolSettings(strategy="random"))  # type: ignore[arg-type]


def test_lease_is_an_async_context_manager() -> None:
    assert hasattr(Lease, "__aenter__") and hasattr(Lease, "__aexit__")
    assert Credential(id=1, auth_method="social").label() == "credential #1"
