"""Adding accounts by signing in (kiro-auth.md §9.1 Builder ID device flow, §9.3 IAM Identity
Center): register a client, start a device authorization, poll until the user approves,
and the tokens become a credential that serves chat — all against the fake's OIDC host.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from admin_helpers import Admin, Http
from e2e_harness import API_KEY, Harness

from kiro_fast.credentials import client_region
from kiro_fast.runtime import Runtime
from kiro_fast.testing import FakeSettings

ADMIN_KEY = "sk-admin-" + "d" * 24


def regional_oidc(holder: list[Harness]) -> object:
    """A Harness set-up that sends OIDC calls to ``/oidc/{region}`` on the fake, so the
    region a sign-in names is the region the fake registers the client in."""

    def setup(runtime: Runtime) -> None:
        config = runtime.config.replace(oidc_base=holder[0].fake.url + "/oidc/{region}")
        runtime.live.base = config
        runtime.live.current = config
        runtime.client.apply_config(config)

    return setup


@pytest.fixture
def harness() -> Iterator[Harness]:
    holder: list[Harness] = []
    running = Harness(
        config={"adminApiKey": ADMIN_KEY},
        fake_settings=FakeSettings(seed=11, device_interval=1),
        setup=regional_oidc(holder),  # type: ignore[arg-type]
    )
    holder.append(running)
    with running:
        yield running


@pytest.fixture
def admin(harness: Harness) -> Admin:
    return Admin(Http(harness.url), ADMIN_KEY)


def later(harness: Harness, seconds: float) -> None:
    """Move the fake's clock on, so a poll is not "too soon" without sleeping."""
    base = time.time
    offset = seconds + (harness.fake.accounts.clock() - base())
    harness.fake.accounts.clock = lambda: base() + offset


def test_builder_id_device_flow_adds_a_usable_credential(harness: Harness, admin: Admin) -> None:
    start = admin.ok("POST", "/auth/builder-id/start", {})
    assert start["success"] is True and start["region"] == "us-east-1"
    assert start["startUrl"] == "https://view.awsapps.com/start"
    device = next(iter(harness.fake.accounts.devices.values()))
    assert start["userCode"] == device.user_code
    assert start["verificationUri"] == "https://view.awsapps.com/start/#/device"
    assert start["verificationUriComplete"].endswith(f"user_code={device.user_code}")
    assert start["interval"] == 1 and start["expiresIn"] == 600
    assert device.start_url == "https://view.awsapps.com/start"
    assert set(start) >= {"sessionId"} and "deviceCode" not in start and "clientSecret" not in start

    pending = admin.ok("POST", "/auth/device/poll", {"sessionId": start["sessionId"]})
    assert pending == {"success": True, "completed": False, "status": "pending", "interval": 1}
    slow = admin.ok("POST", "/auth/device/poll", {"sessionId": start["sessionId"]})
    assert slow["status"] == "slow_down" and slow["interval"] == 6  # +5 s (RFC 8628)

    harness.call(lambda: harness.fake.accounts.approve_device(device.user_code))
    later(harness, 10)
    done = admin.ok("POST", "/auth/device/poll", {"sessionId": start["sessionId"]})
    assert done["completed"] is True and done["success"] is True
    account = device.account
    assert account is not None and account.builder_id is True
    assert done["email"] == account.usage.email

    cred = admin.credentials()[done["credentialId"]]
    assert cred["authMethod"] == "idc" and cred["disabled"] is False
    assert cred["region"] == "us-east-1" and cred["email"] == account.usage.email
    # The session is gone once it produced a credential.
    again = admin.post("/auth/device/poll", {"sessionId": start["sessionId"]})
    assert again.status == 404 and again.json["error"]["type"] == "not_found"

    admin.ok("POST", "/credentials/1/disabled", {"disabled": True})
    assert admin.http.chat(API_KEY).status == 200
    assert harness.fake.requests[-1].headers["authorization"] == f"Bearer {account.access_token}"


def test_identity_center_sign_in_uses_its_start_url_and_region(
    harness: Harness, admin: Admin
) -> None:
    start = admin.ok(
        "POST",
        "/auth/idc/start",
        {"startUrl": "https://my-org.awsapps.com/start", "region": "eu-west-1"},
    )
    assert (
        start["region"] == "eu-west-1" and start["startUrl"] == "https://my-org.awsapps.com/start"
    )
    device = next(iter(harness.fake.accounts.devices.values()))
    assert device.start_url == "https://my-org.awsapps.com/start"
    assert harness.fake.accounts.clients[device.client_id].region == "eu-west-1"
    harness.call(lambda: harness.fake.accounts.approve_device(device.user_code))
    done = admin.ok("POST", "/auth/device/poll", {"sessionId": start["sessionId"]})
    assert done["completed"] is True
    account = device.account
    assert account is not None and account.builder_id is False and account.region == "eu-west-1"
    assert client_region(account.client_id) == "eu-west-1"
    assert admin.credentials()[done["credentialId"]]["region"] == "eu-west-1"
    # A refresh goes to the registration's region (another region would be refused).
    refreshes = harness.fake.accounts.oidc_refresh_count
    admin.ok("POST", f"/credentials/{done['credentialId']}/refresh")
    assert harness.fake.accounts.oidc_refresh_count == refreshes + 1
    admin.ok("POST", "/credentials/1/disabled", {"disabled": True})
    assert admin.http.chat(API_KEY).status == 200
    assert harness.fake.requests[-1].headers["authorization"] == f"Bearer {account.access_token}"


@pytest.mark.parametrize("outcome", ["deny", "expire"])
def test_a_refused_or_expired_sign_in_ends_the_session(
    harness: Harness, admin: Admin, outcome: str
) -> None:
    start = admin.ok("POST", "/auth/builder-id/start", {"region": "us-east-1"})
    device = next(iter(harness.fake.accounts.devices.values()))
    action = (
        harness.fake.accounts.deny_device
        if outcome == "deny"
        else harness.fake.accounts.expire_device
    )
    harness.call(lambda: action(device.user_code))
    answer = admin.post("/auth/device/poll", {"sessionId": start["sessionId"]})
    assert answer.status == 400 and answer.json["error"]["type"] == "invalid_request"
    expected = "access_denied" if outcome == "deny" else "expired_token"
    assert expected in answer.json["error"]["message"]
    assert admin.post("/auth/device/poll", {"sessionId": start["sessionId"]}).status == 404
    assert set(admin.credentials()) == {1}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (
            "/auth/idc/start",
            {"startUrl": "http://insecure.example/start", "region": "us-east-1"},
            400,
        ),
        ("/auth/idc/start", {"region": "us-east-1"}, 400),
        ("/auth/idc/start", {"startUrl": "https://x.awsapps.com/start", "region": "moon-1"}, 400),
        ("/auth/builder-id/start", {"region": "not a region"}, 400),
        ("/auth/device/poll", {"sessionId": "no-such-session"}, 404),
        ("/auth/device/poll", {}, 400),
    ],
)
def test_bad_sign_in_requests(admin: Admin, path: str, body: dict[str, str], status: int) -> None:
    answer = admin.post(path, body)
    assert answer.status == status
    assert answer.json["error"]["type"] in ("invalid_request", "not_found")
