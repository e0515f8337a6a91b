"""The admin API under ``/api/admin/``: kiro.rs's endpoints and shapes, and kiro_fast's own.

What this module owns: the routes, their request checks and answer shapes, and the
admin guard around every route but ``/login`` and ``/logout`` (:mod:`.auth`: the admin
key or a login token — never the client key). The work itself is elsewhere: the pool
(disable, enable, priority, refresh, usage), :mod:`.credential_ops` (add, import,
delete, views), :mod:`.login_flows` (device sign-in), :mod:`kiro_fast.live_settings`
(settings) and the state store (client keys, usage statistics).

Routes (all JSON; errors are kiro.rs's ``{"error":{"type","message"}}``):

==========  ==================================  ==========================================
method      path (after ``/api/admin``)         answer
==========  ==================================  ==========================================
POST        /login                              ``{success, username, token, expiresAt}``
POST        /logout                             ``{success}`` (tokens are stateless)
GET         /me                                 ``{username, method}``
POST        /change-password                    ``{success, message}``
GET         /status                             version, uptime, state, credential counts
GET         /credentials                        kiro.rs ``CredentialsStatusResponse``
POST        /credentials                        kiro.rs add: ``{success, message, credentialId}``
POST        /credentials/import                 ``{success, imported, credentialIds, failures}``
POST        /credentials/verify                 ``{results: [{id, success, balance|error}]}``
DELETE      /credentials/{id}                   only when disabled (else 400); 404 unknown
POST        /credentials/{id}/disabled          ``{"disabled": bool}``
POST        /credentials/{id}/priority          ``{"priority": n}``
POST        /credentials/{id}/reset             enable, clear failures, reason, cool-down
POST        /credentials/{id}/refresh           unconditional refresh (400 for API keys)
POST        /credentials/{id}/verify            refresh if needed + usage: ``{success, balance}``
GET         /credentials/{id}/balance           kiro.rs ``BalanceResponse`` (cached 300 s)
GET / PUT   /config/load-balancing              ``{"mode"}``
GET / PUT   /settings                           runtime settings (POST also sets)
GET / POST  /client-keys                        list / create (the new key is shown once)
PUT         /client-keys/{id}                   change; ``regenerate: true`` shows a new key
DELETE      /client-keys/{id}
GET         /usage                              statistics by credential, model or key
POST        /auth/builder-id/start              device sign-in: code and link
POST        /auth/idc/start                     the same with ``startUrl`` and ``region``
POST        /auth/device/poll                   ``{completed: false, status}`` or the new id
==========  ==================================  ==========================================

Every answer carries ``cache-control: no-store``. Secrets are never in an answer: see
:mod:`.credential_ops` for credentials, :mod:`kiro_fast.live_settings` for settings;
client keys are stored and listed by hash and prefix only.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import parse_qs

import orjson

from .. import __version__
from ..accounting import ClientKeyGate, display_prefix, new_key, tokens_scope
from ..app import App, parse_json_object, path_param
from ..config import Config
from ..credentials import Credential
from ..errors import (
    ConfigError,
    InvalidRequest,
    NotFound,
    TokenRefreshError,
    UpstreamError,
)
from ..live_settings import LiveSettings
from ..pool import CredentialPool
from ..protocol import Exchange, Request
from ..state import GroupBy, StateStore, client_key_hash, utc_day_start
from ..upstream import UpstreamClient
from .auth import AdminAuth, Principal
from .credential_ops import (
    CredentialOps,
    balance_view,
    entry_from_request,
    latest_by_credential,
    status_view,
)
from .login_flows import LoginFlows
from .static import StaticUI

BASE: Final = "/api/admin"
HEADERS: Final = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
#: Usage windows the UI offers: name → (seconds, chart bucket seconds).
WINDOWS: Final = {
    "1h": (3600, 60),
    "24h": (86400, 3600),
    "7d": (7 * 86400, 6 * 3600),
    "30d": (30 * 86400, 86400),
}
GROUPS: Final = ("credential", "model", "client_key")
#: kiro.rs's names for the strategies its UI knows.
KIRO_RS_MODES: Final = {"priority": "priority", "least_used": "balanced"}
#: How far back "last used" is looked up in the per-minute statistics.
LAST_USED_LOOKBACK: Final = 86400.0
MIN_CLIENT_KEY_LENGTH: Final = 16

Answer = dict[str, Any]
Work = Callable[[Request, Principal], Awaitable[Answer]]


@dataclass(slots=True)
class AdminContext:
    """What the admin API works on (the runtime builds it)."""

    config: Config
    pool: CredentialPool
    client: UpstreamClient
    state: StateStore
    live: LiveSettings
    client_keys: ClientKeyGate


def install(app: App, context: AdminContext) -> AdminAPI:
    """Register the admin API and the web UI on ``app``."""
    api = AdminAPI(context)
    api.install(app)
    StaticUI().install(app)
    return api


class AdminAPI:
    """The admin handlers (see the module docstring)."""

    def __init__(self, context: AdminContext) -> None:
        self.ctx = context
        self.pool = context.pool
        self.state = context.state
        self.auth = AdminAuth(context.config, context.state)
        self.ops = CredentialOps(context.pool)
        self.flows = LoginFlows(
            context.client, context.state, self.ops, lambda: context.live.current
        )
        self.started = time.time()

    async def bootstrap(self) -> None:
        """At start: the first admin user from the configuration, if it is missing."""
        await self.auth.bootstrap()

    def install(self, app: App) -> None:
        app.route("POST", BASE + "/login", self.login, auth=False)
        app.route("POST", BASE + "/logout", self.logout, auth=False)
        guarded: list[tuple[str, str, Work]] = [
            ("GET", "/me", self.me),
            ("POST", "/change-password", self.change_password),
            ("GET", "/status", self.status),
            ("GET", "/credentials", self.list_credentials),
            ("POST", "/credentials", self.add_credential),
            ("POST", "/credentials/import", self.import_credentials),
            ("POST", "/credentials/verify", self.verify_all),
            ("DELETE", "/credentials/{id}", self.delete_credential),
            ("POST", "/credentials/{id}/disabled", self.set_disabled),
            ("POST", "/credentials/{id}/priority", self.set_priority),
            ("POST", "/credentials/{id}/reset", self.reset),
            ("POST", "/credentials/{id}/refresh", self.refresh),
            ("POST", "/credentials/{id}/verify", self.verify),
            ("GET", "/credentials/{id}/balance", self.balance),
            ("GET", "/config/load-balancing", self.get_mode),
            ("PUT", "/config/load-balancing", self.set_mode),
            ("GET", "/settings", self.get_settings),
            ("PUT", "/settings", self.set_settings),
            ("POST", "/settings", self.set_settings),
            ("GET", "/client-keys", self.list_keys),
            ("POST", "/client-keys", self.create_key),
            ("PUT", "/client-keys/{id}", self.update_key),
            ("DELETE", "/client-keys/{id}", self.delete_key),
            ("GET", "/usage", self.usage),
            ("POST", "/auth/builder-id/start", self.start_builder_id),
            ("POST", "/auth/idc/start", self.start_idc),
            ("POST", "/auth/device/poll", self.poll_device),
        ]
        for method, path, work in guarded:
            app.route(method, BASE + path, self._guard(work), auth=False)

    def _guard(self, work: Work) -> Callable[[Request, Exchange], Awaitable[None]]:
        async def handler(request: Request, exchange: Exchange) -> None:
            principal = await self.auth.check(request)
            answer = await work(request, principal)
            status = answer.pop("_status", 200)
            exchange.send(status, HEADERS, orjson.dumps(answer))

        return handler

    # ------------------------------------------------------------------ login

    async def login(self, request: Request, exchange: Exchange) -> None:
        body = parse_json_object(request.body)
        address = request.client[0] if request.client else "unknown"
        token, expires = await self.auth.login(body.get("username"), body.get("password"), address)
        answer = {
            "success": True,
            "message": "logged in",
            "username": body["username"],
            "token": token,
            "expiresAt": expires,
        }
        exchange.send(200, HEADERS, orjson.dumps(answer))

    async def logout(self, request: Request, exchange: Exchange) -> None:
        exchange.send(200, HEADERS, orjson.dumps({"success": True, "message": "logged out"}))

    async def me(self, request: Request, principal: Principal) -> Answer:
        return {"username": principal.username, "method": principal.method}

    async def change_password(self, request: Request, principal: Principal) -> Answer:
        body = parse_json_object(request.body)
        await self.auth.change_password(
            principal, body.get("username"), body.get("oldPassword"), body.get("newPassword")
        )
        return {"success": True, "message": "password changed"}

    async def status(self, request: Request, principal: Principal) -> Answer:
        pool = self.pool
        return {
            "version": __version__,
            "uptime": round(time.time() - self.started, 1),
            "state": self.state.describe(),
            "credentials": {"total": len(pool), "available": len(pool.available())},
            "username": principal.username,
            "method": principal.method,
        }

    # ------------------------------------------------------------------ credentials

    def _credential(self) -> Credential:
        raw = path_param("id")
        if not raw.isdigit():
            raise NotFound(f"credential {raw[:40]!r} does not exist")
        cred = self.pool.get(int(raw))
        if cred is None:
            raise NotFound(f"credential #{raw} does not exist")
        return cred

    async def list_credentials(self, request: Request, principal: Principal) -> Answer:
        now = time.time()
        totals = await self.state.usage_summary(since=0.0, until=now + 60.0, group_by="credential")
        success = {
            r["credential_id"]: r["requests"] - r["errors"]
            for r in totals
            if r.get("credential_id") is not None
        }
        recent = await self.state.usage_summary(
            since=now - LAST_USED_LOOKBACK, until=now + 60.0, group_by="credential", bucket=60
        )
        last_used = latest_by_credential(recent)
        for cred_id, when in self.ctx.client_keys.last_used.items():
            last_used[cred_id] = max(last_used.get(cred_id, 0.0), when)
        return status_view(self.pool, success, last_used)

    async def add_credential(self, request: Request, principal: Principal) -> Answer:
        body = parse_json_object(request.body)
        verify = body.get("verify", True) is not False
        result = await self.ops.add(entry_from_request(body), verify=verify)
        answer: Answer = {
            "success": True,
            "message": f"credential #{result.credential_id} added",
            "credentialId": result.credential_id,
        }
        if result.email:
            answer["email"] = result.email
        if result.warnings:
            answer["warnings"] = result.warnings
        return answer

    async def import_credentials(self, request: Request, principal: Principal) -> Answer:
        document = _json(request.body)
        verify = _query(request).get("verify", "true").lower() not in ("0", "false", "no")
        if isinstance(document, dict) and "items" in document and "accounts" not in document:
            verify = document.get("verify", verify) is not False
            document = document["items"]
        return await self.ops.import_document(document, verify=verify)

    async def delete_credential(self, request: Request, principal: Principal) -> Answer:
        raw = path_param("id")
        if not raw.isdigit():
            raise NotFound(f"credential {raw[:40]!r} does not exist")
        message = await self.ops.delete(int(raw))
        return {"success": True, "message": message}

    async def set_disabled(self, request: Request, principal: Principal) -> Answer:
        cred = self._credential()
        disabled = parse_json_object(request.body).get("disabled")
        if not isinstance(disabled, bool):
            raise InvalidRequest("disabled must be true or false")
        if disabled:
            await self.pool.disable(cred, "Manual")
        else:
            await self.pool.enable(cred)
        state = "disabled" if disabled else "enabled"
        return {"success": True, "message": f"credential #{cred.id} {state}"}

    async def set_priority(self, request: Request, principal: Principal) -> Answer:
        cred = self._credential()
        priority = parse_json_object(request.body).get("priority")
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise InvalidRequest("priority must be a non-negative integer")
        await self.pool.set_priority(cred, priority)
        return {"success": True, "message": f"credential #{cred.id} has priority {priority}"}

    async def reset(self, request: Request, principal: Principal) -> Answer:
        cred = self._credential()
        await self.pool.enable(cred)
        return {"success": True, "message": f"credential #{cred.id} reset and enabled"}

    async def refresh(self, request: Request, principal: Principal) -> Answer:
        cred = self._credential()
        if cred.is_api_key:
            raise InvalidRequest("API-key credentials have no token to refresh")
        if cred.access_token:
            await self.pool.ensure_fresh(cred, stale_token=cred.access_token)
        else:
            await self.pool.ensure_fresh(cred)
        return {"success": True, "message": f"credential #{cred.id} refreshed"}

    async def balance(self, request: Request, principal: Principal) -> Answer:
        cred = self._credential()
        info = await self.pool.usage(cred)
        return balance_view(cred.id, info.as_dict())

    async def verify(self, request: Request, principal: Principal) -> Answer:
        return await self._verify(self._credential())

    async def _verify(self, cred: Credential) -> Answer:
        try:
            await self.pool.ensure_fresh(cred)
            info = await self.pool.usage(cred, force=True)
        except (UpstreamError, TokenRefreshError) as exc:
            return {"success": False, "id": cred.id, "error": exc.message}
        return {"success": True, "id": cred.id, "balance": balance_view(cred.id, info.as_dict())}

    async def verify_all(self, request: Request, principal: Principal) -> Answer:
        body = _json(request.body) if request.body.strip() else {}
        wanted = body.get("ids") if isinstance(body, dict) else None
        if wanted is not None and not (
            isinstance(wanted, list) and all(isinstance(i, int) for i in wanted)
        ):
            raise InvalidRequest("ids must be a list of credential ids")
        creds = [c for c in self.pool.credentials if wanted is None or c.id in wanted]
        if wanted is None:
            creds = [c for c in creds if not c.disabled]
        return {"results": [await self._verify(c) for c in creds]}

    # ------------------------------------------------------------------ settings

    async def get_mode(self, request: Request, principal: Principal) -> Answer:
        mode = self.ctx.live.current.load_balancing_mode
        return {"mode": KIRO_RS_MODES.get(mode, mode)}

    async def set_mode(self, request: Request, principal: Principal) -> Answer:
        mode = parse_json_object(request.body).get("mode")
        await self._update_settings({"loadBalancingMode": mode})
        return await self.get_mode(request, principal)

    async def get_settings(self, request: Request, principal: Principal) -> Answer:
        return self.ctx.live.view()

    async def set_settings(self, request: Request, principal: Principal) -> Answer:
        body = parse_json_object(request.body)
        changes = body.get("settings", body) if isinstance(body.get("settings"), dict) else body
        await self._update_settings(changes)
        return self.ctx.live.view()

    async def _update_settings(self, changes: dict[str, Any]) -> None:
        try:
            await self.ctx.live.update(changes)
        except ConfigError as exc:
            raise InvalidRequest(exc.message) from None

    # ------------------------------------------------------------------ client keys

    async def _key_view(self, record: dict[str, Any], today: float) -> Answer:
        return {
            "id": record["id"],
            "name": record["name"],
            "keyPrefix": record["key_prefix"],
            "rpmLimit": record.get("rpm_limit"),
            "tpdLimit": record.get("tpd_limit"),
            "models": record.get("models"),
            "enabled": bool(record.get("enabled")),
            "createdAt": record.get("created_at"),
            "updatedAt": record.get("updated_at"),
            "tokensToday": await self.state.tokens_used(tokens_scope(record["id"]), today),
        }

    async def list_keys(self, request: Request, principal: Principal) -> Answer:
        today = utc_day_start(time.time())
        records = await self.state.list_client_keys()
        return {"keys": [await self._key_view(r, today) for r in records]}

    async def create_key(self, request: Request, principal: Principal) -> Answer:
        body = parse_json_object(request.body)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest("name is required")
        key = _custom_key(body.get("key")) or new_key()
        record = await self.state.create_client_key(
            name.strip()[:200],
            key_hash=client_key_hash(key),
            key_prefix=display_prefix(key),
            **_key_limits(body),
        )
        self.ctx.client_keys.forget()
        view = await self._key_view(record, utc_day_start(time.time()))
        return {"_status": 201, "success": True, "key": key, "clientKey": view}

    def _key_id(self) -> int:
        raw = path_param("id")
        if not raw.isdigit():
            raise NotFound(f"client key {raw[:40]!r} does not exist")
        return int(raw)

    async def update_key(self, request: Request, principal: Principal) -> Answer:
        key_id = self._key_id()
        body = parse_json_object(request.body)
        fields = _key_limits(body, partial=True)
        if isinstance(body.get("name"), str) and body["name"].strip():
            fields["name"] = body["name"].strip()[:200]
        answer: Answer = {"success": True}
        if body.get("regenerate") is True:
            key = new_key()
            fields["key_hash"], fields["key_prefix"] = client_key_hash(key), display_prefix(key)
            answer["key"] = key
        record = await self.state.update_client_key(key_id, **fields)
        if record is None:
            raise NotFound(f"client key #{key_id} does not exist")
        self.ctx.client_keys.forget()
        answer["clientKey"] = await self._key_view(record, utc_day_start(time.time()))
        return answer

    async def delete_key(self, request: Request, principal: Principal) -> Answer:
        key_id = self._key_id()
        if not await self.state.delete_client_key(key_id):
            raise NotFound(f"client key #{key_id} does not exist")
        self.ctx.client_keys.forget()
        return {"success": True, "message": f"client key #{key_id} deleted"}

    # ------------------------------------------------------------------ usage

    async def usage(self, request: Request, principal: Principal) -> Answer:
        query = _query(request)
        window = query.get("window", "24h")
        if window not in WINDOWS:
            raise InvalidRequest(f"window must be one of {', '.join(WINDOWS)}")
        given = query.get("group_by", query.get("groupBy", "credential"))
        if given not in GROUPS:
            raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}")
        group = cast(GroupBy, given)
        span, bucket = WINDOWS[window]
        if "bucket" in query:
            bucket = _int_param(query["bucket"], "bucket")
        until = time.time() + 60.0
        since = until - span - 60.0
        try:
            series = await self.state.usage_summary(
                since=since,
                until=until,
                group_by=group,
                bucket=bucket,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        totals = await self.state.usage_summary(since=since, until=until, group_by=group)
        overall = await self.state.usage_summary(since=since, until=until)
        field = {"credential": "credential_id", "model": "model", "client_key": "client_key_id"}
        return {
            "window": window,
            "since": since,
            "until": until,
            "groupBy": group,
            "groupField": field[group],
            "bucket": bucket,
            "series": series,
            "totals": totals,
            "overall": overall[0] if overall else None,
        }

    # ------------------------------------------------------------------ sign-in

    async def start_builder_id(self, request: Request, principal: Principal) -> Answer:
        body = _json(request.body) if request.body.strip() else {}
        return await self.flows.start("builder-id", body if isinstance(body, dict) else {})

    async def start_idc(self, request: Request, principal: Principal) -> Answer:
        return await self.flows.start("idc", parse_json_object(request.body))

    async def poll_device(self, request: Request, principal: Principal) -> Answer:
        return await self.flows.poll(parse_json_object(request.body).get("sessionId"))


# --------------------------------------------------------------------------- helpers


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def _query(request: Request) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(request.query).items()}


def _int_param(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None


def _custom_key(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value.strip()) < MIN_CLIENT_KEY_LENGTH:
        raise InvalidRequest(f"key must have at least {MIN_CLIENT_KEY_LENGTH} characters")
    return value.strip()


def _key_limits(body: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """``rpm_limit``, ``tpd_limit``, ``models``, ``enabled`` from camelCase fields."""
    out: dict[str, Any] = {}
    for given, name in (("rpmLimit", "rpm_limit"), ("tpdLimit", "tpd_limit")):
        if partial and given not in body:
            continue
        value = body.get(given)
        if value in (None, 0, ""):
            out[name] = None
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(f"{given} must be a positive integer or null")
        else:
            out[name] = value
    if not partial or "models" in body:
        models = body.get("models")
        if models in (None, "", []):
            out["models"] = None
        elif isinstance(models, list) and all(isinstance(m, str) and m.strip() for m in models):
            out["models"] = [m.strip() for m in models]
        else:
            raise InvalidRequest("models must be a list of model names (patterns) or null")
    if not partial or "enabled" in body:
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidRequest("enabled must be true or false")
        out["enabled"] = enabled
    return out
