"""Listeners, signals, graceful shutdown and the choice of event loop.

What this module owns:

* :class:`Server`: binds listeners that speak :class:`~kiro_fast.protocol.HttpProtocol`,
  tracks every connection and application task in one
  :class:`~kiro_fast.protocol.ServerState`, and shuts down gracefully: stop accepting,
  close idle connections at once, let busy ones finish their current response (without
  keep-alive) until a deadline, then cancel and drop whatever is left.
* :func:`serve`: run a server until SIGTERM or SIGINT, then shut it down. A second signal
  stops the grace period at once.
* :func:`new_event_loop_policy`, :func:`new_event_loop` and :func:`install_loop`: uvloop
  when it imports, stock asyncio otherwise (logged once, so a slow deployment is never a
  surprise).

This module knows nothing about HTTP parsing, routes or the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import ModuleType
from typing import Final

from kiro_fast.protocol import App, HttpProtocol, ServerOptions, ServerState

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None

__all__ = [
    "Server",
    "ServerOptions",
    "install_loop",
    "new_event_loop",
    "new_event_loop_policy",
    "serve",
]

logger = logging.getLogger(__name__)

#: After the grace period, cancelled tasks and aborted transports get this long to report
#: back; they normally take one loop iteration.
FORCE_CLOSE_GRACE: Final = 5.0

#: Signals that start a graceful shutdown in serve().
SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def new_event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """uvloop's policy when uvloop imports, else asyncio's default policy."""
    _log_loop_choice()
    if uvloop is not None:
        return uvloop.EventLoopPolicy()  # type: ignore[no-any-return]
    return asyncio.DefaultEventLoopPolicy()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new uvloop loop when available, else an asyncio one (for ``asyncio.Runner``)."""
    _log_loop_choice()
    if uvloop is not None:
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def install_loop() -> str:
    """Make uvloop (or asyncio) the policy for new loops; returns the loop's name."""
    asyncio.set_event_loop_policy(new_event_loop_policy())
    return "uvloop" if uvloop is not None else "asyncio"


def _log_loop_choice() -> None:
    if uvloop is not None:
        logger.info("event loop: uvloop %s", getattr(uvloop, "__version__", "?"))
    else:
        logger.info("event loop: asyncio (uvloop is not installed)")


class Server:
    """HTTP listeners for one application, with graceful shutdown."""

    def __init__(self, app: App, options: ServerOptions | None = None) -> None:
        self.app = app
        self.options = options if options is not None else ServerOptions()
        self.state = ServerState()
        self._servers: list[asyncio.Server] = []

    async def start(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
    ) -> None:
        """Listen on ``host:port`` (port 0 picks one), or on an already bound ``sock``.

        May be called more than once to add listeners.
        """
        loop = asyncio.get_running_loop()
        app, options, state = self.app, self.options, self.state

        def factory() -> HttpProtocol:
            return HttpProtocol(app, options, state, loop)

        if sock is not None:
            server = await loop.create_server(factory, sock=sock, backlog=options.backlog)
        else:
            server = await loop.create_server(
                factory, host, port, backlog=options.backlog, reuse_port=reuse_port or None
            )
        self._servers.append(server)
        for bound in server.sockets:
            logger.info("listening on %s", _format_address(bound.getsockname()))

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets of every listener."""
        return tuple(s for server in self._servers for s in server.sockets)

    @property
    def bound_port(self) -> int:
        """The port of the first listening socket (useful after binding port 0)."""
        for sock in self.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                return int(name[1])
        raise RuntimeError("the server is not listening on a TCP socket")

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop accepting; let in-flight responses finish for up to ``timeout`` seconds."""
        for server in self._servers:
            server.close()
        state = self.state
        for connection in list(state.connections):
            connection.shutdown()
        busy = len(state.connections)
        if busy:
            logger.info("shutting down: waiting up to %.0fs for %d connections", timeout, busy)
        try:
            async with asyncio.timeout(timeout):
                await state.wait_idle()
        except TimeoutError:
            logger.warning(
                "shutdown grace period over: cancelling %d requests, dropping %d connections",
                len(state.tasks),
                len(state.connections),
            )
            self.force_close()
            try:
                async with asyncio.timeout(FORCE_CLOSE_GRACE):
                    await state.wait_idle()
            except TimeoutError:
                logger.error("%d connections did not close", len(state.connections))
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def force_close(self) -> None:
        """Stop accepting, cancel every application task and drop every connection now."""
        for server in self._servers:
            server.close()
        for task in list(self.state.tasks):
            task.cancel()
        for connection in list(self.state.connections):
            connection.abort()


async def serve(
    app: App,
    options: ServerOptions | None = None,
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    ready: Callable[[Server], object] | None = None,
) -> None:
    """Run a server until SIGTERM/SIGINT, then shut it down gracefully.

    The grace period is ``options.shutdown_timeout``. ``ready`` is called with the started
    server (to learn its port, for instance). Must run in the main thread.
    """
    server = Server(app, options)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.warning("%s again: stopping now", signal.Signals(signum).name)
            server.force_close()
        else:
            logger.info("%s: shutting down", signal.Signals(signum).name)
            stop.set()

    for signum in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await server.start(host, port, sock=sock, reuse_port=reuse_port)
        if ready is not None:
            ready(server)
        await stop.wait()
        await server.shutdown(server.options.shutdown_timeout)
    finally:
        for signum in SHUTDOWN_SIGNALS:
            loop.remove_signal_handler(signum)
        server.force_close()  # nothing left after a clean shutdown; everything if cancelled
        logger.info("server stopped")


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
