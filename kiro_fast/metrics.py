"""Prometheus metrics: every metric object, the scrape endpoint and scrape-time collectors.

What this module owns:

* Every metric kiro_fast exports (``kiro_fast_*``, listed in :data:`METRIC_NAMES`) and
  the small functions the request path calls to move them (:func:`request_started`,
  :func:`request_finished`, :func:`attempt_failed`, :func:`stream_done` …).
* :class:`CountedMap`, the ``collections.Counter`` the core modules keep their counters
  in (``normalize.RULE_HITS``, ``truncation.TRUNCATION`` …): each increment also moves a
  labelled Prometheus counter, so the numbers are right across worker processes.
* ``GET /metrics`` (:func:`install`): the text exposition format, protected by the admin
  key (``adminApiKey``, ``x-api-key`` or ``Authorization: Bearer``, compared in constant
  time) unless ``metricsPublic`` is set. Without ``prometheus_client`` it answers 503.
* Gauges computed at scrape time from the answering process's pool (availability,
  cool-downs, disable flags); the pool view is synced with the state store first, so
  every process reports what the store says. Quota gauges come from that process's
  ``getUsageLimits`` cache (filled by ``most_quota`` and the admin API; absent until a
  credential's usage was fetched).

Strategy:

* Multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (the supervisor sets it for
  its workers): values live in that directory's mmap files and a scrape of any worker
  sums every worker (``MultiProcessCollector``); live gauges use ``livesum``. Otherwise
  one in-process registry.
* The request path calls these functions once per request or per upstream attempt,
  never per upstream event. Labelled children are cached in a dict, so a call costs a
  dict lookup plus prometheus_client's update (about 1 µs; 2–3 µs in multiprocess mode,
  which writes the mmap file). A streamed request makes four updates (requests, upstream
  attempt, first byte, duration): 4–7 µs of CPU, 10–15 µs with workers, against the
  ~500 µs a proxied stream costs.
* Label values are bounded and never secret: route paths (``unmatched`` for unknown
  ones), Kiro model ids, status codes, reason codes, credential ids, client key names.

It knows nothing about how requests are served: the app, the relay and the pool call it.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hmac
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from . import __version__
from .errors import (
    AuthenticationError,
    EventStreamError,
    KiroFastError,
    PermissionDenied,
    TokenRefreshError,
    UpstreamException,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .eventstream import IMPLEMENTATION

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.multiprocess import MultiProcessCollector

    # ``*_created`` series exist only outside multiprocess mode: drop them everywhere, so
    # one worker and N workers expose the same series.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
except ImportError:  # pragma: no cover - the [metrics] extra is not installed
    prometheus_client = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .app import App
    from .pool import CredentialPool
    from .protocol import Exchange, Request

log = logging.getLogger("kiro_fast.metrics")

#: Directory of prometheus_client's multiprocess mode (set by the supervisor).
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS: Final = bool(os.environ.get(MULTIPROC_ENV)) and prometheus_client is not None
AVAILABLE: Final = prometheus_client is not None
PATH: Final = "/metrics"
#: A scrape brings the pool view up to date first; a slow store must not hang it.
SCRAPE_SYNC_TIMEOUT: Final = 2.0
#: Status label of a request whose client left before any response started (nginx's).
CLIENT_GONE: Final = "499"
UNMATCHED: Final = "unmatched"
#: Client key label of a request the single configured ``apiKey`` authenticated.
DEFAULT_KEY: Final = "default"
_REFUSED: Final = ("401", "403")

# Buckets (seconds). First byte: prefill takes from a few hundred ms to tens of seconds.
TTFB_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
#: Streams run from seconds to many minutes (long tool-writing answers).
STREAM_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: Requests answered in one piece, quick ones too (models, count_tokens, errors).
REQUEST_BUCKETS: Final = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0)
#: Queueing for a free credential lasts up to ``queueTimeout`` (30 s by default).
QUEUE_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# --------------------------------------------------------------------------- families


class _NullChild:
    """Stands in for every metric when prometheus_client is not installed."""

    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        pass

    def dec(self, amount: float = 1.0) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_NULL: Final = _NullChild()


class Family:
    """One metric and its labelled children, cached by label values."""

    __slots__ = ("metric", "_children")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, *values: str) -> Any:
        """The child for these label values (the metric itself when it has no labels)."""
        found = self._children.get(values)
        if found is None:
            if self.metric is None:
                found = _NULL
            else:
                found = self.metric.labels(*values) if values else self.metric
            self._children[values] = found
        return found


#: The single-process registry (multiprocess mode reads the mmap files instead).
REGISTRY: Final[Any] = (
    CollectorRegistry(auto_describe=True) if AVAILABLE and not MULTIPROCESS else None
)
METRIC_NAMES: list[str] = []


def _make(kind: str, name: str, doc: str, labels: Iterable[str] = (), **extra: Any) -> Family:
    METRIC_NAMES.append(name)
    if not AVAILABLE:
        return Family(None)
    factory = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[kind]
    if kind == "gauge":
        extra.setdefault("multiprocess_mode", "livesum")
    return Family(factory(name, doc, list(labels), registry=REGISTRY, **extra))


REQUESTS: Final = _make(
    "counter",
    "kiro_fast_requests_total",
    "Requests answered, by route, Kiro model, status and client key name",
    ("endpoint", "model", "status", "client_key"),
)
REQUEST_DURATION: Final = _make(
    "histogram",
    "kiro_fast_request_duration_seconds",
    "Requests answered in one piece (not streamed): whole request time, by route",
    ("endpoint",),
    buckets=REQUEST_BUCKETS,
)
UPSTREAM: Final = _make(
    "counter",
    "kiro_fast_upstream_attempts_total",
    "Upstream chat attempts by HTTP status (empty: no answer) and reason (ok or the failure)",
    ("status", "reason"),
)
FAILOVER: Final = _make(
    "counter",
    "kiro_fast_failover_decisions_total",
    "What followed a failed attempt: retry_same, retry_other, refresh_and_retry, fail",
    ("action",),
)
TTFB: Final = _make(
    "histogram",
    "kiro_fast_time_to_first_byte_seconds",
    "Streams: from the relay taking the request to the first content written to the client",
    buckets=TTFB_BUCKETS,
)
STREAM_DURATION: Final = _make(
    "histogram",
    "kiro_fast_stream_duration_seconds",
    "Streams: from the relay taking the request to the end of the response",
    buckets=STREAM_BUCKETS,
)
STALLS: Final = _make(
    "counter", "kiro_fast_stream_stalls_total", "Upstream streams that went silent mid-answer"
)
BROKEN: Final = _make(
    "counter",
    "kiro_fast_streams_broken_total",
    "Responses that ended with an error after they started, by error type",
    ("error_type",),
)
TRUNCATED: Final = _make(
    "counter",
    "kiro_fast_truncated_responses_total",
    "Answers the upstream cut short (no end-of-answer events), every API",
)
REFRESHES: Final = _make(
    "counter",
    "kiro_fast_token_refreshes_total",
    "Token refresh calls by outcome: ok, transient, permanent",
    ("outcome",),
)
QUEUE_WAIT: Final = _make(
    "histogram",
    "kiro_fast_pool_queue_wait_seconds",
    "Time requests queued for a free credential, by outcome: acquired, timeout, full",
    ("outcome",),
    buckets=QUEUE_BUCKETS,
)
QUEUED: Final = _make("gauge", "kiro_fast_pool_queued", "Requests waiting for a free credential")
RULE_HITS: Final = _make(
    "counter",
    "kiro_fast_normalizer_rule_hits_total",
    "Requests in which a normaliser rule fired, by reason code",
    ("rule",),
)
TRUNCATION_EVENTS: Final = _make(
    "counter",
    "kiro_fast_truncation_events_total",
    "Truncation memory (/v1/messages): responses cut, tool_calls_dropped, notes injected",
    ("event",),
)
STRUCTURED_OUTPUT: Final = _make(
    "counter",
    "kiro_fast_structured_output_total",
    "Structured output answers by outcome",
    ("outcome",),
)
WEB_SEARCH: Final = _make(
    "counter", "kiro_fast_web_search_total", "Web searches: requests, failures", ("event",)
)
COUNT_TOKENS: Final = _make(
    "counter",
    "kiro_fast_count_tokens_total",
    "count_tokens answers by source: forwarded (external counter) or fallback",
    ("source",),
)
#: Computed at scrape time from the pool (see :class:`PoolCollector`).
METRIC_NAMES.extend(
    [
        "kiro_fast_build_info",
        "kiro_fast_credentials",
        "kiro_fast_credential_available",
        "kiro_fast_credential_disabled",
        "kiro_fast_credential_cooldown_seconds",
        "kiro_fast_credential_quota_limit",
        "kiro_fast_credential_quota_used",
        "kiro_fast_credential_quota_remaining",
        "kiro_fast_credential_quota_reset_timestamp_seconds",
    ]
)


class CountedMap(collections.Counter[str]):
    """A ``Counter`` whose increases also move ``family``'s counter labelled with the key.

    The core modules keep ``COUNTER[key] += n``; the Prometheus side is what a scrape
    reports (summed over worker processes), the mapping what in-process readers see.
    """

    def __init__(self, family: Family) -> None:
        super().__init__()
        self._family = family

    def __setitem__(self, key: str, value: int) -> None:
        delta = value - self.get(key, 0)
        if delta > 0:
            self._family.child(key).inc(delta)
        super().__setitem__(key, value)

    def copy(self) -> collections.Counter[str]:  # type: ignore[override]
        return collections.Counter(self)

    def __reduce__(self) -> Any:
        return collections.Counter, (dict(self),)


# --------------------------------------------------------------------------- per request


class RequestRecord:
    """What one request's metrics need, filled in by whoever learns it."""

    __slots__ = ("started", "model", "client_key", "streamed")

    def __init__(self, started: float) -> None:
        self.started = started
        self.model = ""
        #: a streamed response is timed by the stream histograms instead
        self.streamed = False
        #: the client key's name; "" when none was presented or it was refused
        self.client_key = ""


