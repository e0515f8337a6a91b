"""``GET /metrics``: Prometheus text a scraper can parse, admin-protected, and moving.

Each scenario runs through a real kiro_fast (the e2e harness) against the fake upstream
and compares two scrapes: the metric a user would alert on must move by the amount the
scenario implies (one request, one refresh, one stall …). Metrics are process-wide, so
tests compare deltas. The multiprocess test runs ``kiro-fast serve --workers 2`` and
checks that one scrape sums what both workers served.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from e2e_harness import API_KEY, REFRESH_TOKEN, Harness, default_credentials, directive
from proc_harness import (
    FakeThread,
    KiroProcess,
    SSEReader,
    add_default_account,
    messages_body,
    request,
    wait_until,
    write_files,
)
from prometheus_client.parser import text_string_to_metric_families

from kiro_fast import metrics
from kiro_fast.credentials import Credential
from kiro_fast.testing import FakeUpstream, Scenario

ADMIN_KEY = "adm-metrics-" + "k" * 40
MODEL = "claude-sonnet-4-6"
KIRO_MODEL = "claude-sonnet-4.6"
SECOND_REFRESH = "aorMetricsTwo" + "r" * 110


class Scrape:
    """One parsed scrape: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str, **labels: str) -> bool:
        return any(
            s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            for s in self.samples
        )


def scrape(port: int, key: str | None = ADMIN_KEY) -> Scrape:
    headers = {} if key is None else {"x-api-key": key}
    status, head, body = request(port, "GET", "/metrics", headers=headers)
    assert status == 200, body
    assert head["content-type"].startswith("text/plain")
    return Scrape(body.decode())


