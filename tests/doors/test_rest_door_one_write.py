"""lgsp.doors.one_write: an answer's head and body leave in one write, and nothing is held back."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, cast

import uvicorn

from lgsp.doors.one_write import COPY_LIMIT, OneWriteHttpTools, OneWriteTransport


class Recorder:
    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data):
        self.writes.append(bytes(data))

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed


def test_head_waits_for_its_body():
    raw = Recorder()
    t = OneWriteTransport(cast(Any, raw))
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert raw.writes == []
    t.write(b"{}")
    assert raw.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")  # not after a completed response: not held
    assert len(raw.writes) == 2
    assert t.is_closing() is False  # the rest is the transport's own


def test_continue_is_never_held_and_a_bodiless_answer_is_flushed():
    raw = Recorder()
    t = OneWriteTransport(cast(Any, raw))
    t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert raw.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    t.flush()  # the response completed without a body
    assert raw.writes[-1] == b"HTTP/1.1 204 No Content\r\n\r\n"
    t.expect_head = True
    t.write(b"HTTP/1.1 431 Too Large\r\n\r\n")
    t.close()  # a refusal that closes the connection
    assert raw.writes[-1] == b"HTTP/1.1 431 Too Large\r\n\r\n" and raw.closed


def test_large_body_is_not_copied_behind_the_head():
    raw = Recorder()
    t = OneWriteTransport(cast(Any, raw))
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"x" * (COPY_LIMIT + 1))
    assert [len(w) for w in raw.writes] == [19, COPY_LIMIT + 1]


async def _app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"" if scope["path"] == "/empty" else b"hello " + scope["path"].encode()
    await send({"type": "http.response.start", "status": 204 if not body else 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def test_served_answers_over_a_kept_alive_connection():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app, host="127.0.0.1", port=port, http=OneWriteHttpTools,
                                           lifespan="off", log_config=None, loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answers = []
            for path in ("/a", "/empty", "/b"):
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                answers.append((head.split(b" ")[1], await reader.readexactly(length)))
            writer.close()
            return answers

        assert asyncio.run(client()) == [(b"200", b"hello /a"), (b"204", b""), (b"200", b"hello /b")]
    finally:
        server.should_exit = True
        thread.join(5)
