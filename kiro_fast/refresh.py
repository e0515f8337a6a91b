"""Token refresh calls (spec kiro-auth.md §3 social, §4 IdC / Builder ID).

Owns the two refresh requests and the verdict on their failures:

* permanent (the refresh token is dead: the credential must be disabled): 400
  ``invalid_grant`` or "Invalid refresh token provided" in any shape, 401
  "Bad credentials", ``invalid_client`` / ``unauthorized_client`` / ``access_denied`` /
  ``expired_token``;
* transient (try again later, never disable): 429, 5xx, network errors, timeouts.

IdC refreshes go to the OIDC host of the client registration's region (credential
``authRegion`` / ``region``, else the region AWS encodes in the client id), with the
camelCase JSON body AWS SSO OIDC expects.

A successful refresh updates the credential in memory (rotated refresh token kept,
``expiresAt`` from ``expiresIn``, ``profileArn`` when given); persisting it and the
single-flight locking are the pool's job. Each outcome (ok, transient, permanent) is
counted in :mod:`kiro_fast.metrics`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import orjson

from . import metrics
from .credentials import Credential
from .errors import TokenRefreshError, UpstreamError
from .upstream import OIDC_SDK, UpstreamClient

#: Access tokens live 3600 s; one that expires sooner than this after a refresh is
#: treated as a failed refresh (kiro.rs uses the same 5-minute floor).
MIN_FRESH_LIFETIME: Final = 300.0
DEFAULT_EXPIRES_IN: Final = 3600.0

_PERMANENT_OAUTH_ERRORS: Final = {
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "access_denied",
    "expired_token",
}


async def refresh_credential(
    client: UpstreamClient, cred: Credential, *, clock: Callable[[], float] = time.time
) -> None:
    """Refresh ``cred`` in place (nothing changes when it fails).

    The call goes through the credential's proxy (or the global one) like every other
    call, and is bounded by ``authTimeout``.

    Raises:
        TokenRefreshError: ``permanent`` is True when the refresh token is dead.
    """
    if cred.is_api_key:
        return
    try:
        await _refresh(client, cred, clock)
    except TokenRefreshError as exc:
        metrics.refresh_outcome("permanent" if exc.permanent else "transient")
        raise
    metrics.refresh_outcome("ok")


async def _refresh(client: UpstreamClient, cred: Credential, clock: Callable[[], float]) -> None:
    if not cred.refresh_token:
        raise TokenRefreshError(f"{cred.label()} has no refresh token", permanent=True)
    if cred.auth_method == "idc":
        url, headers, body = _idc_request(client, cred)
    else:
        url, headers, body = _social_request(client, cred)
    try:
        status, raw = await client.call_json(
            "POST",
            url,
            cred=cred,
            headers=headers,
            json_body=body,
            timeout=client.config.auth_timeout,
        )
    except UpstreamError as exc:
        raise TokenRefreshError(f"token refresh for {cred.label()} failed: {exc.message}") from exc
    if status != 200:
        raise _refresh_failure(cred, status, raw)
    _apply(cred, raw, clock())


def _social_request(client: UpstreamClient, cred: Credential) -> tuple[str, dict[str, str], Any]:
    headers = {
        "accept": "application/json, text/plain, */*",
        "content-type": "application/json",
        "user-agent": f"KiroIDE-{client.identity.kiro_version}-{client.machine_id(cred)}",
    }
    return client.auth_base(cred) + "/refreshToken", headers, {"refreshToken": cred.refresh_token}


def _idc_request(client: UpstreamClient, cred: Credential) -> tuple[str, dict[str, str], Any]:
    ident = client.identity
    headers = {
        "content-type": "application/json",
        "x-amz-user-agent": f"aws-sdk-js/{OIDC_SDK} KiroIDE",
        "user-agent": (
            f"aws-sdk-js/{OIDC_SDK} ua/2.1 os/{ident.system_version} lang/js "
            f"md/nodejs#{ident.node_version} api/sso-oidc#{OIDC_SDK} m/E KiroIDE"
        ),
        "amz-sdk-invocation-id": str(uuid.uuid4()),
        "amz-sdk-request": "attempt=1; max=4",
    }
    body = {
        "clientId": cred.client_id,
        "clientSecret": cred.client_secret,
        "refreshToken": cred.refresh_token,
        "grantType": "refresh_token",
    }
    return client.oidc_base(cred) + "/token", headers, body


def _refresh_failure(cred: Credential, status: int, raw: bytes) -> TokenRefreshError:
    text = raw[:2000].decode("utf-8", "replace")
    code = ""
    try:
        data = orjson.loads(raw)
        if isinstance(data, dict):
            code = str(data.get("error") or "")
    except orjson.JSONDecodeError:
        pass
    permanent = (
        (
            code in _PERMANENT_OAUTH_ERRORS
            or "Invalid refresh token provided" in text
            or (status == 401 and "Bad credentials" in text)
        )
        and status < 500
        and status != 429
    )
    what = code or _short_message(raw) or "no message"
    return TokenRefreshError(
        f"token refresh for {cred.label()} answered {status}: {what}",
        permanent=permanent,
        upstream_status=status,
    )


def _short_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error_description") or "")[:200]
    return ""


def _apply(cred: Credential, raw: bytes, now: float) -> None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TokenRefreshError(f"token refresh for {cred.label()}: answer is not JSON") from None
    if not isinstance(data, dict):
        raise TokenRefreshError(f"token refresh for {cred.label()}: answer is not an object")
    access = data.get("accessToken") or data.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenRefreshError(f"token refresh for {cred.label()}: answer has no accessToken")
    expires_in = data.get("expiresIn") or data.get("expires_in") or DEFAULT_EXPIRES_IN
    try:
        lifetime = float(expires_in)
    except (TypeError, ValueError):
        lifetime = DEFAULT_EXPIRES_IN
    if lifetime < MIN_FRESH_LIFETIME:
        raise TokenRefreshError(
            f"token refresh for {cred.label()}: new token expires in {lifetime:g} s"
        )
    cred.access_token = access
    cred.expires_at = now + lifetime
    rotated = data.get("refreshToken") or data.get("refresh_token")
    if isinstance(rotated, str) and rotated:
        cred.refresh_token = rotated
    arn = data.get("profileArn")
    if isinstance(arn, str) and arn:
        cred.profile_arn = arn
