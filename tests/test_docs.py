"""The documentation matches the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from kiro_fast.config import markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_lists_every_key_as_the_code_defines_it() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert markdown_table() in doc, "regenerate the table with kiro_fast.config.markdown_table()"


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(bash scripts/\S+)\n```", readme)
    assert commands[:2] == ["bash scripts/run.sh", "bash scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nbash scripts/test.sh\n" in ci
