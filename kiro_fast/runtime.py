"""Wiring: build the upstream client, the pool, the app and the server from a Config.

:class:`Runtime` is what ``kiro-fast serve``, ``kiro-fast demo``, the end-to-end tests
and the benchmarks start; it owns start-up order and shutdown order and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence

from . import convert
from .app import App, AppState, error_body
from .config import Config
from .credentials import Credential, CredentialFile
from .errors import ConfigError
from .eventstream import IMPLEMENTATION
from .pool import CredentialPool
from .relay import Relay, RelaySettings
from .server import Server, ServerOptions, install_loop
from .upstream import UpstreamClient

log = logging.getLogger("kiro_fast")


def convert_options(config: Config) -> convert.ConvertOptions:
    return convert.ConvertOptions(
        model_overrides=dict(config.model_overrides),
        thinking_suffix=config.thinking_suffix,
    )


class Runtime:
    """Everything one kiro_fast process runs."""

    def __init__(
        self,
        config: Config,
        credentials: Sequence[Credential],
        store: CredentialFile | None = None,
    ) -> None:
        self.config = config
        self.client = UpstreamClient(config)
        self.pool = CredentialPool(credentials, self.client, store)
        self.relay = Relay(
            self.pool,
            self.client,
            RelaySettings(
                first_byte_timeout=config.first_byte_timeout, ping_interval=config.ping_interval
            ),
        )
        self.app = App(
            AppState(config, self.pool, self.client, self.relay, convert_options(config))
        )
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

    async def start(self, sock: socket.socket | None = None) -> None:
        log.info("kiro_fast event-stream decoder: %s", IMPLEMENTATION)
        for cred in self.pool.credentials:
            self.client.machine_id(cred)  # derived once, then stored with the credential
        await self.pool.persist()
        await self.server.start(self.config.host, self.config.port, sock=sock)
        log.info("listening on http://%s:%d", self.config.host, self.port)

    async def stop(self, timeout: float | None = None) -> None:
        await self.server.shutdown(self.config.shutdown_timeout if timeout is None else timeout)
        await self.client.close()

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


def load_credentials(path: str) -> tuple[list[Credential], CredentialFile]:
    store = CredentialFile(path)
    report = store.load()
    for index, message in report.errors:
        log.error("credentials file %s: entry %d skipped: %s", path, index, message)
    return report.credentials, store


def run_serve(config: Config, credentials_path: str) -> int:
    if not config.api_key:
        raise ConfigError("apiKey is required: set it in config.json or KIRO_FAST_API_KEY")
    credentials, store = load_credentials(credentials_path)
    if not credentials:
        log.warning(
            "no usable credential in %s: every request will fail until one is added",
            credentials_path,
        )
    install_loop()
    runtime = Runtime(config, credentials, store)

    async def main() -> None:
        await runtime.start()
        await runtime.run_until_signalled()

    asyncio.run(main())
    return 0


def run_demo(config: Config) -> int:
    from .demo import run  # noqa: PLC0415 - the fake upstream is only needed here

    install_loop()
    status: int = asyncio.run(run(config, out=sys.stdout))
    return status
