"""Settings: the one place configuration is read.

Sources, lowest precedence first: built-in defaults, the JSON config file (kiro.rs's
``config.json`` keys load unchanged, camelCase), environment variables, command-line
flags. The result is a frozen :class:`Config`.

Rules:

* Every key kiro.rs documents is accepted (some are accepted and ignored, such as
  ``tlsBackend``: aiohttp has one TLS stack). Any other key is a start-up error that
  names it, and so is a value of the wrong type, so a typo never silently does nothing.
* Each field declares its JSON key (plus alternative spellings), its environment
  variable(s) and a validator; :func:`describe_fields` renders the table for the README.
* kiro2api's environment loads unchanged: ``PORT``, ``KIRO_CLIENT_TOKEN`` (client key),
  ``KIRO_AUTH_TOKEN`` (credentials), ``TOKEN_SELECTION_STRATEGY``, ``LOG_LEVEL``/
  ``LOG_FORMAT``/``LOG_FILE``, ``MAX_CONCURRENT_SESSIONS`` and the ``*_TIMEOUT_MINUTES``
  request timeouts (converted to seconds); Kiro-Go's ``CONFIG_PATH`` names its account
  file. The kiro.rs SQLite variant's ``.env`` keys load too: ``HOST``, ``PORT``,
  ``API_KEY``, ``ADMIN_USERNAME``/``ADMIN_PASSWORD`` (the first admin login),
  ``DB_PATH`` (the SQLite state file), ``JWT_SECRET``, ``JWT_EXPIRY_HOURS``; Kiro-Go's
  ``ADMIN_PASSWORD`` is the same variable. Every variable may instead be given as
  ``NAME_FILE=/path`` (Docker secrets). A ``.env`` file is read by the CLI
  (:mod:`kiro_fast.dotenv`) before this module looks at the environment.
* Runtime settings (:mod:`kiro_fast.live_settings`) are validated by
  :func:`validate_value`, the same checks as the file's.
* Upstream base URLs may contain ``{region}``; they are configurable so tests, the demo
  and benchmarks point kiro_fast at the built-in fake upstream.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError
from .tokens import UPSTREAM_HIDDEN_PROMPT_TOKENS

#: kiro.rs picks one of these at start-up when systemVersion is not configured.
SYSTEM_VERSIONS = ("darwin#24.6.0", "win32#10.0.22631")

DEFAULT_KIRO_API_BASE = "https://q.{region}.amazonaws.com"
DEFAULT_KIRO_AUTH_BASE = "https://prod.{region}.auth.desktop.kiro.dev"
DEFAULT_OIDC_BASE = "https://oidc.{region}.amazonaws.com"


#: Pool strategies and every name peers use for them (kiro.rs ``balanced`` picks the
#: credential with the fewest successes; kiro2api ``optimal`` the most remaining quota,
#: ``sequential`` the configured order).
STRATEGIES = {
    "priority": "priority",
    "sequential": "priority",
    "sequence": "priority",
    "顺序": "priority",
    "round_robin": "round_robin",
    "round-robin": "round_robin",
    "roundrobin": "round_robin",
    "least_used": "least_used",
    "balanced": "least_used",
    "most_quota": "most_quota",
    "optimal": "most_quota",
    "best": "most_quota",
    "最优": "most_quota",
}
PROXY_SCHEMES = ("http", "https", "socks4", "socks5", "socks5h")


def _meta(
    key: str,
    env: tuple[str, ...] = (),
    doc: str = "",
    secret: bool = False,
    *,
    aliases: tuple[str, ...] = (),
    env_minutes: tuple[str, ...] = (),
) -> Any:
    """Field metadata. ``aliases``: other JSON keys for the field; ``env_minutes``:
    variables that give the value in minutes (kiro2api's timeouts)."""
    return {
        "key": key,
        "env": env,
        "doc": doc,
        "secret": secret,
        "aliases": aliases,
        "env_minutes": env_minutes,
    }


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings. Field metadata: JSON key, environment variables, help text."""

    # --- listening
    host: str = field(
        default="127.0.0.1",
        metadata=_meta("host", ("KIRO_FAST_HOST", "HOST"), "listen address"),
    )
    port: int = field(
        default=8080, metadata=_meta("port", ("KIRO_FAST_PORT", "PORT"), "listen port")
    )
    api_key: str | None = field(
        default=None,
        metadata=_meta(
            "apiKey",
            ("KIRO_FAST_API_KEY", "KIRO_CLIENT_TOKEN", "API_KEY"),
            "client API key (x-api-key or Bearer)",
            True,
        ),
    )
    admin_api_key: str | None = field(
        default=None,
        metadata=_meta("adminApiKey", ("KIRO_FAST_ADMIN_API_KEY",), "admin API key", True),
    )
    admin_username: str = field(
        default="admin",
        metadata=_meta(
            "adminUsername",
            ("KIRO_FAST_ADMIN_USERNAME", "ADMIN_USERNAME"),
            "admin login name created on first start (with adminPassword)",
        ),
    )
    admin_password: str | None = field(
        default=None,
        metadata=_meta(
            "adminPassword",
            ("KIRO_FAST_ADMIN_PASSWORD", "ADMIN_PASSWORD"),
            "admin login password, stored hashed on first start; later changed in the admin UI",
            True,
        ),
    )
    jwt_secret: str | None = field(
        default=None,
        metadata=_meta(
            "jwtSecret",
            ("KIRO_FAST_JWT_SECRET", "JWT_SECRET"),
            "signs admin login tokens (default: a random one kept in the state store)",
            True,
        ),
    )
    jwt_expiry_hours: float = field(
        default=24.0,
        metadata=_meta("jwtExpiryHours", ("JWT_EXPIRY_HOURS",), "admin login token lifetime"),
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "trustedProxies",
            ("KIRO_FAST_TRUSTED_PROXIES",),
            "proxies (IPs/CIDRs) whose X-Forwarded-For is believed; comma-separated in env",
        ),
    )
    # --- regions and identity sent upstream
    region: str = field(
        default="us-east-1", metadata=_meta("region", ("KIRO_REGION",), "base region")
    )
    auth_region: str | None = field(
        default=None, metadata=_meta("authRegion", (), "token refresh region")
    )
    api_region: str | None = field(default=None, metadata=_meta("apiRegion", (), "Kiro API region"))
    kiro_version: str = field(
        default="0.11.107", metadata=_meta("kiroVersion", (), "Kiro IDE version in user agents")
    )
    machine_id: str | None = field(
        default=None, metadata=_meta("machineId", (), "global machine id override")
    )
    system_version: str = field(
        default="", metadata=_meta("systemVersion", (), "os/... part of user agents")
    )
    node_version: str = field(
        default="22.22.0", metadata=_meta("nodeVersion", (), "md/nodejs#... part of user agents")
    )
    # --- upstream endpoints (each may contain {region})
    kiro_api_base: str = field(
        default=DEFAULT_KIRO_API_BASE,
        metadata=_meta("kiroApiBase", ("KIRO_API_BASE",), "chat, MCP, usage and models host"),
    )
    kiro_auth_base: str = field(
        default=DEFAULT_KIRO_AUTH_BASE,
        metadata=_meta("kiroAuthBase", ("KIRO_AUTH_BASE",), "social token refresh host"),
    )
    oidc_base: str = field(
        default=DEFAULT_OIDC_BASE,
        metadata=_meta("oidcBase", ("KIRO_OIDC_BASE",), "IdC token refresh host"),
    )
    # --- outbound proxy
    proxy_url: str | None = field(
        default=None,
        metadata=_meta(
            "proxyUrl", ("KIRO_FAST_PROXY_URL",), "http://, https:// or socks5:// proxy"
        ),
    )
    proxy_username: str | None = field(
        default=None, metadata=_meta("proxyUsername", ("KIRO_FAST_PROXY_USERNAME",), "proxy user")
    )
    proxy_password: str | None = field(
        default=None,
        metadata=_meta("proxyPassword", ("KIRO_FAST_PROXY_PASSWORD",), "proxy password", True),
    )
    # --- credential sources besides --credentials (kiro.rs credentials.json)
    kiro_auth_token: str | None = field(
        default=None,
        metadata=_meta(
            "kiroAuthToken",
            ("KIRO_AUTH_TOKEN",),
            "kiro2api accounts: JSON, or the path of a JSON file",
            True,
        ),
    )
    kiro_go_config: str | None = field(
        default=None,
        metadata=_meta(
            "kiroGoConfig", ("CONFIG_PATH",), "Kiro-Go data/config.json to take accounts from"
        ),
    )
    kiro_ide_token_file: str | None = field(
        default=None,
        metadata=_meta(
            "kiroIdeTokenFile",
            ("KIRO_FAST_IDE_TOKEN_FILE", "KIRO_CREDS_FILE"),
            "Kiro IDE token cache, e.g. ~/.aws/sso/cache/kiro-auth-token.json",
        ),
    )
    state_url: str | None = field(
        default=None,
        metadata=_meta(
            "stateUrl",
            ("KIRO_FAST_STATE_URL", "DB_PATH"),
            "shared state: sqlite:///path (default data/kiro_fast.db), redis://…, memory://",
        ),
    )
    # --- count_tokens forwarding
    count_tokens_api_url: str | None = field(
        default=None, metadata=_meta("countTokensApiUrl", (), "external count_tokens endpoint")
    )
    count_tokens_api_key: str | None = field(
        default=None, metadata=_meta("countTokensApiKey", (), "key for it", True)
    )
    count_tokens_auth_type: str = field(
        default="x-api-key", metadata=_meta("countTokensAuthType", (), "x-api-key or bearer")
    )
    # --- Claude Code fidelity
    web_search: bool = field(
        default=True,
        metadata=_meta("webSearch", (), "serve the web_search server tool through Kiro's MCP"),
    )
    truncation_note: bool = field(
        default=True,
        metadata=_meta(
            "truncationNote", (), "tell the model, on the next turn, that its answer was cut"
        ),
    )
    max_upstream_body_bytes: int = field(
        default=600_000,
        metadata=_meta(
            "maxUpstreamBodyBytes", (), "largest upstream request body before 'prompt is too long'"
        ),
    )
    strip_schema_keywords: bool = field(
        default=False,
        metadata=_meta("stripSchemaKeywords", (), "drop JSON-Schema keywords Kiro may reject"),
    )
    write_guidance: bool = field(
        default=True,
        metadata=_meta("writeGuidance", (), "ask the model for short Write/Edit calls (§9.4)"),
    )
    hidden_prompt_tokens: int = field(
        default=UPSTREAM_HIDDEN_PROMPT_TOKENS,
        metadata=_meta("hiddenPromptTokens", (), "Kiro's own prompt, added to input estimates"),
    )
    # --- behaviour
    load_balancing_mode: str = field(
        default="priority",
        metadata=_meta(
            "loadBalancingMode",
            ("KIRO_FAST_STRATEGY", "TOKEN_SELECTION_STRATEGY"),
            "credential choice: priority (sequential), round_robin, least_used (balanced), "
            "most_quota (optimal)",
            aliases=("strategy",),
        ),
    )
    session_affinity: bool = field(
        default=False,
        metadata=_meta(
            "sessionAffinity", (), "keep one client session (metadata.user_id) on one credential"
        ),
    )
    session_affinity_ttl: float = field(
        default=1800.0,
        metadata=_meta("sessionAffinityTtl", (), "seconds a session stays bound to its credential"),
    )
    max_concurrent_per_credential: int = field(
        default=0,
        metadata=_meta(
            "maxConcurrentPerCredential",
            ("KIRO_MAX_CONCURRENT_PER_ACCOUNT",),
            "streams per credential at once (0: no cap)",
        ),
    )
    rpm_per_credential: int = field(
        default=0,
        metadata=_meta("rpmPerCredential", (), "requests per minute per credential (0: no cap)"),
    )
    max_concurrent_requests: int = field(
        default=0,
        metadata=_meta(
            "maxConcurrentRequests",
            ("KIRO_FAST_MAX_CONCURRENT", "MAX_CONCURRENT_SESSIONS"),
            "upstream requests at once, all credentials together (0: no cap)",
        ),
    )
    queue_size: int = field(
        default=100, metadata=_meta("queueSize", (), "requests that may wait for a free credential")
    )
    queue_timeout: float = field(
        default=30.0,
        metadata=_meta("queueTimeout", (), "longest wait for a free credential before a 429"),
    )
    slot_lease: float = field(
        default=90.0,
        metadata=_meta(
            "slotLease",
            (),
            "seconds a concurrency slot outlives a crashed holder (live streams renew theirs)",
        ),
    )
    max_failures: int = field(
        default=3,
        metadata=_meta("maxFailures", (), "consecutive auth failures that disable a credential"),
    )
    throttle_cooldown: float = field(
        default=300.0,
        metadata=_meta(
            "throttleCooldown", (), "cool-down after an account-level 429 (suspicious activity)"
        ),
    )
    rate_limit_cooldown: float = field(
        default=10.0,
        metadata=_meta("rateLimitCooldown", (), "cool-down after a 429 USER_REQUEST_RATE_EXCEEDED"),
    )
    refresh_failure_cooldown: float = field(
        default=30.0,
        metadata=_meta(
            "refreshFailureCooldown", (), "cool-down after a refresh failed for a transient reason"
        ),
    )
    usage_cache_ttl: float = field(
        default=300.0,
        metadata=_meta("usageCacheTtl", (), "seconds a getUsageLimits answer is reused"),
    )
    min_usage_threshold: float = field(
        default=0.0,
        metadata=_meta(
            "minUsageThreshold",
            (),
            "skip credentials whose remaining credits are below this (0: never)",
        ),
    )
    extract_thinking: bool = field(
        default=True,
        metadata=_meta("extractThinking", (), "split <thinking> out of non-streaming text"),
    )
    model_overrides: Mapping[str, str] = field(
        default_factory=dict, metadata=_meta("modelOverrides", (), "client model -> Kiro model id")
    )
    thinking_suffix: str = field(
        default="-thinking",
        metadata=_meta("thinkingSuffix", (), "model-name suffix that turns thinking on"),
    )
    # --- OpenAI endpoints (/v1/chat/completions, /v1/responses)
    openai_thinking_format: str = field(
        default="reasoning_content",
        metadata=_meta(
            "openaiThinkingFormat",
            (),
            "chat thinking output: reasoning_content, or thinking / think tags in content",
        ),
    )
    openai_alias_model: str = field(
        default="claude-sonnet-4.5",
        metadata=_meta("openaiAliasModel", (), "Kiro model id for gpt-4*, gpt-3.5-turbo*"),
    )
    previous_responses_max: int = field(
        default=1000,
        metadata=_meta(
            "previousResponsesMax", (), "responses kept for previous_response_id (0: none)"
        ),
    )
    previous_responses_ttl: float = field(
        default=3600.0,
        metadata=_meta(
            "previousResponsesTtl", (), "seconds a response stays usable as previous_response_id"
        ),
    )
    # --- limits and timeouts (seconds)
    max_body_size: int = field(
        default=32 * 1024 * 1024,
        metadata=_meta("maxBodySize", (), "largest client request body, bytes"),
    )
    connect_timeout: float = field(
        default=10.0, metadata=_meta("connectTimeout", (), "upstream connect timeout")
    )
    first_byte_timeout: float = field(
        default=120.0,
        metadata=_meta(
            "firstByteTimeout",
            (),
            "upstream time to first event (long prefill takes tens of seconds)",
            env_minutes=("REQUEST_TIMEOUT_MINUTES",),
        ),
    )
    stream_idle_timeout: float = field(
        default=180.0,
        metadata=_meta(
            "streamIdleTimeout",
            (),
            "longest upstream silence between events",
            env_minutes=("STREAM_REQUEST_TIMEOUT_MINUTES",),
        ),
    )
    auth_timeout: float = field(
        default=60.0,
        metadata=_meta(
            "authTimeout",
            (),
            "token refresh and usage call timeout",
            env_minutes=("SIMPLE_REQUEST_TIMEOUT_MINUTES",),
        ),
    )
    ping_interval: float = field(
        default=25.0,
        metadata=_meta("pingInterval", (), "SSE ping period while the upstream is silent"),
    )
    keep_alive_timeout: float = field(
        default=75.0, metadata=_meta("keepAliveTimeout", (), "idle client connection timeout")
    )
    header_timeout: float = field(
        default=15.0,
        metadata=_meta("headerTimeout", (), "time a client has to send its request head"),
    )
    shutdown_timeout: float = field(
        default=30.0, metadata=_meta("shutdownTimeout", (), "graceful shutdown deadline")
    )
    # --- metrics
    metrics_public: bool = field(
        default=False,
        metadata=_meta("metricsPublic", (), "serve /metrics without the admin key"),
    )
    # --- logging
    log_level: str = field(
        default="info",
        metadata=_meta(
            "logLevel", ("KIRO_FAST_LOG_LEVEL", "LOG_LEVEL"), "debug, info, warning, error"
        ),
    )
    log_format: str = field(
        default="text",
        metadata=_meta("logFormat", ("KIRO_FAST_LOG_FORMAT", "LOG_FORMAT"), "text or json"),
    )
    log_file: str | None = field(
        default=None,
        metadata=_meta("logFile", ("KIRO_FAST_LOG_FILE", "LOG_FILE"), "also log to this file"),
    )
    log_request_bodies: bool = field(
        default=False,
        metadata=_meta(
            "logRequestBodies",
            ("KIRO_FAST_LOG_REQUEST_BODIES",),
            "log client request bodies at debug level, secrets masked and cut (debugging only)",
        ),
    )
    # --- kiro.rs keys accepted for compatibility
    tls_backend: str = field(
        default="rustls",
        metadata=_meta("tlsBackend", (), "accepted for kiro.rs compatibility; ignored"),
    )
    default_endpoint: str = field(
        default="ide",
        metadata=_meta("defaultEndpoint", (), "kiro.rs endpoint name; only ide exists"),
    )
    endpoints: Mapping[str, Any] = field(
        default_factory=dict, metadata=_meta("endpoints", (), "kiro.rs per-endpoint settings")
    )

    def effective_auth_region(self) -> str:
        return self.auth_region or self.region

    def effective_api_region(self) -> str:
        return self.api_region or self.region

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- validation

Validator = Callable[[str, Any], Any]


def _is_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be a string, got {type(value).__name__}")
    return value


def _is_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"config key {key!r} must be an integer, got {type(value).__name__}")
    return value


def _is_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"config key {key!r} must be a number, got bool")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"config key {key!r} must be a number, got {type(value).__name__}")


def _is_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    }:
        return value.lower() in {"1", "true", "yes", "on"}
    raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")


def _is_mapping(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key!r} must be an object, got {type(value).__name__}")
    return value


def _positive_int(key: str, value: Any) -> int:
    number = _is_int(key, value)
    if number < 1:
        raise ConfigError(f"config key {key!r} must be 1 or more, got {number}")
    return number


def _non_negative(key: str, value: Any) -> float:
    number = _is_float(key, value)
    if number < 0:
        raise ConfigError(f"config key {key!r} must be 0 or more, got {number}")
    return number


def _strategy(key: str, value: Any) -> str:
    text = _is_str(key, value).strip().lower()
    if text not in STRATEGIES:
        names = "priority, round_robin, least_used, most_quota (or balanced, optimal, sequential)"
        raise ConfigError(f"config key {key!r} must be one of {names}; got {value!r}")
    return STRATEGIES[text]


def _log_level(key: str, value: Any) -> str:
    text = _is_str(key, value).strip().lower()
    text = {"warn": "warning", "fatal": "critical", "panic": "critical"}.get(text, text)
    level: str = _choice("debug", "info", "warning", "error", "critical")(key, text)
    return level


def _proxy_url(key: str, value: Any) -> str | None:
    text = _optional(_is_str)(key, value)
    if text is None:
        return None
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in PROXY_SCHEMES:
        raise ConfigError(
            f"config key {key!r} must be an http://, https://, socks4:// or socks5:// URL"
        )
    return str(text)


def _networks(key: str, value: Any) -> tuple[str, ...]:
    """IP addresses / CIDR networks: a JSON list, or one comma-separated string (env)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"config key {key!r} must be a list of IPs or CIDR networks")
    entries: list[str] = []
    for item in items:
        text = _is_str(key, item).strip()
        if not text:
            continue
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(
                f"config key {key!r}: {text!r} is not an IP address or CIDR network"
            ) from None
        entries.append(text)
    return tuple(entries)


