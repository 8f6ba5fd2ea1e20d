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
from typing import Any

from connexion import FlaskApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionResponse
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.options import SwaggerUIOptions
from flask import Flask, Response, g, jsonify
from flask import request as flask_request
from flask.typing import ResponseReturnValue
from sqlalchemy import Engine
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from werkzeug.routing import RequestRedirect

from lgsp import specs
from lgsp.audit.writer import AuditUnavailable
from lgsp.config import Settings
from lgsp.control import JWKS_PATH, TOKEN_PATH, console
from lgsp.control import records as control_audit
from lgsp.control.auth import verified_caller
from lgsp.control.token_endpoint import (
    AUDIT_UNAVAILABLE,
    TokenRequest,
    TokenServer,
    metadata,
    problem_body,
    published_jwks,
)
from lgsp.doors.request_guard import RequestGuard, allowed_methods
from lgsp.doors.request_guard import unreadable as unreadable_body
from lgsp.doors.rest import MIDDLEWARES, refusal_for
from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import request_id_from
from lgsp.pipeline.identify import bearer_token
from lgsp.tls.peer import certificate_of_environ

log = logging.getLogger(__name__)

# Refusals of these APIs are audited (the console and the token endpoint keep their own records).
AUDITED_PREFIXES = ("/admin/", "/audit/")

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


def add_token_endpoints(app: Flask, engine: Engine, cfg: Settings) -> None:
    """The token endpoint, JWKS and metadata on the control plane's Flask app, with its error handlers."""
    server = TokenServer(engine, cfg)

    @app.post(TOKEN_PATH)
    def issue_token() -> ResponseReturnValue:
        req = flask_request
        request = TokenRequest(req.url, req.headers, list(req.args.items(multi=True)),
                               list(req.form.items(multi=True)), certificate_of_environ(req.environ))
        status, headers, body = server.issue(request, flask_request.remote_addr)
        return Response(body, status=status, headers=headers)

    @app.get(JWKS_PATH)
    def jwks() -> ResponseReturnValue:
        resp = jsonify(published_jwks(engine))
        resp.headers["Cache-Control"] = "public, max-age=60"
        return resp

    @app.get("/.well-known/oauth-authorization-server")
    def oauth_metadata() -> ResponseReturnValue:
        return jsonify(metadata(cfg))
    _add_error_handlers(app, engine)


def _add_error_handlers(app: Flask, engine: Engine) -> None:
    """Every refusal and failure of these addresses as problem+json; refused admin and audit calls audited."""
    @app.errorhandler(404)
    def not_found(_e: Exception) -> ResponseReturnValue:
        return problem_response(ExchangeError("request.not_found", "No such control-plane address."))

    @app.errorhandler(405)
    def not_allowed(_e: Exception) -> ResponseReturnValue:
        return problem_response(method_not_allowed(flask_request.path))

    @app.errorhandler(RequestRedirect)
    def moved(exc: RequestRedirect) -> ResponseReturnValue:
        return exc.get_response()  # carries its Location

    @app.errorhandler(ExchangeError)
    def refused(exc: ExchangeError) -> ResponseReturnValue:
        return problem_response(audit_refusal(engine, flask_request.method, flask_request.path,
                                              flask_request.headers, exc, g.get("lgsp_caller")))

    @app.errorhandler(Exception)
    def failed(exc: Exception) -> ResponseReturnValue:
        known = known_failure(exc)
        if known is not None:
            return problem_response(known)
        app.logger.exception("control plane request failed")
        return problem_response(INTERNAL)


def problem_response(exc: ExchangeError) -> Response:
    body, headers = problem_body(exc)
    return Response(body, status=exc.status, headers=headers)


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


INTERNAL = ExchangeError("internal.error", "The request could not be completed; it has been logged.")


def method_not_allowed(path: str) -> ExchangeError:
    allow = allowed_methods(path)
    return ExchangeError("request.method_not_allowed",
                         f"This address takes {allow} only." if allow else "This address does not take that method.",
                         headers={"Allow": allow} if allow else None)


def known_failure(exc: Exception) -> ExchangeError | None:
    """Failures that are the request's fault, raised below the handlers (bytes, numbers out of range)."""
    unreadable = unreadable_body(exc)
    if unreadable is not None:
        return unreadable
    if isinstance(exc, AuditUnavailable):  # e.g. a token whose issue cannot be recorded
        return AUDIT_UNAVAILABLE
    if isinstance(exc, DataError):  # a value the database cannot keep (too long, out of range)
        return ExchangeError("request.invalid", "A value is longer or larger than the LGSP can keep.")
    return None


def audit_refusal(engine: Engine, method: str, path: str, headers: Any, exc: ExchangeError,
                  caller: str | None = None) -> ExchangeError:
    """Record a refused admin or audit API call (`headers`: werkzeug's or Starlette's); the answer is the
    refusal, or 503 if it cannot be recorded."""
    if not path.startswith(AUDITED_PREFIXES):
        return exc
    caller = caller or verified_caller(engine, headers.get("authorization"))
    rid = headers.get("x-request-id")
    try:
        control_audit.refusal(engine, method, path, exc, caller, request_id_from(rid) if rid else None)
    except AuditUnavailable:
        return AUDIT_UNAVAILABLE
    return exc