def post(port: int, payload: dict[str, Any], key: str = API_KEY) -> tuple[int, dict[str, str]]:
    headers = {"x-api-key": key, "content-type": "application/json"}
    status, head, body = request(port, "POST", "/v1/messages", orjson.dumps(payload), headers)
    return status, head


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def read_stream(port: int, payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    reader = SSEReader(
        port, "/v1/messages", orjson.dumps(payload), {"x-api-key": API_KEY, "content-type": "a/j"}
    )
    try:
        assert reader.status == 200
        events = []
        while (item := reader.next_event()) is not None:
            events.append(item)
        return events
    finally:
        reader.close()


def two_credentials(fake: FakeUpstream) -> list[Credential]:
    first = default_credentials(fake)
    fake.accounts.add_social(SECOND_REFRESH)
    return [*first, Credential(id=2, auth_method="social", refresh_token=SECOND_REFRESH)]


def start_harness(
    config: dict[str, Any] | None = None,
    credentials: Callable[[FakeUpstream], list[Credential]] | None = None,
) -> Harness:
    values = {"adminApiKey": ADMIN_KEY, "streamIdleTimeout": 0.5, **(config or {})}
    return Harness(config=values, credentials=credentials).start()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    running = start_harness()
    yield running
    running.stop()


@pytest.fixture
def port(harness: Harness) -> int:
    return harness.runtime.port


# --------------------------------------------------------------------------- access


def test_metrics_need_the_admin_key(port: int) -> None:
    assert request(port, "GET", "/metrics")[0] == 401
    assert request(port, "GET", "/metrics", headers={"x-api-key": API_KEY})[0] == 401
    bearer = {"authorization": f"Bearer {API_KEY}"}
    assert request(port, "GET", "/metrics", headers=bearer)[0] == 401
    status, _, body = request(port, "GET", "/metrics", headers={"x-api-key": "wrong"})
    assert status == 401
    assert orjson.loads(body)["error"]["type"] == "authentication_error"
    assert request(port, "GET", "/metrics", headers={"x-api-key": ADMIN_KEY})[0] == 200
    bearer = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert request(port, "GET", "/metrics", headers=bearer)[0] == 200


def test_without_an_admin_key_metrics_are_refused_unless_public() -> None:
    closed = Harness(config={"streamIdleTimeout": 1.0}).start()
    try:
        status, _, body = request(closed.runtime.port, "GET", "/metrics")
        assert status == 403
        assert "adminApiKey" in orjson.loads(body)["error"]["message"]
    finally:
        closed.stop()
    public = Harness(config={"metricsPublic": True}).start()
    try:
        assert scrape(public.runtime.port, key=None).has("kiro_fast_build_info")
    finally:
        public.stop()


def test_without_prometheus_client_the_endpoint_says_so(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "AVAILABLE", False)
    status, _, body = request(port, "GET", "/metrics", headers={"x-api-key": ADMIN_KEY})
    assert status == 503
    assert "prometheus_client" in orjson.loads(body)["error"]["message"]


def test_every_documented_metric_is_exposed(port: int) -> None:
    got = scrape(port)
    # Labelled families without a sample yet still have HELP/TYPE lines.
    exposed = set(got.families) | {s.name for s in got.samples}
    for name in metrics.METRIC_NAMES:
        base = name.removesuffix("_total")
        assert name in exposed or base in exposed, name


# --------------------------------------------------------------------------- requests


def test_a_request_is_counted_by_endpoint_model_status_and_key(port: int) -> None:
    labels = {"endpoint": "/v1/messages", "model": KIRO_MODEL, "status": "200"}
    before = scrape(port)
    assert post(port, ask("hello"))[0] == 200
    after = scrape(port)
    name = "kiro_fast_requests_total"
    assert after.value(name, client_key="default", **labels) == (
        before.value(name, client_key="default", **labels) + 1
    )
    duration = "kiro_fast_request_duration_seconds_count"
    assert after.value(duration, endpoint="/v1/messages") == (
        before.value(duration, endpoint="/v1/messages") + 1
    )
    assert after.value("kiro_fast_upstream_attempts_total", status="200", reason="ok") == (
        before.value("kiro_fast_upstream_attempts_total", status="200", reason="ok") + 1
    )


def test_refused_and_unknown_requests_are_counted_without_a_key_or_a_path(port: int) -> None:
    before = scrape(port)
    assert post(port, ask("hello"), key="sk-not-the-key")[0] == 401
    assert request(port, "GET", "/no/such/secret/path")[0] == 404
    after = scrape(port)
    name = "kiro_fast_requests_total"
    refused = {"endpoint": "/v1/messages", "status": "401", "client_key": ""}
    assert after.value(name, **refused) == before.value(name, **refused) + 1
    unmatched = {"endpoint": "unmatched", "status": "404"}
    assert after.value(name, **unmatched) == before.value(name, **unmatched) + 1
    assert "/no/such/secret/path" not in after.text


def test_a_stream_observes_time_to_first_byte_and_duration(port: int) -> None:
    before = scrape(port)
    events = read_stream(port, ask("hi " + directive({"text": "streamed words"}), stream=True))
    assert events[-1][0] == "message_stop"
    post(port, ask("not streamed"))
    after = scrape(port)
    for name in (
        "kiro_fast_time_to_first_byte_seconds_count",
        "kiro_fast_stream_duration_seconds_count",
    ):
        assert after.value(name) == before.value(name) + 1, name
    ttfb = after.value("kiro_fast_time_to_first_byte_seconds_sum") - before.value(
        "kiro_fast_time_to_first_byte_seconds_sum"
    )
    total = after.value("kiro_fast_stream_duration_seconds_sum") - before.value(
        "kiro_fast_stream_duration_seconds_sum"
    )
    assert 0 < ttfb <= total


@pytest.mark.parametrize(
    ("error", "status", "reason", "action", "client_status"),
    [
        ("improperly_formed", "400", "bad_request", "fail", 400),
        ("capacity", "429", "capacity", "retry_same", 200),
        ("high_load", "500", "capacity", "retry_same", 200),
        ("unavailable", "503", "server", "retry_same", 200),
    ],
)
def test_upstream_errors_are_counted_by_status_and_reason(
    harness: Harness,
    port: int,
    error: str,
    status: str,
    reason: str,
    action: str,
    client_status: int,
) -> None:
    before = scrape(port)
    harness.call(lambda: harness.fake.enqueue(Scenario(error=error)))
    assert post(port, ask("once"))[0] == client_status
    after = scrape(port)
    name = "kiro_fast_upstream_attempts_total"
    assert after.value(name, status=status, reason=reason) == (
        before.value(name, status=status, reason=reason) + 1
    )
    decisions = "kiro_fast_failover_decisions_total"
    assert after.value(decisions, action=action) == before.value(decisions, action=action) + 1


def test_a_stall_mid_stream_is_counted(harness: Harness, port: int) -> None:
    before = scrape(port)
    spec = {"scenario": "stall", "after": 2, "text": "words that stop halfway through"}
    events = read_stream(port, ask("go " + directive(spec), stream=True))
    assert events[-1][0] == "error"
    after = scrape(port)
    assert after.value("kiro_fast_stream_stalls_total") == (
        before.value("kiro_fast_stream_stalls_total") + 1
    )
    assert after.value("kiro_fast_streams_broken_total") == (
        before.value("kiro_fast_streams_broken_total") + 1
    )
    assert after.value("kiro_fast_upstream_attempts_total", reason="timeout") == (
        before.value("kiro_fast_upstream_attempts_total", reason="timeout") + 1
    )
    harness.call(harness.fake.release)


def test_a_truncated_answer_is_counted(port: int) -> None:
    before = scrape(port)
    spec = {"scenario": "truncate", "name": "Write", "input": {"content": "y" * 400}}
    assert post(port, ask("write " + directive(spec)))[0] == 200
    after = scrape(port)
    assert after.value("kiro_fast_truncated_responses_total") == (
        before.value("kiro_fast_truncated_responses_total") + 1
    )
    events = "kiro_fast_truncation_events_total"
    assert after.value(events, event="responses") == before.value(events, event="responses") + 1


def test_a_normaliser_rule_hit_is_counted(port: int) -> None:
    rule = "INSERTED_SYNTHETIC_ASSISTANT"  # kiro-api.md §4.6: an empty assistant between users
    before = scrape(port)
    payload = ask("first")
    payload["messages"].append({"role": "user", "content": "second"})
    assert post(port, payload)[0] == 200
    after = scrape(port)
    name = "kiro_fast_normalizer_rule_hits_total"
    assert after.value(name, rule=rule) == before.value(name, rule=rule) + 1


# --------------------------------------------------------------------------- pool


def test_refresh_outcomes_ok_and_permanent() -> None:
    def rejected(fake: FakeUpstream) -> list[Credential]:
        creds = default_credentials(fake)
        fake.accounts.fail_refresh("invalid_grant")
        return creds

    fine = start_harness()
    try:
        before = scrape(fine.runtime.port)
        assert post(fine.runtime.port, ask("first call refreshes"))[0] == 200
        after = scrape(fine.runtime.port)
        name = "kiro_fast_token_refreshes_total"
        assert after.value(name, outcome="ok") == before.value(name, outcome="ok") + 1
    finally:
        fine.stop()
    dead = start_harness(credentials=rejected)
    try:
        before = scrape(dead.runtime.port)
        assert post(dead.runtime.port, ask("refresh is refused"))[0] >= 500
        after = scrape(dead.runtime.port)
        name = "kiro_fast_token_refreshes_total"
        assert after.value(name, outcome="permanent") == before.value(name, outcome="permanent") + 1
        assert after.value(name, outcome="ok") == before.value(name, outcome="ok")
        assert after.value("kiro_fast_credentials", state="disabled") == 1
        assert after.value("kiro_fast_credentials", state="available") == 0
        disabled = {"credential": "1", "reason": "InvalidRefreshToken"}
        assert after.value("kiro_fast_credential_disabled", **disabled) == 1
    finally:
        dead.stop()


def test_pool_gauges_show_cool_downs_and_quota() -> None:
    running = start_harness(credentials=two_credentials)
    port = running.runtime.port
    try:
        first = scrape(port)
        assert first.value("kiro_fast_credentials", state="available") == 2
        assert first.value("kiro_fast_credential_available", credential="1") == 1
        running.call(lambda: running.fake.enqueue(Scenario(error="monthly_limit")))
        assert post(port, ask("account one is out of credits"))[0] == 200
        running.call(running.runtime.pool.refresh_usage())
        now = time.time()
        after = scrape(port)
        assert after.value("kiro_fast_credentials", state="available") == 1
        assert after.value("kiro_fast_credentials", state="cooling") == 1
        assert after.value("kiro_fast_credential_available", credential="1") == 0
        assert after.value("kiro_fast_credential_available", credential="2") == 1
        cooling = after.value(
            "kiro_fast_credential_cooldown_seconds", credential="1", reason="QuotaExceeded"
        )
        assert cooling > 0
        # The fake's default account: 2000 credits, none used, reset next month.
        assert after.value("kiro_fast_credential_quota_limit", credential="2") == 2000
        assert after.value("kiro_fast_credential_quota_used", credential="2") == 0
        assert after.value("kiro_fast_credential_quota_remaining", credential="2") == 2000
        reset = after.value("kiro_fast_credential_quota_reset_timestamp_seconds", credential="2")
        assert now < reset <= now + 32 * 86400
    finally:
        running.stop()


def held_stream(port: int) -> SSEReader:
    spec = {"scenario": "stall", "after": 2, "text": "a stream that holds its account"}
    reader = SSEReader(
        port,
        "/v1/messages",
        orjson.dumps(ask("hold " + directive(spec), stream=True)),
        {"x-api-key": API_KEY, "content-type": "application/json"},
    )
    assert reader.status == 200
    reader.until("content_block_delta")
    return reader


def test_queue_wait_and_the_queued_gauge() -> None:
    config = {"maxConcurrentPerCredential": 1, "queueTimeout": 20, "streamIdleTimeout": 30}
    running = start_harness(config)
    port = running.runtime.port
    try:
        before = scrape(port)
        holder = held_stream(port)
        outcome: list[int] = []
        waiter = threading.Thread(target=lambda: outcome.append(post(port, ask("queued"))[0]))
        waiter.start()
        wait_until(lambda: scrape(port).value("kiro_fast_pool_queued") == 1, what="one queued")
        running.call(running.fake.release)
        waiter.join(20)
        assert outcome == [200]
        holder.close()
        after = scrape(port)
        assert after.value("kiro_fast_pool_queued") == 0
        name = "kiro_fast_pool_queue_wait_seconds_count"
        assert after.value(name, outcome="acquired") == before.value(name, outcome="acquired") + 1
    finally:
        running.stop()


def test_a_queue_timeout_is_a_429_and_counted() -> None:
    config = {"maxConcurrentPerCredential": 1, "queueTimeout": 0.2, "streamIdleTimeout": 30}
    running = start_harness(config)
    port = running.runtime.port
    try:
        before = scrape(port)
        holder = held_stream(port)
        status, head = post(port, ask("no room"))
        assert status == 429
        assert float(head["retry-after"]) > 0
        running.call(running.fake.release)
        holder.close()
        after = scrape(port)
        name = "kiro_fast_pool_queue_wait_seconds_count"
        assert after.value(name, outcome="timeout") == before.value(name, outcome="timeout") + 1
    finally:
        running.stop()


# --------------------------------------------------------------------------- hygiene


def test_label_values_never_carry_a_secret(harness: Harness, port: int) -> None:
    wrong_key = "sk-ant-presented-but-wrong-" + "x" * 20
    post(port, ask("hello"))
    post(port, ask("hello"), key=wrong_key)
    read_stream(port, ask("stream", stream=True))
    text = scrape(port).text
    pool = harness.runtime.pool
    secrets = [API_KEY, ADMIN_KEY, wrong_key, REFRESH_TOKEN]
    secrets += [c.access_token for c in pool.credentials if c.access_token]
    secrets += [c.refresh_token for c in pool.credentials if c.refresh_token]
    assert len(secrets) >= 5
    for secret in secrets:
        assert secret not in text
        assert secret[:16] not in text


def test_no_metric_call_per_upstream_event(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The number of metric updates of one stream does not grow with its events."""
    calls = 0
    real = metrics.Family.child

    def counting(self: metrics.Family, *values: str) -> Any:
        nonlocal calls
        calls += 1
        return real(self, *values)

    monkeypatch.setattr(metrics.Family, "child", counting)

    def updates_for(words: int) -> tuple[int, int]:
        nonlocal calls
        calls = 0
        text = " ".join(["word"] * words)
        events = read_stream(port, ask(directive({"text": text}), stream=True))
        return calls, sum(1 for name, _ in events if name == "content_block_delta")

    updates_for(1)  # the first request of a process may also refresh the token
    (short, few), (long, many) = updates_for(2), updates_for(2000)
    assert many >= 10 * few
    assert long == short


# --------------------------------------------------------------------------- workers


def test_two_workers_one_scrape_shows_the_sum(tmp_path: Path) -> None:
    fake = FakeThread().start()
    add_default_account(fake)
    config, credentials = write_files(
        tmp_path, fake.url, api_key=API_KEY, extra={"adminApiKey": ADMIN_KEY}
    )
    process = KiroProcess(
        [
            "serve",
            "--log-format",
            "json",
            "-c",
            str(config),
            "--credentials",
            str(credentials),
            "--workers",
            "2",
        ],
        cwd=tmp_path,
    )
    try:
        (ready,) = process.wait_record(lambda r: r["msg"].startswith("supervisor ready"))
        port = ready["port"]
        process.wait_record(
            lambda r: r["msg"].startswith("worker ") and "ready" in r["msg"], count=2
        )
        served: set[int] = set()
        sent = 0
        # SO_REUSEPORT spreads connections by hash: both workers serve long before 200 tries.
        while len(served) < 2 and sent < 200:
            status, head, _ = request(
                port,
                "POST",
                "/v1/messages",
                messages_body("hi"),
                {"x-api-key": API_KEY, "content-type": "application/json"},
            )
            assert status == 200
            sent += 1
            request_id = head["x-request-id"]
            (record,) = process.wait_record(
                lambda r, rid=request_id: (
                    r.get("logger") == "kiro_fast.access" and r.get("request_id") == rid
                )
            )
            served.add(record["worker_pid"])
        assert len(served) == 2
        labels = {"endpoint": "/v1/messages", "status": "200"}
        for _ in range(4):  # whichever worker answers, the scrape is the sum of both
            got = scrape(port)
            assert got.value("kiro_fast_requests_total", **labels) == sent
            assert got.value("kiro_fast_upstream_attempts_total", reason="ok") == sent
    finally:
        process.stop()
        fake.stop()