def _choice(*allowed: str) -> Validator:
    def check(key: str, value: Any) -> str:
        text = _is_str(key, value).lower()
        if text not in allowed:
            raise ConfigError(
                f"config key {key!r} must be one of {', '.join(allowed)}; got {value!r}"
            )
        return text

    return check


def _port(key: str, value: Any) -> int:
    number = _is_int(key, value)
    if not 0 <= number <= 65535:
        raise ConfigError(f"config key {key!r} must be a port number 0-65535, got {number}")
    return number


def _positive(key: str, value: Any) -> float:
    number = _is_float(key, value)
    if number <= 0:
        raise ConfigError(f"config key {key!r} must be greater than 0, got {number}")
    return number


def _non_negative_int(key: str, value: Any) -> int:
    number = _is_int(key, value)
    if number < 0:
        raise ConfigError(f"config key {key!r} must be 0 or more, got {number}")
    return number


def _non_empty(key: str, value: Any) -> str:
    text = _is_str(key, value).strip()
    if not text:
        raise ConfigError(f"config key {key!r} must not be empty")
    return text


def _optional(check: Validator) -> Validator:
    def wrapped(key: str, value: Any) -> Any:
        if value is None:
            return None
        text = check(key, value)
        return text if not isinstance(text, str) or text.strip() else None

    return wrapped


