"""Routing and the endpoint handlers of the fake upstream.

Owns the decision for every request: which endpoint a method + path (or
``x-amz-target``) names, who the caller is, which rules refuse the request and which
scenario answers it. Handlers are synchronous and return a
:class:`~kiro_fast.testing.replies.Reply`; nothing here touches sockets.

Endpoints (kiro-api.md §2, kiro-auth.md Appendix A), matched on the path's tail so a
base URL may carry any prefix. A prefix ``/<service>/<region>`` (service one of ``q``,
``runtime``, ``oidc``, ``codewhisperer``, ``management``, ``prod``) — or a Host header
``<service>.<region>.…`` — stands for that AWS host: ``runtime`` makes profileArn
mandatory, and the region is the one the OIDC endpoints check registrations against::

    POST /generateAssistantResponse   chat (also POST / with x-amz-target
                                      …GenerateAssistantResponse or …SendMessage)
    POST /mcp                         JSON-RPC web_search
    GET  /getUsageLimits              usage of the caller's account
    GET  /ListAvailableModels         the model catalogue (paged by maxResults/nextToken)
    POST /ListAvailableProfiles       profiles (also listAvailableProfiles)
    POST /refreshToken, POST /logout  social auth service
    POST /token, /client/register, /device_authorization   AWS SSO OIDC
    GET  /health                      liveness

Chat answers come, in this order of precedence, from ``FakeUpstream.enqueue``d
scenarios, a ``[[fake:…]]`` directive in the last user message, the mode's default.
A queued scenario is consumed only by a request that passed authentication and the
request rules.
"""

from __future__ import annotations

import random
import re
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson

from .accounts import Account, Accounts
from .catalog import list_models
from .conversation import DIRECTIVE_MARKER, DirectiveError, read_request
from .replies import CloseReply, DelayedReply, JsonReply, Reply, StreamReply
from .scenarios import (
    BENCH_SCENARIO,
    DEFAULT_SCENARIO,
    ERRORS,
    PACED_BENCH_SCENARIO,
    McpError,
    RenderContext,
    Scenario,
    render,
    web_search_results,
)
from .settings import FakeSettings
from .validation import HostMode, Rule, ValidationFailure, validate_request

CHAT: Final = "generateAssistantResponse"
JSON_CONTENT_TYPES: Final = frozenset({"application/json", "application/x-amz-json-1.0"})

#: awsJson targets served on ``POST /`` (kiro-api.md §2.1, kiro-auth.md §7.6)
TARGETS: Final = {
    "AmazonCodeWhispererStreamingService.GenerateAssistantResponse": CHAT,
    "AmazonQDeveloperStreamingService.SendMessage": CHAT,
    "AmazonCodeWhispererService.ListAvailableProfiles": "ListAvailableProfiles",
    "AmazonCodeWhispererService.ListAvailableModels": "ListAvailableModels",
    "AmazonCodeWhispererService.GetUsageLimits": "getUsageLimits",
}

_SERVICES: Final = "q|runtime|oidc|codewhisperer|management|prod"
_REGION: Final = r"[a-z]{2}(?:-[a-z]+)+-\d+"
_PREFIX_RE: Final = re.compile(rf"/({_SERVICES})/({_REGION})(?=/|$)")
_HOST_RE: Final = re.compile(rf"({_SERVICES})\.({_REGION})\.")

_UNSET: Final = object()


@dataclass(eq=False)
class RecordedRequest:
    """One request as the fake received it, and what became of it."""

    method: str
    path: str
    query: dict[str, str]
    #: lower-case names; repeated headers joined with ", "
    headers: dict[str, str]
    body: bytes
    #: the operation it was routed to, e.g. ``"generateAssistantResponse"``
    endpoint: str = ""
    #: the answer's status; 0 when the connection was closed unanswered
    status: int | None = None
    #: the reason code of a refusal (a :class:`Rule` value, ``bearer``, ``directive``…)
    rule: str | None = None
    #: a human explanation of a validation refusal
    detail: str | None = None
    scenario: Scenario | None = None
    #: write boundaries of a randomly chunked stream (byte offsets into the frames)
    cuts: tuple[int, ...] | None = None
    #: ``pending``, ``complete``, ``stalled``, ``client_gone``, ``closed``
    outcome: str = "pending"
    _json: Any = field(default=_UNSET, repr=False)

    @property
    def json(self) -> Any:
        """The body parsed as JSON (``None`` when it is not JSON)."""
        if self._json is _UNSET:
            try:
                self._json = orjson.loads(self.body) if self.body else None
            except orjson.JSONDecodeError:
                self._json = None
        return self._json


