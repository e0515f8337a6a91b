"""Adding accounts by signing in: the AWS SSO OIDC device authorization flow.

What this module owns (kiro-auth.md §9.1, §9.3):

* **AWS Builder ID**: RegisterClient (``POST /client/register``, public client, the
  Kiro IDE's five scopes, device-code and refresh grants, issuer = the Builder ID start
  URL), StartDeviceAuthorization (``POST /device_authorization``) → a user code and a
  verification link the admin UI shows, then CreateToken polls (``POST /token`` with the
  device-code grant): ``authorization_pending`` → keep polling, ``slow_down`` → the
  interval grows by 5 s, ``expired_token`` / ``access_denied`` → the session ends.
* **IAM Identity Center**: the same flow with the organisation's start URL and its
  Identity Center region (AWS SSO OIDC serves the device grant for Identity Center
  too, so no callback URL has to be pasted back).
* The tokens become an ``idc`` credential (``clientId``/``clientSecret`` of the
  registration, ``region`` = the OIDC region) through the admin add flow, then its usage
  is read to learn the account's email.

Sessions live in the state store's settings under private keys (``_login:<id>``), so
the poll may reach any worker process; they hold the registration's secret and the
device code and are never returned. The browser only ever holds the session id.
Polling is driven by the caller (the admin UI polls ``/auth/device/poll`` at the
interval the start answer gave); each poll makes one CreateToken call.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import orjson

from ..config import Config, render_base
from ..credentials import format_rfc3339
from ..errors import InvalidRequest, NotFound
from ..state import StateStore
from ..upstream import OIDC_SDK, UpstreamClient
from .credential_ops import CredentialOps

BUILDER_ID_START_URL: Final = "https://view.awsapps.com/start"
SCOPES: Final = (
    "codewhisperer:completions",
    "codewhisperer:analysis",
    "codewhisperer:conversations",
    "codewhisperer:transformations",
    "codewhisperer:taskassist",
)
DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
CLIENT_NAME: Final = "Kiro"
#: Private settings key prefix of login sessions.
SESSION_PREFIX: Final = "_login:"
#: AWS adds this much to the poll interval on ``slow_down`` (RFC 8628 §3.5).
SLOW_DOWN_STEP: Final = 5
#: Used when the device authorization answer omits them.
DEFAULT_INTERVAL: Final = 5
DEFAULT_EXPIRES_IN: Final = 600
#: Pending sessions kept at once (older ones are dropped first).
MAX_SESSIONS: Final = 20
_REGION: Final = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+$")


def _start_url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https://[^\s/]+(/\S*)?$", value.strip()):
        raise InvalidRequest(
            "startUrl must be an https:// URL, e.g. https://my-org.awsapps.com/start"
        )
    return value.strip()


def _region(value: Any, default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not _REGION.match(value.strip()):
        raise InvalidRequest("region must be an AWS region such as us-east-1")
    return value.strip()


class LoginFlows:
    """Device-authorization logins that end as new credentials."""

    def __init__(
        self,
        client: UpstreamClient,
        state: StateStore,
        ops: CredentialOps,
        config: Callable[[], Config],
    ) -> None:
        self.client = client
        self.state = state
        self.ops = ops
        self._config = config

    # ------------------------------------------------------------------ OIDC calls

    def _headers(self) -> dict[str, str]:
        ident = self.client.identity
        return {
            "content-type": "application/json",
            "x-amz-user-agent": f"aws-sdk-js/{OIDC_SDK} KiroIDE",
            "user-agent": (
                f"aws-sdk-js/{OIDC_SDK} ua/2.1 os/{ident.system_version} lang/js "
                f"md/nodejs#{ident.node_version} api/sso-oidc#{OIDC_SDK} m/E KiroIDE"
            ),
            "amz-sdk-invocation-id": str(uuid.uuid4()),
            "amz-sdk-request": "attempt=1; max=1",
        }

    async def _call(self, region: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        url = render_base(self._config().oidc_base, region) + path
        status, raw = await self.client.call_json(
            "POST",
            url,
            cred=None,
            headers=self._headers(),
            json_body=body,
            timeout=self._config().auth_timeout,
        )
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            data = {}
        return status, data if isinstance(data, dict) else {}

    # ------------------------------------------------------------------ start

    async def start(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Register a client and start a device authorization; the code and link to show.

        ``kind`` is ``builder-id`` or ``idc`` (then ``startUrl`` is required).

        Raises:
            InvalidRequest: a bad start URL or region, or AWS refused the request.
            UpstreamError: the OIDC host could not be reached.
        """
        config = self._config()
        if kind == "idc":
            start_url = _start_url(body.get("startUrl"))
        else:
            start_url = BUILDER_ID_START_URL
        region = _region(body.get("region"), config.effective_auth_region())
        status, registered = await self._call(
            region,
            "/client/register",
            {
                "clientName": CLIENT_NAME,
                "clientType": "public",
                "scopes": list(SCOPES),
                "grantTypes": [DEVICE_GRANT, "refresh_token"],
                "issuerUrl": start_url,
            },
        )
        client_id, client_secret = registered.get("clientId"), registered.get("clientSecret")
        if status != 200 or not isinstance(client_id, str) or not isinstance(client_secret, str):
            raise InvalidRequest(f"client registration failed: {_oauth_error(status, registered)}")
        status, device = await self._call(
            region,
            "/device_authorization",
            {"clientId": client_id, "clientSecret": client_secret, "startUrl": start_url},
        )
        if status != 200 or not isinstance(device.get("deviceCode"), str):
            raise InvalidRequest(f"device authorization failed: {_oauth_error(status, device)}")
        interval = _positive_int(device.get("interval"), DEFAULT_INTERVAL)
        expires_in = _positive_int(device.get("expiresIn"), DEFAULT_EXPIRES_IN)
        session_id = secrets.token_urlsafe(18)
        session = {
            "kind": kind,
            "region": region,
            "startUrl": start_url,
            "clientId": client_id,
            "clientSecret": client_secret,
            "deviceCode": device["deviceCode"],
            "interval": interval,
            "expiresAt": time.time() + expires_in,
        }
        await self._prune()
        await self.state.set_settings({SESSION_PREFIX + session_id: session})
        return {
            "success": True,
            "sessionId": session_id,
            "userCode": device.get("userCode"),
            "verificationUri": device.get("verificationUri"),
            "verificationUriComplete": device.get("verificationUriComplete"),
            "expiresIn": expires_in,
            "interval": interval,
            "region": region,
            "startUrl": start_url,
        }

    async def _prune(self) -> None:
        """Drop expired sessions, and the oldest beyond :data:`MAX_SESSIONS`."""
        settings = await self.state.get_settings()
        sessions = sorted(
            ((v.get("expiresAt", 0), k) for k, v in settings.items()
             if k.startswith(SESSION_PREFIX) and isinstance(v, dict)),
        )  # fmt: skip
        now = time.time()
        stale = [k for expires, k in sessions if expires <= now]
        live = [k for expires, k in sessions if expires > now]
        stale += live[: max(0, len(live) - MAX_SESSIONS + 1)]
        if stale:
            await self.state.set_settings(dict.fromkeys(stale))

    # ------------------------------------------------------------------ poll

    async def poll(self, session_id: Any) -> dict[str, Any]:
        """One CreateToken attempt for a session: pending, or the new credential.

        Raises:
            NotFound: no such session (never started, finished or expired).
            InvalidRequest: the user refused, the code expired, or AWS said no.
            UpstreamError: the OIDC host could not be reached.
        """
        if not isinstance(session_id, str) or not session_id:
            raise InvalidRequest("sessionId is required")
        key = SESSION_PREFIX + session_id
        async with self.state.lock("login:" + session_id, lease=30.0, wait=30.0):
            session = (await self.state.get_settings()).get(key)
            if not isinstance(session, dict) or session.get("expiresAt", 0) <= time.time():
                raise NotFound("no such login session (it finished or expired)")
            return await self._poll_once(key, session)

    async def _poll_once(self, key: str, session: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self._call(
            session["region"],
            "/token",
            {
                "clientId": session["clientId"],
                "clientSecret": session["clientSecret"],
                "grantType": DEVICE_GRANT,
                "deviceCode": session["deviceCode"],
            },
        )
        error = answer.get("error") if status != 200 else None
        if error in ("authorization_pending", "slow_down"):
            if error == "slow_down":
                session["interval"] = int(session["interval"]) + SLOW_DOWN_STEP
                await self.state.set_settings({key: session})
            status_name = "pending" if error == "authorization_pending" else "slow_down"
            return {
                "success": True,
                "completed": False,
                "status": status_name,
                "interval": session["interval"],
            }
        if status != 200 or not isinstance(answer.get("refreshToken"), str):
            await self.state.set_settings({key: None})
            raise InvalidRequest(f"sign-in did not complete: {_oauth_error(status, answer)}")
        await self.state.set_settings({key: None})
        return await self._add(session, answer)

    async def _add(self, session: dict[str, Any], tokens: dict[str, Any]) -> dict[str, Any]:
        lifetime = _positive_int(tokens.get("expiresIn"), 3600)
        entry: dict[str, Any] = {
            "authMethod": "idc",
            "refreshToken": tokens["refreshToken"],
            "accessToken": tokens.get("accessToken"),
            "expiresAt": format_rfc3339(time.time() + lifetime),
            "clientId": session["clientId"],
            "clientSecret": session["clientSecret"],
            "region": session["region"],
        }
        result = await self.ops.add(entry, verify=False, learn_usage=True)
        return {
            "success": True,
            "completed": True,
            "credentialId": result.credential_id,
            "email": result.email,
            "warnings": result.warnings,
        }


def _positive_int(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


def _oauth_error(status: int, data: dict[str, Any]) -> str:
    code = data.get("error") or data.get("__type") or ""
    text = data.get("error_description") or data.get("message") or ""
    detail = ": ".join(str(x)[:200] for x in (code, text) if x)
    return f"{status} {detail}".strip()
