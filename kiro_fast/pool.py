"""The credential pool: which credential serves a request, and keeping its token fresh.

What this module owns:

* Selection (``acquire``): the highest-priority credential that is enabled and not
  excluded for this request (the failover loop excludes credentials that failed it).
* Single-flight refresh per credential: concurrent requests on a stale token wait for one
  refresh; after taking the lock the token is checked again, so a refresh that another
  request already did is not repeated (a rotated refresh token must never be used twice).
* Reactions to refresh verdicts: a dead refresh token disables the credential with a
  stored reason; transient failures (429, 5xx, network) never do.
* Write-back: every change is persisted through :class:`CredentialFile` off the event loop.

It knows nothing about HTTP requests or response formats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Final

from .credentials import Credential, CredentialFile
from .errors import NoCredentialAvailable, TokenRefreshError
from .refresh import refresh_credential
from .upstream import UpstreamClient

log = logging.getLogger("kiro_fast.pool")

#: Refresh when the access token expires within this many seconds (kiro.rs, kiro-gateway).
REFRESH_MARGIN: Final = 600.0


class CredentialPool:
    """Credentials in priority order, with locks and persistence."""

    def __init__(
        self,
        credentials: Sequence[Credential],
        client: UpstreamClient,
        store: CredentialFile | None = None,
        *,
        refresh_margin: float = REFRESH_MARGIN,
    ) -> None:
        self.credentials = sorted(credentials, key=lambda c: (c.priority, c.id))
        self.client = client
        self.store = store
        self.refresh_margin = refresh_margin
        self._locks: dict[int, asyncio.Lock] = {}
        self._persist_lock = asyncio.Lock()
        self.refresh_count = 0

    def __len__(self) -> int:
        return len(self.credentials)

    def available(self) -> list[Credential]:
        return [c for c in self.credentials if not c.disabled]

    async def acquire(self, exclude: Iterable[int] = ()) -> Credential:
        """The preferred usable credential with a fresh token.

        Raises:
            NoCredentialAvailable: every credential is disabled or excluded.
        """
        skip = set(exclude)
        for cred in self.credentials:
            if cred.disabled or cred.id in skip:
                continue
            try:
                await self.ensure_fresh(cred)
            except TokenRefreshError as exc:
                log.warning("%s: %s", cred.label(), exc.message)
                skip.add(cred.id)
                continue
            return cred
        raise NoCredentialAvailable("no usable Kiro credential: all are disabled or failing")

    async def ensure_fresh(self, cred: Credential, *, stale_token: str | None = None) -> None:
        """Refresh ``cred`` if its token is stale, or if it still is ``stale_token``.

        ``stale_token`` forces one refresh after the upstream rejected that token; when
        another request already replaced it, nothing happens.
        """
        if stale_token is None and not cred.needs_refresh(time.time(), self.refresh_margin):
            return
        lock = self._locks.setdefault(cred.id, asyncio.Lock())
        async with lock:
            if stale_token is not None:
                if cred.access_token != stale_token:
                    return
            elif not cred.needs_refresh(time.time(), self.refresh_margin):
                return
            await self._refresh_locked(cred)

    async def _refresh_locked(self, cred: Credential) -> None:
        self.refresh_count += 1
        try:
            await refresh_credential(self.client, cred)
        except TokenRefreshError as exc:
            if exc.permanent:
                cred.disable("InvalidRefreshToken")
                log.error("%s disabled: refresh token rejected (%s)", cred.label(), exc.message)
                await self.persist()
            raise
        log.info("%s: access token refreshed", cred.label())
        await self.persist()

    async def disable(self, cred: Credential, reason: str) -> None:
        cred.disable(reason)
        log.warning("%s disabled: %s", cred.label(), reason)
        await self.persist()

    async def persist(self) -> None:
        """Write every credential back (atomically, off the event loop)."""
        if self.store is None:
            return
        async with self._persist_lock:
            # Rendered here, on the loop, so no credential changes while it is serialised.
            data = self.store.render(self.credentials)
            await asyncio.to_thread(self.store.write, data)
