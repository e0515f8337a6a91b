"""Wiring: build the upstream client, the pool, the app and the server from a Config.

:class:`Runtime` is what ``kiro-fast serve``, ``kiro-fast demo``, the end-to-end tests
and the benchmarks start; it owns start-up order and shutdown order and nothing else.

Credentials: ``serve`` reads every configured source (kiro.rs ``credentials.json``,
kiro2api ``KIRO_AUTH_TOKEN``, Kiro-Go ``CONFIG_PATH``, the Kiro IDE token file) into the
shared state store (``stateUrl``; SQLite ``data/kiro_fast.db`` by default) and serves
from there. A runtime built in code (demo, tests, benchmarks) gets its credentials as
objects and, unless told otherwise, a private in-memory store.

Runtime settings (:mod:`kiro_fast.live_settings`) are read from the store at start and
pushed to their consumers whenever they change: the upstream client (identity, proxy,
timeouts), the relay (first-byte timeout, ping interval), the pool (strategy, minimum
usage threshold) and the application (count_tokens API, thinking suffix). The admin API
and UI (:mod:`kiro_fast.admin`) are installed on every runtime; the first admin user is
created at start from ``adminUsername``/``adminPassword`` when it does not exist yet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import convert, forwarded
from .accounting import AccountingRelay
from .admin import AdminContext
from .admin import install as install_admin
from .app import App, AppState, error_body
from .config import Config
from .credentials import Credential
from .errors import ConfigError
from .eventstream import IMPLEMENTATION
from .failover import FailoverSettings
from .live_settings import LiveSettings
from .pool import CredentialPool, PoolSettings
from .relay import Relay, RelaySettings
from .server import Server, ServerOptions, install_loop
from .sources import (
    CredentialSource,
    KiroGoConfig,
    KiroIdeCache,
    KiroRsFile,
    kiro2api_source,
)
from .state import MemoryStore, StateStore, open_state
from .supervisor import WorkerLink, serve_process
from .upstream import UpstreamClient

log = logging.getLogger("kiro_fast")


def convert_options(config: Config) -> convert.ConvertOptions:
    return convert.ConvertOptions(
        model_overrides=dict(config.model_overrides),
        thinking_suffix=config.thinking_suffix,
        openai_alias_model=config.openai_alias_model,
        max_body_bytes=config.max_upstream_body_bytes,
        strip_schema_keywords=config.strip_schema_keywords,
        write_guidance=config.write_guidance,
        hidden_prompt_tokens=config.hidden_prompt_tokens,
    )


class Runtime:
    """Everything one kiro_fast process runs."""

    def __init__(
        self,
        config: Config,
        credentials: Sequence[Credential] = (),
        *,
        sources: Sequence[CredentialSource] = (),
        state: StateStore | None = None,
        owns_state: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``credentials`` are served as given (store-native); ``sources`` are files imported
        at start and written back on every change. Without a state store, the
        runtime opens ``config.state_url`` if set, else a private in-memory store. It closes
        the store at stop when it opened it, or when ``owns_state`` says so."""
        self.config = config
        self.client = UpstreamClient(config)
        self._own_state = state is None if owns_state is None else owns_state
        if state is None:
            state = open_state(config.state_url) if config.state_url else MemoryStore()
        self.state = state
        self._initial = list(credentials)
        self.pool = CredentialPool(
            self.client,
            state,
            settings=PoolSettings.from_config(config),
            sources=sources,
            clock=clock,
        )
        self.relay: Relay = AccountingRelay(
            self.pool,
            self.client,
            RelaySettings(
                first_byte_timeout=config.first_byte_timeout,
                ping_interval=config.ping_interval,
                failover=FailoverSettings(
                    throttle_cooldown=config.throttle_cooldown,
                    rate_limit_cooldown=config.rate_limit_cooldown,
                ),
            ),
        )
        self.app = App(
            AppState(config, self.pool, self.client, self.relay, convert_options(config))
        )
        self.live = LiveSettings(config, state)
        self.live.subscribe(self._apply_settings)
        self.app.live = self.live
        self.admin = install_admin(
            self.app,
            AdminContext(config, self.pool, self.client, state, self.live, self.app.client_keys),
        )
        #: called once the server listens (the CLI prints the admin address with it)
        self.on_listening: Callable[[Runtime], Any] | None = None
        self.server = Server(
            self.app,
            ServerOptions(
                max_body_size=config.max_body_size,
                keep_alive_timeout=config.keep_alive_timeout,
                header_timeout=config.header_timeout,
                error_body=error_body,
            ),
        )

    @property
    def port(self) -> int:
        return self.server.bound_port

    async def start(self, sock: socket.socket | None = None, *, reuse_port: bool = False) -> None:
        log.info("kiro_fast event-stream decoder: %s", IMPLEMENTATION)
        forwarded.configure(self.config.trusted_proxies)
        await self.state.open()
        await self.live.load()
        await self.admin.bootstrap()
        await self.pool.start(self._initial)
        log.info("%d credential(s) in the pool (state: %s)", len(self.pool), self.state.describe())
        if not self.pool.credentials:
            log.warning("no usable credential: every request will fail until one is added")
        await self.server.start(
            self.config.host, self.config.port, sock=sock, reuse_port=reuse_port
        )
        log.info("listening on http://%s:%d", self.config.host, self.port)
        warning = public_bind_warning(self.config)
        if warning is not None:
            log.warning("%s", warning)
        if self.on_listening is not None:
            self.on_listening(self)

    def _apply_settings(self, config: Config) -> None:
        """Push changed runtime settings to every consumer (see the module docstring)."""
        self.client.apply_config(config)
        self.relay.settings = RelaySettings(
            first_byte_timeout=config.first_byte_timeout,
            ping_interval=config.ping_interval,
            failover=self.relay.settings.failover,
        )
        self.pool.settings = dataclasses.replace(
            self.pool.settings,
            strategy=config.load_balancing_mode,
            min_usage_threshold=config.min_usage_threshold,
            refresh_lock_lease=config.auth_timeout + 10.0,
        )
        self.app.apply_config(config, convert_options(config))

    async def stop(self, timeout: float | None = None) -> None:
        await self.server.shutdown(self.config.shutdown_timeout if timeout is None else timeout)
        await self.pool.close()
        await self.app.client_keys.close()
        await self.client.close()
        if self._own_state:
            await self.state.close()

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            log.info(
                "shutting down: finishing in-flight streams (up to %g s)",
                self.config.shutdown_timeout,
            )
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()


