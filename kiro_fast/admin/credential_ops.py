"""Adding, importing, deleting and describing credentials for the admin API.

What this module owns:

* The add flow of kiro.rs (kiro-auth.md §10.1 ``AddCredentialRequest``): validate the
  entry, refuse a duplicate (SHA-256 of the refresh token or API key), refresh once to
  prove the token works (not for API keys; optional for imports), give it an id, store
  it, load it into the pool, then ask for its usage to learn the subscription and email
  (a failure there is ignored).
* Batch import of the formats of §2.8: a JSON array of kiro.rs entries, a Kiro Account
  Manager export (the ``accounts`` wrapper, nested ``credentials`` or the flat ≥1.8.3
  variant; ``status: "error"`` accounts are skipped), a Kiro IDE token file (with the
  IdC client registration's ``clientId``/``clientSecret`` merged in) and Kiro-Go's
  credentials JSON. Every item goes through the add flow; one bad item never stops
  the others.
* Keeping a kiro.rs ``credentials.json`` in step: a credential added here is appended to
  that file (when one is configured and writable) and tied to its entry, and deleting
  one removes its entry, so kiro.rs users keep their file; the file is rewritten under
  its own lock with the source's atomic write.
* The kiro.rs ``CredentialsStatusResponse`` view. Secrets never leave: tokens, client
  secrets, API keys and proxy passwords appear only as SHA-256 hashes or masked.

It knows nothing about HTTP; errors are :mod:`kiro_fast.errors` classes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from ..credentials import (
    Credential,
    FieldError,
    credential_from_entry,
    credential_to_entry,
    credential_to_store_entry,
    format_rfc3339,
)
from ..errors import InvalidRequest, NotFound, TokenRefreshError, UpstreamError
from ..live_settings import mask
from ..pool import CredentialPool
from ..refresh import refresh_credential
from ..sources import KiroRsFile, fingerprint, source_id_of

#: Keys of an add request that go into the stored entry (kiro.rs entry spelling).
ENTRY_KEYS: Final = (
    "refreshToken",
    "accessToken",
    "expiresAt",
    "profileArn",
    "authMethod",
    "clientId",
    "clientSecret",
    "priority",
    "region",
    "authRegion",
    "apiRegion",
    "machineId",
    "email",
    "proxyUrl",
    "proxyUsername",
    "proxyPassword",
    "kiroApiKey",
    "subscriptionTitle",
)
#: Endpoint names kiro.rs registers (only ``ide`` exists, §2.1).
ENDPOINTS: Final = ("ide",)
#: Most items one import request may hold.
MAX_IMPORT_ITEMS: Final = 500


def secret_hash(value: str | None) -> str | None:
    return hashlib.sha256(value.encode()).hexdigest() if value else None


def public_proxy_url(url: str | None) -> str | None:
    """A proxy URL without the user and password it may carry."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# --------------------------------------------------------------------------- parsing


