"""The upstream client: the process's aiohttp sessions and every call to Kiro's hosts.

What this module owns:

* One ``aiohttp.ClientSession`` for direct calls for the life of the process
  (keep-alive pooling, ``TCPConnector(limit=0)``, long keep-alive, ``auto_decompress``
  off, 64 KiB read buffer — performance-notes §3.5), plus one session per SOCKS proxy
  (aiohttp only speaks HTTP proxies natively).
* Outbound proxies (kiro-auth.md §11): the credential's ``proxyUrl`` (``direct`` opts out)
  or the global one, with separate username/password fields; ``http://``/``https://``
  go through aiohttp's own proxy support (CONNECT for TLS, ``Proxy-Authorization``),
  ``socks4://``/``socks5://``/``socks5h://`` through aiohttp-socks. Every call — chat,
  token refresh, usage — picks its route here, so all of them take the same proxy.
* The request headers of spec kiro-api.md §3 (user agents with Kiro version, machine id,
  OS and node version).
* Mapping foreign exceptions: every aiohttp / OS / timeout error becomes an
  :class:`UpstreamError` subclass here, once, with the original as ``__cause__``; a
  non-200 answer becomes :func:`upstream_errors.classify`'s error.

* Runtime settings (:mod:`kiro_fast.live_settings`): :meth:`UpstreamClient.apply_config`
  swaps the identity, proxy and timeouts; timeouts go with each request, so the next
  call uses the new values without new sessions.
* One shim over an aiohttp internal, guarded by the aiohttp versions it was checked
  against (:func:`install_resume_shim`: no no-op ``resume_reading`` per HTTP chunk).

Which credential to use and whether to retry is decided by the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp
from multidict import istr

from .config import Config, render_base
from .convert import random_uuid
from .credentials import Credential, derive_machine_id
from .errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .upstream_errors import MAX_ERROR_BODY, classify

log = logging.getLogger("kiro_fast.upstream")

#: A stalled client may hold this much of a stream inside aiohttp (it pauses the
#: socket at twice the buffer); the 256 KiB default would let it hold 512 KiB.
READ_BUFSIZE: Final = 64 * 1024
#: Keep idle upstream connections well past aiohttp's 15 s default, so bursts reuse them.
KEEPALIVE_TIMEOUT: Final = 120.0
#: SDK version strings kiro.rs sends (spec §3, §2.5).
STREAMING_SDK: Final = "1.0.34"
RUNTIME_SDK: Final = "1.0.0"
OIDC_SDK: Final = "3.980.0"
# Chat header names as multidict ``istr``s made once: aiohttp keeps every request's
# headers in a CIMultiDict for the life of its response, and from plain ``str`` names it
# would make a case-folded copy of each, per request (about 0.9 KB per open stream).
_CONTENT_TYPE: Final = istr("content-type")
_AUTHORIZATION: Final = istr("authorization")
_OPTOUT: Final = istr("x-amzn-codewhisperer-optout")
_AGENT_MODE: Final = istr("x-amzn-kiro-agent-mode")
_AMZ_USER_AGENT: Final = istr("x-amz-user-agent")
_USER_AGENT: Final = istr("user-agent")
_INVOCATION_ID: Final = istr("amz-sdk-invocation-id")
_SDK_REQUEST: Final = istr("amz-sdk-request")
_TOKEN_TYPE: Final = istr("tokentype")
#: Machine ids whose chat user-agent strings are kept (one per credential in use).
AGENT_CACHE_MAX: Final = 4_096


@dataclass(frozen=True, slots=True)
class Identity:
    """What the user agents say about the client we pose as."""

    kiro_version: str
    system_version: str
    node_version: str
    global_machine_id: str | None


@dataclass(frozen=True, slots=True)
class _Route:
    """How calls for one proxy setting travel: the session (one per SOCKS proxy) and the
    per-request arguments (HTTP proxies: the URL, and ``Proxy-Authorization`` for the
    ``CONNECT`` that tunnels HTTPS). ``plain_auth`` is that header for plain ``http://``
    targets, where aiohttp sends no proxy headers of its own (only tests and demos point
    kiro_fast at plain HTTP; the header then goes to the proxy in clear, as HTTP does)."""

    socks_url: str | None
    kwargs: Mapping[str, Any]
    plain_auth: str | None = None


def _make_route(url: str | None, user: str | None, password: str | None) -> _Route:
    if not url:
        return _Route(None, {})
    parts = urlsplit(url)
    if parts.username is not None:  # credentials written into the URL win
        user, password = unquote(parts.username), unquote(parts.password or "")
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    if parts.scheme.lower().startswith("socks"):
        netloc = parts.netloc
        if user and password:
            netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{netloc}"
        return _Route(urlunsplit(parts._replace(netloc=netloc)), {})
    kwargs: dict[str, Any] = {"proxy": urlunsplit(parts)}
    if not (user and password):  # kiro.rs: basic auth only when both are set
        return _Route(None, kwargs)
    auth = aiohttp.encode_basic_auth(user, password)
    kwargs["proxy_headers"] = {"Proxy-Authorization": auth}
    return _Route(None, kwargs, auth)


def _proxy_for(
    cred: Credential | None, config: Config
) -> tuple[str | None, str | None, str | None]:
    """(url, user, password): the credential's proxy, ``direct`` opting out of the global one."""
    if cred is not None and cred.proxy_url:
        if cred.proxy_url.lower() == "direct":
            return None, None, None
        return cred.proxy_url, cred.proxy_username, cred.proxy_password
    return config.proxy_url, config.proxy_username, config.proxy_password


