"""The shared-state layer: one behavioural suite over the memory, SQLite and Redis stores.

Every test taking ``backend`` runs three times. Two store instances on the same data
stand for two processes (SQLite file, Redis prefix, or a named ``memory://`` set); the
cross-process cases start real subprocesses against the SQLite and Redis stores only
(``shared_backend``): the memory store lives in one process. Expiry is tested with an
injected clock where the store uses its own clock, and with short real leases polled up
to a deadline where Redis uses the server's clock (locks, slots, rate windows).

Redis tests need ``/usr/bin/redis-server``; without it they skip, unless
``KIRO_FAST_REQUIRE_ALL=1`` makes them fail.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import select
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from kiro_fast.errors import ConfigError, InvalidRequest
from kiro_fast.state import MemoryStore, SQLiteStore, StateStore, UsageEvent, open_state
from kiro_fast.state.base import USAGE_FLUSH_BATCH
from kiro_fast.state.sqlite import SCHEMA_VERSION, migrate, schema_version

REPO = Path(__file__).resolve().parent.parent
#: 2026-01-01T00:00:00Z
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
HOUR = 3600.0
#: Bound on every "wait until it happens" loop; reaching it fails the test.
DEADLINE = 15.0


def arun(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body with ``asyncio.run`` (pytest-asyncio is not used)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    name: str
    url: str
    #: Redis expires locks, slots and rate hits by its own clock, not the injected one
    server_time: bool = False
    clock: FakeClock = field(default_factory=FakeClock)

    def store(
        self, clock: Callable[[], float] | None = None, flush_interval: float = 1.0
    ) -> StateStore:
        return open_state(self.url, clock=clock or self.clock, usage_flush_interval=flush_interval)


def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    tag = uuid.uuid4().hex[:12]
    if request.param == "memory":
        return Backend("memory", f"memory://{tag}")
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path}/state.db")
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend("redis", f"{server.url}?prefix=t{tag}:", server_time=True)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The backends several processes can share (the memory store lives in one)."""
    return make_backend(request, tmp_path)


# --------------------------------------------------------------------------- subprocesses

CHILD = r"""
import asyncio, json, sys, time
from kiro_fast.state import open_state

async def main(url, mode, arg):
    async with open_state(url) as store:
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # "go"
        if mode == "alloc":
            ids = [await store.allocate_credential_id() for _ in range(int(arg))]
            print(json.dumps(ids), flush=True)
            return
        t0 = time.time()
        async with store.lock("shared", lease=float(arg), wait=5) as got:
            print(json.dumps({"t0": t0, "got": got}), flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)  # "release"
        print("released", flush=True)

asyncio.run(main(*sys.argv[1:4]))
"""


class Child:
    """A subprocess running ``CHILD`` against the same store."""

    def __init__(self, url: str, mode: str, arg: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, mode, arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        assert self.read() == "ready"

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE)
        assert ready, "child process did not answer"
        line = self.proc.stdout.readline().decode().strip()
        assert line, f"child process exited ({self.proc.poll()})"
        return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


# --------------------------------------------------------------------------- credentials

ENTRY = {
    "id": 3,
    "refreshToken": "aor" + "x" * 120,
    "expiresAt": "2026-05-01T10:00:00Z",
    "authMethod": "idc",
    "clientId": "cid",
    "clientSecret": "secret",
    "priority": 1,
    "disabled": True,
    "disabledReason": "QuotaExceeded",
    "someFutureKey": {"kept": [1, 2]},
}


@arun
async def test_credential_crud_round_trips_the_entry(backend: Backend) -> None:
    async with backend.store() as a, backend.store() as b:
        assert await a.list_credentials() == []
        assert await a.get_credential(3) is None
        v1 = await a.put_credential(ENTRY)
        assert await b.get_credential(3) == ENTRY
        assert await b.credential_version(3) == v1
        changed = {**ENTRY, "accessToken": "aoa-new", "disabled": False}
        v2 = await b.put_credential(changed)
        assert v2 > v1
        assert await a.credential_version(3) == v2
        assert await a.get_credential(3) == changed
        await a.put_credential({"id": 1, "kiroApiKey": "ksk_x", "authMethod": "api_key"})
        assert [e["id"] for e in await b.list_credentials()] == [1, 3]
        assert await a.delete_credential(3) is True
        assert await a.delete_credential(3) is False
        assert await b.get_credential(3) is None
        assert await b.credential_version(3) == 0


