"""Durability of the credential write-back under ``kill -9``.

```
.venv/bin/python bench/durability.py [--kills 1000] [--seconds 0] [--accounts 8]
                                     [--max-delay-ms 12] [--seed 0] [--dir DIR]
                                     [--json-out FILE]
```

A writer process does what kiro_fast does when it refreshes tokens: it loads a kiro.rs
``credentials.json`` with :class:`kiro_fast.sources.KiroRsFile` (which also removes the
temp files a killed writer left behind), then forever rotates one account's tokens
(refresh token, access token, ``expiresAt``) and writes them back with
``KiroRsFile.update([snapshot])`` — the call ``credential_sync`` makes — which is a
read-merge-write under a lock, through :func:`kiro_fast.credentials.atomic_write`.
Around each write it appends ``begin ID GEN`` and ``done ID GEN`` to a journal.

This script kills the writer with SIGKILL after a random delay, ``--kills`` times (or
until ``--seconds`` have passed), on the same file, and after every kill checks:

* the file parses, holds every account (same ids, same count) and every key the user
  wrote (``note``) is still there;
* no entry is torn or mixed: its refresh token, access token and ``expiresAt`` all belong
  to one generation, and each token is exactly the value the writer generated;
* each account holds the value of its last completed write, or — only for the account
  whose write the kill interrupted — the value being written;
* at most one temp file is left (the interrupted write's), and the next writer removes it.

Writers are forked from one "zygote" process that imported kiro_fast once, so a round
costs a fork, not an interpreter start. ``--seconds 0`` means no time limit. Exit status
0 when every kill left a valid file; the report (``--json-out``) has the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
#: ``expiresAt`` of generation g is BASE_TIME + g seconds.
BASE_TIME = 1_800_000_000
#: Generations are written with this many digits; round n starts at n × ROUND_GENERATIONS.
GEN_DIGITS = 14
ROUND_GENERATIONS = 1_000_000
#: Tokens are as long as real ones (hundreds of characters), so a write takes a while.
PAD = 360

ZYGOTE = r"""
import copy, os, random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from kiro_fast.sources import KiroRsFile

