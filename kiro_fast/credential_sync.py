"""Credential sources and the shared state store, kept in step.

What this module owns:

* The start-up import: every source's entries go into the state store (under a store lock,
  so processes starting together agree). Formats without ids (kiro2api, Kiro-Go, the IDE
  file) get a store-allocated id that stays theirs across restarts, found again through
  the entry's link (``Credential.source``). kiro.rs ids are the file's own; an entry from
  elsewhere holding the same id moves to a fresh one.
* The fingerprint rule for each entry: unchanged since kiro_fast last wrote or read it →
  the store's state wins (it may be newer: a rotated refresh token from a read-only
  source, a disable reason the format cannot hold); changed → the file wins for the
  fields its format carries (:func:`sources.merge_changed_source`).
  Entries removed from a source are removed from the store.
* Write-back of every change: the source file first (read-merge-write off the event
  loop), then the store — so a crash between the two leaves the newer state in the file,
  which the fingerprint rule then prefers. Writes of one credential are serialised.
* Reading the served credentials back from the store: store-native entries (no source)
  and entries of the sources configured in this process.

It knows nothing about selection, refresh or HTTP.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .credentials import Credential, FieldError, credential_from_entry, credential_to_store_entry
from .errors import ConfigError
from .sources import CredentialSource, EntryProblem, KiroRsFile, merge_changed_source, source_id_of
from .state import StateStore

log = logging.getLogger("kiro_fast.credentials")

#: Processes importing at the same moment take turns (a slow disk still finishes in time).
IMPORT_LOCK: Final = "credentials:import"
IMPORT_LOCK_LEASE: Final = 60.0


@dataclass(slots=True)
class ImportReport:
    imported: int = 0
    problems: dict[str, list[EntryProblem]] = field(default_factory=dict)


def credential_from_store_entry(entry: dict[str, Any]) -> Credential | None:
    """A stored entry as a credential; ``None`` (logged) when it no longer parses."""
    try:
        return credential_from_entry(entry, default_id=int(entry.get("id", 0)))
    except (FieldError, TypeError, ValueError) as exc:
        log.error("state store credential #%s is unusable: %s", entry.get("id"), exc)
        return None


class CredentialSync:
    """The credentials of this deployment: store entries mirrored to their source files."""

    def __init__(self, state: StateStore, sources: Sequence[CredentialSource] = ()) -> None:
        self.state = state
        self.sources = {source.id: source for source in sources}
        self._save_locks: dict[int, asyncio.Lock] = {}

    # ------------------------------------------------------------------ start-up

    async def import_all(self, initial: Sequence[Credential] = ()) -> ImportReport:
        """Bring every source (and ``initial``, store-native credentials) into the store.

        Raises:
            ConfigError: a source is unreadable as a whole (not JSON, wrong shape).
        """
        report = ImportReport()
        async with self.state.lock(
            IMPORT_LOCK, lease=IMPORT_LOCK_LEASE, wait=IMPORT_LOCK_LEASE
        ) as held:
            if not held:
                log.warning("another process held the credential import lock; importing anyway")
            stored = await self._stored()
            ordered = sorted(self.sources.values(), key=lambda s: not isinstance(s, KiroRsFile))
            for source in ordered:
                await self._import_source(source, stored, report)
            for cred in initial:
                await self.state.put_credential(credential_to_store_entry(cred))
                report.imported += 1
        return report

    async def _stored(self) -> dict[int, Credential]:
        out: dict[int, Credential] = {}
        for entry in await self.state.list_credentials():
            cred = credential_from_store_entry(entry)
            if cred is not None:
                out[cred.id] = cred
        return out

    async def _import_source(
        self, source: CredentialSource, stored: dict[int, Credential], report: ImportReport
    ) -> None:
        loaded = await asyncio.to_thread(source.load)
        for problem in loaded.problems:
            log.error("%s: %s (skipped)", source.describe(), problem)
        if loaded.problems:
            report.problems[source.id] = loaded.problems
        by_link = {c.source: c for c in stored.values() if c.source}
        seen: set[str] = set()
        for fresh in loaded.credentials:
            assert fresh.source is not None
            seen.add(fresh.source)
            cred = await self._reconcile(source, fresh, by_link.get(fresh.source), stored)
            stored[cred.id] = cred
            report.imported += 1
        for link, gone in by_link.items():
            if source_id_of(link) == source.id and link not in seen:
                log.info("%s: %s was removed from the file", source.describe(), gone.label())
                await self.state.delete_credential(gone.id)
                stored.pop(gone.id, None)

    async def _reconcile(
        self,
        source: CredentialSource,
        fresh: Credential,
        existing: Credential | None,
        stored: dict[int, Credential],
    ) -> Credential:
        if isinstance(source, KiroRsFile):
            await self._free_id(fresh.id, fresh.source, stored)
        else:
            fresh.id = existing.id if existing else await self.state.allocate_credential_id()
        if existing is not None and existing.fingerprint == fresh.fingerprint:
            return existing
        if existing is not None:
            merge_changed_source(existing, fresh, source.carries)
            fresh = existing
        await self.state.put_credential(credential_to_store_entry(fresh))
        return fresh

    async def _free_id(self, cred_id: int, link: str | None, stored: dict[int, Credential]) -> None:
        """A kiro.rs id is the file's: move another entry that holds it to a fresh id."""
        other = stored.get(cred_id)
        if other is None or other.source == link:
            return
        other.id = await self.state.allocate_credential_id()
        await self.state.delete_credential(cred_id)
        await self.state.put_credential(credential_to_store_entry(other))
        del stored[cred_id]
        stored[other.id] = other
        log.info(
            "credential id %d belongs to the kiro.rs file; the other moved to #%d",
            cred_id,
            other.id,
        )

    # ------------------------------------------------------------------ running

    def serves(self, cred: Credential) -> bool:
        """Store-native credentials and those of the sources configured here."""
        return cred.source is None or source_id_of(cred.source) in self.sources

    async def load(self) -> list[Credential]:
        """The served credentials as the store holds them now."""
        return [c for c in (await self._stored()).values() if self.serves(c)]

    async def save(self, cred: Credential) -> None:
        """Persist ``cred``: its source file (if writable), then the state store."""
        lock = self._save_locks.setdefault(cred.id, asyncio.Lock())
        async with lock:
            source = self.sources.get(source_id_of(cred.source) or "")
            if source is not None and source.writable:
                await self._write_source(source, cred)
            await self.state.put_credential(credential_to_store_entry(cred))

    async def _write_source(self, source: CredentialSource, cred: Credential) -> None:
        # A snapshot taken on the loop: the thread never sees a half-applied change.
        snapshot = copy.copy(cred)
        try:
            await asyncio.to_thread(source.update, [snapshot])
        except (OSError, ConfigError) as exc:
            log.error("cannot write %s back to %s: %s", cred.label(), source.describe(), exc)
            return
        cred.fingerprint = snapshot.fingerprint

    async def reread(self, cred: Credential) -> Credential | None:
        """The source entry of ``cred`` as its file holds it now, if it has one."""
        source = self.sources.get(source_id_of(cred.source) or "")
        if source is None:
            return None
        return await asyncio.to_thread(source.reread, cred)
