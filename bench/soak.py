"""Soak: many concurrent streams for a long time, with random client disconnects.

```
.venv/bin/python bench/soak.py [--streams 1000] [--minutes 10 | --seconds S]
                               [--disconnect-rate 0.1] [--tick-ms 200] [--warmup S]
                               [--json-out FILE] [--seed 0]
```

Starts the fake Kiro upstream (``python -m kiro_fast.testing --mode paced``: every chat
request gets the canned 50-frame answer, one frame per ``--tick-ms``, so a stream lasts
about 50 ticks) and kiro_fast (``bench/proxy.py``), each in its own process, then keeps
``--streams`` streaming ``/v1/messages`` requests in flight from this process until the
time is up. Each client reuses its keep-alive connection for the next stream; with
probability ``--disconnect-rate`` a stream is cut at a random moment instead (a reset
or a close, before or after the first bytes), and the client reconnects.

Every stream ends one of three ways: **complete** (a ``200`` event stream ending in
``message_stop``), **disconnected** (we cut it on purpose), or **unexpected** (anything
else: another status, an early close or reset by the server, a stream without
``message_stop``, 60 s without a byte). The run passes with zero unexpected endings.

From procfs it samples kiro_fast every ``--sample`` seconds: resident set (``VmRSS``),
open descriptors, and its TCP sockets split by side (accepted from clients, or to the
upstream) and state. Tasks are not visible from outside; every task of kiro_fast holds a
client socket, so a leaked task shows as a client socket that never closes.

After the load stops (clients finish their current stream, then close), kiro_fast must
come back to its idle state: no client socket left, no socket in ``CLOSE_WAIT`` (a peer
closed and kiro_fast did not), and every descriptor other than pooled idle upstream
connections (aiohttp keeps those up to 120 s) back to the count before the load. Memory:
RSS at the end of the load within ``--rss-tolerance`` (10 %) of RSS at the end of the
warm-up (``--warmup``, default a fifth of the run, at most 2 minutes).

The report goes to stdout; ``--json-out`` writes the same figures as JSON. Exit status 0
when every check passed, 1 otherwise. kiro_fast's stderr (WARNING and up) is kept in
``--log`` and its ERROR lines are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

ROOT: Final = Path(__file__).resolve().parent.parent
#: bench/proxy.py's default client key.
API_KEY: Final = "kiro-fast-bench-key"
#: Frames of the fake's canned answer; a paced stream lasts about this many ticks.
PACED_FRAMES: Final = 50
#: A stream that sends nothing for this long is stuck (an unexpected ending).
STALL_TIMEOUT: Final = 60.0
#: How long each child gets to print its URL.
START_TIMEOUT: Final = 30.0
#: How long kiro_fast gets to close every client socket once the load is over.
IDLE_TIMEOUT: Final = 30.0
#: Connections opened at once while ramping up (a burst of thousands overflows backlogs).
RAMP_CONCURRENCY: Final = 100
#: /proc/net/tcp state codes.
TCP_STATES: Final = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


# --------------------------------------------------------------------------- processes


class Child:
    """A subprocess that prints its base URL as its first stdout line."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name = name
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT, text=True
        )
        self.url = self._read_url()
        self.port = urlsplit(self.url).port or 0

    def _read_url(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline().strip()
            if line.startswith("http://"):
                return line
        self.stop()
        raise RuntimeError(f"{self.name} did not start (see {self.log.name}): {line!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- procfs


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    #: sockets accepted from clients (the listener excluded), by state
    client: Counter[str] = field(default_factory=Counter)
    #: sockets to the upstream, by state
    upstream: Counter[str] = field(default_factory=Counter)
    #: bytes waiting unread in upstream sockets (a stream nobody reads)
    upstream_unread: int = 0

    def brief(self) -> str:
        return (
            f"rss {self.rss / 2**20:7.1f} MiB  fds {self.fds:5d}  "
            f"client {sum(self.client.values()):5d}  upstream {sum(self.upstream.values()):5d}"
        )


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def socket_inodes(pid: int) -> tuple[int, set[str]]:
    count, inodes = 0, set()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        count += 1
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return count, inodes


def sample(pid: int, proxy_port: int, upstream_port: int, started: float) -> Sample:
    fds, inodes = socket_inodes(pid)
    result = Sample(time.monotonic() - started, rss_of(pid), fds)
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            state = TCP_STATES.get(fields[3], fields[3])
            if local_port == proxy_port and state != "LISTEN":
                result.client[state] += 1
            elif remote_port == upstream_port:
                result.upstream[state] += 1
                result.upstream_unread += int(fields[4].split(":")[1], 16)
    return result


# --------------------------------------------------------------------------- load client


class StreamEnd(Exception):
    """How one stream ended, when it was not complete."""


class Connection(asyncio.Protocol):
    """One client connection; one streaming request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head_end = -1
        self.status = 0
        self.length: int | None = None
        self.done: asyncio.Future[None] | None = None
        self.lost = False
        self.cut = False
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, request: bytes) -> asyncio.Future[None]:
        self.buf.clear()
        self.head_end, self.status, self.length = -1, 0, None
        self.done = asyncio.get_running_loop().create_future()
        self.last = time.monotonic()
        assert self.transport is not None
        self.transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last = time.monotonic()
        if self.head_end < 0:
            self.head_end = self.buf.find(b"\r\n\r\n")
            if self.head_end < 0:
                return
            self._parse_head()
        if self.done is None or self.done.done():
            return
        if self.length is not None:
            if len(self.buf) - self.head_end - 4 >= self.length:
                self.done.set_result(None)
        elif self.buf.endswith(b"\r\n0\r\n\r\n"):
            self.done.set_result(None)

    def _parse_head(self) -> None:
        head = bytes(self.buf[: self.head_end]).lower()
        self.status = int(head[9:12])
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                self.length = int(line.split(b":", 1)[1])

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(StreamEnd("cut by us" if self.cut else "closed by the server"))

    def cut_now(self, reset: bool) -> None:
        self.cut = True
        if self.transport is not None:
            if reset:
                self.transport.abort()
            else:
                self.transport.close()

    def verdict(self) -> str:
        if self.status != 200:
            return f"status {self.status}"
        if b"event: message_stop" not in self.buf[-512:]:
            return "no message_stop"
        return "complete"


@dataclass
class LoadConfig:
    host: str
    port: int
    streams: int
    disconnect_rate: float
    stream_seconds: float
    seed: int


def stream_request(host: str, port: int, index: int) -> bytes:
    body = json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "stream": True,
            "messages": [{"role": "user", "content": f"soak stream {index}"}],
        }
    ).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nanthropic-version: 2023-06-01\r\n"
        f"x-api-key: {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Load:
    """``streams`` clients, each running streams back to back until ``stop``."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.outcomes: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.stopping = False
        self.started = 0
        self._ramp = asyncio.Semaphore(RAMP_CONCURRENCY)

    async def run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.config.streams)))

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        async with self._ramp:
            _, conn = await loop.create_connection(Connection, self.config.host, self.config.port)
        return conn

    async def _client(self, index: int) -> None:
        rng = random.Random(self.config.seed * 100_003 + index)
        # Staggered starts: the paced upstream ends same-age streams on the same tick.
        await asyncio.sleep(rng.uniform(0, self.config.stream_seconds))
        conn: Connection | None = None
        while not self.stopping:
            try:
                if conn is None or conn.lost:
                    conn = await self._connect()
                outcome = await self._one_stream(conn, rng)
            except (ConnectionError, OSError) as exc:
                outcome = f"unexpected: connect failed: {type(exc).__name__}"
                conn = None
            self._count(outcome)
            if conn is not None and (conn.cut or outcome != "complete" or rng.random() < 0.2):
                if conn.transport is not None:
                    conn.transport.close()
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    async def _one_stream(self, conn: Connection, rng: random.Random) -> str:
        loop = asyncio.get_running_loop()
        self.started += 1
        done = conn.start(stream_request(self.config.host, self.config.port, self.started))
        cutter = None
        if rng.random() < self.config.disconnect_rate:
            delay = rng.uniform(0, self.config.stream_seconds * 1.1)
            cutter = loop.call_later(delay, conn.cut_now, rng.random() < 0.5)
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(done), timeout=5.0)
                    break
                except TimeoutError:
                    if time.monotonic() - conn.last > STALL_TIMEOUT:
                        conn.cut_now(True)
                        return "unexpected: stalled"
        except StreamEnd as end:
            return "disconnected" if conn.cut else f"unexpected: {end}"
        finally:
            if cutter is not None:
                cutter.cancel()
        verdict = conn.verdict()
        return verdict if verdict == "complete" else f"unexpected: {verdict}"

    def _count(self, outcome: str) -> None:
        if outcome.startswith("unexpected"):
            self.unexpected[outcome[len("unexpected: ") :]] += 1
            self.outcomes["unexpected"] += 1
        else:
            self.outcomes[outcome] += 1


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    streams: int
    seconds: float
    disconnect_rate: float
    tick_ms: float
    completed: int = 0
    disconnected: int = 0
    unexpected: int = 0
    unexpected_kinds: dict[str, int] = field(default_factory=dict)
    streams_per_second: float = 0.0
    rss_baseline: int = 0
    rss_warm: int = 0
    rss_end: int = 0
    rss_peak: int = 0
    rss_growth: float = 0.0
    fds_baseline: int = 0
    fds_end: int = 0
    upstream_sockets_end: int = 0
    client_sockets_end: int = 0
    close_wait_end: int = 0
    upstream_unread_end: int = 0
    server_error_lines: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


