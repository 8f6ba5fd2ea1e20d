"""A small kept-alive HTTP/1.1 client for the adapters' hot calls.

An adapter's upstream call is one request to one of a few origins, answered with a short body;
aiohttp's general machinery (middlewares, response objects, stream readers, cookie jar) costs
more CPU per exchange than the exchange's own work. This client writes a request in one send,
parses the answer with httptools (llhttp, already under uvicorn) in an asyncio Protocol, and
keeps idle connections per origin for the next call.

The security properties of lgsp.http's aiohttp sessions are kept:
- the egress policy (lgsp.egress) is checked when a connection is made: the scheme and a literal
  address, else every address the name resolves to, and the connection goes to a checked address
  (a name cannot resolve elsewhere between check and connect);
- redirects are refused (EgressRefused), never followed; HEAD is refused (a HEAD answer's length
  would frame the connection wrongly, and no adapter needs it);
- one timeout covers connecting, sending and the whole answer;
- TLS, with the system's trust and the host name checked, where the URL is https.

A connection the server closed (or said it would close) is dropped, not reused. Known gap, as
with aiohttp: a kept-alive connection the server closes exactly while a request is written fails
that call (ClientFailure); it is not retried, because the request may have reached the server.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping
from urllib.parse import quote, urlencode, urlsplit

import httptools

from lgsp import egress

IDLE_SECONDS = 15.0  # an idle connection older than this is closed, not reused (servers drop them too)


class ClientFailure(Exception):
    """The upstream could not be reached, or its answer is not HTTP (a timeout is TimeoutError)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    truncated: bool = False  # the body went over the caller's limit; only the first limit+1 bytes are kept


Origin = tuple[str, str, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the parser of the answer being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._limit: int | None = None
        self._framed = False  # Content-Length or chunked: the answer's end is known without EOF
        self._keep = False  # the answer allows the connection to be reused

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ClientFailure(f"the upstream's answer is not valid HTTP: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._status_seen and not self._framed:  # an answer delimited by the connection's end
            self.on_message_complete()
        else:
            self._fail(ClientFailure("the upstream closed the connection before answering in full"))

    # -- httptools callbacks
    _status_seen = False

    def on_status(self, status: bytes) -> None:
        self._status_seen = True

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True

    def on_body(self, body: bytes) -> None:
        limit = self._limit
        if limit is not None and self._size + len(body) > limit:
            body = body[:limit + 1 - self._size]
            self._body.append(body)
            self._size += len(body)
            self._finish(truncated=True)
            self.close()  # the rest of the answer is not read: the connection is not reusable
            return
        self._body.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        self._keep = self._parser.should_keep_alive()  # asked now: llhttp forgets it once the message is done
        self._finish(truncated=False)

    # -- the client's side
    def _finish(self, truncated: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self._parser.get_status_code(), b"".join(self._body), truncated))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def send(self, request: bytes, limit: int | None) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._body, self._size, self._limit = [], 0, limit
        self._framed = self._status_seen = self._keep = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def reusable(self) -> bool:
        waiter = self._waiter
        return (not self.closed and waiter is not None and waiter.done() and not waiter.cancelled()
                and waiter.exception() is None and not waiter.result().truncated and self._framed and self._keep)

    def release(self) -> None:
        self._waiter = None
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


@lru_cache(maxsize=256)
def _parsed(url: str) -> tuple[Origin, str, str]:
    """The origin, request target (path quoted, query kept) and Host value of a URL; cached, as an
    adapter calls the same one or two URLs on every exchange."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise egress.EgressRefused(f"{url[:200]!r} is not a usable URL.") from None
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return (scheme, parts.hostname or "", port), target, parts.netloc.rpartition("@")[2]


class KeepAliveClient:
    """Kept-alive HTTP/1.1 connections per origin, at most `limit` in use at once; made lazily inside
    the serving event loop, like lgsp.http.LazySession."""

    def __init__(self, *, limit: int, timeout: float, policy: egress.Policy | None = None):
        self.limit = limit
        self.timeout = timeout
        self._policy = policy
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._ssl: ssl.SSLContext | None = None

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes = b"", params: Mapping[str, str] | None = None,
                      limit: int | None = None) -> Answer:
        """One request and its whole answer (its body cut after `limit` + 1 bytes when given).
        Raises EgressRefused, TimeoutError or ClientFailure."""
        if method.upper() == "HEAD":
            raise ValueError("KeepAliveClient does not send HEAD requests")
        origin, target, netloc = _parsed(url)
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params)
        head = [f"{method.upper()} {target} HTTP/1.1\r\nHost: {netloc}\r\n"]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header field {name!r} holds a line break")
            head.append(f"{name}: {value}\r\n")
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        request = "".join(head).encode("latin-1") + body
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots, asyncio.timeout(self.timeout):
            conn = await self._connection(origin)
            try:
                answer = await conn.send(request, limit)
            except BaseException:
                conn.close()
                raise
            if conn.reusable():
                conn.release()
                self._idle.setdefault(origin, deque()).append(conn)
            else:
                conn.close()
        if answer.status in egress.REDIRECTS:
            raise egress.EgressRefused(f"{origin[1]} answered with a redirect (HTTP {answer.status}); "
                                       f"the LGSP does not follow redirects: configure the final address.")
        return answer

    async def _connection(self, origin: Origin) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return await self._connect(origin)

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        rules = self._policy or egress.policy()
        refusal = egress._origin_refusal(rules, scheme, host, port)
        if refusal is not None:
            raise egress.EgressRefused(refusal)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ClientFailure(f"{host} cannot be resolved: {exc}") from None
        addresses = [(family, proto, str(address[0]), int(address[1])) for family, _, proto, _, address in infos]
        for _, _, address, _ in addresses:  # every address the name has must be allowed, as egress.Resolver does
            rules.check_address(host, ipaddress.ip_address(address.split("%")[0]), port)
        tls = self._tls() if scheme == "https" else None
        last: Exception | None = None
        for family, proto, address, address_port in addresses:
            try:
                _, conn = await loop.create_connection(
                    _Connection, host=address, port=address_port, family=family, proto=proto,
                    ssl=tls, server_hostname=host.strip("[]") if tls else None)
                return conn
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise
                last = exc
        raise ClientFailure(f"{host}:{port} could not be reached: {last}")

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()