@dataclass(frozen=True, slots=True)
class Target:
    endpoint: str
    service: str | None
    region: str | None


def resolve(path: str, host: str) -> Target:
    """The operation a path names, and the AWS host its prefix (or Host) stands for."""
    service = region = None
    match = _PREFIX_RE.search(path)
    if match:
        service, region = match.groups()
        path = path[match.end() :]
    elif match := _HOST_RE.match(host):
        service, region = match.groups()
    return Target(_tail(path), service, region)


_ENDPOINTS: Final = (
    CHAT,
    "client/register",
    "device_authorization",
    "refreshToken",
    "logout",
    "token",
    "getUsageLimits",
    "ListAvailableModels",
    "ListAvailableProfiles",
    "listAvailableProfiles",
    "mcp",
    "health",
)


def _tail(path: str) -> str:
    path = path.rstrip("/")
    for endpoint in _ENDPOINTS:
        if path == "/" + endpoint or path.endswith("/" + endpoint):
            return endpoint
    return path.lstrip("/")


def parse_query(raw: str) -> dict[str, str]:
    return dict(parse_qsl(raw, keep_blank_values=True))


Handler = Callable[[RecordedRequest, Target], Reply]


class Router:
    """Decides the reply to every request; owns the scenario queues and counters."""

    def __init__(self, settings: FakeSettings, accounts: Accounts) -> None:
        self.settings = settings
        self.accounts = accounts
        #: requests per endpoint name
        self.counts: Counter[str] = Counter()
        self.chat_queue: deque[Scenario] = deque()
        self.mcp_queue: deque[Scenario | McpError] = deque()
        self._chats = 0
        self._routes: dict[str, tuple[str, Handler]] = {
            CHAT: ("POST", self._chat),
            "mcp": ("POST", self._mcp),
            "getUsageLimits": ("GET", self._usage),
            "ListAvailableModels": ("GET", self._models),
            "ListAvailableProfiles": ("POST", self._profiles),
            "listAvailableProfiles": ("POST", self._profiles),
            "refreshToken": ("POST", lambda r, t: accounts.refresh_social(r.json)),
            "logout": ("POST", lambda r, t: accounts.logout(r.json)),
            "token": ("POST", lambda r, t: accounts.oidc_token(r.json, self._region(t))),
            "client/register": (
                "POST",
                lambda r, t: accounts.register_client(r.json, self._region(t)),
            ),
            "device_authorization": (
                "POST",
                lambda r, t: accounts.device_authorization(r.json, self._region(t)),
            ),
            "health": ("GET", lambda r, t: JsonReply.of(200, {"status": "ok"})),
        }

    def handle(self, request: RecordedRequest) -> Reply:
        target = resolve(request.path, request.headers.get("host", ""))
        method = request.method
        if target.endpoint == "" and method == "POST":
            name = TARGETS.get(request.headers.get("x-amz-target", ""))
            if name is None:
                return JsonReply.of(
                    400, {"message": "Unknown operation"}, error_type="UnknownOperationException"
                )
            target = Target(name, target.service, target.region)
            method = self._routes[name][0]
        request.endpoint = target.endpoint
        self.counts[target.endpoint] += 1
        route = self._routes.get(target.endpoint)
        if route is None:
            return JsonReply.of(
                404, {"message": "Not Found"}, error_type="UnknownOperationException"
            )
        if route[0] != method:
            return JsonReply.of(405, {"message": "Method Not Allowed"})
        return route[1](request, target)

    def _region(self, target: Target) -> str:
        return target.region or self.settings.region

    def _host_mode(self, target: Target) -> HostMode:
        if target.service == "runtime":
            return "runtime"
        if target.service in ("q", "codewhisperer"):
            return "q"
        return self.settings.host_mode

    def _caller(self, request: RecordedRequest) -> Account | None:
        headers = request.headers
        account = self.accounts.authenticate(headers.get("authorization"), headers.get("tokentype"))
        if account is None and not self.settings.require_auth:
            return self.accounts.anonymous()
        return account

    @staticmethod
    def _refuse(request: RecordedRequest, reply: JsonReply, detail: str | None = None) -> JsonReply:
        request.rule = reply.rule
        request.detail = detail
        return reply

    # ----------------------------------------------------------------------- chat

    def _chat(self, request: RecordedRequest, target: Target) -> Reply:
        settings = self.settings
        self._chats += 1
        account = self._caller(request)
        if account is None:
            return self._refuse(request, ERRORS["bearer_invalid"].reply("bearer"))
        if settings.validate and not _json_content(request.headers, settings):
            body = {"message": "Unsupported Media Type", "reason": None}
            reply = JsonReply.of(
                415, body, error_type="UnsupportedMediaTypeException", rule="content_type"
            )
            return self._refuse(request, reply)
        if self._benchmark_shortcut(request):
            scenario = PACED_BENCH_SCENARIO if settings.mode == "paced" else BENCH_SCENARIO
            request.scenario = scenario
            return render(scenario, None, self._render_context())
        body = request.json
        refusal = self._check_chat(request, body, account, target)
        if refusal is not None:
            return refusal
        return self._answer(request, body, account)

    def _benchmark_shortcut(self, request: RecordedRequest) -> bool:
        """Benchmark modes without validation answer without reading the body."""
        settings = self.settings
        if settings.mode == "normal" or settings.validate or self.chat_queue:
            return False
        return DIRECTIVE_MARKER not in request.body

    def _check_chat(
        self, request: RecordedRequest, body: Any, account: Account, target: Target
    ) -> JsonReply | None:
        mode = self._host_mode(target)
        failure: ValidationFailure | None = None
        if body is None:
            failure = ValidationFailure(Rule.MALFORMED, "body is not JSON")
        elif self.settings.validate:
            size = len(request.body)
            failure = validate_request(
                body, self.settings.validation, host_mode=mode, raw_size=size
            )
        if failure is not None:
            return self._refuse(request, _failure_reply(failure), failure.detail)
        refusal = self._profile_refusal(body, account, mode) if self.settings.validate else None
        if refusal is not None:
            return self._refuse(request, ERRORS["bearer_invalid"].reply(refusal), refusal)
        if account.suspended:
            return self._refuse(request, ERRORS["suspended"].reply("suspended"))
        if account.usage.enforce_limit and account.usage.remaining() <= 0:
            return self._refuse(request, ERRORS["monthly_limit"].reply("quota"))
        return None

    def _profile_refusal(self, body: Any, account: Account, mode: HostMode) -> str | None:
        """403 rules tying the body's profileArn to the caller (kiro-api.md §9.5)."""
        arn = _object(body).get("profileArn")
        rules = self.settings.validation
        if not arn:
            return None
        if mode == "q" and account.builder_id and rules.enabled(Rule.PROFILE_ARN_BUILDER_ID):
            return Rule.PROFILE_ARN_BUILDER_ID.value
        mismatch = account.profile_arn is not None and arn != account.profile_arn
        if mismatch and rules.enabled(Rule.PROFILE_ARN_MISMATCH):
            return Rule.PROFILE_ARN_MISMATCH.value
        return None

    def _answer(self, request: RecordedRequest, body: Any, account: Account) -> Reply:
        try:
            view = read_request(body)
            scenario = self._scenario(view.directive)
        except DirectiveError as exc:
            body = {"message": f"fake upstream: bad directive: {exc}", "reason": None}
            return self._refuse(request, JsonReply.of(400, body, rule="directive"), str(exc))
        request.scenario = scenario
        answer = render(scenario, view, self._render_context())
        if account.usage.track_chat:
            account.usage.current_usage += _metered(answer)
        return answer

    def _scenario(self, directive: dict[str, Any] | None) -> Scenario:
        if self.chat_queue:
            return self.chat_queue.popleft()
        if directive is not None:
            return Scenario.from_directive(directive)
        mode = self.settings.mode
        if mode == "fast":
            return BENCH_SCENARIO
        return PACED_BENCH_SCENARIO if mode == "paced" else DEFAULT_SCENARIO

    def _render_context(self) -> RenderContext:
        return RenderContext(self.settings, random.Random(f"{self.settings.seed}:{self._chats}"))

    # ----------------------------------------------------------------------- MCP

    def _mcp(self, request: RecordedRequest, target: Target) -> Reply:
        if self._caller(request) is None:
            return self._refuse(request, ERRORS["bearer_invalid"].reply("bearer"))
        scripted = self.mcp_queue.popleft() if self.mcp_queue else None
        if isinstance(scripted, Scenario):
            request.scenario = scripted
            reply = _scenario_failure(scripted)
            if reply is not None:
                return reply
        body = request.json
        if not isinstance(body, dict):
            return ERRORS["improperly_formed"].reply(Rule.MALFORMED.value)
        if isinstance(scripted, McpError):
            return _rpc_error(body.get("id"), scripted)
        return self._web_search(body)

    def _web_search(self, body: dict[str, Any]) -> JsonReply:
        rpc_id = body.get("id")
        params = _object(body.get("params"))
        query = _object(params.get("arguments")).get("query")
        if body.get("method") != "tools/call":
            return _rpc_error(rpc_id, McpError(-32601, "Method not found"))
        if params.get("name") != "web_search":
            return _rpc_error(rpc_id, McpError(-32602, f"Unknown tool: {params.get('name')}"))
        if not isinstance(query, str) or not query.strip():
            return _rpc_error(rpc_id, McpError(-32602, "Invalid params: query is required"))
        results = web_search_results(query, self.settings.mcp_result_count)
        payload = {"error": None, "query": query, "results": results, "totalResults": len(results)}
        text = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
        result = {"content": [{"text": text, "type": "text"}], "isError": False}
        return JsonReply.of(200, {"error": None, "id": rpc_id, "jsonrpc": "2.0", "result": result})

    # ----------------------------------------------------------------------- account data

    def _usage(self, request: RecordedRequest, target: Target) -> Reply:
        account = self._caller(request)
        if account is None:
            return self._refuse(request, ERRORS["bearer_invalid"].reply("bearer"))
        if account.suspended:
            return self._refuse(request, ERRORS["suspended"].reply("suspended"))
        return JsonReply.of(200, self.accounts.usage_limits(account))

    def _models(self, request: RecordedRequest, target: Target) -> Reply:
        if self._caller(request) is None:
            return self._refuse(request, ERRORS["bearer_invalid"].reply("bearer"))
        params = _params(request)
        size = params.get("maxResults", "")
        page = list_models(int(size) if size.isdigit() else None, params.get("nextToken"))
        return JsonReply.of(200, page)

    def _profiles(self, request: RecordedRequest, target: Target) -> Reply:
        account = self._caller(request)
        if account is None:
            return self._refuse(request, ERRORS["bearer_invalid"].reply("bearer"))
        return JsonReply.of(200, {"nextToken": None, "profiles": self.accounts.profiles(account)})


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_content(headers: dict[str, str], settings: FakeSettings) -> bool:
    if not settings.validation.enabled(Rule.CONTENT_TYPE):
        return True
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return content_type in JSON_CONTENT_TYPES


