"""Real kiro_fast processes for tests: the CLI in a subprocess, its log lines collected.

* :class:`FakeThread` runs the fake Kiro upstream on its own event loop in a daemon
  thread of the test process, so tests script it and wait on it (``stalled``,
  ``release()``) while kiro_fast runs in other processes.
* :class:`KiroProcess` starts ``python -m kiro_fast …`` with JSON logging and collects
  every stderr line; :meth:`KiroProcess.wait_record` waits (bounded) for a log record.
* :func:`write_files` writes a config and a credentials file that point at the fake;
  :func:`messages_body`, :func:`request` and :class:`SSEReader` talk HTTP with the
  standard library, reading streams event by event.

Nothing here sleeps to synchronise: every wait is on a condition with a timeout.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from kiro_fast.server import new_event_loop
from kiro_fast.testing import FakeSettings, FakeUpstream

MODEL = "claude-sonnet-4-6"
REFRESH_TOKEN = "aorProc" + "r" * 120
ACCESS_TOKEN = "aoaProc" + "a" * 120
WAIT = 20.0


class FakeThread:
    """A FakeUpstream on an event loop in a daemon thread."""

    def __init__(self, settings: FakeSettings | None = None) -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.fake = FakeUpstream(settings=settings or FakeSettings(seed=3))

    def start(self) -> FakeThread:
        self._thread.start()
        self.call(self.fake.start())
        return self

    def stop(self) -> None:
        try:
            self.call(self.fake.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    @property
    def url(self) -> str:
        return self.fake.url

    def call(self, work: Any, timeout: float = WAIT) -> Any:
        """Run a coroutine, or a plain callable, on the fake's loop; return its result."""
        if asyncio.iscoroutine(work):
            return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

        async def run() -> Any:
            return work()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def wait_stalled(self, count: int = 1, timeout: float = WAIT) -> None:
        self.call(self.fake.wait_for_stalled(count, timeout), timeout + 5)

    def release(self) -> int:
        released: int = self.call(self.fake.release)
        return released


class KiroProcess:
    """``python -m kiro_fast ARGS`` with stderr collected line by line."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KIRO_", "LOG_"))}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiro_fast", *args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ log records

    def records(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (other lines, such as tracebacks, are skipped)."""
        with self._cond:
            return self.records_locked()

    def wait_record(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = WAIT,
        *,
        count: int = 1,
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` JSON records match ``predicate``; return the matches."""
        return self._wait(
            lambda: [r for r in self.records_locked() if predicate(r)], count, timeout
        )

    def wait_line(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Wait for a line matching the regular expression ``pattern``; return the match."""
        compiled = re.compile(pattern)

        def found() -> list[re.Match[str]]:
            matches = (compiled.search(line) for line in self.lines)
            return [m for m in matches if m is not None]

        match: re.Match[str] = self._wait(found, 1, timeout)[0]
        return match

    def _wait(self, matches: Callable[[], list[Any]], count: int, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = matches()
                if len(found) >= count:
                    return found
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"kiro_fast exited ({self.proc.returncode}) before the expected log "
                        f"line; last lines:\n" + "\n".join(self.lines[-30:])
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        "expected log line did not appear; last lines:\n"
                        + "\n".join(self.lines[-30:])
                    )
                self._cond.wait(remaining)

    def records_locked(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    # ------------------------------------------------------------------ process

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 60.0) -> int:
        status = self.proc.wait(timeout)
        self._finish()
        return status

    def _finish(self) -> None:
        self._reader.join(10)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()

    def stop(self) -> None:
        """Make sure the process (and, via the link, its workers) is gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._finish()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.0f} s: {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- files


def write_files(
    directory: Path,
    fake_url: str,
    *,
    api_key: str,
    extra: dict[str, Any] | None = None,
    credentials: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """config.json and credentials.json in ``directory`` for a kiro_fast behind the fake."""
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "apiKey": api_key,
        "kiroApiBase": fake_url,
        "kiroAuthBase": fake_url,
        "oidcBase": fake_url,
        "shutdownTimeout": 30,
        **(extra or {}),
    }
    config_path = directory / "config.json"
    config_path.write_bytes(orjson.dumps(config))
    if credentials is None:
        expires = datetime.now(UTC) + timedelta(minutes=50)
        credentials = [
            {
                "refreshToken": REFRESH_TOKEN,
                "accessToken": ACCESS_TOKEN,
                "expiresAt": expires.isoformat().replace("+00:00", "Z"),
                "authMethod": "social",
            }
        ]
    credentials_path = directory / "credentials.json"
    credentials_path.write_bytes(orjson.dumps(credentials))
    return config_path, credentials_path


def add_default_account(fake: FakeThread) -> None:
    """The account behind the default credentials of :func:`write_files`."""
    fake.call(lambda: fake.fake.accounts.add_social(REFRESH_TOKEN, ACCESS_TOKEN))


# --------------------------------------------------------------------------- HTTP


def messages_body(text: str, *, stream: bool = False, max_tokens: int = 64) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "max_tokens": max_tokens,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }
    )


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    host: str = "127.0.0.1",
    source: str | None = None,
    timeout: float = WAIT,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


class SSEReader:
    """A streaming POST whose server-sent events are read one at a time."""

    def __init__(
        self,
        port: int,
        path: str,
        body: bytes,
        headers: dict[str, str],
        *,
        host: str = "127.0.0.1",
        source: str | None = None,
        timeout: float = WAIT,
    ) -> None:
        self.conn = http.client.HTTPConnection(
            host, port, timeout=timeout, source_address=(source, 0) if source else None
        )
        self.conn.request("POST", path, body=body, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}

    def next_event(self) -> tuple[str, dict[str, Any]] | None:
        """The next (event name, data) or None at the end of the stream."""
        name, data = "", ""
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\r\n")
            if not text:
                if data:
                    return name, json.loads(data)
                continue
            if text.startswith("event:"):
                name = text[6:].strip()
            elif text.startswith("data:"):
                data += text[5:].strip()

    def until(self, event: str) -> list[tuple[str, dict[str, Any]]]:
        """Events up to and including the first ``event``; fails if the stream ends first."""
        seen: list[tuple[str, dict[str, Any]]] = []
        while True:
            item = self.next_event()
            if item is None:
                raise AssertionError(f"stream ended before {event!r}; got {seen}")
            seen.append(item)
            if item[0] == event:
                return seen

    def close(self) -> None:
        self.conn.close()


def text_of(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(
        data["delta"].get("text", "")
        for name, data in events
        if name == "content_block_delta" and data["delta"].get("type") == "text_delta"
    )
