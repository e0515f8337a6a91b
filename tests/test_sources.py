"""Credential sources in every peer format: loaded unchanged, problems named by index and
field, changes written back in the file's own shape; and the import into the state store
(stable ids, the fingerprint rule, removed entries, read-only sources keeping rotations).

Formats: kiro-auth.md §2.2 (kiro.rs), §2.4 (kiro2api), §2.5 (Kiro-Go), §2.7 (Kiro IDE).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pool_helpers import API_KEY, arun, fake_upstream, pool_for, refresh_token

from kiro_fast.config import build_config
from kiro_fast.credentials import Credential
from kiro_fast.errors import ConfigError
from kiro_fast.runtime import build_runtime
from kiro_fast.sources import (
    EntryProblem,
    Kiro2ApiSource,
    Kiro2ApiText,
    KiroGoConfig,
    KiroIdeCache,
    KiroRsFile,
    kiro2api_source,
)
from kiro_fast.state import MemoryStore, SQLiteStore

R1, R2, R3 = refresh_token("one"), refresh_token("two"), refresh_token("three")


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2))
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def problems(report: Any) -> list[tuple[int, str]]:
    return [(p.index, p.field) for p in report.problems]


# --------------------------------------------------------------------------- kiro.rs


def test_kiro_rs_array_reports_bad_entries_and_loads_the_rest(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "credentials.json",
        [
            {"id": 5, "refreshToken": R1, "priority": 1},
            {"refreshToken": R2, "authMethod": "idc", "clientId": "c"},  # no clientSecret
            "not an object",
            {"id": 5, "refreshToken": R3},  # duplicate id
            {"refreshToken": R3, "expiresAt": "soon"},
            {"refreshToken": R3, "authMethod": "builder-id", "clientId": "c", "clientSecret": "s"},
        ],
    )
    report = KiroRsFile(path).load()
    assert problems(report) == [(1, "clientSecret"), (2, "entry"), (3, "id"), (4, "expiresAt")]
    assert [(c.id, c.auth_method) for c in report.credentials] == [(5, "social"), (8, "idc")]
    assert str(report.problems[0]).startswith("entry 1: clientSecret:")


def test_kiro_rs_missing_ids_are_assigned_and_written_back(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "credentials.json",
        [{"refreshToken": R1}, {"id": 7, "refreshToken": R2}, {"refreshToken": R3}],
    )
    ids = [c.id for c in KiroRsFile(path).load().credentials]
    assert ids == [8, 7, 9]
    assert [e["id"] for e in read_json(path)] == [8, 7, 9]


def test_kiro_rs_write_back_keeps_shape_order_invalid_entries_and_unknown_keys(
    tmp_path: Path,
) -> None:
    bad = {"refreshToken": "aorTRUNC...ATED", "id": 3}
    path = write_json(
        tmp_path / "credentials.json",
        [{"id": 1, "refreshToken": R1, "team": "a"}, bad, {"id": 2, "refreshToken": R2}],
    )
    source = KiroRsFile(path)
    creds = source.load().credentials
    second = creds[1]
    second.refresh_token = "aorROTATED" + "r" * 100
    second.disable("InvalidRefreshToken", now=time.time())
    source.update([second])
    saved = read_json(path)
    assert saved[0] == {"id": 1, "refreshToken": R1, "team": "a"}
    assert saved[1] == bad  # never rewritten, never dropped
    assert saved[2]["refreshToken"] == "aorROTATED" + "r" * 100
    assert saved[2]["disabledReason"] == "InvalidRefreshToken"


def test_kiro_rs_single_object_stays_a_single_object(tmp_path: Path) -> None:
    path = write_json(tmp_path / "c.json", {"refreshToken": R1, "authMethod": "Social"})
    source = KiroRsFile(path)
    cred = source.load().credentials[0]
    assert cred.id == 1
    cred.access_token = "aoaNEW"
    source.update([cred])
    saved = read_json(path)
    assert isinstance(saved, dict)
    assert saved["accessToken"] == "aoaNEW" and saved["id"] == 1


def test_an_entry_the_user_removed_meanwhile_is_not_resurrected(tmp_path: Path) -> None:
    path = write_json(tmp_path / "c.json", [{"id": 1, "refreshToken": R1}])
    source = KiroRsFile(path)
    cred = source.load().credentials[0]
    write_json(path, [{"id": 2, "refreshToken": R2}])
    cred.access_token = "aoaX"
    source.update([cred])
    assert read_json(path) == [{"id": 2, "refreshToken": R2}]


@pytest.mark.parametrize("content", ["{not json", "42"])
def test_an_unreadable_file_is_a_config_error_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        KiroRsFile(path).load()
    assert str(path) in info.value.message


def test_a_missing_or_blank_file_is_an_empty_pool(tmp_path: Path) -> None:
    assert KiroRsFile(tmp_path / "absent.json").load().credentials == []
    (tmp_path / "blank.json").write_text("  \n")
    assert KiroRsFile(tmp_path / "blank.json").load().credentials == []


# --------------------------------------------------------------------------- kiro2api


KIRO2API = [
    {"auth": "Social", "refreshToken": R1, "description": "main"},
    {"auth": "IdC", "refreshToken": R2, "clientId": "cid", "clientSecret": "sec"},
    {"auth": "IdC", "refreshToken": R3, "clientId": "cid"},
    {"auth": "Password", "refreshToken": R3},
    {"auth": "Social"},
    {"refreshToken": R3, "disabled": True},
]


def test_kiro2api_json_text() -> None:
    source = kiro2api_source(json.dumps(KIRO2API))
    assert isinstance(source, Kiro2ApiText) and not source.writable
    report = source.load()
    assert problems(report) == [(2, "clientSecret"), (3, "auth"), (4, "refreshToken")]
    creds = report.credentials
    assert [(c.auth_method, c.priority) for c in creds] == [
        ("social", 0),
        ("idc", 1),
        ("social", 5),
    ]
    assert creds[2].disabled  # kiro2api skips them; kiro_fast shows them as disabled
    assert creds[0].extra == {}


def test_kiro2api_file_is_written_back_in_its_own_shape(tmp_path: Path) -> None:
    path = write_json(tmp_path / "auth.json", KIRO2API[:2])
    source = kiro2api_source(str(path))
    assert isinstance(source, Kiro2ApiSource) and source.writable
    cred = source.load().credentials[1]
    cred.refresh_token, cred.access_token, cred.expires_at = "aorNEW" + "n" * 99, "aoaA", 2e9
    source.update([cred])
    saved = read_json(path)
    assert saved[0] == KIRO2API[0]
    assert saved[1]["auth"] == "IdC"  # kiro2api's own key and spelling stay
    assert saved[1]["refreshToken"] == "aorNEW" + "n" * 99
    assert saved[1]["accessToken"] == "aoaA"
    assert "authMethod" not in saved[1] and "id" not in saved[1]


def test_kiro2api_single_object_and_bad_json() -> None:
    assert len(kiro2api_source(json.dumps(KIRO2API[0])).load().credentials) == 1
    with pytest.raises(ConfigError) as info:
        kiro2api_source("[{oops").load()
    assert "KIRO_AUTH_TOKEN" in info.value.message


# --------------------------------------------------------------------------- Kiro-Go


KIRO_GO = {
    "password": "changeme",
    "port": 8080,
    "requireApiKey": False,
    "totalRequests": 12,
    "accounts": [
        {
            "id": "0b6c9c39-2d8a-4c4e-9b8e-1d2f0e4c5a6b",
            "email": "a@example.com",
            "accessToken": "aoaGO1",
            "refreshToken": R1,
            "authMethod": "social",
            "provider": "Google",
            "region": "us-east-1",
            "expiresAt": 1_900_000_000,
            "machineId": "2582956e-cc88-4669-b546-07adbffcb894",
            "enabled": True,
            "requestCount": 40,
        },
        {
            "id": "6f1d7a8e-0000-4000-8000-000000000002",
            "refreshToken": R2,
            "clientId": "cid",
            "clientSecret": "sec",
            "authMethod": "idc",
            "provider": "BuilderId",
            "region": "eu-central-1",
            "enabled": False,
            "banStatus": "BANNED",
            "banReason": "AWS temporarily suspended",
            "banTime": 1_800_000_000,
        },
        {"id": "broken", "authMethod": "external_idp", "refreshToken": R3},
    ],
}


def test_kiro_go_accounts(tmp_path: Path) -> None:
    report = KiroGoConfig(write_json(tmp_path / "config.json", KIRO_GO)).load()
    assert problems(report) == [(2, "authMethod")]
    first, second = report.credentials
    assert first.expires_at == 1_900_000_000 and first.expires_form == "seconds"
    assert first.machine_id == "2582956e-cc88-4669-b546-07adbffcb894"
    assert first.email == "a@example.com"
    assert second.auth_method == "idc" and second.region == "eu-central-1"
    assert second.disabled and second.disabled_reason == "AWS temporarily suspended"
    assert second.disabled_at == 1_800_000_000


def test_kiro_go_write_back_touches_only_the_account_fields(tmp_path: Path) -> None:
    path = write_json(tmp_path / "config.json", KIRO_GO)
    source = KiroGoConfig(path)
    first = source.load().credentials[0]
    first.refresh_token, first.access_token, first.expires_at = "aorGO" + "g" * 99, "aoaB", 2e9
    first.disable("InvalidRefreshToken", now=1_850_000_000)
    source.update([first])
    saved = read_json(path)
    assert {k: v for k, v in saved.items() if k != "accounts"} == {
        k: v for k, v in KIRO_GO.items() if k != "accounts"
    }
    account = saved["accounts"][0]
    assert account["refreshToken"] == "aorGO" + "g" * 99
    assert account["expiresAt"] == 2_000_000_000  # Unix seconds, an integer
    assert account["enabled"] is False
    assert account["banStatus"] == "DISABLED" and account["banReason"] == "InvalidRefreshToken"
    assert account["banTime"] == 1_850_000_000
    assert account["requestCount"] == 40 and account["provider"] == "Google"
    assert saved["accounts"][1] == KIRO_GO["accounts"][1]


# --------------------------------------------------------------------------- Kiro IDE


def test_ide_social_token_file(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "kiro-auth-token.json",
        {
            "accessToken": "aoaIDE",
            "refreshToken": R1,
            "profileArn": "arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK",
            "expiresAt": "2026-01-12T23:00:00.000Z",
            "authMethod": "social",
            "provider": "Google",
        },
    )
    (cred,) = KiroIdeCache(path).load().credentials
    assert cred.auth_method == "social"
    assert cred.profile_arn.endswith("EHGA3GRVQMUK")  # type: ignore[union-attr]
    assert cred.expires_at == 1768258800.0


def test_ide_idc_reads_the_client_registration_and_its_region(tmp_path: Path) -> None:
    client_id = base64.urlsafe_b64encode(b"\x02" * 16 + b"ap-southeast-1").decode().rstrip("=")
    digest = "e909a0580879b06ece1202964fbe9dda95ea4ce3"
    write_json(
        tmp_path / f"{digest}.json",
        {"clientId": client_id, "clientSecret": "regsecret", "expiresAt": "2099-01-01T00:00:00Z"},
    )
    token = {
        "accessToken": "aoaIDC",
        "refreshToken": R2,
        "expiresAt": "2025-10-08T17:12:56.785Z",
        "clientIdHash": digest,
        "authMethod": "IdC",
        "provider": "BuilderId",
        "region": "us-east-1",
    }
    path = write_json(tmp_path / "kiro-auth-token.json", token)
    source = KiroIdeCache(path)
    (cred,) = source.load().credentials
    assert (cred.client_id, cred.client_secret) == (client_id, "regsecret")
    assert cred.auth_region_for("us-east-1") == "ap-southeast-1"  # the registration's region
    cred.access_token, cred.refresh_token = "aoaNEW", "aorNEW" + "q" * 100
    source.update([cred])
    saved = read_json(path)
    assert saved == {**token, "accessToken": "aoaNEW", "refreshToken": "aorNEW" + "q" * 100}


def test_ide_idc_without_its_registration_is_a_problem(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "kiro-auth-token.json",
        {"refreshToken": R2, "authMethod": "IdC", "clientIdHash": "abc"},
    )
    report = KiroIdeCache(path).load()
    assert report.problems == [
        EntryProblem(0, "clientIdHash", "client registration abc.json not found")
    ]


# --------------------------------------------------------------------------- import


@arun
async def test_a_read_only_source_keeps_its_rotated_token_across_restarts(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    text = json.dumps([{"auth": "Social", "refreshToken": R1}])
    async with fake_upstream() as fake:
        account = fake.accounts.add_social(R1)
        async with pool_for(fake, sources=[kiro2api_source(text)], state=SQLiteStore(db)) as pool:
            first_id = pool.credentials[0].id
            await pool.ensure_fresh(pool.credentials[0])
        rotated = account.refresh_token
        assert rotated != R1
        # Restart: same KIRO_AUTH_TOKEN (its token is dead now), same state database.
        async with pool_for(fake, sources=[kiro2api_source(text)], state=SQLiteStore(db)) as pool:
            cred = pool.credentials[0]
            assert cred.id == first_id
            assert cred.refresh_token == rotated
            cred.expires_at = 0
            await pool.ensure_fresh(cred)  # works: the dead original was never used
            assert not cred.disabled
        assert fake.accounts.refresh_count == 2


@arun
async def test_a_file_edited_since_the_last_write_wins_over_the_store(tmp_path: Path) -> None:
    path = write_json(tmp_path / "c.json", [{"id": 1, "refreshToken": R1}])
    store_name = f"edit-{time.monotonic_ns()}"
    async with fake_upstream() as fake:
        async with pool_for(
            fake, sources=[KiroRsFile(path)], state=MemoryStore(store_name)
        ) as pool:
            await pool.disable(pool.credentials[0], "InvalidRefreshToken")
        edited = read_json(path)
        edited[0]["refreshToken"] = R2  # the user pasted a new login
        write_json(path, edited)
        async with pool_for(
            fake, sources=[KiroRsFile(path)], state=MemoryStore(store_name)
        ) as pool:
            cred = pool.credentials[0]
            assert cred.refresh_token == R2
            assert not cred.disabled  # a new token gives an automatic disable another chance


@arun
async def test_store_only_state_survives_for_formats_that_cannot_hold_it(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "kiro-auth-token.json",
        {"refreshToken": R1, "accessToken": "aoa1", "authMethod": "social"},
    )
    store_name = f"ide-{time.monotonic_ns()}"
    async with fake_upstream() as fake:
        async with pool_for(
            fake, sources=[KiroIdeCache(path)], state=MemoryStore(store_name)
        ) as pool:
            await pool.set_priority(pool.credentials[0], 3)
            await pool.disable(pool.credentials[0], "Manual")
        assert "priority" not in read_json(path) and "disabled" not in read_json(path)
        async with pool_for(
            fake, sources=[KiroIdeCache(path)], state=MemoryStore(store_name)
        ) as pool:
            cred = pool.credentials[0]
            assert cred.priority == 3 and cred.disabled_reason == "Manual"


@arun
async def test_entries_removed_from_a_source_leave_the_pool(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "c.json", [{"id": 1, "refreshToken": R1}, {"id": 2, "refreshToken": R2}]
    )
    store = MemoryStore(f"removed-{time.monotonic_ns()}")
    async with fake_upstream() as fake:
        async with pool_for(fake, sources=[KiroRsFile(path)], state=store) as pool:
            assert [c.id for c in pool.credentials] == [1, 2]
        write_json(path, [{"id": 2, "refreshToken": R2}])
        async with pool_for(
            fake, sources=[KiroRsFile(path)], state=MemoryStore(store.name)
        ) as pool:
            assert [c.id for c in pool.credentials] == [2]
            assert await pool.state.get_credential(1) is None


@arun
async def test_ids_are_stable_and_kiro_rs_ids_take_precedence(tmp_path: Path) -> None:
    go = write_json(tmp_path / "config.json", {"accounts": KIRO_GO["accounts"][:1]})
    name = f"ids-{time.monotonic_ns()}"
    async with fake_upstream() as fake:
        async with pool_for(fake, sources=[KiroGoConfig(go)], state=MemoryStore(name)) as pool:
            (go_cred,) = pool.credentials
        rs = write_json(tmp_path / "credentials.json", [{"id": go_cred.id, "refreshToken": R2}])
        sources = [KiroGoConfig(go), KiroRsFile(rs)]
        async with pool_for(fake, sources=sources, state=MemoryStore(name)) as pool:
            by_token = {c.refresh_token: c.id for c in pool.credentials}
            assert by_token[R2] == go_cred.id  # the kiro.rs file's own id
            assert by_token[R1] != go_cred.id  # the Kiro-Go account moved to a fresh id
        async with pool_for(fake, sources=sources, state=MemoryStore(name)) as pool:
            assert {c.refresh_token: c.id for c in pool.credentials} == by_token


@arun
async def test_serve_reads_every_configured_source(tmp_path: Path, monkeypatch: Any) -> None:
    rs = write_json(tmp_path / "credentials.json", [{"id": 1, "refreshToken": R1}])
    go = write_json(tmp_path / "config.json", {"accounts": [{"id": "g", "refreshToken": R2}]})
    ide = write_json(tmp_path / "ide.json", {"refreshToken": R3, "authMethod": "social"})
    environ = {
        "KIRO_CLIENT_TOKEN": API_KEY,
        "KIRO_AUTH_TOKEN": json.dumps([{"auth": "Social", "refreshToken": refresh_token("env")}]),
        "CONFIG_PATH": str(go),
        "KIRO_FAST_IDE_TOKEN_FILE": str(ide),
        "KIRO_FAST_STATE_URL": "memory://",
    }
    config = build_config({"port": 0}, environ=environ)
    runtime = build_runtime(config, str(rs))
    await runtime.start()
    try:
        tokens = sorted(c.refresh_token or "" for c in runtime.pool.credentials)
        assert tokens == sorted([R1, R2, R3, refresh_token("env")])
        assert len({c.id for c in runtime.pool.credentials}) == 4
    finally:
        await runtime.stop(0)


def test_serve_without_a_client_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_runtime(build_config({}, environ={}), str(tmp_path / "c.json"))
    assert "apiKey" in info.value.message


def test_credentials_given_in_code_need_no_source() -> None:
    cred = Credential(id=1, auth_method="social", refresh_token=R1)
    assert cred.source is None
