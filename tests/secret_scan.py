"""The whole-run secret scan: no planted secret may appear in anything kiro_fast logs.

A pytest plugin (``pytest_plugins = ["secret_scan"]`` in ``tests/conftest.py``). For the
whole session it

* **registers the secrets tests plant** — automatically, by wrapping the places secrets
  are made: every :class:`~kiro_fast.config.Config` built (client key, admin key, admin
  password, JWT secret, proxy password, count_tokens key, tokens inside a kiro2api JSON
  value), every :class:`~kiro_fast.credentials.Credential` constructed (refresh and access
  tokens, client secret, ``ksk_`` key, proxy password), the fake upstream's accounts and
  every token it issues or rotates, client-registration secrets, client keys and admin
  login tokens kiro_fast generates, and the config and credential files
  ``proc_harness.write_files`` writes for subprocesses. Tests may add their own with
  :func:`plant` or the ``planted_secrets`` fixture;
* **captures every log record at DEBUG**, attributed to the running test: a root handler
  takes every record emitted (any library), and kiro_fast's log calls below their
  logger's level are turned into records for the scan alone (levels are never changed,
  so what the code under test emits stays the same) — the message with its arguments,
  ``extra`` fields, exception and stack text,
  plus every line of the kiro_fast subprocesses ``proc_harness.KiroProcess`` collects;
* **at the end** scans all of it for each planted secret — the whole value, and every
  16-character window of it (a "shortened for the log" token is a leak too) — and fails
  the run (exit status 1) with a report that names the test that logged it, the logger,
  the test that planted it and the secret's kind, never the secret itself.

The wrappers go in once collection is over, so the test modules' own ``from x import
name`` copies are pointed at them too; values made while collecting are not tracked.

It cannot pass vacuously: on a broad run (tests from at least :data:`BROAD_RUN` test
modules, or ``KIRO_FAST_SECRET_SCAN_STRICT=1``) it also fails when it registered no
secret or captured fewer than :data:`MIN_RECORDS` records. Values shorter than
:data:`MIN_SECRET` characters are not tracked (placeholders such as ``"t"`` would match
everywhere).

Records are scanned raw, before :class:`kiro_fast.logs.RedactingFilter` masks them:
redaction is defence in depth, and no secret should reach a log call at all.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import pytest

#: Leaked substrings this long are found (the brief: any 16-character window).
WINDOW: Final = 16
#: Shorter values are placeholders, not secrets; they would match ordinary text.
MIN_SECRET: Final = 8
#: A run touching this many test modules must have planted secrets and captured records.
#: Counted in modules, not tests: the decoder suite alone is 1,200 tests in four modules
#: and logs nothing.
BROAD_RUN: Final = 20
MIN_RECORDS: Final = 100
STRICT_ENV: Final = "KIRO_FAST_SECRET_SCAN_STRICT"
#: A window with fewer distinct characters is padding (test tokens are often "aorX" + "x"
#: × 120), not what identifies a secret; only the whole value is looked for then.
MIN_DISTINCT: Final = 5
#: Log text is cut at characters no token, key or password contains (whitespace, quotes,
#: brackets, commas, semicolons); only the pieces long enough to hold a secret are scanned.
_TOKEN_RUN = re.compile(r"[^\s\"'<>()\[\]{},;]{" + str(MIN_SECRET) + ",}")
#: Config fields holding a secret (``kiroAuthToken`` is handled apart: JSON or a path).
_CONFIG_SECRETS: Final = {
    "api_key": "client API key",
    "admin_api_key": "admin API key",
    "admin_password": "admin password",
    "jwt_secret": "JWT secret",
    "proxy_password": "proxy password",
    "count_tokens_api_key": "count_tokens API key",
}
_CREDENTIAL_SECRETS: Final = {
    "refresh_token": "refresh token",
    "access_token": "access token",
    "client_secret": "client secret",
    "kiro_api_key": "Kiro API key",
    "proxy_password": "proxy password",
}
#: Keys of kiro.rs / kiro2api / Kiro-Go / config JSON whose values are secrets.
_ENTRY_SECRETS: Final = {
    "refreshToken": "refresh token",
    "accessToken": "access token",
    "clientSecret": "client secret",
    "kiroApiKey": "Kiro API key",
    "proxyPassword": "proxy password",
    "apiKey": "client API key",
    "adminApiKey": "admin API key",
    "adminPassword": "admin password",
    "jwtSecret": "JWT secret",
    "countTokensApiKey": "count_tokens API key",
}
_SESSION = "<outside any test>"


@dataclass(frozen=True)
class Planted:
    kind: str
    #: the test that planted it
    by: str


@dataclass(frozen=True)
class Leak:
    kind: str
    planted_by: str
    found_in: str
    source: str  # the logger, or "subprocess output"

    def describe(self) -> str:
        return (
            f"a planted {self.kind} (planted by {self.planted_by}) appeared in "
            f"{self.source} during {self.found_in}"
        )


@dataclass
class Registry:
    """Planted secrets and everything captured, for one session."""

    secrets: dict[str, Planted] = field(default_factory=dict)
    #: (test, source, text)
    captured: list[tuple[str, str, str]] = field(default_factory=list)
    records: int = 0
    subprocess_lines: int = 0
    current: str = _SESSION
    lock: threading.Lock = field(default_factory=threading.Lock)

    def plant(self, value: Any, kind: str) -> Any:
        """Register ``value`` (if it is a string long enough to be a secret); returns it."""
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                return value
        if isinstance(value, str) and len(value) >= MIN_SECRET:
            with self.lock:
                self.secrets.setdefault(value, Planted(kind, self.current))
        return value

    def capture(self, source: str, text: str) -> None:
        if text:
            with self.lock:
                self.captured.append((self.current, source, text))


REGISTRY = Registry()


def plant(value: Any, kind: str) -> Any:
    """Register a secret a test planted by hand; returns the value."""
    return REGISTRY.plant(value, kind)


@pytest.fixture
def planted_secrets() -> Registry:
    """The session's registry: ``planted_secrets.plant(value, kind)``."""
    return REGISTRY


