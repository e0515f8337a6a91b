"""Command line: ``kiro-fast [serve] [-c config.json] [--credentials credentials.json]``.

kiro.rs's flags work unchanged (``-c/--config``, ``--credentials``); ``--host`` and
``--port`` override the file. ``kiro-fast demo`` starts the built-in fake Kiro upstream
and the proxy together with no credentials at all and prints a working ``curl`` line;
plain ``kiro-fast`` with no config file and no credentials does the same.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .config import load_config
from .errors import ConfigError, KiroFastError

log = logging.getLogger("kiro_fast")

DEFAULT_CONFIG = "config.json"
DEFAULT_CREDENTIALS = "credentials.json"
DEMO_API_KEY = "kiro-fast-demo-key"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiro-fast", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"kiro-fast {__version__}")
    parser.add_argument("command", nargs="?", choices=("serve", "demo"), default=None)
    parser.add_argument(
        "-c", "--config", help=f"config file (default ./{DEFAULT_CONFIG} if present)"
    )
    parser.add_argument("--credentials", help=f"credentials file (default ./{DEFAULT_CREDENTIALS})")
    parser.add_argument("--host", help="listen address (overrides the config)")
    parser.add_argument("--port", type=int, help="listen port (overrides the config)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", choices=("text", "json"))
    parser.add_argument(
        "--no-browser", action="store_true", help="do not offer to open the admin UI"
    )
    return parser


@dataclass(slots=True)
class Invocation:
    command: str
    config_path: str | None
    credentials_path: str | None
    overrides: dict[str, Any]


def interpret(argv: Sequence[str] | None = None) -> Invocation:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for key, value in (
        ("host", args.host),
        ("port", args.port),
        ("logLevel", args.log_level),
        ("logFormat", args.log_format),
    ):
        if value is not None:
            overrides[key] = value
    config_path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    credentials_path = args.credentials or (
        DEFAULT_CREDENTIALS if Path(DEFAULT_CREDENTIALS).is_file() else None
    )
    command = args.command
    if command is None:
        # No config and no credentials: nothing to proxy to, so show the demo.
        command = (
            "serve"
            if (config_path or credentials_path or os.environ.get("KIRO_FAST_API_KEY"))
            else "demo"
        )
    return Invocation(command, config_path, credentials_path, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        invocation = interpret(argv)
        config = load_config(invocation.config_path, overrides=invocation.overrides)
    except ConfigError as exc:
        print(f"kiro-fast: {exc.message}", file=sys.stderr)
        return 2
    from .logs import setup_logging  # noqa: PLC0415 - after the config says how

    setup_logging(config.log_level, config.log_format)
    from .runtime import run_demo, run_serve  # noqa: PLC0415 - keeps --version fast

    try:
        if invocation.command == "demo":
            return run_demo(config)
        return run_serve(config, invocation.credentials_path or DEFAULT_CREDENTIALS)
    except ConfigError as exc:
        print(f"kiro-fast: {exc.message}", file=sys.stderr)
        return 2
    except KiroFastError as exc:
        log.error("%s", exc.message)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