@arun
async def test_credentials_version_moves_on_put_and_delete(backend: Backend) -> None:
    async with backend.store() as a, backend.store() as b:
        start = await b.credentials_version()
        await a.put_credential({"id": 5, "refreshToken": "r"})
        after_put = await b.credentials_version()
        assert after_put > start
        await a.delete_credential(5)
        assert await b.credentials_version() > after_put


@arun
async def test_credential_id_must_be_a_non_negative_integer(backend: Backend) -> None:
    async with backend.store() as store:
        for bad in ({}, {"id": "3"}, {"id": -1}, {"id": True}):
            with pytest.raises(ValueError):
                await store.put_credential(bad)


@arun
async def test_allocated_ids_are_above_stored_ids_and_never_reused(backend: Backend) -> None:
    async with backend.store() as a, backend.store() as b:
        await a.put_credential({"id": 41, "refreshToken": "r"})
        first = await b.allocate_credential_id()
        assert first == 42
        await a.put_credential({"id": first, "refreshToken": "r"})
        await a.delete_credential(first)
        assert await a.allocate_credential_id() == 43


@arun
async def test_concurrent_id_allocation_is_unique(backend: Backend) -> None:
    async with backend.store() as a, backend.store() as b:
        ids = await asyncio.gather(*(s.allocate_credential_id() for _ in range(40) for s in (a, b)))
    assert len(set(ids)) == 80


def test_id_allocation_is_unique_across_processes(shared_backend: Backend) -> None:
    backend = shared_backend
    children = [Child(backend.url, "alloc", "100") for _ in range(2)]
    try:
        for child in children:
            child.send("go")
        ids = [i for child in children for i in json.loads(child.read())]
    finally:
        for child in children:
            child.close()
    assert len(ids) == 200
    assert len(set(ids)) == 200


# --------------------------------------------------------------------------- locks


@arun
async def test_lock_excludes_every_other_holder(backend: Backend) -> None:
    active = 0
    entered = 0

    async def worker(store: StateStore) -> None:
        nonlocal active, entered
        async with store.lock("refresh:1", lease=30, wait=DEADLINE) as got:
            assert got
            active += 1
            entered += 1
            assert active == 1
            for _ in range(3):
                await asyncio.sleep(0)
            active -= 1

    async with backend.store() as a, backend.store() as b:
        await asyncio.gather(*(worker(s) for _ in range(5) for s in (a, b)))
    assert entered == 10


@arun
async def test_lock_wait_timeout_yields_false(backend: Backend) -> None:
    async with backend.store() as a, backend.store() as b:
        async with a.lock("refresh:2", lease=30, wait=0) as got:
            assert got
            async with b.lock("refresh:2", lease=30, wait=0.05) as other:
                assert other is False
            async with a.lock("refresh:2", lease=30, wait=0) as same_store:
                assert same_store is False
        async with b.lock("refresh:2", lease=30, wait=0) as after_release:
            assert after_release


@arun
async def test_waiter_gets_the_lock_when_the_holder_releases(backend: Backend) -> None:
    async with backend.store() as a, backend.store() as b:
        order: list[str] = []
        holding = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with a.lock("x", lease=30, wait=0) as got:
                assert got
                holding.set()
                await release.wait()
                order.append("holder out")

        async def waiter() -> None:
            await holding.wait()
            async with b.lock("x", lease=30, wait=DEADLINE) as got:
                assert got
                order.append("waiter in")

        task = asyncio.gather(holder(), waiter())
        await holding.wait()
        for _ in range(5):
            await asyncio.sleep(0)
        assert order == []
        release.set()
        await task
        assert order == ["holder out", "waiter in"]