_CURRENT: Final[contextvars.ContextVar[RequestRecord | None]] = contextvars.ContextVar(
    "kiro_fast_request_record", default=None
)


def request_started() -> RequestRecord:
    """Begin a request's record (the app, first thing; each request runs in its own task)."""
    record = RequestRecord(time.monotonic())
    _CURRENT.set(record)
    return record


def note_model(model: str | None) -> None:
    """The Kiro model id this request uses (bounded: the catalog and configured overrides)."""
    record = _CURRENT.get()
    if record is not None and model:
        record.model = model


def note_client_key(name: str) -> None:
    """The name of the client key that authenticated this request (never the key)."""
    record = _CURRENT.get()
    if record is not None:
        record.client_key = name


def request_finished(
    record: RequestRecord,
    routes: Mapping[str, Mapping[str, tuple[Any, bool]]],
    request: Request,
    exchange: Exchange,
) -> None:
    """Count the answered request (``routes``: the app's, path → method → (handler, auth))."""
    path = request.path
    methods = routes.get(path)
    endpoint = path if methods is not None else UNMATCHED
    if exchange.started:
        status = str(exchange.status)
    else:
        status = CLIENT_GONE if exchange.disconnected else "500"
    key = record.client_key
    if not key and status not in _REFUSED:
        entry = methods.get(request.method) if methods is not None else None
        key = DEFAULT_KEY if entry is not None and entry[1] else ""
    REQUESTS.child(endpoint, record.model, status, key).inc()
    if not record.streamed:
        REQUEST_DURATION.child(endpoint).observe(time.monotonic() - record.started)


