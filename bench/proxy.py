"""Start kiro_fast for a benchmark: one credential, every upstream URL at a fake upstream.

```
.venv/bin/python bench/proxy.py --upstream http://127.0.0.1:PORT [--port 0] [--workers N]
```

Prints the proxy's base URL (``http://127.0.0.1:PORT``) as the first line of stdout and
serves until SIGTERM or SIGINT. The credential is a social login with a long-lived access
token, so no refresh ever happens; the fake upstream accepts any bearer unless it was
started with ``--require-auth``. Clients authenticate with ``--api-key``.

``--workers N`` (N > 1) runs the real CLI, ``kiro-fast serve --workers N``, with a
temporary config and credentials file, once ``kiro-fast --help`` lists ``--workers``;
until then it exits with status 3 and says so. One worker runs in this process through
:class:`kiro_fast.runtime.Runtime`, exactly as ``kiro-fast serve`` wires it.

The access log is off by default (``--log-level warning``), like nginx's ``access_log off``
in the reference configuration: the benchmark compares relays, not logging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Final

from kiro_fast.config import Config
from kiro_fast.credentials import Credential

#: Clients send this key unless told otherwise (bench/lua/post.lua and the helpers agree).
DEFAULT_API_KEY: Final = "kiro-fast-bench-key"
#: Far enough in the future that no refresh happens during any benchmark.
TOKEN_LIFETIME: Final = 10**7
#: How long a multi-worker CLI gets to start listening.
START_TIMEOUT: Final = 30.0
#: Exit status when --workers N > 1 is asked of a kiro_fast that has no --workers yet.
NO_WORKERS_STATUS: Final = 3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/proxy.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="base URL of the fake Kiro upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    return parser.parse_args(argv)


def bench_credential() -> Credential:
    return Credential(
        id=1,
        auth_method="social",
        refresh_token="x" * 120,
        access_token="bench-access-token",
        expires_at=time.time() + TOKEN_LIFETIME,
    )


def bench_config(args: argparse.Namespace, port: int) -> Config:
    return Config(
        host=args.host,
        port=port,
        api_key=args.api_key,
        kiro_api_base=args.upstream,
        kiro_auth_base=args.upstream,
        oidc_base=args.upstream,
        log_level=args.log_level,
    )


def cli_has_workers() -> bool:
    """True once ``kiro-fast --help`` lists ``--workers`` (issue 8)."""
    from kiro_fast.__main__ import build_parser  # noqa: PLC0415 - only asked when needed

    return "--workers" in build_parser().format_help()


def run_single(args: argparse.Namespace) -> int:
    from kiro_fast.logs import setup_logging  # noqa: PLC0415
    from kiro_fast.runtime import Runtime  # noqa: PLC0415
    from kiro_fast.server import install_loop  # noqa: PLC0415

    config = bench_config(args, args.port)
    setup_logging(config.log_level, config.log_format)
    install_loop()
    runtime = Runtime(config, [bench_credential()])

    async def main() -> None:
        await runtime.start()
        print(f"http://{args.host}:{runtime.port}", flush=True)
        await runtime.run_until_signalled()

    asyncio.run(main())
    return 0


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_listening(host: str, port: int, child: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def run_workers(args: argparse.Namespace) -> int:
    if not cli_has_workers():
        print("kiro-fast has no --workers option yet", file=sys.stderr)
        return NO_WORKERS_STATUS
    port = args.port or free_port(args.host)
    cred = bench_credential()
    with tempfile.TemporaryDirectory(prefix="kf-bench-") as tmp:
        config_path, creds_path = os.path.join(tmp, "config.json"), os.path.join(tmp, "creds.json")
        with open(config_path, "w") as fh:
            json.dump(
                {
                    "host": args.host,
                    "port": port,
                    "apiKey": args.api_key,
                    "kiroApiBase": args.upstream,
                    "kiroAuthBase": args.upstream,
                    "oidcBase": args.upstream,
                    "logLevel": args.log_level,
                },
                fh,
            )
        with open(creds_path, "w") as fh:
            json.dump(
                [
                    {
                        "refreshToken": cred.refresh_token,
                        "accessToken": cred.access_token,
                        "expiresAt": cred.expires_at,
                        "authMethod": "social",
                    }
                ],
                fh,
            )
        command = [sys.executable, "-m", "kiro_fast", "serve", "-c", config_path]
        command += ["--credentials", creds_path, "--workers", str(args.workers)]
        child = subprocess.Popen(command)
        forward = lambda signum, _frame: child.send_signal(signum)  # noqa: E731
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        if not wait_listening(args.host, port, child):
            child.terminate()
            child.wait()
            print("kiro-fast --workers did not start listening", file=sys.stderr)
            return 1
        print(f"http://{args.host}:{port}", flush=True)
        return child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers > 1:
        return run_workers(args)
    return run_single(args)


if __name__ == "__main__":
    sys.exit(main())
