"""Which webhook URLs the hub will call: http(s) to a public address. Loopback, private, link-local,
multicast, reserved and unspecified addresses (IPv4 and IPv6, IPv4-mapped included) are refused
unless WEBHOOK_ALLOW_PRIVATE is true. Checked when a URL is registered and again before every
delivery, on every address its host resolves to (a name may be re-pointed after registration)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


class UnsafeURL(ValueError):
    """The URL may not be called; the message says why."""


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"host {host!r} does not resolve: {exc}") from None
    return sorted({str(info[4][0]) for info in infos})


def check_url(url: str) -> list[str]:
    """The addresses `url`'s host resolves to, or UnsafeURL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("only http and https URLs are called")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeURL("credentials in the URL are not allowed (use the signature to authenticate the hub)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("the URL's port is not a number between 0 and 65535") from None
    addresses = resolve(parts.hostname, port)
    if not settings.WEBHOOK_ALLOW_PRIVATE:
        for raw in addresses:
            if _forbidden(ipaddress.ip_address(raw.split("%", 1)[0])):
                raise UnsafeURL(
                    f"{parts.hostname} resolves to {raw}, a loopback, private or otherwise non-public address "
                    "(refused unless WEBHOOK_ALLOW_PRIVATE is true)"
                )
    return addresses