def attempt_ok() -> None:
    UPSTREAM.child("200", "ok").inc()


def attempt_failed(exc: KiroFastError, action: str) -> None:
    """One failed upstream attempt and the failover action that followed it."""
    UPSTREAM.child(*_upstream_labels(exc)).inc()
    FAILOVER.child(action).inc()


def _upstream_labels(exc: KiroFastError) -> tuple[str, str]:
    if isinstance(exc, UpstreamStatusError):
        return str(exc.upstream_status), exc.kind
    if isinstance(exc, UpstreamException):
        return "200", "exception_" + exc.kind
    if isinstance(exc, UpstreamTimeout):
        return "", "timeout"
    if isinstance(exc, EventStreamError):
        return "200", "bad_event_stream"
    if isinstance(exc, UpstreamUnavailable):
        return "", "unavailable"
    if isinstance(exc, TokenRefreshError):
        return "", "refresh_failed"
    return "", "other"


def stream_done(started: float, first_content: float, ended: float) -> None:
    """A streamed response ended; ``first_content`` is 0 when no content was written."""
    record = _CURRENT.get()
    if record is not None:
        record.streamed = True
    if first_content:
        TTFB.child().observe(first_content - started)
    STREAM_DURATION.child().observe(ended - started)


def stall() -> None:
    STALLS.child().inc()


def broken(error_type: str) -> None:
    BROKEN.child(error_type).inc()


def truncated() -> None:
    TRUNCATED.child().inc()


def refresh_outcome(outcome: str) -> None:
    """``ok``, ``transient`` or ``permanent`` (the refresh token is dead)."""
    REFRESHES.child(outcome).inc()


def queue_entered() -> None:
    QUEUED.child().inc()


def queue_left() -> None:
    QUEUED.child().dec()


def queue_waited(seconds: float, outcome: str) -> None:
    """A request that queued got a credential (``acquired``) or gave up (``timeout``)."""
    QUEUE_WAIT.child(outcome).observe(seconds)


# --------------------------------------------------------------------------- scrape