@arun
async def test_abandoned_lock_expires_after_its_lease_and_stale_release_is_ignored(
    backend: Backend,
) -> None:
    lease = 0.3 if backend.server_time else 10.0
    async with backend.store() as a, backend.store() as b:
        dead = a.lock("refresh:3", lease=lease, wait=0)
        assert await dead.__aenter__() is True  # the holder "dies" inside its block
        async with b.lock("refresh:3", lease=30, wait=0) as got:
            assert got is False
        if backend.server_time:
            started = time.monotonic()
            async with b.lock("refresh:3", lease=30, wait=DEADLINE) as got:
                assert got
                assert time.monotonic() - started >= lease * 0.5
                await dead.__aexit__(None, None, None)  # late release must not free it
                async with a.lock("refresh:3", lease=30, wait=0) as third:
                    assert third is False
        else:
            backend.clock.advance(lease + 1)
            async with b.lock("refresh:3", lease=30, wait=0) as got:
                assert got
                await dead.__aexit__(None, None, None)
                async with a.lock("refresh:3", lease=30, wait=0) as third:
                    assert third is False


@arun
async def test_extend_lock_keeps_it(backend: Backend) -> None:
    lease = 0.2 if backend.server_time else 10.0
    async with backend.store() as a, backend.store() as b:
        assert await a.extend_lock("y", 30) is False  # not held
        async with a.lock("y", lease=lease, wait=0) as got:
            assert got
            assert await a.extend_lock("y", 30) is True
            if backend.server_time:
                async with b.lock("y", lease=30, wait=lease * 3) as other:
                    assert other is False
            else:
                backend.clock.advance(lease + 1)
                async with b.lock("y", lease=30, wait=0) as other:
                    assert other is False
        assert await a.extend_lock("y", 30) is False


def test_lock_is_exclusive_across_processes(shared_backend: Backend) -> None:
    backend = shared_backend
    child = Child(backend.url, "lock", "30")
    try:
        child.send("go")
        assert json.loads(child.read())["got"] is True

        async def check(expected: bool, wait: float) -> None:
            async with backend.store(clock=time.time) as store:
                async with store.lock("shared", lease=30, wait=wait) as got:
                    assert got is expected

        asyncio.run(check(False, 0.2))
        child.send("release")
        assert child.read() == "released"
        asyncio.run(check(True, 0))
    finally:
        child.close()


def test_lock_of_a_killed_holder_frees_after_the_lease(shared_backend: Backend) -> None:
    backend = shared_backend
    lease = 3.0 if backend.server_time else 30.0
    child = Child(backend.url, "lock", str(lease))
    try:
        child.send("go")
        held = json.loads(child.read())
        assert held["got"] is True
        child.proc.kill()
        child.proc.wait()
    finally:
        child.close()

    async def attempt(clock: Callable[[], float], wait: float) -> tuple[bool, float]:
        async with backend.store(clock=clock) as store:
            async with store.lock("shared", lease=5, wait=wait) as got:
                return got, time.time()

    got, _ = asyncio.run(attempt(time.time, 0))
    assert got is False  # the dead holder's lease still runs
    if backend.server_time:
        got, at = asyncio.run(attempt(time.time, DEADLINE))
        assert got is True
        assert at >= held["t0"] + lease - 0.01
    else:
        got, _ = asyncio.run(attempt(lambda: time.time() + lease + 1, 0))
        assert got is True


# --------------------------------------------------------------------------- cool-downs


@arun
async def test_cooldowns_are_shared_and_expire(backend: Backend) -> None:
    clock = backend.clock
    async with backend.store() as a, backend.store() as b:
        await a.set_cooldown(1, clock.now + 60, "throttled")
        await a.set_cooldown(2, clock.now + 3600, "quota")
        assert await b.cooldowns() == {
            1: (clock.now + 60, "throttled"),
            2: (clock.now + 3600, "quota"),
        }
        await b.set_cooldown(2, clock.now + 120, "suspended")
        clock.advance(61)
        assert await a.cooldowns() == {2: (T0 + 120, "suspended")}
        await a.clear_cooldown(2)
        assert await b.cooldowns() == {}


# --------------------------------------------------------------------------- slots


@arun
async def test_slots_cap_concurrency_across_instances(backend: Backend) -> None:
    async with backend.store() as a, backend.store() as b:
        first = await a.acquire_slot("cred:1", 2, 60)
        second = await b.acquire_slot("cred:1", 2, 60)
        assert first and second and first != second
        assert await a.acquire_slot("cred:1", 2, 60) is None
        assert await b.slots_in_use("cred:1") == 2
        assert await a.acquire_slot("cred:2", 2, 60) is not None  # scopes are separate
        await b.release_slot("cred:1", first)
        assert await a.slots_in_use("cred:1") == 1
        third = await b.acquire_slot("cred:1", 2, 60)
        assert third is not None
        assert await a.acquire_slot("cred:1", 2, 60) is None