BASE_TIME, PAD, DIGITS = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def token(kind, cred_id, gen):
    head = "%sDUR%03dG%0*d" % (kind, cred_id, DIGITS, gen)
    return head + (head[-4:] * (PAD // 4))


def write_forever(path, journal_path, gen, seed):
    journal = os.open(journal_path, os.O_WRONLY | os.O_APPEND)
    try:
        source = KiroRsFile(Path(path))
        creds = source.load().credentials
        order = sorted(creds, key=lambda c: c.id)
        start = random.Random(seed).randrange(len(order))
        order = order[start:] + order[:start]
        while True:
            for cred in order:
                gen += 1
                os.write(journal, b"begin %d %d\n" % (cred.id, gen))
                cred.refresh_token = token("aor", cred.id, gen)
                cred.access_token = token("aoa", cred.id, gen)
                cred.expires_at = float(BASE_TIME + gen)
                source.update([copy.copy(cred)])
                os.write(journal, b"done %d %d\n" % (cred.id, gen))
    except BaseException as exc:
        os.write(journal, ("error %r\n" % (exc,)).encode())
        os._exit(3)


for line in sys.stdin:
    words = line.split()
    if words[0] == "quit":
        break
    path, journal_path, gen, seed = words[1], words[2], int(words[3]), int(words[4])
    pid = os.fork()
    if pid == 0:
        write_forever(path, journal_path, gen, seed)
    sys.stdout.write("pid %d\n" % pid)
    sys.stdout.flush()
    _, status = os.waitpid(pid, 0)
    sys.stdout.write("exit %d\n" % status)
    sys.stdout.flush()
"""


def token(kind: str, cred_id: int, gen: int) -> str:
    """The value the writer gives ``kind`` (``aor``/``aoa``) of an account at ``gen``."""
    head = f"{kind}DUR{cred_id:03d}G{gen:0{GEN_DIGITS}d}"
    return head + (head[-4:] * (PAD // 4))


def expires(gen: int) -> str:
    moment = datetime.fromtimestamp(BASE_TIME + gen, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def initial_file(accounts: int) -> list[dict[str, Any]]:
    return [
        {
            "id": cred_id,
            "refreshToken": token("aor", cred_id, 0),
            "accessToken": token("aoa", cred_id, 0),
            "expiresAt": expires(0),
            "authMethod": "social",
            "note": f"kept-{cred_id}",
        }
        for cred_id in range(1, accounts + 1)
    ]


@dataclass
class Report:
    kills: int = 0
    #: kills that landed between a write's "begin" and its "done"
    interrupted: int = 0
    #: kills after which the interrupted account already held the new value
    new_value_kept: int = 0
    #: kills that left the writer's temp file behind
    temp_left: int = 0
    writes_completed: int = 0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations and self.kills > 0


class Zygote:
    """The process that forks writers; see the module docstring."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, str(ROOT), str(BASE_TIME), str(PAD), str(GEN_DIGITS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _send(self, line: str) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()

    def _read(self, word: str) -> int:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line.startswith(word + " "):
            raise RuntimeError(f"zygote said {line!r}, expected {word!r}")
        return int(line.split()[1])

    def kill_one_writer(self, path: Path, journal: Path, gen: int, seed: int, delay: float) -> int:
        """Fork a writer, SIGKILL it after ``delay`` seconds; returns its wait status."""
        self._send(f"run {path} {journal} {gen} {seed}")
        pid = self._read("pid")
        time.sleep(delay)  # the random moment of the kill
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return self._read("exit")

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._send("quit")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@dataclass
class Journal:
    """What one writer recorded before it was killed."""

    #: the last completed generation of each account written
    done: dict[int, int] = field(default_factory=dict)
    #: (account, generation) of the write the kill interrupted, if any
    in_flight: tuple[int, int] | None = None
    completed: int = 0
    errors: list[str] = field(default_factory=list)


def read_journal(path: Path) -> Journal:
    journal = Journal()
    for line in path.read_text().splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "begin":
            journal.in_flight = (int(words[1]), int(words[2]))
        elif words[0] == "done":
            journal.done[int(words[1])] = int(words[2])
            journal.in_flight = None
            journal.completed += 1
        else:
            journal.errors.append(line)
    return journal


def generation_of(entry: dict[str, Any]) -> int | None:
    """The generation an entry belongs to, or ``None`` when its fields disagree."""
    refresh = entry.get("refreshToken")
    cred_id = entry.get("id")
    if not isinstance(refresh, str) or not isinstance(cred_id, int):
        return None
    try:
        gen = int(refresh[10 : 10 + GEN_DIGITS])
    except ValueError:
        return None
    whole = (
        refresh == token("aor", cred_id, gen)
        and entry.get("accessToken") == token("aoa", cred_id, gen)
        and entry.get("expiresAt") == expires(gen)
        and entry.get("note") == f"kept-{cred_id}"
    )
    return gen if whole else None


def check(
    path: Path, accounts: int, current: dict[int, int], journal: Path, report: Report
) -> str | None:
    """Check the file after one kill; update ``current`` (the generation per account)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return f"the file is not valid JSON after a kill: {exc}"
    if not isinstance(doc, list) or [e.get("id") for e in doc] != list(range(1, accounts + 1)):
        return f"accounts lost or reordered: ids {[e.get('id') for e in doc]}"
    written = read_journal(journal)
    if written.errors:
        return f"the writer failed on its own: {written.errors}"
    done, in_flight = written.done, written.in_flight
    report.writes_completed += written.completed
    if in_flight is not None:
        report.interrupted += 1
    for entry in doc:
        cred_id = entry["id"]
        gen = generation_of(entry)
        if gen is None:
            return f"account {cred_id}: a torn or mixed entry: {str(entry)[:200]}"
        allowed = {done.get(cred_id, current[cred_id])}
        if in_flight is not None and in_flight[0] == cred_id:
            allowed.add(in_flight[1])
            if gen == in_flight[1]:
                report.new_value_kept += 1
        if gen not in allowed:
            return f"account {cred_id}: generation {gen}, expected one of {sorted(allowed)}"
        current[cred_id] = gen
    leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    if len(leftovers) > 1:
        return f"{len(leftovers)} temp files left: the next start did not remove them"
    report.temp_left += len(leftovers)
    return None


def run(
    directory: Path,
    *,
    kills: int,
    seconds: float = 0.0,
    accounts: int = 8,
    max_delay_ms: float = 12.0,
    seed: int = 0,
) -> Report:
    """Kill writers ``kills`` times (or until ``seconds``, when not 0); see the docstring."""
    path = directory / "credentials.json"
    journal = directory / "journal"
    path.write_text(json.dumps(initial_file(accounts), indent=2))
    current = dict.fromkeys(range(1, accounts + 1), 0)
    rng = random.Random(seed)
    report = Report()
    started = time.monotonic()
    zygote = Zygote()
    try:
        for round_number in range(1, kills + 1):
            if seconds and time.monotonic() - started > seconds:
                break
            journal.write_bytes(b"")
            delay = rng.uniform(0.0, max_delay_ms / 1000)
            status = zygote.kill_one_writer(
                path, journal, round_number * ROUND_GENERATIONS, rng.getrandbits(32), delay
            )
            report.kills += 1
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                errors = read_journal(journal).errors
                report.violations.append(f"kill {round_number}: writer ended by itself {errors}")
                break
            problem = check(path, accounts, current, journal, report)
            if problem is not None:
                report.violations.append(f"kill {round_number}: {problem}")
                break
    finally:
        zygote.close()
        report.seconds = round(time.monotonic() - started, 2)
    return report


@contextlib.contextmanager
def work_dir(given: str | None) -> Iterator[Path]:
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kiro-fast-durability-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=0.0, help="time limit (0: none)")
    parser.add_argument("--accounts", type=int, default=8)
    parser.add_argument("--max-delay-ms", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", help="work directory (default: a fresh temporary one)")
    parser.add_argument("--json-out", help="write the report here as JSON")
    args = parser.parse_args(argv)
    with work_dir(args.dir) as directory:
        report = run(
            directory,
            kills=args.kills,
            seconds=args.seconds,
            accounts=args.accounts,
            max_delay_ms=args.max_delay_ms,
            seed=args.seed,
        )
    print(
        f"{report.kills} kills in {report.seconds} s: {report.interrupted} mid-write "
        f"({report.new_value_kept} had already renamed the new file, {report.temp_left} left "
        f"a temp file), {report.writes_completed} writes completed; "
        + ("every file valid" if report.ok else f"FAILED: {report.violations}")
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
