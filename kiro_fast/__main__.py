"""Command line: ``kiro-fast [serve] [-c config.json] [--credentials credentials.json]``.

kiro.rs's flags work unchanged (``-c/--config``, ``--credentials``); ``--host`` and
``--port`` override the file. ``kiro-fast demo`` starts the built-in fake Kiro upstream
and the proxy together with no credentials at all and prints a working ``curl`` line;
plain ``kiro-fast`` with no config file and no credentials does the same.

Before anything else, a ``.env`` file in the working directory (or ``--env-file PATH``)
is read into the environment without overriding what is already set, as kiro2api and
the kiro.rs SQLite variant do (:mod:`kiro_fast.dotenv`).

Started from a terminal (stdout is a TTY) without ``--no-browser``, ``serve`` prints the
admin UI's address and opens it when a display exists; with no admin key or password
configured it makes a one-time admin key for this run and puts it in the address's
fragment (never in a log line), so a local user manages everything from the browser.

``--workers N`` (or ``auto``: one per CPU; env ``KIRO_FAST_WORKERS``) runs N supervised
worker processes on one port (:mod:`kiro_fast.supervisor`). Each worker is this same
command line with the hidden ``--worker-fd`` flag added by the supervisor.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, dotenv
from .config import Config, load_config
from .errors import ConfigError, KiroFastError

log = logging.getLogger("kiro_fast")

DEFAULT_CONFIG = "config.json"
DEFAULT_CREDENTIALS = "credentials.json"
DEMO_API_KEY = "kiro-fast-demo-key"
#: Default of --workers (a number or ``auto``); unset or 0 serves in this process.
WORKERS_ENV = "KIRO_FAST_WORKERS"

#: Config keys a flag overrides: (JSON key, flag, argparse dest). Workers get them back.
OVERRIDE_FLAGS = (
    ("host", "--host", "host"),
    ("port", "--port", "port"),
    ("logLevel", "--log-level", "log_level"),
    ("logFormat", "--log-format", "log_format"),
    ("logFile", "--log-file", "log_file"),
)


def worker_count(text: str) -> int:
    """``--workers``: a count (0 = serve in this process) or ``auto`` (one per CPU)."""
    if text.strip().lower() == "auto":
        from .supervisor import available_cpus  # noqa: PLC0415

        return available_cpus()
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {count}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiro-fast",
        description="A fast Anthropic / OpenAI compatible proxy for Kiro accounts. "
        "With no config and no credentials it runs the demo against a built-in fake upstream.",
    )
    parser.add_argument("--version", action="version", version=f"kiro-fast {__version__}")
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "demo"),
        default=None,
        help="serve (the default when a config or credentials exist) or demo",
    )
    parser.add_argument(
        "-c", "--config", help=f"config file (default ./{DEFAULT_CONFIG} if present)"
    )
    parser.add_argument("--credentials", help=f"credentials file (default ./{DEFAULT_CREDENTIALS})")
    parser.add_argument("--host", help="listen address (overrides the config)")
    parser.add_argument("--port", type=int, help="listen port (overrides the config)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", choices=("text", "json"))
    parser.add_argument("--log-file", help="also write log lines to this file")
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=os.environ.get(WORKERS_ENV) or "0",
        help="serve with N supervised worker processes, or 'auto' (one per CPU)",
    )
    parser.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-browser", action="store_true", help="do not offer to open the admin UI"
    )
    parser.add_argument(
        "--env-file", help=f"variables to load first (default ./{dotenv.DEFAULT_FILE})"
    )
    return parser


@dataclass(slots=True)
class Invocation:
    command: str
    config_path: str | None
    credentials_path: str | None
    overrides: dict[str, Any]
    #: worker processes to supervise (0: serve in this process)
    workers: int = 0
    #: set in a worker: its end of the link to the supervisor
    worker_fd: int | None = None
    #: ``--no-browser``: never print or open the admin UI's address
    no_browser: bool = False


def interpret(argv: Sequence[str] | None = None) -> Invocation:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for key, _, dest in OVERRIDE_FLAGS:
        value = getattr(args, dest)
        if value is not None:
            overrides[key] = value
    config_path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    credentials_path = args.credentials or (
        DEFAULT_CREDENTIALS if Path(DEFAULT_CREDENTIALS).is_file() else None
    )
    command = args.command
    if command is None:
        # No config and no credentials: nothing to proxy to, so show the demo.
        command = "serve" if (config_path or credentials_path or _client_key_in_env()) else "demo"
    # A worker inherits KIRO_FAST_WORKERS; it must serve, not supervise again.
    workers = 0 if args.worker_fd is not None else args.workers
    return Invocation(
        command,
        config_path,
        credentials_path,
        overrides,
        workers,
        args.worker_fd,
        no_browser=args.no_browser,
    )


def _client_key_in_env() -> bool:
    return any(os.environ.get(n) for n in ("KIRO_FAST_API_KEY", "KIRO_CLIENT_TOKEN", "API_KEY"))


def load_env_file(argv: Sequence[str] | None) -> None:
    """``--env-file PATH`` (must exist), else ``./.env`` if present, into the environment.

    Raises:
        ConfigError: the file is unreadable or malformed.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env-file")
    known, _ = pre.parse_known_args(argv)
    if known.env_file:
        dotenv.load(known.env_file, required=True)
    else:
        dotenv.load(dotenv.DEFAULT_FILE)


