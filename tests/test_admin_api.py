"""The admin API: kiro.rs's endpoints and shapes (kiro-auth.md §10.1), the SQLite variant's
login (§10.2), disable-before-delete (§10.6), imports (§2.8), and secrets never shown.

Every test runs a real kiro_fast against the fake upstream and talks HTTP to it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_helpers import Admin, Http, eventually, jwt_decode, jwt_encode
from e2e_harness import API_KEY, REFRESH_TOKEN, Harness

from kiro_fast.credentials import Credential
from kiro_fast.sources import KiroRsFile
from kiro_fast.testing import FakeUpstream

ADMIN_KEY = "sk-admin-" + "k" * 24
ADMIN_USER = "root"
ADMIN_PASSWORD = "correct horse battery"
JWT_SECRET = "jwt-secret-for-tests-" + "s" * 20
IDC_REFRESH = "aorIdc" + "i" * 120
IDC_CLIENT_ID = "oMp7qfW2oH1OgDwZNKJHdnVzLWVhc3QtMQ"
IDC_CLIENT_SECRET = "eyJraWQiOiJrZXktMTU" + "c" * 80
API_KEY_CRED = "ksk_" + "a" * 40
PROXY_PASSWORD = "proxy-pass-" + "p" * 20
COUNT_TOKENS_KEY = "ct-key-" + "x" * 30

ADMIN_CONFIG = {
    "adminApiKey": ADMIN_KEY,
    "adminUsername": ADMIN_USER,
    "adminPassword": ADMIN_PASSWORD,
    "jwtSecret": JWT_SECRET,
    "jwtExpiryHours": 12,
    "countTokensApiKey": COUNT_TOKENS_KEY,
}


def planted_credentials(fake: FakeUpstream) -> list[Credential]:
    """A social login, an IdC login with a proxy password, and an API key."""
    fake.accounts.add_social(REFRESH_TOKEN)
    fake.accounts.add_idc(IDC_REFRESH, IDC_CLIENT_ID, IDC_CLIENT_SECRET)
    fake.accounts.add_api_key(API_KEY_CRED)
    return [
        Credential(id=1, auth_method="social", refresh_token=REFRESH_TOKEN),
        Credential(
            id=2,
            auth_method="idc",
            refresh_token=IDC_REFRESH,
            client_id=IDC_CLIENT_ID,
            client_secret=IDC_CLIENT_SECRET,
            priority=1,
            proxy_url="direct",
            proxy_username="user",
            proxy_password=PROXY_PASSWORD,
        ),
        Credential(id=3, auth_method="api_key", kiro_api_key=API_KEY_CRED, priority=2),
    ]


@pytest.fixture
def harness() -> Iterator[Harness]:
    with Harness(config=ADMIN_CONFIG, credentials=planted_credentials) as running:
        yield running


@pytest.fixture
def http(harness: Harness) -> Iterator[Http]:
    client = Http(harness.url)
    yield client
    # Whatever a test did, no admin answer carried a planted secret.
    secrets = [
        REFRESH_TOKEN,
        IDC_REFRESH,
        IDC_CLIENT_SECRET,
        API_KEY_CRED,
        PROXY_PASSWORD,
        COUNT_TOKENS_KEY,
        ADMIN_KEY,
        ADMIN_PASSWORD,
        JWT_SECRET,
        *(a.access_token for a in harness.fake.accounts.accounts if a.access_token),
        *(a.refresh_token for a in harness.fake.accounts.accounts if a.refresh_token),
    ]
    for body in client.bodies:
        text = body.decode("utf-8", "replace")
        for secret in secrets:
            assert secret not in text, f"a secret leaked into an answer: {text[:200]}"


@pytest.fixture
def admin(http: Http) -> Admin:
    return Admin(http, ADMIN_KEY)


ROUTES = [
    ("GET", "/me"),
    ("GET", "/status"),
    ("GET", "/credentials"),
    ("POST", "/credentials"),
    ("POST", "/credentials/import"),
    ("POST", "/credentials/verify"),
    ("DELETE", "/credentials/1"),
    ("POST", "/credentials/1/disabled"),
    ("POST", "/credentials/1/priority"),
    ("POST", "/credentials/1/reset"),
    ("POST", "/credentials/1/refresh"),
    ("POST", "/credentials/1/verify"),
    ("GET", "/credentials/1/balance"),
    ("GET", "/config/load-balancing"),
    ("PUT", "/config/load-balancing"),
    ("GET", "/settings"),
    ("PUT", "/settings"),
    ("GET", "/client-keys"),
    ("POST", "/client-keys"),
    ("PUT", "/client-keys/1"),
    ("DELETE", "/client-keys/1"),
    ("GET", "/usage"),
    ("POST", "/auth/builder-id/start"),
    ("POST", "/auth/idc/start"),
    ("POST", "/auth/device/poll"),
    ("POST", "/change-password"),
]


# --------------------------------------------------------------------------- authentication


def test_every_route_wants_the_admin_key_never_the_client_key(harness: Harness, http: Http) -> None:
    refused = {
        "error": {"type": "authentication_error", "message": "Invalid or missing admin API key"}
    }
    for presented in ({}, {"x-api-key": API_KEY}, {"authorization": f"Bearer {API_KEY}"},
                      {"x-api-key": ADMIN_KEY + "x"}):  # fmt: skip
        for method, path in ROUTES:
            answer = http.request(method, "/api/admin" + path, {}, presented)
            assert answer.status == 401, (method, path, presented)
            assert answer.json == refused
    assert harness.fake.accounts.refresh_count == 0  # nothing ran behind the refusals


def test_admin_key_by_x_api_key_or_bearer(http: Http) -> None:
    for admin in (Admin(http, ADMIN_KEY), Admin(http, ADMIN_KEY, bearer=True)):
        assert admin.ok("GET", "/me") == {"username": "admin", "method": "key"}


def test_password_login_yields_an_expiring_hs256_token(http: Http) -> None:
    before = time.time()
    answer = http.request(
        "POST", "/api/admin/login", {"username": ADMIN_USER, "password": ADMIN_PASSWORD}
    )
    assert answer.status == 200
    body = answer.json
    assert body["success"] is True and body["username"] == ADMIN_USER
    claims = jwt_decode(body["token"], JWT_SECRET)
    assert claims["sub"] == ADMIN_USER
    assert claims["exp"] - claims["iat"] == 12 * 3600
    assert before - 1 <= claims["iat"] <= time.time() + 1
    assert body["expiresAt"] == claims["exp"]
    for admin in (Admin(http, body["token"]), Admin(http, body["token"], bearer=True)):
        assert admin.ok("GET", "/me") == {"username": ADMIN_USER, "method": "password"}
        assert admin.ok("GET", "/credentials")["total"] == 3


def test_expired_tampered_and_foreign_tokens_are_refused(http: Http) -> None:
    token = http.request(
        "POST", "/api/admin/login", {"username": ADMIN_USER, "password": ADMIN_PASSWORD}
    ).json["token"]
    claims = jwt_decode(token, JWT_SECRET)
    now = int(time.time())
    expired = jwt_encode({**claims, "iat": now - 7200, "exp": now - 1}, JWT_SECRET)
    foreign = jwt_encode({**claims, "exp": now + 3600}, "another-secret")
    head, payload, signature = token.split(".")
    tampered = f"{head}.{jwt_encode({**claims, 'sub': 'admin'}, 'x').split('.')[1]}.{signature}"
    unsigned = jwt_encode({**claims}, JWT_SECRET).rsplit(".", 1)[0] + "."
    for bad in (expired, foreign, tampered, unsigned, API_KEY):
        answer = Admin(http, bad).get("/me")
        assert answer.status == 401
        assert answer.json["error"]["type"] == "authentication_error"
    assert Admin(http, token).get("/me").status == 200


def test_changing_the_password_ends_earlier_tokens(http: Http) -> None:
    old = http.request(
        "POST", "/api/admin/login", {"username": ADMIN_USER, "password": ADMIN_PASSWORD}
    ).json["token"]
    admin = Admin(http, old)
    wrong = admin.post("/change-password", {"oldPassword": "nope", "newPassword": "n" * 12})
    assert wrong.status == 401
    admin.ok("POST", "/change-password", {"oldPassword": ADMIN_PASSWORD, "newPassword": "n" * 12})
    assert admin.get("/me").status == 401
    fresh = http.request("POST", "/api/admin/login", {"username": ADMIN_USER, "password": "n" * 12})
    assert fresh.status == 200 and Admin(http, fresh.json["token"]).get("/me").status == 200


def test_wrong_password_and_unknown_user_answer_alike(http: Http) -> None:
    first = http.request("POST", "/api/admin/login", {"username": ADMIN_USER, "password": "bad"})
    second = http.request("POST", "/api/admin/login", {"username": "nobody", "password": "bad"})
    assert first.status == second.status == 401
    assert first.json == second.json
    assert first.json["error"]["type"] == "authentication_error"


def test_login_attempts_are_rate_limited_per_address(http: Http) -> None:
    statuses = [
        http.request("POST", "/api/admin/login", {"username": ADMIN_USER, "password": "bad"}).status
        for _ in range(5)
    ]
    assert statuses == [401] * 5
    blocked = http.request(
        "POST", "/api/admin/login", {"username": ADMIN_USER, "password": ADMIN_PASSWORD}
    )
    assert blocked.status == 429
    assert blocked.json["error"]["type"] == "rate_limit_error"
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    # The admin key is not a login: it still works.
    assert Admin(http, ADMIN_KEY).get("/me").status == 200


def test_without_admin_key_or_user_the_admin_api_is_off() -> None:
    with Harness() as harness:
        http = Http(harness.url)
        answer = Admin(http, API_KEY).get("/credentials")
        assert answer.status == 403
        assert answer.json["error"]["type"] == "permission_error"
        assert "adminApiKey" in answer.json["error"]["message"]
        login = http.request("POST", "/api/admin/login", {"username": "admin", "password": "x"})
        assert login.status == 401


# --------------------------------------------------------------------------- credentials


def test_credential_list_has_kiro_rs_shape(admin: Admin) -> None:
    listing = admin.ok("GET", "/credentials")
    assert listing["total"] == 3 and listing["available"] == 3
    assert [c["id"] for c in listing["credentials"]] == [1, 2, 3]  # by priority
    social, idc, key = listing["credentials"]
    expected_keys = {
        "id", "priority", "disabled", "failureCount", "isCurrent", "expiresAt", "authMethod",
        "hasProfileArn", "refreshTokenHash", "apiKeyHash", "maskedApiKey", "email",
        "successCount", "lastUsedAt", "hasProxy", "refreshFailureCount", "endpoint",
    }  # fmt: skip
    for entry in listing["credentials"]:
        assert expected_keys <= set(entry)
        assert "disabledReason" not in entry  # omitted when null (kiro.rs)
    assert social["refreshTokenHash"] == hashlib.sha256(REFRESH_TOKEN.encode()).hexdigest()
    assert social["authMethod"] == "social" and social["endpoint"] == "ide"
    assert idc["authMethod"] == "idc" and idc["hasProxy"] is True and idc["proxyUrl"] == "direct"
    assert key["authMethod"] == "api_key" and key["expiresAt"] is None
    assert key["apiKeyHash"] == hashlib.sha256(API_KEY_CRED.encode()).hexdigest()
    assert key["maskedApiKey"] == API_KEY_CRED[:4] + "..." + API_KEY_CRED[-4:]
    assert key["refreshTokenHash"] is None


def test_add_a_credential_proves_it_then_serves_with_it(harness: Harness, admin: Admin) -> None:
    new_token = "aorAdded" + "n" * 120
    account = harness.call(lambda: harness.fake.accounts.add_social(new_token))
    refreshes = harness.fake.accounts.refresh_count
    answer = admin.ok(
        "POST", "/credentials", {"refreshToken": new_token, "authMethod": "social", "priority": 0}
    )
    assert answer["success"] is True and answer["credentialId"] == 4
    assert answer["email"] == account.usage.email
    assert harness.fake.accounts.refresh_count == refreshes + 1  # proven by one refresh
    listed = admin.credentials()[4]
    assert listed["authMethod"] == "social" and listed["disabled"] is False
    assert listed["subscriptionTitle"] == "KIRO PRO+"
    # Only the new one is enabled: the next chat goes through it.
    for cred_id in (1, 2, 3):
        admin.ok("POST", f"/credentials/{cred_id}/disabled", {"disabled": True})
    assert admin.http.chat(API_KEY).status == 200
    sent = harness.fake.requests[-1].headers["authorization"]
    assert sent == f"Bearer {account.access_token}"
    eventually(lambda: admin.credentials()[4]["successCount"] == 1)
    assert admin.credentials()[4]["lastUsedAt"] is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"refreshToken": REFRESH_TOKEN}, "already exists as #1"),
        ({"kiroApiKey": API_KEY_CRED, "authMethod": "api_key"}, "already exists as #3"),
        ({"refreshToken": "aorUnknown" + "u" * 120}, "rejected"),
        ({"authMethod": "idc", "refreshToken": "aorX" + "x" * 120}, "clientId"),
        ({"authMethod": "carrier-pigeon", "refreshToken": "aor"}, "authMethod"),
        ({"refreshToken": "aor...truncated"}, "truncated"),
        ({"refreshToken": "aor" + "v" * 120, "endpoint": "cli"}, "endpoint"),
    ],
)
def test_add_refuses_bad_entries(admin: Admin, body: dict[str, Any], message: str) -> None:
    answer = admin.post("/credentials", body)
    assert answer.status == 400
    assert answer.json["error"]["type"] == "invalid_request"
    assert message in answer.json["error"]["message"]
    assert set(admin.credentials()) == {1, 2, 3}


def test_an_api_key_is_added_without_a_network_check(harness: Harness, admin: Admin) -> None:
    refreshes = harness.fake.accounts.refresh_count
    key = "ksk_" + "z" * 40
    answer = admin.ok("POST", "/credentials", {"kiroApiKey": key, "authMethod": "api_key"})
    assert harness.fake.accounts.refresh_count == refreshes
    assert admin.credentials()[answer["credentialId"]]["maskedApiKey"] == "ksk_...zzzz"


def test_delete_only_when_disabled(harness: Harness, admin: Admin) -> None:
    answer = admin.delete("/credentials/2")
    assert answer.status == 400
    assert answer.json["error"]["type"] == "invalid_request"
    assert "disabled" in answer.json["error"]["message"]
    assert admin.delete("/credentials/99").status == 404
    assert admin.delete("/credentials/abc").status == 404
    admin.ok("POST", "/credentials/2/disabled", {"disabled": True})
    listed = admin.credentials()[2]
    assert listed["disabled"] is True and listed["disabledReason"] == "Manual"
    assert admin.ok("DELETE", "/credentials/2")["success"] is True
    assert set(admin.credentials()) == {1, 3}
    assert harness.call(lambda: harness.runtime.pool.get(2)) is None


def test_disable_enable_priority_and_reset_steer_the_pool(harness: Harness, admin: Admin) -> None:
    admin.ok("POST", "/credentials/1/disabled", {"disabled": True})
    assert admin.http.chat(API_KEY).status == 200
    idc_account = harness.fake.accounts.accounts[1]
    assert (
        harness.fake.requests[-1].headers["authorization"] == f"Bearer {idc_account.access_token}"
    )
    admin.ok("POST", "/credentials/1/disabled", {"disabled": False})
    admin.ok("POST", "/credentials/1/priority", {"priority": 5})
    assert [c for c in admin.credentials()] == [2, 3, 1]
    assert admin.http.chat(API_KEY).status == 200
    assert (
        harness.fake.requests[-1].headers["authorization"] == f"Bearer {idc_account.access_token}"
    )
    bad = admin.post("/credentials/1/priority", {"priority": -1})
    assert bad.status == 400
    bad = admin.post("/credentials/1/disabled", {"disabled": "yes"})
    assert bad.status == 400
    pool = harness.runtime.pool
    harness.call(pool.cool_down(pool.get(3), 600, "x"))
    assert admin.credentials()[3]["cooldown"]["reason"] == "x"
    admin.ok("POST", "/credentials/3/reset")
    assert admin.credentials()[3]["cooldown"] is None


def test_refresh_balance_and_verify(harness: Harness, admin: Admin) -> None:
    before = harness.fake.accounts.refresh_count
    assert admin.ok("POST", "/credentials/1/refresh")["success"] is True
    assert harness.fake.accounts.refresh_count == before + 1
    assert admin.ok("POST", "/credentials/1/refresh")["success"] is True
    assert harness.fake.accounts.refresh_count == before + 2  # unconditional
    assert admin.post("/credentials/3/refresh").status == 400  # API keys have none
    balance = admin.ok("GET", "/credentials/1/balance")
    assert balance["id"] == 1 and balance["subscriptionTitle"] == "KIRO PRO+"
    assert balance["usageLimit"] == 2000.0 and balance["remaining"] == 2000.0
    assert balance["currentUsage"] == 0.0 and balance["usagePercentage"] == 0.0
    assert isinstance(balance["nextResetAt"], float)
    verified = admin.ok("POST", "/credentials/2/verify")
    assert verified["success"] is True and verified["balance"]["remaining"] == 2000.0
    harness.call(
        lambda: harness.fake.accounts.revoke_refresh_token(harness.fake.accounts.accounts[0])
    )
    harness.call(lambda: harness.fake.accounts.expire_access_tokens())
    failed = admin.ok("POST", "/credentials/verify", {"ids": [1, 3]})["results"]
    assert [r["id"] for r in failed] == [1, 3]
    assert failed[0]["success"] is False and failed[1]["success"] is True
    assert admin.credentials()[1]["disabledReason"] == "InvalidRefreshToken"
    assert admin.get("/credentials/77/balance").status == 404


# --------------------------------------------------------------------------- import


def test_import_formats(harness: Harness, admin: Admin) -> None:
    tokens = [f"aorImport{i}" + "t" * 120 for i in range(5)]

    def setup() -> list[Any]:
        return [
            harness.fake.accounts.add_social(tokens[0]),
            harness.fake.accounts.add_idc(tokens[1], "clientImport1", "secretImport1" + "s" * 40),
            harness.fake.accounts.add_social(tokens[2]),
            harness.fake.accounts.add_idc(tokens[3], "clientImport3", "secretImport3" + "s" * 40),
            harness.fake.accounts.add_social(tokens[4]),
        ]

    accounts = harness.call(setup)
    plain = [{"refreshToken": tokens[0]}, {"refreshToken": "aor...cut"}]
    answer = admin.ok("POST", "/credentials/import", plain)
    assert answer["imported"] == 1 and answer["success"] is False
    assert answer["failures"][0]["index"] == 1 and "truncated" in answer["failures"][0]["error"]
    kam = {
        "version": "1.8.3",
        "exportedAt": 1760000000000,
        "accounts": [
            {
                "id": "5f0e…",
                "email": "kam@example.com",
                "credentials": {
                    "refreshToken": tokens[1],
                    "clientId": "clientImport1",
                    "clientSecret": "secretImport1" + "s" * 40,
                    "region": "us-east-1",
                    "authMethod": "IdC",
                    "expiresAt": 1760000000000,
                },
                "status": "active",
            },
            {"id": "x", "refreshToken": tokens[2], "label": "flat variant", "status": "active"},
            {"id": "y", "refreshToken": "aorBroken" + "b" * 100, "status": "error"},
        ],
    }
    answer = admin.ok("POST", "/credentials/import", kam)
    assert answer["imported"] == 2 and answer["skipped"][0]["index"] == 2
    ide = {
        "accessToken": "aoaIde",
        "refreshToken": tokens[3],
        "expiresAt": "2025-10-08T17:12:56.785Z",
        "clientIdHash": "e909a0580879b06ece1202964fbe9dda95ea4ce3",
        "authMethod": "IdC",
        "provider": "BuilderId",
        "region": "us-east-1",
        "clientId": "clientImport3",
        "clientSecret": "secretImport3" + "s" * 40,
    }
    assert admin.ok("POST", "/credentials/import", ide)["imported"] == 1
    kiro_go = {"refreshToken": tokens[4], "provider": "Github"}
    answer = admin.ok("POST", "/credentials/import?verify=false", [kiro_go])
    assert answer["imported"] == 1
    listed = admin.credentials()
    by_hash = {c["refreshTokenHash"]: c for c in listed.values()}
    # The proving refresh rotated the tokens: the list shows the hash of the current one.
    current = [hashlib.sha256(a.refresh_token.encode()).hexdigest() for a in accounts]
    kinds = [by_hash[digest]["authMethod"] for digest in current]
    assert kinds == ["social", "idc", "social", "idc", "social"]
    assert accounts[4].refresh_token == tokens[4]  # verify=false: never refreshed
    kam_entry = by_hash[current[1]]
    assert kam_entry["email"] == "kam@example.com"
    assert admin.post("/credentials/import").status == 400  # no document at all


def test_import_refuses_what_is_not_an_import(admin: Admin) -> None:
    answer = admin.http.request(
        "POST",
        "/api/admin/credentials/import",
        headers={"x-api-key": ADMIN_KEY, "content-type": "application/json"},
        raw=b"42",
    )
    assert answer.status == 400 and answer.json["error"]["type"] == "invalid_request"


# --------------------------------------------------------------------------- settings


def test_settings_are_shown_masked_and_validated(admin: Admin) -> None:
    view = admin.ok("GET", "/settings")
    settings = view["settings"]
    assert settings["countTokensApiKey"] == COUNT_TOKENS_KEY[:4] + "..." + COUNT_TOKENS_KEY[-4:]
    assert settings["loadBalancingMode"] == "priority" and view["restart_required"] == []
    assert "kiroVersion" in view["editable"] and view["overridden"] == []
    changed = admin.ok("PUT", "/settings", {"kiroVersion": "0.12.0", "firstByteTimeout": 9})
    assert changed["settings"]["kiroVersion"] == "0.12.0"
    assert changed["settings"]["firstByteTimeout"] == 9.0
    assert changed["overridden"] == ["firstByteTimeout", "kiroVersion"]
    for bad in ({"apiKey": "x"}, {"firstByteTimeout": -1}, {"loadBalancingMode": "random"},
                {"proxyUrl": "ftp://x"}):  # fmt: skip
        answer = admin.put("/settings", bad)
        assert answer.status == 400 and answer.json["error"]["type"] == "invalid_request"
    reverted = admin.ok("PUT", "/settings", {"kiroVersion": None})
    assert reverted["settings"]["kiroVersion"] == "0.11.107"
    assert reverted["overridden"] == ["firstByteTimeout"]


def test_load_balancing_endpoint_speaks_kiro_rs(admin: Admin) -> None:
    assert admin.ok("GET", "/config/load-balancing") == {"mode": "priority"}
    assert admin.ok("PUT", "/config/load-balancing", {"mode": "balanced"}) == {"mode": "balanced"}
    assert admin.ok("GET", "/settings")["settings"]["loadBalancingMode"] == "least_used"
    assert admin.put("/config/load-balancing", {"mode": "chaos"}).status == 400
    assert admin.ok("GET", "/config/load-balancing") == {"mode": "balanced"}


# --------------------------------------------------------------------------- client keys


def test_client_key_crud(admin: Admin) -> None:
    created = admin.ok(
        "POST",
        "/client-keys",
        {"name": "team-a", "rpmLimit": 10, "tpdLimit": 1000, "models": ["claude-sonnet-*"]},
        status=201,
    )
    key = created["key"]
    view = created["clientKey"]
    assert key.startswith("sk-kf-") and len(key) > 30
    assert view["keyPrefix"] == key[:12] and view["name"] == "team-a"
    assert (view["rpmLimit"], view["tpdLimit"], view["models"]) == (10, 1000, ["claude-sonnet-*"])
    listed = admin.ok("GET", "/client-keys")["keys"]
    assert [k["id"] for k in listed] == [view["id"]]
    assert key not in json.dumps(listed)  # only shown once
    updated = admin.ok("PUT", f"/client-keys/{view['id']}", {"rpmLimit": None, "enabled": False})
    assert updated["clientKey"]["rpmLimit"] is None and updated["clientKey"]["enabled"] is False
    regenerated = admin.ok("PUT", f"/client-keys/{view['id']}", {"regenerate": True})
    assert (
        regenerated["key"] != key
        and regenerated["clientKey"]["keyPrefix"] == regenerated["key"][:12]
    )
    assert admin.post("/client-keys", {"name": ""}).status == 400
    assert admin.post("/client-keys", {"name": "x", "rpmLimit": -3}).status == 400
    assert admin.post("/client-keys", {"name": "x", "models": "all"}).status == 400
    assert admin.ok("DELETE", f"/client-keys/{view['id']}")["success"] is True
    assert admin.delete(f"/client-keys/{view['id']}").status == 404
    assert admin.put("/client-keys/999", {"name": "y"}).status == 404


def test_status_and_usage_answer(admin: Admin) -> None:
    status = admin.ok("GET", "/status")
    assert status["credentials"] == {"total": 3, "available": 3}
    assert status["method"] == "key" and isinstance(status["uptime"], float)
    usage = admin.ok("GET", "/usage?window=1h&group_by=model")
    assert usage["groupBy"] == "model" and usage["bucket"] == 60
    assert admin.get("/usage?window=2y").status == 400
    assert admin.get("/usage?group_by=planet").status == 400


# --------------------------------------------------------------------------- kiro.rs file


def test_added_and_deleted_credentials_follow_the_kiro_rs_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps([{"id": 1, "refreshToken": REFRESH_TOKEN, "authMethod": "social"}]))
    token = "aorFile" + "f" * 120

    def accounts(fake: FakeUpstream) -> list[Credential]:
        fake.accounts.add_social(REFRESH_TOKEN)
        fake.accounts.add_social(token)
        return []

    with Harness(config=ADMIN_CONFIG, credentials=accounts, sources=[KiroRsFile(path)]) as harness:
        admin = Admin(Http(harness.url), ADMIN_KEY)
        added = admin.ok("POST", "/credentials", {"refreshToken": token, "priority": 3})
        entries = json.loads(path.read_text())
        assert [e["id"] for e in entries] == [1, added["credentialId"]]
        assert entries[1]["refreshToken"] != token  # rotated by the proving refresh
        assert entries[1]["priority"] == 3 and entries[1]["authMethod"] == "social"
        admin.ok("POST", f"/credentials/{added['credentialId']}/disabled", {"disabled": True})
        assert json.loads(path.read_text())[1]["disabled"] is True
        admin.ok("DELETE", f"/credentials/{added['credentialId']}")
        assert [e["id"] for e in json.loads(path.read_text())] == [1]


# --------------------------------------------------------------------------- the UI files


def test_ui_files_are_served_with_their_types_and_nothing_else(http: Http) -> None:
    page = http.request("GET", "/admin")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert b"/admin/static/app.js?v=" in page.body and b"{{version}}" not in page.body
    assert http.request("GET", "/admin/").body == page.body
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = http.request("GET", f"/admin/static/{name}")
        assert asset.status == 200 and asset.headers["content-type"].startswith(kind)
        assert "max-age=" in asset.headers["cache-control"]
    assert http.request("HEAD", "/admin/static/app.js").body == b""
    for probe in (
        "/admin/static/index.html",
        "/admin/static/..%2f..%2fconfig.py",
        "/admin/static/../app.py",
        "/admin/static/%2e%2e/__init__.py",
        "/admin/static/app.js/x",
        "/admin/static/",
        "/admin/static/app.js%00",
    ):
        assert http.request("GET", probe).status == 404, probe


def test_a_proxy_password_inside_the_url_is_masked(admin: Admin) -> None:
    url = f"socks5://user:{PROXY_PASSWORD}@10.0.0.5:1080"
    view = admin.ok("PUT", "/settings", {"proxyUrl": url, "proxyPassword": PROXY_PASSWORD})
    assert view["settings"]["proxyUrl"] == "socks5://user:***@10.0.0.5:1080"
    assert view["settings"]["proxyPassword"] == PROXY_PASSWORD[:4] + "..." + PROXY_PASSWORD[-4:]
    admin.ok("PUT", "/settings", {"proxyUrl": None, "proxyPassword": None})


# --------------------------------------------------------------------------- the printed link


def test_an_interactive_start_prints_the_admin_link(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from kiro_fast.admin.announce import Announcement, admin_url
    from kiro_fast.config import build_config

    assert admin_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/admin"
    assert admin_url("::", 8080) == "http://[::1]:8080/admin"
    assert admin_url("192.0.2.1", 9) == "http://192.0.2.1:9/admin"
    monkeypatch.setenv("CI", "1")
    environ: dict[str, str] = {}
    announcement, config = Announcement.prepare(build_config({}, environ={}), environ)
    key = environ["KIRO_FAST_ADMIN_API_KEY"]
    assert config.admin_api_key == key and len(key) > 30
    assert announcement.open_browser is False  # never under CI
    announcement.out = io.StringIO()
    announcement.show("0.0.0.0", 8080)
    announcement.show("0.0.0.0", 8080)
    printed = announcement.out.getvalue()
    assert printed.count("http://127.0.0.1:8080/admin#key=" + key) == 1
    configured = build_config({"adminApiKey": ADMIN_KEY}, environ={})
    quiet, unchanged = Announcement.prepare(configured, environ := {})
    assert environ == {} and unchanged.admin_api_key == ADMIN_KEY
    quiet.out = io.StringIO()
    quiet.show("127.0.0.1", 8080)
    assert ADMIN_KEY not in quiet.out.getvalue() and "/admin\n" in quiet.out.getvalue()


def test_an_admin_key_equal_to_the_client_key_opens_nothing() -> None:
    with Harness(config={"adminApiKey": API_KEY}) as harness:
        answer = Admin(Http(harness.url), API_KEY).get("/credentials")
        assert answer.status == 403  # no admin key, no admin user: the admin API is off
