"""Client API keys and usage accounting at the edge: who asked, within which limits, for what.

What this module owns:

* :class:`ClientKeyGate`: the keys kept in the state store (hashed, kiro-auth.md §12) —
  looking one up by the key a client presented (cached for :data:`KEY_CACHE_TTL`, so the
  store is asked at most once per key and period), and admitting a request within the
  key's limits: a model allow-list (``fnmatch`` patterns matched against the model the
  client named and the Kiro model it maps to; a refusal is a 403 ``permission_error``),
  requests per minute (a sliding window in the store) and tokens per UTC day (the
  store's daily counter). Over a limit: :class:`~kiro_fast.errors.RateLimited`, a 429
  ``rate_limit_error`` with ``retry-after``.
* :class:`RequestNote`: what one authenticated request did — the key, the model, the
  credential that answered, tokens, duration — turned into one
  :class:`~kiro_fast.state.UsageEvent` when the request ends (``record_usage`` only
  queues it: no I/O on the request path), and charged to the key's daily tokens.
* :class:`AccountingRelay`: the relay, with the note filled in from the
  :class:`~kiro_fast.relay.Plan` (model, streaming) and from the finished converter
  (credential, usage). The handlers do not know about accounting at all.

The note of the running request travels in a context variable: each request runs in its
own task, so the variable is that request's.

The configured ``apiKey`` is checked by the application before any of this (constant
time, no store access); it has no limits and no key id.
"""

from __future__ import annotations

import asyncio
import contextvars
import fnmatch
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from . import models
from .credentials import Credential
from .errors import KiroFastError, PermissionDenied, RateLimited
from .protocol import Exchange
from .relay import Plan, Relay
from .state import StateStore, UsageEvent, client_key_hash, utc_day_start
from .stream import StreamConverter

log = logging.getLogger("kiro_fast.accounting")

#: A looked-up key (or its absence) is trusted this long: an edit or deletion made by
#: another process takes effect within it; edits in this process take effect at once.
KEY_CACHE_TTL: Final = 5.0
#: Distinct presented keys remembered; beyond it the cache starts over (bounds memory
#: when a client tries many wrong keys).
KEY_CACHE_MAX: Final = 4096
#: The requests-per-minute window.
RPM_WINDOW: Final = 60.0
#: New keys: this prefix and 32 random bytes (base64url).
KEY_PREFIX: Final = "sk-kf-"
#: Characters of a key shown in lists (the prefix plus a few random ones).
DISPLAY_PREFIX_LENGTH: Final = 12
#: Status recorded when the client left before any answer (nginx's convention).
CLIENT_GONE: Final = 499

CURRENT: contextvars.ContextVar[RequestNote | None] = contextvars.ContextVar(
    "kiro_fast_request_note", default=None
)


@dataclass(frozen=True, slots=True)
class ClientKey:
    """A stored client key as the gate uses it (never the key itself)."""

    id: int
    name: str
    rpm_limit: int | None
    tpd_limit: int | None
    models: tuple[str, ...] | None
    enabled: bool

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClientKey:
        allowed = record.get("models")
        return cls(
            id=int(record["id"]),
            name=str(record.get("name") or ""),
            rpm_limit=record.get("rpm_limit") or None,
            tpd_limit=record.get("tpd_limit") or None,
            models=tuple(allowed) if allowed else None,
            enabled=bool(record.get("enabled", True)),
        )


def new_key() -> str:
    """A fresh client key (shown once, stored only as its hash)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]


def rpm_scope(key_id: int) -> str:
    return f"client-key:{key_id}:rpm"


def tokens_scope(key_id: int) -> str:
    return f"client-key:{key_id}:tokens"


def model_allowed(patterns: Sequence[str], requested: str, kiro_model: str | None) -> bool:
    """Whether ``requested`` (or the Kiro model it maps to) matches one pattern."""
    names = [requested.strip().lower()]
    if kiro_model:
        names.append(kiro_model.lower())
    return any(fnmatch.fnmatchcase(n, p.strip().lower()) for p in patterns for n in names)


def requested_model(body: bytes) -> str | None:
    """The ``model`` a request body names, if it is a JSON object that names one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None


class RequestNote:
    """What one authenticated request did (filled in as it goes)."""

    __slots__ = (
        "started",
        "ts",
        "key_id",
        "model",
        "credential_id",
        "input_tokens",
        "output_tokens",
        "stream",
        "error_status",
        "models",
    )

    def __init__(self, key_id: int | None) -> None:
        self.started = time.monotonic()
        self.ts = time.time()
        self.key_id = key_id
        self.model = ""
        self.credential_id: int | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.stream = False
        #: the status of an error sent after the response started (an SSE error event)
        self.error_status = 0
        #: the key's model allow-list (None: every model)
        self.models: Sequence[str] | None = None

    def answered(self, cred: Credential, converter: StreamConverter) -> None:
        usage = converter.usage
        self.credential_id = cred.id
        self.input_tokens = usage.prompt_tokens
        self.output_tokens = usage.output_tokens


