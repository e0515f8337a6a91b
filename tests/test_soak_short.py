"""The soak in miniature: ``bench/soak.py`` for 30 seconds, as CI can afford.

200 concurrent streams through kiro_fast and the paced fake upstream (both in their own
processes), 10 % of them cut by the client at a random moment. What a user relies on:
every stream that was not cut ends complete, kiro_fast answers nothing unexpected and logs
no ERROR, and once the clients are gone it holds no client socket, no half-closed socket
and no descriptor beyond its pooled upstream connections, with its memory flat after the
warm-up. The long run (1,000 streams, 10 minutes) is ``bench/soak.py``'s default.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 200
SECONDS = 30
#: 50 frames a stream at 100 ms: 5 s streams, so each client runs several in 30 s.
TICK_MS = 100
WARMUP = 10
DISCONNECT_RATE = 0.1
#: The long run's bound; 30 seconds after a 10-second warm-up measured well inside it.
RSS_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("soak")
    command = [
        sys.executable,
        str(ROOT / "bench" / "soak.py"),
        f"--streams={STREAMS}",
        f"--seconds={SECONDS}",
        f"--tick-ms={TICK_MS}",
        f"--warmup={WARMUP}",
        f"--disconnect-rate={DISCONNECT_RATE}",
        f"--rss-tolerance={RSS_TOLERANCE}",
        "--sample=2",
        f"--log={out / 'logs'}",
        f"--json-out={out / 'report.json'}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=ROOT)
    print(done.stdout)
    assert (out / "report.json").exists(), done.stderr[-3000:]
    data: dict[str, object] = json.loads((out / "report.json").read_text())
    data["exit_status"] = done.returncode
    return data


def test_no_stream_ends_unexpectedly(report: dict[str, object]) -> None:
    assert report["unexpected"] == 0, report["unexpected_kinds"]
    assert report["server_error_lines"] == 0


def test_the_load_really_ran(report: dict[str, object]) -> None:
    completed = report["completed"]
    disconnected = report["disconnected"]
    assert isinstance(completed, int) and isinstance(disconnected, int)
    # each client runs at least one 5-second stream after its staggered start
    assert completed >= STREAMS
    assert disconnected > 0


def test_connections_and_descriptors_come_back(report: dict[str, object]) -> None:
    assert report["client_sockets_end"] == 0
    assert report["close_wait_end"] == 0
    assert report["upstream_unread_end"] == 0
    fds_end, pooled, baseline = (
        report["fds_end"],
        report["upstream_sockets_end"],
        report["fds_baseline"],
    )
    assert isinstance(fds_end, int) and isinstance(pooled, int) and isinstance(baseline, int)
    assert fds_end - pooled <= baseline
    assert pooled <= STREAMS  # one pooled connection at most per concurrent stream


def test_memory_is_flat_after_warmup(report: dict[str, object]) -> None:
    growth = report["rss_growth"]
    assert isinstance(growth, float)
    assert growth <= RSS_TOLERANCE


def test_the_soak_command_passes(report: dict[str, object]) -> None:
    assert report["passed"] is True
    assert report["exit_status"] == 0