# --------------------------------------------------------------------------- scanning


def windows(secret: str) -> Iterator[str]:
    """The secret itself when short, else every ``WINDOW``-character window of it that is
    not mere padding."""
    if len(secret) <= WINDOW:
        yield secret
        return
    for start in range(len(secret) - WINDOW + 1):
        window = secret[start : start + WINDOW]
        if len(set(window)) >= MIN_DISTINCT:
            yield window


def find_leaks(secrets: dict[str, Planted], captured: Iterable[tuple[str, str, str]]) -> list[Leak]:
    """Every (secret, test, source) whose secret — or a window of it — is in a text.

    Secrets longer than a window: texts are cut into runs of token characters, and every
    window of a long enough run is looked up (a whole test run scans in seconds). Shorter
    ones must appear as a whole token (``client-key`` is no leak in ``/client-keys``).
    """
    index: dict[str, str] = {}
    short: list[str] = []
    for secret in secrets:
        if len(secret) <= WINDOW:
            short.append(secret)
            continue
        for window in windows(secret):
            index.setdefault(window, secret)
    bounded = _bounded(short)
    leaks: dict[tuple[str, str, str], Leak] = {}
    for test, source, text in captured:
        found = {m.group(0) for m in bounded.finditer(text)} if bounded else set()
        for run in _TOKEN_RUN.findall(text):
            found.update(_secrets_in(run, index))
        for secret in found:
            planted = secrets[secret]
            leaks.setdefault((secret, test, source), Leak(planted.kind, planted.by, test, source))
    return list(leaks.values())