def worker_command(invocation: Invocation) -> Callable[[str, int, int], list[str]]:
    """How the supervisor starts a worker: this invocation, on the resolved address."""
    base = [sys.executable, "-m", "kiro_fast", "serve"]
    if invocation.config_path:
        base += ["--config", os.path.abspath(invocation.config_path)]
    if invocation.credentials_path:
        base += ["--credentials", os.path.abspath(invocation.credentials_path)]
    for key, flag, _ in OVERRIDE_FLAGS:
        if key in invocation.overrides and key not in ("host", "port"):
            base += [flag, str(invocation.overrides[key])]

    def command(host: str, port: int, fd: int) -> list[str]:
        return [*base, "--host", host, "--port", str(port), "--worker-fd", str(fd)]

    return command


def configure_logging(config: Config, worker: int | None) -> None:
    """Log as the config says; a worker stamps its slot number on every record."""
    from .logs import setup_logging  # noqa: PLC0415 - after the config says how

    stream = sys.stderr if config.log_file else None
    handlers = setup_logging(config.log_level, config.log_format, stream, config.log_file)
    if worker is not None:
        from .supervisor import WorkerLogFilter  # noqa: PLC0415

        for handler in handlers:
            handler.addFilter(WorkerLogFilter(worker))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        load_env_file(argv)
        invocation = interpret(argv)
        config = load_config(invocation.config_path, overrides=invocation.overrides)
        announce, config = _admin_announcement(invocation, config)
    except ConfigError as exc:
        print(f"kiro-fast: {exc.message}", file=sys.stderr)
        return 2
    worker_slot = _worker_slot(invocation)
    try:
        configure_logging(config, worker_slot)
    except (OSError, ValueError) as exc:
        print(f"kiro-fast: cannot set up logging: {exc}", file=sys.stderr)
        return 2
    from .runtime import run_demo, run_serve  # noqa: PLC0415 - keeps --version fast

    def reload_config() -> Config:
        fresh = load_config(invocation.config_path, overrides=invocation.overrides)
        configure_logging(fresh, worker_slot)
        return fresh

    try:
        if invocation.command == "demo":
            if invocation.workers:
                raise ConfigError("--workers applies to serve, not demo")
            return run_demo(config)
        if invocation.workers:
            from .supervisor import run_supervisor  # noqa: PLC0415

            if announce is not None:
                announce.show(config.host, config.port)
            return run_supervisor(
                config,
                invocation.workers,
                command=worker_command(invocation),
                reload_config=reload_config,
            )
        worker = None
        if invocation.worker_fd is not None:
            from .supervisor import WorkerLink  # noqa: PLC0415

            worker = WorkerLink(invocation.worker_fd)
        return run_serve(
            config,
            invocation.credentials_path or DEFAULT_CREDENTIALS,
            reload_config=reload_config,
            worker=worker,
            announce=announce if worker is None else None,
        )
    except ConfigError as exc:
        print(f"kiro-fast: {exc.message}", file=sys.stderr)
        return 2
    except KiroFastError as exc:
        log.error("%s", exc.message)
        return 1
    except KeyboardInterrupt:
        return 130


def _admin_announcement(invocation: Invocation, config: Config) -> tuple[Any, Config]:
    """The admin address printer for an interactive ``serve`` (``None`` otherwise), and
    the config to serve with.

    With no admin key or password configured, a one-time admin key is made for this
    run and put into the environment, so every worker and a reload pick it up; only the
    printed address carries it.
    """
    if invocation.command != "serve" or invocation.worker_fd is not None:
        return None, config
    if invocation.no_browser or not sys.stdout.isatty():
        return None, config
    from .admin.announce import Announcement  # noqa: PLC0415

    return Announcement.prepare(config, os.environ)


def _worker_slot(invocation: Invocation) -> int | None:
    if invocation.worker_fd is None:
        return None
    from .supervisor import WORKER_ENV  # noqa: PLC0415

    slot = os.environ.get(WORKER_ENV, "")
    return int(slot) if slot.isdigit() else 0


if __name__ == "__main__":
    sys.exit(main())
