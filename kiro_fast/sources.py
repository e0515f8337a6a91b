"""Credential sources: the files (and the one variable) accounts come from, in peers' formats.

What this module owns — reading each format unchanged and writing changes back into the
same file in the same shape (spec kiro-auth.md §2):

* :class:`KiroRsFile` — kiro.rs ``credentials.json``: one object or an array; missing ids
  are assigned (``max + 1``…) and written back at once, as kiro.rs does.
* :class:`Kiro2ApiSource` — kiro2api ``KIRO_AUTH_TOKEN``: JSON text, or the path of a
  JSON file (then written back); ``auth`` is ``Social`` or ``IdC``.
* :class:`KiroGoConfig` — Kiro-Go ``data/config.json``: the ``accounts`` array
  (``expiresAt`` in Unix seconds, ``enabled``, ``banStatus``/``banReason``/``banTime``);
  every other key of the file is kept.
* :class:`KiroIdeCache` — the Kiro IDE's ``kiro-auth-token.json`` (social or IdC), with
  the IdC client registration ``{clientIdHash}.json`` next to it. The IDE refreshes the
  same account and rewrites this file, which is why it can be re-read (:meth:`reread`).

Strategy for writing: every write is a read-merge-write of the entries that changed, under
a process lock and an ``flock`` on a sidecar ``.lock`` file (so worker processes and a
concurrent user edit of other entries are never lost), then :func:`atomic_write`. Only
the fields the format carries are touched; every other key stays as the user wrote it.
An entry the user removed meanwhile is never resurrected.

Each loaded credential is tied to its entry by ``Credential.source`` (``"<source id>#<entry
key>"``) and carries a ``fingerprint`` of the entry; the state store keeps both, so a restart
can tell "the file changed since we last wrote it" (the file wins) from "it did not" (the
store's newer state wins — what makes a read-only source such as an environment variable
keep its rotated refresh token).

Invalid entries are reported by index and field and skipped; valid ones still load.
Blocking I/O throughout: callers run these methods in a thread. Nothing here talks to
the network or the state store.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import orjson

from .credentials import (
    Credential,
    FieldError,
    atomic_write,
    client_region,
    credential_from_entry,
    credential_to_entry,
    format_rfc3339,
    opt_str,
    parse_expires_at,
    unknown_keys,
)
from .errors import ConfigError

#: Credential fields every format stores (tokens, login kind, IdC registration).
TOKEN_FIELDS: Final = frozenset(
    {"access_token", "refresh_token", "expires_at", "expires_form", "auth_method"}
)
#: Disable reasons kiro_fast sets on its own: a changed refresh token in the source file
#: gives such a credential another chance (the user logged in again).
AUTOMATIC_REASONS: Final = frozenset({"InvalidRefreshToken", "TooManyFailures"})


@dataclass(frozen=True, slots=True)
class EntryProblem:
    """An entry that could not be loaded: its position in the file and the bad field."""

    index: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"entry {self.index}: {self.field}: {self.message}"


@dataclass(slots=True)
class LoadReport:
    credentials: list[Credential]
    problems: list[EntryProblem]


def fingerprint(entry: Any) -> str:
    """A stable hash of an entry's JSON (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def entry_key(cred: Credential) -> str:
    """The entry key part of ``cred.source``."""
    return (cred.source or "").rpartition("#")[2]


def source_id_of(source: str | None) -> str | None:
    """The source id part of a ``Credential.source`` link."""
    return source.rpartition("#")[0] if source else None


# --------------------------------------------------------------------------- base


