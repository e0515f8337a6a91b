"""Two kiro_fast instances sharing one Redis: one refresh, shared budgets, shared verdicts.

Two real ``kiro-fast serve`` processes (separate configs and working directories, one
credentials file, ``stateUrl`` a fresh key prefix on one real ``redis-server``) in front
of one fake upstream running in this process. What a user of a multi-host deployment
relies on:

* an expired token is refreshed once across both instances and both use the rotation;
* the per-account concurrency cap and requests-per-minute budget hold across instances;
* a cool-down or a disable decided by one instance is honoured by the other;
* an instance killed with SIGKILL loses only its own streams, and the concurrency slot it
  held comes back after its lease;
* a client key's limits and usage are shared.

The fake counts refreshes and records which token each chat request carried, so every
expectation is read from the upstream's side. Instance B's ``/metrics`` scrape syncs its
pool view with the store, so it is also how the tests wait for B to see A's decisions.

Needs ``/usr/bin/redis-server``; skipped without it unless ``KIRO_FAST_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pool_helpers import arun, fake_upstream, pool_for, social
from proc_harness import (
    FakeThread,
    KiroProcess,
    SSEReader,
    messages_body,
    request,
    text_of,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer

from kiro_fast.errors import CredentialsBusy
from kiro_fast.state import MemoryStore, client_key_hash, open_state
from kiro_fast.testing import Account, Scenario

CLIENT_KEY = "sk-multi-instance-client"
ADMIN_KEY = "adm-multi-instance-" + "a" * 30
REFRESH_TOKENS = ["aorMulti" + str(n) + "r" * 110 for n in range(3)]
ACCESS_TOKENS = ["aoaMulti" + str(n) + "a" * 110 for n in range(3)]
#: Stalled streams must outlive every wait of a test: only release() ends them.
QUIET = {"streamIdleTimeout": 60, "firstByteTimeout": 30}


@pytest.fixture
def state_url(redis_server: RedisServer) -> str:
    """A key prefix of its own per test: the instances of one test share it, nobody else."""
    return f"{redis_server.url}?prefix=mi{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def fake() -> Iterator[FakeThread]:
    thread = FakeThread().start()
    yield thread
    thread.stop()


# --------------------------------------------------------------------------- instances


class Instance:
    """One ``kiro-fast serve`` process and the port it listens on."""

    def __init__(self, process: KiroProcess) -> None:
        self.process = process
        (listening,) = process.wait_record(lambda r: r["msg"].startswith("listening on http://"))
        found = re.search(r":(\d+)$", listening["msg"])
        assert found is not None
        self.port = int(found.group(1))

    def post(self, text: str, *, key: str = CLIENT_KEY) -> tuple[int, dict[str, str], bytes]:
        headers = {"x-api-key": key, "content-type": "application/json"}
        return request(self.port, "POST", "/v1/messages", messages_body(text), headers)

    def stream(self, text: str) -> SSEReader:
        headers = {"x-api-key": CLIENT_KEY, "content-type": "application/json"}
        return SSEReader(self.port, "/v1/messages", messages_body(text, stream=True), headers)

    def gauge(self, name: str, **labels: str) -> float:
        """A sample of this instance's ``/metrics`` (the scrape syncs the pool view first)."""
        status, _, body = request(self.port, "GET", "/metrics", headers={"x-api-key": ADMIN_KEY})
        assert status == 200, body
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0