async def drive(args: argparse.Namespace, proxy: Child, upstream: Child, report: Report) -> None:
    started = time.monotonic()
    pid = proxy.pid

    def take() -> Sample:
        return sample(pid, proxy.port, upstream.port, started)

    baseline = take()
    report.rss_baseline, report.fds_baseline = baseline.rss, baseline.fds
    load = Load(
        LoadConfig(
            host="127.0.0.1",
            port=proxy.port,
            streams=args.streams,
            disconnect_rate=args.disconnect_rate,
            stream_seconds=PACED_FRAMES * args.tick_ms / 1000,
            seed=args.seed,
        )
    )
    runner = asyncio.create_task(load.run())
    samples: list[Sample] = []
    load_started = time.monotonic()
    end = load_started + args.duration
    while time.monotonic() < end and not runner.done():
        await asyncio.sleep(min(args.sample, max(0.0, end - time.monotonic())))
        current = take()
        samples.append(current)
        print(
            f"{current.t:7.1f} s  {current.brief()}  streams {sum(load.outcomes.values()):7d}"
            f"  unexpected {load.outcomes['unexpected']}",
            file=sys.stderr,
            flush=True,
        )
    report.seconds = time.monotonic() - load_started
    load.stopping = True
    await runner  # every client finishes its current stream, then closes
    await wait_idle(take)
    summarize(report, load, samples, load_started - started + args.warmup, take())