class CredentialSource(abc.ABC):
    """One place credentials are read from (and, if ``writable``, written back to)."""

    kind: ClassVar[str]
    #: Credential fields the format can hold; on a restart after the file changed, these
    #: come from the file and every other field keeps the state store's value.
    carries: ClassVar[frozenset[str]]

    def __init__(self, location: str, *, writable: bool = True) -> None:
        self.location = location
        self.id = f"{self.kind}:{location}"
        #: whether :meth:`update` writes anything
        self.writable = writable

    def describe(self) -> str:
        """For logs: the format and where it lives, never a secret."""
        return f"{self.kind} {self.location}"

    @abc.abstractmethod
    def load(self) -> LoadReport:
        """Every credential of the source (``id`` 0 when the format has no ids).

        Raises:
            ConfigError: the whole source is unreadable (not JSON, wrong top-level shape).
        """

    @abc.abstractmethod
    def update(self, credentials: Sequence[Credential]) -> None:
        """Write these credentials' changes back; sets each one's new ``fingerprint``."""

    @abc.abstractmethod
    def reread(self, cred: Credential) -> Credential | None:
        """The entry of ``cred`` as the source holds it now (``None``: gone or unreadable)."""


class JsonFileSource(CredentialSource):
    """A JSON document on disk holding one or more entries."""

    def __init__(
        self, path: str | os.PathLike[str], *, location: str | None = None, writable: bool = True
    ) -> None:
        self.path = Path(path).expanduser()
        super().__init__(location or str(self.path.absolute()), writable=writable)
        self._thread_lock = threading.Lock()

    # -- format hooks

    @abc.abstractmethod
    def _entries(self, doc: Any) -> list[tuple[str, Any]]:
        """(entry key, raw entry) in file order."""

    @abc.abstractmethod
    def _parse(self, key: str, index: int, raw: Any) -> Credential:
        """One raw entry as a credential; :class:`FieldError` names a bad field."""

    @abc.abstractmethod
    def _merge(self, raw: Mapping[str, Any], cred: Credential) -> dict[str, Any]:
        """The entry to write for ``cred``, from the entry the file holds now."""

    @abc.abstractmethod
    def _replace(self, doc: Any, key: str, new: dict[str, Any]) -> Any:
        """``doc`` with the entry ``key`` replaced."""

    def _prepare(self, doc: Any) -> tuple[Any, bool]:
        """Fix up a freshly read document before parsing; ``True`` if it must be written."""
        return doc, False

    # -- reading and writing

    def read_document(self) -> Any:
        """The parsed file, ``None`` when missing or blank."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from None
        if not raw.strip():
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{self.path} is not valid JSON: {exc}") from None

    def write_document(self, doc: Any) -> None:
        atomic_write(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")

    def load(self) -> LoadReport:
        with self.locked():
            self._remove_stale_temp_files()
            doc = self.read_document()
            if doc is None:
                return LoadReport([], [])
            doc, changed = self._prepare(doc)
            if changed:
                self.write_document(doc)
        return self._parse_all(doc)

    def _parse_all(self, doc: Any) -> LoadReport:
        report = LoadReport([], [])
        for index, (key, raw) in enumerate(self._entries(doc)):
            try:
                cred = self._parse(key, index, raw)
            except FieldError as exc:
                report.problems.append(EntryProblem(index, exc.field, exc.detail))
                continue
            cred.source = f"{self.id}#{key}"
            cred.fingerprint = fingerprint(raw)
            report.credentials.append(cred)
        return report

    def update(self, credentials: Sequence[Credential]) -> None:
        with self.locked():
            doc = self.read_document()
            if doc is None:
                return
            current = dict(self._entries(doc))
            for cred in credentials:
                key = entry_key(cred)
                raw = current.get(key)
                if not isinstance(raw, dict):
                    continue  # removed (or broken) since it was loaded: never resurrect it
                new = self._merge(raw, cred)
                doc = self._replace(doc, key, new)
                current[key] = new
                cred.fingerprint = fingerprint(new)
            self.write_document(doc)

    def reread(self, cred: Credential) -> Credential | None:
        try:
            doc = self.read_document()
        except ConfigError:
            return None
        if doc is None:
            return None
        for index, (key, raw) in enumerate(self._entries(doc)):
            if key == entry_key(cred):
                try:
                    fresh = self._parse(key, index, raw)
                except FieldError:
                    return None
                fresh.source, fresh.fingerprint = cred.source, fingerprint(raw)
                return fresh
        return None

    def _remove_stale_temp_files(self) -> None:
        """Temp files a killed writer left (they may hold secrets). Only called with the
        lock held, when no writer of this file can be running."""
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive access to the file among threads and processes of this host."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._thread_lock:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def _list_or_single(doc: Any, what: str) -> list[Any]:
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list):
        return doc
    raise ConfigError(f"{what} must hold a JSON object or an array of objects")


# --------------------------------------------------------------------------- kiro.rs


class KiroRsFile(JsonFileSource):
    """kiro.rs ``credentials.json`` (kiro-auth.md §2.2): every field is ours to write."""

    kind = "kiro.rs"
    carries = frozenset({"*"})

    def _prepare(self, doc: Any) -> tuple[Any, bool]:
        entries = _list_or_single(doc, str(self.path))
        used = [e.get("id") for e in entries if isinstance(e, dict)]
        valid = [i for i in used if isinstance(i, int) and not isinstance(i, bool) and i >= 0]
        next_id = max(valid, default=0) + 1
        changed = False
        for entry in entries:
            if isinstance(entry, dict) and "id" not in entry:
                # kiro.rs assigns missing ids at start-up and writes them back, so the
                # admin API and the state store can name each entry from now on.
                entry["id"] = next_id
                next_id += 1
                changed = True
        return doc, changed

    def _entries(self, doc: Any) -> list[tuple[str, Any]]:
        entries = _list_or_single(doc, str(self.path))
        out: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            key = str(entry.get("id")) if isinstance(entry, dict) else f"invalid-{index}"
            if key in seen:
                key = f"duplicate-{index}"
            seen.add(key)
            out.append((key, entry))
        return out

    def _parse(self, key: str, index: int, raw: Any) -> Credential:
        if key.startswith("duplicate-"):
            raise FieldError("id", f"{raw.get('id')!r} is used by an earlier entry")
        return credential_from_entry(raw, default_id=0)

    def _merge(self, raw: Mapping[str, Any], cred: Credential) -> dict[str, Any]:
        return credential_to_entry(cred, extra=unknown_keys(raw))

    def _replace(self, doc: Any, key: str, new: dict[str, Any]) -> Any:
        if isinstance(doc, dict):
            return new
        return [new if isinstance(e, dict) and str(e.get("id")) == key else e for e in doc]


# --------------------------------------------------------------------------- kiro2api


#: Fields kiro_fast adds to kiro2api and Kiro-Go entries (both ignore unknown keys).
_EXTRA_TOKEN_KEYS: Final = ("accessToken", "expiresAt", "machineId", "profileArn")


class Kiro2ApiSource(JsonFileSource):
    """kiro2api ``KIRO_AUTH_TOKEN`` (kiro-auth.md §2.4): JSON text or a JSON file's path.

    Entries are keyed by position; ``auth`` is ``Social`` or ``IdC``. kiro2api never
    writes back (it loses rotated refresh tokens); from a file, kiro_fast does, adding
    ``accessToken``, ``expiresAt`` and ``machineId`` (kiro2api ignores unknown keys).
    """

    kind = "kiro2api"
    carries = TOKEN_FIELDS | {
        "client_id",
        "client_secret",
        "disabled",
        "disabled_reason",
        "disabled_at",
        "machine_id",
        "profile_arn",
    }

    def _entries(self, doc: Any) -> list[tuple[str, Any]]:
        return [(str(i), e) for i, e in enumerate(_list_or_single(doc, "KIRO_AUTH_TOKEN"))]

    def _parse(self, key: str, index: int, raw: Any) -> Credential:
        if not isinstance(raw, dict):
            raise FieldError("entry", "must be a JSON object")
        auth = raw.get("auth")
        if auth is not None and not isinstance(auth, str):
            raise FieldError("auth", "must be Social or IdC")
        entry = {k: v for k, v in raw.items() if k not in ("auth", "id")}
        entry["authMethod"] = auth or "Social"
        try:
            cred = credential_from_entry(entry, default_id=0)
        except FieldError as exc:
            raise FieldError(
                "auth" if exc.field == "authMethod" else exc.field, exc.detail
            ) from None
        if cred.is_api_key:
            raise FieldError("auth", "must be Social or IdC")
        cred.extra = {}
        if "priority" not in raw:
            cred.priority = index  # kiro2api serves its accounts in file order
        return cred

    def _merge(self, raw: Mapping[str, Any], cred: Credential) -> dict[str, Any]:
        new = dict(raw)
        _set(new, "refreshToken", cred.refresh_token)
        _set_token_extras(new, cred, format_rfc3339)
        if cred.disabled:
            new["disabled"] = True
            _set(new, "disabledReason", cred.disabled_reason)
            _set(new, "disabledAt", _rfc3339_or_none(cred.disabled_at))
        else:
            if "disabled" in new:
                new["disabled"] = False
            new.pop("disabledReason", None)
            new.pop("disabledAt", None)
        return new

    def _replace(self, doc: Any, key: str, new: dict[str, Any]) -> Any:
        if isinstance(doc, dict):
            return new
        index = int(key)
        return [new if i == index else e for i, e in enumerate(doc)]


class Kiro2ApiText(Kiro2ApiSource):
    """``KIRO_AUTH_TOKEN`` given as JSON text: read-only (the state store keeps changes)."""

    def __init__(self, text: str) -> None:
        super().__init__(os.devnull, location="KIRO_AUTH_TOKEN", writable=False)
        self.text = text

    def read_document(self) -> Any:
        try:
            return orjson.loads(self.text)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"KIRO_AUTH_TOKEN is neither a file nor valid JSON: {exc}") from None

    def load(self) -> LoadReport:
        doc = self.read_document()
        return LoadReport([], []) if doc is None else self._parse_all(doc)

    def update(self, credentials: Sequence[Credential]) -> None:
        pass

    def reread(self, cred: Credential) -> Credential | None:
        return None


def kiro2api_source(value: str) -> Kiro2ApiSource:
    """kiro2api's rule: a value naming an existing file is read from it, else parsed."""
    text = value.strip()
    if not text.startswith(("[", "{")) and Path(text).expanduser().is_file():
        return Kiro2ApiSource(text)
    return Kiro2ApiText(text)


