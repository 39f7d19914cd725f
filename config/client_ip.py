"""The address of the client behind a request: the one definition every rate limit, lockout and log line uses.

REMOTE_ADDR is the peer of the TCP connection. Behind a load balancer or reverse proxy that is the proxy, so all
clients would share one address (one client's bad requests would lock everyone out). The proxy appends the
address it saw to X-Forwarded-For; but anyone can send that header, so it is believed only when the connection
comes from a proxy listed in TRUSTED_PROXIES (CIDRs), and only as far as the chain of trusted proxies goes:
walking the header from the right, each trusted hop is skipped, and the first address that is not a trusted proxy
is the client. Whatever lies left of it was written by the client itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"


@lru_cache(maxsize=8)
def trusted_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """TRUSTED_PROXIES as networks ("10.0.0.0/8", "192.0.2.7", "fd00::/8"); a bad entry is a configuration
    error, raised at the first request rather than silently trusting nobody (or everybody)."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def parse_address(value: str) -> IPAddress | None:
    """An address as proxies write it: "192.0.2.1", "192.0.2.1:5123", "2001:db8::1", "[2001:db8::1]:443"; an
    IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) as the IPv4 address. None if invalid."""
    text = value.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def client_network(request: HttpRequest) -> str:
    """The client as limits count it: its IPv4 address, or the /64 an IPv6 address is in (one subscriber's share,
    whose 2^64 addresses would otherwise each get a fresh budget)."""
    address = client_ip(request)
    parsed = parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False).network_address)
    return address


def client_ip(request: HttpRequest) -> str:
    """The client's address as text ("unknown" when the server gave none)."""
    remote = parse_address(request.META.get("REMOTE_ADDR", "") or "")
    if remote is None:
        return UNKNOWN
    networks = trusted_networks(tuple(settings.TRUSTED_PROXIES))
    if not networks or not _trusted(remote, networks):
        return str(remote)
    # Several X-Forwarded-For headers arrive joined by commas, in order, like one longer header.
    hops = [hop for hop in (request.META.get("HTTP_X_FORWARDED_FOR", "") or "").split(",") if hop.strip()]
    client = remote
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            # A trusted proxy writes only addresses: this came from the client, so the hop after it is the client.
            break
        client = address
        if not _trusted(address, networks):
            break
    return str(client)
