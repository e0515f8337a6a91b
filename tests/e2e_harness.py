"""End-to-end harness: the fake Kiro upstream and a real kiro_fast runtime in a thread.

Tests drive it from their own thread with the official SDKs (or raw sockets), exactly as
a user would: ``Harness.url`` is a kiro_fast listening on loopback, backed by
``Harness.fake``. State on the event loop (the fake's scripting, the pool) is touched
only through :meth:`Harness.call`, which runs a function or coroutine on the loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kiro_fast.config import Config, build_config
from kiro_fast.credentials import Credential
from kiro_fast.runtime import Runtime
from kiro_fast.server import new_event_loop
from kiro_fast.testing import FakeSettings, FakeUpstream

T = TypeVar("T")

API_KEY = "sk-e2e-client-key"
REFRESH_TOKEN = "aorE2E" + "r" * 120

#: Short timeouts keep fault tests fast; they are still far above loopback latency.
FAST_TIMEOUTS = {
    "firstByteTimeout": 3.0,
    "streamIdleTimeout": 3.0,
    "connectTimeout": 2.0,
    "pingInterval": 25.0,
}


class Harness:
    """A fake upstream plus a kiro_fast runtime, on one event loop in a daemon thread."""

    def __init__(
        self,
        *,
        config: dict[str, Any] | None = None,
        credentials: Callable[[FakeUpstream], Sequence[Credential]] | None = None,
        fake_settings: FakeSettings | None = None,
        sources: Sequence[Any] = (),
        state: Any = None,
        setup: Callable[[Runtime], None] | None = None,
    ) -> None:
        self._config_values = {**FAST_TIMEOUTS, "apiKey": API_KEY, "port": 0, **(config or {})}
        self._credentials = credentials or default_credentials
        self._fake_settings = fake_settings or FakeSettings(seed=7)
        self._sources = list(sources)
        self._state = state
        self._setup = setup
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.fake: FakeUpstream
        self.runtime: Runtime
        self.config: Config
        self._clients: list[Any] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Harness:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.fake = FakeUpstream(settings=self._fake_settings)
        await self.fake.start()
        values = {
            **self._config_values,
            "kiroApiBase": self.fake.url,
            "kiroAuthBase": self.fake.url,
            "oidcBase": self.fake.url,
        }
        self.config = build_config(values, environ={})
        self.runtime = Runtime(
            self.config,
            list(self._credentials(self.fake)),
            sources=self._sources,
            state=self._state,
        )
        if self._setup is not None:
            self._setup(self.runtime)
        await self.runtime.start()

    def stop(self) -> None:
        for sdk in self._clients:
            sdk.close()
        try:
            self.call(self._stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _stop(self) -> None:
        await self.runtime.stop(timeout=5)
        await self.fake.stop()

    def __enter__(self) -> Harness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ access

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.port}"

    @property
    def api_key(self) -> str:
        return API_KEY

    def anthropic(self, **options: Any) -> Any:
        """An official ``anthropic`` client for this proxy, closed when the harness stops."""
        import anthropic

        settings: dict[str, Any] = {"api_key": API_KEY, "max_retries": 0, "timeout": 20}
        sdk = anthropic.Anthropic(base_url=self.url, **{**settings, **options})
        self._clients.append(sdk)
        return sdk

    def openai(self, **options: Any) -> Any:
        """An official ``openai`` client for this proxy, closed when the harness stops."""
        import openai

        settings: dict[str, Any] = {"api_key": API_KEY, "max_retries": 0, "timeout": 20}
        sdk = openai.OpenAI(base_url=self.url + "/v1", **{**settings, **options})
        self._clients.append(sdk)
        return sdk

    def call(self, work: Any, timeout: float = 20.0) -> Any:
        """Run a coroutine, or a plain callable, on the harness loop and return its result."""
        if asyncio.iscoroutine(work):
            return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

        async def run() -> Any:
            return work()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` (evaluated on the loop) is true; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.call(predicate):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout:.1f} s")
            time.sleep(0.005)


def default_credentials(fake: FakeUpstream) -> list[Credential]:
    """One social account the fake knows; no access token yet, so the first call refreshes."""
    fake.accounts.add_social(REFRESH_TOKEN)
    return [Credential(id=1, auth_method="social", refresh_token=REFRESH_TOKEN)]


def directive(spec: dict[str, Any] | str) -> str:
    """The fake-upstream scripting marker for a user message."""
    import json

    body = spec if isinstance(spec, str) else json.dumps(spec, separators=(",", ":"))
    return f"[[fake:{body}]]"
