"""The shared-state interface: everything several kiro_fast processes or hosts must agree on.

What this module owns:

* :class:`StateStore`, the abstract store every backend implements (embedded SQLite,
  Redis, in-memory). Its methods are the whole contract: credentials (the kiro.rs JSON
  entry shape, spec kiro-auth.md §2.2) with change versions, lease-based locks for the
  refresh single-flight (§5.2), cool-downs (§8), concurrency slots, request-rate windows
  and daily token counters (§12), runtime settings, client keys (stored as hashes only),
  admin users (§2.3) and usage statistics.
* The parts every backend shares: the lock wait loop (polling across processes, an
  immediate hand-over inside one process), usage batching (events queue in memory and
  are written in batches by a background task, so the request path never touches disk
  or network to record one), per-minute usage aggregation and summary grouping, and
  argument checks.

Strategy for time: expiry maths uses the store's ``clock`` (``time.time`` unless one is
injected, which tests do); the Redis backend lets the server clock expire locks, slots
and rate windows so hosts with skewed clocks still agree. ``wait`` bounds are always
real (monotonic) time.

Usage statistics are kept per minute: an event counts at the start of the minute of its
``ts``; ``since``/``until`` and buckets are honoured at that resolution, identically in
every backend.

This module knows nothing about HTTP, the pool's selection policy or how keys are made.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import hashlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, TypeAlias

log = logging.getLogger("kiro_fast.state")

Clock: TypeAlias = Callable[[], float]
GroupBy: TypeAlias = Literal["credential", "model", "client_key"]

#: Usage is aggregated per minute: fine enough for dashboards, bounded in size.
USAGE_RESOLUTION: Final = 60
#: Flush queued usage events at least this often (seconds); a crash loses at most this much.
USAGE_FLUSH_INTERVAL: Final = 1.0
#: ...or as soon as this many are queued, so a burst does not build a large backlog.
USAGE_FLUSH_BATCH: Final = 512
#: Queued events kept while the backend is unreachable; beyond it the oldest are dropped
#: so an outage cannot exhaust memory.
USAGE_PENDING_MAX: Final = 100_000
#: Usage aggregates and daily token counters older than this are pruned.
RETENTION: Final = 90 * 86400.0
#: Lock wait loop: first and longest poll interval across processes (seconds). A refresh
#: takes hundreds of ms, so a waiter in another process notices within 1/10 s of release.
LOCK_POLL_MIN: Final = 0.01
LOCK_POLL_MAX: Final = 0.1
#: Longest rate window accepted; the SQLite backend prunes hits older than this.
RATE_WINDOW_MAX: Final = 86400.0
#: Expired locks, slots, rate hits and old statistics are pruned this often (seconds).
MAINTENANCE_INTERVAL: Final = 300.0
DAY: Final = 86400
#: Upper clamp for summary bounds (year ~36 800): keeps ``inf`` out of integer maths.
_TS_MAX: Final = float(2**40)

#: Fields of a client key record that ``update_client_key`` may change.
CLIENT_KEY_FIELDS: Final = frozenset(
    {"name", "key_hash", "key_prefix", "rpm_limit", "tpd_limit", "models", "enabled"}
)
#: Order of the per-minute usage counters (``UsageTotals``).
USAGE_METRICS: Final = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "duration_ms",
    "streams",
)
#: The dimensions of a ``UsageKey`` after its minute, in order.
_DIMENSIONS: Final = ("credential_id", "client_key_id", "model")
_GROUP_FIELDS: Final[dict[str, str]] = {
    "credential": "credential_id",
    "model": "model",
    "client_key": "client_key_id",
}

#: (minute start, credential id, client key id, model) → one list of ``USAGE_METRICS``.
UsageKey: TypeAlias = tuple[int, int | None, int | None, str]
UsageTotals: TypeAlias = dict[UsageKey, list[int]]


@dataclass(slots=True, frozen=True)
class UsageEvent:
    """One answered request. ``status`` is the HTTP status the client saw (a stream that
    broke after it started is recorded with the status of its error); ``status >= 400``
    counts as an error. ``endpoint`` is for callers' logs: no summary groups by it, so
    the stores do not keep it."""

    ts: float
    endpoint: str
    model: str
    credential_id: int | None
    client_key_id: int | None
    status: int
    input_tokens: int
    output_tokens: int
    duration_ms: float
    stream: bool


def client_key_hash(key: str) -> str:
    """The stored form of a client key: SHA-256 hex. Keys are long random strings, so a
    fast hash is enough; the key itself is never stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def utc_day(ts: float) -> int:
    """Days since the epoch of the UTC day containing ``ts`` (the token counter bucket)."""
    return int(ts // DAY)


def utc_day_start(ts: float) -> float:
    """Start of the UTC day containing ``ts``; pass it to ``tokens_used`` for "today"."""
    return float(utc_day(ts) * DAY)


def minute_of(ts: float) -> int:
    return int(ts // USAGE_RESOLUTION) * USAGE_RESOLUTION


def _ceil_minute(ts: float) -> int:
    return int(math.ceil(ts / USAGE_RESOLUTION)) * USAGE_RESOLUTION


def usage_bounds(since: float, until: float) -> tuple[int, int]:
    """Raw-``ts`` bounds ``[lo, hi)`` whose minutes ``m`` satisfy ``since <= m < until``
    (infinite or absurd bounds are clamped to the representable range)."""
    return _ceil_minute(_clamp_ts(since)), _ceil_minute(_clamp_ts(until))


def _clamp_ts(ts: float) -> float:
    return min(max(ts, 0.0), _TS_MAX)


def aggregate_usage(events: Iterable[UsageEvent]) -> UsageTotals:
    """Fold events into per-minute counters (what every backend stores)."""
    totals: UsageTotals = {}
    for ev in events:
        key = (minute_of(ev.ts), ev.credential_id, ev.client_key_id, ev.model)
        row = totals.get(key)
        if row is None:
            row = totals[key] = [0, 0, 0, 0, 0, 0]
        row[0] += 1
        row[1] += ev.status >= 400
        row[2] += ev.input_tokens
        row[3] += ev.output_tokens
        row[4] += int(round(ev.duration_ms))
        row[5] += ev.stream
    return totals


def summarize_usage(
    rows: Iterable[tuple[UsageKey, Sequence[int]]],
    *,
    since: float,
    until: float,
    group_by: GroupBy | None,
    bucket: float | None,
) -> list[dict[str, Any]]:
    """Group per-minute rows the way ``StateStore.usage_summary`` documents."""
    bucket_s = check_bucket(bucket)
    group_field = group_field_for(group_by)
    dim = None if group_field is None else _DIMENSIONS.index(group_field)
    lo, hi = usage_bounds(since, until)
    groups: dict[tuple[int | None, Any], list[int]] = {}
    for (minute, *dims), values in rows:
        if not lo <= minute < hi:
            continue
        start = minute - minute % bucket_s if bucket_s else None
        value = None if dim is None else dims[dim]
        acc = groups.setdefault((start, value), [0] * len(USAGE_METRICS))
        for i, v in enumerate(values):
            acc[i] += v
    return usage_rows(groups.items(), group_field)


def usage_rows(
    groups: Iterable[tuple[tuple[int | None, Any], Sequence[int]]], group_field: str | None
) -> list[dict[str, Any]]:
    """Summary dicts, sorted by bucket then group value (``None`` first)."""
    out: list[dict[str, Any]] = []
    for (start, value), values in groups:
        row: dict[str, Any] = {"bucket": None if start is None else float(start)}
        if group_field is not None:
            row[group_field] = value
        row.update(zip(USAGE_METRICS, (int(v) for v in values), strict=True))
        out.append(row)
    out.sort(key=_summary_order(group_field))
    return out


def _summary_order(group_field: str | None) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    def order(row: dict[str, Any]) -> tuple[Any, ...]:
        value = row.get(group_field) if group_field else None
        return (row["bucket"] or 0.0, value is not None, value if value is not None else 0)

    return order


def group_field_for(group_by: GroupBy | None) -> str | None:
    if group_by is None:
        return None
    try:
        return _GROUP_FIELDS[group_by]
    except KeyError:
        raise ValueError(
            f"group_by must be credential, model or client_key, not {group_by!r}"
        ) from None


def check_bucket(bucket: float | None) -> int | None:
    """Buckets are whole multiples of the usage resolution (60 s)."""
    if bucket is None:
        return None
    size = int(bucket)
    if size != bucket or size <= 0 or size % USAGE_RESOLUTION:
        raise ValueError(f"bucket must be a positive multiple of {USAGE_RESOLUTION} s")
    return size


def check_budget(limit: int, span: float, what: str = "lease") -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if not 0 < span <= RATE_WINDOW_MAX:
        raise ValueError(f"{what} must be in (0, {RATE_WINDOW_MAX:g}] seconds, not {span}")


def check_credential_entry(entry: Mapping[str, Any]) -> int:
    """The entry's id; entries are stored as given (kiro.rs shape), only the id is checked."""
    cred_id = entry.get("id")
    if isinstance(cred_id, bool) or not isinstance(cred_id, int) or cred_id < 0:
        raise ValueError("a credential entry needs a non-negative integer id")
    return cred_id


def check_client_key_fields(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - CLIENT_KEY_FIELDS
    if unknown:
        raise ValueError(f"unknown client key field(s): {', '.join(sorted(unknown))}")


def new_token() -> str:
    """An unguessable owner/slot token."""
    return secrets.token_hex(12)


class StateStore(abc.ABC):
    """Shared state for one kiro_fast deployment (see the module docstring).

    Use ``await store.open()`` before anything else and ``await store.close()`` at the end
    (or ``async with store:``). Every method is safe to call concurrently from many tasks,
    processes (SQLite, Redis) and hosts (Redis). Returned dicts are copies.
    """

    #: short backend name for logs (``sqlite``, ``redis``, ``memory``)
    kind: ClassVar[str] = ""
    #: whether other processes can share this store (tests skip cross-process cases if not)
    shared_across_processes: ClassVar[bool] = True

    def __init__(
        self, *, clock: Clock | None = None, usage_flush_interval: float = USAGE_FLUSH_INTERVAL
    ) -> None:
        self.clock: Clock = clock or time.time
        self.usage_flush_interval = usage_flush_interval
        self._pending: collections.deque[UsageEvent] = collections.deque(maxlen=USAGE_PENDING_MAX)
        self._dropped = 0
        self._flush_lock = asyncio.Lock()
        self._flush_wakeup: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._lock_wakeups: dict[str, asyncio.Event] = {}
        self._held: dict[str, str] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._opened = False

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect / create / migrate, then start the usage flusher. Idempotent."""
        if self._opened:
            return
        await self._open()
        self._opened = True
        self._flush_wakeup = asyncio.Event()
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"{self.kind}-usage-flush")

    async def close(self) -> None:
        """Flush queued usage events, then release connections. Idempotent."""
        if not self._opened:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        try:
            await self.flush_usage()
        finally:
            self._opened = False
            await self._close()

    async def __aenter__(self) -> StateStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for logs: backend and location, never a password."""

    # ------------------------------------------------------------------ credentials

    @abc.abstractmethod
    async def list_credentials(self) -> list[dict[str, Any]]:
        """Every credential entry (kiro.rs shape, with ``id``), by ascending id."""

    @abc.abstractmethod
    async def get_credential(self, cred_id: int) -> dict[str, Any] | None:
        """One entry, or ``None`` if there is no such id."""

    @abc.abstractmethod
    async def put_credential(self, entry: Mapping[str, Any]) -> int:
        """Insert or replace the entry with ``entry["id"]``.

        Returns:
            The entry's new version: a number larger than any version handed out before
            by this store (for any credential), so another instance can tell it changed.
        Raises:
            ValueError: ``id`` is missing or not a non-negative integer.
        """

    @abc.abstractmethod
    async def delete_credential(self, cred_id: int) -> bool:
        """Remove the entry; ``True`` if it existed. Its id is never allocated again."""

    @abc.abstractmethod
    async def allocate_credential_id(self) -> int:
        """A fresh id, unique across processes and hosts and above every stored id."""

    @abc.abstractmethod
    async def credential_version(self, cred_id: int) -> int:
        """The version ``put_credential`` last returned for ``cred_id``; 0 if absent."""

    @abc.abstractmethod
    async def credentials_version(self) -> int:
        """Grows whenever any credential is put or deleted: one cheap call tells a cache
        whether ``list_credentials`` must be read again."""

    # ------------------------------------------------------------------ locks

    @contextlib.asynccontextmanager
    async def lock(self, name: str, *, lease: float, wait: float) -> AsyncIterator[bool]:
        """Mutual exclusion on ``name`` across every user of this store.

        Yields ``True`` once held, ``False`` if ``wait`` seconds passed without getting it
        (``wait=0`` makes one attempt). The holder owns it for ``lease`` seconds: if it
        dies, the lock frees itself after the lease; release (on leaving the block) only
        ever removes the holder's own lease; ``extend_lock`` renews it. Not re-entrant.

        The refresh single-flight uses ``lock(f"refresh:{id}", lease=30, wait=35)`` and
        re-reads the credential once inside.
        """
        if lease <= 0 or wait < 0:
            raise ValueError("lock lease must be positive and wait non-negative")
        owner = await self._acquire_lock(name, lease, wait)
        if owner is None:
            yield False
            return
        self._held[name] = owner
        try:
            yield True
        finally:
            if self._held.get(name) == owner:
                del self._held[name]
            await asyncio.shield(self._release_and_wake(name, owner))

    async def extend_lock(self, name: str, lease: float) -> bool:
        """Renew the lease this store holds on ``name`` to ``lease`` seconds from now.

        Returns ``False`` if this store does not hold it (any more): the lease ran out and
        someone else may own it now.
        """
        owner = self._held.get(name)
        if owner is None or lease <= 0:
            return False
        return await self._lock_extend(name, owner, lease)

    async def _acquire_lock(self, name: str, lease: float, wait: float) -> str | None:
        owner = new_token()
        deadline = time.monotonic() + wait
        delay = LOCK_POLL_MIN
        while True:
            # Taken before the attempt, so a release between the attempt and the wait
            # still wakes this waiter.
            wakeup = self._lock_wakeups.setdefault(name, asyncio.Event())
            if await self._try_lock(name, owner, lease):
                return owner
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, remaining)):
                    await wakeup.wait()
            delay = min(delay * 2, LOCK_POLL_MAX)

    async def _try_lock(self, name: str, owner: str, lease: float) -> bool:
        try:
            return await self._lock_acquire(name, owner, lease)
        except asyncio.CancelledError:
            # The attempt may have succeeded after all (it runs in a thread or on the
            # server): give the lease back instead of leaving it until it expires.
            self._spawn(self._lock_release(name, owner))
            raise

    async def _release_and_wake(self, name: str, owner: str) -> None:
        try:
            await self._lock_release(name, owner)
        finally:
            wakeup = self._lock_wakeups.pop(name, None)
            if wakeup is not None:
                wakeup.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @abc.abstractmethod
    async def _lock_acquire(self, name: str, owner: str, lease: float) -> bool:
        """One attempt: take ``name`` for ``owner`` if free or expired."""

    @abc.abstractmethod
    async def _lock_release(self, name: str, owner: str) -> None:
        """Delete ``name`` only if ``owner`` holds it."""

    @abc.abstractmethod
    async def _lock_extend(self, name: str, owner: str, lease: float) -> bool:
        """Renew ``name`` only if ``owner`` still holds it (unexpired)."""

    # ------------------------------------------------------------------ cool-downs

    @abc.abstractmethod
    async def set_cooldown(self, cred_id: int, until: float, reason: str) -> None:
        """Keep ``cred_id`` out of selection until ``until`` (Unix seconds). Replaces any
        earlier cool-down. Permanent disabling is the ``disabled`` field of the entry."""

    @abc.abstractmethod
    async def clear_cooldown(self, cred_id: int) -> None: ...

    @abc.abstractmethod
    async def cooldowns(self) -> dict[int, tuple[float, str]]:
        """Active cool-downs: id → (until, reason). Expired ones are not returned."""

    # ------------------------------------------------------------------ budgets

    @abc.abstractmethod
    async def acquire_slot(self, scope: str, limit: int, lease: float) -> str | None:
        """Take one of ``limit`` concurrent slots of ``scope`` (e.g. ``cred:3``).

        Returns a token for ``release_slot``, or ``None`` when ``limit`` unexpired slots
        are taken. A slot whose holder never releases it frees itself after ``lease``
        seconds; long requests renew it with ``extend_slot``.
        """

    @abc.abstractmethod
    async def release_slot(self, scope: str, token: str) -> None:
        """Give a slot back (no-op if it already expired)."""

    @abc.abstractmethod
    async def extend_slot(self, scope: str, token: str, lease: float) -> bool:
        """Renew a held slot for ``lease`` seconds; ``False`` if it had expired."""

    @abc.abstractmethod
    async def slots_in_use(self, scope: str) -> int:
        """Unexpired slots of ``scope`` (for least-busy selection and the admin view)."""

    @abc.abstractmethod
    async def hit_rate(self, scope: str, limit: int, window: float) -> tuple[bool, float]:
        """Count one request against "at most ``limit`` per sliding ``window`` seconds".

        Returns ``(True, 0.0)`` and counts the hit when under the limit, else
        ``(False, retry_after)`` without counting it, where ``retry_after`` is the time
        until the oldest counted hit leaves the window. One limit per scope: put the
        window in the scope name if a caller needs two.
        """

    @abc.abstractmethod
    async def add_tokens(self, scope: str, n: int) -> int:
        """Add ``n`` tokens to today's (UTC) counter of ``scope``; returns today's total."""

    @abc.abstractmethod
    async def tokens_used(self, scope: str, since: float) -> int:
        """Tokens counted from the start of the UTC day containing ``since`` until now."""

    # ------------------------------------------------------------------ settings

    @abc.abstractmethod
    async def get_settings(self) -> dict[str, Any]:
        """All runtime settings (JSON values)."""

    @abc.abstractmethod
    async def set_settings(self, changes: Mapping[str, Any]) -> int:
        """Apply ``changes`` atomically; a ``None`` value removes the key. Returns the new
        settings version. Other instances see the change at their next read."""

    @abc.abstractmethod
    async def settings_version(self) -> int:
        """Grows on every ``set_settings``: callers cache settings and compare this."""

    # ------------------------------------------------------------------ client keys

    @abc.abstractmethod
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
        """Store a client key by its hash (``client_key_hash``) and a display prefix.

        Returns the record: ``id, name, key_hash, key_prefix, rpm_limit, tpd_limit,
        models, enabled, created_at, updated_at``. Ids are never reused.
        Raises:
            InvalidRequest: another key has the same hash.
        """

    @abc.abstractmethod
    async def list_client_keys(self) -> list[dict[str, Any]]:
        """Every client key record, by ascending id."""

    @abc.abstractmethod
    async def get_client_key(self, key_id: int) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def get_client_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        """The record for a presented key's hash (the per-request lookup)."""

    @abc.abstractmethod
    async def update_client_key(self, key_id: int, **fields: Any) -> dict[str, Any] | None:
        """Change any of ``CLIENT_KEY_FIELDS``; returns the new record, ``None`` if absent.

        Raises:
            ValueError: a field name is not updatable.
            InvalidRequest: the new ``key_hash`` belongs to another key.
        """

    @abc.abstractmethod
    async def delete_client_key(self, key_id: int) -> bool: ...

    # ------------------------------------------------------------------ admin users

    @abc.abstractmethod
    async def get_admin_user(self, username: str) -> dict[str, Any] | None:
        """``{"username", "password_hash", "created_at", "updated_at"}`` or ``None``."""

    @abc.abstractmethod
    async def put_admin_user(self, username: str, password_hash: str) -> None:
        """Create the user or replace its password hash."""

    @abc.abstractmethod
    async def list_admin_users(self) -> list[str]:
        """Usernames, sorted."""

    # ------------------------------------------------------------------ usage

    def record_usage(self, event: UsageEvent) -> None:
        """Queue one event; a background task writes batches (``USAGE_FLUSH_INTERVAL`` /
        ``USAGE_FLUSH_BATCH``). Synchronous on purpose: no await, no I/O per request."""
        pending = self._pending
        if len(pending) == USAGE_PENDING_MAX:
            self._dropped += 1  # the deque drops the oldest
        pending.append(event)
        if len(pending) >= USAGE_FLUSH_BATCH and self._flush_wakeup is not None:
            self._flush_wakeup.set()

    async def flush_usage(self) -> None:
        """Write every queued event now. On failure they stay queued and the error is
        raised (the background flusher logs it and tries again later)."""
        async with self._flush_lock:
            while self._pending:
                batch = list(self._pending)
                self._pending.clear()
                try:
                    await self._write_usage(aggregate_usage(batch))
                except BaseException:
                    self._pending.extendleft(reversed(batch))
                    raise
            if self._dropped:
                log.warning(
                    "%s: dropped %d usage events while the store was unreachable",
                    self.kind,
                    self._dropped,
                )
                self._dropped = 0

    async def usage_summary(
        self,
        *,
        since: float,
        until: float,
        group_by: GroupBy | None = None,
        bucket: float | None = None,
    ) -> list[dict[str, Any]]:
        """Totals of the events whose minute ``m`` has ``since <= m < until``.

        Queued events of this store are flushed first. Each row has ``bucket`` (start of a
        ``bucket``-second window aligned to the epoch, or ``None``), the group field
        (``credential_id``, ``model`` or ``client_key_id``, when ``group_by`` is given),
        and ``requests, errors, input_tokens, output_tokens, duration_ms, streams``.
        Rows are sorted by bucket, then group value (``None`` first).
        Raises:
            ValueError: ``bucket`` is not a positive multiple of 60, or bad ``group_by``.
        """
        check_bucket(bucket)
        group_field_for(group_by)
        await self.flush_usage()
        return await self._usage_summary(since, until, group_by, bucket)

    @abc.abstractmethod
    async def _write_usage(self, totals: UsageTotals) -> None:
        """Add per-minute totals to the stored aggregates."""

    @abc.abstractmethod
    async def _usage_summary(
        self, since: float, until: float, group_by: GroupBy | None, bucket: float | None
    ) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _maintain(self) -> None:
        """Periodic clean-up of expired rows (every ``MAINTENANCE_INTERVAL``)."""

    async def _flush_loop(self) -> None:
        assert self._flush_wakeup is not None
        wakeup = self._flush_wakeup
        next_maintenance = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.usage_flush_interval):
                    await wakeup.wait()
            wakeup.clear()
            try:
                await self.flush_usage()
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL
                    await self._maintain()
            except Exception as exc:  # the flusher must survive outages
                log.warning("%s: usage flush failed: %s", self.kind, type(exc).__name__)
