"""Client addresses behind reverse proxies: X-Forwarded-For is believed only from trusted ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from kiro_fast import forwarded
from kiro_fast.config import build_config
from kiro_fast.errors import ConfigError
from kiro_fast.forwarded import client_address, is_trusted, parse_networks
from kiro_fast.protocol import Exchange, Request, ServerOptions
from kiro_fast.server import Server

LOOPBACK = parse_networks(["127.0.0.1"])
PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1", "::1"])


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", v.encode()) for v in values]


@pytest.fixture
def trust_reset() -> Iterator[None]:
    """The trusted list is process-wide: leave it empty for the next test."""
    yield
    forwarded.configure(())


def test_nobody_is_trusted_by_default(trust_reset: None) -> None:
    forwarded.configure(build_config({}, environ={}).trusted_proxies)
    assert forwarded.trusted_networks() == ()
    assert client_address("127.0.0.1", xff("198.51.100.7")) == "127.0.0.1"


def test_an_untrusted_peer_cannot_claim_another_address() -> None:
    assert client_address("192.0.2.50", xff("198.51.100.7"), PROXIES) == "192.0.2.50"
    assert client_address("192.0.2.50", [(b"x-real-ip", b"198.51.100.7")], PROXIES) == (
        "192.0.2.50"
    )


def test_a_trusted_proxy_names_the_client() -> None:
    assert client_address("127.0.0.1", xff("198.51.100.7"), LOOPBACK) == "198.51.100.7"


def test_the_walk_skips_our_proxies_and_ignores_what_the_client_made_up() -> None:
    # client-supplied "1.1.1.1", the real client, then our own inner proxy 10.1.2.3
    chain = xff("1.1.1.1, 203.0.113.9, 10.1.2.3")
    assert client_address("127.0.0.1", chain, PROXIES) == "203.0.113.9"


def test_several_headers_are_one_list_in_order() -> None:
    chain = xff("1.1.1.1", "203.0.113.9, 10.1.2.3")
    assert client_address("127.0.0.1", chain, PROXIES) == "203.0.113.9"


def test_a_chain_of_trusted_hops_only_gives_the_first_of_them() -> None:
    assert client_address("127.0.0.1", xff("10.0.0.5, 10.0.0.6"), PROXIES) == "10.0.0.5"


def test_real_ip_is_used_only_without_forwarded_for() -> None:
    headers = [(b"x-real-ip", b"198.51.100.7")]
    assert client_address("127.0.0.1", headers, LOOPBACK) == "198.51.100.7"
    headers.append((b"x-forwarded-for", b"203.0.113.9"))
    assert client_address("127.0.0.1", headers, LOOPBACK) == "203.0.113.9"


def test_garbage_stops_the_walk_at_the_hop_that_vouched_for_it() -> None:
    assert client_address("127.0.0.1", xff("unknown"), LOOPBACK) == "127.0.0.1"
    assert client_address("127.0.0.1", xff("203.0.113.9, 10.0.0.1\r\nx"), PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", xff("203.0.113.9, 10.0.0.1, evil"), PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", xff(""), LOOPBACK) == "127.0.0.1"


def test_ports_brackets_and_mapped_addresses() -> None:
    assert client_address("127.0.0.1", xff("198.51.100.7:5555"), LOOPBACK) == "198.51.100.7"
    assert client_address("127.0.0.1", xff("[2001:db8::7]:443"), LOOPBACK) == "2001:db8::7"
    assert client_address("127.0.0.1", xff("2001:DB8::7"), LOOPBACK) == "2001:db8::7"
    # a dual-stack listener reports IPv4 peers as IPv4-mapped IPv6 addresses
    assert client_address("::ffff:127.0.0.1", xff("198.51.100.7"), LOOPBACK) == "198.51.100.7"
    assert is_trusted("::1", PROXIES) and is_trusted("10.200.0.1", PROXIES)
    assert not is_trusted("11.0.0.1", PROXIES) and not is_trusted("-", PROXIES)


def test_the_peer_is_returned_unparsed_when_nothing_is_trusted() -> None:
    assert client_address("-", xff("198.51.100.7"), ()) == "-"
    assert client_address("-", xff("198.51.100.7"), LOOPBACK) == "-"


def test_a_very_long_chain_is_cut() -> None:
    chain = xff(", ".join(["10.0.0.1"] * 500 + ["203.0.113.9"] + ["10.0.0.2"] * 10))
    assert client_address("127.0.0.1", chain, PROXIES) == "203.0.113.9"
    only_ours = xff(", ".join(["203.0.113.9"] + ["10.0.0.2"] * 100))
    # beyond MAX_HOPS the walk stops at the last hop it checked
    assert client_address("127.0.0.1", only_ours, PROXIES) == "10.0.0.2"


def test_bad_entries_are_named() -> None:
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        parse_networks(["10.0.0.300"])
    assert [str(n) for n in parse_networks(["10.1.2.3/8", " ::1 "])] == ["10.0.0.0/8", "::1/128"]


def test_trusted_proxies_config_key_and_environment() -> None:
    assert build_config({}, environ={}).trusted_proxies == ()
    config = build_config({"trustedProxies": ["127.0.0.1", "10.0.0.0/8"]}, environ={})
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    env = {"KIRO_FAST_TRUSTED_PROXIES": "127.0.0.1, ::1"}
    assert build_config({}, environ=env).trusted_proxies == ("127.0.0.1", "::1")
    with pytest.raises(ConfigError, match="trustedProxies.*'localhost'"):
        build_config({"trustedProxies": ["localhost"]}, environ={})
    with pytest.raises(ConfigError, match="trustedProxies"):
        build_config({"trustedProxies": 5}, environ={})


# --------------------------------------------------------------------------- the access line


async def _app(request: Request, exchange: Exchange) -> None:
    exchange.send(200, [(b"content-type", b"text/plain")], b"ok")


async def _serve_one(headers: bytes) -> None:
    server = Server(_app, ServerOptions(access_log=True))
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n" + headers + b"Connection: close\r\n\r\n")
        await asyncio.wait_for(reader.read(), 10)  # the server closes after answering
        writer.close()
    finally:
        await server.shutdown(5)


def _access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kiro_fast.access"]


def test_access_line_shows_the_forwarded_client_behind_a_trusted_proxy(
    caplog: pytest.LogCaptureFixture, trust_reset: None
) -> None:
    forwarded.configure(["127.0.0.1"])
    with caplog.at_level(logging.INFO, logger="kiro_fast.access"):
        asyncio.run(_serve_one(b"X-Forwarded-For: 198.51.100.7\r\n"))
    (record,) = _access_records(caplog)
    assert record.getMessage() == '198.51.100.7 "GET /x" 200 via 127.0.0.1'
    assert record.client == "198.51.100.7"  # type: ignore[attr-defined]


def test_access_line_ignores_forwarded_for_from_an_untrusted_peer(
    caplog: pytest.LogCaptureFixture, trust_reset: None
) -> None:
    forwarded.configure(["10.0.0.0/8"])
    with caplog.at_level(logging.INFO, logger="kiro_fast.access"):
        asyncio.run(_serve_one(b"X-Forwarded-For: 198.51.100.7\r\n"))
    (record,) = _access_records(caplog)
    assert record.getMessage() == '127.0.0.1 "GET /x" 200'
    assert record.client == "127.0.0.1"  # type: ignore[attr-defined]
