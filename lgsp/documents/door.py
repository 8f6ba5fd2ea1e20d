"""The documents API's door (openapi/documents.v1.yaml), an ASGI app beside connexion.

Why not connexion: connexion reads a request body whole before the handler runs (and would validate an
XML body it cannot describe), and it answers JSON. An edXML package may be 50 MB, so this door
identifies and authorizes the caller first, then spools the body chunk by chunk to a temporary file
bounded by LGSP_DOCUMENT_MAX_BYTES (a stage of the pipeline; the package is read back from the file, never
held whole), admits one large package's checks at a time, and answers an inbox item as the package's own
bytes. Everything else is the one pipeline: token, grant, limits, problem+json refusals, audit.
"""
from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import orjson
from starlette.requests import Request

from lgsp.delivery.accept import wake_workers
from lgsp.documents import edxml, routing
from lgsp.doors.rest_exchange import exchange_from
from lgsp.doors.rest_exchange import render as rest_render
from lgsp.errors import ExchangeError
from lgsp.gateway import Gateway
from lgsp.pipeline.authorize import authorize
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.identify import check_password, identify
from lgsp.pipeline.resolve import resolve
from lgsp.pipeline.run import Rendered, serve
from lgsp.pipeline.stage import Stage, StageContext
from lgsp.traffic.limit import limit

PREFIX = "/api/documents/v1"
MAX_JSON = 4096  # an acknowledgement's body
LARGE = 1 << 20  # a package from this size on is checked one at a time per worker (DocumentDoor.admitted)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # the spec's X-Request-ID (an empty one is refused too)
BEFORE: tuple[Stage, ...] = (check_password, identify, resolve, authorize, limit)
ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"/outbox/?"), routing.SEND),
    ("GET", re.compile(r"/outbox/(?P<id>[^/]{1,64})"), routing.OUTBOX_GET),
    ("GET", re.compile(r"/inbox/?"), routing.INBOX_LIST),
    ("GET", re.compile(r"/inbox/(?P<id>[^/]{1,64})"), routing.INBOX_GET),
    ("POST", re.compile(r"/inbox/(?P<id>[^/]{1,64})/status"), routing.INBOX_STATUS),
)
STAGES: dict[str, tuple[Stage, ...]] = {
    routing.OUTBOX_GET: (*BEFORE, routing.read_outbox),
    routing.INBOX_LIST: (*BEFORE, routing.list_inbox),
    routing.INBOX_GET: (*BEFORE, routing.get_inbox_item),
    routing.INBOX_STATUS: (*BEFORE, routing.acknowledge),
}


def route_of(scope: dict[str, Any]) -> tuple[str, dict[str, str]] | None:
    if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
        return None
    path = scope["path"]
    rest = path[len(PREFIX):]
    for method, pattern, service in ROUTES:
        found = pattern.fullmatch(rest)
        if found and scope["method"] == method:
            return service, found.groupdict()
    return None


def render(ex: Exchange) -> Rendered:
    """JSON or problem+json as the REST door; an inbox item as the package (application/xml)."""
    if ex.error is None and isinstance(ex.answer, bytes):
        return 200, {"X-Request-ID": ex.request_id, "Cache-Control": "no-store",
                     "Content-Type": "application/xml; charset=utf-8"}, ex.answer
    status, headers, body = rest_render(ex)
    if ex.error is None:
        status = ex.ok_status
        if status == 202 and isinstance(ex.answer, dict) and "status_url" in ex.answer:
            headers["Location"] = ex.answer["status_url"]
    return status, headers, body


