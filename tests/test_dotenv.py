""".env files: kiro2api and the kiro.rs SQLite variant load one at start (kiro-auth.md §2.3,
§2.4); the variables then configure kiro_fast like real environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiro_fast import dotenv
from kiro_fast.__main__ import interpret, load_env_file
from kiro_fast.config import build_config
from kiro_fast.errors import ConfigError


def test_the_sqlite_variants_env_file_configures_kiro_fast() -> None:
    text = """
# kiro.rs SQLite variant
HOST=0.0.0.0
PORT=8990
API_KEY=sk-client-key
ADMIN_USERNAME=root
ADMIN_PASSWORD=admin123
DB_PATH=./data.db
JWT_SECRET=some-secret
JWT_EXPIRY_HOURS=12
"""
    config = build_config({}, environ=dotenv.parse(text, {}))
    assert (config.host, config.port, config.api_key) == ("0.0.0.0", 8990, "sk-client-key")
    assert (config.admin_username, config.admin_password) == ("root", "admin123")
    assert config.state_url == "./data.db"
    assert (config.jwt_secret, config.jwt_expiry_hours) == ("some-secret", 12.0)


def test_kiro2api_env_file_configures_kiro_fast() -> None:
    text = (
        'KIRO_CLIENT_TOKEN=123456\nKIRO_AUTH_TOKEN=\'[{"auth":"Social","refreshToken":"aor"}]\'\n'
    )
    values = dotenv.parse(text, {})
    assert values["KIRO_AUTH_TOKEN"] == '[{"auth":"Social","refreshToken":"aor"}]'
    assert build_config({}, environ=values).api_key == "123456"


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("A=plain", "plain"),
        ("A = spaced  ", "spaced"),
        ("export A=exported", "exported"),
        ("A=value # a comment", "value"),
        ("A=no#comment", "no#comment"),
        ("A='single # kept $HOME \\n'", "single # kept $HOME \\n"),
        ('A="double\\nline \\"q\\""', 'double\nline "q"'),
        ('A="hash # inside"', "hash # inside"),
        ("A=", ""),
        ("A=${B}-x", "b-value-x"),
        ("A=$B/y", "b-value/y"),
        ('A="${B}"', "b-value"),
        ("A=\\$B", "$B"),
        ("A=${MISSING}", ""),
    ],
)
def test_dialect(line: str, value: str) -> None:
    assert dotenv.parse(f"B=b-value\n{line}\n", {})["A"] == value


def test_expansion_sees_the_environment_and_earlier_lines() -> None:
    values = dotenv.parse("FIRST=one\nBOTH=${FIRST}+${OUTSIDE}\n", {"OUTSIDE": "two"})
    assert values["BOTH"] == "one+two"


def test_double_quotes_may_span_lines_and_crlf_is_fine() -> None:
    values = dotenv.parse('KEY="line one\r\nline two"\r\nNEXT=x\r\n', {})
    assert values == {"KEY": "line one\nline two", "NEXT": "x"}


@pytest.mark.parametrize(
    "text",
    ["JUSTAWORD\n", "1BAD=x\n", "A='unclosed\nB=1\n", 'A="unclosed\n', 'A="x" trailing\n'],
)
def test_malformed_lines_name_the_line_and_not_the_content(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        dotenv.parse("OK=fine\n" + text, {})
    assert "line 2" in caught.value.message
    assert "unclosed" not in caught.value.message and "trailing" not in caught.value.message


def test_load_never_overrides_the_environment(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("PORT=1111\nAPI_KEY=from-file\n")
    environ = {"PORT": "2222"}
    applied = dotenv.load(path, environ=environ)
    assert environ == {"PORT": "2222", "API_KEY": "from-file"}
    assert applied == {"API_KEY": "from-file"}


def test_a_missing_default_file_is_nothing_but_a_named_one_is_an_error(tmp_path: Path) -> None:
    assert dotenv.load(tmp_path / ".env", environ={}) == {}
    with pytest.raises(ConfigError, match="not found"):
        dotenv.load(tmp_path / "missing.env", environ={}, required=True)


def unset(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Unset ``names`` for this test; whatever the test sets is removed afterwards."""
    for name in names:
        monkeypatch.setenv(name, "")  # records the original state for the undo
        monkeypatch.delenv(name)


def test_the_cli_reads_dot_env_before_deciding_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unset(
        monkeypatch, "KIRO_FAST_API_KEY", "KIRO_CLIENT_TOKEN", "API_KEY", "KIRO_FAST_PORT", "PORT"
    )
    monkeypatch.chdir(tmp_path)
    assert interpret([]).command == "demo"  # no config, no credentials, no key
    (tmp_path / ".env").write_text("API_KEY=sk-from-dotenv\nPORT=9123\n")
    load_env_file([])
    assert interpret([]).command == "serve"
    assert build_config({}).port == 9123


def test_the_cli_reads_a_named_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unset(monkeypatch, "JWT_EXPIRY_HOURS")
    named = tmp_path / "prod.env"
    named.write_text("JWT_EXPIRY_HOURS=3\n")
    load_env_file(["serve", "--env-file", str(named)])
    assert build_config({}).jwt_expiry_hours == 3.0
    with pytest.raises(ConfigError):
        load_env_file(["--env-file", str(tmp_path / "absent.env")])
