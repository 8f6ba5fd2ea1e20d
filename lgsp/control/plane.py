"""The control plane (connexion FlaskApp): the OAuth2 token endpoint, its JWKS and
metadata, and the control-plane APIs whose OpenAPI documents declare
`x-lgsp-control-api` (audit search for auditors, later administration).

Kept apart from the data plane so each can be served and scaled on its own; in
the embedded set-up both run in one process (see lgsp.app). The control plane
reads clients from the database on every token request, so a disabled client
gets no new token at once.
"""
from __future__ import annotations

import functools
import logging

from connexion import FlaskApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionResponse
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.options import SwaggerUIOptions
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from lgsp import specs
from lgsp.config import Settings
from lgsp.control import console
from lgsp.control.token_endpoint import (
    INTERNAL,
    add_token_endpoints,
    audit_refusal,
    known_failure,
    method_not_allowed,
    problem_body,
)
from lgsp.doors.request_guard import RequestGuard
from lgsp.doors.rest import MIDDLEWARES, refusal_for
from lgsp.errors import ExchangeError
from lgsp.pipeline.identify import bearer_token

log = logging.getLogger(__name__)

def create_control_plane(engine: Engine, cfg: Settings) -> FlaskApp:
    middlewares = list(MIDDLEWARES)
    middlewares.insert(middlewares.index(ExceptionMiddleware) + 1,
                       functools.partial(RequestGuard, limit=cfg.max_body_bytes))
    capp = FlaskApp("lgsp.control.plane", middlewares=middlewares)
    app = capp.app
    app.config["LGSP_ENGINE"] = engine
    app.config["LGSP_SETTINGS"] = cfg
    for path in specs.control_apis():
        capp.add_api(path, arguments={"public_url": cfg.public_url}, strict_validation=True,
                     swagger_ui_options=SwaggerUIOptions(swagger_ui=True))

    def audited_problem(request, exc: ExchangeError) -> ConnexionResponse:
        audited = audit_refusal(engine, request.method, request.url.path, request.headers, exc)
        return _problem(request, audited)

    capp.add_error_handler(ExchangeError, audited_problem)
    capp.add_error_handler(ProblemException, lambda request, exc: _shape_problem(request, exc, audited_problem))
    capp.add_error_handler(StarletteHTTPException, lambda request, exc: _http_problem(request, exc, audited_problem))
    capp.add_error_handler(Exception, lambda request, exc: _failure(request, exc, audited_problem))
    app.register_blueprint(console.blueprint)
    add_token_endpoints(app, engine, cfg)
    return capp


def _http_problem(request, exc: StarletteHTTPException, respond=None):
    """Routing refusals of the control plane (404, 405, 413, slash redirects) in the one error format."""
    respond = respond or _problem
    status = exc.status_code
    if 300 <= status < 400:
        location = (exc.headers or {}).get("location") or str(exc.detail or "")
        return ConnexionResponse(status_code=status, body=b"", headers={"Location": location})
    if status == 405:
        return respond(request, method_not_allowed(request.url.path))
    if status == 404:
        return respond(request, ExchangeError("request.not_found", "No such control-plane address."))
    return respond(request, refusal_for(exc, path=request.url.path))


def _failure(request, exc: Exception, respond=None) -> ConnexionResponse:
    known = known_failure(exc)
    if known is None:
        log.error("control plane request failed", exc_info=exc)
        known = INTERNAL
    return (respond or _problem)(request, known)


def _shape_problem(request, exc: ProblemException, respond=None) -> ConnexionResponse:
    """A request the spec refuses: an anonymous caller hears about the token first."""
    respond = respond or _problem
    if not bearer_token(request.headers.get("authorization")):
        return respond(request, ExchangeError("auth.token_missing", "Send an OAuth2 access token as "
                                              "'Authorization: Bearer <token>'.",
                                              headers={"WWW-Authenticate": 'Bearer realm="lgsp"'}))
    return respond(request, refusal_for(exc))


def _problem(_request, exc: ExchangeError) -> ConnexionResponse:
    """ExchangeError raised in a spec-routed handler → problem+json (no stack trace)."""
    body, headers = problem_body(exc)
    return ConnexionResponse(status_code=exc.status, body=body, headers=headers, content_type=headers["Content-Type"])