@pytest.fixture
def launch(
    tmp_path: Path, fake: FakeThread, state_url: str
) -> Iterator[Callable[..., tuple[Instance, Instance]]]:
    started: list[KiroProcess] = []

    def run(
        credentials: list[dict[str, Any]],
        config: dict[str, Any] | None = None,
        config_b: dict[str, Any] | None = None,
    ) -> tuple[Instance, Instance]:
        shared = tmp_path / "shared"
        shared.mkdir()
        credentials_path = shared / "credentials.json"
        credentials_path.write_bytes(orjson.dumps(credentials))
        instances = []
        for name, extra in (("a", config), ("b", config_b if config_b is not None else config)):
            home = tmp_path / name
            home.mkdir()
            values = {
                "host": "127.0.0.1",
                "port": 0,
                "apiKey": CLIENT_KEY,
                "adminApiKey": ADMIN_KEY,
                "kiroApiBase": fake.url,
                "kiroAuthBase": fake.url,
                "oidcBase": fake.url,
                "shutdownTimeout": 5,
                **QUIET,
                **(extra or {}),
            }
            env = {}
            if name == "a":  # one through the config file, one through the environment
                values["stateUrl"] = state_url
            else:
                env["KIRO_FAST_STATE_URL"] = state_url
            (home / "config.json").write_bytes(orjson.dumps(values))
            args = ["serve", "--log-format", "json", "-c", str(home / "config.json")]
            args += ["--credentials", str(credentials_path)]
            process = KiroProcess(args, cwd=home, env=env)
            started.append(process)
            instances.append(Instance(process))
        return instances[0], instances[1]

    yield run
    for process in started:
        process.stop()


def accounts(fake: FakeThread, count: int) -> list[Account]:
    return [
        fake.call(lambda n=n: fake.fake.accounts.add_social(REFRESH_TOKENS[n], ACCESS_TOKENS[n]))
        for n in range(count)
    ]


def entries(count: int, *, expired: bool = False) -> list[dict[str, Any]]:
    """kiro.rs credentials.json entries for ``accounts(fake, count)``, in priority order."""
    offset = timedelta(minutes=-5 if expired else 50)
    expires = (datetime.now(UTC) + offset).isoformat().replace("+00:00", "Z")
    return [
        {
            "id": n + 1,
            "priority": n,
            "refreshToken": REFRESH_TOKENS[n],
            "accessToken": ACCESS_TOKENS[n],
            "expiresAt": expires,
            "authMethod": "social",
        }
        for n in range(count)
    ]


def chat_tokens(fake: FakeThread) -> list[str]:
    """The bearer token of every chat request the fake received, in order."""

    def read() -> list[str]:
        return [
            r.headers.get("authorization", "")[7:]
            for r in fake.fake.requests
            if r.path.endswith("/generateAssistantResponse")
        ]

    tokens: list[str] = fake.call(read)
    return tokens