def _bounded(short: list[str]) -> re.Pattern[str] | None:
    if not short:
        return None
    alternatives = "|".join(re.escape(s) for s in sorted(short, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9_-])(?:{alternatives})(?![A-Za-z0-9_-])")


def _secrets_in(run: str, index: dict[str, str]) -> Iterator[str]:
    for start in range(len(run) - WINDOW + 1):
        secret = index.get(run[start : start + WINDOW])
        if secret is not None:
            yield secret


def record_text(record: logging.LogRecord) -> str:
    """What a handler could write for ``record``: message, extras, exception, stack."""
    try:
        parts = [record.getMessage()]
    except Exception:  # a malformed call: the raw pieces still count
        parts = [str(record.msg), repr(record.args)]
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS:
            parts.append(f"{key}={value}")
    if record.exc_info and record.exc_info[0] is not None:
        parts.append(_FORMATTER.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


_FORMATTER = logging.Formatter()
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "request_id", "taskName"}
)


class CaptureHandler(logging.Handler):
    """Root handler: every record's text, for the scan at the end."""

    def emit(self, record: logging.LogRecord) -> None:
        _capture_record(record)


def _capture_record(record: logging.LogRecord) -> None:
    try:
        text = record_text(record)
    except Exception:  # never break the code under test
        return
    with REGISTRY.lock:
        REGISTRY.records += 1
    REGISTRY.capture(f"logger {record.name} ({logging.getLevelName(record.levelno)})", text)


#: Logger methods whose calls are scanned even when their level is off.
_LEVEL_METHODS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _capture_call(logger: logging.Logger, level: int, msg: Any, args: Any, kwargs: Any) -> None:
    """A kiro_fast log call below its logger's level: scanned, never emitted."""
    exc_info = kwargs.get("exc_info")
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif exc_info and not isinstance(exc_info, tuple):
        exc_info = sys.exc_info()
    record = logging.LogRecord(logger.name, level, "", 0, msg, args, exc_info or None)
    for key, value in (kwargs.get("extra") or {}).items():
        setattr(record, key, value)
    _capture_record(record)


def _own(logger: logging.Logger) -> bool:
    return logger.name == "kiro_fast" or logger.name.startswith("kiro_fast.")