async def wait_idle(take: Any) -> None:
    deadline = time.monotonic() + IDLE_TIMEOUT
    while time.monotonic() < deadline:
        current = take()
        if not current.client and not current.upstream.get("CLOSE_WAIT"):
            return
        await asyncio.sleep(0.2)


def summarize(
    report: Report, load: Load, samples: list[Sample], warm_t: float, final: Sample
) -> None:
    """``warm_t``: when the warm-up ended, in sample time (seconds since the start)."""
    report.completed = load.outcomes["complete"]
    report.disconnected = load.outcomes["disconnected"]
    report.unexpected = load.outcomes["unexpected"]
    report.unexpected_kinds = dict(load.unexpected)
    total = report.completed + report.disconnected + report.unexpected
    report.streams_per_second = total / report.seconds if report.seconds else 0.0
    after_warmup = [s for s in samples if s.t >= warm_t] or samples[-1:]
    report.rss_warm = after_warmup[0].rss
    report.rss_end = samples[-1].rss
    report.rss_peak = max(s.rss for s in samples)
    report.rss_growth = (report.rss_end - report.rss_warm) / report.rss_warm
    report.fds_end = final.fds
    report.upstream_sockets_end = sum(final.upstream.values())
    report.client_sockets_end = sum(final.client.values())
    report.close_wait_end = final.client.get("CLOSE_WAIT", 0) + final.upstream.get("CLOSE_WAIT", 0)
    report.upstream_unread_end = final.upstream_unread
    report.samples = [
        {
            "t": round(s.t, 1),
            "rss": s.rss,
            "fds": s.fds,
            "client": sum(s.client.values()),
            "upstream": sum(s.upstream.values()),
        }
        for s in samples
    ]


