"""Client API keys (kiro-auth.md §12): several keys beside the configured ``apiKey``, each
with optional requests-per-minute and tokens-per-day limits and a model allow-list, and
usage statistics per credential, model and key through ``/api/admin/usage``.

Limits answer 429 ``rate_limit_error`` with ``retry-after`` in the shape of the API the
request used; a model outside a key's allow-list answers 403 ``permission_error``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from admin_helpers import Admin, Http, eventually
from e2e_harness import API_KEY, Harness

ADMIN_KEY = "sk-admin-" + "c" * 24


@pytest.fixture
def harness() -> Iterator[Harness]:
    with Harness(config={"adminApiKey": ADMIN_KEY}) as running:
        yield running


@pytest.fixture
def http(harness: Harness) -> Http:
    return Http(harness.url)


@pytest.fixture
def admin(http: Http) -> Admin:
    return Admin(http, ADMIN_KEY)


def new_key(admin: Admin, name: str, **limits: Any) -> tuple[str, int]:
    created = admin.ok("POST", "/client-keys", {"name": name, **limits}, status=201)
    return created["key"], created["clientKey"]["id"]


def assert_anthropic_error(answer: Any, status: int, error_type: str) -> None:
    assert answer.status == status, answer.body[:300]
    body = answer.json
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def assert_openai_error(answer: Any, status: int, error_type: str) -> None:
    assert answer.status == status, answer.body[:300]
    error = answer.json["error"]
    assert "type" not in answer.json and error["type"] == error_type
    assert set(error) == {"message", "type", "param", "code"}


def test_several_keys_and_the_configured_key_all_work(admin: Admin, http: Http) -> None:
    first, _ = new_key(admin, "alice")
    second, second_id = new_key(admin, "bob")
    for key in (first, second, API_KEY):
        assert http.chat(key).status == 200
        assert http.openai_chat(key).status == 200
        listed = http.request("GET", "/v1/models", headers={"x-api-key": key})
        assert listed.status == 200
    assert_anthropic_error(http.chat("sk-kf-not-a-key"), 401, "authentication_error")
    admin.ok("PUT", f"/client-keys/{second_id}", {"enabled": False})
    assert_anthropic_error(http.chat(second), 401, "authentication_error")
    assert_openai_error(http.openai_chat(second), 401, "authentication_error")
    admin.ok("DELETE", f"/client-keys/{second_id}")
    assert_anthropic_error(http.chat(second), 401, "authentication_error")
    assert http.chat(first).status == 200


def test_requests_per_minute_limit_answers_429_in_each_apis_shape(admin: Admin, http: Http) -> None:
    anthropic_key, _ = new_key(admin, "rpm-2", rpmLimit=2)
    assert [http.chat(anthropic_key).status for _ in range(2)] == [200, 200]
    limited = http.chat(anthropic_key)
    assert_anthropic_error(limited, 429, "rate_limit_error")
    assert "2 requests per minute" in limited.json["error"]["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60

    openai_key, _ = new_key(admin, "rpm-1", rpmLimit=1)
    assert http.openai_chat(openai_key).status == 200
    limited = http.openai_chat(openai_key)
    assert_openai_error(limited, 429, "rate_limit_error")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # Other keys and the configured key are not affected.
    assert http.chat(API_KEY).status == 200
    assert http.openai_chat(API_KEY).status == 200


def test_tokens_per_day_limit_answers_429_until_midnight_utc(admin: Admin, http: Http) -> None:
    key, key_id = new_key(admin, "tpd", tpdLimit=100)
    assert http.chat(key).status == 200  # one answer already costs more than 100 tokens

    def counted() -> bool:
        keys = admin.ok("GET", "/client-keys")["keys"]
        return next(k for k in keys if k["id"] == key_id)["tokensToday"] > 100

    eventually(counted)
    limited = http.chat(key)
    assert_anthropic_error(limited, 429, "rate_limit_error")
    assert "100 tokens" in limited.json["error"]["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 86400
    assert_openai_error(http.openai_chat(key), 429, "rate_limit_error")


def test_model_allow_list_answers_403(admin: Admin, http: Http) -> None:
    key, _ = new_key(admin, "haiku-only", models=["claude-haiku-*"])
    refused = http.chat(key, model="claude-sonnet-4-6")
    assert_anthropic_error(refused, 403, "permission_error")
    assert "claude-sonnet-4-6" in refused.json["error"]["message"]
    assert_openai_error(http.openai_chat(key, model="gpt-4o"), 403, "permission_error")
    assert http.chat(key, model="claude-haiku-4-5").status == 200
    # Patterns also match the Kiro model a name maps to.
    by_kiro_id, _ = new_key(admin, "sonnet-4.6", models=["claude-sonnet-4.6"])
    assert http.chat(by_kiro_id, model="claude-sonnet-4-6-20260101").status == 200
    assert http.chat(by_kiro_id, model="claude-sonnet-4-5").status == 403


def test_models_list_shows_only_what_the_key_may_use(admin: Admin, http: Http) -> None:
    def listed(key: str) -> list[str]:
        response = http.request("GET", "/v1/models", headers={"x-api-key": key})
        assert response.status == 200
        return [m["id"] for m in response.json["data"]]

    everything = listed(API_KEY)
    unrestricted, _ = new_key(admin, "any-model")
    assert listed(unrestricted) == everything
    haiku, _ = new_key(admin, "haiku-list", models=["claude-haiku-*"])
    shown = listed(haiku)
    assert shown and all(name.startswith("claude-haiku-") for name in shown)
    assert shown == [name for name in everything if name.startswith("claude-haiku-")]
    # A pattern on the Kiro id lists every client name that maps to it.
    sonnet, _ = new_key(admin, "sonnet-4.6-list", models=["claude-sonnet-4.6"])
    assert set(listed(sonnet)) == {"claude-sonnet-4-6", "claude-sonnet-4-6-thinking"}
    for name in listed(sonnet):
        assert http.chat(sonnet, model=name).status == 200


def test_usage_statistics_by_key_model_and_credential(admin: Admin, http: Http) -> None:
    key, key_id = new_key(admin, "stats", rpmLimit=2)
    assert http.chat(key).status == 200
    assert http.openai_chat(key, model="claude-haiku-4-5").status == 200
    assert http.chat(key).status == 429  # counted as an error of this key
    assert http.chat(API_KEY).status == 200

    def totals(group: str) -> dict[Any, dict[str, Any]]:
        answer = admin.ok("GET", f"/usage?window=1h&group_by={group}")
        return {row[answer["groupField"]]: row for row in answer["totals"]}

    eventually(lambda: sum(r["requests"] for r in totals("client_key").values()) == 4)
    by_key = totals("client_key")
    assert by_key[key_id]["requests"] == 3 and by_key[key_id]["errors"] == 1
    assert by_key[None]["requests"] == 1 and by_key[None]["errors"] == 0
    assert by_key[key_id]["input_tokens"] > 0 and by_key[key_id]["output_tokens"] > 0
    by_model = totals("model")
    assert by_model["claude-sonnet-4.6"]["requests"] == 2
    assert by_model["claude-haiku-4.5"]["requests"] == 1
    by_credential = totals("credential")
    assert by_credential[1]["requests"] == 3 and by_credential[None]["requests"] == 1
    series = admin.ok("GET", "/usage?window=1h&group_by=credential")
    assert series["bucket"] == 60
    assert sum(r["requests"] for r in series["series"]) == 4
    assert series["overall"]["requests"] == 4 and series["overall"]["streams"] == 0
    assert admin.ok("GET", "/credentials")["credentials"][0]["successCount"] == 3
