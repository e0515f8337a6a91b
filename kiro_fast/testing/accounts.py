"""Accounts, tokens and the auth endpoints of the fake upstream (kiro-auth.md §3, §4, §9.1).

Owns who may call the data plane and how tokens come and go:

* **Social** accounts refresh at ``POST /refreshToken``; every refresh rotates the refresh
  token (the old one is dead at once) and issues a new access token.
* **IdC** accounts (Builder ID or Enterprise) refresh at ``POST /token`` with the
  ``clientId``/``clientSecret`` registration that issued them, in the registration's
  region; another region answers ``invalid_request`` (§4 "Region selection").
* **API keys** (``ksk_…``) are bearer tokens that never expire; the data plane wants
  ``tokentype: API_KEY`` with them (§4.2).
* The Builder ID **device flow**: ``POST /client/register`` → ``POST /device_authorization``
  → ``POST /token`` polls answering ``authorization_pending`` / ``slow_down`` /
  ``expired_token`` / ``access_denied`` until a test calls :meth:`Accounts.approve_device`.

Each account carries its quota as a :class:`~kiro_fast.testing.usage.Usage`.
Tests script refresh failures with :meth:`Accounts.fail_refresh`, kill access tokens
with :meth:`Accounts.expire_access_tokens` and count calls (``refresh_count`` …).
Tokens come from a seeded generator; the clock is replaceable (``accounts.clock``).

Must not know about sockets or the event loop; answers are
:mod:`~kiro_fast.testing.replies` values.
"""

from __future__ import annotations

import base64
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .replies import CloseReply, DelayedReply, JsonReply, Reply
from .settings import FakeSettings
from .usage import Usage, usage_limits

#: The profile ARN social logins get back (kiro-auth.md §7.6).
SOCIAL_PROFILE_ARN: Final = "arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK"
BUILDER_ID_START_URL: Final = "https://view.awsapps.com/start"
DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
#: How long a client registration lives (AWS SSO OIDC: 90 days).
CLIENT_LIFETIME: Final = 90 * 86_400

AccountKind = Literal["social", "idc", "api_key"]
RefreshFaultKind = Literal[
    "invalid_grant", "bad_credentials", "throttled", "server_error", "slow", "down"
]
RefreshEndpoint = Literal["social", "oidc"]


@dataclass(eq=False)
class Account:
    kind: AccountKind
    #: the refresh token valid now (rotated by every refresh)
    refresh_token: str | None = None
    #: the access token issued last (older ones stay valid until they expire)
    access_token: str | None = None
    api_key: str | None = None
    profile_arn: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    region: str = "us-east-1"
    builder_id: bool = False
    rotate_refresh_token: bool = True
    #: a refresh also kills the account's earlier access tokens
    revoke_access_on_refresh: bool = False
    suspended: bool = False
    usage: Usage = field(default_factory=Usage)


@dataclass
class OidcClient:
    client_id: str
    client_secret: str
    region: str
    issued_at: float
    expires_at: float


@dataclass
class DeviceAuthorization:
    device_code: str
    user_code: str
    client_id: str
    start_url: str
    expires_at: float
    interval: int
    status: Literal["pending", "approved", "denied", "used"] = "pending"
    last_poll: float | None = None
    account: Account | None = None


@dataclass(frozen=True, slots=True)
class RefreshFault:
    kind: RefreshFaultKind
    delay_ms: float = 0.0
    #: ``None``: the next refresh on either endpoint
    endpoint: RefreshEndpoint | None = None


@dataclass(slots=True)
class _Grant:
    account: Account
    expires_at: float


#: AWS SSO OIDC exception names, sent in ``x-amzn-errortype`` with each OAuth error.
_OAUTH_EXCEPTIONS: Final = {
    "access_denied": "AccessDeniedException",
    "authorization_pending": "AuthorizationPendingException",
    "expired_token": "ExpiredTokenException",
    "invalid_client": "InvalidClientException",
    "invalid_grant": "InvalidGrantException",
    "invalid_request": "InvalidRequestException",
    "server_error": "InternalServerException",
    "slow_down": "SlowDownException",
    "unsupported_grant_type": "UnsupportedGrantTypeException",
}