class UpstreamClient:
    """Calls to the Kiro API, auth and OIDC hosts through pooled aiohttp sessions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.identity = Identity(
            config.kiro_version, config.system_version, config.node_version, config.machine_id
        )
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}
        self._routes: dict[tuple[str | None, str | None, str | None], _Route] = {}
        #: aiohttp-socks' own exception classes, once a SOCKS session exists
        self._proxy_errors: tuple[type[Exception], ...] = ()
        self._timeout = _client_timeout(config)
        self._timeout_no_read = _client_timeout(config, sock_read=False)
        #: machine id -> (the identity they were made for, (x-amz-user-agent, user-agent))
        self._agents: dict[str, tuple[Identity, tuple[str, str]]] = {}

    def apply_config(self, config: Config) -> None:
        """Take changed runtime settings (:mod:`kiro_fast.live_settings`): identity, proxy,
        timeouts. Calls already under way finish with the settings they started with."""
        self.config = config
        self.identity = Identity(
            config.kiro_version,
            config.system_version,
            config.node_version,
            self.identity.global_machine_id,
        )
        self._timeout = _client_timeout(config)
        self._timeout_no_read = _client_timeout(config, sock_read=False)

    @property
    def idle_timeout(self) -> float:
        """``streamIdleTimeout``: the longest upstream silence inside a response."""
        return self.config.stream_idle_timeout

    # ------------------------------------------------------------------ sessions

    def _session(self, proxy_url: str | None) -> aiohttp.ClientSession:
        key = proxy_url if proxy_url and proxy_url.lower().startswith("socks") else None
        session = self._sessions.get(key)
        if session is None or session.closed:
            session = self._new_session(key)
            self._sessions[key] = session
        return session

    def _new_session(self, socks_url: str | None) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector
        if socks_url:
            import aiohttp_socks  # noqa: PLC0415 - only needed with a SOCKS proxy

            self._proxy_errors = (
                aiohttp_socks.ProxyError,
                aiohttp_socks.ProxyConnectionError,
                aiohttp_socks.ProxyTimeoutError,
            )

            # socks5h: the proxy resolves host names (python-socks spells it rdns).
            remote_dns = socks_url.lower().startswith("socks5h://")
            if remote_dns:
                socks_url = "socks5://" + socks_url.split("://", 1)[1]
            connector = aiohttp_socks.ProxyConnector.from_url(
                socks_url, limit=0, keepalive_timeout=KEEPALIVE_TIMEOUT, rdns=remote_dns
            )
        else:
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=KEEPALIVE_TIMEOUT, enable_cleanup_closed=False
            )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            read_bufsize=READ_BUFSIZE,
            skip_auto_headers=("User-Agent", "Content-Type"),
        )

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    # ------------------------------------------------------------------ URLs and headers

    def api_base(self, cred: Credential) -> str:
        return render_base(
            self.config.kiro_api_base, cred.api_region_for(self.config.effective_api_region())
        )

    def auth_base(self, cred: Credential) -> str:
        return render_base(
            self.config.kiro_auth_base, cred.auth_region_for(self.config.effective_auth_region())
        )

    def oidc_base(self, cred: Credential) -> str:
        return render_base(
            self.config.oidc_base, cred.auth_region_for(self.config.effective_auth_region())
        )

    def machine_id(self, cred: Credential) -> str:
        if not cred.machine_id:
            cred.machine_id = derive_machine_id(cred, self.identity.global_machine_id)
        return cred.machine_id

    def _chat_agents(self, cred: Credential) -> tuple[str, str]:
        """The two user-agent values of chat calls, made once per identity and machine id:
        every open stream's request headers then share them instead of holding copies."""
        ident = self.identity
        machine_id = self.machine_id(cred)
        cached = self._agents.get(machine_id)
        if cached is not None and cached[0] is ident:
            return cached[1]
        suffix = f"KiroIDE-{ident.kiro_version}-{machine_id}"
        agents = (
            f"aws-sdk-js/{STREAMING_SDK} {suffix}",
            f"aws-sdk-js/{STREAMING_SDK} ua/2.1 os/{ident.system_version} lang/js "
            f"md/nodejs#{ident.node_version} "
            f"api/codewhispererstreaming#{STREAMING_SDK} m/E {suffix}",
        )
        if len(self._agents) >= AGENT_CACHE_MAX:
            self._agents.clear()
        self._agents[machine_id] = (ident, agents)
        return agents

    def chat_headers(self, cred: Credential) -> dict[str, str]:
        amz_agent, agent = self._chat_agents(cred)
        headers: dict[str, str] = {
            _CONTENT_TYPE: "application/json",
            _AUTHORIZATION: "Bearer " + cred.bearer(),
            _OPTOUT: "true",
            _AGENT_MODE: "vibe",
            _AMZ_USER_AGENT: amz_agent,
            _USER_AGENT: agent,
            _INVOCATION_ID: random_uuid(),
            _SDK_REQUEST: "attempt=1; max=3",
        }
        if cred.is_api_key:
            headers[_TOKEN_TYPE] = "API_KEY"
        return headers

    def runtime_headers(self, cred: Credential) -> dict[str, str]:
        ident = self.identity
        suffix = f"KiroIDE-{ident.kiro_version}-{self.machine_id(cred)}"
        headers = {
            "authorization": "Bearer " + cred.bearer(),
            "x-amz-user-agent": f"aws-sdk-js/{RUNTIME_SDK} {suffix}",
            "user-agent": (
                f"aws-sdk-js/{RUNTIME_SDK} ua/2.1 os/{ident.system_version} lang/js "
                f"md/nodejs#{ident.node_version} "
                f"api/codewhispererruntime#{RUNTIME_SDK} m/N,E {suffix}"
            ),
            "amz-sdk-invocation-id": random_uuid(),
            "amz-sdk-request": "attempt=1; max=1",
        }
        if cred.is_api_key:
            headers["tokentype"] = "API_KEY"
        return headers

    # ------------------------------------------------------------------ chat

    def _route(self, cred: Credential | None) -> _Route:
        key = _proxy_for(cred, self.config)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = _make_route(*key)
        return route

    def _request_kwargs(
        self, cred: Credential | None, url: str, headers: dict[str, str]
    ) -> Mapping[str, Any]:
        """Proxy arguments for one call (adds the proxy's auth header for plain HTTP)."""
        route = self._route(cred)
        if route.plain_auth is not None and url.startswith("http://"):
            headers["Proxy-Authorization"] = route.plain_auth
        return route.kwargs

    def _session_for(self, cred: Credential | None) -> aiohttp.ClientSession:
        return self._session(self._route(cred).socks_url)

    def _proxy_error(self, exc: Exception) -> UpstreamError | None:
        """A SOCKS proxy's failure as an upstream error (``None``: not one of those)."""
        if not isinstance(exc, self._proxy_errors):
            return None
        if "Timeout" in type(exc).__name__:
            return UpstreamTimeout("the SOCKS proxy did not answer in time")
        return UpstreamUnavailable(f"the SOCKS proxy failed: {exc}")

    async def open_chat(
        self, cred: Credential, body: bytes, first_byte_timeout: float, *, sock_read: bool = True
    ) -> aiohttp.ClientResponse:
        """POST ``generateAssistantResponse``; return the response once it answered 200.

        The caller reads it with ``response.content.iter_any()`` and must release it.
        ``sock_read=False``: the caller enforces :attr:`idle_timeout` on the body itself
        (aiohttp's ``sock_read`` re-arms a timer on every read); the wait for the answer's
        head is bounded by it all the same.

        Raises:
            UpstreamStatusError: a non-200 answer (already classified).
            UpstreamTimeout / UpstreamUnavailable: no answer in time, or no connection.
        """
        url = self.api_base(cred) + "/generateAssistantResponse"
        session = self._session_for(cred)
        headers = self.chat_headers(cred)
        proxy = self._request_kwargs(cred, url, headers)
        timeout, head_limit = self._timeout, first_byte_timeout
        if not sock_read:
            timeout = self._timeout_no_read
            head_limit = min(first_byte_timeout, self.config.stream_idle_timeout)
        try:
            async with asyncio.timeout(head_limit):
                response = await session.post(
                    url, data=body, headers=headers, timeout=timeout, **proxy
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"no answer from upstream within {first_byte_timeout:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise _map_client_error(exc) from exc
        except OSError as exc:
            raise UpstreamUnavailable(f"upstream connection failed: {exc.strerror or exc}") from exc
        except Exception as exc:
            mapped = self._proxy_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        if response.status != 200:
            try:
                payload = await _read_error_body(response)
            finally:
                response.release()
            raise classify(
                response.status, payload, {k.lower(): v for k, v in response.headers.items()}
            )
        return response

    # ------------------------------------------------------------------ JSON calls

    async def call_json(
        self,
        method: str,
        url: str,
        *,
        cred: Credential | None,
        headers: Mapping[str, str],
        json_body: Any = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """A small JSON request (refresh, usage, models, MCP): (status, body bytes).

        Network failures and timeouts raise the mapped :class:`UpstreamError`.
        """
        session = self._session_for(cred)
        import orjson  # noqa: PLC0415 - kept local: the hot path never calls this

        data = orjson.dumps(json_body) if json_body is not None else None
        call_headers = dict(headers)
        proxy = self._request_kwargs(cred, url, call_headers)
        try:
            async with asyncio.timeout(timeout or self.config.first_byte_timeout):
                async with session.request(
                    method, url, data=data, headers=call_headers, timeout=self._timeout, **proxy
                ) as response:
                    return response.status, await response.content.read(1024 * 1024)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{_host(url)} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise _map_client_error(exc) from exc
        except OSError as exc:
            raise UpstreamUnavailable(
                f"{_host(url)}: connection failed: {exc.strerror or exc}"
            ) from exc
        except Exception as exc:
            mapped = self._proxy_error(exc)
            if mapped is None:
                raise
            raise mapped from exc


def _client_timeout(config: Config, *, sock_read: bool = True) -> aiohttp.ClientTimeout:
    """Per-request timeouts (passed with each call, so a settings change applies at once)."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=config.connect_timeout,
        sock_connect=config.connect_timeout,
        sock_read=config.stream_idle_timeout if sock_read else None,
    )


async def _read_error_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.content.read(MAX_ERROR_BODY)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return b""


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _map_client_error(exc: aiohttp.ClientError) -> UpstreamError:
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return UpstreamUnavailable(f"the HTTP proxy answered {exc.status}")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"upstream timed out: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"cannot connect to upstream {exc.host}:{exc.port}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamUnavailable("upstream stream broke off")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return UpstreamUnavailable("upstream closed the connection")
    return UpstreamUnavailable(f"upstream request failed: {type(exc).__name__}")


async def iter_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Yield what each upstream read brought, with aiohttp errors mapped.

    ``sock_read`` on the session is the inter-chunk (idle) timeout.
    """
    content = response.content
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                return
            yield chunk
    except TimeoutError as exc:
        raise UpstreamTimeout("upstream went silent mid-stream") from exc
    except aiohttp.ClientError as exc:
        raise _map_client_error(exc) from exc
    except OSError as exc:
        raise UpstreamUnavailable("upstream stream broke off") from exc


# --------------------------------------------------------------------------- aiohttp shim

#: aiohttp releases whose client read path was checked for :func:`install_resume_shim`.
RESUME_SHIM_VERSIONS: Final = frozenset({"3.14.5"})
_SHIM_MARK: Final = "_kiro_fast_resume_shim"


def install_resume_shim() -> bool:
    """Skip aiohttp's no-op ``resume_reading`` on client connections; True if installed.

    aiohttp 3.14's ``StreamReader._read_nowait_chunk`` calls ``protocol.resume_reading()``
    for every chunk it hands out while its buffer is below the low-water mark, paused or
    not. On a client connection that re-enters ``data_received(b"")``, feeds the parser
    nothing and resumes a transport that is reading anyway: about 1 µs per chunk, and Kiro
    sends one event per HTTP chunk (~10 % of a fast stream's CPU). Input is held back
    only while the protocol is paused (``_reading_paused``, or ``_buffer_paused`` for an
    upgrade's tail), so with neither flag set the call has nothing to do and the shim
    returns; otherwise aiohttp's own method runs.

    Installed only on the aiohttp versions it was checked against; any other version
    runs unpatched (slower, same behaviour). ``tests/test_upstream_shim.py`` fails when
    aiohttp changes the behaviour this relies on or fixes the call itself.
    """
    if aiohttp.__version__ not in RESUME_SHIM_VERSIONS:
        return False
    from aiohttp.client_proto import ResponseHandler  # noqa: PLC0415 - only for the shim

    original = ResponseHandler.resume_reading
    if getattr(original, _SHIM_MARK, False):
        return True

    def resume_reading(self: ResponseHandler, resume_parser: bool = True) -> None:
        if self._reading_paused or self._buffer_paused:
            original(self, resume_parser)

    setattr(resume_reading, _SHIM_MARK, True)
    resume_reading.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(ResponseHandler, "resume_reading", resume_reading)  # noqa: B010 - mypy: a method
    return True


RESUME_SHIM: Final = install_resume_shim()
