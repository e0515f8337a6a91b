"""The credential pool: which account serves a request, and keeping every account usable.

What this module owns:

* Selection (:meth:`CredentialPool.lease`): among the credentials that are enabled, not
  cooling down, not excluded by this request's failover and allowed for the model (FREE
  accounts never get Opus, kiro-auth.md §7.5), in the order of the strategy —
  ``priority`` (kiro.rs: lowest priority number first), ``round_robin``, ``least_used``
  (fewest streams in flight, then fewest served; kiro.rs "balanced") or ``most_quota``
  (most remaining credits per ``getUsageLimits``; kiro2api "optimal") — with an optional
  stickiness of one client session (``metadata.user_id``) to its account.
* Budgets: an optional concurrency cap per account and overall, and requests per minute
  per account, taken from the state store so every process shares them. When every
  candidate is at a cap the request waits in a bounded queue (size and time limited);
  it never hangs: the answer is then a 429 with ``retry-after``. A :class:`Lease` holds
  its slots for the whole stream (renewed while it lasts) and gives them back at the end.
* Token freshness: single-flight refresh per credential — a per-process ``asyncio.Lock``,
  then the store lock ``refresh:<id>`` so processes sharing the store refresh once, then
  the credential is re-read from the store (another process may have rotated it already;
  a rotated refresh token must never be used twice) and checked again before refreshing.
  A forced refresh after "bearer token invalid" first re-reads the source file, since the
  Kiro IDE sharing the account may have rotated the tokens itself.
* Verdicts: a dead refresh token disables the credential with a stored reason (after one
  more look at the source file); transient refresh failures cool it down briefly; quota
  exhaustion cools it down until the reset date; throttling cools it down; N consecutive
  failures disable it. Cool-downs live in the state store, shared by every process.
* Usage: ``getUsageLimits`` per credential, cached for a TTL, for ``most_quota`` and
  ``min_usage_threshold`` (credentials known to have fewer credits left are skipped), for
  reset dates and for the admin API.
* The in-memory view: the served credentials, refreshed from the store in the background
  when ``credentials_version()`` moved (checked at most every ``SYNC_INTERVAL``), so the
  selection hot path never waits for the store.

It knows nothing about HTTP requests or response formats; the relay decides, per upstream
answer, which of these reactions applies (:mod:`kiro_fast.failover`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from . import metrics
from .config import Config
from .credential_sync import CredentialSync, credential_from_store_entry
from .credentials import Credential
from .errors import (
    CredentialsBusy,
    NoCredentialAvailable,
    TokenRefreshError,
    UpstreamError,
    UpstreamStatusError,
)
from .refresh import refresh_credential
from .sources import CredentialSource
from .state import StateStore
from .upstream import UpstreamClient
from .usage_limits import UsageCache, UsageInfo, fetch_usage, first_of_next_month

if TYPE_CHECKING:
    from .failover import Decision

log = logging.getLogger("kiro_fast.pool")

#: Refresh when the access token expires within this many seconds (kiro.rs, kiro-gateway).
REFRESH_MARGIN: Final = 600.0
#: After a transient refresh failure a token still valid this long keeps serving.
REFRESH_GRACE: Final = 60.0
#: The view of the store is refreshed at most this often (seconds).
SYNC_INTERVAL: Final = 1.0
#: Concurrency slots expire after this long if their holder dies (a killed process gives
#: its capacity back within a minute and a half; ``slotLease`` changes it). Live streams
#: renew them every ``SLOT_RENEW`` seconds, or a third of a shorter lease, so a stream may
#: last as long as it needs and survives a missed renewal.
SLOT_LEASE: Final = 90.0
SLOT_RENEW: Final = 30.0
#: A queued request checks the store this often: other processes free slots without
#: waking it (releases in this process wake it at once).
CAPACITY_POLL: Final = 0.25
#: Suggested retry-after when a concurrency cap is what stops a request.
BUSY_RETRY_AFTER: Final = 1.0
#: ``most_quota`` asks for a credential's usage at most this often when the call fails.
USAGE_RETRY_INTERVAL: Final = 60.0
#: Sessions remembered for stickiness; the oldest are forgotten first.
MAX_STICKY_SESSIONS: Final = 10_000
#: Disable reason strings (kiro.rs's, so its admin UI reads them).
INVALID_REFRESH_TOKEN: Final = "InvalidRefreshToken"
TOO_MANY_FAILURES: Final = "TooManyFailures"
QUOTA_EXCEEDED: Final = "QuotaExceeded"

STRATEGIES: Final = ("priority", "round_robin", "least_used", "most_quota")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    strategy: str = "priority"
    refresh_margin: float = REFRESH_MARGIN
    #: 0 turns stickiness off
    session_affinity_ttl: float = 0.0
    max_concurrent_per_credential: int = 0
    rpm_per_credential: int = 0
    max_concurrent_requests: int = 0
    queue_size: int = 100
    queue_timeout: float = 30.0
    max_failures: int = 3
    refresh_failure_cooldown: float = 30.0
    usage_ttl: float = 300.0
    #: the refresh lock's lease: longer than one refresh call may take
    refresh_lock_lease: float = 70.0
    #: credentials whose last known remaining credits are below this are skipped (0: off)
    min_usage_threshold: float = 0.0
    slot_lease: float = SLOT_LEASE

    @classmethod
    def from_config(cls, config: Config) -> PoolSettings:
        return cls(
            strategy=config.load_balancing_mode,
            session_affinity_ttl=config.session_affinity_ttl if config.session_affinity else 0.0,
            max_concurrent_per_credential=config.max_concurrent_per_credential,
            rpm_per_credential=config.rpm_per_credential,
            max_concurrent_requests=config.max_concurrent_requests,
            queue_size=config.queue_size,
            queue_timeout=config.queue_timeout,
            max_failures=config.max_failures,
            refresh_failure_cooldown=config.refresh_failure_cooldown,
            usage_ttl=config.usage_cache_ttl,
            refresh_lock_lease=config.auth_timeout + 10.0,
            min_usage_threshold=config.min_usage_threshold,
            slot_lease=config.slot_lease,
        )


Slots = list[tuple[str, str]]


#: Shared by every first attempt: an empty frozenset is 216 bytes, held for the stream.
_NO_EXCLUSIONS: Final[frozenset[int]] = frozenset()


@dataclass(frozen=True, slots=True)
class _Request:
    """What one attempt asks of the pool (see :meth:`CredentialPool.lease`)."""

    exclude: frozenset[int]
    session: str | None
    model: str | None
    prefer: int | None


class Lease:
    """One request's hold on a credential: ``async with pool.lease(...) as lease``.

    Entering picks a credential with a fresh token and takes its budget slots; leaving
    gives them back. Leaving without an exception records a success (failure counter
    reset, session stickiness). The slots are renewed while the lease lasts.
    """

    __slots__ = ("pool", "cred", "_request", "_slots", "_renewal")

    def __init__(self, pool: CredentialPool, request: _Request) -> None:
        self.pool = pool
        self._request = request
        self.cred: Credential
        self._slots: Slots = []
        self._renewal: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Lease:
        self.cred, self._slots = await self.pool._acquire(self._request)
        if self._slots:
            self._renewal = asyncio.get_running_loop().call_later(self._every, self._renew)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
        ok = exc_type is None
        await self.pool._release(self.cred, self._slots, ok=ok, session=self._request.session)

    def _renew(self) -> None:
        self.pool._spawn(self.pool._extend(self._slots))
        self._renewal = asyncio.get_running_loop().call_later(self._every, self._renew)

    @property
    def _every(self) -> float:
        return min(SLOT_RENEW, self.pool.settings.slot_lease / 3)


class CredentialPool:
    """The served credentials, their budgets, tokens and fates (see the module docstring)."""

    def __init__(
        self,
        client: UpstreamClient,
        state: StateStore,
        *,
        settings: PoolSettings | None = None,
        sources: Sequence[CredentialSource] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.state = state
        self.settings = settings or PoolSettings()
        if self.settings.strategy not in STRATEGIES:
            raise ValueError(f"unknown pool strategy {self.settings.strategy!r}")
        self.book = CredentialSync(state, sources)
        self.clock = clock
        #: served credentials, by (priority, id)
        self.credentials: list[Credential] = []
        self._by_id: dict[int, Credential] = {}
        self._cooldowns: dict[int, tuple[float, str]] = {}
        self._version = -1
        self._next_sync = 0.0
        self._sync_task: asyncio.Task[None] | None = None
        self._locks: dict[int, asyncio.Lock] = {}
        #: local changes in flight / done, so a concurrent sync never overwrites them
        self._dirty: collections.Counter[int] = collections.Counter()
        self._generation: collections.Counter[int] = collections.Counter()
        self._cooldown_generation = 0
        #: cool-down writes under way: a sync may have read the store before they landed
        self._cooldown_writes = 0
        self._failures: collections.Counter[int] = collections.Counter()
        self._inflight: collections.Counter[int] = collections.Counter()
        self._served: collections.Counter[int] = collections.Counter()
        self._sticky: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        self._rr_last = -1
        self._usage = UsageCache(self.settings.usage_ttl)
        self._usage_tasks: dict[int, asyncio.Task[Any]] = {}
        self._usage_asked: dict[int, float] = {}
        self._freed = asyncio.Event()
        self._waiting = 0
        self._background: set[asyncio.Task[Any]] = set()
        #: refresh calls made by this pool (tests and the admin view read it)
        self.refresh_count = 0

    # ------------------------------------------------------------------ lifecycle

    def __len__(self) -> int:
        return len(self.credentials)

    def available(self) -> list[Credential]:
        """Credentials that are not disabled (cool-downs pass by themselves)."""
        return [c for c in self.credentials if not c.disabled]

    def get(self, cred_id: int) -> Credential | None:
        return self._by_id.get(cred_id)

    async def start(self, initial: Sequence[Credential] = ()) -> None:
        """Import the sources (and ``initial``) into the store, load the view, and give
        every credential its machine id for good.

        Raises:
            ConfigError: a source file is unreadable as a whole.
        """
        await self.book.import_all(initial)
        await self.sync()

    async def close(self) -> None:
        """Stop background work; writes already under way are finished, not cut."""
        usage = list(self._usage_tasks.values())
        for task in usage:
            task.cancel()  # network calls: not worth waiting for
        pending = [*usage, *self._background]
        if self._sync_task is not None:
            pending.append(self._sync_task)
        await asyncio.gather(*pending, return_exceptions=True)

    @property
    def waiting(self) -> int:
        """Requests queued for a free credential right now."""
        return self._waiting

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ the view

    async def sync(self) -> None:
        """Refresh the view from the store: credentials if their version moved, cool-downs."""
        generations = dict(self._generation)
        version = await self.state.credentials_version()
        if version != self._version:
            fresh = await self.book.load()
            new = self._apply(fresh, generations)
            self._version = version
            for cred in new:
                if not cred.machine_id:  # derived once, then stored for good (§6)
                    await self._commit(cred, self.client.machine_id)
        cooldown_generation = self._cooldown_generation
        cooldowns = await self.state.cooldowns()
        if cooldown_generation == self._cooldown_generation and not self._cooldown_writes:
            self._cooldowns = cooldowns

    def _apply(self, fresh: list[Credential], generations: dict[int, int]) -> list[Credential]:
        """Merge the store's credentials into the view; returns the ones new to it."""
        seen: set[int] = set()
        added: list[Credential] = []
        for new in fresh:
            seen.add(new.id)
            current = self._by_id.get(new.id)
            if current is None:
                self._by_id[new.id] = new
                added.append(new)
            elif not self._dirty[new.id] and self._generation[new.id] == generations.get(new.id, 0):
                current.copy_from(new)
        for cred_id in [i for i in self._by_id if i not in seen and not self._dirty[i]]:
            del self._by_id[cred_id]
        self.credentials = sorted(self._by_id.values(), key=lambda c: (c.priority, c.id))
        return added

    def _sync_soon(self) -> None:
        """Start a background sync when one is due; the request never waits for it."""
        now = time.monotonic()
        if now < self._next_sync or (self._sync_task is not None and not self._sync_task.done()):
            return
        self._next_sync = now + SYNC_INTERVAL
        self._sync_task = asyncio.ensure_future(self._sync_quietly())

    async def _sync_quietly(self) -> None:
        try:
            await self.sync()
        except Exception as exc:  # a store outage must not fail requests
            log.warning("state store sync failed: %s", type(exc).__name__)

    async def _commit(self, cred: Credential, change: Callable[[Credential], Any] | None) -> None:
        """Apply ``change`` to ``cred`` and persist it (source file, then store).

        A store outage is logged, not raised: the change holds in this process and the
        request that caused it goes on.
        """
        self._dirty[cred.id] += 1
        self._generation[cred.id] += 1
        try:
            if change is not None:
                change(cred)
            await self.book.save(cred)
        except Exception as exc:
            log.error("could not store the change of %s: %s", cred.label(), type(exc).__name__)
        finally:
            self._dirty[cred.id] -= 1
            self._generation[cred.id] += 1

    # ------------------------------------------------------------------ leasing

    def lease(
        self,
        *,
        exclude: Iterable[int] = (),
        session: str | None = None,
        model: str | None = None,
        prefer: int | None = None,
    ) -> Lease:
        """A credential for one attempt; see :class:`Lease`.

        ``exclude``: credentials that already failed this request. ``session``: the
        client session for stickiness. ``model``: the Kiro model id (FREE accounts are
        skipped for Opus). ``prefer``: try this credential first (a retry on the same).

        Raises (on entering):
            CredentialsBusy: every candidate is cooling down, capped, or the queue is
                full or timed out (a 429 with ``retry-after``).
            NoCredentialAvailable: none configured, or all disabled or excluded.
        """
        excluded = frozenset(exclude) if exclude else _NO_EXCLUSIONS
        return Lease(self, _Request(excluded, session, model, prefer))

    async def _acquire(self, request: _Request) -> tuple[Credential, Slots]:
        self._sync_soon()
        skip = set(request.exclude)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            freed = self._freed
            picked = await self._pick(skip, request)
            if isinstance(picked, tuple):
                cred, slots = picked
                if await self._fresh_or_skip(cred, slots, skip):
                    self._inflight[cred.id] += 1
                    if deadline is not None:
                        waited = self.settings.queue_timeout - (deadline - loop.time())
                        metrics.queue_waited(waited, "acquired")
                    return cred, slots
                continue
            if deadline is None:
                if self._waiting >= self.settings.queue_size:
                    metrics.queue_waited(0.0, "full")
                    raise CredentialsBusy(
                        "every credential is busy and the wait queue is full", retry_after=picked
                    )
                deadline = loop.time() + self.settings.queue_timeout
            remaining = deadline - loop.time()
            if remaining <= 0:
                metrics.queue_waited(self.settings.queue_timeout - remaining, "timeout")
                raise CredentialsBusy(
                    f"every credential stayed busy for {self.settings.queue_timeout:g} s",
                    retry_after=picked,
                )
            await self._wait(freed, min(remaining, max(CAPACITY_POLL, min(picked, 1.0))))

    async def _fresh_or_skip(self, cred: Credential, slots: Slots, skip: set[int]) -> bool:
        try:
            await self.ensure_fresh(cred)
        except TokenRefreshError as exc:
            await self._give_back(slots)
            log.warning("%s skipped: %s", cred.label(), exc.message)
            if not exc.permanent and not cred.disabled:
                await self.cool_down(cred, self.settings.refresh_failure_cooldown, "RefreshFailed")
            skip.add(cred.id)
            return False
        return True

    async def _wait(self, freed: asyncio.Event, timeout: float) -> None:
        self._waiting += 1
        metrics.queue_entered()
        try:
            async with asyncio.timeout(timeout):
                await freed.wait()
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1
            metrics.queue_left()

    async def _pick(self, skip: set[int], request: _Request) -> tuple[Credential, Slots] | float:
        """A candidate with its slots, or how long until one may be free."""
        now = self.clock()
        candidates = self._candidates(skip, request, now)
        if not candidates:
            raise self._nothing_available(skip, request.model, now)
        if not self._capped:
            return self._chosen(candidates[0]), []
        overall: Slots = []
        if self.settings.max_concurrent_requests:
            token = await self.state.acquire_slot(
                "global", self.settings.max_concurrent_requests, self.settings.slot_lease
            )
            if token is None:
                return BUSY_RETRY_AFTER
            overall = [("global", token)]
        wait = math.inf
        for cred in candidates:
            taken = await self._take_budget(cred)
            if isinstance(taken, list):
                return self._chosen(cred), overall + taken
            wait = min(wait, taken)
        await self._give_back(overall, wake=False)
        return wait

    @property
    def _capped(self) -> bool:
        s = self.settings
        return bool(
            s.max_concurrent_requests or s.max_concurrent_per_credential or s.rpm_per_credential
        )

    async def _take_budget(self, cred: Credential) -> Slots | float:
        slots: Slots = []
        cap = self.settings.max_concurrent_per_credential
        if cap:
            scope = f"cred:{cred.id}"
            token = await self.state.acquire_slot(scope, cap, self.settings.slot_lease)
            if token is None:
                return BUSY_RETRY_AFTER
            slots.append((scope, token))
        rpm = self.settings.rpm_per_credential
        if rpm:
            allowed, retry_after = await self.state.hit_rate(f"rpm:{cred.id}", rpm, 60.0)
            if not allowed:
                await self._give_back(slots, wake=False)
                return max(retry_after, 0.01)
        return slots

    def _chosen(self, cred: Credential) -> Credential:
        self._rr_last = cred.id
        return cred

    def _candidates(self, skip: set[int], request: _Request, now: float) -> list[Credential]:
        model, prefer = request.model, request.prefer
        opus = model is not None and "opus" in model.lower()
        eligible = [
            c
            for c in self.credentials
            if c.id not in skip
            and not c.disabled
            and not self._cooling(c.id, now)
            and not (opus and _is_free(c))
        ]
        if self.settings.min_usage_threshold > 0:
            eligible = self._above_threshold(eligible, now)
        ordered = self._order(eligible, now)
        first = prefer if prefer is not None else self._sticky_for(request.session, now)
        if first is not None:
            for index, cred in enumerate(ordered):
                if cred.id == first:
                    ordered.insert(0, ordered.pop(index))
                    break
        return ordered

    def _above_threshold(self, eligible: list[Credential], now: float) -> list[Credential]:
        """Credentials not known to be below ``min_usage_threshold`` (unknown ones serve
        while their usage is fetched in the background)."""
        self._refresh_usage_soon(eligible, now)
        floor = self.settings.min_usage_threshold
        kept = []
        for cred in eligible:
            info = self._usage.last(cred.id)
            if info is None or info.remaining >= floor:
                kept.append(cred)
        return kept

    @property
    def current_id(self) -> int | None:
        """The credential chosen last (kiro.rs's "current"), if any."""
        return self._rr_last if self._rr_last >= 0 else None

    def _order(self, eligible: list[Credential], now: float) -> list[Credential]:
        strategy = self.settings.strategy
        if strategy == "round_robin" and eligible:
            later = [c for c in eligible if c.id > self._rr_last]
            earlier = [c for c in eligible if c.id <= self._rr_last]
            return sorted(later, key=_by_id) + sorted(earlier, key=_by_id)
        if strategy == "least_used":
            return sorted(
                eligible, key=lambda c: (self._inflight[c.id], self._served[c.id], c.priority, c.id)
            )
        if strategy == "most_quota":
            self._refresh_usage_soon(eligible, now)
            return sorted(eligible, key=lambda c: (-self._remaining(c.id), c.priority, c.id))
        return list(eligible)

    def _remaining(self, cred_id: int) -> float:
        info = self._usage.last(cred_id)
        return -1.0 if info is None else info.remaining

    def _cooling(self, cred_id: int, now: float) -> bool:
        entry = self._cooldowns.get(cred_id)
        return entry is not None and entry[0] > now

    def _nothing_available(
        self, skip: set[int], model: str | None, now: float
    ) -> NoCredentialAvailable:
        if not self.credentials:
            return NoCredentialAvailable("no Kiro credential is configured")
        enabled = [c for c in self.credentials if not c.disabled]
        cooling = [self._cooldowns[c.id] for c in enabled if self._cooling(c.id, now)]
        if cooling:
            until, reason = min(cooling)
            return CredentialsBusy(
                f"every usable credential is cooling down ({reason}); the first is free "
                f"in {until - now:.0f} s",
                retry_after=min(until - now, 86400.0 * 31),
            )
        if not enabled:
            return NoCredentialAvailable(
                f"all {len(self.credentials)} Kiro credentials are disabled"
            )
        if model and "opus" in model.lower() and all(_is_free(c) for c in enabled):
            return NoCredentialAvailable(f"no credential may use {model}: FREE accounts cannot")
        floor = self.settings.min_usage_threshold
        if floor > 0 and all(self._remaining(c.id) < floor for c in enabled):
            return NoCredentialAvailable(
                f"every enabled credential has fewer than {floor:g} credits left "
                "(minUsageThreshold)"
            )
        return NoCredentialAvailable(
            f"no usable Kiro credential: {len(self.credentials) - len(enabled)} disabled, "
            f"{len(skip)} failed for this request"
        )

    async def _release(
        self, cred: Credential, slots: Slots, *, ok: bool, session: str | None
    ) -> None:
        self._inflight[cred.id] -= 1
        if ok:
            self._served[cred.id] += 1
            self._failures.pop(cred.id, None)
            if session and self.settings.session_affinity_ttl:
                self._stick(session, cred.id)
        await self._give_back(slots)

    async def _give_back(self, slots: Slots, *, wake: bool = True) -> None:
        """Release slots; ``wake`` the queue only when they served a request (a slot taken
        and returned while picking frees nothing a waiter could not already see)."""
        for scope, token in slots:
            try:
                await self.state.release_slot(scope, token)
            except Exception as exc:  # the slot expires by itself after its lease
                log.warning("could not release slot %s: %s", scope, type(exc).__name__)
        if wake and slots:
            # Every waiter wakes: one takes the freed capacity, the rest wait again.
            self._freed.set()
            self._freed = asyncio.Event()

    async def _extend(self, slots: Slots) -> None:
        for scope, token in slots:
            try:
                await self.state.extend_slot(scope, token, self.settings.slot_lease)
            except Exception as exc:
                log.warning("could not renew slot %s: %s", scope, type(exc).__name__)

    # ------------------------------------------------------------------ stickiness

    def _sticky_for(self, session: str | None, now: float) -> int | None:
        if not session or not self.settings.session_affinity_ttl:
            return None
        entry = self._sticky.get(session)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def _stick(self, session: str, cred_id: int) -> None:
        self._sticky[session] = (cred_id, self.clock() + self.settings.session_affinity_ttl)
        self._sticky.move_to_end(session)
        while len(self._sticky) > MAX_STICKY_SESSIONS:
            self._sticky.popitem(last=False)

    # ------------------------------------------------------------------ tokens

    async def ensure_fresh(self, cred: Credential, *, stale_token: str | None = None) -> None:
        """Refresh ``cred`` if its token is stale, or if it still is ``stale_token``.

        ``stale_token`` forces one refresh after the upstream rejected that token; when
        another request, process or the Kiro IDE already replaced it, nothing is called.

        Raises:
            TokenRefreshError: ``permanent`` when the refresh token is dead (the
                credential is then disabled).
        """
        if cred.is_api_key:
            return
        if stale_token is None and not cred.needs_refresh(
            self.clock(), self.settings.refresh_margin
        ):
            return
        lock = self._locks.setdefault(cred.id, asyncio.Lock())
        async with lock:
            if self._fresh(cred, stale_token):
                return
            lease = self.settings.refresh_lock_lease
            async with self.state.lock(f"refresh:{cred.id}", lease=lease, wait=lease + 5.0) as held:
                await self._absorb_stored(cred)
                if self._fresh(cred, stale_token):
                    return
                if stale_token is not None and await self._adopt_from_source(cred, stale_token):
                    return
                if not held:
                    raise TokenRefreshError(
                        f"{cred.label()}: another process is still refreshing it"
                    )
                await self._refresh(cred)

    def _fresh(self, cred: Credential, stale_token: str | None) -> bool:
        if stale_token is not None:
            return cred.access_token != stale_token
        return not cred.needs_refresh(self.clock(), self.settings.refresh_margin)

    async def _absorb_stored(self, cred: Credential) -> None:
        """Take the tokens another process stored (it may have rotated them)."""
        entry = await self.state.get_credential(cred.id)
        if entry is None:
            return
        token, refresh = entry.get("accessToken"), entry.get("refreshToken")
        if token == cred.access_token and refresh == cred.refresh_token:
            return
        stored = credential_from_store_entry(entry)
        if stored is None:
            return
        self._take_tokens(cred, stored)
        log.debug("%s: took the tokens another process stored", cred.label())

    @staticmethod
    def _take_tokens(cred: Credential, other: Credential) -> None:
        cred.access_token, cred.refresh_token = other.access_token, other.refresh_token
        cred.expires_at, cred.expires_form = other.expires_at, other.expires_form
        cred.profile_arn = other.profile_arn or cred.profile_arn
        cred.fingerprint = other.fingerprint
        if other.client_id and other.client_secret:
            cred.client_id, cred.client_secret = other.client_id, other.client_secret

    async def _adopt_from_source(self, cred: Credential, stale_token: str | None) -> bool:
        """Re-read the source file; take its tokens if another program rotated them.

        Returns whether the credential now holds a usable access token other than
        ``stale_token`` (``None``: whether the refresh token changed).
        """
        fresh = await self.book.reread(cred)
        if fresh is None:
            return False
        if fresh.fingerprint == cred.fingerprint:
            # Unchanged since we last read or wrote it: nobody rotated anything there. When
            # a write-back failed (disk full), it holds tokens older than ours: never take them.
            return False
        if fresh.refresh_token == cred.refresh_token and fresh.access_token in (
            None,
            cred.access_token,
        ):
            return False
        old_refresh = cred.refresh_token
        await self._commit(cred, lambda c: self._take_tokens(c, fresh))
        log.info("%s: took the tokens its source file now holds (rotated elsewhere)", cred.label())
        if stale_token is None:
            return cred.refresh_token != old_refresh
        return cred.access_token != stale_token and not cred.needs_refresh(self.clock(), 0.0)

    async def _refresh(self, cred: Credential) -> None:
        """One refresh call (lock held) and what follows from its verdict."""
        self._dirty[cred.id] += 1
        self._generation[cred.id] += 1
        try:
            await self._refresh_verdict(cred)
        except TokenRefreshError as exc:
            if exc.permanent or not self._still_valid(cred):
                raise
            log.warning(
                "%s: refresh failed (%s); its token still serves", cred.label(), exc.message
            )
            return
        finally:
            self._dirty[cred.id] -= 1
            self._generation[cred.id] += 1
        log.info("%s: access token refreshed", cred.label())
        await self._commit(cred, None)

    async def _refresh_verdict(self, cred: Credential) -> None:
        """Refresh; on a dead refresh token look at the source file once, then disable."""
        try:
            await self._refresh_call(cred)
            return
        except TokenRefreshError as exc:
            if not exc.permanent:
                raise
            rotated = await self._adopt_from_source(cred, None)
            if not rotated:
                await self._disable_now(cred, INVALID_REFRESH_TOKEN)
                raise
        if not cred.needs_refresh(self.clock(), self.settings.refresh_margin):
            return  # the file's own access token is fresh enough
        try:
            await self._refresh_call(cred)
        except TokenRefreshError as exc:
            if exc.permanent:
                await self._disable_now(cred, INVALID_REFRESH_TOKEN)
            raise

    def _still_valid(self, cred: Credential) -> bool:
        expires = cred.expires_at
        return (
            bool(cred.access_token)
            and expires is not None
            and expires > self.clock() + REFRESH_GRACE
        )

    async def _refresh_call(self, cred: Credential) -> None:
        self.refresh_count += 1
        await refresh_credential(self.client, cred, clock=self.clock)

    # ------------------------------------------------------------------ verdicts

    async def disable(self, cred: Credential, reason: str) -> None:
        """Take ``cred`` out of service with a stored reason (survives restarts)."""
        await self._disable_now(cred, reason)

    async def _disable_now(self, cred: Credential, reason: str) -> None:
        now = self.clock()
        await self._commit(cred, lambda c: c.disable(reason, now))
        log.error("%s disabled: %s", cred.label(), reason)

    async def enable(self, cred: Credential) -> None:
        self._failures.pop(cred.id, None)
        await self._commit(cred, Credential.enable)
        await self.clear_cooldown(cred)

    async def set_priority(self, cred: Credential, priority: int) -> None:
        def change(c: Credential) -> None:
            c.priority = priority

        await self._commit(cred, change)
        self.credentials.sort(key=lambda c: (c.priority, c.id))

    async def apply(self, decision: Decision, cred: Credential, token: str | None) -> bool:
        """Carry out a failover decision's verdict on ``cred``; True when the next attempt
        must avoid it (``token`` is the bearer the failed attempt used)."""
        if decision.penalty == "quota":
            await self.quota_exhausted(cred)
        elif decision.penalty == "cooldown":
            await self.cool_down(cred, decision.cooldown, decision.reason)
        elif decision.penalty == "failure":
            await self.record_failure(cred)
        if decision.action == "retry_other":
            return True
        if decision.action == "refresh_and_retry":
            try:
                await self.ensure_fresh(cred, stale_token=token)
            except TokenRefreshError:
                return True
        return False

    async def cool_down(self, cred: Credential, seconds: float, reason: str) -> None:
        """Keep ``cred`` out of selection for ``seconds`` (every process sharing the store)."""
        await self._cool_until(cred, self.clock() + seconds, reason)

    async def _cool_until(self, cred: Credential, until: float, reason: str) -> None:
        self._cooldown_generation += 1
        self._cooldown_writes += 1
        self._cooldowns[cred.id] = (until, reason)
        log.warning("%s cooling down for %.0f s: %s", cred.label(), until - self.clock(), reason)
        try:
            await self.state.set_cooldown(cred.id, until, reason)
        except Exception as exc:
            log.warning("could not store the cool-down of %s: %s", cred.label(), type(exc).__name__)
        finally:
            self._cooldown_written()

    async def clear_cooldown(self, cred: Credential) -> None:
        self._cooldown_generation += 1
        self._cooldown_writes += 1
        self._cooldowns.pop(cred.id, None)
        try:
            await self.state.clear_cooldown(cred.id)
        finally:
            self._cooldown_written()

    def _cooldown_written(self) -> None:
        """A sync that read the store before a cool-down write landed must not apply it."""
        self._cooldown_writes -= 1
        self._cooldown_generation += 1

    async def quota_exhausted(self, cred: Credential) -> None:
        """Monthly quota gone (402): out until the reset date the usage call reported."""
        now = self.clock()
        info = self._usage.last(cred.id)
        until = info.next_reset if info and info.next_reset and info.next_reset > now else None
        await self._cool_until(cred, until or first_of_next_month(now), QUOTA_EXCEEDED)

    async def record_failure(self, cred: Credential) -> None:
        """One more consecutive failure; at ``max_failures`` the credential is disabled."""
        self._failures[cred.id] += 1
        if self._failures[cred.id] >= self.settings.max_failures and not cred.disabled:
            await self._disable_now(cred, TOO_MANY_FAILURES)

    def failure_count(self, cred_id: int) -> int:
        """Consecutive failures of a credential in this process (the admin view)."""
        return self._failures.get(cred_id, 0)

    def cooldown_of(self, cred_id: int) -> tuple[float, str] | None:
        """The active cool-down of a credential (until, reason), if any."""
        entry = self._cooldowns.get(cred_id)
        return entry if entry is not None and entry[0] > self.clock() else None

    # ------------------------------------------------------------------ usage

    async def usage(self, cred: Credential, *, force: bool = False) -> UsageInfo:
        """``cred``'s quota, from the cache unless ``force`` or older than the TTL.

        Raises:
            UpstreamError, TokenRefreshError: the call failed.
        """
        now = self.clock()
        cached = None if force else self._usage.get(cred.id, now)
        if cached is not None:
            return cached
        await self.ensure_fresh(cred)
        token = cred.access_token
        try:
            info = await fetch_usage(self.client, cred, now)
        except UpstreamStatusError as exc:
            if exc.kind != "bearer_invalid":
                raise
            await self.ensure_fresh(cred, stale_token=token)
            info = await fetch_usage(self.client, cred, now)
        self._usage.put(cred.id, info)
        await self._learn_account(cred, info)
        return info

    async def _learn_account(self, cred: Credential, info: UsageInfo) -> None:
        title = info.subscription_title or cred.subscription_title
        email = cred.email or info.email
        if title == cred.subscription_title and email == cred.email:
            return

        def change(c: Credential) -> None:
            c.subscription_title, c.email = title, email

        await self._commit(cred, change)

    async def refresh_usage(self) -> dict[int, UsageInfo | Exception]:
        """Fetch every enabled credential's quota now (admin "refresh all", tests)."""
        results: dict[int, UsageInfo | Exception] = {}
        for cred in self.available():
            try:
                results[cred.id] = await self.usage(cred, force=True)
            except (UpstreamError, TokenRefreshError) as exc:
                results[cred.id] = exc
        return results

    def cached_usage(self, cred_id: int) -> UsageInfo | None:
        return self._usage.last(cred_id)

    def _refresh_usage_soon(self, creds: Iterable[Credential], now: float) -> None:
        """Background usage fetches for ``most_quota``: never on the request path."""
        retry = min(self.settings.usage_ttl, USAGE_RETRY_INTERVAL)
        for cred in creds:
            if self._usage.get(cred.id, now) is not None:
                continue
            if now - self._usage_asked.get(cred.id, -math.inf) < retry:
                continue  # asked recently (maybe it failed): not on every request
            self._usage_asked[cred.id] = now
            self._usage_tasks[cred.id] = asyncio.ensure_future(self._usage_quietly(cred))

    async def _usage_quietly(self, cred: Credential) -> None:
        try:
            await self.usage(cred)
        except (UpstreamError, TokenRefreshError) as exc:
            log.info("usage of %s unavailable: %s", cred.label(), exc.message)


def _by_id(cred: Credential) -> int:
    return cred.id


def _is_free(cred: Credential) -> bool:
    return bool(cred.subscription_title and "FREE" in cred.subscription_title.upper())
