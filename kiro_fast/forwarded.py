"""Which address a request really came from when reverse proxies stand in between.

What this module owns:

* The trusted-proxy list (config ``trustedProxies``: IP addresses and CIDR networks) and
  :func:`client_address`, which turns a TCP peer and the request's headers into the
  address of the client.

Strategy:

* A forwarded address is believed only when the TCP peer is a trusted proxy. Anyone can
  send ``X-Forwarded-For``; only a proxy we trust appends a true hop to it.
* ``X-Forwarded-For`` is walked right to left, skipping hops that are themselves trusted
  (a chain of our own proxies); the first untrusted hop is the client (nginx's
  ``real_ip_recursive on``). ``X-Real-IP`` is used only when no ``X-Forwarded-For`` came.
  An entry that is not an IP address stops the walk at the last hop that vouched for it.
* The result is always an address this module parsed and printed itself, never header
  text, so it is safe to put in a log line.
* The list is process-wide (:func:`configure`, called when a runtime starts): which
  proxies stand in front of a process is a property of the deployment, not of a request.
  With the default empty list :func:`client_address` returns the peer without parsing
  anything.

This module knows nothing about sockets, h11, the config file or the application.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "Network",
    "client_address",
    "configure",
    "is_trusted",
    "parse_networks",
    "trusted_networks",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Headers = Sequence[tuple[bytes, bytes]]

#: A forwarded chain longer than this is not from proxies we run; the walk stops there
#: (bounds the per-request work a client can cause with a huge header).
MAX_HOPS: Final = 32

_XFF: Final = b"x-forwarded-for"
_REAL_IP: Final = b"x-real-ip"

_trusted: tuple[Network, ...] = ()


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """IP addresses and CIDR networks (``10.0.0.0/8``, ``::1``) as networks.

    Raises:
        ValueError: an entry is neither; the message names it.
    """
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR network: {entry!r}") from None
    return tuple(networks)


def configure(entries: Iterable[str]) -> None:
    """Make ``entries`` the process-wide trusted proxies (an empty list trusts nobody)."""
    global _trusted
    _trusted = parse_networks(entries)


def trusted_networks() -> tuple[Network, ...]:
    """The trusted proxies now in force."""
    return _trusted


def is_trusted(address: str, networks: Sequence[Network] | None = None) -> bool:
    """Whether ``address`` (an IP as text) is inside one of the trusted networks."""
    parsed = _parse(address)
    return parsed is not None and _within(parsed, _trusted if networks is None else networks)


def client_address(peer: str, headers: Headers, networks: Sequence[Network] | None = None) -> str:
    """The client's address: ``peer``, or what a trusted proxy said it forwarded for."""
    trusted = _trusted if networks is None else networks
    if not trusted:
        return peer
    hop = _parse(peer)
    if hop is None or not _within(hop, trusted):
        return peer
    chain = _header_values(headers, _XFF)
    if chain is None:
        real = _header_values(headers, _REAL_IP)
        if real is None:
            return peer
        chain = real[-1:]
    for entry in reversed(chain[-MAX_HOPS:]):
        address = _parse(entry)
        if address is None:
            break
        hop = address
        if not _within(hop, trusted):
            break
    return str(hop)


def _header_values(headers: Headers, name: bytes) -> list[str] | None:
    """Comma-separated values of every ``name`` header, in order, or None if absent."""
    values: list[str] | None = None
    for key, value in headers:
        if key == name:
            if values is None:
                values = []
            values.extend(part.strip() for part in value.decode("latin-1").split(","))
    return values


def _parse(text: str) -> Address | None:
    """An address from ``1.2.3.4``, ``1.2.3.4:80``, ``::1`` or ``[::1]:80``; else None."""
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener sees IPv4 clients this way
    return address


def _within(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)