class PoolCollector:
    """Gauges about the credentials, read from a pool when scraped."""

    def __init__(self, pool: CredentialPool, now: float) -> None:
        self.pool = pool
        self.now = now

    def collect(self) -> Iterator[Any]:
        info = GaugeMetricFamily(
            "kiro_fast_build_info", "Version and decoder", labels=["version", "eventstream"]
        )
        info.add_metric([__version__, IMPLEMENTATION], 1.0)
        yield info
        yield from self._credentials()

    def _credentials(self) -> Iterator[Any]:
        pool, now = self.pool, self.now
        totals = GaugeMetricFamily(
            "kiro_fast_credentials", "Credentials by state", labels=["state"]
        )
        available = _per_credential("available", "1 when the credential may serve now")
        disabled = GaugeMetricFamily(
            "kiro_fast_credential_disabled",
            "1 for a disabled credential, with its reason",
            labels=["credential", "reason"],
        )
        cooling = GaugeMetricFamily(
            "kiro_fast_credential_cooldown_seconds",
            "Seconds left in a credential's cool-down, with its reason",
            labels=["credential", "reason"],
        )
        quota = {
            name: _per_credential("quota_" + name, doc)
            for name, doc in (
                ("limit", "Monthly credits (last getUsageLimits seen by this process)"),
                ("used", "Credits used"),
                ("remaining", "Credits left"),
            )
        }
        reset = _per_credential("quota_reset_timestamp_seconds", "When the quota resets")
        counts = {"available": 0, "disabled": 0, "cooling": 0}
        for cred in pool.credentials:
            label = str(cred.id)
            cooldown = pool.cooldown_of(cred.id)
            if cred.disabled:
                counts["disabled"] += 1
                disabled.add_metric([label, cred.disabled_reason or ""], 1.0)
            elif cooldown is not None:
                counts["cooling"] += 1
            else:
                counts["available"] += 1
            if cooldown is not None:
                cooling.add_metric([label, cooldown[1]], max(cooldown[0] - now, 0.0))
            up = not cred.disabled and cooldown is None
            available.add_metric([label], 1.0 if up else 0.0)
            usage = pool.cached_usage(cred.id)
            if usage is not None:
                quota["limit"].add_metric([label], usage.limit)
                quota["used"].add_metric([label], usage.used)
                quota["remaining"].add_metric([label], usage.remaining)
                if usage.next_reset:
                    reset.add_metric([label], usage.next_reset)
        for state, count in counts.items():
            totals.add_metric([state], float(count))
        yield from (totals, available, disabled, cooling, *quota.values(), reset)


def _per_credential(name: str, doc: str) -> Any:
    return GaugeMetricFamily("kiro_fast_credential_" + name, doc, labels=["credential"])


class _Frozen:
    """Already collected families, so the exposition can be rendered off the loop."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        return iter(self.families)


def install(app: App) -> None:
    """Serve ``GET /metrics`` on ``app`` (see the module docstring)."""

    async def metrics(request: Request, exchange: Exchange) -> None:
        state = app.state
        config = state.config
        if not config.metrics_public:
            authorize(request, config.admin_api_key)
        if not AVAILABLE:
            exchange.send(503, _JSON, _unavailable_body())
            return
        pool = state.pool
        await _sync(pool)
        families = list(PoolCollector(pool, pool.clock()).collect())
        body = await asyncio.to_thread(render, families)
        exchange.send(200, _TEXT, body)

    app.route("GET", PATH, metrics, auth=False)


def render(pool_families: Iterable[Any] = ()) -> bytes:
    """The exposition text: every metric of every process, plus ``pool_families``."""
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Frozen(list(REGISTRY.collect())))
    registry.register(_Frozen(list(pool_families)))
    body: bytes = prometheus_client.generate_latest(registry)
    return body


async def _sync(pool: CredentialPool) -> None:
    try:
        async with asyncio.timeout(SCRAPE_SYNC_TIMEOUT):
            await pool.sync()
    except Exception as exc:  # the scrape still answers, from the last view
        log.warning("metrics: state store sync failed: %s", type(exc).__name__)


def authorize(request: Request, admin_key: str | None) -> None:
    """The admin key, as ``x-api-key`` or ``Authorization: Bearer``, in constant time.

    Raises:
        PermissionDenied: no admin key is configured (and metrics are not public).
        AuthenticationError: none presented, or not the admin key.
    """
    if not admin_key:
        raise PermissionDenied(
            "/metrics needs the admin key: set adminApiKey, or metricsPublic: true"
        )
    presented = request.header("x-api-key")
    if presented is None:
        authorization = request.header("authorization") or ""
        if authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
    if not presented:
        raise AuthenticationError("/metrics: send the admin key as x-api-key or Bearer")
    if not hmac.compare_digest(presented.encode(), admin_key.encode()):
        raise AuthenticationError("/metrics: invalid admin key")


_JSON: Final = [(b"content-type", b"application/json")]
_TEXT: Final = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


def _unavailable_body() -> bytes:
    message = "metrics need prometheus_client: pip install 'kiro-fast[metrics]'"
    return orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
