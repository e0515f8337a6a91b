"""Redis state store: many kiro_fast instances on many hosts share one Redis.

Strategy (every key starts with the configurable prefix, default ``kiro_fast:``):

* Each operation touches one key and is atomic on the server: a single command, a
  ``MULTI`` pipeline, or a short Lua script. No script touches two keys, so none needs
  cross-slot care.
* Time: the server clock (``TIME`` inside scripts, ``PX`` expiry) decides lock, slot and
  rate-window expiry, so hosts with skewed clocks still agree. Cool-downs and daily token
  counters compare the callers' absolute times with the store's clock, as elsewhere.
* ``creds`` (hash): ``e:<id>`` the kiro.rs entry JSON, ``v:<id>`` its version, ``seq``
  the version counter (``HINCRBY``), ``last_id`` the id allocator (never below a stored
  id, so ids are never reused).
* ``lock:<name>`` (string): the owner token, ``SET NX PX``; release and extend are Lua
  compare-and-delete / compare-and-``PEXPIRE``.
* ``slots:<scope>`` (sorted set): token → expiry in server ms; acquiring prunes expired
  members, counts, adds; the key expires with its last member.
* ``rate:<scope>`` (sorted set): a sliding-window log, one member per allowed hit scored
  with its server time; entries older than the window are pruned on each hit.
* ``tokens:<scope>:<utc day>`` (string): ``INCRBY``, expiring after the retention time.
* ``settings`` (hash): ``s:<key>`` JSON values plus ``version``, changed in one ``MULTI``.
* ``ckeys`` (hash): ``k:<id>`` record JSON, ``h:<hash>`` → id, ``seq``.
* ``users`` (hash): username → JSON; ``cooldowns`` (hash): id → ``[until, reason]``.
* Usage: per-minute aggregates in hourly hashes ``usage:<hour start>``, fields
  ``<minute>|<credential>|<client key>|<metric index>|<model>`` incremented with
  ``HINCRBY``, each hash expiring after the retention time. Chosen over a capped stream
  because its size is bounded by distinct (minute, credential, key, model) tuples, not by
  traffic, and a summary reads one hash per hour instead of every event; the price is
  one-minute resolution, which the interface defines for all backends anyway.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import ConfigError, InvalidRequest
from .base import (
    RETENTION,
    USAGE_FLUSH_INTERVAL,
    USAGE_METRICS,
    Clock,
    GroupBy,
    StateStore,
    UsageKey,
    UsageTotals,
    check_budget,
    check_client_key_fields,
    check_credential_entry,
    new_token,
    summarize_usage,
    usage_bounds,
    utc_day,
)

DEFAULT_PREFIX: Final = "kiro_fast:"
_HOUR: Final = 3600
#: A slot set outlives its last member by this much (ms), so a key never vanishes while a
#: member is still valid because of rounding.
_SLOT_KEY_SLACK_MS: Final = 1000
#: ``update_client_key`` retries its compare-and-set this often when edits race.
_CAS_ATTEMPTS: Final = 10

_NOW_MS = (
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
)

_PUT_CREDENTIAL = """
local v = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'e:' .. ARGV[1], ARGV[2], 'v:' .. ARGV[1], v)
local last = tonumber(redis.call('HGET', KEYS[1], 'last_id') or '0')
if tonumber(ARGV[1]) > last then redis.call('HSET', KEYS[1], 'last_id', ARGV[1]) end
return v
"""
_DELETE_CREDENTIAL = """
if redis.call('HDEL', KEYS[1], 'e:' .. ARGV[1], 'v:' .. ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'seq', 1)
  return 1
end
return 0
"""
_LOCK_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_LOCK_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_SLOT_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + tonumber(ARGV[4]))
return 1
"""
)
_SLOT_EXTEND = (
    _NOW_MS
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + tonumber(ARGV[3]))
return 1
"""
)
_SLOT_COUNT = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')"
_RATE_HIT = (
    _NOW_MS
    + """
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(tonumber(oldest[2]) + window - now, 0)
"""
)
_CREATE_CLIENT_KEY = """
if redis.call('HEXISTS', KEYS[1], 'h:' .. ARGV[1]) == 1 then return 0 end
local id = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'k:' .. id, ARGV[2], 'h:' .. ARGV[1], id)
return id
"""
# ARGV: id, expected old JSON, new JSON, old hash, new hash. Returns 1 done, 0 absent,
# -1 hash taken, -2 changed meanwhile (the caller reads again and retries).
_REPLACE_CLIENT_KEY = """
local cur = redis.call('HGET', KEYS[1], 'k:' .. ARGV[1])
if not cur then return 0 end
if cur ~= ARGV[2] then return -2 end
if ARGV[4] ~= ARGV[5] then
  if redis.call('HEXISTS', KEYS[1], 'h:' .. ARGV[5]) == 1 then return -1 end
  redis.call('HDEL', KEYS[1], 'h:' .. ARGV[4])
  redis.call('HSET', KEYS[1], 'h:' .. ARGV[5], ARGV[1])
