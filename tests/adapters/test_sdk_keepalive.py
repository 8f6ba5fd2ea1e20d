"""lgsp.keepalive.KeepAliveClient against a real server on loopback: reuse, a server that closes,
the egress policy, redirects, timeouts, the body limit."""
from __future__ import annotations

import asyncio
import ipaddress

import pytest

from lgsp.egress import EgressRefused, Policy
from lgsp.keepalive import ClientFailure, KeepAliveClient

LOOPBACK = Policy(allowed=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))


class Upstream:
    """A loopback HTTP/1.1 server: answers each request with `answer(request_head, body)` (raw bytes, or
    None to stay silent), counts connections, closes after answering when `close_after` is set."""

    def __init__(self, answer, close_after: bool = False):
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                out = self.answer(head, body)
                if out is None:
                    await asyncio.sleep(10)
                    return
                writer.write(out)
                await writer.drain()
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def run(coro):
    return asyncio.run(coro)


def test_connection_is_reused_and_request_is_well_formed():
    async def main():
        upstream = Upstream(lambda head, body: ok(b"echo:" + body))
        async with upstream as url:
            client = KeepAliveClient(limit=4, timeout=5, policy=LOOPBACK)
            first = await client.request("POST", f"{url}/dancu", body=b"<x/>", headers={"SOAPAction": '"a"'})
            second = await client.request("GET", f"{url}/api", params={"msdn": "0101234565"})
            await client.close()
        assert (first.status, first.body, second.body) == (200, b"echo:<x/>", b"echo:")
        assert upstream.connections == 1
        assert upstream.requests[0].startswith(b"POST /dancu HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b'SOAPAction: "a"\r\n' in upstream.requests[0] and b"Content-Length: 4\r\n" in upstream.requests[0]
        assert upstream.requests[1].startswith(b"GET /api?msdn=0101234565 HTTP/1.1\r\n")

    run(main())


def test_chunked_answer_is_read_and_connection_kept():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def main():
        upstream = Upstream(lambda head, body: chunked)
        async with upstream as url:
            client = KeepAliveClient(limit=4, timeout=5, policy=LOOPBACK)
            answers = [await client.request("GET", url) for _ in range(3)]
            await client.close()
        assert [a.body for a in answers] == [b"abcde"] * 3
        assert upstream.connections == 1

    run(main())


@pytest.mark.parametrize("close_after, extra", [(False, b"Connection: close\r\n"), (True, b"")])
def test_connection_the_server_closes_is_not_reused(close_after, extra):
    async def main():
        upstream = Upstream(lambda head, body: ok(extra=extra), close_after=close_after)
        async with upstream as url:
            client = KeepAliveClient(limit=4, timeout=5, policy=LOOPBACK)
            for _ in range(3):
                assert (await client.request("GET", url)).body == b"hello"
                await asyncio.sleep(0.05)  # the server's close reaches the client
            await client.close()
        assert upstream.connections == 3

    run(main())


def test_answer_delimited_by_the_connection_end():
    async def main():
        upstream = Upstream(lambda head, body: b"HTTP/1.1 200 OK\r\n\r\nuntil-the-end", close_after=True)
        async with upstream as url:
            client = KeepAliveClient(limit=4, timeout=5, policy=LOOPBACK)
            answer = await client.request("GET", url)
            await client.close()
        assert answer.body == b"until-the-end"

    run(main())


def test_egress_policy_refuses_before_connecting():
    async def main():
        upstream = Upstream(lambda head, body: ok())
        async with upstream as url:
            client = KeepAliveClient(limit=4, timeout=5, policy=Policy())
            with pytest.raises(EgressRefused, match="loopback"):
                await client.request("GET", url)
            with pytest.raises(EgressRefused, match="loopback"):  # a name: its resolved addresses are checked
                await client.request("GET", url.replace("127.0.0.1", "localhost"))
            with pytest.raises(EgressRefused, match="only http and https"):
                await client.request("GET", "ftp://127.0.0.1/x")
        assert upstream.connections == 0

    run(main())


def test_gateway_itself_is_refused():
    async def main():
        upstream = Upstream(lambda head, body: ok())
        async with upstream as url:
            port = int(url.rsplit(":", 1)[1])
            own = Policy(allowed=LOOPBACK.allowed, own_host="127.0.0.1", own_port=port)
            with pytest.raises(EgressRefused, match="LGSP itself"):
                await KeepAliveClient(limit=1, timeout=5, policy=own).request("GET", url)

    run(main())


def test_redirect_is_refused_not_followed():
    async def main():
        upstream = Upstream(lambda head, body: b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\n"
                                              b"Content-Length: 0\r\n\r\n")
        async with upstream as url:
            client = KeepAliveClient(limit=4, timeout=5, policy=LOOPBACK)
            with pytest.raises(EgressRefused, match="redirect"):
                await client.request("GET", url)
            await client.close()
        assert len(upstream.requests) == 1

    run(main())


def test_head_is_refused():
    with pytest.raises(ValueError, match="HEAD"):
        run(KeepAliveClient(limit=1, timeout=1, policy=LOOPBACK).request("HEAD", "http://127.0.0.1:1/"))


def test_timeout_covers_the_answer_and_drops_the_connection():
    async def main():
        upstream = Upstream(lambda head, body: None if b"slow" in head else ok())
        async with upstream as url:
            client = KeepAliveClient(limit=4, timeout=0.2, policy=LOOPBACK)
            with pytest.raises(TimeoutError):
                await client.request("GET", f"{url}/slow")
            assert (await client.request("GET", f"{url}/fast")).body == b"hello"
            await client.close()
        assert upstream.connections == 2

    run(main())


def test_unreachable_and_malformed_upstream_fail_clearly():
    async def main():
        upstream = Upstream(lambda head, body: b"NOT HTTP AT ALL\r\n\r\n")
        async with upstream as url:
            client = KeepAliveClient(limit=4, timeout=5, policy=LOOPBACK)
            with pytest.raises(ClientFailure, match="not valid HTTP"):
                await client.request("GET", url)
        with pytest.raises(ClientFailure, match="could not be reached"):
            await client.request("GET", url)  # the server is gone

    run(main())


def test_body_over_the_limit_is_cut_and_the_connection_dropped():
    async def main():
        upstream = Upstream(lambda head, body: ok(b"x" * 1000))
        async with upstream as url:
            client = KeepAliveClient(limit=4, timeout=5, policy=LOOPBACK)
            big = await client.request("GET", url, limit=100)
            small = await client.request("GET", url, limit=5000)
            await client.close()
        assert (len(big.body), big.truncated, len(small.body), small.truncated) == (101, True, 1000, False)
        assert upstream.connections == 2

    run(main())


def test_header_values_cannot_inject_lines():
    with pytest.raises(ValueError, match="line break"):
        run(KeepAliveClient(limit=1, timeout=1, policy=LOOPBACK).request(
            "GET", "http://127.0.0.1:1/", headers={"X-A": "1\r\nX-B: 2"}))


def test_request_target_is_quoted_and_params_appended():
    async def main():
        upstream = Upstream(lambda head, body: ok())
        async with upstream as url:
            client = KeepAliveClient(limit=1, timeout=5, policy=LOOPBACK)
            await client.request("GET", f"{url}/a b?x=1", params={"msdn": "0101 2"})
            await client.close()
        assert upstream.requests[0].startswith(b"GET /a%20b?x=1&msdn=0101+2 HTTP/1.1\r\n")

    run(main())