def public_bind_warning(config: Config) -> str | None:
    """The start-up warning for listening beyond this host without an admin key."""
    if config.admin_api_key or is_loopback(config.host):
        return None
    return (
        f"SECURITY: listening on {config.host or 'every interface'}, reachable from other "
        "hosts, without an adminApiKey; set adminApiKey (and a strong apiKey), or listen on "
        "127.0.0.1 behind a reverse proxy"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere, or "" (every interface)


def credential_sources(config: Config, credentials_path: str) -> list[CredentialSource]:
    """Every source the configuration names; the kiro.rs file always (a missing one is an
    empty pool, as in kiro.rs)."""
    sources: list[CredentialSource] = [KiroRsFile(credentials_path)]
    if config.kiro_auth_token:
        sources.append(kiro2api_source(config.kiro_auth_token))
    if config.kiro_go_config:
        sources.append(KiroGoConfig(config.kiro_go_config))
    if config.kiro_ide_token_file:
        sources.append(KiroIdeCache(config.kiro_ide_token_file))
    return sources


def build_runtime(config: Config, credentials_path: str) -> Runtime:
    """A runtime for ``serve``: checks the config; the sources are read when it starts."""
    if not config.api_key:
        raise ConfigError(
            "apiKey is required: set it in config.json, KIRO_FAST_API_KEY or KIRO_CLIENT_TOKEN"
        )
    return Runtime(
        config,
        sources=credential_sources(config, credentials_path),
        state=open_state(config.state_url),
        owns_state=True,
    )


def run_serve(
    config: Config,
    credentials_path: str,
    *,
    reload_config: Callable[[], Config] | None = None,
    worker: WorkerLink | None = None,
    announce: Any = None,
) -> int:
    """Serve until SIGTERM/SIGINT; SIGHUP rebuilds from ``reload_config()`` (see supervisor).

    ``worker``: this process is one of a supervisor's workers (``SO_REUSEPORT``, readiness).
    ``announce``: an :class:`~kiro_fast.admin.announce.Announcement` shown once listening.
    """
    install_loop()
    runtime = build_runtime(config, credentials_path)
    if announce is not None:
        runtime.on_listening = lambda r: announce.show(r.config.host, r.port)

    def rebuild() -> Runtime:
        assert reload_config is not None
        return build_runtime(reload_config(), credentials_path)

    asyncio.run(
        serve_process(
            runtime,
            rebuild if reload_config is not None else None,
            reuse_port=worker is not None,
            link=worker,
        )
    )
    return 0


def run_demo(config: Config) -> int:
    from .demo import run  # noqa: PLC0415 - the fake upstream is only needed here

    install_loop()
    status: int = asyncio.run(run(config, out=sys.stdout))
    return status
