"""Outbound http(s) for reference sources, refusing internal addresses (SSRF guard).

A user who may register ``https://…`` references must not be able to make the gateway
fetch from its own network: loopback, private ranges, link-local (and with it the cloud
metadata endpoints), multicast, unspecified and other non-global addresses are refused
unless ``CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS=1``. The metadata endpoints are refused
even then: no model lives there, credentials do.

The check sits in the connection layer (an httpcore network backend), not in front of
it: every connection, including each redirect hop, resolves the host once, checks every
address it resolved to, and connects to exactly those checked addresses. So a DNS name
that resolves to an internal address is refused, and DNS rebinding between "check" and
"connect" has no window. TLS still verifies the certificate for the host name (httpcore
passes the URL's host as the server name, whatever address we connected to). Proxies
from the environment are ignored: a proxy would connect on our behalf, unchecked.
"""

from __future__ import annotations

import ipaddress
import socket
import typing

import anyio
import httpcore
import httpx

from .errors import AddressForbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: cloud metadata and host-agent endpoints, refused even when private networks are
#: allowed (AWS/GCP/Azure/OCI IMDS, AWS ECS task metadata, Alibaba, Azure WireServer,
#: AWS IMDS over IPv6)
METADATA = {
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.169.253",
        "100.100.100.200",
        "168.63.129.16",
        "fd00:ec2::254",
        "fd00:ec2::23",
    )
}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: IPv6 ranges that carry an IPv4 address in their last 32 bits without being routed to
#: it everywhere (IPv4-compatible, IPv4-translated, local-use NAT64): refused for what
#: they embed, and as reserved addresses otherwise
_EMBEDDING = tuple(ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48"))


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv6 one (mapped, 6to4, NAT64, and the
    :data:`_EMBEDDING` ranges), which is where a packet to it may end up."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (int(ip) > 1 and any(ip in n for n in _EMBEDDING)):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_reason(ip: IPAddress, allow_private: bool = False) -> str | None:
    """Why the gateway must not connect to ``ip``, or None if it may."""
    inner = _embedded_v4(ip)
    if inner is not None:
        why = forbidden_reason(inner, allow_private)
        if why:
            return f"{why} (inside {ip})"
        if not any(ip in n for n in _EMBEDDING):
            return None
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "a reserved address"
    if not ip.is_global:
        return "a non-global (reserved or shared) address"
    return None


def check_addresses(host: str, addresses: list[str], allow_private: bool) -> None:
    """Refuse the host if *any* address it resolved to is forbidden (an attacker's DNS
    name may mix a public and an internal answer)."""
    for a in addresses:
        why = forbidden_reason(ipaddress.ip_address(a.split("%", 1)[0]), allow_private)
        if why:
            raise AddressForbidden(
                f"refusing to connect to {host}: it resolves to {a}, {why} "
                "(set CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS=1 to allow private networks)",
                host=host,
                address=a,
            )


def _resolve(host: str, port: int) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:  # UnicodeError: a bad name
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


class GuardedBackend(httpcore.NetworkBackend):
    """Resolve, check, then connect to a checked address (blocking flavour)."""

    def __init__(self, allow_private: bool, inner: httpcore.NetworkBackend | None = None) -> None:
        self.allow_private = allow_private
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve(host, port)
        check_addresses(host, addresses, self.allow_private)
        last: Exception | None = None
        for a in addresses:
            try:
                return self.inner.connect_tcp(a, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"cannot connect to {host}")

    def connect_unix_socket(self, *args: typing.Any, **kw: typing.Any) -> httpcore.NetworkStream:
        raise AddressForbidden("unix sockets are not reference sources")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolve, check, then connect to a checked address (async flavour)."""

    def __init__(
        self, allow_private: bool, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.allow_private = allow_private
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await anyio.to_thread.run_sync(_resolve, host, port)
        check_addresses(host, addresses, self.allow_private)
        last: Exception | None = None
        for a in addresses:
            try:
                return await self.inner.connect_tcp(a, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"cannot connect to {host}")

    async def connect_unix_socket(
        self, *args: typing.Any, **kw: typing.Any
    ) -> httpcore.AsyncNetworkStream:
        raise AddressForbidden("unix sockets are not reference sources")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
#: where a guarded client's answer keeps a redirect's ``Location`` (``extensions``)
LOCATION = "chunkyard.location"


def _set_location_aside(response: httpx.Response) -> None:
    """httpx reads a redirect's ``Location`` by its own rules even when it does not
    follow it, and fails the whole request on a target it cannot parse. The callers
    follow redirects themselves, reading targets by the reference rules (which also
    refuse or normalise such a target), so the header is moved out of httpx's way."""
    if 300 <= response.status_code < 400 and "location" in response.headers:
        response.extensions[LOCATION] = response.headers["location"]
        del response.headers["location"]


async def _set_location_aside_async(response: httpx.Response) -> None:
    _set_location_aside(response)


def guarded_client(
    allow_private: bool, backend: httpcore.NetworkBackend | None = None
) -> httpx.Client:
    """A blocking httpx client whose every connection goes through the guard. It does
    not follow redirects: callers follow them hop by hop (each hop is guarded too),
    taking a redirect's target from ``response.extensions[LOCATION]``."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx takes no network backend; the pool is rebuilt with ours (same defaults)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=16,
        max_keepalive_connections=8,
        network_backend=backend or GuardedBackend(allow_private),
    )
    return httpx.Client(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        timeout=_TIMEOUT,
        event_hooks={"response": [_set_location_aside]},
    )


def async_guarded_client(
    allow_private: bool, backend: httpcore.AsyncNetworkBackend | None = None
) -> httpx.AsyncClient:
    """The async twin of :func:`guarded_client`."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=32,
        max_keepalive_connections=16,
        network_backend=backend or AsyncGuardedBackend(allow_private),
    )
    return httpx.AsyncClient(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        timeout=_TIMEOUT,
        event_hooks={"response": [_set_location_aside_async]},
    )
