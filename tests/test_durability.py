"""``kill -9`` during token write-back, many times: the credential file is always valid and
never loses an account.

``bench/durability.py`` forks writers that do what kiro_fast does after a refresh (load a
kiro.rs ``credentials.json`` with ``KiroRsFile``, rotate an account's tokens, write them
back with ``KiroRsFile.update`` → ``atomic_write``) and SIGKILLs each at a random moment.
After every kill the file must parse, hold every account with its own keys, and hold for
each account either its last completed value or — for the account being written — the new
one; no entry may mix two generations.

Target: ``KIRO_FAST_DURABILITY_KILLS`` kills (default 1,000), capped at
``KIRO_FAST_DURABILITY_SECONDS`` (default 60). The count achieved is printed. The long
version is ``bench/durability.py --kills 100000``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("KIRO_FAST_DURABILITY_KILLS", "1000"))
SECONDS = float(os.environ.get("KIRO_FAST_DURABILITY_SECONDS", "60"))
#: Fewer kills than this (a very slow machine hitting the time cap) proves too little.
MIN_KILLS = 50


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("durability", ROOT / "bench" / "durability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["durability"] = module
    spec.loader.exec_module(module)
    return module


durability = load_bench()


def test_kill_9_at_random_points_never_breaks_the_file_or_loses_an_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = durability.run(tmp_path, kills=KILLS, seconds=SECONDS, accounts=8, seed=20260501)
    with capsys.disabled():
        print(
            f"\n[durability] {report.kills} kills in {report.seconds} s (target {KILLS}): "
            f"{report.interrupted} mid-write, {report.temp_left} left a temp file, "
            f"{report.new_value_kept} after the rename; {report.writes_completed} writes"
        )
    assert report.violations == []
    assert report.kills >= min(KILLS, MIN_KILLS)
    # The kills landed inside write-backs, and on both sides of the rename.
    assert report.interrupted >= report.kills // 2
    if report.kills >= 100:
        assert report.temp_left > 0
        assert report.new_value_kept > 0
    saved = json.loads((tmp_path / "credentials.json").read_text())
    assert [entry["id"] for entry in saved] == list(range(1, 9))


# --------------------------------------------------------------------------- the checker


def write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, dict[int, int]]:
    path, journal = tmp_path / "credentials.json", tmp_path / "journal"
    write(path, json.dumps(durability.initial_file(3)))
    write(journal, "")
    return path, journal, dict.fromkeys(range(1, 4), 0)


def entry(cred_id: int, gen: int, access_gen: int | None = None) -> dict[str, object]:
    return {
        "id": cred_id,
        "refreshToken": durability.token("aor", cred_id, gen),
        "accessToken": durability.token("aoa", cred_id, gen if access_gen is None else access_gen),
        "expiresAt": durability.expires(gen),
        "authMethod": "social",
        "note": f"kept-{cred_id}",
    }


def test_the_checker_accepts_the_last_write_and_the_one_in_flight(
    world: tuple[Path, Path, dict[int, int]],
) -> None:
    path, journal, current = world
    write(journal, "begin 1 5\ndone 1 5\nbegin 2 6\n")
    write(path, json.dumps([entry(1, 5), entry(2, 6), entry(3, 0)]))
    assert durability.check(path, 3, current, journal, durability.Report()) is None
    assert current == {1: 5, 2: 6, 3: 0}


@pytest.mark.parametrize(
    ("content", "journal_text", "problem"),
    [
        pytest.param('[{"id": 1, "refreshTo', "", "not valid JSON", id="torn"),
        pytest.param("", "", "not valid JSON", id="empty"),
        pytest.param(None, "", "accounts lost", id="account-lost"),
        pytest.param("mixed", "begin 1 5\ndone 1 5\n", "torn or mixed", id="mixed"),
        pytest.param("stale", "begin 1 5\ndone 1 5\n", "expected one of [5]", id="lost-write"),
        pytest.param("ahead", "begin 1 5\n", "expected one of [0, 5]", id="unknown-value"),
    ],
)
def test_the_checker_catches_every_kind_of_damage(
    world: tuple[Path, Path, dict[int, int]], content: str | None, journal_text: str, problem: str
) -> None:
    path, journal, current = world
    write(journal, journal_text)
    docs = {
        None: [entry(1, 0), entry(3, 0)],
        "mixed": [entry(1, 5, access_gen=4), entry(2, 0), entry(3, 0)],
        "stale": [entry(1, 0), entry(2, 0), entry(3, 0)],
        "ahead": [entry(1, 7), entry(2, 0), entry(3, 0)],
    }
    write(path, json.dumps(docs[content]) if content in docs else content or "")
    found = durability.check(path, 3, current, journal, durability.Report())
    assert found is not None and problem in found