def _set(entry: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        entry.pop(key, None)
    else:
        entry[key] = value


def _rfc3339_or_none(value: float | None) -> str | None:
    return None if value is None else format_rfc3339(value)


def _set_token_extras(entry: dict[str, Any], cred: Credential, expires: Any) -> None:
    if not cred.is_api_key:  # Kiro-Go mirrors the API key into accessToken itself
        _set(entry, "accessToken", cred.access_token)
    _set(entry, "expiresAt", None if cred.expires_at is None else expires(cred.expires_at))
    _set(entry, "machineId", cred.machine_id)
    if cred.profile_arn:
        entry["profileArn"] = cred.profile_arn


# --------------------------------------------------------------------------- Kiro-Go


class KiroGoConfig(JsonFileSource):
    """Kiro-Go ``data/config.json`` (kiro-auth.md §2.5): the ``accounts`` array.

    Entries are keyed by the account's ``id`` (a UUID). The rest of the file (admin
    password, statistics, Kiro-Go's own settings) is never touched.
    """

    kind = "kiro-go"
    carries = TOKEN_FIELDS | {
        "client_id",
        "client_secret",
        "region",
        "auth_region",
        "api_region",
        "disabled",
        "disabled_reason",
        "disabled_at",
        "machine_id",
        "profile_arn",
        "proxy_url",
        "kiro_api_key",
        "email",
        "subscription_title",
    }

    def _accounts(self, doc: Any) -> list[Any]:
        if not isinstance(doc, dict):
            raise ConfigError(f"{self.path} must hold a JSON object with an accounts array")
        accounts = doc.get("accounts") or []
        if not isinstance(accounts, list):
            raise ConfigError(f"{self.path}: accounts must be an array")
        return accounts

    def _entries(self, doc: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for index, account in enumerate(self._accounts(doc)):
            account_id = account.get("id") if isinstance(account, dict) else None
            key = account_id if isinstance(account_id, str) and account_id else f"#{index}"
            out.append((key, account))
        return out

    def _parse(self, key: str, index: int, raw: Any) -> Credential:
        if not isinstance(raw, dict):
            raise FieldError("entry", "must be a JSON object")
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise FieldError("enabled", "must be true or false")
        method = opt_str(raw, "authMethod") or _provider_method(raw)
        if method and method.lower() in ("external_idp", "externalidp"):
            raise FieldError("authMethod", "external_idp logins are not supported")
        entry: dict[str, Any] = {
            "authMethod": method,
            "accessToken": raw.get("accessToken"),
            "refreshToken": raw.get("refreshToken"),
            "kiroApiKey": raw.get("kiroApiKey"),
            "clientId": raw.get("clientId"),
            "clientSecret": raw.get("clientSecret"),
            "region": raw.get("region"),
            "authRegion": raw.get("authRegion"),
            "apiRegion": raw.get("apiRegion"),
            "profileArn": raw.get("profileArn"),
            "machineId": raw.get("machineId"),
            "proxyUrl": raw.get("proxyURL"),
            "email": raw.get("email"),
            "subscriptionTitle": raw.get("subscriptionTitle"),
            "expiresAt": raw.get("expiresAt") or None,
            "disabled": not enabled,
            "disabledReason": raw.get("banReason") if not enabled else None,
        }
        if not enabled and isinstance(raw.get("banTime"), int) and raw["banTime"] > 0:
            entry["disabledAt"] = raw["banTime"]
        cred = credential_from_entry({k: v for k, v in entry.items() if v is not None}, 0)
        cred.priority = index
        return cred

    def _merge(self, raw: Mapping[str, Any], cred: Credential) -> dict[str, Any]:
        new = dict(raw)
        if not cred.is_api_key:
            _set(new, "refreshToken", cred.refresh_token)
        _set_token_extras(new, cred, int)
        new["enabled"] = not cred.disabled
        if cred.disabled:
            new["banStatus"] = "DISABLED"
            _set(new, "banReason", cred.disabled_reason)
            if cred.disabled_at is not None:
                new["banTime"] = int(cred.disabled_at)
        elif new.get("banStatus") == "DISABLED":
            new["banStatus"] = "ACTIVE"
            new.pop("banReason", None)
            new.pop("banTime", None)
        if cred.subscription_title:
            new["subscriptionTitle"] = cred.subscription_title
        if cred.email and not new.get("email"):
            new["email"] = cred.email
        return new

    def _replace(self, doc: Any, key: str, new: dict[str, Any]) -> Any:
        accounts = [new if k == key else raw for k, raw in self._entries(doc)]
        return {**doc, "accounts": accounts}


def _provider_method(raw: Mapping[str, Any]) -> str | None:
    """Kiro-Go's ``provider`` when it names the login kind (older files lack authMethod)."""
    provider = raw.get("provider")
    if isinstance(provider, str) and provider.lower() in _PROVIDERS:
        return provider
    return None


_PROVIDERS: Final = frozenset({"google", "github", "builderid", "enterprise"})


# --------------------------------------------------------------------------- Kiro IDE


#: Where the Kiro IDE keeps its login (kiro-auth.md §2.7).
IDE_TOKEN_FILE: Final = "~/.aws/sso/cache/kiro-auth-token.json"


class KiroIdeCache(JsonFileSource):
    """The Kiro IDE's ``kiro-auth-token.json`` and, for IdC, its client registration.

    The IDE signs in with the same account and rotates its tokens, so on a rejected token
    this file is read again before the credential is given up (:meth:`reread`). Only the
    token fields are written back; the IDE's other keys, the registration file and any
    kiro_fast state (machine id, disabled flag) stay out of it — the state store keeps
    those.
    """

    kind = "kiro-ide"
    carries = TOKEN_FIELDS | {"client_id", "client_secret", "region", "auth_region", "profile_arn"}

    def _entries(self, doc: Any) -> list[tuple[str, Any]]:
        if not isinstance(doc, dict):
            raise ConfigError(f"{self.path} must hold a JSON object")
        return [("token", doc)]

    def _parse(self, key: str, index: int, raw: Any) -> Credential:
        method = opt_str(raw, "authMethod") or "social"
        if method.lower() in ("external_idp", "externalidp"):
            raise FieldError("authMethod", "external_idp logins are not supported")
        names = ("accessToken", "refreshToken", "profileArn", "clientId", "clientSecret")
        entry: dict[str, Any] = {k: raw[k] for k in names if raw.get(k) is not None}
        entry["authMethod"] = method
        expires_at, _form = parse_expires_at(raw.get("expiresAt"))
        if method.lower() == "idc":
            cred = self._idc(raw, entry)
        else:
            cred = credential_from_entry(entry, 0)
        cred.expires_at, cred.expires_form = expires_at, "rfc3339"
        cred.extra = {}
        return cred

    def _idc(self, raw: Mapping[str, Any], entry: dict[str, Any]) -> Credential:
        if not entry.get("clientId") or not entry.get("clientSecret"):
            registration = self._registration(raw)
            entry["clientId"] = entry.get("clientId") or registration.get("clientId")
            entry["clientSecret"] = entry.get("clientSecret") or registration.get("clientSecret")
        entry["region"] = raw.get("region")
        cred = credential_from_entry({k: v for k, v in entry.items() if v is not None}, 0)
        # The registration's own region is where its refresh tokens are valid (§4).
        cred.auth_region = client_region(cred.client_id) or cred.region
        return cred

    def _registration(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        digest = raw.get("clientIdHash")
        if not isinstance(digest, str) or not digest:
            raise FieldError("clientIdHash", "an IdC login needs its client registration")
        path = self.path.with_name(f"{digest}.json")
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise FieldError("clientIdHash", f"client registration {path.name} not found") from None
        except (OSError, orjson.JSONDecodeError):
            raise FieldError(
                "clientIdHash", f"client registration {path.name} unreadable"
            ) from None
        if not isinstance(data, dict):
            raise FieldError("clientIdHash", f"client registration {path.name} is not an object")
        return data

    def _merge(self, raw: Mapping[str, Any], cred: Credential) -> dict[str, Any]:
        new = dict(raw)
        _set(new, "accessToken", cred.access_token)
        _set(new, "refreshToken", cred.refresh_token)
        _set(new, "expiresAt", _rfc3339_or_none(cred.expires_at))
        return new

    def _replace(self, doc: Any, key: str, new: dict[str, Any]) -> Any:
        return new


# --------------------------------------------------------------------------- merging


def merge_changed_source(stored: Credential, fresh: Credential, carries: frozenset[str]) -> None:
    """The source file changed since kiro_fast last wrote it: take what it holds.

    ``stored`` (the state store's newer runtime state) gets the fields the format
    ``carries`` from ``fresh``; a machine id is never dropped, and a new refresh token
    re-enables a credential kiro_fast itself had disabled (the user logged in again).
    """
    new_token = fresh.refresh_token != stored.refresh_token
    machine_id = stored.machine_id
    if "*" in carries:
        keep_id = stored.id
        stored.copy_from(fresh)
        stored.id = keep_id
    else:
        for name in carries:
            setattr(stored, name, getattr(fresh, name))
        stored.source, stored.fingerprint = fresh.source, fresh.fingerprint
    stored.machine_id = stored.machine_id or machine_id
    if new_token and stored.disabled and stored.disabled_reason in AUTOMATIC_REASONS:
        stored.enable()
