"""An answer's head and body in one write to the socket.

uvicorn writes a response's head when the app sends http.response.start and its body at
http.response.body: two writes, so two send(2) calls and often two TCP segments for an answer of
a few hundred bytes. `OneWriteHttpTools` holds the head back until the body comes (or the response
ends without one, or the connection closes) and writes both at once.

Only the first write after a response completed (or after the connection opened) is held, and only
when it is a final response's status line; a 100 Continue goes out at once, and a held head is always
written at the latest when its response completes, so nothing waits on it.
"""
from __future__ import annotations

import asyncio
from typing import Any

from lgsp.doors.http_limits import BoundedHttpTools

COPY_LIMIT = 64 * 1024  # a body this large is written after the head, not copied behind it


class OneWriteTransport:
    """The connection's transport, holding a response head back until its body is written."""

    __slots__ = ("_transport", "_held", "expect_head")

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport
        self._held: bytes | None = None
        self.expect_head = True

    def write(self, data: Any) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= COPY_LIMIT:
                self._transport.write(held + data)
                return
            self._transport.write(held)
        elif self.expect_head and data[:9] == b"HTTP/1.1 " and data[9:10] != b"1":  # not a 1xx
            self.expect_head = False
            self._held = bytes(data)
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class OneWriteHttpTools(BoundedHttpTools):
    """uvicorn's httptools protocol (with the head bound), writing each answer's head and body at once."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = OneWriteTransport(transport)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        self.transport.expect_head = True  # type: ignore[attr-defined]
        super().on_response_complete()
