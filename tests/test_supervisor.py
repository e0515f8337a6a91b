"""Worker processes: real ``kiro-fast serve --workers N`` processes on one loopback port.

N workers serve the same port; a worker killed with SIGKILL is restarted while requests
keep succeeding; SIGTERM lets a stream in flight finish; SIGHUP swaps in a generation with
the new configuration without dropping a stream; a configuration that cannot start makes
the supervisor give up loudly. The single-process server reloads in place on SIGHUP too.
The fake upstream runs in this process, so tests hold a stream (``stall``) and release it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from proc_harness import (
    REFRESH_TOKEN,
    FakeThread,
    KiroProcess,
    SSEReader,
    add_default_account,
    messages_body,
    pid_alive,
    request,
    text_of,
    wait_until,
    write_files,
)

from kiro_fast import supervisor
from kiro_fast.config import build_config
from kiro_fast.supervisor import MAX_START_FAILURES, Supervisor, backoff

KEY = "sk-supervisor-key-one"
NEW_KEY = "sk-supervisor-key-two"
STREAM_TEXT = "A stream that waits for the test to let it finish, then ends normally."


@pytest.fixture
def fake() -> Iterator[FakeThread]:
    thread = FakeThread().start()
    add_default_account(thread)
    yield thread
    thread.stop()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., KiroProcess]]:
    started: list[KiroProcess] = []

    def run(*args: str) -> KiroProcess:
        process = KiroProcess(["serve", "--log-format", "json", *args], cwd=tmp_path)
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()
        for pid in worker_pids(process):  # nothing may outlive the test
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"worker {pid} outlived its supervisor")


def worker_pids(process: KiroProcess) -> set[int]:
    return {r["worker_pid"] for r in process.records() if "worker_pid" in r}


def is_ready(generation: int = 1) -> Callable[[dict[str, Any]], bool]:
    def check(record: dict[str, Any]) -> bool:
        message: str = record["msg"]
        suffix = f"of generation {generation} ready (pid {record.get('worker_pid')})"
        return message.startswith("worker ") and message.endswith(suffix)

    return check


def auth(key: str = KEY) -> dict[str, str]:
    return {"x-api-key": key, "content-type": "application/json"}


def supervise(
    start: Callable[..., KiroProcess], tmp_path: Path, fake: FakeThread, workers: int
) -> tuple[KiroProcess, int, dict[int, int], Path]:
    config, credentials = write_files(tmp_path, fake.url, api_key=KEY)
    process = start("-c", str(config), "--credentials", str(credentials), "--workers", str(workers))
    (ready,) = process.wait_record(lambda r: r["msg"].startswith("supervisor ready"))
    ready_workers = process.wait_record(is_ready(1), count=workers)
    pids = {r["worker_pid"]: r["worker"] for r in ready_workers}
    assert len(pids) == workers
    return process, ready["port"], pids, config


def served_by(process: KiroProcess, request_id: str) -> dict[str, Any]:
    (record,) = process.wait_record(
        lambda r: r["logger"] == "kiro_fast.access" and r["request_id"] == request_id
    )
    return record


def ok_request(port: int, key: str = KEY) -> str:
    status, headers, body = request(port, "POST", "/v1/messages", messages_body("hi"), auth(key))
    assert status == 200, body
    assert orjson.loads(body)["type"] == "message"
    return headers["x-request-id"]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def stalled_stream(port: int, fake: FakeThread, key: str = KEY) -> tuple[SSEReader, list[Any]]:
    """A stream whose first events arrived while the fake holds back the rest."""
    directive = orjson.dumps({"scenario": "stall", "after": 2, "text": STREAM_TEXT}).decode()
    body = messages_body(f"go [[fake:{directive}]]", stream=True)
    stream = SSEReader(port, "/v1/messages", body, auth(key))
    assert stream.status == 200
    first = stream.until("content_block_delta")
    fake.wait_stalled(1)
    return stream, first


# --------------------------------------------------------------------------- supervised workers


def test_workers_share_one_port_and_each_serves(start, tmp_path, fake) -> None:
    process, port, pids, _ = supervise(start, tmp_path, fake, 2)
    assert all(parent_of(pid) == process.proc.pid for pid in pids)
    served: set[int] = set()
    # SO_REUSEPORT spreads connections by hash: both workers show up long before 200 tries
    # (the chance that they do not is 2**-199).
    for _ in range(200):
        served.add(served_by(process, ok_request(port))["worker"])
        if len(served) == 2:
            break
    assert served == {1, 2}
    process.signal(signal.SIGTERM)
    assert process.wait_exit() == 0
    assert not any(pid_alive(pid) for pid in pids)


def test_workers_refresh_a_rotating_token_once(start, tmp_path, fake) -> None:
    """No access token yet: whichever worker serves first refreshes; the other one finds
    the rotated token in the shared state store instead of refreshing the dead one."""
    config, credentials = write_files(
        tmp_path,
        fake.url,
        api_key=KEY,
        credentials=[{"refreshToken": REFRESH_TOKEN, "authMethod": "social"}],
    )
    process = start("-c", str(config), "--credentials", str(credentials), "--workers", "2")
    (ready,) = process.wait_record(lambda r: r["msg"].startswith("supervisor ready"))
    served: set[int] = set()
    for _ in range(200):
        served.add(served_by(process, ok_request(ready["port"]))["worker"])
        if len(served) == 2:
            break
    assert served == {1, 2}
    assert fake.call(lambda: fake.fake.accounts.social_refresh_count) == 1
    process.signal(signal.SIGTERM)
    assert process.wait_exit() == 0


def test_a_killed_worker_is_restarted_and_requests_keep_succeeding(start, tmp_path, fake) -> None:
    process, port, pids, _ = supervise(start, tmp_path, fake, 2)
    victim = next(pid for pid, slot in pids.items() if slot == 1)
    ok_request(port)
    os.kill(victim, signal.SIGKILL)
    # Reaped, not merely a zombie leader: a multi-threaded process's listening socket
    # stays open until its last thread is gone, and connections the kernel queued on it
    # meanwhile are reset when it closes (SO_REUSEPORT does not migrate them by default;
    # docs/deploy.md). The supervisor logs the exit only once the whole process is gone.
    (restart,) = process.wait_record(lambda r: "exited unexpectedly" in r["msg"])
    for _ in range(5):  # one worker left: every request still succeeds
        ok_request(port)
    assert restart["worker_pid"] == victim and restart["worker"] == 1
    assert restart["status"] == -signal.SIGKILL
    (replacement,) = process.wait_record(
        lambda r: is_ready(1)(r) and r["worker"] == 1 and r["worker_pid"] != victim
    )
    assert pid_alive(replacement["worker_pid"])
    assert parent_of(replacement["worker_pid"]) == process.proc.pid
    served: set[int] = set()
    for _ in range(200):
        served.add(served_by(process, ok_request(port))["worker"])
        if len(served) == 2:
            break
    assert served == {1, 2}
    process.signal(signal.SIGTERM)
    assert process.wait_exit() == 0


def test_sigterm_lets_a_stream_in_flight_finish(start, tmp_path, fake) -> None:
    process, port, pids, _ = supervise(start, tmp_path, fake, 2)
    stream, first = stalled_stream(port, fake)
    process.signal(signal.SIGTERM)
    # The worker holding the stream has closed its listener and waits for the stream.
    (busy,) = process.wait_record(lambda r: r["msg"].startswith("shutting down: waiting up to"))
    # A service manager may signal the whole group (systemd's default KillMode): the
    # worker keeps draining.
    os.kill(busy["worker_pid"], signal.SIGTERM)
    process.wait_record(lambda r: r["msg"].startswith("SIGTERM again: still draining"))
    assert process.proc.poll() is None
    assert fake.release() == 1
    rest = stream.until("message_stop")
    assert text_of(first + rest) == STREAM_TEXT
    assert rest[-2][1]["delta"]["stop_reason"] == "end_turn"
    stream.close()
    assert process.wait_exit() == 0
    assert not any(pid_alive(pid) for pid in pids)


def test_sighup_swaps_generations_without_dropping_a_stream(start, tmp_path, fake) -> None:
    process, port, old_pids, config_path = supervise(start, tmp_path, fake, 2)
    stream, first = stalled_stream(port, fake)
    config = orjson.loads(config_path.read_bytes())
    config_path.write_bytes(orjson.dumps({**config, "apiKey": NEW_KEY}))
    process.signal(signal.SIGHUP)
    process.wait_record(lambda r: r["msg"] == "reloaded: generation 2 serves, generation 1 drains")
    new_pids = {r["worker_pid"] for r in process.records() if is_ready(2)(r)}
    assert len(new_pids) == 2 and not new_pids & set(old_pids)

    def old_listeners_closed() -> bool:
        draining = {
            r.get("worker_pid")
            for r in process.records()
            if r["msg"].startswith("shutting down: waiting up to")
        }
        return all(pid in draining or not pid_alive(pid) for pid in old_pids)

    wait_until(old_listeners_closed, what="generation 1 stopped listening")
    ok_request(port, NEW_KEY)
    status, _, body = request(port, "POST", "/v1/messages", messages_body("hi"), auth(KEY))
    assert status == 401, body
    # The stream started before the reload is still open, on its old worker.
    assert any(pid_alive(pid) for pid in old_pids)
    assert fake.release() == 1
    rest = stream.until("message_stop")
    assert text_of(first + rest) == STREAM_TEXT
    stream.close()
    wait_until(lambda: not any(pid_alive(pid) for pid in old_pids), what="generation 1 exits")
    assert all(pid_alive(pid) for pid in new_pids)
    process.signal(signal.SIGTERM)
    assert process.wait_exit() == 0


def test_workers_exit_when_the_supervisor_is_killed(start, tmp_path, fake) -> None:
    process, port, pids, _ = supervise(start, tmp_path, fake, 2)
    ok_request(port)
    process.signal(signal.SIGKILL)
    assert process.wait_exit() == -signal.SIGKILL
    # Their link to the supervisor closed: they drain and exit instead of lingering.
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), what="orphaned workers exit")
    gone = [r for r in process.records() if r["msg"] == "supervisor gone: shutting down"]
    assert {r["worker_pid"] for r in gone} == set(pids)


def test_a_bad_reload_keeps_the_running_generation(start, tmp_path, fake) -> None:
    process, port, pids, config_path = supervise(start, tmp_path, fake, 1)
    config_path.write_text("{not json")
    process.signal(signal.SIGHUP)
    process.wait_record(lambda r: r["msg"].startswith("reload failed:"))
    assert all(pid_alive(pid) for pid in pids)
    ok_request(port)
    process.signal(signal.SIGTERM)
    assert process.wait_exit() == 0


def test_workers_that_cannot_start_make_the_supervisor_give_up(start, tmp_path, fake) -> None:
    config, credentials = write_files(tmp_path, fake.url, api_key=KEY)
    config.write_bytes(orjson.dumps({**orjson.loads(config.read_bytes()), "apiKey": None}))
    process = start("-c", str(config), "--credentials", str(credentials), "--workers", "2")
    assert process.wait_exit() == 1
    (critical,) = [r for r in process.records() if r["level"] == "critical"]
    assert critical["msg"].startswith("workers cannot start")
    assert any("apiKey is required" in line for line in process.lines)
    assert not any(pid_alive(pid) for pid in worker_pids(process))


def test_crash_loop_at_start_retries_with_backoff_then_gives_up(monkeypatch, caplog) -> None:
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_BASE", 0.01)
    config = build_config({"port": 0}, environ={})
    commands: list[list[str]] = []

    def command(host: str, port: int, fd: int) -> list[str]:
        commands.append([host, str(port), str(fd)])
        return [sys.executable, "-c", "raise SystemExit(3)"]

    sup = Supervisor(config, 2, command=command, reload_config=lambda: config)
    assert asyncio.run(sup.run()) == 1
    assert len(commands) == 2 * MAX_START_FAILURES
    assert {c[0] for c in commands} == {"127.0.0.1"}
    assert len({c[1] for c in commands}) == 1 and commands[0][1] != "0"  # port 0 resolved once
    retries = [r for r in caplog.records if "did not start (attempt" in r.getMessage()]
    assert len(retries) == MAX_START_FAILURES - 1
    assert [r.levelname for r in caplog.records if "giving up" in r.getMessage()] == ["CRITICAL"]


def test_workers_that_die_and_cannot_come_back_make_the_supervisor_give_up(
    monkeypatch, caplog, tmp_path
) -> None:
    """Each worker listens once, dies, and every restart fails before listening."""
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_BASE", 0.01)
    caplog.set_level(logging.INFO, logger="kiro_fast.supervisor")
    script = (
        "import os, socket, sys\n"
        f"marker = {str(tmp_path)!r} + '/started-' + os.environ['KIRO_FAST_WORKER']\n"
        "if os.path.exists(marker): sys.exit(4)\n"
        "open(marker, 'w').close()\n"
        "socket.socket(fileno=int(sys.argv[1])).send(b'R')\n"
        "sys.exit(1)\n"
    )
    spawned: list[int] = []

    def command(host: str, port: int, fd: int) -> list[str]:
        spawned.append(fd)
        return [sys.executable, "-c", script, str(fd)]

    config = build_config({"port": 0}, environ={})
    sup = Supervisor(config, 2, command=command, reload_config=lambda: config)
    assert asyncio.run(sup.run()) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("supervisor ready: 2 workers") for m in messages)
    assert sum("exited unexpectedly with status 1" in m for m in messages) == 2
    assert sum("exited with status 4 before it was ready" in m for m in messages) >= 10
    assert len(spawned) >= 2 + 2 * MAX_START_FAILURES
    critical = [r.getMessage() for r in caplog.records if r.levelname == "CRITICAL"]
    assert critical == [
        f"every worker fails at start ({MAX_START_FAILURES} times in a row): "
        "giving up; see the errors above"
    ]


def test_backoff_doubles_up_to_a_cap() -> None:
    assert backoff(0) == 0.0
    assert [backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff(50) == 30.0


# --------------------------------------------------------------------------- one process


def test_single_process_reloads_in_place_on_sighup(start, tmp_path, fake) -> None:
    config_path, credentials = write_files(tmp_path, fake.url, api_key=KEY)
    process = start("-c", str(config_path), "--credentials", str(credentials))
    (listening,) = process.wait_record(lambda r: r["msg"].startswith("listening on http://"))
    port = int(re.search(r":(\d+)$", listening["msg"]).group(1))  # type: ignore[union-attr]
    stream, first = stalled_stream(port, fake)
    config = orjson.loads(config_path.read_bytes())
    config_path.write_bytes(orjson.dumps({**config, "apiKey": NEW_KEY}))
    process.signal(signal.SIGHUP)
    process.wait_record(lambda r: r["msg"].startswith("reloaded: the previous runtime finishes"))
    process.wait_record(lambda r: r["msg"].startswith("shutting down: waiting up to"))
    ok_request(port, NEW_KEY)
    status, _, _ = request(port, "POST", "/v1/messages", messages_body("hi"), auth(KEY))
    assert status == 401
    assert fake.release() == 1
    rest = stream.until("message_stop")
    assert text_of(first + rest) == STREAM_TEXT
    stream.close()
    process.signal(signal.SIGTERM)
    assert process.wait_exit() == 0
