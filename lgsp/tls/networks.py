"""Address lists (CIDRs): trusted proxies, per-client allow-lists."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkError(ValueError):
    """A CIDR that cannot be read, with a sentence saying why."""


def parse(items: Iterable[str] | str) -> tuple[Network, ...]:
    """CIDRs (a list, or one comma-separated string) → networks; NetworkError names the first bad one."""
    if isinstance(items, str):
        items = [i for i in items.split(",") if i.strip()]
    out = []
    for item in items:
        if not isinstance(item, str):
            raise NetworkError(f"{item!r} is not a network address: give CIDRs such as '10.20.0.0/16'.")
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError:
            raise NetworkError(f"{item!r} is not a network address (CIDR such as '10.20.0.0/16' or "
                               f"'2001:db8::/32', host bits zero).") from None
    return tuple(out)


def contains(networks: tuple[Network, ...], address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return any(ip in net for net in networks)
