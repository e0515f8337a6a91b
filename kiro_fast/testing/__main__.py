"""``python -m kiro_fast.testing``: the fake upstream as its own process.

Prints the base URL (``http://HOST:PORT``) as the first line of stdout, then serves
until SIGTERM or SIGINT. Made for benchmarks and ``kiro-fast demo``: authentication
is off unless ``--require-auth`` (with ``--social``/``--api-key`` accounts), and
requests are not kept in memory unless ``--record``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from .server import FakeUpstream
from .settings import FakeSettings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kiro_fast.testing", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--mode", choices=("normal", "fast", "paced"), default="normal")
    parser.add_argument("--tick-ms", type=float, default=2.0, help="paced mode's tick")
    parser.add_argument("--no-validate", action="store_true", help="skip the request rules")
    parser.add_argument("--host-mode", choices=("q", "runtime"), default="q")
    parser.add_argument("--region", default="us-east-1", help="region of the OIDC endpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true", help="keep requests in memory")
    parser.add_argument("--require-auth", action="store_true", help="check bearer tokens")
    parser.add_argument("--social", action="append", default=[], metavar="REFRESH_TOKEN")
    parser.add_argument("--api-key", action="append", default=[], metavar="KSK_KEY")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> FakeSettings:
    return FakeSettings(
        mode=args.mode,
        tick_ms=args.tick_ms,
        validate=not args.no_validate,
        host_mode=args.host_mode,
        region=args.region,
        seed=args.seed,
        record_requests=args.record,
        require_auth=args.require_auth,
    )


async def serve(args: argparse.Namespace) -> None:
    fake = FakeUpstream(args.host, args.port, settings_from(args))
    for token in args.social:
        fake.accounts.add_social(token)
    for key in args.api_key:
        fake.accounts.add_api_key(key)
    await fake.start()
    print(fake.url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    use_uvloop = args.loop == "uvloop" or (args.loop == "auto" and sys.platform != "win32")
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            if args.loop == "uvloop":
                raise
            use_uvloop = False
    if use_uvloop:
        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
