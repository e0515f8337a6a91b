"""Kiro credentials: the record, the kiro.rs entry shape, machine ids and atomic writes.

What this module owns:

* :class:`Credential`, one Kiro login (social, IdC or ``ksk_`` API key) with its tokens
  and the state that must survive a restart (disabled flag, reason and time, machine id).
* The kiro.rs ``credentials.json`` entry (spec kiro-auth.md §2.2) both ways: every field,
  the auth-method aliases, all three ``expiresAt`` forms (RFC 3339, Unix seconds, Unix
  milliseconds — written back in the form they came in), unknown keys kept verbatim.
  This entry is also the shape the state store keeps (plus the two ``kiroFast…`` keys that
  tie an entry to the source file it came from).
* Field-level validation: a bad entry raises :class:`FieldError` naming the field.
* Machine ids (spec kiro-auth.md §6): derived once per credential and stored with it, so
  the id does not change when the refresh token rotates.
* :func:`atomic_write`: temp file, fsync, rename, fsync of the directory — a crash leaves
  the old file or the new one, never a broken one.

Which files hold credentials and in what shape is :mod:`kiro_fast.sources`' job; refreshing
tokens is :mod:`kiro_fast.refresh`'s; choosing a credential is the pool's. No network code.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

AuthMethod = Literal["social", "idc", "api_key"]
ExpiresForm = Literal["rfc3339", "seconds", "milliseconds"]

#: Every spelling peers use (kiro.rs, kiro2api ``Social``/``IdC``, Kiro-Go providers),
#: compared case-insensitively.
_AUTH_ALIASES: Final[dict[str, AuthMethod]] = {
    "social": "social",
    "google": "social",
    "github": "social",
    "idc": "idc",
    "builder-id": "idc",
    "builderid": "idc",
    "iam": "idc",
    "enterprise": "idc",
    "api_key": "api_key",
    "apikey": "api_key",
}

#: kiro.rs rejects refresh tokens shorter than this as "truncated" copies; kiro_fast only
#: rejects the obvious ``...`` truncation (test tokens are short).
MIN_REFRESH_TOKEN_LENGTH: Final = 100

#: Store-entry keys that link a credential to the entry of a source file it mirrors.
SOURCE_KEY: Final = "kiroFastSource"
FINGERPRINT_KEY: Final = "kiroFastFingerprint"

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+$")
#: Bytes of randomness before the region in an AWS SSO OIDC client id (kiro-auth.md §2.7).
_CLIENT_ID_RANDOM_BYTES: Final = 16

#: Keys this module maps to fields; every other key of an entry is kept verbatim.
_KNOWN_KEYS = {
    "id", "accessToken", "refreshToken", "profileArn", "expiresAt", "authMethod", "clientId",
    "clientSecret", "priority", "region", "authRegion", "apiRegion", "machineId", "email",
    "subscriptionTitle", "proxyUrl", "proxyUsername", "proxyPassword", "disabled",
    "disabledReason", "disabledAt", "kiroApiKey", "endpoint", SOURCE_KEY, FINGERPRINT_KEY,
}  # fmt: skip


class FieldError(ValueError):
    """One field of a credential entry is wrong; ``field`` names it (``entry`` for the whole)."""

    def __init__(self, field_name: str, detail: str) -> None:
        super().__init__(f"{field_name}: {detail}")
        self.field = field_name
        self.detail = detail


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
    #: ``"<source id>#<entry key>"`` of the file entry this credential mirrors, if any
    source: str | None = None
    #: hash of that entry as last read or written (tells a restart whether it changed)
    fingerprint: str | None = None

    @property
    def is_api_key(self) -> bool:
        return self.auth_method == "api_key"

    def auth_region_for(self, default: str) -> str:
        """Refresh region: authRegion > region > the IdC client registration's > default.

        An IdC refresh must go to the region that issued the client registration
        (kiro-auth.md §4), which AWS encodes at the end of the client id.
        """
        own = self.auth_region or self.region
        if own:
            return own
        if self.auth_method == "idc":
            return client_region(self.client_id) or default
        return default

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

    def copy_from(self, other: Credential) -> None:
        """Take every field of ``other`` (a newer state of the same account)."""
        for f in _FIELDS:
            setattr(self, f, getattr(other, f))


_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Credential))


def client_region(client_id: str | None) -> str | None:
    """The region an AWS SSO OIDC client id was registered in, if it says (kiro-auth.md §2.7).

    AWS client ids are base64url of 16 random bytes followed by the region's ASCII name.
    """
    if not client_id:
        return None
    padded = client_id + "=" * (-len(client_id) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        return None
    try:
        tail = raw[_CLIENT_ID_RANDOM_BYTES:].decode("ascii")
    except UnicodeDecodeError:
        return None
    return tail if _REGION.match(tail) else None


# --------------------------------------------------------------------------- parsing


def parse_auth_method(entry: Mapping[str, Any]) -> AuthMethod:
    """``authMethod`` (any alias, any case); absent: api_key / idc / social by the fields."""
    raw = entry.get("authMethod")
    if raw is not None and not isinstance(raw, str):
        raise FieldError("authMethod", "must be a string")
    if isinstance(raw, str) and raw.strip():
        method = _AUTH_ALIASES.get(raw.strip().lower())
        if method is None:
            raise FieldError("authMethod", f"{raw!r} is not social, idc or api_key")
        return method
    if entry.get("kiroApiKey"):
        return "api_key"
    if entry.get("clientId") and entry.get("clientSecret"):
        return "idc"
    return "social"


def parse_expires_at(value: Any, field_name: str = "expiresAt") -> tuple[float | None, ExpiresForm]:
    """Accept RFC 3339 text, Unix seconds or Unix milliseconds (numbers or digit strings)."""
    if value is None or value == "":
        return None, "rfc3339"
    if isinstance(value, bool):
        raise FieldError(field_name, "must be a date string or a number")
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        value = float(value)
    if isinstance(value, int | float):
        # Milliseconds since the epoch exceed 1e11 for any date after 1973.
        if value > 1e11:
            return value / 1000.0, "milliseconds"
        return float(value), "seconds"
    if isinstance(value, str):
        return _parse_rfc3339(value, field_name), "rfc3339"
    raise FieldError(field_name, "must be a date string or a number")


def _parse_rfc3339(value: str, field_name: str) -> float:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python's parser accepts at most 6 fraction digits; kiro.rs writes 9.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(field_name, f"{value!r} is not an RFC 3339 date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_expires_at(value: float | None, form: ExpiresForm) -> Any:
    if value is None:
        return None
    if form == "seconds":
        return int(value)
    if form == "milliseconds":
        return int(value * 1000)
    return format_rfc3339(value)


def format_rfc3339(value: float) -> str:
    """JavaScript ``toISOString()`` style: milliseconds and ``Z`` (what the Kiro IDE writes)."""
    moment = datetime.fromtimestamp(value, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def opt_str(entry: Mapping[str, Any], key: str) -> str | None:
    """A string field, stripped; ``None`` when absent or blank."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FieldError(key, "must be a string")
    return value.strip() or None