@arun
async def test_slot_of_a_vanished_holder_expires(backend: Backend) -> None:
    lease = 0.3 if backend.server_time else 30.0
    async with backend.store() as a, backend.store() as b:
        assert await a.acquire_slot("key:9", 1, lease) is not None
        assert await b.acquire_slot("key:9", 1, lease) is None
        if backend.server_time:

            async def freed() -> bool:
                return await b.slots_in_use("key:9") == 0

            await eventually(freed, "the slot to expire")
        else:
            backend.clock.advance(lease + 0.5)
            assert await b.slots_in_use("key:9") == 0
        assert await b.acquire_slot("key:9", 1, 60) is not None


@arun
async def test_extend_slot(backend: Backend) -> None:
    lease = 0.2 if backend.server_time else 30.0
    async with backend.store() as a, backend.store() as b:
        token = await a.acquire_slot("cred:5", 1, lease)
        assert token is not None
        assert await a.extend_slot("cred:5", token, 60) is True
        assert await a.extend_slot("cred:5", "not-a-token", 60) is False
        if not backend.server_time:
            backend.clock.advance(lease + 1)
        else:
            await asyncio.sleep(lease * 2)  # lets the original lease lapse; not an assertion
        assert await b.acquire_slot("cred:5", 1, 60) is None
        await a.release_slot("cred:5", token)
        assert await b.acquire_slot("cred:5", 1, 60) is not None


@arun
async def test_budget_arguments_are_checked(backend: Backend) -> None:
    async with backend.store() as store:
        with pytest.raises(ValueError):
            await store.acquire_slot("s", 0, 10)
        with pytest.raises(ValueError):
            await store.acquire_slot("s", 1, 0)
        with pytest.raises(ValueError):
            await store.hit_rate("s", 1, 0)
        with pytest.raises(ValueError):
            await store.hit_rate("s", 1, 10 * 86400)


# --------------------------------------------------------------------------- rate windows


@arun
async def test_rate_window_allows_limit_then_refuses(backend: Backend) -> None:
    clock = backend.clock
    async with backend.store() as a, backend.store() as b:
        for store in (a, b, a):
            assert await store.hit_rate("rpm:key:1", 3, 60) == (True, 0.0)
            clock.advance(1)
        clock.advance(7)  # now T0 + 10; hits at T0, T0+1, T0+2
        allowed, retry_after = await b.hit_rate("rpm:key:1", 3, 60)
        assert allowed is False
        if backend.server_time:
            assert 0 < retry_after <= 60
        else:
            assert retry_after == pytest.approx(50.0)
        assert (await a.hit_rate("rpm:key:2", 3, 60))[0] is True  # scopes are separate
        if backend.server_time:
            return
        clock.advance(50.5)  # the first hit left the window; refusals were not counted
        assert await a.hit_rate("rpm:key:1", 3, 60) == (True, 0.0)
        allowed, retry_after = await a.hit_rate("rpm:key:1", 3, 60)
        assert allowed is False
        assert retry_after == pytest.approx(0.5)


@arun
async def test_redis_rate_window_slides_in_server_time(redis_server: RedisServer) -> None:
    # The clock-driven stores are covered with an injected clock above.
    async with open_state(f"{redis_server.url}?prefix=t{uuid.uuid4().hex}:") as store:
        for _ in range(2):
            assert (await store.hit_rate("rps", 2, 0.3))[0] is True
        assert (await store.hit_rate("rps", 2, 0.3))[0] is False

        async def allowed_again() -> bool:
            return (await store.hit_rate("rps", 2, 0.3))[0]

        await eventually(allowed_again, "the window to slide")


# --------------------------------------------------------------------------- tokens per day