def _failure_reply(failure: ValidationFailure) -> JsonReply:
    return JsonReply.of(
        failure.status, failure.body(), error_type=failure.error_type, rule=failure.rule.value
    )


def _metered(reply: Reply) -> float:
    while isinstance(reply, DelayedReply):
        reply = reply.then
    return reply.metered if isinstance(reply, StreamReply) else 0.0


def _scenario_failure(scenario: Scenario) -> Reply | None:
    """The non-stream part of a scenario: an HTTP error, a reset, delayed headers."""
    error = scenario.http_error()
    reply: Reply | None = error.reply() if error else CloseReply() if scenario.reset else None
    if reply is not None and scenario.headers_delay_ms > 0:
        return DelayedReply(scenario.headers_delay_ms, reply)
    return reply


def _rpc_error(rpc_id: Any, error: McpError) -> JsonReply:
    body = {"error": {"code": error.code, "message": error.message}, "id": rpc_id, "jsonrpc": "2.0"}
    return JsonReply.of(200, body)


def _params(request: RecordedRequest) -> dict[str, str]:
    """Query parameters, or the JSON body's string fields for an awsJson call."""
    if request.query or request.method == "GET":
        return request.query
    body = request.json
    if not isinstance(body, dict):
        return {}
    return {k: str(v) for k, v in body.items() if isinstance(v, str | int)}
