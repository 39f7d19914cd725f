"""User-given URLs: shape checks at save time and SSRF checks against where they actually point."""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

from django.conf import settings

BLOCKED_HOSTNAMES = {"localhost", "metadata", "metadata.google.internal", "instance-data"}
BLOCKED_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


class UnsafeUrl(ValueError):
    pass


def _blocked_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network("100.64.0.0/10"))
    )


def _explicitly_allowed(parts: object) -> bool:
    """Targets an operator allowed on purpose (SSRF_ALLOWED_TARGETS, "host:port"), e.g. an internal receiver."""
    allowed = getattr(settings, "SSRF_ALLOWED_TARGETS", ())
    if not allowed:
        return False
    scheme = getattr(parts, "scheme", "")
    port = getattr(parts, "port", None) or (443 if scheme == "https" else 80)
    return f"{(getattr(parts, 'hostname', '') or '').lower()}:{port}" in allowed


def check_url_shape(url: str, *, schemes: tuple[str, ...] = ("https", "http")) -> str:
    """A well-formed absolute URL with an allowed scheme, no credentials, and no literal private address."""
    if not isinstance(url, str) or len(url) > 2048:
        raise UnsafeUrl("A URL of at most 2,048 characters.")
    parts = urlsplit(url.strip())
    if parts.scheme.lower() in schemes and _explicitly_allowed(parts) and not (parts.username or parts.password):
        return url.strip()
    if parts.scheme.lower() not in schemes:
        raise UnsafeUrl(f"The URL must start with {' or '.join(s + '://' for s in schemes)}.")
    if not parts.hostname:
        raise UnsafeUrl("The URL has no host.")
    if parts.username or parts.password:
        raise UnsafeUrl("URLs with credentials in them are not allowed.")
    host = parts.hostname.lower().rstrip(".")
    if host in BLOCKED_HOSTNAMES or host.endswith(BLOCKED_SUFFIXES):
        raise UnsafeUrl("The URL points at an internal host.")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and _blocked_ip(literal):
        raise UnsafeUrl("The URL points at a private, loopback or link-local address.")
    return url.strip()


def check_url_target(url: str) -> list[str]:
    """Resolve the host and refuse if any address is private, loopback, link-local or otherwise internal (the
    check to repeat right before connecting, since DNS can change). Returns the addresses."""
    check_url_shape(url)
    parts = urlsplit(url)
    if _explicitly_allowed(parts):
        return [info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80)][:1]
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise UnsafeUrl(f"The host {parts.hostname!r} does not resolve.") from exc
    addresses = sorted({info[4][0] for info in infos})
    for address in addresses:
        if _blocked_ip(ipaddress.ip_address(address.split("%")[0])):
            raise UnsafeUrl(f"The host {parts.hostname!r} resolves to an internal address ({address}).")
    return addresses


RESOLVE_TTL = 300.0  # seconds a host's addresses are trusted by check_link_target
_RESOLVED: dict[str, tuple[float, str]] = {}  # host -> (valid until, why it is refused, or "")


def check_link_target(url: str, *, schemes: tuple[str, ...] = ("https", "http")) -> str:
    """A link a recipient opens (an in-app action URL, rendered per message): well-formed with an allowed scheme,
    and not pointing at a private, loopback or link-local address, literally or through DNS. A name that does
    not resolve passes (nothing of ours connects to it, and the recipient's network may know it). Each host's
    answer is kept for RESOLVE_TTL, so a bulk send resolves a host once, not once per message."""
    try:
        url = check_url_shape(url, schemes=schemes)
        parts = urlsplit(url)
        parts.port  # noqa: B018 - ValueError when the port is not a number
        allowed = _explicitly_allowed(parts)
    except UnsafeUrl:
        raise
    except ValueError as exc:  # urlsplit's own refusals: "http://[::1", "https://host:port"
        raise UnsafeUrl("The URL is malformed.") from exc
    if allowed:
        return url
    host = (parts.hostname or "").lower().rstrip(".")
    now = time.monotonic()
    cached = _RESOLVED.get(host)
    if cached is None or cached[0] < now:
        if len(_RESOLVED) >= 10_000:  # personalised hosts: bound the memory, not the correctness
            _RESOLVED.clear()
        cached = _RESOLVED[host] = (now + RESOLVE_TTL, _internal_resolution(host))
    if cached[1]:
        raise UnsafeUrl(cached[1])
    return url


def _internal_resolution(host: str) -> str:
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return ""
    for info in infos:
        address = str(info[4][0])
        if _blocked_ip(ipaddress.ip_address(address.split("%")[0])):
            return f"The host {host!r} resolves to an internal address ({address})."
    return ""