class ClientKeyGate:
    """Client keys from the state store: lookup, limits, usage (see the module docstring)."""

    def __init__(self, state: StateStore, *, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self._cache: dict[str, tuple[float, ClientKey | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        #: when each credential last answered a request in this process
        self.last_used: dict[int, float] = {}

    # ------------------------------------------------------------------ keys

    async def lookup(self, presented: str) -> ClientKey | None:
        """The stored key ``presented`` is, or ``None``."""
        digest = client_key_hash(presented)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self.state.get_client_key_by_hash(digest)
        key = ClientKey.from_record(record) if record is not None else None
        if len(self._cache) >= KEY_CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (now + KEY_CACHE_TTL, key)
        return key

    def forget(self) -> None:
        """Drop cached lookups (a key was changed in this process)."""
        self._cache.clear()

    async def admit(self, key: ClientKey, body: bytes, resolve: Callable[[str], str | None]) -> str:
        """Check ``key``'s limits for one request; returns the model the body names ("").

        ``resolve`` maps a client model name to its Kiro model id (``None`` if unknown).

        Raises:
            PermissionDenied: the model is not on the key's allow-list.
            RateLimited: over the requests-per-minute or tokens-per-day limit.
        """
        model = ""
        if key.models is not None:
            model = requested_model(body) or ""
            if model and not model_allowed(key.models, model, resolve(model)):
                raise PermissionDenied(f"model {model[:100]!r} is not allowed for this API key")
        if key.rpm_limit:
            allowed, retry_after = await self.state.hit_rate(
                rpm_scope(key.id), key.rpm_limit, RPM_WINDOW
            )
            if not allowed:
                raise _limited(
                    f"this API key is limited to {key.rpm_limit} requests per minute",
                    retry_after,
                )
        if key.tpd_limit:
            now = self.clock()
            used = await self.state.tokens_used(tokens_scope(key.id), utc_day_start(now))
            if used >= key.tpd_limit:
                raise _limited(
                    f"this API key used its {key.tpd_limit} tokens for today (UTC)",
                    utc_day_start(now) + 86400.0 - now,
                )
        return model

    # ------------------------------------------------------------------ usage

    def finish(self, note: RequestNote, endpoint: str, exchange: Exchange) -> None:
        """Record the request (queued; written in batches) and charge the key's tokens."""
        status = note.error_status or exchange.status or CLIENT_GONE
        tokens = note.input_tokens + note.output_tokens
        self.state.record_usage(
            UsageEvent(
                ts=note.ts,
                endpoint=endpoint,
                model=note.model,
                credential_id=note.credential_id,
                client_key_id=note.key_id,
                status=status,
                input_tokens=note.input_tokens,
                output_tokens=note.output_tokens,
                duration_ms=(time.monotonic() - note.started) * 1e3,
                stream=note.stream,
            )
        )
        if note.credential_id is not None:
            self.last_used[note.credential_id] = note.ts
        if note.key_id is not None and tokens:
            self._spawn(self._charge(note.key_id, tokens))

    async def _charge(self, key_id: int, tokens: int) -> None:
        try:
            await self.state.add_tokens(tokens_scope(key_id), tokens)
        except Exception as exc:  # a store outage loses this count, not the request
            log.warning("could not count tokens of client key #%d: %s", key_id, type(exc).__name__)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Wait for the token counts still being written."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _limited(message: str, retry_after: float) -> RateLimited:
    seconds = max(1, int(-(-retry_after // 1)))
    return RateLimited(message, headers={"retry-after": str(seconds)})


def kiro_model_of(name: str, thinking_suffix: str, overrides: Mapping[str, str]) -> str | None:
    """The Kiro model a client model name maps to, or ``None``."""
    try:
        return models.resolve_model(name, overrides, thinking_suffix=thinking_suffix).kiro_id
    except KiroFastError:
        return None


class AccountingRelay(Relay):
    """The relay, noting for the running request its model, credential and usage."""

    # Hooks, not a wrapper around run(): a wrapper coroutine and closure would live as
    # long as every stream.
    def _begin(self, plan: Plan) -> None:
        note = CURRENT.get()
        if note is not None:
            note.stream = plan.streaming
            if plan.model:
                note.model = plan.model

    def _done(self, plan: Plan, converter: StreamConverter, cred: Credential) -> None:
        note = CURRENT.get()
        if note is not None:
            note.answered(cred, converter)
        super()._done(plan, converter, cred)

    def _fail(self, exchange: Exchange, plan: Plan, stream: Any, exc: KiroFastError) -> None:
        note = CURRENT.get()
        if note is not None and exchange.started:
            note.error_status = exc.status
        super()._fail(exchange, plan, stream, exc)