def finish_checks(report: Report, tolerance: float) -> None:
    report.checks = {
        "no unexpected stream endings": report.unexpected == 0,
        "streams completed": report.completed > 0,
        "no client socket left": report.client_sockets_end == 0,
        "no socket in CLOSE_WAIT": report.close_wait_end == 0,
        "no unread upstream data": report.upstream_unread_end == 0,
        "descriptors back to baseline (pooled upstream excepted)": report.fds_end
        - report.upstream_sockets_end
        <= report.fds_baseline,
        f"RSS flat within {tolerance:.0%} after warm-up": report.rss_growth <= tolerance,
        "no ERROR in kiro_fast's log": report.server_error_lines == 0,
    }


def count_error_lines(log: Path) -> int:
    lines = log.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if " ERROR " in line or line.startswith("Traceback"))


def print_report(report: Report) -> None:
    mib = 2**20
    print(
        f"soak: {report.streams} concurrent streams for {report.seconds:.0f} s, "
        f"disconnect rate {report.disconnect_rate:.0%}, tick {report.tick_ms:g} ms"
    )
    print(
        f"  streams: {report.completed:,} complete, {report.disconnected:,} cut on purpose, "
        f"{report.unexpected:,} unexpected {report.unexpected_kinds or ''}"
        f"  ({report.streams_per_second:,.1f} streams/s)"
    )
    print(
        f"  RSS: baseline {report.rss_baseline / mib:.1f} MiB, after warm-up "
        f"{report.rss_warm / mib:.1f} MiB, end {report.rss_end / mib:.1f} MiB "
        f"({report.rss_growth:+.1%}), peak {report.rss_peak / mib:.1f} MiB"
    )
    print(
        f"  descriptors: baseline {report.fds_baseline}, after {report.fds_end} "
        f"({report.upstream_sockets_end} pooled upstream connections); client sockets "
        f"left {report.client_sockets_end}, CLOSE_WAIT {report.close_wait_end}"
    )
    print(f"  kiro_fast ERROR lines: {report.server_error_lines}")
    for name, ok in report.checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0)
    length.add_argument("--seconds", type=float)
    parser.add_argument("--disconnect-rate", type=float, default=0.1)
    parser.add_argument("--tick-ms", type=float, default=200.0, help="fake upstream frame pace")
    parser.add_argument("--warmup", type=float, help="seconds (default: a fifth, at most 120)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", type=Path, default=Path("soak-logs"))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    args.duration = args.seconds if args.seconds is not None else args.minutes * 60
    if args.warmup is None:
        args.warmup = min(args.duration / 5, 120.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.log.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    upstream = Child(
        "fake upstream",
        [
            python,
            "-m",
            "kiro_fast.testing",
            "--port",
            "0",
            "--mode",
            "paced",
            "--tick-ms",
            str(args.tick_ms),
        ],
        args.log / "upstream.log",
    )
    proxy: Child | None = None
    report = Report(args.streams, args.duration, args.disconnect_rate, args.tick_ms)
    try:
        proxy = Child(
            "kiro_fast",
            [
                python,
                str(ROOT / "bench" / "proxy.py"),
                "--upstream",
                upstream.url,
                "--api-key",
                API_KEY,
                "--log-level",
                "warning",
            ],
            args.log / "kiro_fast.log",
        )
        run_client(drive(args, proxy, upstream, report))
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.stop()
    report.server_error_lines = count_error_lines(args.log / "kiro_fast.log")
    finish_checks(report, args.rss_tolerance)
    print_report(report)
    if args.json_out is not None:
        data = asdict(report)
        data["passed"] = report.passed
        args.json_out.write_text(json.dumps(data, indent=1))
    return 0 if report.passed else 1


def run_client(coro: Any) -> None:
    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
