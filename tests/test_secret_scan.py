"""The whole-run secret scan (``tests/secret_scan.py``) finds what it must, reports it
without repeating it, and is wired into this very session.

The scanner is checked three ways: its matching function directly (whole secrets, every
16-character window, short secrets only as whole tokens), a small pytest run in a
subprocess whose test logs a planted secret (the run must fail and name the test and the
kind, never the secret), and the live session's hooks (registration and capture happen).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import secret_scan
from secret_scan import REGISTRY, Planted, find_leaks

from kiro_fast.config import build_config

TESTS = Path(__file__).resolve().parent
SECRET = "aorSelfTest" + "Q7hT2mV9xK4pL8sW3nB6Zr1Hc5Jd0Fg"
PLANTED = {SECRET: Planted("refresh token", "tests/test_a.py::test_plant")}


def leaks_in(text: str, secrets: dict[str, Planted] | None = None) -> list[secret_scan.Leak]:
    return find_leaks(secrets or PLANTED, [("tests/test_b.py::test_log", "logger x", text)])


# --------------------------------------------------------------------------- matching


def test_a_whole_secret_is_found() -> None:
    (leak,) = leaks_in(f"refreshed credential #1: token={SECRET} ok")
    assert leak.kind == "refresh token"
    assert leak.planted_by == "tests/test_a.py::test_plant"
    assert leak.found_in == "tests/test_b.py::test_log"


@pytest.mark.parametrize("start", [0, 5, 11, len(SECRET) - 16])
def test_any_16_character_window_is_found(start: int) -> None:
    window = SECRET[start : start + 16]
    assert len(leaks_in(f"shortened for the log: …{window}…")) == 1


def test_less_than_a_window_is_not_a_leak() -> None:
    assert leaks_in(f"prefix {SECRET[:15]} and {SECRET[20:35]}") == []


def test_a_secret_in_an_exception_text_is_found() -> None:
    try:
        raise ValueError(f"refresh failed for {SECRET}")
    except ValueError:
        record = logging.LogRecord("kiro_fast.x", logging.ERROR, "", 0, "failed", None, None)
        record.exc_info = sys.exc_info()
    assert len(leaks_in(secret_scan.record_text(record))) == 1


def test_arguments_and_extra_fields_are_part_of_the_text() -> None:
    record = logging.LogRecord("kiro_fast.x", logging.DEBUG, "", 0, "sent %s", ("it",), None)
    record.header = f"Bearer {SECRET}"
    assert len(leaks_in(secret_scan.record_text(record))) == 1


def test_short_secrets_match_only_as_whole_tokens() -> None:
    short = {"client-key": Planted("client API key", "t")}
    assert leaks_in("GET /api/admin/client-keys 200", short) == []
    assert len(leaks_in("x-api-key: client-key rejected", short)) == 1


def test_padding_alone_is_not_a_secret() -> None:
    padded = {"aorE2E" + "r" * 120: Planted("refresh token", "t")}
    assert leaks_in("r" * 200, padded) == []
    assert len(leaks_in("token aorE2Errrrrrrrrrrrrrrrrr", padded)) == 1


def test_the_report_names_test_and_kind_but_never_the_secret() -> None:
    (leak,) = leaks_in(SECRET)
    line = leak.describe()
    assert "refresh token" in line and "tests/test_b.py::test_log" in line
    assert not find_leaks(PLANTED, [("t", "report", line)])


# --------------------------------------------------------------------------- a whole run

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
pytest_plugins = ["secret_scan"]
"""

LEAKING = f"""
import logging
from kiro_fast.config import build_config
from kiro_fast.testing.accounts import Accounts
from kiro_fast.testing.settings import FakeSettings

def test_clean():
    logging.getLogger("kiro_fast.clean").info("nothing secret here")

def test_leaks_a_client_key_below_the_log_level():
    config = build_config({{"apiKey": "sk-selftest-{"C" * 8}Zr1Hc5Jd0"}}, environ={{}})
    logging.getLogger("kiro_fast.app").debug("key is %s", config.api_key)

def test_leaks_part_of_a_refresh_token():
    Accounts(FakeSettings()).add_social({SECRET!r})
    logging.getLogger("kiro_fast.pool").warning("token …%s…", {SECRET[4:24]!r})
"""


def run_pytest(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(body))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )
    return done.returncode, done.stdout + done.stderr


def test_a_run_that_logs_a_planted_secret_fails_and_says_where(tmp_path: Path) -> None:
    status, output = run_pytest(tmp_path, LEAKING)
    assert status == 1, output
    assert "3 passed" in output
    assert "secret scan FAILED" in output
    assert "client API key" in output and "test_leaks_a_client_key_below_the_log_level" in output
    assert "test_leaks_part_of_a_refresh_token" in output
    assert "test_clean" not in output.split("secret scan FAILED")[1]
    assert SECRET[4:20] not in output and "Zr1Hc5Jd0" not in output


def test_a_clean_run_passes_and_says_what_it_scanned(tmp_path: Path) -> None:
    body = LEAKING.split("def test_leaks_a_client_key")[0]
    status, output = run_pytest(tmp_path, body)
    assert status == 0, output
    assert "secret scan: " in output and "no leak" in output


def test_a_strict_run_that_registered_nothing_fails(tmp_path: Path) -> None:
    body = "def test_nothing():\n    pass\n"
    status, output = run_pytest(tmp_path, body, {secret_scan.STRICT_ENV: "1"})
    assert status == 1, output
    assert "no secret was registered" in output
    assert "log records were captured" in output


# --------------------------------------------------------------------------- this session


def test_this_session_registers_and_captures(request: pytest.FixtureRequest) -> None:
    key = "sk-session-probe-" + os.urandom(8).hex()
    build_config({"apiKey": key}, environ={})
    assert REGISTRY.secrets[key].kind == "client API key"
    assert REGISTRY.secrets[key].by == request.node.nodeid
    before = REGISTRY.records
    logging.getLogger("kiro_fast.probe").debug("probe %s", "below every level")
    assert REGISTRY.records == before + 1
    test, source, text = REGISTRY.captured[-1]
    assert (test, text) == (request.node.nodeid, "probe below every level")
    assert "kiro_fast.probe" in source