_SPECIAL: dict[str, Validator] = {
    "port": _port,
    "trusted_proxies": _networks,
    "count_tokens_auth_type": _choice("x-api-key", "bearer"),
    "load_balancing_mode": _strategy,
    "proxy_url": _proxy_url,
    "session_affinity_ttl": _positive,
    "max_concurrent_per_credential": _non_negative_int,
    "rpm_per_credential": _non_negative_int,
    "max_concurrent_requests": _non_negative_int,
    "queue_size": _non_negative_int,
    "queue_timeout": _non_negative,
    "max_failures": _positive_int,
    "throttle_cooldown": _non_negative,
    "rate_limit_cooldown": _non_negative,
    "refresh_failure_cooldown": _non_negative,
    "usage_cache_ttl": _non_negative,
    "auth_timeout": _positive,
    "log_level": _log_level,
    "log_format": _choice("text", "json"),
    "tls_backend": _choice("rustls", "native-tls"),
    "max_body_size": _is_int,
    "connect_timeout": _positive,
    "first_byte_timeout": _positive,
    "stream_idle_timeout": _positive,
    "ping_interval": _positive,
    "keep_alive_timeout": _positive,
    "header_timeout": _positive,
    "shutdown_timeout": _positive,
    "openai_thinking_format": _choice("reasoning_content", "thinking", "think"),
    "openai_alias_model": _non_empty,
    "previous_responses_max": _non_negative_int,
    "max_upstream_body_bytes": _non_negative_int,
    "hidden_prompt_tokens": _non_negative_int,
    "previous_responses_ttl": _positive,
    "slot_lease": _positive,
    "jwt_expiry_hours": _positive,
    "min_usage_threshold": _non_negative,
    "admin_username": _non_empty,
}


