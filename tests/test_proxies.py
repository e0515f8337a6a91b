"""Outbound proxies (kiro-auth.md §11): HTTP and SOCKS5 with username/password, global or
per credential (``direct`` opts out), used by chat, token refresh and usage calls alike.

The proxies are the tiny loopback servers of ``proxy_servers``; they keep the bytes they
relay, so each test proves the three kinds of request crossed the proxy (or did not).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pool_helpers import arun, refresh_token, stack
from proxy_servers import HttpProxy, Socks5Proxy

from kiro_fast.credentials import Credential

ENDPOINTS = (b"/refreshToken", b"/getUsageLimits", b"/generateAssistantResponse")


def login(fake: Any, **fields: Any) -> list[Credential]:
    """One social account with no access token yet, so the first request refreshes."""
    fake.accounts.add_social(refresh_token("proxied"))
    return [
        Credential(id=1, auth_method="social", refresh_token=refresh_token("proxied"), **fields)
    ]


async def chat_refresh_and_usage(s: Any) -> None:
    status, _, body = await s.ask()
    assert status == 200, body
    await s.pool.usage(s.pool.credentials[0], force=True)
    assert {"refreshToken", "getUsageLimits", "generateAssistantResponse"} <= {
        r.endpoint for r in s.fake.requests
    }


@pytest.mark.parametrize("kind", [HttpProxy, Socks5Proxy])
@arun
async def test_every_call_goes_through_the_global_proxy_with_credentials(kind: type) -> None:
    async with kind("alice", "s3cret: !") as proxy:
        config = {"proxyUrl": proxy.url, "proxyUsername": "alice", "proxyPassword": "s3cret: !"}
        async with stack(login, config=config) as s:
            await chat_refresh_and_usage(s)
        assert proxy.connections >= 1
        assert proxy.auth_failures == 0
        for endpoint in ENDPOINTS:
            assert endpoint in proxy.client_bytes, endpoint


@pytest.mark.parametrize("kind", [HttpProxy, Socks5Proxy])
@arun
async def test_a_credential_proxy_replaces_the_global_one(kind: type) -> None:
    async with HttpProxy() as global_proxy, kind("bob", "pw") as own:

        def credential(fake: Any) -> list[Credential]:
            return login(fake, proxy_url=own.url, proxy_username="bob", proxy_password="pw")

        async with stack(credential, config={"proxyUrl": global_proxy.url}) as s:
            await chat_refresh_and_usage(s)
        assert global_proxy.connections == 0
        for endpoint in ENDPOINTS:
            assert endpoint in own.client_bytes, endpoint


@arun
async def test_direct_opts_a_credential_out_of_the_global_proxy() -> None:
    async with HttpProxy() as proxy:
        async with stack(
            lambda fake: login(fake, proxy_url="direct"), config={"proxyUrl": proxy.url}
        ) as s:
            await chat_refresh_and_usage(s)
        assert proxy.connections == 0
        assert proxy.client_bytes == b""


@pytest.mark.parametrize("kind", [HttpProxy, Socks5Proxy])
@arun
async def test_a_wrong_proxy_password_fails_cleanly_and_never_reaches_upstream(kind: type) -> None:
    async with kind("alice", "right") as proxy:
        config = {"proxyUrl": proxy.url, "proxyUsername": "alice", "proxyPassword": "wrong"}
        async with stack(login, config=config) as s:
            status, _, body = await s.ask()
            assert status in (429, 502, 529), body
            assert body["type"] == "error"
            assert s.fake.requests == []
        assert proxy.auth_failures >= 1
        assert proxy.connections == 0


@arun
async def test_the_http_proxy_also_tunnels_connect() -> None:
    """kiro_fast's real upstream is HTTPS, which aiohttp reaches through CONNECT."""
    async with stack(login) as s, HttpProxy("u", "p") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(
            f"CONNECT 127.0.0.1:{s.fake.port} HTTP/1.1\r\n"
            "Proxy-Authorization: Basic dTpw\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"GET /health HTTP/1.1\r\nhost: fake\r\nconnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200") and b'"ok"' in answer
        assert proxy.targets == [("127.0.0.1", s.fake.port)]