def in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call at once (threads released together); their results in order."""
    results: list[Any] = [None] * len(calls)
    gate = threading.Barrier(len(calls))

    def run(index: int) -> None:
        gate.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def stalled(instance: Instance, fake: FakeThread, count: int) -> SSEReader:
    """A stream that delivered content and is now held by the fake (``release()`` ends it)."""
    directive = orjson.dumps({"scenario": "stall", "after": 2, "text": "held " * 10}).decode()
    reader = instance.stream(f"hold [[fake:{directive}]]")
    assert reader.status == 200
    reader.until("content_block_delta")
    fake.wait_stalled(count)
    return reader


# --------------------------------------------------------------------------- refresh


def test_an_expired_token_is_refreshed_once_across_instances(launch, fake, tmp_path) -> None:
    (account,) = accounts(fake, 1)
    fake.call(lambda: fake.fake.accounts.expire_access_tokens(account))
    # A slow refresh makes both instances find the token expired at the same time.
    fake.call(lambda: fake.fake.accounts.fail_refresh("slow", delay_ms=300))
    a, b = launch(entries(1, expired=True))
    results = in_parallel([lambda i=i: (a if i % 2 else b).post(f"hi {i}") for i in range(8)])
    assert [status for status, _, _ in results] == [200] * 8
    assert fake.call(lambda: fake.fake.accounts.refresh_count) == 1
    rotated = account.access_token
    assert rotated is not None and rotated != ACCESS_TOKENS[0]
    assert chat_tokens(fake) == [rotated] * 8
    assert a.post("again")[0] == 200 and b.post("again")[0] == 200
    assert chat_tokens(fake)[-2:] == [rotated, rotated]
    assert fake.call(lambda: fake.fake.accounts.refresh_count) == 1
    # The rotated refresh token reached the shared file, and the old one is gone.
    stored = orjson.loads((tmp_path / "shared" / "credentials.json").read_bytes())
    assert [entry["refreshToken"] for entry in stored] == [account.refresh_token]
    assert account.refresh_token != REFRESH_TOKENS[0]


# --------------------------------------------------------------------------- budgets


def test_the_concurrency_cap_holds_across_instances(launch, fake) -> None:
    accounts(fake, 1)
    cap = {"maxConcurrentPerCredential": 1}
    a, b = launch(entries(1), {**cap, "queueTimeout": 30}, {**cap, "queueTimeout": 0.5})
    held = stalled(a, fake, 1)
    status, headers, body = b.post("the only account is busy on the other instance")
    assert status == 429, body
    assert orjson.loads(body)["error"]["type"] == "rate_limit_error"
    assert float(headers["retry-after"]) > 0
    assert len(chat_tokens(fake)) == 1  # B never reached the upstream
    fake.release()
    assert text_of(held.until("message_stop"))
    held.close()
    # Now B holds the account and A's request waits in A's queue until B's stream ends.
    held = stalled(b, fake, 1)
    waiting: list[int] = []
    waiter = threading.Thread(target=lambda: waiting.append(a.post("wait for it")[0]))
    waiter.start()
    wait_until(lambda: a.gauge("kiro_fast_pool_queued") == 1, what="A's request queued")
    assert len(chat_tokens(fake)) == 2
    fake.release()
    held.until("message_stop")
    held.close()
    waiter.join(30)
    assert waiting == [200]
    assert len(chat_tokens(fake)) == 3


def test_the_rpm_budget_is_shared(launch, fake) -> None:
    accounts(fake, 1)
    a, b = launch(entries(1), {"rpmPerCredential": 2, "queueTimeout": 0.5})
    assert a.post("one")[0] == 200
    assert b.post("two")[0] == 200
    for instance in (a, b):
        status, headers, body = instance.post("three is over the budget")
        assert status == 429, body
        # The window is a minute and both hits are seconds old.
        assert 30 < float(headers["retry-after"]) <= 60
    assert len(chat_tokens(fake)) == 2


# --------------------------------------------------------------------------- verdicts


def test_cool_downs_and_disables_made_by_one_instance_are_honoured_by_the_other(
    launch, fake
) -> None:
    first, second, third = accounts(fake, 3)
    a, b = launch(entries(3))
    # Account 1 runs out of credits on A: A cools it down until the monthly reset.
    fake.call(lambda: fake.fake.enqueue(Scenario(error="monthly_limit")))
    assert a.post("use up account one")[0] == 200
    assert chat_tokens(fake) == [ACCESS_TOKENS[0], ACCESS_TOKENS[1]]
    wait_until(lambda: b.gauge("kiro_fast_credential_available", credential="1") == 0)
    assert b.post("B skips account one")[0] == 200
    assert chat_tokens(fake)[2:] == [ACCESS_TOKENS[1]]
    # Account 2's refresh token dies: A finds out and disables it; B never tries it.
    fake.call(lambda: fake.fake.accounts.expire_access_tokens(second))
    fake.call(lambda: fake.fake.accounts.revoke_refresh_token(second))
    assert a.post("account two is dead")[0] == 200
    assert chat_tokens(fake)[3:] == [ACCESS_TOKENS[1], ACCESS_TOKENS[2]]
    assert fake.call(lambda: fake.fake.accounts.refresh_count) == 1
    labels = {"credential": "2", "reason": "InvalidRefreshToken"}
    wait_until(lambda: b.gauge("kiro_fast_credential_disabled", **labels) == 1)
    assert b.post("B skips both")[0] == 200
    assert chat_tokens(fake)[5:] == [ACCESS_TOKENS[2]]
    assert fake.call(lambda: fake.fake.accounts.refresh_count) == 1
    assert first.access_token == ACCESS_TOKENS[0] and third.access_token == ACCESS_TOKENS[2]


class GatedStore(MemoryStore):
    """A store whose cool-down writes land only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()
        self.land = asyncio.Event()

    async def set_cooldown(self, cred_id: int, until: float, reason: str) -> None:
        self.writing.set()
        await self.land.wait()
        await super().set_cooldown(cred_id, until, reason)


