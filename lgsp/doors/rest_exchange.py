"""The REST door's exchanges and answers, without connexion.

What every REST answer needs — the Exchange of a request and its rendering as JSON or
problem+json — and the fast path that serves the shared APIs' plain reads (lgsp/doors/routes.py).
Kept apart from lgsp/doors/rest.py, which imports connexion, so a data-plane worker that only
serves fast-path reads, the SOAP and documents doors and its own pages never loads connexion
(about 20 MiB per worker: docs/performance.md).
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

import orjson

from lgsp.doors import routes
from lgsp.errors import problem
from lgsp.gateway import Gateway
from lgsp.pipeline.exchange import Exchange, request_id_from
from lgsp.pipeline.identify import bearer_token
from lgsp.pipeline.run import Rendered
from lgsp.tls.peer import thumbprint_of

JSON = "application/json"
PROBLEM = "application/problem+json"


class HasHeadersAndScope(Protocol):
    """A request as connexion and Starlette both give it."""

    headers: Mapping[str, str]
    scope: Any


def render(ex: Exchange) -> Rendered:
    headers = {"X-Request-ID": ex.request_id, "Cache-Control": "no-store"}
    if ex.error is None:
        headers["Content-Type"] = JSON
        return 200, headers, orjson.dumps(ex.answer)
    headers["Content-Type"] = PROBLEM
    headers.update(ex.error.headers)
    body = problem(ex.error.code, ex.error.detail, ex.request_id, status=ex.error.status)
    return ex.error.status, headers, orjson.dumps(body)


def exchange_from(req: HasHeadersAndScope, service: str | None, params: dict[str, Any]) -> Exchange:
    return exchange_of(req.headers, req.scope, service, params)


def exchange_of(h: Mapping[str, str], scope: dict[str, Any], service: str | None, params: dict[str, Any]) -> Exchange:
    """The exchange of a request, from its header fields and ASGI scope (connexion's or the fast path's)."""
    return Exchange(
        door="rest",
        request_id=request_id_from(h.get("x-request-id")),
        service_name=service,
        params=params,
        token=bearer_token(h.get("authorization")),
        purpose=h.get("x-purpose") or None,
        officer=header_text(h.get("x-on-behalf-of")) or None,
        request_bytes=int(h.get("content-length") or 0),
        claimed_request_id=h.get("x-request-id"),
        source=(scope.get("client") or (None,))[0],
        certificate=thumbprint_of(scope),
    )


def header_text(value: str | None) -> str | None:
    """A header field's value as text: its bytes read as UTF-8 when they are UTF-8, else as ISO-8859-1 (how
    ASGI servers hand them over, and what clients such as requests send). Read only as ISO-8859-1, an officer's
    Vietnamese name sent as UTF-8 was recorded as mojibake, or refused when one of its bytes read as a C1
    control character."""
    if value is None or value.isascii():
        return value
    raw = value.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return value


def fast_path(gateway: Gateway) -> routes.FastPath | None:
    """The shared APIs' plain reads without connexion (lgsp/doors/routes.py), unless LGSP_REST_FAST_PATH=0."""
    return routes.FastPath(gateway, render, exchange_of) if routes.enabled() else None