@arun
async def test_token_counters_roll_over_at_utc_midnight(backend: Backend) -> None:
    clock = backend.clock
    clock.now = datetime(2026, 1, 1, 23, 59, tzinfo=UTC).timestamp()
    day1 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    async with backend.store() as a, backend.store() as b:
        assert await a.add_tokens("tpd:key:1", 100) == 100
        assert await b.add_tokens("tpd:key:1", 50) == 150
        clock.advance(120)  # 2026-01-02 00:01 UTC
        assert await a.add_tokens("tpd:key:1", 10) == 10
        assert await b.tokens_used("tpd:key:1", clock.now) == 10
        assert await b.tokens_used("tpd:key:1", day1) == 160
        assert await b.tokens_used("tpd:key:1", day1 + 23 * 3600) == 160
        assert await b.tokens_used("tpd:key:2", day1) == 0


# --------------------------------------------------------------------------- settings


@arun
async def test_settings_are_shared_and_versioned(backend: Backend) -> None:
    async with backend.store() as a, backend.store() as b:
        assert await b.get_settings() == {}
        start = await b.settings_version()
        v1 = await a.set_settings({"loadBalancingMode": "balanced", "limits": {"rpm": [1, 2]}})
        assert v1 > start
        assert await b.settings_version() == v1
        assert await b.get_settings() == {
            "loadBalancingMode": "balanced",
            "limits": {"rpm": [1, 2]},
        }
        v2 = await b.set_settings({"limits": None, "kiroVersion": "0.11.107"})
        assert v2 > v1
        assert await a.get_settings() == {
            "loadBalancingMode": "balanced",
            "kiroVersion": "0.11.107",
        }


# --------------------------------------------------------------------------- client keys


@arun
async def test_client_keys_crud_and_lookup_by_hash(backend: Backend) -> None:
    clock = backend.clock
    async with backend.store() as a, backend.store() as b:
        created = await a.create_client_key(
            "ci", key_hash="h1", key_prefix="sk-ab", rpm_limit=60, models=["claude-sonnet-4-5"]
        )
        assert created == {
            "id": created["id"],
            "name": "ci",
            "key_hash": "h1",
            "key_prefix": "sk-ab",
            "rpm_limit": 60,
            "tpd_limit": None,
            "models": ["claude-sonnet-4-5"],
            "enabled": True,
            "created_at": T0,
            "updated_at": T0,
        }
        assert await b.get_client_key_by_hash("h1") == created
        assert await b.get_client_key(created["id"]) == created
        assert await b.get_client_key_by_hash("nope") is None
        with pytest.raises(InvalidRequest):
            await b.create_client_key("dup", key_hash="h1", key_prefix="sk-zz")
        other = await b.create_client_key("other", key_hash="h2", key_prefix="sk-cd")
        assert [k["name"] for k in await a.list_client_keys()] == ["ci", "other"]

        clock.advance(5)
        updated = await b.update_client_key(
            created["id"], enabled=False, tpd_limit=1000, models=None, key_hash="h3"
        )
        assert updated == {
            **created,
            "enabled": False,
            "tpd_limit": 1000,
            "models": None,
            "key_hash": "h3",
            "updated_at": T0 + 5,
        }
        assert await a.get_client_key_by_hash("h1") is None
        assert await a.get_client_key_by_hash("h3") == updated
        with pytest.raises(InvalidRequest):
            await a.update_client_key(created["id"], key_hash="h2")
        with pytest.raises(ValueError):
            await a.update_client_key(created["id"], id=7)
        assert await a.update_client_key(9999, name="x") is None

        assert await a.delete_client_key(other["id"]) is True
        assert await a.delete_client_key(other["id"]) is False
        assert await b.get_client_key_by_hash("h2") is None
        again = await b.create_client_key("again", key_hash="h2", key_prefix="sk-cd")
        assert again["id"] > other["id"]


# --------------------------------------------------------------------------- admin users


@arun
async def test_admin_users(backend: Backend) -> None:
    clock = backend.clock
    async with backend.store() as a, backend.store() as b:
        assert await a.get_admin_user("admin") is None
        await a.put_admin_user("admin", "$2b$12$first")
        clock.advance(10)
        await b.put_admin_user("admin", "$2b$12$second")
        await b.put_admin_user("ops", "$2b$12$ops")
        assert await a.get_admin_user("admin") == {
            "username": "admin",
            "password_hash": "$2b$12$second",
            "created_at": T0,
            "updated_at": T0 + 10,
        }
        assert await a.list_admin_users() == ["admin", "ops"]


# --------------------------------------------------------------------------- usage