@arun
async def test_a_cool_down_is_not_lost_to_a_sync_that_read_the_store_before_it_landed() -> None:
    """The root of a cross-instance flake: a background sync reading the store while the
    cool-down write was under way replaced the pool's view, so the instance that decided
    the cool-down served the cooling account again."""
    async with fake_upstream() as fake:
        cred, _ = social(fake, 1)
        store = GatedStore()
        async with pool_for(fake, [cred], state=store) as pool:
            served = pool.credentials[0]
            cooling = asyncio.ensure_future(pool.cool_down(served, 300.0, "RateLimited"))
            await store.writing.wait()
            await pool.sync()  # reads no cool-down: the write has not landed
            store.land.set()
            await cooling
            assert pool.cooldown_of(served.id) is not None
            with pytest.raises(CredentialsBusy):
                async with pool.lease():
                    pass


# --------------------------------------------------------------------------- crash


def test_a_killed_instance_loses_only_its_streams_and_its_slot_comes_back(
    launch, fake, state_url
) -> None:
    accounts(fake, 1)
    config = {"maxConcurrentPerCredential": 2, "slotLease": 2, "queueTimeout": 30}
    a, b = launch(entries(1), config)
    doomed = stalled(a, fake, 1)
    survivor = stalled(b, fake, 2)
    assert slots_in_use(state_url, "cred:1") == 2
    a.process.signal(signal.SIGKILL)
    assert a.process.wait_exit(20) == -signal.SIGKILL
    with pytest.raises((OSError, ValueError, AssertionError)):
        doomed.until("message_stop")  # the connection died with the process
    doomed.close()
    fake.release()
    assert "held" in text_of(survivor.until("message_stop"))
    survivor.close()
    # B's slot went back at once; the dead instance's slot expires with its lease.
    wait_until(lambda: slots_in_use(state_url, "cred:1") == 0, what="the dead slot expired")
    both = [stalled(b, fake, 1), stalled(b, fake, 2)]  # the full capacity serves B again
    fake.release()
    for reader in both:
        reader.until("message_stop")
        reader.close()


def slots_in_use(state_url: str, scope: str) -> int:
    async def count() -> int:
        async with open_state(state_url) as store:
            return await store.slots_in_use(scope)

    return asyncio.run(count())


# --------------------------------------------------------------------------- client keys


def test_client_key_limits_and_usage_are_shared(launch, fake, state_url) -> None:
    accounts(fake, 1)
    a, b = launch(entries(1))
    key = "sk-kf-shared-client-key-" + "z" * 20
    create_key(state_url, key, rpm_limit=2)
    assert a.post("one", key=key)[0] == 200
    assert b.post("two", key=key)[0] == 200
    for instance in (a, b):
        status, headers, body = instance.post("three", key=key)
        assert status == 429, body
        assert float(headers["retry-after"]) > 0
    assert len(chat_tokens(fake)) == 2
    # Usage is written in batches by each instance: both answered requests arrive.
    wait_until(lambda: key_answered(state_url) == 2, what="both instances' usage stored")


def create_key(state_url: str, key: str, *, rpm_limit: int) -> None:
    async def create() -> None:
        async with open_state(state_url) as store:
            await store.create_client_key(
                "shared", key_hash=client_key_hash(key), key_prefix=key[:12], rpm_limit=rpm_limit
            )

    asyncio.run(create())


def key_answered(state_url: str) -> int:
    """Requests of stored client keys that were answered without an error."""

    async def summary() -> int:
        async with open_state(state_url) as store:
            rows = await store.usage_summary(since=0, until=2**40, group_by="client_key")
        keyed = [row for row in rows if row["client_key_id"] is not None]
        return sum(row["requests"] - row["errors"] for row in keyed)

    return asyncio.run(summary())
