"""In-memory state store: one process, nothing persisted (tests, ``memory://`` mode).

Strategy: plain dicts mutated on the event loop thread, so every method is atomic
without locks (none awaits in the middle of a change). Values are kept as JSON bytes
where the other backends keep JSON too, so a caller sees the same copies and the same
"JSON only" rule whichever backend runs. ``memory://NAME`` stores with the same NAME share
one data set inside the process (to model several instances); ``memory://`` is private.

Nothing here survives the process, and other processes cannot see it.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequest
from .base import (
    RETENTION,
    USAGE_FLUSH_INTERVAL,
    Clock,
    GroupBy,
    StateStore,
    UsageKey,
    UsageTotals,
    check_budget,
    check_client_key_fields,
    check_credential_entry,
    minute_of,
    new_token,
    summarize_usage,
    utc_day,
)


@dataclass(slots=True)
class _Data:
    credentials: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    cred_seq: int = 0
    last_id: int = 0
    locks: dict[str, tuple[str, float]] = field(default_factory=dict)
    cooldowns: dict[int, tuple[float, str]] = field(default_factory=dict)
    slots: dict[str, dict[str, float]] = field(default_factory=dict)
    hits: dict[str, list[float]] = field(default_factory=dict)
    tokens: dict[tuple[str, int], int] = field(default_factory=dict)
    settings: dict[str, bytes] = field(default_factory=dict)
    settings_version: int = 0
    client_keys: dict[int, dict[str, Any]] = field(default_factory=dict)
    client_key_seq: int = 0
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: dict[UsageKey, list[int]] = field(default_factory=dict)


#: Data sets of named ``memory://NAME`` stores, shared by every store of that name.
_SHARED: dict[str, _Data] = {}


class MemoryStore(StateStore):
    """Single-process :class:`StateStore`."""

    kind = "memory"
    shared_across_processes = False

    def __init__(
        self,
        name: str | None = None,
        *,
        clock: Clock | None = None,
        usage_flush_interval: float = USAGE_FLUSH_INTERVAL,
    ) -> None:
        super().__init__(clock=clock, usage_flush_interval=usage_flush_interval)
        self.name = name
        self._data = _SHARED.setdefault(name, _Data()) if name else _Data()

    def describe(self) -> str:
        return f"memory://{self.name or ''} (not persisted, this process only)"

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        pass

    # ------------------------------------------------------------------ credentials

    async def list_credentials(self) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for _, (raw, _v) in sorted(self._data.credentials.items())]

    async def get_credential(self, cred_id: int) -> dict[str, Any] | None:
        item = self._data.credentials.get(cred_id)
        return None if item is None else orjson.loads(item[0])

    async def put_credential(self, entry: Mapping[str, Any]) -> int:
        cred_id = check_credential_entry(entry)
        raw = orjson.dumps(dict(entry))
        data = self._data
        data.cred_seq += 1
        data.credentials[cred_id] = (raw, data.cred_seq)
        data.last_id = max(data.last_id, cred_id)
        return data.cred_seq

    async def delete_credential(self, cred_id: int) -> bool:
        if self._data.credentials.pop(cred_id, None) is None:
            return False
        self._data.cred_seq += 1
        return True

    async def allocate_credential_id(self) -> int:
        self._data.last_id += 1
        return self._data.last_id

    async def credential_version(self, cred_id: int) -> int:
        item = self._data.credentials.get(cred_id)
        return 0 if item is None else item[1]

    async def credentials_version(self) -> int:
        return self._data.cred_seq

    # ------------------------------------------------------------------ locks

    async def _lock_acquire(self, name: str, owner: str, lease: float) -> bool:
        now = self.clock()
        held = self._data.locks.get(name)
        if held is not None and held[1] > now:
            return False
        self._data.locks[name] = (owner, now + lease)
        return True

    async def _lock_release(self, name: str, owner: str) -> None:
        held = self._data.locks.get(name)
        if held is not None and held[0] == owner:
            del self._data.locks[name]

    async def _lock_extend(self, name: str, owner: str, lease: float) -> bool:
        now = self.clock()
        held = self._data.locks.get(name)
        if held is None or held[0] != owner or held[1] <= now:
            return False
        self._data.locks[name] = (owner, now + lease)
        return True

    # ------------------------------------------------------------------ cool-downs

    async def set_cooldown(self, cred_id: int, until: float, reason: str) -> None:
        self._data.cooldowns[cred_id] = (float(until), reason)

    async def clear_cooldown(self, cred_id: int) -> None:
        self._data.cooldowns.pop(cred_id, None)

    async def cooldowns(self) -> dict[int, tuple[float, str]]:
        now = self.clock()
        table = self._data.cooldowns
        for cred_id in [k for k, (until, _r) in table.items() if until <= now]:
            del table[cred_id]
        return dict(table)

    # ------------------------------------------------------------------ budgets

    def _live_slots(self, scope: str) -> dict[str, float]:
        now = self.clock()
        slots = self._data.slots.setdefault(scope, {})
        for token in [t for t, exp in slots.items() if exp <= now]:
            del slots[token]
        return slots

    async def acquire_slot(self, scope: str, limit: int, lease: float) -> str | None:
        check_budget(limit, lease)
        slots = self._live_slots(scope)
        if len(slots) >= limit:
            return None
        token = new_token()
        slots[token] = self.clock() + lease
        return token

    async def release_slot(self, scope: str, token: str) -> None:
        self._data.slots.get(scope, {}).pop(token, None)

    async def extend_slot(self, scope: str, token: str, lease: float) -> bool:
        slots = self._live_slots(scope)
        if token not in slots:
            return False
        slots[token] = self.clock() + lease
        return True

    async def slots_in_use(self, scope: str) -> int:
        return len(self._live_slots(scope))

    async def hit_rate(self, scope: str, limit: int, window: float) -> tuple[bool, float]:
        check_budget(limit, window, "window")
        now = self.clock()
        hits = self._data.hits.setdefault(scope, [])
        del hits[: bisect.bisect_right(hits, now - window)]
        if len(hits) < limit:
            bisect.insort(hits, now)
            return True, 0.0
        return False, max(hits[0] + window - now, 0.0)

    async def add_tokens(self, scope: str, n: int) -> int:
        key = (scope, utc_day(self.clock()))
        total = self._data.tokens.get(key, 0) + n
        self._data.tokens[key] = total
        return total

    async def tokens_used(self, scope: str, since: float) -> int:
        first = utc_day(since)
        return sum(n for (s, day), n in self._data.tokens.items() if s == scope and day >= first)

    # ------------------------------------------------------------------ settings

    async def get_settings(self) -> dict[str, Any]:
        return {k: orjson.loads(v) for k, v in self._data.settings.items()}

    async def set_settings(self, changes: Mapping[str, Any]) -> int:
        encoded = {k: None if v is None else orjson.dumps(v) for k, v in changes.items()}
        for key, raw in encoded.items():
            if raw is None:
                self._data.settings.pop(key, None)
            else:
                self._data.settings[key] = raw
        self._data.settings_version += 1
        return self._data.settings_version

    async def settings_version(self) -> int:
        return self._data.settings_version

    # ------------------------------------------------------------------ client keys

    def _hash_taken(self, key_hash: str, other_than: int | None = None) -> bool:
        return any(
            rec["key_hash"] == key_hash and kid != other_than
            for kid, rec in self._data.client_keys.items()
        )

    async def create_client_key(
        self,
        name: str,
        *,
        key_hash: str,
        key_prefix: str,
        rpm_limit: int | None = None,
        tpd_limit: int | None = None,
        models: Sequence[str] | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        if self._hash_taken(key_hash):
            raise InvalidRequest("a client key with this hash already exists")
        self._data.client_key_seq += 1
        key_id = self._data.client_key_seq
        now = self.clock()
        record: dict[str, Any] = {
            "id": key_id,
            "name": name,
            "key_hash": key_hash,
            "key_prefix": key_prefix,
            "rpm_limit": rpm_limit,
            "tpd_limit": tpd_limit,
            "models": None if models is None else list(models),
            "enabled": bool(enabled),
            "created_at": now,
            "updated_at": now,
        }
        self._data.client_keys[key_id] = record
        return _copy(record)

    async def list_client_keys(self) -> list[dict[str, Any]]:
        return [_copy(rec) for _, rec in sorted(self._data.client_keys.items())]

    async def get_client_key(self, key_id: int) -> dict[str, Any] | None:
        rec = self._data.client_keys.get(key_id)
        return None if rec is None else _copy(rec)

    async def get_client_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        for rec in self._data.client_keys.values():
            if rec["key_hash"] == key_hash:
                return _copy(rec)
        return None

    async def update_client_key(self, key_id: int, **fields: Any) -> dict[str, Any] | None:
        check_client_key_fields(fields)
        rec = self._data.client_keys.get(key_id)
        if rec is None:
            return None
        if "key_hash" in fields and self._hash_taken(fields["key_hash"], key_id):
            raise InvalidRequest("a client key with this hash already exists")
        if fields.get("models") is not None:
            fields["models"] = list(fields["models"])
        if "enabled" in fields:
            fields["enabled"] = bool(fields["enabled"])
        rec.update(fields, updated_at=self.clock())
        return _copy(rec)

    async def delete_client_key(self, key_id: int) -> bool:
        return self._data.client_keys.pop(key_id, None) is not None

    # ------------------------------------------------------------------ admin users

    async def get_admin_user(self, username: str) -> dict[str, Any] | None:
        rec = self._data.users.get(username)
        return None if rec is None else dict(rec)

    async def put_admin_user(self, username: str, password_hash: str) -> None:
        now = self.clock()
        old = self._data.users.get(username)
        created = now if old is None else old["created_at"]
        self._data.users[username] = {
            "username": username,
            "password_hash": password_hash,
            "created_at": created,
            "updated_at": now,
        }

    async def list_admin_users(self) -> list[str]:
        return sorted(self._data.users)

    # ------------------------------------------------------------------ usage

    async def _write_usage(self, totals: UsageTotals) -> None:
        usage = self._data.usage
        for key, values in totals.items():
            acc = usage.get(key)
            if acc is None:
                usage[key] = list(values)
            else:
                for i, v in enumerate(values):
                    acc[i] += v

    async def _maintain(self) -> None:
        now = self.clock()
        horizon = minute_of(now - RETENTION)
        for key in [k for k in self._data.usage if k[0] < horizon]:
            del self._data.usage[key]
        first_day = utc_day(now - RETENTION)
        for tkey in [k for k in self._data.tokens if k[1] < first_day]:
            del self._data.tokens[tkey]

    async def _usage_summary(
        self, since: float, until: float, group_by: GroupBy | None, bucket: float | None
    ) -> list[dict[str, Any]]:
        return summarize_usage(
            self._data.usage.items(), since=since, until=until, group_by=group_by, bucket=bucket
        )


def _copy(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    if out.get("models") is not None:
        out["models"] = list(out["models"])
    return out