def _scan_disabled_calls() -> None:
    """Make kiro_fast's log calls below the configured level scanned too.

    Levels are left alone and what is emitted does not change: kiro_fast's loggers say
    they are enabled for every level (so code that checks ``isEnabledFor`` first, such
    as the access log, still makes its call), and the level methods emit only what the
    real level allows; the rest becomes a record for the scan alone.
    """
    enabled = logging.Logger.isEnabledFor
    if getattr(enabled, "_secret_scan", False):
        return

    def is_enabled_for(self: logging.Logger, level: int) -> bool:
        return _own(self) or enabled(self, level)

    def wrap(name: str, level: int) -> None:
        original = getattr(logging.Logger, name)

        def method(self: logging.Logger, msg: Any, *args: Any, **kwargs: Any) -> None:
            if _own(self) and not enabled(self, level):
                _capture_call(self, level, msg, args, kwargs)
                return
            # One frame more to skip, so records still name the real caller.
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            original(self, msg, *args, **kwargs)

        setattr(logging.Logger, name, method)

    for name, level in _LEVEL_METHODS.items():
        wrap(name, level)
    original_log = logging.Logger.log

    def log(self: logging.Logger, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if _own(self) and not enabled(self, level):
            _capture_call(self, level, msg, args, kwargs)
            return
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        original_log(self, level, msg, *args, **kwargs)

    is_enabled_for._secret_scan = True  # type: ignore[attr-defined]
    logging.Logger.log = log  # type: ignore[method-assign]
    logging.Logger.isEnabledFor = is_enabled_for  # type: ignore[method-assign]


# --------------------------------------------------------------------------- registration hooks


def _after(owner: Any, name: str, note: Callable[..., None]) -> None:
    """Wrap ``owner.name`` so ``note(result, *args, **kwargs)`` runs after each call."""
    original = getattr(owner, name, None)
    if original is None or getattr(original, "_secret_scan", False):
        return
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = await original(*args, **kwargs)
            _quietly(note, result, *args, **kwargs)
            return result

        wrapper: Any = async_wrapper
    else:

        @functools.wraps(original)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            _quietly(note, result, *args, **kwargs)
            return result

        wrapper = sync_wrapper
    wrapper._secret_scan = True
    setattr(owner, name, wrapper)
    _rebind(original, wrapper)


def _rebind(original: Any, wrapper: Any) -> None:
    """Point every already-imported ``from x import name`` copy at the wrapper."""
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith(_OWN_MODULES):
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                setattr(module, attr, wrapper)


_OWN_MODULES = ("kiro_fast", "e2e_harness", "proc_harness", "pool_helpers", "test_")


def _quietly(note: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        note(*args, **kwargs)
    except Exception:  # registration must never change the behaviour under test
        pass


def _config_secrets(config: Any, *args: Any, **kwargs: Any) -> None:
    for name, kind in _CONFIG_SECRETS.items():
        plant(getattr(config, name, None), kind)
    blob = getattr(config, "kiro_auth_token", None)
    if isinstance(blob, str) and blob.lstrip()[:1] in ("[", "{"):
        _entry_secrets(blob)


def _entry_secrets(value: Any) -> None:
    """Secrets inside JSON text or parsed JSON (credential entries, config objects)."""
    if isinstance(value, str):
        try:
            import orjson

            value = orjson.loads(value)
        except ValueError:
            return
    if isinstance(value, dict):
        for key, inner in value.items():
            kind = _ENTRY_SECRETS.get(key)
            if kind is not None:
                plant(inner, kind)
            elif isinstance(inner, dict | list):
                _entry_secrets(inner)
    elif isinstance(value, list):
        for item in value:
            _entry_secrets(item)


def _credential_secrets(_result: Any, cred: Any, *args: Any, **kwargs: Any) -> None:
    for name, kind in _CREDENTIAL_SECRETS.items():
        plant(getattr(cred, name, None), kind)


def _account_args(_result: Any, _self: Any, *args: Any, **kwargs: Any) -> None:
    """``add_social(refresh, access)``, ``add_idc(refresh, client_id, client_secret, …)``,
    ``add_api_key(key)``: every positional string but a client id, and the keyword ones."""
    for index, value in enumerate(args):
        if index == 1 and len(args) >= 3:
            continue  # add_idc's client id: an identifier, logged by design
        plant(value, "fake-upstream account secret")
    plant(kwargs.get("access_token"), "access token")
    account = _result
    for name in ("refresh_token", "access_token", "api_key", "client_secret"):
        plant(getattr(account, name, None), f"fake-upstream {name.replace('_', ' ')}")


def _issued(kind: str) -> Callable[..., None]:
    def note(result: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(result, tuple):
            result = result[0]
        plant(result, kind)

    return note


def _granted(_result: Any, _self: Any, _account: Any, token: Any, *args: Any) -> None:
    plant(token, "access token issued by the fake")


def _registered_client(result: Any, *args: Any, **kwargs: Any) -> None:
    body = getattr(result, "body", b"")
    _entry_secrets(body.decode() if isinstance(body, bytes) else body)


def _written_files(result: Any, *args: Any, **kwargs: Any) -> None:
    """Every secret in the config and credential files written for a subprocess."""
    plant(kwargs.get("api_key"), "client API key")
    for path in result:
        _entry_secrets(path.read_text())


def _process_started(_result: Any, process: Any, *args: Any, **kwargs: Any) -> None:
    with REGISTRY.lock:
        _PROCESSES.append((REGISTRY.current, process))


_PROCESSES: list[tuple[str, Any]] = []


def _collect_processes(finished_only: bool) -> None:
    """Take the lines of the subprocesses that exited (or of all, at the end)."""
    with REGISTRY.lock:
        keep, take = [], []
        for test, process in _PROCESSES:
            done = not finished_only or process.proc.poll() is not None
            (take if done else keep).append((test, process))
        _PROCESSES[:] = keep
    for test, process in take:
        lines = list(getattr(process, "lines", []))
        REGISTRY.subprocess_lines += len(lines)
        with REGISTRY.lock:
            REGISTRY.captured.append((test, "subprocess output", "\n".join(lines)))


def install_hooks() -> None:
    """Wrap the places secrets are made (see the module docstring)."""
    import kiro_fast.config as config_module
    import kiro_fast.credentials as credentials_module
    import kiro_fast.testing.accounts as accounts_module

    _after(config_module, "build_config", _config_secrets)
    _after(credentials_module.Credential, "__init__", _credential_secrets)
    accounts = accounts_module.Accounts
    for name in ("add_social", "add_idc", "add_api_key"):
        _after(accounts, name, _account_args)
    _after(accounts, "_grant", _granted)
    _after(accounts, "_rotate", _issued("refresh token issued by the fake"))
    _after(accounts, "register_client", _registered_client)
    _optional_hooks()


def _optional_hooks() -> None:
    """Parts that may not exist in every version of the tree."""
    try:
        import kiro_fast.accounting as accounting

        _after(accounting, "new_key", _issued("client key generated by kiro_fast"))
    except ImportError:
        pass
    try:
        from kiro_fast.admin import auth

        _after(auth.AdminAuth, "issue", _issued("admin login token"))
        _after(auth.AdminAuth, "secret", _issued("admin token signing secret"))
    except ImportError:
        pass
    try:
        import proc_harness

        _after(proc_harness, "write_files", _written_files)
        _after(proc_harness.KiroProcess, "__init__", _process_started)
    except ImportError:
        pass


# --------------------------------------------------------------------------- pytest hooks

_HANDLER = CaptureHandler(logging.DEBUG)
_STATE: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    install_hooks()


def pytest_configure(config: pytest.Config) -> None:
    _scan_disabled_calls()
    logging.getLogger().addHandler(_HANDLER)
    _STATE["modules"] = set()


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    REGISTRY.current = nodeid
    _STATE["modules"].add(nodeid.split("::", 1)[0])


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    _collect_processes(finished_only=True)
    REGISTRY.current = _SESSION


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.getLogger().removeHandler(_HANDLER)
    _collect_processes(finished_only=False)
    problems = verdict(len(_STATE.get("modules", ())))
    _STATE["summary"] = problems
    if problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def verdict(modules_run: int) -> list[str]:
    """The scan's findings, as report lines (empty: clean)."""
    leaks = find_leaks(dict(REGISTRY.secrets), list(REGISTRY.captured))
    problems = [leak.describe() for leak in leaks]
    strict = os.environ.get(STRICT_ENV) == "1" or modules_run >= BROAD_RUN
    if strict and not REGISTRY.secrets:
        problems.append("no secret was registered: the registration hooks are not wired in")
    if strict and REGISTRY.records < MIN_RECORDS:
        problems.append(
            f"only {REGISTRY.records} log records were captured (fewer than {MIN_RECORDS}): "
            "the capture handler is not wired in"
        )
    return problems


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    problems: list[str] = _STATE.get("summary", [])
    counts = (
        f"{len(REGISTRY.secrets)} planted secrets, {REGISTRY.records} log records and "
        f"{REGISTRY.subprocess_lines} subprocess lines scanned"
    )
    if not problems:
        terminalreporter.write_line(f"secret scan: {counts}: no leak")
        return
    terminalreporter.section("secret scan", red=True)
    terminalreporter.write_line(f"secret scan FAILED ({counts}):", red=True)
    for line in problems:
        terminalreporter.write_line(f"  {line}", red=True)
