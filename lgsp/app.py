"""ASGI applications: the data plane (shared APIs), the control plane, or both.

    lgsp.app:data_plane      shared APIs (REST door), /metrics, /healthz, /readyz
    lgsp.app:control_plane   token endpoint, JWKS, metadata
    lgsp.app:combined        both in one process (the embedded set-up and the demo)

Each is a factory, for `uvicorn --factory` with several workers.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import warnings
from collections.abc import Awaitable, Callable
from typing import cast

from starlette.types import ASGIApp, Receive, Scope, Send

# connexion imports Starlette's test client at start-up, which warns about httpx in every worker.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")


import orjson
from sqlalchemy import text
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from lgsp import bulk, logs, metrics, specs
from lgsp.config import settings
from lgsp.control import JWKS_PATH, TOKEN_PATH
from lgsp.delivery.worker import start_in_process as start_delivery_worker
from lgsp.doors.request_guard import RequestGuard
from lgsp.doors.rest_exchange import fast_path
from lgsp.doors.rest_exchange import render as rest_render
from lgsp.doors.soap import PATH as SOAP_PATH
from lgsp.doors.soap import SoapDoor, SoapRequest
from lgsp.doors.soap import _version as soap_version
from lgsp.doors.soap import renderer as soap_renderer
from lgsp.errors import ExchangeError, problem
from lgsp.gateway import Gateway
from lgsp.pipeline.exchange import Exchange, request_id_from
from lgsp.pipeline.run import serve
from lgsp.tls.peer import ClientCertificate
from lgsp.traffic.upstream import status as upstream_status


class BodyLimit:
    """Refuses request bodies over the limit before they are read in full."""

    def __init__(self, app, limit: int | None = None):
        self.app = app
        self.limit = limit if limit is not None else settings().max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # connexion copies the scope below this point; sharing this dict lets the
        # error handlers see the route of a refusal (see RouteCapture).
        scope.setdefault("extensions", {})
        # A bulk verification's list is larger than any other request body.
        limit = max(self.limit, bulk.MAX_BODY) if scope["path"].endswith(bulk.PATH_SUFFIX) else self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413)
            return message

        return await self.app(scope, limited_receive, send)


class HeaderLimit:
    """Refuses a request whose header fields together are over the limit (431), in the door's
    own format and audited, but with nothing from the request in the record: no officer,
    purpose, token or request id of the caller's."""

    def __init__(self, app, gw: Gateway):
        self.app = app
        self.gw = gw
        self.limit = gw.settings.max_header_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or sum(len(k) + len(v) for k, v in scope["headers"]) <= self.limit:
            return await self.app(scope, receive, send)
        soap = scope["path"].rstrip("/") == SOAP_PATH
        ex = Exchange(door="soap" if soap else "rest", request_id=request_id_from(None), service_name=None,
                      params={}, source=(scope.get("client") or (None,))[0])
        error = ExchangeError("request.header_too_large",
                              f"The request's header fields are over {self.limit} bytes together.")
        if soap:
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            render = soap_renderer(SoapRequest(version=soap_version(content_type, None)))
        else:
            render = rest_render
        status, headers, body = await serve(ex, self.gw, render, refusal=error, anonymous=True)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


