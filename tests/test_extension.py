"""The selector loads the compiled decoder unless it is told not to.

A broken build must fail here instead of silently running the slow decoder
(aiohttp's ``test_c_parser_loaded``, yarl's ``test_quoting_c_loaded``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import kiro_fast
from kiro_fast import eventstream

#: the directory holding the ``kiro_fast`` package under test, for the child interpreters
PACKAGE_ROOT = str(Path(kiro_fast.__file__).resolve().parent.parent)

PROBE = """
import sys
from kiro_fast import eventstream
print(eventstream.IMPLEMENTATION)
print(eventstream.EventStreamDecoder.__module__)
print("kiro_fast._eventstream" in sys.modules)
"""


def probe(no_extensions: str | None, cwd: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "KIRO_FAST_NO_EXTENSIONS"}
    if no_extensions is not None:
        env["KIRO_FAST_NO_EXTENSIONS"] = no_extensions
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", PROBE],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


def test_selector_uses_the_extension_unless_disabled():
    disabled = bool(os.environ.get("KIRO_FAST_NO_EXTENSIONS"))
    expected = "python" if disabled or platform.python_implementation() != "CPython" else "c"
    assert eventstream.IMPLEMENTATION == expected
    assert eventstream.NO_EXTENSIONS is (expected == "python")


@pytest.mark.parametrize("value", ["1", "Y", "true"])
def test_no_extensions_env_selects_pure_python(tmp_path, value):
    assert probe(value, tmp_path) == ["python", "kiro_fast._eventstream_py", "False"]


@pytest.mark.c_extension
def test_extension_is_selected_without_the_env(tmp_path):
    assert probe(None, tmp_path) == ["c", "kiro_fast._eventstream", "True"]


@pytest.mark.c_extension
def test_empty_no_extensions_env_does_not_disable(tmp_path):
    assert probe("", tmp_path) == ["c", "kiro_fast._eventstream", "True"]
