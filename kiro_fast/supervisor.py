"""Serving processes: one process with in-place reload, or N supervised workers on one port.

What this module owns:

* :func:`serve_process`, the life of one serving process (single-process ``kiro-fast serve``
  and every worker): start a :class:`~kiro_fast.runtime.Runtime`; on SIGTERM/SIGINT stop
  gracefully (a second signal cuts the grace period); on SIGHUP build a new runtime from
  the re-read configuration and credentials, hand it the *same* listening socket (a
  duplicate descriptor, so not one queued connection is lost) and drain the old runtime,
  whose streams in flight finish on it.
* :class:`Supervisor` (``kiro-fast serve --workers N``): the parent, which never serves.
  It reserves the port, starts N workers that each listen on it with ``SO_REUSEPORT``,
  restarts a worker that dies (with backoff), gives up loudly when workers cannot start,
  drains every worker on SIGTERM/SIGINT (SIGKILL after the deadline), and on SIGHUP
  starts a new generation of workers with the re-read configuration before draining the
  old one. With ``SO_REUSEPORT`` the kernel hands new connections to whichever listeners
  are open; old workers close theirs first thing when told to drain.
* :class:`WorkerLink`, the worker's end of the socketpair it shares with the supervisor:
  one ``R`` byte goes up once the worker listens; end-of-file coming down means the
  supervisor is gone, and the worker drains and exits instead of serving as an orphan.

Strategy:

* Workers are fresh interpreters (``python -m kiro_fast serve … --worker-fd N``) started
  with :mod:`subprocess`, not forked and not :mod:`multiprocessing`. A worker is then the
  single-process server plus two hidden flags, so there is one serving code path; nothing
  is pickled; no event loop, thread, lock or aiohttp session is inherited from the parent
  (forking after any of those exists is unsafe); and a new generation imports the code
  afresh, so an upgraded install is picked up by a reload.
* Workers run in their own session: a terminal's Ctrl-C or hang-up reaches only the
  supervisor, which sends each worker exactly one SIGTERM.
* The supervisor holds a bound, non-listening ``SO_REUSEPORT`` socket on the port for its
  whole life. Port 0 is resolved once, and nobody else can take the port while a
  generation is being replaced.
* A per-run directory is created for ``PROMETHEUS_MULTIPROC_DIR`` (unless the environment
  already names one), dead workers are marked dead in it, and it is removed at exit.

Each worker has its own credential pool; they agree through the shared state store
(``stateUrl``: the SQLite file by default, or Redis), whose locks make a token refresh
happen once across processes, which matters because refresh tokens rotate.

This module knows nothing about HTTP, routes, the upstream or the credential format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .config import Config
from .errors import ConfigError, KiroFastError

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = [
    "WORKER_ENV",
    "Supervisor",
    "WorkerCommand",
    "WorkerLink",
    "WorkerLogFilter",
    "available_cpus",
    "run_supervisor",
    "serve_process",
]

log = logging.getLogger("kiro_fast.supervisor")

#: A worker says it is listening by sending this one byte up its link.
READY: Final = b"R"
#: Environment variable carrying a worker's slot number (1..N) into its log lines.
WORKER_ENV: Final = "KIRO_FAST_WORKER"
#: Directory prometheus_client's multiprocess mode collects from.
METRICS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Exit status of ``kiro-fast`` for an unusable configuration; retrying cannot help.
EXIT_CONFIG: Final = 2

#: A worker must be listening this long after it was started. Start-up is imports,
#: opening the state store, reading credentials and one bind (a second or two); this
#: leaves room for a loaded host.
START_TIMEOUT: Final = 60.0
#: Beyond the configured shutdown deadline: a worker's own force-close takes up to
#: ``server.FORCE_CLOSE_GRACE`` (5 s) after it, and then it must still exit.
KILL_MARGIN: Final = 10.0
#: Restart delays grow from BASE, doubling, to MAX while a worker keeps dying young.
RESTART_BACKOFF_BASE: Final = 0.5
RESTART_BACKOFF_MAX: Final = 30.0
#: A worker that served this long was healthy: if it dies, it is restarted at once.
STABLE_AFTER: Final = 10.0
#: Consecutive start failures (exits before listening) after which the supervisor gives
#: up: at start-up, or when every slot is failing like this. A loud exit lets the init
#: system or container runtime see the failure instead of a silent restart loop.
MAX_START_FAILURES: Final = 5

SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)

#: Builds a worker's command line from the resolved address and its link descriptor.
WorkerCommand = Callable[[str, int, int], list[str]]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def backoff(failures: int) -> float:
    """The restart delay after ``failures`` consecutive early deaths (0 → at once)."""
    if failures <= 0:
        return 0.0
    return float(min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_BASE * 2 ** (failures - 1)))


# --------------------------------------------------------------------------- worker side


class WorkerLink:
    """The worker's end of its socketpair with the supervisor (``--worker-fd``)."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._loop: asyncio.AbstractEventLoop | None = None

    def ready(self) -> None:
        """Tell the supervisor this worker is listening."""
        self._sock.send(READY)

    def watch(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[], object]) -> None:
        """Call ``on_lost`` once the supervisor's end closes (it exited or was killed)."""
        self._sock.setblocking(False)
        self._loop = loop

        def readable() -> None:
            try:
                data = self._sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(self._sock.fileno())
                self._loop = None
                on_lost()

        loop.add_reader(self._sock.fileno(), readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        self._sock.close()


class WorkerLogFilter(logging.Filter):
    """Stamps ``worker`` (slot number) and ``worker_pid`` on every record of a worker.

    JSON lines then say which worker wrote them, with the same two fields the
    supervisor's own lines about that worker carry.
    """

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        record.worker_pid = self.pid
        return True


# --------------------------------------------------------------------------- one process


async def serve_process(
    runtime: Runtime,
    rebuild: Callable[[], Runtime] | None = None,
    *,
    reuse_port: bool = False,
    link: WorkerLink | None = None,
) -> None:
    """Serve with ``runtime`` until SIGTERM/SIGINT (or the supervisor goes away).

    SIGHUP calls ``rebuild()`` for a runtime with fresh configuration and credentials
    and swaps it in on the same listening sockets; without ``rebuild`` it is logged and
    ignored. A second SIGTERM/SIGINT cuts the grace period, except in a worker: there a
    repeat is most likely a service manager signalling the whole process group, and the
    supervisor enforces the deadline anyway. Must run in the main thread.

    Raises:
        ConfigError: the listening address cannot be bound.
    """
    await _ServingProcess(runtime, rebuild, worker=link is not None).run(reuse_port, link)


class _ServingProcess:
    def __init__(
        self, runtime: Runtime, rebuild: Callable[[], Runtime] | None, *, worker: bool
    ) -> None:
        self.current = runtime
        self.rebuild = rebuild
        self.worker = worker
        self.draining: dict[asyncio.Task[None], Runtime] = {}
        self.stopping = False
        self.reload_pending = False
        self.wake = asyncio.Event()

    async def run(self, reuse_port: bool, link: WorkerLink | None) -> None:
        loop = asyncio.get_running_loop()
        for signum in SHUTDOWN_SIGNALS:
            loop.add_signal_handler(signum, self.on_stop, signal.Signals(signum).name)
        loop.add_signal_handler(signal.SIGHUP, self.on_reload)
        try:
            await _start(self.current, reuse_port=reuse_port)
            if link is not None:
                link.ready()
                link.watch(loop, lambda: self.on_stop("supervisor gone"))
            await self.serve()
        finally:
            for signum in (*SHUTDOWN_SIGNALS, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if link is not None:
                link.close()
            for runtime in (self.current, *self.draining.values()):
                runtime.server.force_close()  # nothing left after a clean stop

    async def serve(self) -> None:
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            while self.reload_pending and not self.stopping:
                self.reload_pending = False
                await self.reload()
        log.info(
            "shutting down: finishing in-flight streams (up to %g s)",
            self.current.config.shutdown_timeout,
        )
        await self.current.stop()
        if self.draining:
            await asyncio.gather(*self.draining)

    def on_stop(self, reason: str) -> None:
        if self.stopping and self.worker:
            log.info("%s again: still draining (the supervisor enforces the deadline)", reason)
            return
        if self.stopping:
            log.warning("%s again: stopping now", reason)
            for runtime in (self.current, *self.draining.values()):
                runtime.server.force_close()
            return
        log.info("%s: shutting down", reason)
        self.stopping = True
        self.wake.set()

    def on_reload(self) -> None:
        if self.rebuild is None:
            log.warning("SIGHUP: reloading is not available in this process; ignored")
            return
        log.info("SIGHUP: reloading configuration and credentials")
        self.reload_pending = True
        self.wake.set()

    async def reload(self) -> None:
        assert self.rebuild is not None
        try:
            fresh = self.rebuild()
        except KiroFastError as exc:
            log.error("reload failed: %s; the running configuration stays", exc.message)
            return
        old = self.current
        socks = [socket.socket(fileno=os.dup(s.fileno())) for s in old.server.sockets]
        try:
            await fresh.start(sock=socks[0])
            for extra in socks[1:]:
                await fresh.server.start(sock=extra)
        except (OSError, KiroFastError) as exc:
            log.error("reload failed: the new runtime did not start: %s", exc)
            await fresh.stop(0)
            for sock in socks:
                sock.close()
            return
        self.current = fresh
        busy = len(old.server.state.connections)
        task = asyncio.get_running_loop().create_task(old.stop())
        self.draining[task] = old
        task.add_done_callback(self._drained)
        log.info("reloaded: the previous runtime finishes its %d open connections", busy)

    def _drained(self, task: asyncio.Task[None]) -> None:
        self.draining.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping the previous runtime failed", exc_info=task.exception())


async def _start(runtime: Runtime, *, reuse_port: bool) -> None:
    try:
        await runtime.start(reuse_port=reuse_port)
    except OSError as exc:
        await runtime.stop(0)
        where = f"{runtime.config.host}:{runtime.config.port}"
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- supervisor


@dataclass(eq=False)
class _Worker:
    slot: int
    generation: int
    process: asyncio.subprocess.Process
    link: socket.socket
    started: float
    exited: asyncio.Task[int] = field(init=False)
    ready: bool = False
    retiring: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def run_supervisor(
    config: Config,
    workers: int,
    *,
    command: WorkerCommand,
    reload_config: Callable[[], Config],
) -> int:
    """Run ``workers`` worker processes until SIGTERM/SIGINT; the process exit status."""
    supervisor = Supervisor(config, workers, command=command, reload_config=reload_config)
    return asyncio.run(supervisor.run())


class Supervisor:
    """The parent of N workers; see the module docstring."""

    def __init__(
        self,
        config: Config,
        workers: int,
        *,
        command: WorkerCommand,
        reload_config: Callable[[], Config],
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.config = config
        self.count = workers
        self.host = config.host
        self.port = config.port
        self._command = command
        self._reload_config = reload_config
        self._generation = 0  # last one started
        self._serving = 0  # the one promoted to serve
        self._active: dict[int, _Worker] = {}
        self._live: set[_Worker] = set()
        self._start_failures: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._failed = False
        self._config_error = False
        self._reload_pending = False
        self._stop_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._reservation: socket.socket | None = None
        self._metrics_dir: str | None = None
        self._owns_metrics_dir = False

    # ------------------------------------------------------------------ main loop

    async def run(self) -> int:
        """Supervise until stopped; 0 after a requested stop, 1 after giving up."""
        loop = asyncio.get_running_loop()
        for signum in SHUTDOWN_SIGNALS:
            loop.add_signal_handler(signum, self._on_stop, signal.Signals(signum).name)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        try:
            self._reserve()
            self._prepare_metrics_dir()
            if await self._start_first_generation():
                log.info(
                    "supervisor ready: %d workers on %s:%d",
                    self.count,
                    self.host,
                    self.port,
                    extra={"port": self.port, "workers": self.count},
                )
                await self._supervise()
        finally:
            await self._shutdown()
            for signum in (*SHUTDOWN_SIGNALS, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self._release()
        return 1 if self._failed else 0

    async def _supervise(self) -> None:
        while not (self._stopping or self._failed):
            await self._wake.wait()
            self._wake.clear()
            while self._reload_pending and not (self._stopping or self._failed):
                self._reload_pending = False
                await self._reload()

    def _on_stop(self, name: str) -> None:
        if self._stopping:
            log.warning("%s again: killing %d workers now", name, len(self._live))
            for worker in list(self._live):
                worker.signal(signal.SIGKILL)
            return
        log.info(
            "%s: draining %d workers (up to %g s)",
            name,
            len(self._live),
            self.config.shutdown_timeout,
        )
        self._stopping = True
        self._stop_event.set()
        self._wake.set()

    def _on_reload(self) -> None:
        if self._stopping:
            return
        log.info("SIGHUP: starting a new generation of workers")
        self._reload_pending = True
        self._wake.set()

    # ------------------------------------------------------------------ generations

    async def _start_first_generation(self) -> bool:
        for attempt in range(1, MAX_START_FAILURES + 1):
            workers = await self._start_generation()
            if workers is not None:
                self._promote(workers)
                return True
            if self._stopping:
                return False
            if self._config_error:
                break
            if attempt < MAX_START_FAILURES:
                delay = backoff(attempt)
                log.error(
                    "workers did not start (attempt %d of %d); retrying in %.1f s",
                    attempt,
                    MAX_START_FAILURES,
                    delay,
                )
                if not await self._pause(delay):
                    return False
        if self._config_error:
            self._give_up("workers cannot start: the configuration is unusable")
        else:
            self._give_up(f"workers cannot start ({MAX_START_FAILURES} attempts)")
        return False

    async def _start_generation(self) -> dict[int, _Worker] | None:
        """Start a full generation; its workers once all listen, else None (all retired)."""
        self._generation += 1
        generation = self._generation
        workers: dict[int, _Worker] = {}
        try:
            for slot in range(1, self.count + 1):
                workers[slot] = await self._spawn(generation, slot)
        except OSError as exc:
            log.error("cannot start a worker process: %s", exc)
            self._retire(workers.values())
            return None
        waits = {asyncio.ensure_future(self._await_ready(w)) for w in workers.values()}
        stop = asyncio.ensure_future(self._stop_event.wait())
        ok = True
        try:
            pending = set(waits)
            while ok and pending:
                done, _ = await asyncio.wait(pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
                pending -= done
                ok = stop not in done and all(t.result() for t in done if t is not stop)
        finally:
            for task in (*waits, stop):
                task.cancel()
        if not ok:
            self._retire(workers.values())
            return None
        return workers

    def _promote(self, workers: dict[int, _Worker]) -> None:
        self._active = workers
        self._serving = next(iter(workers.values())).generation
        self._start_failures = dict.fromkeys(workers, 0)
        for worker in workers.values():
            self._track(self._keep_slot(worker))

    async def _reload(self) -> None:
        try:
            config = self._reload_config()
        except KiroFastError as exc:
            log.error("reload failed: %s; the running workers keep serving", exc.message)
            return
        if (config.host, config.port) != (self.config.host, self.config.port):
            log.warning(
                "reload: the listening address only changes on restart; staying on %s:%d",
                self.host,
                self.port,
            )
        old_generation, old = self._serving, list(self._active.values())
        self._config_error = False
        workers = await self._start_generation()
        if workers is None:
            if not self._stopping:
                log.error("reload failed: generation %d keeps serving", old_generation)
            return
        self.config = config
        self._promote(workers)
        self._retire(old)
        log.info(
            "reloaded: generation %d serves, generation %d drains",
            self._serving,
            old_generation,
        )

    # ------------------------------------------------------------------ workers

    async def _spawn(self, generation: int, slot: int) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            argv = self._command(self.host, self.port, theirs.fileno())
            env = dict(os.environ)
            env[WORKER_ENV] = str(slot)
            if self._metrics_dir is not None:
                env[METRICS_DIR_ENV] = self._metrics_dir
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        worker = _Worker(slot, generation, process, ours, loop.time())
        worker.exited = loop.create_task(self._wait_exit(worker))
        self._live.add(worker)
        log.info(
            "worker %d of generation %d started (pid %d)",
            slot,
            generation,
            worker.pid,
            extra=_about(worker),
        )
        return worker

    async def _wait_exit(self, worker: _Worker) -> int:
        status = await worker.process.wait()
        self._live.discard(worker)
        worker.link.close()
        _mark_process_dead(worker.pid, self._metrics_dir)
        if worker.retiring:
            log.info(
                "worker %d (pid %d) of generation %d exited with status %s",
                worker.slot,
                worker.pid,
                worker.generation,
                status,
                extra={**_about(worker), "status": status},
            )
        return status

    async def _await_ready(self, worker: _Worker) -> bool:
        """Whether ``worker`` starts listening; one that hangs is killed after START_TIMEOUT."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                data = await loop.sock_recv(worker.link, 1)
        except TimeoutError:
            log.error("worker %d (pid %d) did not start in time: killed", worker.slot, worker.pid)
            worker.signal(signal.SIGKILL)
            data = b""
        except OSError:
            data = b""
        if data == READY:
            worker.ready = True
            log.info(
                "worker %d of generation %d ready (pid %d)",
                worker.slot,
                worker.generation,
                worker.pid,
                extra=_about(worker),
            )
            return True
        status = await asyncio.shield(worker.exited)
        if status == EXIT_CONFIG:
            self._config_error = True
        log.error(
            "worker %d (pid %d) exited with status %s before it was ready",
            worker.slot,
            worker.pid,
            status,
        )
        return False

    async def _keep_slot(self, worker: _Worker) -> None:
        """Restart the slot's worker whenever it dies, while its generation serves."""
        early_deaths = 0
        loop = asyncio.get_running_loop()
        while True:
            status = await asyncio.shield(worker.exited)
            if worker.retiring or self._stopping or worker.generation != self._serving:
                return
            lived = loop.time() - worker.started
            early_deaths = 0 if lived >= STABLE_AFTER else early_deaths + 1
            log.error(
                "worker %d (pid %d) exited unexpectedly with status %s; restarting it in %.1f s",
                worker.slot,
                worker.pid,
                status,
                backoff(early_deaths),
                extra={**_about(worker), "status": status},
            )
            replacement = await self._restart(worker.slot, worker.generation, early_deaths)
            if replacement is None:
                return
            worker = replacement

    async def _restart(self, slot: int, generation: int, early_deaths: int) -> _Worker | None:
        """A listening replacement for ``slot``; None once stopping, replaced or given up."""
        attempt = early_deaths
        while await self._pause(backoff(attempt)) and generation == self._serving:
            try:
                worker = await self._spawn(generation, slot)
            except OSError as exc:
                log.error("cannot restart worker %d: %s", slot, exc)
            else:
                self._active[slot] = worker
                if await self._await_ready(worker):
                    self._start_failures[slot] = 0
                    return worker
            self._start_failed(slot)
            attempt += 1
        return None

    def _start_failed(self, slot: int) -> None:
        self._start_failures[slot] = self._start_failures.get(slot, 0) + 1
        if all(count >= MAX_START_FAILURES for count in self._start_failures.values()):
            self._give_up(f"every worker fails at start ({MAX_START_FAILURES} times in a row)")

    def _retire(self, workers: Iterable[_Worker]) -> None:
        """Drain ``workers`` (SIGTERM), SIGKILL whichever outlives the shutdown deadline."""
        retiring = [w for w in workers if w.process.returncode is None]
        for worker in retiring:
            worker.retiring = True
            worker.signal(signal.SIGTERM)
        if retiring:
            self._track(self._reap(retiring))

    async def _reap(self, workers: list[_Worker]) -> None:
        deadline = self.config.shutdown_timeout + KILL_MARGIN
        exits = [w.exited for w in workers]
        _, late = await asyncio.wait(exits, timeout=deadline)
        if not late:
            return
        for worker in workers:
            if not worker.exited.done():
                log.error(
                    "worker %d (pid %d) did not drain in time: killed", worker.slot, worker.pid
                )
                worker.signal(signal.SIGKILL)
        await asyncio.wait(late)

    async def _shutdown(self) -> None:
        self._stopping = True
        self._stop_event.set()
        live = list(self._live)
        for worker in live:
            worker.retiring = True
            worker.signal(signal.SIGTERM)
        if live:
            await self._reap(live)
        log.info("supervisor stopped: every worker exited")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    # ------------------------------------------------------------------ helpers

    def _give_up(self, reason: str) -> None:
        if self._failed:
            return
        log.critical("%s: giving up; see the errors above", reason)
        self._failed = True
        self._stop_event.set()
        self._wake.set()

    async def _pause(self, delay: float) -> bool:
        """Wait ``delay`` seconds; False if a stop came first."""
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay)
        return not self._stopping and not self._failed

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reserve(self) -> None:
        """Bind (not listen) a SO_REUSEPORT socket on the address; resolves port 0."""
        try:
            infos = socket.getaddrinfo(
                self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            where = f"{self.host}:{self.port}"
            raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        self._reservation = sock
        self.port = int(sock.getsockname()[1])

    def _prepare_metrics_dir(self) -> None:
        existing = os.environ.get(METRICS_DIR_ENV)
        if existing:
            self._metrics_dir = existing
            return
        self._metrics_dir = tempfile.mkdtemp(prefix="kiro-fast-metrics-")
        self._owns_metrics_dir = True

    def _release(self) -> None:
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        if self._owns_metrics_dir and self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def _about(worker: _Worker) -> dict[str, int]:
    """Structured fields of a log line about ``worker`` (see WorkerLogFilter)."""
    return {"worker": worker.slot, "worker_pid": worker.pid, "generation": worker.generation}


def _mark_process_dead(pid: int, directory: str | None) -> None:
    """Let prometheus_client drop a dead worker's live gauges (when it is installed)."""
    if directory is None:
        return
    try:
        from prometheus_client import multiprocess  # noqa: PLC0415 - optional dependency
    except ImportError:
        return
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
