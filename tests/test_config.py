"""Configuration: kiro.rs keys, kiro2api's and Kiro-Go's environment variables mapped onto
kiro_fast's settings, ``*_FILE`` secrets, precedence, and errors that name the key.

Variable names and meanings: kiro-auth.md §2.1 (kiro.rs config.json), §2.4 (kiro2api
environment), §2.5 (Kiro-Go ``CONFIG_PATH``); the strategy names: §7.4, §8.2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiro_fast.config import build_config, describe_fields, load_config
from kiro_fast.errors import ConfigError


def config(file: dict[str, Any] | None = None, **environ: str) -> Any:
    return build_config(file or {}, environ=environ)


def test_kiro2api_environment_maps_onto_kiro_fast() -> None:
    c = config(
        PORT="9090",
        KIRO_CLIENT_TOKEN="kiro2api-client-token",
        KIRO_AUTH_TOKEN='[{"auth":"Social","refreshToken":"aor..."}]',
        TOKEN_SELECTION_STRATEGY="optimal",
        LOG_LEVEL="warn",
        LOG_FORMAT="json",
        LOG_FILE="/var/log/kiro.log",
        REQUEST_TIMEOUT_MINUTES="2",
        STREAM_REQUEST_TIMEOUT_MINUTES="30",
        SIMPLE_REQUEST_TIMEOUT_MINUTES="0.5",
        MAX_CONCURRENT_SESSIONS="100",
    )
    assert c.port == 9090
    assert c.api_key == "kiro2api-client-token"
    assert c.kiro_auth_token == '[{"auth":"Social","refreshToken":"aor..."}]'
    assert c.load_balancing_mode == "most_quota"
    assert (c.log_level, c.log_format, c.log_file) == ("warning", "json", "/var/log/kiro.log")
    assert (c.first_byte_timeout, c.stream_idle_timeout, c.auth_timeout) == (120.0, 1800.0, 30.0)
    assert c.max_concurrent_requests == 100


def test_kiro_go_config_path_names_its_account_file() -> None:
    assert config(CONFIG_PATH="/data/config.json").kiro_go_config == "/data/config.json"


@pytest.mark.parametrize(
    ("written", "strategy"),
    [
        ("priority", "priority"),
        ("sequential", "priority"),
        ("balanced", "least_used"),
        ("least_used", "least_used"),
        ("round_robin", "round_robin"),
        ("Round-Robin", "round_robin"),
        ("optimal", "most_quota"),
        ("most_quota", "most_quota"),
    ],
)
def test_strategy_names_of_every_peer(written: str, strategy: str) -> None:
    assert config({"loadBalancingMode": written}).load_balancing_mode == strategy
    assert config({"strategy": written}).load_balancing_mode == strategy


def test_kiro_fast_variables_win_over_peer_aliases() -> None:
    c = config(KIRO_FAST_PORT="1111", PORT="2222", KIRO_FAST_API_KEY="a", KIRO_CLIENT_TOKEN="b")
    assert (c.port, c.api_key) == (1111, "a")


def test_precedence_file_then_environment_then_overrides() -> None:
    c = build_config(
        {"port": 1, "region": "eu-west-1"}, environ={"PORT": "2"}, overrides={"port": 3}
    )
    assert (c.port, c.region) == (3, "eu-west-1")
    assert build_config({"port": 1}, environ={"PORT": "2"}).port == 2


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-a-file\n")
    (tmp_path / "auth").write_text('{"auth":"Social","refreshToken":"aorX"}')
    c = config(
        KIRO_CLIENT_TOKEN_FILE=str(tmp_path / "key"), KIRO_AUTH_TOKEN_FILE=str(tmp_path / "auth")
    )
    assert c.api_key == "from-a-file"
    assert c.kiro_auth_token == '{"auth":"Social","refreshToken":"aorX"}'


def test_an_unreadable_secret_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config(KIRO_AUTH_TOKEN_FILE=str(tmp_path / "missing"))
    assert "KIRO_AUTH_TOKEN_FILE" in info.value.message


def test_pool_keys_with_their_defaults() -> None:
    c = config()
    assert c.load_balancing_mode == "priority"
    assert (c.session_affinity, c.session_affinity_ttl) == (False, 1800.0)
    assert (c.max_concurrent_per_credential, c.rpm_per_credential, c.max_concurrent_requests) == (
        0,
        0,
        0,
    )
    assert (c.queue_size, c.queue_timeout, c.max_failures) == (100, 30.0, 3)
    assert (c.throttle_cooldown, c.rate_limit_cooldown) == (300.0, 10.0)
    assert c.state_url is None and c.kiro_ide_token_file is None
    full = config(
        {
            "sessionAffinity": True,
            "maxConcurrentPerCredential": 2,
            "rpmPerCredential": 30,
            "queueSize": 5,
            "queueTimeout": 2.5,
            "maxFailures": 5,
            "throttleCooldown": 600,
            "rateLimitCooldown": 5,
            "refreshFailureCooldown": 15,
            "usageCacheTtl": 60,
            "stateUrl": "redis://localhost:6379/0",
            "kiroIdeTokenFile": "~/.aws/sso/cache/kiro-auth-token.json",
            "proxyUrl": "socks5://127.0.0.1:1080",
        }
    )
    assert full.session_affinity and full.max_concurrent_per_credential == 2
    assert full.state_url == "redis://localhost:6379/0"
    assert full.proxy_url == "socks5://127.0.0.1:1080"


@pytest.mark.parametrize(
    ("values", "environ", "named"),
    [
        ({"loadBalanceMode": "priority"}, {}, "loadBalanceMode"),
        ({"strategy": "random"}, {}, "strategy"),
        ({"loadBalancingMode": "random"}, {}, "loadBalancingMode"),
        ({"maxConcurrentPerCredential": -1}, {}, "maxConcurrentPerCredential"),
        ({"maxFailures": 0}, {}, "maxFailures"),
        ({"queueTimeout": "soon"}, {}, "queueTimeout"),
        ({"proxyUrl": "ftp://proxy:21"}, {}, "proxyUrl"),
        ({"sessionAffinity": "maybe"}, {}, "sessionAffinity"),
        ({}, {"REQUEST_TIMEOUT_MINUTES": "ten"}, "REQUEST_TIMEOUT_MINUTES"),
        ({}, {"TOKEN_SELECTION_STRATEGY": "fastest"}, "loadBalancingMode"),
        ({}, {"PORT": "http"}, "port"),
    ],
)
def test_errors_name_the_key(values: dict[str, Any], environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(values, environ=environ)
    assert named in info.value.message


def test_a_missing_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.json", environ={})
    assert "nope.json" in info.value.message


def test_documentation_lists_peer_variables() -> None:
    rows = {key: env for key, env, _default, _doc in describe_fields()}
    assert "PORT" in rows["port"]
    assert "REQUEST_TIMEOUT_MINUTES (minutes)" in rows["firstByteTimeout"]
    assert "TOKEN_SELECTION_STRATEGY" in rows["loadBalancingMode"]


def test_conversion_settings_reach_the_converter() -> None:
    from kiro_fast.runtime import convert_options

    config = build_config(
        {
            "openaiAliasModel": "claude-sonnet-4.6",
            "maxUpstreamBodyBytes": 700_000,
            "stripSchemaKeywords": True,
            "writeGuidance": False,
            "hiddenPromptTokens": 0,
        },
        environ={},
    )
    options = convert_options(config)
    assert options.openai_alias_model == "claude-sonnet-4.6"
    assert options.max_body_bytes == 700_000
    assert options.strip_schema_keywords is True
    assert options.write_guidance is False
    assert options.hidden_prompt_tokens == 0