SONNET, OPUS = "claude-sonnet-4-5", "claude-opus-4-1"
EVENTS = [
    UsageEvent(T0 + 10, "/v1/messages", SONNET, 1, 7, 200, 100, 20, 1000.0, True),
    UsageEvent(T0 + 70, "/v1/messages", OPUS, 1, None, 529, 50, 0, 200.0, False),
    UsageEvent(T0 + 3605, "/v1/chat/completions", SONNET, 2, 7, 200, 10, 5, 300.0, True),
    UsageEvent(T0 + 3630, "/v1/messages", SONNET, None, 7, 401, 0, 0, 1.0, False),
]


def totals(requests: int, errors: int, inp: int, out: int, ms: int, streams: int) -> dict[str, int]:
    return {
        "requests": requests,
        "errors": errors,
        "input_tokens": inp,
        "output_tokens": out,
        "duration_ms": ms,
        "streams": streams,
    }


@arun
async def test_usage_summaries_after_a_flush(backend: Backend) -> None:
    backend.clock.now = T0 + 7200
    async with backend.store(flush_interval=HOUR) as a, backend.store() as b:
        for event in EVENTS:
            a.record_usage(event)
        window: dict[str, Any] = {"since": T0, "until": T0 + 7200}
        assert await b.usage_summary(**window) == []  # queued in a, not written yet
        await a.flush_usage()

        assert await b.usage_summary(**window) == [
            {"bucket": None, **totals(4, 2, 160, 25, 1501, 2)}
        ]
        assert await b.usage_summary(**window, group_by="credential") == [
            {"bucket": None, "credential_id": None, **totals(1, 1, 0, 0, 1, 0)},
            {"bucket": None, "credential_id": 1, **totals(2, 1, 150, 20, 1200, 1)},
            {"bucket": None, "credential_id": 2, **totals(1, 0, 10, 5, 300, 1)},
        ]
        assert await b.usage_summary(**window, group_by="client_key") == [
            {"bucket": None, "client_key_id": None, **totals(1, 1, 50, 0, 200, 0)},
            {"bucket": None, "client_key_id": 7, **totals(3, 1, 110, 25, 1301, 2)},
        ]
        assert await b.usage_summary(**window, group_by="model", bucket=3600) == [
            {"bucket": T0, "model": OPUS, **totals(1, 1, 50, 0, 200, 0)},
            {"bucket": T0, "model": SONNET, **totals(1, 0, 100, 20, 1000, 1)},
            {"bucket": T0 + 3600, "model": SONNET, **totals(2, 1, 10, 5, 301, 1)},
        ]
        assert await b.usage_summary(since=T0, until=T0 + 7200, bucket=60) == [
            {"bucket": T0, **totals(1, 0, 100, 20, 1000, 1)},
            {"bucket": T0 + 60, **totals(1, 1, 50, 0, 200, 0)},
            {"bucket": T0 + 3600, **totals(2, 1, 10, 5, 301, 1)},
        ]
        # Minute resolution: an event counts at the start of its minute.
        assert await b.usage_summary(since=T0 + 60, until=T0 + 3600) == [
            {"bucket": None, **totals(1, 1, 50, 0, 200, 0)}
        ]
        assert await b.usage_summary(since=T0 + 61, until=T0 + 3600) == []


@arun
async def test_close_flushes_queued_usage(backend: Backend) -> None:
    backend.clock.now = T0 + 7200
    async with backend.store() as reader:
        writer = backend.store(flush_interval=HOUR)
        await writer.open()
        writer.record_usage(EVENTS[0])
        assert await reader.usage_summary(since=T0, until=T0 + 7200) == []
        await writer.close()  # close() flushes
        assert await reader.usage_summary(since=T0, until=T0 + 7200) == [
            {"bucket": None, **totals(1, 0, 100, 20, 1000, 1)}
        ]


@arun
async def test_a_full_batch_of_usage_is_flushed_in_the_background(backend: Backend) -> None:
    backend.clock.now = T0 + 7200
    async with backend.store(flush_interval=HOUR) as a, backend.store() as b:
        for _ in range(USAGE_FLUSH_BATCH):
            a.record_usage(EVENTS[0])

        async def all_visible() -> bool:
            rows = await b._usage_summary(T0, T0 + 7200, None, None)
            return bool(rows) and rows[0]["requests"] == USAGE_FLUSH_BATCH

        await eventually(all_visible, "the background flush")