def _validator_for(name: str, annotation: str) -> Validator:
    if name in _SPECIAL:
        return _SPECIAL[name]
    base = {
        "str": _is_str,
        "str | None": _optional(_is_str),
        "int": _is_int,
        "float": _is_float,
        "bool": _is_bool,
        "Mapping[str, str]": _is_mapping,
        "Mapping[str, Any]": _is_mapping,
    }
    return base[annotation]


_FIELDS = {f.metadata["key"]: f for f in fields(Config)}
#: alternative JSON key -> the field's own key
_ALIASES = {alias: f.metadata["key"] for f in fields(Config) for alias in f.metadata["aliases"]}


# --------------------------------------------------------------------------- loading


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON config file; a missing file is an error naming the path."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a JSON object")
    return data


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """JSON key -> value of the first set variable of each field (in declared order)."""
    values: dict[str, Any] = {}
    for key, f in _FIELDS.items():
        for name in f.metadata["env"]:
            raw = _env(environ, name)
            if raw is not None:
                values[key] = raw
                break
        else:
            for name in f.metadata["env_minutes"]:
                raw = _env(environ, name)
                if raw is not None:
                    values[key] = _minutes(name, raw)
                    break
    return values


def _env(environ: Mapping[str, str], name: str) -> str | None:
    raw = environ.get(name)
    if raw is None:
        raw = _read_secret_file(environ, name)
    return raw or None