def _oauth(status: int, error: str, description: str) -> JsonReply:
    body = {"error": error, "error_description": description}
    return JsonReply.of(status, body, error_type=_OAUTH_EXCEPTIONS[error])


INVALID_GRANT: Final = "Invalid refresh token provided"


class Accounts:
    """Token and account state of one fake upstream."""

    def __init__(self, settings: FakeSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.accounts: list[Account] = []
        self.clients: dict[str, OidcClient] = {}
        self.devices: dict[str, DeviceAuthorization] = {}
        self.social_refresh_count = 0
        self.oidc_refresh_count = 0
        self.register_count = 0
        self.device_authorization_count = 0
        self.device_poll_count = 0
        self._rng = random.Random(f"accounts:{settings.seed}")
        self._by_refresh: dict[str, Account] = {}
        self._grants: dict[str, _Grant] = {}
        self._api_keys: dict[str, Account] = {}
        self._faults: deque[RefreshFault] = deque()
        self._anonymous: Account | None = None

    @property
    def refresh_count(self) -> int:
        """Refresh attempts on both endpoints (device-flow polls excluded)."""
        return self.social_refresh_count + self.oidc_refresh_count

    # ----------------------------------------------------------------------- set-up

    def add_social(
        self,
        refresh_token: str,
        access_token: str | None = None,
        *,
        profile_arn: str = SOCIAL_PROFILE_ARN,
        usage: Usage | None = None,
    ) -> Account:
        """A Kiro social-login account; ``access_token`` is issued when not given."""
        account = Account("social", refresh_token=refresh_token, profile_arn=profile_arn)
        return self._add(account, access_token, usage)

    def add_idc(
        self,
        refresh_token: str,
        client_id: str,
        client_secret: str,
        *,
        region: str = "us-east-1",
        access_token: str | None = None,
        builder_id: bool = False,
        profile_arn: str | None = None,
        usage: Usage | None = None,
    ) -> Account:
        """An IdC account and (if new) its client registration in ``region``."""
        now = self.clock()
        client = OidcClient(client_id, client_secret, region, now, now + CLIENT_LIFETIME)
        self.clients.setdefault(client_id, client)
        account = Account(
            "idc",
            refresh_token=refresh_token,
            client_id=client_id,
            client_secret=client_secret,
            region=region,
            builder_id=builder_id,
            profile_arn=profile_arn,
        )
        return self._add(account, access_token, usage)

    def add_api_key(
        self, api_key: str, *, profile_arn: str | None = None, usage: Usage | None = None
    ) -> Account:
        """A ``ksk_`` API key: a bearer token that never expires."""
        if not api_key.startswith("ksk_"):
            raise ValueError("api keys start with 'ksk_'")
        account = Account("api_key", api_key=api_key, profile_arn=profile_arn)
        self._api_keys[api_key] = account
        return self._add(account, None, usage, issue=False)

    def _add(
        self, account: Account, access_token: str | None, usage: Usage | None, *, issue: bool = True
    ) -> Account:
        number = len(self.accounts) + 1
        account.usage = usage or Usage()
        account.usage.email = account.usage.email or f"user{number}@example.com"
        account.usage.user_id = account.usage.user_id or f"d-9067c98495.fake-user-{number}"
        self.accounts.append(account)
        if account.refresh_token:
            self._by_refresh[account.refresh_token] = account
        if access_token is not None:
            self._grant(account, access_token)
        elif issue:
            self._issue_access(account)
        return account

    def anonymous(self) -> Account:
        """The account answering unauthenticated calls when ``require_auth`` is off."""
        if self._anonymous is None:
            self._anonymous = Account("social", profile_arn=SOCIAL_PROFILE_ARN)
            self._anonymous.usage.email = "anonymous@example.com"
            self._anonymous.usage.user_id = "d-9067c98495.anonymous"
        return self._anonymous

    # ----------------------------------------------------------------------- tokens

    def _token(self, prefix: str, size: int = 120) -> str:
        raw = self._rng.getrandbits(size * 6).to_bytes(size * 6 // 8, "big")
        return prefix + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _grant(self, account: Account, token: str) -> str:
        self._grants[token] = _Grant(account, self.clock() + self.settings.access_token_ttl)
        account.access_token = token
        return token

    def _issue_access(self, account: Account) -> str:
        if account.revoke_access_on_refresh:
            self.expire_access_tokens(account)
        return self._grant(account, self._token("aoa"))

    def _rotate(self, account: Account) -> str:
        old = account.refresh_token
        if not account.rotate_refresh_token and old:
            return old
        if old:
            self._by_refresh.pop(old, None)
        account.refresh_token = self._token("aor")
        self._by_refresh[account.refresh_token] = account
        return account.refresh_token

    def authenticate(self, authorization: str | None, tokentype: str | None) -> Account | None:
        """The account behind an ``Authorization: Bearer`` header, if the token is valid now."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization[7:].strip()
        if token.startswith("ksk_"):
            account = self._api_keys.get(token)
            wants_header = self.settings.api_key_requires_tokentype
            if account and wants_header and (tokentype or "").upper() != "API_KEY":
                return None
            return account
        grant = self._grants.get(token)
        if grant is None or grant.expires_at <= self.clock():
            return None
        return grant.account

    def expire_access_tokens(self, target: Account | str | None = None) -> int:
        """Expire one token, every token of an account, or all; return how many."""
        hit = 0
        for token, grant in self._grants.items():
            if target is None or grant.account is target or token == target:
                if grant.expires_at > 0:
                    grant.expires_at = 0.0
                    hit += 1
        return hit

    def revoke_refresh_token(self, account: Account) -> None:
        """Make the account's refresh token dead (the next refresh gets invalid_grant)."""
        if account.refresh_token:
            self._by_refresh.pop(account.refresh_token, None)

    def fail_refresh(
        self,
        kind: RefreshFaultKind,
        count: int = 1,
        *,
        delay_ms: float = 0.0,
        endpoint: RefreshEndpoint | None = None,
    ) -> None:
        """Script the next ``count`` refreshes to fail.

        ``invalid_grant`` (400), ``bad_credentials`` (401), ``throttled`` (429),
        ``server_error`` (500) answer at once without touching the account; ``slow``
        answers normally after ``delay_ms``; ``down`` closes the connection unanswered.
        """
        self._faults.extend(RefreshFault(kind, delay_ms, endpoint) for _ in range(count))

    def _take_fault(self, endpoint: RefreshEndpoint) -> RefreshFault | None:
        for fault in self._faults:
            if fault.endpoint in (None, endpoint):
                self._faults.remove(fault)
                return fault
        return None

    def _fault_reply(self, fault: RefreshFault, endpoint: RefreshEndpoint) -> Reply | None:
        social = endpoint == "social"
        if fault.kind == "down":
            return CloseReply(reset=False)
        if fault.kind == "invalid_grant":
            if social:
                return JsonReply.of(400, {"message": INVALID_GRANT})
            return _oauth(400, "invalid_grant", INVALID_GRANT)
        if fault.kind == "bad_credentials":
            if social:
                return JsonReply.of(401, {"message": "Bad credentials"})
            return _oauth(401, "invalid_client", "Invalid client provided")
        if fault.kind == "throttled":
            return JsonReply.of(429, {"message": "Rate exceeded"}, error_type="ThrottlingException")
        if fault.kind == "server_error":
            if social:
                return JsonReply.of(500, {"message": "Internal server error"})
            return _oauth(500, "server_error", "An internal error occurred")
        return None

    # ----------------------------------------------------------------------- social refresh

    def refresh_social(self, body: Any) -> Reply:
        """``POST /refreshToken`` (kiro-auth.md §3)."""
        self.social_refresh_count += 1
        fault = self._take_fault("social")
        if fault:
            reply = self._fault_reply(fault, "social")
            if reply is not None:
                return reply
        token = body.get("refreshToken") if isinstance(body, dict) else None
        account = self._by_refresh.get(token) if isinstance(token, str) else None
        if account is None:
            reply = JsonReply.of(400, {"message": INVALID_GRANT})
        elif account.kind != "social":
            reply = JsonReply.of(401, {"message": "Bad credentials"})
        else:
            answer = {
                "accessToken": self._issue_access(account),
                "expiresIn": self.settings.access_token_ttl,
                "profileArn": account.profile_arn,
                "refreshToken": self._rotate(account),
            }
            reply = JsonReply.of(200, answer)
        return DelayedReply(fault.delay_ms, reply) if fault else reply

    def logout(self, body: Any) -> Reply:
        """``POST /logout``: the refresh token stops working."""
        token = body.get("refreshToken") if isinstance(body, dict) else None
        if isinstance(token, str):
            self._by_refresh.pop(token, None)
        return JsonReply.of(200, {})

    # ----------------------------------------------------------------------- OIDC

    def oidc_token(self, body: Any, region: str) -> Reply:
        """``POST /token``: the refresh and device-code grants (kiro-auth.md §4, §9.1)."""
        if not isinstance(body, dict):
            return _oauth(400, "invalid_request", "Invalid request")
        grant = body.get("grantType")
        if grant == "refresh_token":
            return self._oidc_refresh(body, region)
        if grant == DEVICE_GRANT:
            return self._device_poll(body, region)
        if grant is None:
            return _oauth(400, "invalid_request", "grantType is required")
        return _oauth(400, "unsupported_grant_type", f"Unsupported grant type {grant}")

    def _client(self, body: dict[str, Any], region: str) -> OidcClient | JsonReply:
        client = self.clients.get(body.get("clientId"))  # type: ignore[arg-type]
        if client is not None and client.region != region:
            return _oauth(400, "invalid_request", "Invalid token provided")
        valid = client is not None and client.client_secret == body.get("clientSecret")
        if client is None or not valid or client.expires_at <= self.clock():
            return _oauth(401, "invalid_client", "Invalid client provided")
        return client

    def _oidc_refresh(self, body: dict[str, Any], region: str) -> Reply:
        self.oidc_refresh_count += 1
        fault = self._take_fault("oidc")
        if fault:
            reply = self._fault_reply(fault, "oidc")
            if reply is not None:
                return reply
        client = self._client(body, region)
        if isinstance(client, JsonReply):
            return client
        token = body.get("refreshToken")
        account = self._by_refresh.get(token) if isinstance(token, str) else None
        if account is None or account.kind != "idc" or account.client_id != client.client_id:
            reply = _oauth(400, "invalid_grant", INVALID_GRANT)
        else:
            reply = JsonReply.of(200, self._oidc_tokens(account))
        return DelayedReply(fault.delay_ms, reply) if fault else reply

    def _oidc_tokens(self, account: Account) -> dict[str, Any]:
        return {
            "accessToken": self._issue_access(account),
            "expiresIn": self.settings.access_token_ttl,
            "refreshToken": self._rotate(account),
            "tokenType": "Bearer",
        }

    def register_client(self, body: Any, region: str) -> Reply:
        """``POST /client/register``; the client id embeds the region, as AWS's do."""
        self.register_count += 1
        if not isinstance(body, dict) or not isinstance(body.get("clientName"), str):
            return _oauth(400, "invalid_request", "clientName is required")
        issuer = body.get("issuerUrl")
        if issuer is not None and not (isinstance(issuer, str) and issuer.startswith("https://")):
            return _oauth(400, "invalid_request", "Invalid start URL provided")
        raw = self._rng.getrandbits(128).to_bytes(16, "big") + region.encode()
        client_id = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        now = self.clock()
        client = OidcClient(client_id, self._token("eyJ", 300), region, now, now + CLIENT_LIFETIME)
        self.clients[client_id] = client
        answer = {
            "clientId": client_id,
            "clientIdIssuedAt": int(now),
            "clientSecret": client.client_secret,
            "clientSecretExpiresAt": int(client.expires_at),
        }
        return JsonReply.of(200, answer)

    def device_authorization(self, body: Any, region: str) -> Reply:
        """``POST /device_authorization``: a device code and the user code to approve."""
        self.device_authorization_count += 1
        if not isinstance(body, dict):
            return _oauth(400, "invalid_request", "Invalid request")
        client = self._client(body, region)
        if isinstance(client, JsonReply):
            return client
        start_url = body.get("startUrl")
        if not isinstance(start_url, str) or not start_url.startswith("https://"):
            return _oauth(400, "invalid_request", "Invalid start URL provided")
        letters = "BCDFGHJKLMNPQRSTVWXZ"
        code = "".join(self._rng.choice(letters) for _ in range(8))
        device = DeviceAuthorization(
            device_code=self._token("", 64),
            user_code=f"{code[:4]}-{code[4:]}",
            client_id=client.client_id,
            start_url=start_url,
            expires_at=self.clock() + self.settings.device_expires_in,
            interval=self.settings.device_interval,
        )
        self.devices[device.device_code] = device
        verify = "https://view.awsapps.com/start/#/device"
        answer = {
            "deviceCode": device.device_code,
            "expiresIn": self.settings.device_expires_in,
            "interval": device.interval,
            "userCode": device.user_code,
            "verificationUri": verify,
            "verificationUriComplete": f"{verify}?user_code={device.user_code}",
        }
        return JsonReply.of(200, answer)

    def _device(self, user_code: str) -> DeviceAuthorization:
        for device in self.devices.values():
            if device.user_code == user_code:
                return device
        raise KeyError(f"no device authorization with user code {user_code!r}")

    def approve_device(self, user_code: str) -> None:
        """The user signed in and approved the code: the next poll gets tokens."""
        self._device(user_code).status = "approved"

    def deny_device(self, user_code: str) -> None:
        self._device(user_code).status = "denied"

    def expire_device(self, user_code: str) -> None:
        self._device(user_code).expires_at = 0.0

    def _device_poll(self, body: dict[str, Any], region: str) -> Reply:
        self.device_poll_count += 1
        client = self._client(body, region)
        if isinstance(client, JsonReply):
            return client
        device = self.devices.get(body.get("deviceCode"))  # type: ignore[arg-type]
        if device is None or device.client_id != client.client_id or device.status == "used":
            return _oauth(400, "invalid_grant", "Invalid device code provided")
        now = self.clock()
        if device.expires_at <= now:
            return _oauth(400, "expired_token", "Device code has expired")
        if device.status == "denied":
            return _oauth(400, "access_denied", "Access denied")
        if device.status == "pending" and self.settings.device_auto_approve:
            device.status = "approved"
        too_soon = device.last_poll is not None and now - device.last_poll < device.interval
        device.last_poll = now
        if too_soon:
            return _oauth(400, "slow_down", "Client is polling too quickly")
        if device.status == "pending":
            return _oauth(400, "authorization_pending", "Authorization is pending")
        device.status = "used"
        account = self.add_idc(
            self._token("aor"),
            client.client_id,
            client.client_secret,
            region=client.region,
            builder_id=device.start_url.rstrip("/") == BUILDER_ID_START_URL,
        )
        device.account = account
        answer = {
            "accessToken": account.access_token,
            "expiresIn": self.settings.access_token_ttl,
            "refreshToken": account.refresh_token,
            "tokenType": "Bearer",
        }
        return JsonReply.of(200, answer)

    # ----------------------------------------------------------------------- usage

    def usage_limits(self, account: Account) -> dict[str, Any]:
        """The ``getUsageLimits`` answer for an account."""
        return usage_limits(account.usage, self.clock())

    def profiles(self, account: Account) -> list[dict[str, Any]]:
        """``ListAvailableProfiles``: only Enterprise IdC accounts see their profile (§7.6)."""
        if account.kind != "idc" or account.builder_id or not account.profile_arn:
            return []
        region = account.profile_arn.split(":")[3]
        return [{"arn": account.profile_arn, "profileName": f"KiroProfile-{region}"}]
