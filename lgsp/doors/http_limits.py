"""Bounds on the request head, at the HTTP server, before any application code runs.

uvicorn's h11 parser takes a limit on an incomplete request head
(`h11_max_incomplete_event_size`); its faster httptools parser has none and
buffers a header of any size. `BoundedHttpTools` is uvicorn's httptools
protocol with the same bound: once the bytes received without a complete head
pass the limit, the connection is answered 431 (problem+json) and closed.

This is the backstop that bounds memory; below it, the gateway's HeaderLimit
middleware answers smaller over-large heads with an audited refusal.
"""
from __future__ import annotations

import os

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lgsp.errors import problem

# Four times the application's limit (LGSP_MAX_HEADER_BYTES, 16 KiB by default).
SERVER_MAX_HEAD_BYTES = 4 * int(os.environ.get("LGSP_MAX_HEADER_BYTES", str(16 * 1024)))


def too_large_response() -> bytes:
    body = orjson.dumps(problem("request.header_too_large",
                                "The request's header fields are over the size this server accepts.", None))
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/problem+json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over SERVER_MAX_HEAD_BYTES."""

    _awaiting_head = True
    _head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._awaiting_head and self._head_bytes > SERVER_MAX_HEAD_BYTES and not self.transport.is_closing():
            self.transport.write(too_large_response())
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head, self._head_bytes = True, 0