class BodyReader:
    """The request body spooled to a temporary file as it arrives (:class:`edxml.Spool`), a stage of the
    pipeline after the caller is authorized; the size limit is enforced while it streams."""

    def __init__(self, receive: Any, declared: str | None, limit: int):
        self.receive, self.declared, self.limit = receive, declared, limit
        self.spool: edxml.Spool | None = None
        self.complete = False

    def data(self) -> edxml.Spool:
        assert self.spool is not None
        return self.spool

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def _too_large(self) -> ExchangeError:
        return ExchangeError("document.too_large", f"The package is over the limit of {self.limit:,} bytes "
                                                   f"(LGSP_DOCUMENT_MAX_BYTES).")

    async def stage(self, ex: Exchange, ctx: StageContext) -> None:
        declared = int(self.declared) if self.declared and self.declared.isdigit() else None
        if declared is not None and declared > self.limit:
            raise self._too_large()
        self.spool = spool = edxml.Spool()
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ExchangeError("request.invalid", "The client closed the connection before the body ended.")
            chunk = message.get("body", b"")
            if spool.size + len(chunk) > self.limit:
                raise self._too_large()
            spool.write(chunk)  # into the page cache: no slower than a copy into a buffer
            if not message.get("more_body", False):
                break
        self.complete = True
        ex.request_bytes = spool.size
        if not spool.size:
            raise ExchangeError("document.malformed", "The request has no edXML package in its body.")


async def _small_json(receive: Any) -> dict[str, Any]:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_JSON:
            raise ExchangeError("request.invalid", f"The body is over {MAX_JSON} bytes.")
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            break
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise ExchangeError("request.invalid", 'The body is a JSON object: {"status": "done"}.')
    return doc


class DocumentDoor:
    def __init__(self, gw: Gateway):
        self.gw = gw
        self.large = asyncio.Semaphore(1)  # one large package checked at a time in this worker

    def admitted(self, reader: BodyReader, accept: Stage) -> Stage:
        """Stage: the package's checks, a large one only when no other large one is being checked in this
        worker (N concurrent 50 MB packages do not take N × the memory of one); a package that waits longer
        than LGSP_DOCUMENT_ADMIT_WAIT seconds (30) is refused with 503 service.unavailable."""
        async def admit(ex: Exchange, ctx: StageContext) -> None:
            if len(reader.data()) < LARGE:
                return await accept(ex, ctx)
            wait = float(os.environ.get("LGSP_DOCUMENT_ADMIT_WAIT") or 30)
            try:
                async with asyncio.timeout(wait):  # a free worker admits at once, even with no wait at all
                    await self.large.acquire()
            except TimeoutError:
                raise ExchangeError("service.unavailable", f"Other large packages are being checked; none was "
                                                           f"admitted within {wait:g} s. Send it again later."
                                     ) from None
            try:
                await accept(ex, ctx)
            finally:
                self.large.release()
        return admit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any, route: tuple[str, dict[str, str]]) -> None:
        service, params = route
        ex = exchange_from(Request(scope), service, dict(params))  # type: ignore[arg-type]
        refusal, reader, close = None, None, False
        claimed = Request(scope).headers.get("x-request-id")
        if claimed is not None and not REQUEST_ID.fullmatch(claimed):
            refusal = ExchangeError("request.context_invalid",
                                    "The request id (X-Request-ID) must be 1 to 64 of A-Z a-z 0-9 . _ : -.")
        if refusal is not None:
            close = True
        if service == routing.SEND:
            reader = BodyReader(receive, Request(scope).headers.get("content-length"),
                                self.gw.settings.document_max_bytes)
            stages: tuple[Stage, ...] = (*BEFORE, reader.stage,
                                         # routing's annotation predates the spool (any edxml.Source)
                                         self.admitted(reader, routing.accept_document(reader.data)))
        else:
            stages = STAGES[service]
            if service == routing.INBOX_STATUS and refusal is None:
                try:
                    ex.params.update({k: v for k, v in (await _small_json(receive)).items() if k != "id"})
                except ExchangeError as exc:
                    refusal, close = exc, True
        rendered = None
        try:
            rendered = await serve(ex, self.gw, render, stages=stages, refusal=refusal)
        finally:
            if reader is not None:
                close = close or not reader.complete  # the rest of an unread body is not read: the connection ends
                if rendered is not None:  # else (cancelled) the audit writer may still read the chunks from it:
                    reader.close()        # the file is closed when nothing holds it any more
        if service == routing.SEND and ex.error is None:
            wake_workers(self.gw)
        status, headers, body = rendered
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        if close:
            raw.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