def _int_field(entry: Mapping[str, Any], key: str, default: int) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError(key, "must be a non-negative integer")
    return value


def credential_from_entry(entry: Mapping[str, Any], default_id: int) -> Credential:
    """Build a credential from one kiro.rs entry.

    Raises:
        FieldError: names the offending field.
    """
    if not isinstance(entry, Mapping):
        raise FieldError("entry", "must be a JSON object")
    expires_at, form = parse_expires_at(entry.get("expiresAt"))
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        raise FieldError("disabled", "must be true or false")
    cred = Credential(
        id=_int_field(entry, "id", default_id),
        auth_method=parse_auth_method(entry),
        expires_at=expires_at,
        expires_form=form,
        priority=_int_field(entry, "priority", 0),
        disabled=disabled,
        extra={k: v for k, v in entry.items() if k not in _KNOWN_KEYS},
    )
    for key, name in _STRING_FIELDS.items():
        setattr(cred, name, opt_str(entry, key))
    if entry.get("disabledAt") is not None:
        cred.disabled_at = parse_expires_at(entry["disabledAt"], "disabledAt")[0]
    if cred.disabled and not cred.disabled_reason:
        cred.disabled_reason = "Manual"
    if not cred.disabled:
        cred.disabled_reason = cred.disabled_at = None
    check_usable(cred)
    return cred


#: entry key -> Credential field, for the plain string fields
_STRING_FIELDS: Final = {
    "refreshToken": "refresh_token",
    "accessToken": "access_token",
    "profileArn": "profile_arn",
    "clientId": "client_id",
    "clientSecret": "client_secret",
    "region": "region",
    "authRegion": "auth_region",
    "apiRegion": "api_region",
    "machineId": "machine_id",
    "email": "email",
    "subscriptionTitle": "subscription_title",
    "proxyUrl": "proxy_url",
    "proxyUsername": "proxy_username",
    "proxyPassword": "proxy_password",
    "kiroApiKey": "kiro_api_key",
    "endpoint": "endpoint",
    "disabledReason": "disabled_reason",
    SOURCE_KEY: "source",
    FINGERPRINT_KEY: "fingerprint",
}


def check_usable(cred: Credential) -> None:
    """The fields each auth method needs (kiro-auth.md §1)."""
    if cred.is_api_key:
        if not cred.kiro_api_key:
            raise FieldError("kiroApiKey", "authMethod api_key needs a kiroApiKey")
        return
    if not cred.refresh_token and not cred.access_token:
        raise FieldError("refreshToken", "missing (social and idc logins need one)")
    if cred.refresh_token and "..." in cred.refresh_token:
        raise FieldError("refreshToken", "looks truncated (contains '...')")
    if cred.auth_method == "idc":
        if not cred.client_id:
            raise FieldError("clientId", "authMethod idc needs clientId and clientSecret")
        if not cred.client_secret:
            raise FieldError("clientSecret", "authMethod idc needs clientId and clientSecret")


def credential_to_entry(cred: Credential, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The kiro.rs entry for a credential; unknown keys from ``extra`` (default: the ones
    the credential was loaded with) are kept."""
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
            entry["disabledAt"] = format_rfc3339(cred.disabled_at)
    entry.update(cred.extra if extra is None else extra)
    return entry


def unknown_keys(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a kiro.rs entry this module does not interpret."""
    return {k: v for k, v in entry.items() if k not in _KNOWN_KEYS}


def credential_to_store_entry(cred: Credential) -> dict[str, Any]:
    """The state-store entry: the kiro.rs entry plus the link to its source file entry."""
    entry = credential_to_entry(cred)
    if cred.source:
        entry[SOURCE_KEY] = cred.source
        entry[FINGERPRINT_KEY] = cred.fingerprint
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


# --------------------------------------------------------------------------- atomic write


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one.

    Temp file in the same directory (created 0600, so a secret is never world-readable),
    fsync, rename over the target, fsync the directory so the rename itself is durable.
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