class RouteCapture:
    """Placed after connexion's routing: keeps the matched path parameters where the
    error handlers (outside the copied scopes) can read them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope["extensions"]["lgsp.path_params"] = scope.get("path_params", {})
        return await self.app(scope, receive, send)


def _database_answers(gw: Gateway) -> bool:
    try:
        with gw.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


Page = Callable[[Request], Awaitable[Response]]


def _json(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def shared_apis_app(gw: Gateway, pages: dict[str, Page]) -> ASGIApp:
    """The shared APIs served by connexion: every request the fast path declines (refusals, bodies,
    bulk and message submissions, the OpenAPI documents and their UI), and the gateway's pages in
    every way the data plane does not answer itself (HEAD, a trailing slash, another method: 405)."""
    from connexion import AsyncApp  # about 20 MiB a worker only holds once such a request came
    from connexion.middleware.exceptions import ExceptionMiddleware
    from connexion.middleware.routing import RoutingMiddleware

    from lgsp.doors.rest import MIDDLEWARES, add_shared_apis

    middlewares = list(MIDDLEWARES)
    middlewares.insert(middlewares.index(ExceptionMiddleware) + 1, BodyLimit)
    middlewares.insert(middlewares.index(BodyLimit) + 1, RequestGuard)
    middlewares.insert(middlewares.index(RoutingMiddleware) + 1, RouteCapture)
    app = AsyncApp("lgsp", middlewares=middlewares)
    add_shared_apis(app, gw)
    for path, page in pages.items():
        app.add_url_rule(path, page.__name__, page, methods=["GET"])
    # connexion parses the specs on its first call; done here, it happens in the builder's thread,
    # not on the event loop in front of the request that is waiting.
    app.middleware.app, app.middleware.middleware_stack = app.middleware._build_middleware_stack()
    return cast(ASGIApp, app)


async def serve_lifespan(lifespan: Callable[[], contextlib.AbstractAsyncContextManager[None]],
                         receive: Receive, send: Send) -> None:
    """The ASGI lifespan protocol around one async context manager (start-up, then shut-down)."""
    await receive()  # lifespan.startup
    context = lifespan()
    try:
        await context.__aenter__()
    except Exception as exc:
        await send({"type": "lifespan.startup.failed", "message": str(exc)})
        raise
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    try:
        await context.__aexit__(None, None, None)
    except Exception as exc:
        await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
        raise
    await send({"type": "lifespan.shutdown.complete"})


def gateway_pages(gw: Gateway) -> dict[str, Page]:
    """The gateway's own pages (GET), answered without connexion; another method goes to connexion (405, audited)."""
    base = gw.settings.public_url

    async def catalog(_request: Request) -> Response:
        return _json({
            "apis": [
                {
                    "name": api.name, "title": api.title, "base_url": base + api.base_path,
                    "openapi": f"{base}{api.base_path}/openapi.json", "docs": f"{base}{api.base_path}/ui/",
                    "services": sorted(api.services),
                }
                for api in specs.shared_apis()
            ],
            "token_endpoint": base + TOKEN_PATH,
            "jwks_uri": base + JWKS_PATH,
        })

    async def healthz(_request: Request) -> Response:
        # The configuration generation this worker serves (a counter, no content): lets a
        # deployment check, or a test, tell when an admin change has reached the worker.
        return _json({"status": "ok", "config_generation": gw.registry.snapshot.generation})

    async def readyz(_request: Request) -> Response:
        checks = {"gateway": gw.ready, "database": await asyncio.to_thread(_database_answers, gw)}
        ok = all(checks.values())
        # The rate-limit store is shown, not required: each policy says whether to serve without it.
        limiter = await gw.limiter.state()
        # An open circuit is one upstream's trouble, not this gateway's: shown, never a reason to be unready.
        upstreams = {"scope": f"worker {os.getpid()}",
                     "connections": upstream_status(gw.registry.snapshot.connections)}
        return _json({"status": "ready" if ok else "not ready", "checks": checks, "limiter": limiter,
                      "upstreams": upstreams},
                     200 if ok else 503)

    async def metrics_view(_request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return {"/api": catalog, "/healthz": healthz, "/readyz": readyz, "/metrics": metrics_view}


def data_plane(gateway: Gateway | None = None) -> ASGIApp:
    gw = gateway or Gateway()
    return ClientCertificate(HeaderLimit(data_routes(gw), gw), gw.settings)


def data_routes(gw: Gateway) -> ASGIApp:
    """The data plane without its outer layers (client certificate, header limit), which the
    process's outermost app runs once per request."""
    logs.setup(gw.settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan():
        await gw.start()
        worker = start_delivery_worker(gw)  # store-and-forward delivery in this process (LGSP_DELIVERY_WORKER)
        from lgsp.documents.poller import start_in_process as start_document_poller

        poller = start_document_poller(gw)  # documents from the national axis into inboxes (LGSP_DOCUMENT_POLL)
        yield
        if poller is not None:
            await poller.stop()
        if worker is not None:
            await worker.stop()
        await gw.stop()

    pages = gateway_pages(gw)
    soap_door = SoapDoor(gw)
    from lgsp.documents.door import DocumentDoor
    from lgsp.documents.door import route_of as document_route

    document_door = DocumentDoor(gw)
    from lgsp.documents.soap_door import PATH as DOCUMENTS_SOAP_PATH
    from lgsp.documents.soap_door import DocumentSoapDoor

    documents_soap = DocumentSoapDoor(gw)
    # The shared APIs' plain reads skip connexion when they are valid (lgsp/doors/routes.py); the rest goes through it.
    fast = fast_path(gw)
    app = built_on_first_request(lambda: shared_apis_app(gw, pages))

    async def data(scope, receive, send):
        if scope["type"] == "lifespan":
            return await serve_lifespan(lifespan, receive, send)
        # The SOAP door speaks SOAP Faults, not problem+json: it sits beside connexion, not inside it.
        if scope["type"] == "http" and scope["path"].rstrip("/") == SOAP_PATH:
            return await soap_door(scope, receive, send)
        if scope["type"] == "http" and scope["path"].rstrip("/") == DOCUMENTS_SOAP_PATH:
            return await documents_soap(scope, receive, send)  # edXML packages over SOAP, decoded as they arrive
        documents = document_route(scope)  # edXML packages are streamed, not buffered by connexion
        if documents is not None:
            return await document_door(scope, receive, send, documents)
        if scope["type"] == "http" and scope["path"].startswith(CONTROL_PREFIXES):
            # A data-plane-only process: the control plane's addresses are not exchanges to refuse and audit.
            return await control_plane_elsewhere(scope, receive, send)
        page = pages.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if page is not None:
            return await (await page(Request(scope, receive)))(scope, receive, send)
        if fast is not None and scope["type"] == "http" and await fast(scope, receive, send):
            return None
        return await app(scope, receive, send)

    return data


async def control_plane_elsewhere(scope, receive, send) -> None:
    body = orjson.dumps(problem("request.not_found", "This address belongs to the control plane (tokens, admin, "
                                "audit, console), which another process serves.", None))
    await Response(body, status_code=404, media_type="application/problem+json",
                   headers={"Cache-Control": "no-store"})(scope, receive, send)


def control_plane(gateway: Gateway | None = None):
    from lgsp.control.plane import create_control_plane  # Flask, authlib, the console: only where it is served

    gw = gateway or Gateway()
    return ClientCertificate(create_control_plane(gw.engine, gw.settings), gw.settings)


def token_plane(gw: Gateway) -> ASGIApp:
    from lgsp.control.token_endpoint import token_plane as create_token_plane  # authlib, not Flask or connexion

    return create_token_plane(gw.engine, gw.settings)


def built_on_first_request(build: Callable[[], ASGIApp]) -> ASGIApp:
    """An ASGI app that is built (its modules imported) when its first request comes, so a worker
    that only ever serves exchanges never holds the control plane in memory (docs/performance.md)."""
    built = None
    lock = asyncio.Lock()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal built
        if built is None:
            async with lock:
                if built is None:
                    built = await asyncio.to_thread(build)  # imports and spec parsing, off the event loop
        return await built(scope, receive, send)

    return app


CONTROL_PREFIXES = ("/oauth/", "/.well-known/", "/admin", "/console", "/audit")


def token_request(scope: Scope) -> bool:
    """A client's form-encoded token request: all the token endpoint alone serves (anything else at
    its address, such as another method or another body, goes to the whole control plane)."""
    if scope["type"] != "http" or scope["path"] != TOKEN_PATH or scope["method"] != "POST":
        return False
    content_type: bytes = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
    return content_type == b"application/x-www-form-urlencoded"


def combined():
    """Both planes in one process: control-plane prefixes go to Flask, the rest to the data plane.
    Token requests are served by the token endpoint alone, the rest of the control plane is built
    on its first request: most workers never hold it (docs/performance.md)."""
    gw = Gateway()
    data, control = data_routes(gw), built_on_first_request(lambda: control_plane(gw))
    token = built_on_first_request(lambda: token_plane(gw))

    async def app(scope, receive, send):
        if token_request(scope):
            return await token(scope, receive, send)
        if scope["type"] == "http" and scope["path"].startswith(CONTROL_PREFIXES):
            return await control(scope, receive, send)
        return await data(scope, receive, send)

    return ClientCertificate(HeaderLimit(app, gw), gw.settings)  # the control plane's requests too