@arun
async def test_usage_summary_arguments_are_checked(backend: Backend) -> None:
    async with backend.store() as store:
        with pytest.raises(ValueError):
            await store.usage_summary(since=T0, until=T0 + 60, bucket=90)
        with pytest.raises(ValueError):
            await store.usage_summary(since=T0, until=T0 + 60, group_by="user")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- SQLite specifics


def test_sqlite_upgrades_an_older_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=1)
    conn.execute(
        "INSERT INTO credentials VALUES (1, ?, 1, 0)", (json.dumps({"id": 1, "refreshToken": "r"}),)
    )
    conn.execute("INSERT INTO settings VALUES ('kiroVersion', '\"0.11.107\"', 0)")
    conn.close()

    async def body() -> None:
        async with SQLiteStore(path) as store:
            assert await store.get_credential(1) == {"id": 1, "refreshToken": "r"}
            assert await store.get_settings() == {"kiroVersion": "0.11.107"}
            key = await store.create_client_key("k", key_hash="h", key_prefix="sk-")
            assert key["id"] == 1

    asyncio.run(body())
    conn = sqlite3.connect(path)
    assert schema_version(conn) == SCHEMA_VERSION == 2
    assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
        (1,),
        (2,),
    ]
    conn.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        asyncio.run(SQLiteStore(path).open())


def test_sqlite_refuses_a_foreign_database(tmp_path: Path) -> None:
    path = tmp_path / "kiro-rs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE credentials (id INTEGER PRIMARY KEY, refresh_token TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="cannot be migrated"):
        asyncio.run(SQLiteStore(path).open())


def test_sqlite_file_is_private_and_its_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "kiro_fast.db"

    async def body() -> None:
        async with open_state(str(path)) as store:
            await store.put_credential({"id": 1, "refreshToken": "r"})

    asyncio.run(body())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


# --------------------------------------------------------------------------- URLs


def test_open_state_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    default = open_state(None)
    assert isinstance(default, SQLiteStore)
    assert default.path == Path("data/kiro_fast.db")
    relative = open_state("sqlite:///var/state.db")
    assert isinstance(relative, SQLiteStore) and relative.path == Path("var/state.db")
    absolute = open_state("sqlite:////srv/kiro/state.db")
    assert isinstance(absolute, SQLiteStore) and absolute.path == Path("/srv/kiro/state.db")
    plain = open_state(str(tmp_path / "x.db"))
    assert isinstance(plain, SQLiteStore) and plain.path == tmp_path / "x.db"
    assert isinstance(open_state("memory://"), MemoryStore)
    with pytest.raises(ConfigError):
        open_state("ftp://example/x")


def test_redis_url_prefix_and_describe_hide_the_password() -> None:
    from kiro_fast.state.redis import RedisStore

    store = open_state("redis://user:s3cret@cache.internal:6380/2?prefix=team-a:")
    assert isinstance(store, RedisStore)
    assert store.prefix == "team-a:"
    assert "prefix" not in store.url
    assert "s3cret" not in store.describe()
    assert "cache.internal:6380/2" in store.describe()
    assert isinstance(open_state("rediss://cache.internal"), RedisStore)
    assert open_state("rediss://cache.internal").prefix == "kiro_fast:"  # type: ignore[attr-defined]


_OPEN_TOGETHER = """
import asyncio, sys, time
from kiro_fast.state import open_state

async def main(path: str, start: float) -> None:
    while time.time() < start:
        time.sleep(0.0005)
    store = open_state(path)
    await store.open()
    await store.put_credential({"id": await store.allocate_credential_id(), "refreshToken": "r"})
    await store.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def test_workers_opening_a_new_sqlite_file_together_all_start(tmp_path: Path) -> None:
    # Workers of one supervisor open (and create, and migrate) the same file at once.
    for round_ in range(3):
        path = tmp_path / f"together-{round_}.db"
        start = time.time() + 0.5
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_TOGETHER, str(path), str(start)],
                stderr=subprocess.PIPE,
            )
            for _ in range(4)
        ]
        errors = [child.communicate(timeout=60)[1].decode() for child in children]
        assert [child.returncode for child in children] == [0, 0, 0, 0], errors
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM credentials").fetchone()[0] == 4
