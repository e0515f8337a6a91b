"""The end-to-end benchmark harness (``bench/e2e.py``) runs and reports, at the smallest size.

One round of every scenario with 2 connections, 1-second load runs, 20 timed requests at
c=1, 20 idle streams and 2 stalled readers: enough to prove that every process starts,
every variant relays the whole canned answer, the figures are well formed and every
process is stopped. No timing is asserted.

Skipped when wrk or nginx is missing, unless ``KIRO_FAST_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
E2E = ROOT / "bench" / "e2e.py"
VARIANTS = ("direct upstream", "nginx proxy_pass", "kiro_fast 1 worker")
SECTIONS = (
    "A. fast upstream",
    "B. trickle",
    "C. time to first byte",
    "D1. RSS of idle open streams",
    "D2. stalled readers",
    "Targets (issue 8 item 7):",
)


def tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return None


MISSING = [name for name in ("wrk", "nginx", "taskset") if tool(name) is None]
if MISSING:
    if os.environ.get("KIRO_FAST_REQUIRE_ALL") == "1":
        raise RuntimeError(f"{', '.join(MISSING)} required (KIRO_FAST_REQUIRE_ALL=1)")
    pytest.skip(f"{', '.join(MISSING)} not installed", allow_module_level=True)

TINY = [
    "--rounds", "1", "--duration", "1", "--warmup", "0", "--conns", "2",
    "--trickle-duration", "1", "--trickle-conns", "2", "--ttfb-count", "20",
    "--rss-steps", "10,20", "--stall-clients", "2", "--stall-mib", "1,2",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("e2e") / "results.json"
    done = subprocess.run(
        [sys.executable, str(E2E), *TINY, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done.stdout, json.loads(out.read_text())


def finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_every_variant_served_streams_without_errors(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, results = tiny_run
    assert results["errors"] == 0
    (round_,) = results["rounds"]
    for scenario in ("fast", "trickle"):
        for name in VARIANTS:
            figures = round_[scenario][name]
            assert figures["errors"] == 0, (scenario, name)
            assert figures["streams"] >= 1, (scenario, name)
            assert finite_positive(figures["cpu_us_stream"]), (scenario, name, figures)
    for name in VARIANTS:
        timing = round_["ttfb"][name]
        assert timing["errors"] == 0 and timing["requests"] == 20
        assert 0 < timing["ttfb_p50_us"] <= timing["total_p50_us"]


@pytest.mark.slow
def test_memory_figures_cover_every_step(tiny_run: tuple[str, dict[str, Any]]) -> None:
    _, results = tiny_run
    (round_,) = results["rounds"]
    for server in ("nginx", "kiro_fast"):
        idle = round_["memory"]["idle"][server]
        assert idle["errors"] == 0
        assert set(idle["at"]) == {"10", "20"}
        assert all(finite_positive(kb) for kb in idle["at"].values())
        assert set(round_["memory"]["stall"][server]) == {"1", "2"}


@pytest.mark.slow
def test_table_has_every_section_and_target(tiny_run: tuple[str, dict[str, Any]]) -> None:
    table, _ = tiny_run
    for section in SECTIONS:
        assert section in table
    for variant in VARIANTS:
        assert variant in table
    targets = table.split("Targets (issue 8 item 7):", 1)[1]
    for label in ("(a)", "(b)", "(c)", "(d)", "(e)"):
        assert label in targets
    assert table.rstrip().endswith("errors: 0")
