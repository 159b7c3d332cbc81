"""Which hosts are this machine: a gateway bound to one needs no auth to be safe, and
a client and gateway that both see one share a file system (local pack reads)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` is loopback only: 127.0.0.0/8, ::1 (also IPv4-mapped) or
    ``localhost``. Names are not resolved: anything else counts as another machine."""
    name = host.strip().strip("[]").rstrip(".").lower()
    return name == "localhost" or is_loopback_address(name.split("%")[0])


def is_loopback_address(text: str) -> bool:
    """Whether ``text`` is a loopback IP address, written as one (no names)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback
