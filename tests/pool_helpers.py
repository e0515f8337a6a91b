"""Helpers for the credential-pool tests: a fake upstream plus a pool, or a whole runtime.

Everything runs on one event loop inside ``asyncio.run`` (``arun``): the fake Kiro
upstream, kiro_fast's pool or runtime, and an aiohttp client. Time that matters to the
pool (token expiry, cool-downs) comes from a :class:`FakeClock` shared by the pool and
the state store; tests move it explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from kiro_fast.config import Config, build_config
from kiro_fast.credentials import Credential
from kiro_fast.pool import CredentialPool, PoolSettings
from kiro_fast.runtime import Runtime
from kiro_fast.sources import CredentialSource
from kiro_fast.state import MemoryStore, StateStore
from kiro_fast.testing import FakeSettings, FakeUpstream, Usage
from kiro_fast.testing.accounts import Account
from kiro_fast.upstream import UpstreamClient

API_KEY = "sk-pool-tests"
MODEL = "claude-sonnet-4-5"


def arun(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body with ``asyncio.run`` (pytest-asyncio is not used)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


class FakeClock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_config(fake: FakeUpstream, **values: Any) -> Config:
    base = {
        "apiKey": API_KEY,
        "port": 0,
        "kiroApiBase": fake.url,
        "kiroAuthBase": fake.url,
        "oidcBase": fake.url,
        "firstByteTimeout": 5.0,
        "streamIdleTimeout": 5.0,
        "connectTimeout": 2.0,
        "authTimeout": 5.0,
    }
    return build_config({**base, **values}, environ={})


def refresh_token(name: str) -> str:
    """A refresh token the way Kiro shapes them (``aor`` prefix, long)."""
    return f"aor{name}" + "x" * 120


def social(
    fake: FakeUpstream,
    cred_id: int,
    *,
    fresh: bool = True,
    priority: int = 0,
    usage: Usage | None = None,
    now: float | None = None,
) -> tuple[Credential, Account]:
    """A social account at the fake and the credential for it (with a valid access token
    unless ``fresh`` is False, in which case the first use refreshes)."""
    account = fake.accounts.add_social(refresh_token(f"acct{cred_id}"), usage=usage)
    cred = Credential(
        id=cred_id,
        auth_method="social",
        refresh_token=account.refresh_token,
        profile_arn=account.profile_arn,
        priority=priority,
    )
    if fresh:
        cred.access_token = account.access_token
        cred.expires_at = (now or time.time()) + 3600
    return cred, account


def account_of(fake: FakeUpstream, request: Any) -> Account | None:
    """The fake account whose bearer a recorded request carried."""
    return fake.accounts.authenticate(
        request.headers.get("authorization"), request.headers.get("tokentype")
    )


def chats(fake: FakeUpstream) -> list[Any]:
    return [r for r in fake.requests if r.endpoint == "generateAssistantResponse"]


@contextlib.asynccontextmanager
async def fake_upstream(settings: FakeSettings | None = None) -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(settings=settings or FakeSettings(seed=3))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@contextlib.asynccontextmanager
async def pool_for(
    fake: FakeUpstream,
    credentials: Sequence[Credential] = (),
    *,
    sources: Sequence[CredentialSource] = (),
    state: StateStore | None = None,
    clock: Callable[[], float] = time.time,
    settings: PoolSettings | None = None,
    config: dict[str, Any] | None = None,
) -> AsyncIterator[CredentialPool]:
    """A started pool talking to ``fake``; its store is opened and closed here."""
    store = state if state is not None else MemoryStore(clock=clock)
    client = UpstreamClient(fake_config(fake, **(config or {})))
    await store.open()
    pool = CredentialPool(
        client, store, settings=settings or PoolSettings(), sources=sources, clock=clock
    )
    try:
        await pool.start(credentials)
        yield pool
    finally:
        await pool.close()
        await client.close()
        await store.close()


@dataclass
class Stack:
    fake: FakeUpstream
    runtime: Runtime
    http: aiohttp.ClientSession

    @property
    def pool(self) -> CredentialPool:
        return self.runtime.pool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.port}"

    async def ask(
        self,
        text: str = "hello",
        *,
        model: str = MODEL,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One non-streaming /v1/messages call: (status, lower-case headers, JSON body)."""
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text}],
        }
        if metadata is not None:
            body["metadata"] = metadata
        async with self.http.post(
            self.url + "/v1/messages",
            data=orjson.dumps(body),
            headers={"x-api-key": API_KEY, "content-type": "application/json"},
        ) as response:
            raw = await response.read()
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, orjson.loads(raw) if raw else None


@contextlib.asynccontextmanager
async def stack(
    credentials: Sequence[Credential] | Callable[[FakeUpstream], Sequence[Credential]] = (),
    *,
    config: dict[str, Any] | None = None,
    sources: Sequence[CredentialSource] = (),
    state: StateStore | None = None,
    clock: Callable[[], float] = time.time,
    fake_settings: FakeSettings | None = None,
    backoff: float = 0.001,
) -> AsyncIterator[Stack]:
    """The fake upstream, a started kiro_fast runtime in front of it, and an HTTP client."""
    async with fake_upstream(fake_settings) as fake:
        creds = credentials(fake) if callable(credentials) else credentials
        store = state if state is not None else MemoryStore(clock=clock)
        runtime = Runtime(
            fake_config(fake, **(config or {})), creds, sources=sources, state=store, clock=clock
        )
        runtime.relay.settings.failover = dataclasses.replace(
            runtime.relay.settings.failover, backoff_base=backoff, backoff_cap=backoff * 2
        )
        await store.open()
        await runtime.start()
        try:
            async with aiohttp.ClientSession() as http:
                yield Stack(fake, runtime, http)
        finally:
            await runtime.stop(0)
            await store.close()
