"""End-to-end benchmark: kiro_fast against the fake upstream called directly and nginx.

```
.venv/bin/python bench/e2e.py [--rounds 3] [--quick] [--json results.json] [--compare TREE]
```

One command, one run, one table (issue 3 item 10, issue 8 item 7; method of
``performance-notes.md`` §1). Variants, all in front of the same fake Kiro upstream
(``python -m kiro_fast.testing --no-validate``, the canned 50-frame answer):

* **direct**: the fake upstream itself (a second instance, on the server core);
* **nginx**: ``proxy_pass``, ``proxy_buffering off``, upstream keep-alive, one worker;
* **kiro_fast**: ``bench/proxy.py`` (one worker), and N workers when ``kiro-fast --help``
  lists ``--workers`` (else "n/a").

The server under test runs on CPU 0 (``taskset``); wrk, the clients and the upstream the
proxies call run on CPU 1. Server CPU time is utime + stime from procfs, summed over the
server's process tree. Each round measures every variant once; the table gives medians of
the rounds' absolute figures and medians of the per-round ratios.

Scenarios:

* **A, fast**: the upstream sends all 50 frames in one write; wrk, c=16.
* **B, trickle**: one frame per stream per 2 ms tick (each upstream read carries about one
  frame); wrk, c=64. The figure that counts is server CPU per relayed event.
* **C, TTFB**: one keep-alive connection, requests one after the other (``bench/ttfb.py``);
  added time to first byte = variant − direct, p50 and p99.
* **D, memory**: RSS per idle open stream at 1,000 and 5,000 streams (``rss.py idle``,
  upstream holding each stream after its first frame), and RSS growth with 50 stalled
  readers pulling 8 MiB and 32 MiB streams (``rss.py stall`` / ``big-upstream``).

``--compare TREE`` adds kiro_fast run from another source tree (``PYTHONPATH=TREE``) as
``altN`` rows, with its per-round ratios against the tree under test.

An "event" is one of the 50 text deltas of an answer, for every variant (kiro_fast also
sends message_start, content_block_start/stop, message_delta and message_stop; the
upstream also sends a metering and a context-usage frame).

Every process started here is stopped by its PID on the way out, also after an error or
Ctrl-C. Nothing binds beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

BENCH_DIR: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import proxy  # noqa: E402 - bench/ sibling
import ttfb  # noqa: E402 - bench/ sibling

PYTHON: Final = sys.executable
EVENTS_PER_STREAM: Final = 50
REQUEST_BYTES: Final = 2048
LUA_SCRIPT: Final = BENCH_DIR / "lua" / "post.lua"
NGINX_TEMPLATE: Final = BENCH_DIR / "nginx.conf.template"
NGINX: Final = shutil.which("nginx") or "/usr/sbin/nginx"
WRK: Final = shutil.which("wrk") or "/usr/bin/wrk"
KIRO_PATH: Final = "/v1/messages"
UPSTREAM_PATH: Final = "/generateAssistantResponse"
#: A process that has not printed its URL by then failed to start.
START_TIMEOUT: Final = 30.0
#: SIGTERM, then this long, then SIGKILL.
STOP_GRACE: Final = 5.0
#: The hold upstream's tick: far beyond any run, so every stream stays open after frame 1.
HOLD_TICK_MS: Final = 1e9
#: Stalled-reader test: RSS counts as settled after this long without growing.
SETTLE_SECONDS: Final = 1.5
SETTLE_LIMIT: Final = 20.0
SETTLE_SLACK_KB: Final = 256


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration: int
    warmup: int
    conns: int
    trickle_duration: int
    trickle_conns: int
    tick_ms: float
    ttfb_count: int
    ttfb_warmup: int
    rss_steps: tuple[int, ...]
    stall_clients: int
    stall_mib: tuple[int, int]
    workers: int
    compare: tuple[str, ...] = ()


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        rounds=args.rounds if args.rounds is not None else (1 if quick else 3),
        duration=args.duration or (2 if quick else 5),
        warmup=args.warmup if args.warmup is not None else 1,
        conns=args.conns,
        trickle_duration=args.trickle_duration or (2 if quick else 8),
        trickle_conns=args.trickle_conns,
        tick_ms=args.tick_ms,
        ttfb_count=args.ttfb_count or (300 if quick else 3000),
        ttfb_warmup=20,
        rss_steps=tuple(
            int(s) for s in (args.rss_steps or ("200,1000" if quick else "1000,5000")).split(",")
        ),
        stall_clients=args.stall_clients or (10 if quick else 50),
        stall_mib=tuple(
            int(s) for s in (args.stall_mib or ("8,16" if quick else "8,32")).split(",")
        ),  # type: ignore[arg-type]
        workers=args.workers or max(2, len(os.sched_getaffinity(0))),
        compare=tuple(str(Path(p).resolve()) for p in args.compare),
    )


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[str]
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


class Processes:
    """Every process this run starts; :meth:`stop_all` stops them by PID."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.workdir = workdir
        self.pin = pin
        self.procs: list[Proc] = []

    def argv(self, cpus: str | None, argv: Sequence[str]) -> list[str]:
        return (["taskset", "-c", cpus] if self.pin and cpus else []) + list(argv)

    def start(
        self,
        name: str,
        cpus: str | None,
        argv: Sequence[str],
        *,
        stdin: bool = False,
        pythonpath: str | None = None,
    ) -> Proc:
        log = open(self.workdir / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        env = None
        if pythonpath is not None:
            env = dict(os.environ, PYTHONPATH=pythonpath)
        popen = subprocess.Popen(
            self.argv(cpus, argv),
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        log.close()
        proc = Proc(name, popen)
        self.procs.append(proc)
        return proc

    def start_server(
        self, name: str, cpus: str | None, argv: Sequence[str], pythonpath: str | None = None
    ) -> Proc:
        """Start a process that prints its URL first, and wait for that line."""
        proc = self.start(name, cpus, argv, pythonpath=pythonpath)
        proc.url = read_line(proc, START_TIMEOUT).strip()
        if not proc.url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"{name} did not start: {proc.url!r}; see {self.workdir}/{name}.log")
        return proc

    def stop(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)
        popen = proc.popen
        descendants = tree(popen.pid)[1:] if popen.poll() is None else []
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        # Whatever it started (nginx workers, a supervisor's workers) and left behind.
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for stream in (popen.stdout, popen.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def read_line(proc: Proc, timeout: float) -> str:
    stdout = proc.popen.stdout
    assert stdout is not None
    ready, _, _ = select.select([stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"{proc.name}: no output within {timeout:g} s")
    return stdout.readline()


def wait_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


# --------------------------------------------------------------------------- procfs


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(child) for child in fh.read().split())
    return out


_TICK: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process tree (all threads)."""
    user = system = 0.0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{member}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            user += int(fields[11]) / _TICK
            system += int(fields[12]) / _TICK
    return user, system


def rss_kb(pid: int) -> int:
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


# --------------------------------------------------------------------------- load


@dataclass
class Target:
    """One variant: where to send requests and whose CPU and memory to read."""

    name: str
    url: str
    path: str
    server: Proc | None
    api_key: str | None = None

    @property
    def kiro(self) -> bool:
        return self.path == KIRO_PATH


def run_wrk(
    procs: Processes, target: Target, conns: int, seconds: int, body: Path
) -> dict[str, Any]:
    argv = [WRK, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA_SCRIPT)]
    argv += [target.url + target.path, "--", str(body), target.api_key or ""]
    done = subprocess.run(
        procs.argv("1", argv), capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("E2E-RESULT "):
            return {k: float(v) for k, v in (p.split("=") for p in line.split()[1:])}
    raise RuntimeError(f"wrk printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")


def load_run(
    procs: Processes, target: Target, conns: int, seconds: int, warmup: int, body: Path
) -> dict[str, Any]:
    if warmup:
        run_wrk(procs, target, conns, warmup, body)
    assert target.server is not None
    pid = target.server.pid
    user0, sys0 = cpu_seconds(pid)
    wall0 = time.monotonic()
    result = run_wrk(procs, target, conns, seconds, body)
    wall = time.monotonic() - wall0
    user1, sys1 = cpu_seconds(pid)
    cpu = (user1 - user0) + (sys1 - sys0)
    streams = result["requests"]
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    per_stream = cpu * 1e6 / streams if streams else float("nan")
    return {
        "streams": streams,
        "streams_s": streams / (result["duration_us"] / 1e6),
        "events_s": streams * EVENTS_PER_STREAM / (result["duration_us"] / 1e6),
        "p50_ms": result["p50"] / 1000,
        "p99_ms": result["p99"] / 1000,
        "cpu_us_stream": per_stream,
        "cpu_us_event": per_stream / EVENTS_PER_STREAM,
        "cpu_pct": 100 * cpu / wall,
        "sys_pct": 100 * (sys1 - sys0) / cpu if cpu else float("nan"),
        "errors": errors,
    }


def ttfb_run(procs: Processes, target: Target, plan: Plan, body: Path) -> dict[str, Any]:
    argv = [PYTHON, str(BENCH_DIR / "ttfb.py"), target.url, target.path, "--body", str(body)]
    argv += ["--count", str(plan.ttfb_count), "--warmup", str(plan.ttfb_warmup)]
    if target.api_key:
        argv += ["--api-key", target.api_key]
    done = subprocess.run(
        procs.argv("1", argv), capture_output=True, text=True, timeout=600, check=False
    )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"ttfb.py failed: {done.stderr[-800:]}")
    return dict(json.loads(lines[-1]))


def check_answer(target: Target, body: bytes) -> None:
    """One request before measuring: the variant must relay the whole canned answer."""
    data = ttfb.fetch(target.url, target.path, body, target.api_key)
    if target.kiro:
        deltas = data.count(b"event: content_block_delta")
        ok = deltas == EVENTS_PER_STREAM and data.endswith(b'data: {"type":"message_stop"}\n\n')
    else:
        deltas = data.count(b"assistantResponseEvent")
        ok = deltas == EVENTS_PER_STREAM
    if not ok:
        raise RuntimeError(f"{target.name}: malformed answer ({deltas} deltas): {data[-300:]!r}")


# --------------------------------------------------------------------------- servers


def request_body(text_extra: str = "") -> bytes:
    """A 2,048-byte streaming Anthropic Messages request (performance-notes §1)."""

    def render(pad: int) -> bytes:
        content = text_extra + "Benchmark prompt. " + "x" * pad
        payload = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "stream": True,
            "messages": [{"role": "user", "content": content}],
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    base = len(render(0))
    return render(max(0, REQUEST_BYTES - base))


def start_fake(procs: Processes, name: str, cpus: str, mode: str, tick_ms: float) -> Proc:
    argv = [PYTHON, "-m", "kiro_fast.testing", "--port", "0", "--mode", mode, "--no-validate"]
    return procs.start_server(name, cpus, argv + ["--tick-ms", repr(tick_ms)])


def start_kiro(
    procs: Processes,
    name: str,
    cpus: str,
    upstream: str,
    workers: int = 1,
    pythonpath: str | None = None,
) -> Proc:
    argv = [PYTHON, str(BENCH_DIR / "proxy.py"), "--upstream", upstream, "--workers", str(workers)]
    return procs.start_server(name, cpus, argv, pythonpath)


def alt_label(index: int) -> str:
    """Row name of the kiro_fast tree given as the index-th --compare."""
    return f"kiro_fast alt{index + 1}"


def start_nginx(procs: Processes, name: str, port_a: int, port_b: int) -> Proc:
    prefix = procs.workdir / name
    prefix.mkdir(parents=True, exist_ok=True)
    port = proxy.free_port("127.0.0.1")
    conf = string.Template(NGINX_TEMPLATE.read_text()).substitute(
        prefix=str(prefix), port=port, port_a=port_a, port_b=port_b
    )
    (prefix / "nginx.conf").write_text(conf)
    proc = procs.start(name, "0", [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    wait_port(port)
    proc.url = f"http://127.0.0.1:{port}"
    return proc


def workers_available() -> bool:
    try:
        return proxy.cli_has_workers()
    except Exception:  # noqa: BLE001 - a broken CLI import means "no workers"
        return False


@dataclass
class Rig:
    """The long-lived servers of a run (scenarios A–C)."""

    direct_fast: Target
    direct_paced: Target
    nginx_fast: Target
    nginx_paced: Target
    kiro_fast: Target
    kiro_paced: Target
    kiro_workers: Target | None
    #: (label, fast target, paced target, PYTHONPATH) per --compare tree
    alternatives: list[tuple[str, Target, Target, str]] = field(default_factory=list)


def start_rig(procs: Processes, plan: Plan) -> Rig:
    key = proxy.DEFAULT_API_KEY
    fast1 = start_fake(procs, "fake-fast-cpu1", "1", "fast", plan.tick_ms)
    paced1 = start_fake(procs, "fake-paced-cpu1", "1", "paced", plan.tick_ms)
    fast0 = start_fake(procs, "fake-fast-cpu0", "0", "fast", plan.tick_ms)
    paced0 = start_fake(procs, "fake-paced-cpu0", "0", "paced", plan.tick_ms)
    nginx = start_nginx(procs, "nginx", fast1.port, paced1.port)
    kf_fast = start_kiro(procs, "kiro-fast", "0", fast1.url)
    kf_paced = start_kiro(procs, "kiro-paced", "0", paced1.url)
    workers = None
    if workers_available():
        cpus = ",".join(str(c) for c in range(plan.workers))
        kf_n = start_kiro(procs, "kiro-workers", cpus, fast1.url, plan.workers)
        workers = Target(f"kiro_fast {plan.workers} workers", kf_n.url, KIRO_PATH, kf_n, key)
    alternatives = []
    for index, path in enumerate(plan.compare):
        label = alt_label(index)
        alt_fast = start_kiro(procs, f"alt{index + 1}-fast", "0", fast1.url, pythonpath=path)
        alt_paced = start_kiro(procs, f"alt{index + 1}-paced", "0", paced1.url, pythonpath=path)
        alternatives.append(
            (
                label,
                Target(label, alt_fast.url, KIRO_PATH, alt_fast, key),
                Target(label, alt_paced.url, KIRO_PATH, alt_paced, key),
                path,
            )
        )
    return Rig(
        alternatives=alternatives,
        direct_fast=Target("direct upstream", fast0.url, UPSTREAM_PATH, fast0),
        direct_paced=Target("direct upstream", paced0.url, UPSTREAM_PATH, paced0),
        nginx_fast=Target("nginx proxy_pass", nginx.url, "/a" + UPSTREAM_PATH, nginx),
        nginx_paced=Target("nginx proxy_pass", nginx.url, "/b" + UPSTREAM_PATH, nginx),
        kiro_fast=Target("kiro_fast 1 worker", kf_fast.url, KIRO_PATH, kf_fast, key),
        kiro_paced=Target("kiro_fast 1 worker", kf_paced.url, KIRO_PATH, kf_paced, key),
        kiro_workers=workers,
    )


# --------------------------------------------------------------------------- memory


def settle_peak(pid: int, base: int) -> int:
    """Poll RSS until it stops growing; return the peak (KB)."""
    peak = last = rss_kb(pid)
    steady_since = started = time.monotonic()
    while time.monotonic() - started < SETTLE_LIMIT:
        time.sleep(0.2)
        now = rss_kb(pid)
        peak = max(peak, now)
        if now > last + SETTLE_SLACK_KB:
            steady_since = time.monotonic()
            last = now
        elif time.monotonic() - steady_since >= SETTLE_SECONDS:
            break
    return peak


def idle_streams(procs: Processes, target: Target, plan: Plan, body: Path) -> dict[str, Any]:
    assert target.server is not None
    pid = target.server.pid
    base = rss_kb(pid)
    argv = [PYTHON, str(BENCH_DIR / "rss.py"), "idle", target.url, target.path, "--body", str(body)]
    argv += ["--steps", ",".join(map(str, plan.rss_steps))]
    if target.api_key:
        argv += ["--api-key", target.api_key]
    client = procs.start(f"rss-idle-{target.server.name}", "1", argv, stdin=True)
    sizes: dict[int, int] = {}
    failed = 0
    try:
        for step in plan.rss_steps:
            line = read_line(client, 300)
            if not line.startswith("READY"):
                raise RuntimeError(f"rss idle client: {line!r}")
            failed = int(line.split("failed=")[1])
            time.sleep(0.5)  # let the last answers' buffers settle
            sizes[step] = rss_kb(pid)
            assert client.popen.stdin is not None
            client.popen.stdin.write("next\n")
            client.popen.stdin.flush()
        read_line(client, 60)
    finally:
        procs.stop(client)
    lo, hi = plan.rss_steps[0], plan.rss_steps[-1]
    return {
        "base_kb": base,
        "at": {str(k): v for k, v in sizes.items()},
        "kb_per_stream_lo": (sizes[lo] - base) / lo,
        "kb_per_stream_hi": (sizes[hi] - sizes[lo]) / (hi - lo) if hi > lo else float("nan"),
        "errors": failed,
    }


def stalled_growth(procs: Processes, target: Target, plan: Plan, body: Path) -> dict[str, Any]:
    assert target.server is not None
    pid = target.server.pid
    base = rss_kb(pid)
    argv = [
        PYTHON,
        str(BENCH_DIR / "rss.py"),
        "stall",
        target.url,
        target.path,
        "--body",
        str(body),
    ]
    argv += ["--clients", str(plan.stall_clients)]
    if target.api_key:
        argv += ["--api-key", target.api_key]
    client = procs.start(f"rss-stall-{target.server.name}", "1", argv, stdin=True)
    try:
        line = read_line(client, 120)
        if not line.startswith("READY"):
            raise RuntimeError(f"rss stall client: {line!r}")
        peak = settle_peak(pid, base)
        assert client.popen.stdin is not None
        client.popen.stdin.write("close\n")
        client.popen.stdin.flush()
        read_line(client, 60)
    finally:
        procs.stop(client)
    return {"base_kb": base, "peak_kb": peak, "kb_per_stream": (peak - base) / plan.stall_clients}


def first_bytes(target: Target, body: bytes) -> None:
    """Start one stream, read its first bytes, hang up (the hold upstream never ends one)."""
    parts = target.url.rsplit(":", 1)
    port = int(parts[1])
    with ttfb.connect("127.0.0.1", port) as sock:
        sock.sendall(ttfb.build_request("127.0.0.1", port, target.path, body, target.api_key))
        if not sock.recv(ttfb.RECV_SIZE).startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{target.name}: warm-up request failed")


def memory_round(procs: Processes, plan: Plan, workdir: Path) -> dict[str, Any]:
    key = proxy.DEFAULT_API_KEY
    body = workdir / "body.json"
    out: dict[str, Any] = {"idle": {}, "stall": {}}
    hold = start_fake(procs, "fake-hold", "1", "paced", HOLD_TICK_MS)
    big = procs.start_server(
        "big-upstream", "1", [PYTHON, str(BENCH_DIR / "rss.py"), "big-upstream"]
    )
    nginx = start_nginx(procs, "nginx-rss", hold.port, big.port)
    try:
        out["idle"]["nginx"] = idle_streams(
            procs, Target("nginx", nginx.url, "/a" + UPSTREAM_PATH, nginx), plan, body
        )
        trees = [("kiro_fast", None)] + [(alt_label(i), p) for i, p in enumerate(plan.compare)]
        for label, path in trees:
            kf = start_kiro(procs, "kiro-hold", "0", hold.url, pythonpath=path)
            target = Target(label, kf.url, KIRO_PATH, kf, key)
            first_bytes(target, body.read_bytes())  # warm-up: first-request setup
            out["idle"][label] = idle_streams(procs, target, plan, body)
            procs.stop(kf)
        for mib in plan.stall_mib:
            stall_body = workdir / f"stall-{mib}.json"
            stall_body.write_bytes(request_body(f"BIGSTREAM:{mib} "))
            out["stall"].setdefault("nginx", {})[str(mib)] = stalled_growth(
                procs, Target("nginx", nginx.url, "/b" + UPSTREAM_PATH, nginx), plan, stall_body
            )
            for label, path in trees:
                kf = start_kiro(procs, f"kiro-big-{mib}", "0", big.url, pythonpath=path)
                ttfb.fetch(kf.url, KIRO_PATH, request_body("BIGSTREAM:0 "), key)
                target = Target(label, kf.url, KIRO_PATH, kf, key)
                out["stall"].setdefault(label, {})[str(mib)] = stalled_growth(
                    procs, target, plan, stall_body
                )
                procs.stop(kf)
    finally:
        for proc in (nginx, big, hold):
            procs.stop(proc)
    return out


# --------------------------------------------------------------------------- one round


def load_round(procs: Processes, rig: Rig, plan: Plan, body_path: Path) -> dict[str, Any]:
    body = body_path.read_bytes()
    fast = [rig.direct_fast, rig.nginx_fast, rig.kiro_fast] + [a[1] for a in rig.alternatives]
    trickle = [rig.direct_paced, rig.nginx_paced, rig.kiro_paced] + [a[2] for a in rig.alternatives]
    for target in fast + trickle:
        check_answer(target, body)
    out: dict[str, Any] = {"fast": {}, "trickle": {}, "ttfb": {}}
    for target in fast:
        out["fast"][target.name] = load_run(
            procs, target, plan.conns, plan.duration, plan.warmup, body_path
        )
    if rig.kiro_workers is not None:
        check_answer(rig.kiro_workers, body)
        out["fast"][rig.kiro_workers.name] = load_run(
            procs,
            rig.kiro_workers,
            plan.conns * plan.workers,
            plan.duration,
            plan.warmup,
            body_path,
        )
    for target in trickle:
        out["trickle"][target.name] = load_run(
            procs, target, plan.trickle_conns, plan.trickle_duration, plan.warmup, body_path
        )
    for target in fast:
        out["ttfb"][target.name] = ttfb_run(procs, target, plan, body_path)
    return out


# --------------------------------------------------------------------------- report

V_DIRECT, V_NGINX, V_KIRO = "direct upstream", "nginx proxy_pass", "kiro_fast 1 worker"


def ratios(round_: dict[str, Any], plan: Plan) -> dict[str, float]:
    fast, trickle, tt, mem = round_["fast"], round_["trickle"], round_["ttfb"], round_["memory"]
    out = {
        "a_streams": fast[V_KIRO]["streams_s"] / fast[V_NGINX]["streams_s"],
        "a_cpu": fast[V_NGINX]["cpu_us_stream"] / fast[V_KIRO]["cpu_us_stream"],
        "b_cpu_event": trickle[V_KIRO]["cpu_us_event"] / trickle[V_NGINX]["cpu_us_event"],
        "c_added_p50": (tt[V_KIRO]["ttfb_p50_us"] - tt[V_DIRECT]["ttfb_p50_us"])
        / (tt[V_NGINX]["ttfb_p50_us"] - tt[V_DIRECT]["ttfb_p50_us"]),
        "c_added_p99": (tt[V_KIRO]["ttfb_p99_us"] - tt[V_DIRECT]["ttfb_p99_us"])
        / (tt[V_NGINX]["ttfb_p99_us"] - tt[V_DIRECT]["ttfb_p99_us"]),
        "d_rss_lo": mem["idle"]["kiro_fast"]["kb_per_stream_lo"]
        / mem["idle"]["nginx"]["kb_per_stream_lo"],
        "d_rss_hi": mem["idle"]["kiro_fast"]["kb_per_stream_hi"]
        / mem["idle"]["nginx"]["kb_per_stream_hi"],
    }
    lo, hi = (str(m) for m in plan.stall_mib)
    stall = mem["stall"]["kiro_fast"]
    out["d_stall_growth"] = stall[hi]["kb_per_stream"] / max(stall[lo]["kb_per_stream"], 1.0)
    for index in range(len(plan.compare)):
        alt = alt_label(index)
        out[f"alt{index + 1}_a_cpu"] = fast[alt]["cpu_us_stream"] / fast[V_KIRO]["cpu_us_stream"]
        out[f"alt{index + 1}_b_cpu"] = (
            trickle[alt]["cpu_us_event"] / trickle[V_KIRO]["cpu_us_event"]
        )
        out[f"alt{index + 1}_c_added"] = (tt[alt]["ttfb_p50_us"] - tt[V_DIRECT]["ttfb_p50_us"]) / (
            tt[V_KIRO]["ttfb_p50_us"] - tt[V_DIRECT]["ttfb_p50_us"]
        )
        out[f"alt{index + 1}_d_rss"] = (
            mem["idle"][alt]["kb_per_stream_hi"] / mem["idle"]["kiro_fast"]["kb_per_stream_hi"]
        )
    workers = f"kiro_fast {plan.workers} workers"
    if workers in fast:
        out["e_workers"] = fast[workers]["streams_s"] / (plan.workers * fast[V_KIRO]["streams_s"])
    return out


def med(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def med_of(rounds: list[dict[str, Any]], *keys: str) -> float:
    values = []
    for round_ in rounds:
        node: Any = round_
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, int | float):
            values.append(float(node))
    return med(values)


def fmt(value: float, spec: str = ",.0f") -> str:
    return "n/a" if value != value else format(value, spec)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def per_round(rounds: list[dict[str, Any]], fn: Callable[[dict[str, Any]], float]) -> float:
    """Median over the rounds of a figure computed within each round."""
    values = []
    for round_ in rounds:
        with contextlib.suppress(KeyError, ZeroDivisionError):
            values.append(fn(round_))
    return med(values)


def ratio(rounds: list[dict[str, Any]], path: Sequence[str], name: str, ref: str) -> float:
    """Median of the per-round ratios ``name / ref`` of the figure at ``path`` (scenario, key)."""
    scenario, key = path
    return per_round(rounds, lambda r: r[scenario][name][key] / r[scenario][ref][key])


FAST_COLUMNS: Final = (
    "variant", "streams/s", "events/s", "p50 ms", "p99 ms", "CPU µs/stream", "CPU µs/event",
    "CPU %", "sys %", "× nginx streams/s", "× nginx (CPU/stream)", "errors",
)  # fmt: skip
TRICKLE_COLUMNS: Final = (
    "variant", "streams/s", "events/s", "p50 ms", "p99 ms", "CPU µs/stream", "CPU µs/event",
    "CPU %", "sys %", "× nginx CPU/event", "events/s per core", "errors",
)  # fmt: skip
TTFB_COLUMNS: Final = (
    "variant", "TTFB p50", "TTFB p99", "whole p50", "whole p99", "added p50", "added p99",
    "× nginx added p50", "errors",
)  # fmt: skip


def load_row(rounds: list[dict[str, Any]], scenario: str, name: str) -> list[str]:
    """The columns A and B share, for one variant."""

    def g(key: str) -> float:
        return med_of(rounds, scenario, name, key)

    return [
        name, fmt(g("streams_s")), fmt(g("events_s")), fmt(g("p50_ms"), ".2f"),
        fmt(g("p99_ms"), ".2f"), fmt(g("cpu_us_stream"), ".1f"), fmt(g("cpu_us_event"), ".2f"),
        fmt(g("cpu_pct")), fmt(g("sys_pct")),
    ]  # fmt: skip


def section_fast(rounds: list[dict[str, Any]], plan: Plan, names: list[str]) -> str:
    rows = []
    for name in names:
        streams = ratio(rounds, ("fast", "streams_s"), name, V_NGINX)
        per_core = 1 / ratio(rounds, ("fast", "cpu_us_stream"), name, V_NGINX)
        errors = med_of(rounds, "fast", name, "errors")
        rows.append(
            [
                *load_row(rounds, "fast", name),
                fmt(streams, ".3f"),
                fmt(per_core, ".3f"),
                fmt(errors),
            ]
        )
    title = (
        f"A. fast upstream (all 50 frames in one write), c={plan.conns} "
        f"({plan.conns}×N for N workers), {plan.duration} s"
    )
    return f"\n{title}\n{table(FAST_COLUMNS, rows)}"


def section_trickle(rounds: list[dict[str, Any]], plan: Plan, names: list[str]) -> str:
    rows = []
    for name in names:
        cpu = ratio(rounds, ("trickle", "cpu_us_event"), name, V_NGINX)
        capacity = 1e6 / med_of(rounds, "trickle", name, "cpu_us_event")
        errors = med_of(rounds, "trickle", name, "errors")
        rows.append(
            [*load_row(rounds, "trickle", name), fmt(cpu, ".2f"), fmt(capacity), fmt(errors)]
        )
    title = (
        f"B. trickle (one frame per stream per {plan.tick_ms:g} ms tick), "
        f"c={plan.trickle_conns}, {plan.trickle_duration} s"
    )
    return f"\n{title}\n{table(TRICKLE_COLUMNS, rows)}"


def added_ttfb(round_: dict[str, Any], name: str, key: str = "ttfb_p50_us") -> float:
    """Time to first byte ``name`` adds over the direct upstream, in one round."""
    return float(round_["ttfb"][name][key] - round_["ttfb"][V_DIRECT][key])


def section_ttfb(rounds: list[dict[str, Any]], plan: Plan, names: list[str]) -> str:
    rows = []
    for name in names:

        def g(key: str, n: str = name) -> float:
            return med_of(rounds, "ttfb", n, key)

        cells = [name, fmt(g("ttfb_p50_us")), fmt(g("ttfb_p99_us"))]
        cells += [fmt(g("total_p50_us")), fmt(g("total_p99_us"))]
        if name == V_DIRECT:
            cells += ["-", "-", "-"]
        else:
            add50 = per_round(rounds, lambda r, n=name: added_ttfb(r, n))  # type: ignore[misc]
            add99 = per_round(rounds, lambda r, n=name: added_ttfb(r, n, "ttfb_p99_us"))  # type: ignore[misc]
            times = per_round(rounds, lambda r, n=name: added_ttfb(r, n) / added_ttfb(r, V_NGINX))  # type: ignore[misc]
            cells += [fmt(add50, "+,.0f"), fmt(add99, "+,.0f"), fmt(times, ".2f")]
        rows.append([*cells, fmt(g("errors"))])
    title = f"C. time to first byte at c=1, fast upstream, {plan.ttfb_count} requests (µs)"
    return f"\n{title}\n{table(TTFB_COLUMNS, rows)}"


def section_idle(rounds: list[dict[str, Any]], plan: Plan, names: list[str]) -> str:
    lo, hi = plan.rss_steps[0], plan.rss_steps[-1]
    rows = []
    for name in names:

        def g(*keys: str, n: str = name) -> float:
            return med_of(rounds, "memory", "idle", n, *keys)

        def vs_nginx(key: str, n: str = name) -> float:
            def one(r: dict[str, Any]) -> float:
                idle = r["memory"]["idle"]
                return float(idle[n][key] / idle["nginx"][key])

            return per_round(rounds, one)

        rows.append([
            name, fmt(g("base_kb") / 1024, ".1f"), fmt(g("at", str(lo)) / 1024, ".1f"),
            fmt(g("at", str(hi)) / 1024, ".1f"), fmt(g("kb_per_stream_lo"), ".1f"),
            fmt(g("kb_per_stream_hi"), ".1f"), fmt(vs_nginx("kb_per_stream_lo"), ".2f"),
            fmt(vs_nginx("kb_per_stream_hi"), ".2f"), fmt(g("errors")),
        ])  # fmt: skip
    columns = [
        "server", "RSS before MB", f"at {lo:,} MB", f"at {hi:,} MB", f"KB/stream 0→{lo:,}",
        f"KB/stream {lo:,}→{hi:,}", f"× nginx 0→{lo:,}", f"× nginx {lo:,}→{hi:,}", "open errors",
    ]  # fmt: skip
    title = "D1. RSS of idle open streams (first event read, then no reading; upstream holds)"
    return f"\n{title}\n{table(columns, rows)}"


def stall_growth(round_: dict[str, Any], name: str, plan: Plan) -> float:
    """RSS growth per stalled stream, longer streams over shorter ones."""
    stall = round_["memory"]["stall"][name]
    lo, hi = (str(m) for m in plan.stall_mib)
    return float(stall[hi]["kb_per_stream"] / max(stall[lo]["kb_per_stream"], 1.0))


def section_stall(rounds: list[dict[str, Any]], plan: Plan, names: list[str]) -> str:
    lo, hi = (str(m) for m in plan.stall_mib)
    rows = []
    for name in names:
        growth = per_round(rounds, lambda r, n=name: stall_growth(r, n, plan))  # type: ignore[misc]
        at_lo = med_of(rounds, "memory", "stall", name, lo, "kb_per_stream")
        at_hi = med_of(rounds, "memory", "stall", name, hi, "kb_per_stream")
        rows.append([name, fmt(at_lo), fmt(at_hi), fmt(growth, ".2f")])
    title = (
        f"D2. stalled readers: {plan.stall_clients} clients (16 KiB receive buffer) that never "
        "read; RSS growth per stream (KB)"
    )
    columns = ["server", f"{lo} MiB streams", f"{hi} MiB streams", f"{hi} / {lo} MiB"]
    return f"\n{title}\n{table(columns, rows)}"


def section_alternatives(rmed: dict[str, float], alts: list[str]) -> str:
    lines = []
    for index, label in enumerate(alts):
        keys = [f"alt{index + 1}_{k}" for k in ("a_cpu", "b_cpu", "c_added", "d_rss")]
        a, b, c, d = (fmt(rmed.get(k, float("nan")), ".3f") for k in keys)
        lines.append(
            f"\n{label} / kiro_fast (medians of per-round ratios; below 1 is better): "
            f"CPU/stream fast {a}, CPU/event trickle {b}, added TTFB p50 {c}, RSS/idle stream {d}"
        )
    return "\n".join(lines)


def target_checks(rounds: list[dict[str, Any]], plan: Plan, rmed: dict[str, float]) -> list[Any]:
    """(label, value, met) per target; met is None for information and n/a."""
    lo, hi = plan.rss_steps[0], plan.rss_steps[-1]
    m_lo, m_hi = plan.stall_mib
    nginx_cpu = med_of(rounds, "fast", V_NGINX, "cpu_pct")
    bound = ": upstream-bound, not a per-core figure" if nginx_cpu < 90 else ""
    stall = f"(d) stalled: growth flat in length ({m_hi}/{m_lo} MiB ≤ 1.25)"
    raw = f"    raw streams/s ratio (nginx at {nginx_cpu:.0f}% CPU{bound})"
    workers = f"(e) {plan.workers} workers ≥ 0.8·N× one worker"
    checks: list[Any] = [
        ("(a) fast: streams/s per core (1/CPU per stream) ≥ 0.08× nginx", rmed["a_cpu"], 0.08, 1),
        (raw, rmed["a_streams"], None, 0),
        ("(b) trickle: CPU per event ≤ 2.5× nginx", rmed["b_cpu_event"], 2.5, -1),
        ("(c) added TTFB p50 at c=1 ≤ 6× nginx's", rmed["c_added_p50"], 6.0, -1),
        (f"(d) RSS per idle stream ≤ 1.2× nginx at 0→{lo:,}", rmed["d_rss_lo"], 1.2, -1),
        (f"(d) RSS per idle stream ≤ 1.2× nginx at {lo:,}→{hi:,}", rmed["d_rss_hi"], 1.2, -1),
        (stall, rmed["d_stall_growth"], 1.25, -1),
        (workers, rmed.get("e_workers", float("nan")), 0.8, 1),
    ]
    if (os.cpu_count() or 1) < plan.workers + 1:
        # N workers and the load generator then share cores: (e) is not measurable here.
        checks[-1] = (workers + f" (needs {plan.workers + 1}+ cores)", checks[-1][1], None, 0)
    out = []
    for label, value, limit, sense in checks:
        met = None if limit is None or value != value else (value - limit) * sense >= 0
        out.append((label, value, met))
    return out


def report(results: dict[str, Any], plan: Plan, out: Callable[[str], None]) -> bool:
    rounds, meta = results["rounds"], results["meta"]
    alts = [alt_label(i) for i in range(len(plan.compare))]
    out(f"kiro_fast end-to-end benchmark: {len(rounds)} round(s); medians, and medians of")
    out("per-round ratios. Server under test on CPU 0; wrk, clients and the proxies' upstream")
    out("on CPU 1; server CPU = utime + stime of its process tree, from procfs.")
    out(f"{meta['date']}, commit {meta['commit']}, {meta['cpu']} ×{meta['cpus']}")
    out(f"Python {meta['python']}, decoder {meta['decoder']}, {meta['nginx']}, {meta['wrk']}")
    out(f"kiro_fast from {meta['kiro_fast_path']}; pinning {'on' if meta['pinned'] else 'OFF'}")
    out(f"load average (1 min, whole machine): {meta.get('loadavg', '?')}")
    for label, path in zip(alts, plan.compare, strict=True):
        out(f"{label}: kiro_fast from {path}")
    workers = f"kiro_fast {plan.workers} workers"
    out(section_fast(rounds, plan, [V_DIRECT, V_NGINX, V_KIRO, *alts, workers]))
    out(section_trickle(rounds, plan, [V_DIRECT, V_NGINX, V_KIRO, *alts]))
    out(section_ttfb(rounds, plan, [V_DIRECT, V_NGINX, V_KIRO, *alts]))
    out(section_idle(rounds, plan, ["nginx", "kiro_fast", *alts]))
    out(section_stall(rounds, plan, ["nginx", "kiro_fast", *alts]))
    per_round_ratios = [r["ratios"] for r in rounds]
    keys = list(per_round_ratios[0])
    rmed = {k: med([p[k] for p in per_round_ratios if k in p]) for k in keys}
    out("\nPer-round ratios:")
    for key in (k for k in keys if not k.startswith("alt")):
        out(
            f"  {key:<16} "
            + ", ".join(fmt(p.get(key, float("nan")), ".3f") for p in per_round_ratios)
        )
    if alts:
        out(section_alternatives(rmed, alts))
    out("\nTargets (issue 8 item 7):")
    for label, value, met in target_checks(rounds, plan, rmed):
        if met is None:
            verdict = "(information)" if label.startswith(" ") else "n/a"
            if label.startswith("(e)") and value != value:
                verdict = "n/a (kiro-fast has no --workers)"
        else:
            verdict = "met" if met else "NOT met"
        out(f"  {label:<66} {fmt(value, '.3f'):>7}  {verdict}")
    out(f"\nerrors: {results['errors']}")
    return bool(results["errors"] == 0)


# --------------------------------------------------------------------------- main


def loadavg() -> str:
    """The 1-minute load average: other work on the machine shows here."""
    with contextlib.suppress(OSError), open("/proc/loadavg") as fh:
        return fh.read().split()[0]
    return "?"


def tree_commit(tree: Path) -> str:
    """The commit of the kiro_fast under test, ``+dirty`` with local changes to it.

    A tree that is no git checkout (an exported snapshot) may name its commit in a
    ``COMMIT`` file.
    """

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        argv = ["git", "-C", str(tree), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode == 0:
            dirty = git("status", "--porcelain", "--", "kiro_fast").stdout.strip()
            return head.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        pass
    marker = tree / "COMMIT"
    return marker.read_text().strip()[:12] if marker.is_file() else "unknown"


def meta(pinned: bool) -> dict[str, Any]:
    def run(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        models = (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
        cpu = next(models, "?")
    from kiro_fast.eventstream import IMPLEMENTATION  # noqa: PLC0415

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": tree_commit(
            Path(sys.modules["kiro_fast"].__file__ or ".").resolve().parent.parent
        ),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "decoder": IMPLEMENTATION,
        "nginx": run([NGINX, "-v"]),
        "wrk": run([WRK, "-v"]).split(" Copyright")[0],
        "pinned": pinned,
        "loadavg": loadavg(),
        "kiro_fast_path": str(Path(sys.modules["kiro_fast"].__file__ or "?").parent),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/e2e.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run under a minute")
    parser.add_argument("--duration", type=int, help="seconds per fast-upstream run (5)")
    parser.add_argument("--warmup", type=int, help="seconds of discarded load before each run (1)")
    parser.add_argument("--conns", type=int, default=16, help="connections, fast upstream")
    parser.add_argument("--trickle-duration", type=int, help="seconds per trickle run (8)")
    parser.add_argument("--trickle-conns", type=int, default=64)
    parser.add_argument("--tick-ms", type=float, default=2.0)
    parser.add_argument("--ttfb-count", type=int, help="timed requests at c=1 (3000)")
    parser.add_argument("--rss-steps", help="open idle streams, comma-separated (1000,5000)")
    parser.add_argument("--stall-clients", type=int, help="stalled readers (50)")
    parser.add_argument(
        "--stall-mib",
        help="two stream lengths in MiB (8,32): both well past what kernel buffers absorb",
    )
    parser.add_argument("--workers", type=int, help="N for the N-worker variant (cores)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="TREE",
        help="also run kiro_fast from this source tree (PYTHONPATH), as altN rows; repeatable",
    )
    return parser.parse_args(argv)


def missing_tools() -> list[str]:
    return [tool for tool in (NGINX, WRK) if not os.access(tool, os.X_OK)]


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally-blocks stop every process."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(plan: Plan, workdir: Path) -> dict[str, Any]:
    pinned = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    procs = Processes(workdir, pinned)
    body_path = workdir / "body.json"
    body_path.write_bytes(request_body())
    results: dict[str, Any] = {
        "meta": meta(pinned),
        "plan": plan.__dict__,
        "rounds": [],
        "errors": 0,
    }
    try:
        rig = start_rig(procs, plan)
        for number in range(1, plan.rounds + 1):
            print(f"round {number}/{plan.rounds} …", file=sys.stderr, flush=True)
            round_ = load_round(procs, rig, plan, body_path)
            round_["memory"] = memory_round(procs, plan, workdir)
            round_["ratios"] = ratios(round_, plan)
            results["rounds"].append(round_)
    finally:
        procs.stop_all()
    results["errors"] = count_errors(results["rounds"])
    results["meta"]["loadavg"] += f" at the start, {loadavg()} at the end"
    return results


def count_errors(rounds: list[dict[str, Any]]) -> int:
    total = 0
    for round_ in rounds:
        for scenario in ("fast", "trickle", "ttfb"):
            total += int(sum(v["errors"] for v in round_[scenario].values()))
        total += int(sum(v["errors"] for v in round_["memory"]["idle"].values()))
    return total


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(
            f"bench/e2e.py needs {', '.join(missing)} (apt-get install nginx wrk)", file=sys.stderr
        )
        return 2
    plan = make_plan(args)
    with terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="kf-e2e-") as tmp:
        try:
            results = run(plan, Path(tmp))
        except KeyboardInterrupt:
            print("interrupted; every process was stopped", file=sys.stderr)
            return 130
        except Exception:
            for log in sorted(Path(tmp).glob("*.log")):
                text = log.read_text()[-2000:]
                if text.strip():
                    print(f"--- {log.name}\n{text}", file=sys.stderr)
            raise
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    ok = report(results, plan, print)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
