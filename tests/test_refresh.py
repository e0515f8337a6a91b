"""Token refresh against the fake upstream: social and IdC, rotation written back and
reused, single-flight in one process and across processes, dead versus transient
refresh failures, the Kiro IDE rotating the tokens of a shared account, machine ids.

Spec: kiro-auth.md §3 (social), §4 (IdC), §5 (timing, single-flight, write-back, dead
tokens), §6 (machine id), §2.7 (the IDE's token file).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pool_helpers import (
    FakeClock,
    account_of,
    arun,
    chats,
    fake_upstream,
    pool_for,
    refresh_token,
    social,
    stack,
)

from kiro_fast.credentials import Credential
from kiro_fast.errors import CredentialsBusy, NoCredentialAvailable, TokenRefreshError
from kiro_fast.pool import PoolSettings
from kiro_fast.sources import KiroIdeCache, KiroRsFile
from kiro_fast.state import MemoryStore


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def region_client_id(region: str) -> str:
    """An AWS-shaped client id: base64url of 16 random bytes and the region (§2.7)."""
    return base64.urlsafe_b64encode(b"\x01" * 16 + region.encode()).decode().rstrip("=")


# --------------------------------------------------------------------------- social


@arun
async def test_social_refresh_rotates_and_the_file_keeps_the_new_token(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    async with fake_upstream() as fake:
        account = fake.accounts.add_social(refresh_token("one"))
        write_json(path, [{"id": 1, "refreshToken": refresh_token("one"), "expiresAt": 1000}])
        async with pool_for(fake, sources=[KiroRsFile(path)]) as pool:
            async with pool.lease() as lease:
                assert lease.cred.access_token == account.access_token
        assert fake.accounts.social_refresh_count == 1
        assert account.refresh_token != refresh_token("one")  # the fake rotated it
        saved = read_json(path)[0]
        assert saved["refreshToken"] == account.refresh_token
        assert saved["accessToken"] == account.access_token
        assert isinstance(saved["expiresAt"], int)  # Unix seconds in, Unix seconds out
        assert saved["expiresAt"] > time.time() + 3000
        # A new process (fresh store) starts from the file: the rotated token works.
        fake.accounts.expire_access_tokens()
        async with pool_for(fake, sources=[KiroRsFile(path)]) as pool:
            cred = pool.credentials[0]
            cred.expires_at = 0  # force the next use to refresh with the stored token
            async with pool.lease() as lease:
                assert account_of_token(fake, lease.cred.access_token) is account
        assert fake.accounts.social_refresh_count == 2
        assert read_json(path)[0]["refreshToken"] == account.refresh_token


def account_of_token(fake: Any, token: str | None) -> Any:
    return fake.accounts.authenticate(f"Bearer {token}", None)


@arun
async def test_refresh_request_is_the_social_shape(tmp_path: Path) -> None:
    async with fake_upstream() as fake:
        cred, _account = social(fake, 1, fresh=False)
        async with pool_for(fake, [cred]) as pool:
            await pool.ensure_fresh(pool.credentials[0])
        request = [r for r in fake.requests if r.endpoint == "refreshToken"][0]
        assert request.json == {"refreshToken": refresh_token("acct1")}
        machine_id = pool.credentials[0].machine_id
        assert request.headers["user-agent"].endswith(f"-{machine_id}")
        assert request.headers["user-agent"].startswith("KiroIDE-")


@pytest.mark.parametrize(
    ("expires_in", "refreshes"),
    [(None, 1), (-5, 1), (9 * 60, 1), (11 * 60, 0)],
    ids=["no-expiry", "expired", "within-10-min", "outside-10-min"],
)
@arun
async def test_refresh_when_missing_expired_or_within_ten_minutes(
    expires_in: float | None, refreshes: int
) -> None:
    clock = FakeClock()
    async with fake_upstream() as fake:
        cred, account = social(fake, 1)
        cred.expires_at = None if expires_in is None else clock() + expires_in
        async with pool_for(fake, [cred], clock=clock) as pool:
            async with pool.lease():
                pass
        assert fake.accounts.refresh_count == refreshes


@arun
async def test_missing_access_token_is_refreshed_even_with_a_future_expiry() -> None:
    async with fake_upstream() as fake:
        cred, _ = social(fake, 1, fresh=False)
        cred.expires_at = time.time() + 3000  # the kiro.rs trap (§5.1)
        async with pool_for(fake, [cred]) as pool:
            async with pool.lease() as lease:
                assert lease.cred.access_token
        assert fake.accounts.refresh_count == 1


# --------------------------------------------------------------------------- IdC


@arun
async def test_idc_refresh_goes_to_the_registration_region_with_a_camelcase_body() -> None:
    client_id = region_client_id("eu-central-1")
    async with fake_upstream() as fake:
        fake.accounts.add_idc(refresh_token("idc"), client_id, "secret-1", region="eu-central-1")
        cred = Credential(
            id=1,
            auth_method="idc",
            refresh_token=refresh_token("idc"),
            client_id=client_id,
            client_secret="secret-1",
        )
        oidc = {"oidcBase": fake.url + "/oidc/{region}", "region": "us-east-1"}
        async with pool_for(fake, [cred], config=oidc) as pool:
            async with pool.lease() as lease:
                assert lease.cred.access_token
        request = [r for r in fake.requests if r.endpoint == "token"][0]
        assert request.path == "/oidc/eu-central-1/token"
        assert request.json == {
            "clientId": client_id,
            "clientSecret": "secret-1",
            "refreshToken": refresh_token("idc"),
            "grantType": "refresh_token",
        }
        assert request.headers["x-amz-user-agent"].startswith("aws-sdk-js/")
        assert fake.accounts.oidc_refresh_count == 1


@arun
async def test_idc_refresh_in_the_wrong_region_is_not_a_dead_token() -> None:
    client_id = region_client_id("eu-central-1")
    async with fake_upstream() as fake:
        fake.accounts.add_idc(refresh_token("idc"), client_id, "s", region="eu-central-1")
        cred = Credential(
            id=1,
            auth_method="idc",
            refresh_token=refresh_token("idc"),
            client_id=client_id,
            client_secret="s",
            auth_region="us-east-1",  # explicit, and wrong
        )
        async with pool_for(fake, [cred], config={"oidcBase": fake.url + "/oidc/{region}"}) as pool:
            with pytest.raises(TokenRefreshError) as info:
                await pool.ensure_fresh(pool.credentials[0])
            assert not info.value.permanent
            assert not pool.credentials[0].disabled


# --------------------------------------------------------------------------- single flight


@arun
async def test_two_concurrent_requests_on_an_expired_token_cause_one_refresh() -> None:
    async with fake_upstream() as fake:
        cred, account = social(fake, 1, fresh=False)
        fake.accounts.fail_refresh("slow", delay_ms=100)  # both requests arrive during it
        async with pool_for(fake, [cred]) as pool:
            tokens = await asyncio.gather(*(lease_token(pool) for _ in range(2)))
        assert fake.accounts.refresh_count == 1
        assert tokens == [account.access_token, account.access_token]


async def lease_token(pool: Any) -> str | None:
    async with pool.lease() as lease:
        token: str | None = lease.cred.access_token
        return token


@arun
async def test_processes_sharing_a_store_refresh_once_and_reuse_the_rotation() -> None:
    async with fake_upstream() as fake:
        fake.accounts.add_social(refresh_token("shared"))
        fake.accounts.fail_refresh("slow", delay_ms=150)

        def credential() -> Credential:
            return Credential(id=7, auth_method="social", refresh_token=refresh_token("shared"))

        name = f"refresh-{time.monotonic_ns()}"
        async with (
            pool_for(fake, [credential()], state=MemoryStore(name)) as first,
            pool_for(fake, [credential()], state=MemoryStore(name)) as second,
        ):
            await asyncio.gather(
                first.ensure_fresh(first.credentials[0]),
                second.ensure_fresh(second.credentials[0]),
            )
            assert fake.accounts.refresh_count == 1
            a, b = first.credentials[0], second.credentials[0]
            assert a.access_token == b.access_token
            assert a.refresh_token == b.refresh_token != refresh_token("shared")


# --------------------------------------------------------------------------- dead tokens


@pytest.mark.parametrize("fault", ["invalid_grant", "bad_credentials"])
@arun
async def test_a_rejected_refresh_token_disables_with_a_reason_that_survives_restart(
    tmp_path: Path, fault: str
) -> None:
    path = tmp_path / "credentials.json"
    write_json(path, {"refreshToken": refresh_token("dead"), "authMethod": "social"})
    async with fake_upstream() as fake:
        fake.accounts.add_social(refresh_token("dead"))
        fake.accounts.fail_refresh(fault)  # type: ignore[arg-type]
        async with pool_for(fake, sources=[KiroRsFile(path)]) as pool:
            with pytest.raises(NoCredentialAvailable) as info:
                async with pool.lease():
                    pass
            assert not isinstance(info.value, CredentialsBusy)
            assert info.value.status == 529
        saved = read_json(path)
        assert isinstance(saved, dict)  # a single-object file stays one object
        assert saved["disabled"] is True
        assert saved["disabledReason"] == "InvalidRefreshToken"
        assert saved["disabledAt"].endswith("Z")
        async with pool_for(fake, sources=[KiroRsFile(path)]) as pool:
            again = pool.credentials[0]
            assert again.disabled and again.disabled_reason == "InvalidRefreshToken"
            assert again.disabled_at is not None


@arun
async def test_an_idc_invalid_grant_disables_the_credential() -> None:
    client_id = region_client_id("us-east-1")
    async with fake_upstream() as fake:
        fake.accounts.add_idc(refresh_token("gone"), client_id, "s")
        fake.accounts.fail_refresh("invalid_grant", endpoint="oidc")
        cred = Credential(
            id=1,
            auth_method="idc",
            refresh_token=refresh_token("gone"),
            client_id=client_id,
            client_secret="s",
        )
        async with pool_for(fake, [cred]) as pool:
            with pytest.raises(TokenRefreshError) as info:
                await pool.ensure_fresh(pool.credentials[0])
            assert info.value.permanent
            assert pool.credentials[0].disabled_reason == "InvalidRefreshToken"


@pytest.mark.parametrize("fault", ["throttled", "server_error", "down"])
@arun
async def test_transient_refresh_failures_cool_down_but_never_disable(fault: str) -> None:
    clock = FakeClock()
    async with fake_upstream() as fake:
        cred, _account = social(fake, 1, fresh=False)
        fake.accounts.fail_refresh(fault)  # type: ignore[arg-type]
        settings = PoolSettings(refresh_failure_cooldown=30.0)
        async with pool_for(fake, [cred], clock=clock, settings=settings) as pool:
            with pytest.raises(CredentialsBusy) as info:
                async with pool.lease():
                    pass
            assert info.value.headers["retry-after"] == "30"
            assert not pool.credentials[0].disabled
            clock.advance(31)
            async with pool.lease() as lease:  # the cool-down passed; the refresh works now
                assert lease.cred.access_token
        assert fake.accounts.refresh_count == 2


@arun
async def test_a_token_still_valid_keeps_serving_when_its_early_refresh_fails() -> None:
    async with fake_upstream() as fake:
        cred, account = social(fake, 1)
        cred.expires_at = time.time() + 300  # inside the 10-minute margin, still valid
        fake.accounts.fail_refresh("server_error")
        async with pool_for(fake, [cred]) as pool:
            async with pool.lease() as lease:
                assert lease.cred.access_token == account.access_token
        assert fake.accounts.refresh_count == 1


# --------------------------------------------------------------------------- the IDE


def ide_file(path: Path, account: Any, expires_at: float) -> None:
    write_json(
        path,
        {
            "accessToken": account.access_token,
            "refreshToken": account.refresh_token,
            "profileArn": account.profile_arn,
            "expiresAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(expires_at)),
            "authMethod": "social",
            "provider": "Google",
        },
    )


def ide_refreshes(fake: Any, account: Any) -> None:
    """What the Kiro IDE does: refresh the account itself (rotating its tokens)."""
    reply = fake.accounts.refresh_social({"refreshToken": account.refresh_token})
    assert reply.status == 200


@arun
async def test_the_ide_rotating_the_shared_account_is_picked_up_on_403(tmp_path: Path) -> None:
    path = tmp_path / "kiro-auth-token.json"

    def setup(fake: Any) -> list[Credential]:
        account = fake.accounts.add_social(refresh_token("ide"))
        account.revoke_access_on_refresh = True  # the IDE's refresh kills our access token
        ide_file(path, account, time.time() + 3600)
        return []

    async with stack(setup, sources=[KiroIdeCache(path)]) as s:
        account = s.fake.accounts.accounts[0]
        ide_refreshes(s.fake, account)
        ide_file(path, account, time.time() + 3600)
        status, _, body = await s.ask()
        assert status == 200, body
        assert s.fake.accounts.refresh_count == 1  # the IDE's own; kiro_fast made none
        assert account_of(s.fake, chats(s.fake)[-1]) is account
        cred = s.pool.credentials[0]
        assert cred.refresh_token == account.refresh_token
        stored = await s.runtime.state.get_credential(cred.id)
        assert stored is not None and stored["refreshToken"] == account.refresh_token


@arun
async def test_a_dead_refresh_token_rereads_the_ide_file_before_disabling(tmp_path: Path) -> None:
    path = tmp_path / "kiro-auth-token.json"

    def setup(fake: Any) -> list[Credential]:
        account = fake.accounts.add_social(refresh_token("ide"))
        ide_file(path, account, time.time() - 60)  # expired: kiro_fast must refresh
        return []

    async with stack(setup, sources=[KiroIdeCache(path)]) as s:
        account = s.fake.accounts.accounts[0]
        ide_refreshes(s.fake, account)  # our refresh token is now dead
        ide_file(path, account, time.time() + 3600)
        status, _, body = await s.ask()
        assert status == 200, body
        cred = s.pool.credentials[0]
        assert not cred.disabled
        assert cred.refresh_token == account.refresh_token
        # ours (rejected) + the IDE's; the IDE's fresh access token needed no third call
        assert s.fake.accounts.refresh_count == 2
        assert read_json(path)["refreshToken"] == account.refresh_token


# --------------------------------------------------------------------------- machine id


@arun
async def test_machine_id_is_stored_once_and_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    write_json(path, [{"id": 3, "refreshToken": refresh_token("mid"), "authMethod": "social"}])
    expected = hashlib.sha256(("KotlinNativeAPI/" + refresh_token("mid")).encode()).hexdigest()
    async with fake_upstream() as fake:
        fake.accounts.add_social(refresh_token("mid"))
        async with pool_for(fake, sources=[KiroRsFile(path)]) as pool:
            assert read_json(path)[0]["machineId"] == expected  # written at start
            await pool.ensure_fresh(pool.credentials[0])
        saved = read_json(path)[0]
        assert saved["refreshToken"] != refresh_token("mid")
        assert saved["machineId"] == expected
        async with pool_for(fake, sources=[KiroRsFile(path)]) as pool:
            assert pool.credentials[0].machine_id == expected


@arun
async def test_priority_changes_are_written_back(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    write_json(path, [{"id": 1, "refreshToken": refresh_token("p"), "note": "mine"}])
    async with fake_upstream() as fake:
        async with pool_for(fake, sources=[KiroRsFile(path)]) as pool:
            await pool.set_priority(pool.credentials[0], 4)
    saved = orjson.loads(path.read_bytes())[0]
    assert saved["priority"] == 4
    assert saved["note"] == "mine"
