"""Kiro credentials: the record, the file formats, machine ids and atomic write-back.

What this module owns:

* :class:`Credential`, one Kiro login (social, IdC or ``ksk_`` API key) with its tokens
  and the state that must survive a restart (disabled flag, reason and time).
* :class:`CredentialFile`, a kiro.rs ``credentials.json`` (one object or an array),
  read unchanged and written back in the shape it came in, keeping keys it does not
  know. Every write is atomic (temp file, fsync, rename, fsync of the directory) and
  serialised by a lock, so a crash leaves the old file or the new one, never a broken one.
* Machine ids (spec kiro-auth.md §6): derived once per credential and stored with it, so
  the id does not change when the refresh token rotates.

Refreshing tokens is :mod:`kiro_fast.refresh`'s job; choosing a credential is the pool's.
No network code here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from .errors import ConfigError

AuthMethod = Literal["social", "idc", "api_key"]

_AUTH_ALIASES: dict[str, AuthMethod] = {
    "social": "social",
    "idc": "idc",
    "builder-id": "idc",
    "builderid": "idc",
    "iam": "idc",
    "enterprise": "idc",
    "api_key": "api_key",
    "apikey": "api_key",
}

#: kiro.rs rejects refresh tokens shorter than this as "truncated" copies.
MIN_REFRESH_TOKEN_LENGTH = 100

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

#: Keys this module maps to fields; every other key of an entry is kept verbatim.
_KNOWN_KEYS = {
    "id", "accessToken", "refreshToken", "profileArn", "expiresAt", "authMethod", "clientId",
    "clientSecret", "priority", "region", "authRegion", "apiRegion", "machineId", "email",
    "subscriptionTitle", "proxyUrl", "proxyUsername", "proxyPassword", "disabled",
    "disabledReason", "disabledAt", "kiroApiKey", "endpoint",
}  # fmt: skip


ExpiresForm = Literal["rfc3339", "seconds", "milliseconds"]


@dataclass(slots=True, eq=False)
class Credential:
    """One Kiro account. Times are Unix seconds (float)."""

    id: int
    auth_method: AuthMethod
    refresh_token: str | None = None
    access_token: str | None = None
    expires_at: float | None = None
    profile_arn: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    priority: int = 0
    region: str | None = None
    auth_region: str | None = None
    api_region: str | None = None
    machine_id: str | None = None
    email: str | None = None
    subscription_title: str | None = None
    proxy_url: str | None = None
    proxy_username: str | None = None
    proxy_password: str | None = None
    kiro_api_key: str | None = None
    endpoint: str | None = None
    disabled: bool = False
    disabled_reason: str | None = None
    disabled_at: float | None = None
    #: keys of the source entry this module does not interpret, written back unchanged
    extra: dict[str, Any] = field(default_factory=dict)
    #: how ``expiresAt`` was written in the source, reproduced on write-back
    expires_form: ExpiresForm = "rfc3339"

    @property
    def is_api_key(self) -> bool:
        return self.auth_method == "api_key"

    def auth_region_for(self, default: str) -> str:
        """Refresh region: credential authRegion > credential region > configured default."""
        return self.auth_region or self.region or default

    def api_region_for(self, default: str) -> str:
        """API region: credential apiRegion > configured default (``region`` is auth only)."""
        return self.api_region or default

    def needs_refresh(self, now: float, margin: float) -> bool:
        """A token is refreshed when missing, of unknown expiry or within ``margin`` of it."""
        if self.is_api_key:
            return False
        return not self.access_token or self.expires_at is None or self.expires_at <= now + margin

    def bearer(self) -> str:
        token = self.kiro_api_key if self.is_api_key else self.access_token
        return token or ""

    def disable(self, reason: str, now: float | None = None) -> None:
        self.disabled = True
        self.disabled_reason = reason
        self.disabled_at = time.time() if now is None else now

    def enable(self) -> None:
        self.disabled = False
        self.disabled_reason = None
        self.disabled_at = None

    def label(self) -> str:
        """How logs name the credential: never a token."""
        return f"credential #{self.id}"


# --------------------------------------------------------------------------- parsing


def parse_auth_method(entry: Mapping[str, Any]) -> AuthMethod:
    raw = entry.get("authMethod")
    if isinstance(raw, str) and raw.strip():
        method = _AUTH_ALIASES.get(raw.strip().lower())
        if method is None:
            raise ValueError(f"authMethod {raw!r} is not social, idc or api_key")
        return method
    if entry.get("kiroApiKey"):
        return "api_key"
    if entry.get("clientId") and entry.get("clientSecret"):
        return "idc"
    return "social"


def parse_expires_at(value: Any) -> tuple[float | None, ExpiresForm]:
    """Accept RFC 3339 text, Unix seconds or Unix milliseconds."""
    if value is None or value == "":
        return None, "rfc3339"
    if isinstance(value, bool):
        raise ValueError("expiresAt must be a date string or a number")
    if isinstance(value, int | float):
        # Milliseconds since the epoch exceed 1e11 for any date after 1973.
        if value > 1e11:
            return value / 1000.0, "milliseconds"
        return float(value), "seconds"
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        # Python's parser accepts at most 6 fraction digits; kiro.rs writes 9.
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"expiresAt {value!r} is not an RFC 3339 date") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp(), "rfc3339"
    raise ValueError("expiresAt must be a date string or a number")


def format_expires_at(value: float | None, form: ExpiresForm) -> Any:
    if value is None:
        return None
    if form == "seconds":
        return int(value)
    if form == "milliseconds":
        return int(value * 1000)
    moment = datetime.fromtimestamp(value, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _opt_str(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value.strip() or None


def credential_from_entry(entry: Mapping[str, Any], default_id: int) -> Credential:
    """Build a credential from one kiro.rs entry; ``ValueError`` names the bad field."""
    if not isinstance(entry, Mapping):
        raise ValueError("entry must be a JSON object")
    method = parse_auth_method(entry)
    expires_at, form = parse_expires_at(entry.get("expiresAt"))
    raw_id = entry.get("id", default_id)
    if isinstance(raw_id, bool) or not isinstance(raw_id, int) or raw_id < 0:
        raise ValueError("id must be a non-negative integer")
    priority = entry.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError("priority must be an integer")
    cred = Credential(
        id=raw_id,
        auth_method=method,
        refresh_token=_opt_str(entry, "refreshToken"),
        access_token=_opt_str(entry, "accessToken"),
        expires_at=expires_at,
        expires_form=form,
        profile_arn=_opt_str(entry, "profileArn"),
        client_id=_opt_str(entry, "clientId"),
        client_secret=_opt_str(entry, "clientSecret"),
        priority=priority,
        region=_opt_str(entry, "region"),
        auth_region=_opt_str(entry, "authRegion"),
        api_region=_opt_str(entry, "apiRegion"),
        machine_id=_opt_str(entry, "machineId"),
        email=_opt_str(entry, "email"),
        subscription_title=_opt_str(entry, "subscriptionTitle"),
        proxy_url=_opt_str(entry, "proxyUrl"),
        proxy_username=_opt_str(entry, "proxyUsername"),
        proxy_password=_opt_str(entry, "proxyPassword"),
        kiro_api_key=_opt_str(entry, "kiroApiKey"),
        endpoint=_opt_str(entry, "endpoint"),
        disabled=bool(entry.get("disabled", False)),
        disabled_reason=_opt_str(entry, "disabledReason"),
        extra={k: v for k, v in entry.items() if k not in _KNOWN_KEYS},
    )
    disabled_at = entry.get("disabledAt")
    if disabled_at is not None:
        cred.disabled_at = parse_expires_at(disabled_at)[0]
    if cred.disabled and not cred.disabled_reason:
        cred.disabled_reason = "Manual"
    _check_usable(cred)
    return cred


def _check_usable(cred: Credential) -> None:
    if cred.is_api_key:
        if not cred.kiro_api_key:
            raise ValueError("authMethod api_key needs kiroApiKey")
        return
    if not cred.refresh_token and not cred.access_token:
        raise ValueError("refreshToken is required")
    if cred.refresh_token and (
        len(cred.refresh_token) < MIN_REFRESH_TOKEN_LENGTH or "..." in cred.refresh_token
    ):
        # kiro.rs refuses these; we keep them loadable (tests and fakes use short tokens) but
        # flag obvious copy-paste truncation.
        if "..." in cred.refresh_token:
            raise ValueError("refreshToken looks truncated (contains '...')")
    if cred.auth_method == "idc" and not (cred.client_id and cred.client_secret):
        raise ValueError("authMethod idc needs clientId and clientSecret")


def credential_to_entry(cred: Credential) -> dict[str, Any]:
    """The kiro.rs entry for a credential, unknown source keys preserved."""
    entry: dict[str, Any] = {"id": cred.id}
    values: list[tuple[str, Any]] = [
        ("accessToken", cred.access_token),
        ("refreshToken", cred.refresh_token),
        ("profileArn", cred.profile_arn),
        ("expiresAt", format_expires_at(cred.expires_at, cred.expires_form)),
        ("authMethod", cred.auth_method),
        ("clientId", cred.client_id),
        ("clientSecret", cred.client_secret),
        ("region", cred.region),
        ("authRegion", cred.auth_region),
        ("apiRegion", cred.api_region),
        ("machineId", cred.machine_id),
        ("email", cred.email),
        ("subscriptionTitle", cred.subscription_title),
        ("proxyUrl", cred.proxy_url),
        ("proxyUsername", cred.proxy_username),
        ("proxyPassword", cred.proxy_password),
        ("kiroApiKey", cred.kiro_api_key),
        ("endpoint", cred.endpoint),
    ]
    entry.update((k, v) for k, v in values if v is not None)
    if cred.priority:
        entry["priority"] = cred.priority
    if cred.disabled:
        entry["disabled"] = True
        if cred.disabled_reason:
            entry["disabledReason"] = cred.disabled_reason
        if cred.disabled_at is not None:
            entry["disabledAt"] = format_expires_at(cred.disabled_at, "rfc3339")
    entry.update(cred.extra)
    return entry


# --------------------------------------------------------------------------- machine id


def normalise_machine_id(value: str | None) -> str | None:
    """64 hex digits as-is (lower-cased); a UUID's 32 digits doubled; else ``None``."""
    if not value:
        return None
    text = value.strip()
    if _HEX64.match(text):
        return text.lower()
    if _UUID.match(text):
        digits = text.replace("-", "").lower()
        return digits + digits
    return None


