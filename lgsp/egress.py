"""Egress policy: where the gateway may send a request on an adapter's behalf.

Connections are registered by integrators, so a connection's URL is not to be
trusted to name a backend: it could name the gateway's own admin API, a cloud
metadata service, a database port on the private network. The policy:

- schemes http and https only;
- the destination's *resolved* addresses must be public, unless the operator
  allows a private, loopback or link-local network in LGSP_EGRESS_ALLOW
  (CIDRs, e.g. "127.0.0.0/8,::1" for simulators on loopback); none by default;
- never the gateway itself (the host and port of LGSP_PUBLIC_URL);
- redirects are not followed (a redirect could lead anywhere).

It is checked twice: when a connection is created or changed (admin API, CLI,
`lgsp apply`: a clear refusal), and on every call (lgsp.http), because a name
may resolve elsewhere by then.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from lgsp.adapter import UpstreamError
from lgsp.config import settings

SCHEMES = ("http", "https")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(UpstreamError):
    """The policy refuses this destination. An UpstreamError, so that at call time it
    passes through an adapter's own handling of aiohttp errors to the pipeline."""

    code = "upstream.egress_refused"


@dataclass(frozen=True)
class Policy:
    allowed: tuple[Network, ...] = ()
    own_host: str | None = None        # the gateway's public host and port: never a destination
    own_port: int | None = None

    def address_allowed(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
        if any(address in net for net in self.allowed):
            return True
        return address.is_global and not address.is_multicast

    def check_address(self, host: str, address: Address, port: int) -> None:
        if not self.address_allowed(address):
            raise EgressRefused(f"{host} ({address}) is a private, loopback or link-local address, which the "
                                f"egress policy refuses; the operator may allow its network in LGSP_EGRESS_ALLOW.")
        if port == self.own_port and address in self._own_addresses():
            raise EgressRefused(f"{host}:{port} is the LGSP itself; a connection cannot point at the gateway.")

    def _own_addresses(self) -> frozenset[Address]:
        return _resolved(self.own_host) if self.own_host else frozenset()

    def check_url(self, url: Any, *, resolve: bool = True) -> None:
        """Refuse a URL the policy does not allow (names resolved now unless `resolve` is false)."""
        parts = urlsplit(str(url))
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise EgressRefused(f"{str(url)[:200]!r}: only http and https destinations are allowed.")
        try:
            host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise EgressRefused(f"{str(url)[:200]!r} is not a usable URL.") from None
        if not host:
            raise EgressRefused(f"{str(url)[:200]!r} names no host.")
        literal = _literal(host)
        if literal is not None:
            self.check_address(host, literal, port)
            return
        if resolve:
            for address in _resolve(host, port):
                self.check_address(host, address, port)


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []  # not resolvable now: nothing to refuse yet; every call checks again
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


@lru_cache(maxsize=16)
def _resolved(host: str) -> frozenset[Address]:
    literal = _literal(host)
    return frozenset([literal]) if literal is not None else frozenset(_resolve(host, 0))


@lru_cache(maxsize=16)
def _policy(allow: str, public_url: str) -> Policy:
    networks = []
    for item in filter(None, (part.strip() for part in allow.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"LGSP_EGRESS_ALLOW: {item!r} is not an IP network (e.g. 127.0.0.0/8 or ::1)") from None
    own = urlsplit(public_url)
    own_port = own.port or (443 if own.scheme == "https" else 80)
    return Policy(tuple(networks), own.hostname, own_port)


def policy() -> Policy:
    """The operator's policy (LGSP_EGRESS_ALLOW, LGSP_PUBLIC_URL)."""
    cfg = settings()
    return _policy(cfg.egress_allow, cfg.public_url)


def check_url(url: Any) -> None:
    policy().check_url(url)


# -- enforcement on the wire (aiohttp) ------------------------------------------------------------

@lru_cache(maxsize=1024)
def _origin_refusal(rules: Policy, scheme: str, host: str | None, port: int | None) -> str | None:
    """Why a request to this origin is refused (without resolving names), or None; cached, as the
    same few origins are called on every exchange (~13 µs a check otherwise)."""
    try:
        rules.check_url(f"{scheme}://{_bracketed(host or '')}:{port}/" if port else f"{scheme}://{host}/",
                        resolve=False)
    except EgressRefused as exc:
        return exc.detail
    return None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Resolver(AbstractResolver):
    """Resolves as usual, then refuses the name if any address it resolves to is refused."""

    def __init__(self, policy_: Policy | None = None):
        self._policy = policy_
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        rules = self._policy or policy()
        for result in results:
            rules.check_address(host, ipaddress.ip_address(result["host"].split("%")[0]), port)
        return results

    async def close(self) -> None:
        await self._inner.close()


REDIRECTS = frozenset({301, 302, 303, 307, 308})


def client_middleware(policy_: Policy | None = None):
    """An aiohttp client middleware: checks each request's scheme and literal address, and
    refuses a redirect instead of following it (cheaper per request than trace hooks)."""

    async def egress_middleware(request: aiohttp.ClientRequest, handler) -> aiohttp.ClientResponse:
        url = request.url  # names are checked by Resolver, on the addresses they resolve to
        refusal = _origin_refusal(policy_ or policy(), url.scheme, url.host, url.port)
        if refusal is not None:
            raise EgressRefused(refusal)
        response = await handler(request)
        if response.status in REDIRECTS:
            response.release()
            raise EgressRefused(f"{url.host} answered with a redirect (HTTP {response.status}); "
                                f"the LGSP does not follow redirects: configure the final address.")
        return response

    return egress_middleware
