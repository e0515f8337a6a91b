"""The real Claude Code CLI, in print mode, against kiro_fast and the fake upstream.

``scripts/lib.sh`` (``kf_claude_cli``) installs ``@anthropic-ai/claude-code`` from npm
into ``.cache/claude-code`` and exports ``KIRO_FAST_CLAUDE_BIN``. Without it the tests
skip, unless ``KIRO_FAST_REQUIRE_ALL=1`` (CI), where a missing CLI fails them.

The CLI runs offline as claude-code-traffic.md describes: a throwaway ``HOME``,
``ANTHROPIC_BASE_URL`` pointing at kiro_fast, non-essential traffic off, one retry.
Answers are scripted with fake-upstream directives inside the prompt (or a file the
CLI reads), so they do not depend on how many side requests the CLI makes.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import API_KEY, Harness, directive

ROOT = Path(__file__).parent.parent
#: One print-mode run takes 0.6–2 s; this bounds a hung CLI.
CLI_TIMEOUT = 120.0


def claude_binary() -> str | None:
    configured = os.environ.get("KIRO_FAST_CLAUDE_BIN")
    candidates = [configured] if configured else []
    candidates.append(str(ROOT / ".cache" / "claude-code" / "node_modules" / ".bin" / "claude"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CLAUDE = claude_binary()
if CLAUDE is None:
    if os.environ.get("KIRO_FAST_REQUIRE_ALL") == "1":
        raise RuntimeError("the Claude Code CLI is required (KIRO_FAST_REQUIRE_ALL=1)")
    pytest.skip("the Claude Code CLI is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    config = {"firstByteTimeout": 10.0, "streamIdleTimeout": 10.0}
    with Harness(config=config) as running:
        yield running


def run_cli(harness: Harness, prompt: str, workdir: Path, home: Path) -> dict[str, Any]:
    assert CLAUDE is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": harness.url,
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
    }
    done = subprocess.run(
        [CLAUDE, "-p", prompt, "--output-format", "json"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:] or done.stdout[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def chat_requests(harness: Harness) -> list[Any]:
    return harness.call(  # type: ignore[no-any-return]
        lambda: [r for r in harness.fake.requests if r.endpoint == "generateAssistantResponse"]
    )


def test_plain_answer(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    before = len(chat_requests(harness))
    result = run_cli(
        harness,
        "Reply with the code word. " + directive({"text": "The code word is kiro-4729."}),
        tmp_path / "work",
        tmp_path / "home",
    )
    assert result["is_error"] is False
    assert result["result"] == "The code word is kiro-4729."
    assert result["stop_reason"] == "end_turn"
    sent = chat_requests(harness)[before:]
    assert sent and all(r.status == 200 and r.rule is None for r in sent)


def test_tool_round_trip_with_read(harness: Harness, tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    notes = work / "notes.txt"
    # the fake answers the request carrying this file's content with the scripted text
    notes.write_text(
        "The secret fruit is banana-731.\n" + directive({"text": "The file says banana-731."})
    )
    before = len(chat_requests(harness))
    result = run_cli(
        harness,
        "Read notes.txt and tell me the secret fruit. "
        + directive({"scenario": "tool", "name": "Read", "input": {"file_path": str(notes)}}),
        work,
        home,
    )
    assert result["is_error"] is False
    assert result["result"] == "The file says banana-731."
    assert result["num_turns"] >= 2
    sent = chat_requests(harness)[before:]
    assert all(r.status == 200 and r.rule is None for r in sent)
    follow_up = sent[-1].json["conversationState"]
    current = follow_up["currentMessage"]["userInputMessage"]
    results = current["userInputMessageContext"]["toolResults"]
    assert results[0]["status"] == "success"
    assert "The secret fruit is banana-731." in results[0]["content"][0]["text"]
    uses = follow_up["history"][-1]["assistantResponseMessage"]["toolUses"]
    assert uses[0]["name"] == "Read" and uses[0]["input"] == {"file_path": str(notes)}
    assert uses[0]["toolUseId"] == results[0]["toolUseId"]