def derive_machine_id(cred: Credential, global_id: str | None = None) -> str:
    """kiro.rs precedence: credential id, configured id, a hash of the long-lived secret."""
    for candidate in (cred.machine_id, global_id):
        normalised = normalise_machine_id(candidate)
        if normalised:
            return normalised
    if cred.is_api_key and cred.kiro_api_key:
        seed = "KiroAPIKey/" + cred.kiro_api_key
    elif cred.refresh_token:
        seed = "KotlinNativeAPI/" + cred.refresh_token
    else:
        seed = "KiroFallback/" + str(uuid.uuid4())
    return hashlib.sha256(seed.encode()).hexdigest()


# --------------------------------------------------------------------------- file store


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one.

    Temp file in the same directory, fsync, rename over the target, fsync the directory.
    """
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(slots=True)
class LoadReport:
    credentials: list[Credential]
    #: (index, message) of entries that were skipped
    errors: list[tuple[int, str]]
    single: bool


class CredentialFile:
    """A kiro.rs ``credentials.json`` kept in sync with the in-memory credentials.

    A process-local lock plus an advisory ``flock`` on a sidecar lock file serialise
    writers, so worker processes on one host never interleave a write-back.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.single = False
        self._lock = threading.Lock()
        self._invalid: list[tuple[int, Any]] = []

    def load(self) -> LoadReport:
        """Read the file; invalid entries are reported by index and skipped."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return LoadReport([], [], False)
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from None
        if not raw.strip():
            return LoadReport([], [], False)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{self.path} is not valid JSON: {exc}") from None
        return self._parse(data)

    def _parse(self, data: Any) -> LoadReport:
        self.single = isinstance(data, dict)
        entries: Sequence[Any] = [data] if self.single else data
        if not isinstance(entries, list | tuple) and not self.single:
            raise ConfigError(f"{self.path} must hold an object or an array of objects")
        creds: list[Credential] = []
        errors: list[tuple[int, str]] = []
        self._invalid = []
        used = {e.get("id") for e in entries if isinstance(e, dict)}
        next_id = max([i for i in used if isinstance(i, int) and not isinstance(i, bool)] + [0]) + 1
        for index, entry in enumerate(entries):
            default_id = next_id
            try:
                cred = credential_from_entry(entry, default_id)
            except ValueError as exc:
                errors.append((index, str(exc)))
                self._invalid.append((index, entry))
                continue
            if cred.id == default_id:
                next_id += 1
            creds.append(cred)
        ids = [c.id for c in creds]
        if len(ids) != len(set(ids)):
            raise ConfigError(f"{self.path}: duplicate credential ids")
        creds.sort(key=lambda c: c.priority)
        return LoadReport(creds, errors, self.single)

    def render(self, credentials: Sequence[Credential]) -> bytes:
        """The file's new content: every credential, in the file's original shape.

        Entries that failed to load are kept as they were, so nothing a user wrote is lost.
        """
        entries: list[Any] = [credential_to_entry(c) for c in credentials]
        for index, entry in self._invalid:
            entries.insert(min(index, len(entries)), entry)
        payload: Any = entries[0] if self.single and len(entries) == 1 else entries
        return orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n"

    def write(self, data: bytes) -> None:
        """Replace the file atomically with ``data`` (blocking: call it off the loop)."""
        with self._locked():
            atomic_write(self.path, data)

    def save(self, credentials: Sequence[Credential]) -> None:
        self.write(self.render(credentials))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