end
redis.call('HSET', KEYS[1], 'k:' .. ARGV[1], ARGV[3])
return 1
"""
_DELETE_CLIENT_KEY = """
local cur = redis.call('HGET', KEYS[1], 'k:' .. ARGV[1])
if not cur then return 0 end
redis.call('HDEL', KEYS[1], 'k:' .. ARGV[1], 'h:' .. cjson.decode(cur)['key_hash'])
return 1
"""
_CLIENT_KEY_BY_HASH = """
local id = redis.call('HGET', KEYS[1], 'h:' .. ARGV[1])
if not id then return false end
return {id, redis.call('HGET', KEYS[1], 'k:' .. id)}
"""


def split_url(url: str) -> tuple[str, str]:
    """``redis://…?prefix=p:`` → (URL for redis-py without ``prefix``, prefix)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    kept = []
    for key, value in query:
        if key == "prefix":
            prefix = value
        else:
            kept.append((key, value))
    clean = parts._replace(query=urllib.parse.urlencode(kept)).geturl()
    return clean, prefix


def _public_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


class RedisStore(StateStore):
    """:class:`StateStore` on Redis (see the module docstring)."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        clock: Clock | None = None,
        usage_flush_interval: float = USAGE_FLUSH_INTERVAL,
    ) -> None:
        super().__init__(clock=clock, usage_flush_interval=usage_flush_interval)
        self.url, url_prefix = split_url(url)
        self.prefix = url_prefix if prefix is None else prefix
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    def describe(self) -> str:
        return f"{_public_url(self.url)} (prefix {self.prefix!r})"

    def _k(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    @property
    def _c(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("the state store is not open")
        return self._client

    async def _open(self) -> None:
        client = aioredis.Redis.from_url(self.url, decode_responses=True)
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            raise ConfigError(f"cannot reach the state store {self.describe()}: {exc}") from None
        scripts = {
            "put_credential": _PUT_CREDENTIAL,
            "delete_credential": _DELETE_CREDENTIAL,
            "lock_release": _LOCK_RELEASE,
            "lock_extend": _LOCK_EXTEND,
            "slot_acquire": _SLOT_ACQUIRE,
            "slot_extend": _SLOT_EXTEND,
            "slot_count": _SLOT_COUNT,
            "rate_hit": _RATE_HIT,
            "create_client_key": _CREATE_CLIENT_KEY,
            "replace_client_key": _REPLACE_CLIENT_KEY,
            "delete_client_key": _DELETE_CLIENT_KEY,
            "client_key_by_hash": _CLIENT_KEY_BY_HASH,
        }
        self._scripts = {name: client.register_script(src) for name, src in scripts.items()}
        self._client = client

    async def _maintain(self) -> None:
        pass  # every key carries its own expiry

    async def _close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _hgetall(self, key: str) -> dict[str, str]:
        raw = await self._c.hgetall(key)
        return {_text(f): _text(v) for f, v in raw.items()}

    async def _hget(self, key: str, field: str) -> str | None:
        raw = await self._c.hget(key, field)
        return None if raw is None else _text(raw)

    async def _script(self, name: str, key: str, *args: Any) -> Any:
        return await self._scripts[name](keys=[key], args=args)

    # ------------------------------------------------------------------ credentials

    async def list_credentials(self) -> list[dict[str, Any]]:
        fields = await self._hgetall(self._k("creds"))
        entries = [(int(f[2:]), raw) for f, raw in fields.items() if f.startswith("e:")]
        return [orjson.loads(raw) for _, raw in sorted(entries)]

    async def get_credential(self, cred_id: int) -> dict[str, Any] | None:
        raw = await self._hget(self._k("creds"), f"e:{cred_id}")
        return None if raw is None else orjson.loads(raw)

    async def put_credential(self, entry: Mapping[str, Any]) -> int:
        cred_id = check_credential_entry(entry)
        raw = orjson.dumps(dict(entry)).decode()
        return int(await self._script("put_credential", self._k("creds"), cred_id, raw))

    async def delete_credential(self, cred_id: int) -> bool:
        return bool(await self._script("delete_credential", self._k("creds"), cred_id))

    async def allocate_credential_id(self) -> int:
        return int(await self._c.hincrby(self._k("creds"), "last_id", 1))

    async def credential_version(self, cred_id: int) -> int:
        return int(await self._hget(self._k("creds"), f"v:{cred_id}") or 0)

    async def credentials_version(self) -> int:
        return int(await self._hget(self._k("creds"), "seq") or 0)

    # ------------------------------------------------------------------ locks

    async def _lock_acquire(self, name: str, owner: str, lease: float) -> bool:
        done = await self._c.set(self._k("lock", name), owner, nx=True, px=_ms(lease))
        return bool(done)

    async def _lock_release(self, name: str, owner: str) -> None:
        await self._script("lock_release", self._k("lock", name), owner)

    async def _lock_extend(self, name: str, owner: str, lease: float) -> bool:
        return bool(await self._script("lock_extend", self._k("lock", name), owner, _ms(lease)))

    # ------------------------------------------------------------------ cool-downs

    async def set_cooldown(self, cred_id: int, until: float, reason: str) -> None:
        value = orjson.dumps([float(until), reason]).decode()
        await self._c.hset(self._k("cooldowns"), str(cred_id), value)

    async def clear_cooldown(self, cred_id: int) -> None:
        await self._c.hdel(self._k("cooldowns"), str(cred_id))

    async def cooldowns(self) -> dict[int, tuple[float, str]]:
        # Expired entries stay (one per credential at most): deleting them here could
        # race with another instance setting a fresh cool-down for the same credential.
        raw = await self._hgetall(self._k("cooldowns"))
        now = self.clock()
        active: dict[int, tuple[float, str]] = {}
        for field, value in raw.items():
            until, reason = orjson.loads(value)
            if until > now:
                active[int(field)] = (float(until), reason)
        return active

    # ------------------------------------------------------------------ budgets

    async def acquire_slot(self, scope: str, limit: int, lease: float) -> str | None:
        check_budget(limit, lease)
        token = new_token()
        key = self._k("slots", scope)
        got = await self._script("slot_acquire", key, limit, _ms(lease), token, _SLOT_KEY_SLACK_MS)
        return token if got else None

    async def release_slot(self, scope: str, token: str) -> None:
        await self._c.zrem(self._k("slots", scope), token)

    async def extend_slot(self, scope: str, token: str, lease: float) -> bool:
        key = self._k("slots", scope)
        return bool(await self._script("slot_extend", key, token, _ms(lease), _SLOT_KEY_SLACK_MS))

    async def slots_in_use(self, scope: str) -> int:
        return int(await self._script("slot_count", self._k("slots", scope)))

    async def hit_rate(self, scope: str, limit: int, window: float) -> tuple[bool, float]:
        check_budget(limit, window, "window")
        wait_ms = int(
            await self._script("rate_hit", self._k("rate", scope), limit, _ms(window), new_token())
        )
        if wait_ms < 0:
            return True, 0.0
        return False, wait_ms / 1000

    async def add_tokens(self, scope: str, n: int) -> int:
        key = self._k("tokens", scope, utc_day(self.clock()))
        async with self._c.pipeline(transaction=True) as pipe:
            pipe.incrby(key, n)
            pipe.expire(key, int(RETENTION))
            total, _ = await pipe.execute()
        return int(total)

    async def tokens_used(self, scope: str, since: float) -> int:
        today = utc_day(self.clock())
        first = max(utc_day(since), today - int(RETENTION // 86400))
        if first > today:
            return 0
        keys = [self._k("tokens", scope, day) for day in range(first, today + 1)]
        values = await self._c.mget(keys)
        return sum(int(v) for v in values if v is not None)

    # ------------------------------------------------------------------ settings

    async def get_settings(self) -> dict[str, Any]:
        raw = await self._hgetall(self._k("settings"))
        return {f[2:]: orjson.loads(v) for f, v in raw.items() if f.startswith("s:")}

    async def set_settings(self, changes: Mapping[str, Any]) -> int:
        key = self._k("settings")
        encoded = {k: None if v is None else orjson.dumps(v).decode() for k, v in changes.items()}
        async with self._c.pipeline(transaction=True) as pipe:
            for name, value in encoded.items():
                if value is None:
                    pipe.hdel(key, f"s:{name}")
                else:
                    pipe.hset(key, f"s:{name}", value)
            pipe.hincrby(key, "version", 1)
            results = await pipe.execute()
        return int(results[-1])

    async def settings_version(self) -> int:
        return int(await self._hget(self._k("settings"), "version") or 0)

    # ------------------------------------------------------------------ client keys

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
        now = self.clock()
        record = {
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
        raw = orjson.dumps(record).decode()
        key_id = int(await self._script("create_client_key", self._k("ckeys"), key_hash, raw))
        if key_id == 0:
            raise InvalidRequest("a client key with this hash already exists")
        return {"id": key_id, **record}

    async def list_client_keys(self) -> list[dict[str, Any]]:
        raw = await self._hgetall(self._k("ckeys"))
        records = [_client_key(int(f[2:]), v) for f, v in raw.items() if f.startswith("k:")]
        return sorted(records, key=lambda r: int(r["id"]))

    async def get_client_key(self, key_id: int) -> dict[str, Any] | None:
        raw = await self._hget(self._k("ckeys"), f"k:{key_id}")
        return None if raw is None else _client_key(key_id, raw)

    async def get_client_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        found = await self._script("client_key_by_hash", self._k("ckeys"), key_hash)
        if not found:
            return None
        key_id, raw = found
        return _client_key(int(key_id), raw)

    async def update_client_key(self, key_id: int, **fields: Any) -> dict[str, Any] | None:
        check_client_key_fields(fields)
        if fields.get("models") is not None:
            fields["models"] = list(fields["models"])
        if "enabled" in fields:
            fields["enabled"] = bool(fields["enabled"])
        for _ in range(_CAS_ATTEMPTS):
            old = await self._hget(self._k("ckeys"), f"k:{key_id}")
            if old is None:
                return None
            record = orjson.loads(old)
            new = {**record, **fields, "updated_at": self.clock()}
            raw = orjson.dumps(new).decode()
            done = await self._script(
                "replace_client_key",
                self._k("ckeys"),
                key_id,
                old,
                raw,
                record["key_hash"],
                new["key_hash"],
            )
            if done == 1:
                return {"id": key_id, **new}
            if done == 0:
                return None
            if done == -1:
                raise InvalidRequest("a client key with this hash already exists")
        raise RuntimeError(f"client key {key_id} kept changing; update abandoned")

    async def delete_client_key(self, key_id: int) -> bool:
        return bool(await self._script("delete_client_key", self._k("ckeys"), key_id))

    # ------------------------------------------------------------------ admin users

    async def get_admin_user(self, username: str) -> dict[str, Any] | None:
        raw = await self._hget(self._k("users"), username)
        return None if raw is None else {"username": username, **orjson.loads(raw)}

    async def put_admin_user(self, username: str, password_hash: str) -> None:
        old = await self.get_admin_user(username)
        now = self.clock()
        record = {
            "password_hash": password_hash,
            "created_at": now if old is None else old["created_at"],
            "updated_at": now,
        }
        await self._c.hset(self._k("users"), username, orjson.dumps(record).decode())

    async def list_admin_users(self) -> list[str]:
        return sorted(_text(name) for name in await self._c.hkeys(self._k("users")))

    # ------------------------------------------------------------------ usage

    async def _write_usage(self, totals: UsageTotals) -> None:
        hours: set[str] = set()
        async with self._c.pipeline(transaction=False) as pipe:
            for (minute, cred, key, model), values in totals.items():
                hour_key = self._k("usage", minute - minute % _HOUR)
                hours.add(hour_key)
                base = f"{minute}|{_opt(cred)}|{_opt(key)}|"
                for index, value in enumerate(values):
                    if value:
                        pipe.hincrby(hour_key, f"{base}{index}|{model}", value)
            for hour_key in hours:
                pipe.expire(hour_key, int(RETENTION))
            await pipe.execute()

    async def _usage_summary(
        self, since: float, until: float, group_by: GroupBy | None, bucket: float | None
    ) -> list[dict[str, Any]]:
        now = self.clock()
        lo, hi = usage_bounds(max(since, now - RETENTION), min(until, now + RETENTION))
        hour_keys = [self._k("usage", h) for h in range(lo - lo % _HOUR, hi, _HOUR)]
        async with self._c.pipeline(transaction=False) as pipe:
            for hour_key in hour_keys:
                pipe.hgetall(hour_key)
            hashes = await pipe.execute() if hour_keys else []
        rows: dict[UsageKey, list[int]] = {}
        for fields in hashes:
            for field, value in fields.items():
                minute, cred, key, index, model = field.split("|", 4)
                usage_key = (int(minute), _id(cred), _id(key), model)
                acc = rows.setdefault(usage_key, [0] * len(USAGE_METRICS))
                acc[int(index)] += int(value)
        return summarize_usage(
            rows.items(), since=since, until=until, group_by=group_by, bucket=bucket
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, int(round(seconds * 1000)))


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _id(text: str) -> int | None:
    return int(text) if text else None


def _client_key(key_id: int, raw: str) -> dict[str, Any]:
    return {"id": key_id, **orjson.loads(raw)}