def entry_from_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The kiro.rs entry an add request describes (unknown keys dropped).

    Raises:
        InvalidRequest: a bad field (named) or an unknown endpoint.
    """
    endpoint = body.get("endpoint")
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise InvalidRequest(f"endpoint: {endpoint!r} is not registered (only 'ide')")
    entry = {k: body[k] for k in ENTRY_KEYS if body.get(k) not in (None, "")}
    if not entry.get("authMethod") and isinstance(body.get("provider"), str):
        entry["authMethod"] = body["provider"]
    return entry


def parse_entry(entry: Mapping[str, Any]) -> Credential:
    """A credential from an entry, with the id left for the store to give.

    Raises:
        InvalidRequest: names the offending field.
    """
    try:
        cred = credential_from_entry({**entry, "id": 0}, default_id=0)
    except FieldError as exc:
        raise InvalidRequest(f"{exc.field}: {exc.detail}") from None
    cred.extra = {}
    return cred


@dataclass(slots=True)
class ImportItem:
    """One account of an import document: its entry, or why it was left out."""

    index: int
    entry: dict[str, Any] | None = None
    skipped: str | None = None


def import_items(document: Any) -> list[ImportItem]:
    """The accounts of an import document (any format of the module docstring).

    Raises:
        InvalidRequest: the document is neither an object nor an array, or too large.
    """
    if isinstance(document, dict) and isinstance(document.get("accounts"), list):
        raw: list[Any] = document["accounts"]
    elif isinstance(document, list):
        raw = document
    elif isinstance(document, dict):
        raw = [document]
    else:
        raise InvalidRequest("import: expected a JSON array, an object or a KAM export")
    if len(raw) > MAX_IMPORT_ITEMS:
        raise InvalidRequest(f"import: at most {MAX_IMPORT_ITEMS} accounts at once")
    return [_item(index, account) for index, account in enumerate(raw)]


def _item(index: int, account: Any) -> ImportItem:
    if not isinstance(account, dict):
        return ImportItem(index, skipped="not a JSON object")
    if account.get("status") == "error":
        return ImportItem(index, skipped="KAM marks this account as failed (status: error)")
    merged: dict[str, Any] = dict(account)
    nested = account.get("credentials")
    if isinstance(nested, dict):
        merged.update({k: v for k, v in nested.items() if v not in (None, "")})
    if "id" in merged and not isinstance(merged["id"], int):
        merged.pop("id")  # KAM and Kiro-Go ids are UUIDs: the store gives its own
    return ImportItem(index, entry=entry_from_request(merged))


# --------------------------------------------------------------------------- the flows


@dataclass(slots=True)
class AddResult:
    credential_id: int
    email: str | None = None
    warnings: list[str] = field(default_factory=list)


class CredentialOps:
    """Changes to the credential set made through the admin API."""

    def __init__(self, pool: CredentialPool) -> None:
        self.pool = pool
        self.state = pool.state
        self._add_lock = asyncio.Lock()

    def _kiro_rs_file(self) -> KiroRsFile | None:
        for source in self.pool.book.sources.values():
            if isinstance(source, KiroRsFile) and source.writable:
                return source
        return None

    async def add(
        self, entry: Mapping[str, Any], *, verify: bool = True, learn_usage: bool | None = None
    ) -> AddResult:
        """kiro.rs's add flow (see the module docstring). ``verify``: refresh once first;
        ``learn_usage`` (default: as ``verify``): read the usage afterwards.

        Raises:
            InvalidRequest: a bad field, a duplicate, or a refresh token the upstream
                rejected.
            UpstreamError / TokenRefreshError: the refresh could not be tried (network).
        """
        cred = parse_entry(entry)
        async with self._add_lock:  # two adds of one token must not both pass the check
            await self._refuse_duplicate(cred)
            if verify and not cred.is_api_key:
                await self._prove(cred)
            cred.id = await self.state.allocate_credential_id()
            await self._persist_new(cred)
        await self.pool.sync()
        result = AddResult(cred.id)
        served = self.pool.get(cred.id)
        if served is not None and (verify if learn_usage is None else learn_usage):
            try:
                info = await self.pool.usage(served, force=True)
                result.email = info.email or served.email
            except (UpstreamError, TokenRefreshError) as exc:
                result.warnings.append(f"usage unavailable: {exc.message}")
        return result

    async def _refuse_duplicate(self, cred: Credential) -> None:
        digest = secret_hash(cred.kiro_api_key if cred.is_api_key else cred.refresh_token)
        for stored in await self.state.list_credentials():
            other = stored.get("kiroApiKey") if cred.is_api_key else stored.get("refreshToken")
            if digest is not None and secret_hash(other) == digest:
                raise InvalidRequest(f"this credential already exists as #{stored.get('id')}")

    async def _prove(self, cred: Credential) -> None:
        client = self.pool.client
        client.machine_id(cred)
        try:
            await refresh_credential(client, cred)
        except TokenRefreshError as exc:
            if exc.permanent:
                raise InvalidRequest(f"the refresh token was rejected: {exc.message}") from None
            raise

    async def _persist_new(self, cred: Credential) -> None:
        source = self._kiro_rs_file()
        if source is not None:
            entry = credential_to_entry(cred)
            await asyncio.to_thread(_append_entry, source, entry)
            cred.source = f"{source.id}#{cred.id}"
            cred.fingerprint = fingerprint(entry)
        await self.state.put_credential(credential_to_store_entry(cred))

    async def delete(self, cred_id: int) -> str:
        """Delete a disabled credential (kiro.rs's rule, §10.6); returns a message.

        Raises:
            NotFound: no such credential.
            InvalidRequest: it is not disabled.
        """
        cred = self.pool.get(cred_id)
        stored = await self.state.get_credential(cred_id)
        if cred is None and stored is None:
            raise NotFound(f"credential #{cred_id} does not exist")
        disabled = cred.disabled if cred is not None else bool(stored and stored.get("disabled"))
        if not disabled:
            raise InvalidRequest(f"credential #{cred_id} must be disabled before it is deleted")
        link = cred.source if cred is not None else (stored or {}).get("kiroFastSource")
        note = await self._remove_from_source(link)
        await self.state.delete_credential(cred_id)
        await self.state.clear_cooldown(cred_id)
        await self.pool.sync()
        return f"credential #{cred_id} deleted" + note

    async def _remove_from_source(self, link: str | None) -> str:
        if not link:
            return ""
        source = self.pool.book.sources.get(source_id_of(link) or "")
        if isinstance(source, KiroRsFile) and source.writable:
            await asyncio.to_thread(_remove_entry, source, link.rpartition("#")[2])
            return ""
        where = source.describe() if source is not None else "its source"
        return f" (it is still in {where}, which adds it again at the next start)"

    async def import_document(self, document: Any, *, verify: bool) -> dict[str, Any]:
        """Add every account of an import document; the SQLite variant's answer shape."""
        ids: list[int] = []
        failures: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        for item in import_items(document):
            if item.entry is None:
                skipped.append({"index": item.index, "reason": item.skipped})
                continue
            try:
                result = await self.add(item.entry, verify=verify)
            except (InvalidRequest, UpstreamError, TokenRefreshError) as exc:
                failures.append({"index": item.index, "error": exc.message})
                continue
            ids.append(result.credential_id)
        return {
            "success": not failures,
            "message": f"imported {len(ids)}, failed {len(failures)}, skipped {len(skipped)}",
            "imported": len(ids),
            "credentialIds": ids,
            "failures": failures,
            "skipped": skipped,
        }


def _append_entry(source: KiroRsFile, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the kiro.rs file (created as an array if missing)."""
    with source.locked():
        doc = source.read_document()
        if doc is None:
            doc = []
        elif isinstance(doc, dict):
            doc = [doc]  # kiro.rs's single-object form becomes the array form
        doc.append(entry)
        source.write_document(doc)


def _remove_entry(source: KiroRsFile, key: str) -> None:
    with source.locked():
        doc = source.read_document()
        if isinstance(doc, dict):
            doc = [] if str(doc.get("id")) == key else doc
        elif isinstance(doc, list):
            doc = [e for e in doc if not (isinstance(e, dict) and str(e.get("id")) == key)]
        else:
            return
        source.write_document(doc)


# --------------------------------------------------------------------------- views


def credential_view(
    cred: Credential,
    pool: CredentialPool,
    *,
    success_count: int,
    last_used: float | None,
) -> dict[str, Any]:
    """One entry of kiro.rs's ``CredentialsStatusResponse``, plus kiro_fast's extras."""
    api_key = cred.kiro_api_key if cred.is_api_key else None
    view: dict[str, Any] = {
        "id": cred.id,
        "priority": cred.priority,
        "disabled": cred.disabled,
        "failureCount": pool.failure_count(cred.id),
        "isCurrent": pool.current_id == cred.id,
        "expiresAt": None
        if cred.is_api_key or cred.expires_at is None
        else format_rfc3339(cred.expires_at),
        "authMethod": cred.auth_method,
        "hasProfileArn": bool(cred.profile_arn),
        "refreshTokenHash": None if cred.is_api_key else secret_hash(cred.refresh_token),
        "apiKeyHash": secret_hash(api_key),
        "maskedApiKey": mask(api_key) if api_key else None,
        "email": cred.email,
        "successCount": success_count,
        "lastUsedAt": format_rfc3339(last_used) if last_used else None,
        "hasProxy": bool(cred.proxy_url),
        "refreshFailureCount": 0,
        "endpoint": cred.endpoint or "ide",
        "subscriptionTitle": cred.subscription_title,
        "region": cred.auth_region or cred.region,
        "apiRegion": cred.api_region,
        "source": (source_id_of(cred.source) or "").partition(":")[0] or None,
        "cooldown": None,
        "balance": None,
    }
    if cred.proxy_url:
        view["proxyUrl"] = public_proxy_url(cred.proxy_url)
    if cred.disabled and cred.disabled_reason:
        view["disabledReason"] = cred.disabled_reason
    cooling = pool.cooldown_of(cred.id)
    if cooling is not None:
        view["cooldown"] = {"until": format_rfc3339(cooling[0]), "reason": cooling[1]}
    info = pool.cached_usage(cred.id)
    if info is not None:
        view["balance"] = balance_view(cred.id, info.as_dict())
    return view


def balance_view(cred_id: int, usage: Mapping[str, Any]) -> dict[str, Any]:
    """kiro.rs ``BalanceResponse`` (§7.3) with kiro_fast's email and fetch time."""
    return {"id": cred_id, **usage}


def status_view(
    pool: CredentialPool,
    success_counts: Mapping[int, int],
    last_used: Mapping[int, float],
) -> dict[str, Any]:
    creds = sorted(pool.credentials, key=lambda c: (c.priority, c.id))
    return {
        "total": len(creds),
        "available": len([c for c in creds if not c.disabled]),
        "currentId": pool.current_id or 0,
        "credentials": [
            credential_view(
                c, pool, success_count=success_counts.get(c.id, 0), last_used=last_used.get(c.id)
            )
            for c in creds
        ],
    }


def latest_by_credential(rows: Iterable[Mapping[str, Any]]) -> dict[int, float]:
    """The last minute each credential answered in, from per-minute usage rows."""
    latest: dict[int, float] = {}
    for row in rows:
        cred_id = row.get("credential_id")
        bucket = row.get("bucket")
        if isinstance(cred_id, int) and isinstance(bucket, float) and row.get("requests"):
            latest[cred_id] = max(latest.get(cred_id, 0.0), bucket)
    return latest