def _minutes(name: str, raw: str) -> float:
    try:
        return float(raw) * 60.0
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be a number of minutes, got {raw!r}"
        ) from None


def _read_secret_file(environ: Mapping[str, str], name: str) -> str | None:
    """``NAME_FILE=/path`` reads the value from a file (Docker secrets)."""
    path = environ.get(name + "_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None


def build_config(
    file_values: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge file values, environment and overrides (JSON keys) into a :class:`Config`.

    Raises:
        ConfigError: an unknown key or a value of the wrong type; the message names it.
    """
    merged: dict[str, tuple[str, Any]] = {}
    for source in (
        file_values or {},
        _env_values(os.environ if environ is None else environ),
        overrides or {},
    ):
        for given, value in source.items():
            key = _ALIASES.get(given, given)
            if key not in _FIELDS:
                raise ConfigError(f"unknown config key {given!r}")
            merged[key] = (given, value)
    kwargs: dict[str, Any] = {}
    for key, (given, value) in merged.items():
        f = _FIELDS[key]
        kwargs[f.name] = _validator_for(f.name, str(f.type))(given, value)
    if not kwargs.get("system_version"):
        kwargs["system_version"] = random.choice(SYSTEM_VERSIONS)
    return Config(**kwargs)


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load ``path`` (if given) and apply environment and command-line overrides."""
    file_values = read_config_file(path) if path is not None else {}
    return build_config(file_values, environ=environ, overrides=overrides)


def validate_value(key: str, value: Any) -> tuple[str, Any]:
    """One JSON key (or alias) and its value, checked like the config file's.

    Returns the field name and the validated value (``None`` stays ``None``: "unset").

    Raises:
        ConfigError: an unknown key or a bad value; the message names the key.
    """
    own = _ALIASES.get(key, key)
    f = _FIELDS.get(own)
    if f is None:
        raise ConfigError(f"unknown config key {key!r}")
    if value is None:
        return f.name, None
    return f.name, _validator_for(f.name, str(f.type))(key, value)


def config_key(field_name: str) -> str:
    """The JSON key of a :class:`Config` field."""
    for f in fields(Config):
        if f.name == field_name:
            key: str = f.metadata["key"]
            return key
    raise KeyError(field_name)


def is_secret(field_name: str) -> bool:
    """Whether a field holds a secret (never shown in full)."""
    return any(f.name == field_name and f.metadata["secret"] for f in fields(Config))


def describe_fields() -> list[tuple[str, str, str, str]]:
    """(JSON key, environment variables, default, help) for documentation."""
    rows = []
    for f in fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        env = [*f.metadata["env"], *(f"{n} (minutes)" for n in f.metadata["env_minutes"])]
        rows.append((f.metadata["key"], ", ".join(env), repr(default), f.metadata["doc"]))
    return rows


def render_base(template: str, region: str) -> str:
    """Fill ``{region}`` in a base URL and drop a trailing slash."""
    return template.replace("{region}", region).rstrip("/")


def markdown_table() -> str:
    """The configuration reference as a Markdown table (docs/configuration.md embeds it)."""
    lines = ["| key | environment | default | meaning |", "|---|---|---|---|"]
    for key, env, default, doc in describe_fields():
        cells = (f"`{key}`", env.replace(", ", "<br>") or "", f"`{default}`", doc)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
