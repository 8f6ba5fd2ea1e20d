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
import json
import logging

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from connexion import FlaskApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionResponse
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.options import SwaggerUIOptions
from flask import jsonify
from flask import request as flask_request
from joserfc.jwk import KeySet
from sqlalchemy import Engine
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from werkzeug.routing import RequestRedirect

from lgsp import auth_throttle, keys, secret_check, specs
from lgsp.audit.writer import AuditUnavailable
from lgsp.config import Settings
from lgsp.control import JWKS_PATH, TOKEN_PATH, console
from lgsp.control import records as control_audit
from lgsp.control.auth import verified_caller
from lgsp.control.clients import UnknownClient, query_client
from lgsp.doors.request_guard import RequestGuard, allowed_methods
from lgsp.doors.request_guard import unreadable as unreadable_body
from lgsp.doors.rest import MIDDLEWARES, refusal_for
from lgsp.errors import ExchangeError, problem
from lgsp.pipeline.exchange import request_id_from
from lgsp.pipeline.identify import bearer_token
from lgsp.tls import binding as tls_binding
from lgsp.tls.peer import certificate_of_environ, certificates_reach

log = logging.getLogger(__name__)

# Refusals of these APIs are audited (the console and the token endpoint keep their own records).
AUDITED_PREFIXES = ("/admin/", "/audit/")


def _claimed_client_id(req) -> str | None:
    """The client id a token request names (HTTP Basic or form), before anything is checked."""
    auth = req.authorization
    if auth is not None and auth.type == "basic":
        return auth.username or None
    return req.form.get("client_id") or None


class ClientCredentials(grants.ClientCredentialsGrant):
    """The client credentials grant with both ways the metadata advertises (RFC 6749 §2.3.1)."""

    TOKEN_ENDPOINT_AUTH_METHODS = [*tls_binding.SECRET_METHODS, *tls_binding.METHODS]


class TokenGenerator(JWTBearerTokenGenerator):
    """RFC 9068 JWT access tokens signed with the active key (kid in the header)."""

    def __init__(self, engine: Engine, cfg: Settings):
        super().__init__(issuer=cfg.issuer, alg=keys.ALGORITHM, expires_generator=cfg.token_ttl)
        self.engine = engine
        self.cfg = cfg

    def get_jwks(self):
        # A one-key set, so that the token header names the key (kid) for verifiers.
        return KeySet([keys.active_private_key(self.engine)])

    def get_audiences(self, client, user, scope):
        return self.cfg.audience

    def get_extra_claims(self, client, grant_type, user, scope):
        # RFC 8705 §3: a certificate-bound client's token names the certificate it was issued over.
        from flask import request

        return tls_binding.confirmation(client.binding, certificate_of_environ(request.environ))


def _certificate_auth(method: str):
    """An authlib client authentication method of RFC 8705 §2: the client names itself (client_id)
    and proves it with the certificate of the connection (or of the trusted proxy's header)."""
    def authenticate(query_client, request):
        from flask import request as flask_req

        client_id = request.form.get("client_id")
        client = query_client(client_id) if client_id else None
        if client is None or client.binding is None or client.binding.method != method:
            return None
        if not tls_binding.certificate_matches(client.binding, certificate_of_environ(flask_req.environ)):
            return None
        return client

    return authenticate


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
        audited = _audit_refusal(engine, request.method, request.url.path, request.headers, exc)
        return _problem(request, audited)

    capp.add_error_handler(ExchangeError, audited_problem)
    capp.add_error_handler(ProblemException, lambda request, exc: _shape_problem(request, exc, audited_problem))
    capp.add_error_handler(StarletteHTTPException, lambda request, exc: _http_problem(request, exc, audited_problem))
    capp.add_error_handler(Exception, lambda request, exc: _failure(request, exc, audited_problem))
    app.register_blueprint(console.blueprint)

    def save_token(token: dict, request) -> None:
        # Nothing is stored (tokens are self-contained JWTs), but each issue is recorded.
        control_audit.token_issued(engine, request.client.get_client_id(), token.get("scope"), token.get("expires_in"))

    server = AuthorizationServer(app, query_client=lambda cid: query_client(engine, cid) or UnknownClient(cid),
                                 save_token=save_token)
    server.register_grant(ClientCredentials)
    for method in tls_binding.METHODS:
        server.register_client_auth_method(method, _certificate_auth(method))
    server.register_token_generator("default", TokenGenerator(engine, cfg))

    @app.post(TOKEN_PATH)
    def issue_token():
        from flask import request

        client_id, source = _claimed_client_id(request), request.remote_addr
        wait = auth_throttle.retry_after("token", client_id, source)
        if wait is None:
            try:
                response = server.create_token_response()
            except secret_check.Busy:
                wait = 1
        if wait is not None:
            return _problem_response(ExchangeError("auth.throttled", f"Too many failed authentications; try again "
                                                   f"in {wait} s.", headers={"Retry-After": str(wait)}))
        if response.status_code == 401:  # invalid_client: a wrong or unknown id or secret
            auth_throttle.failed("token", client_id, source)
        return response

    @app.get(JWKS_PATH)
    def jwks():
        resp = jsonify({"keys": keys.published_keys(keys.load_rows(engine))})
        resp.headers["Cache-Control"] = "public, max-age=60"
        return resp

    @app.get("/.well-known/oauth-authorization-server")
    def metadata():
        # RFC 8414, so standard clients can discover the token endpoint and keys.
        return jsonify({
            "issuer": cfg.issuer,
            "token_endpoint": cfg.public_url + TOKEN_PATH,
            "jwks_uri": cfg.public_url + JWKS_PATH,
            "grant_types_supported": ["client_credentials"],
            # Certificate methods only where client certificates can reach this gateway (RFC 8705 §2.3, §3.3).
            "token_endpoint_auth_methods_supported": ClientCredentials.TOKEN_ENDPOINT_AUTH_METHODS
            if certificates_reach(cfg) else list(tls_binding.SECRET_METHODS),
            **({"tls_client_certificate_bound_access_tokens": True} if certificates_reach(cfg) else {}),
            # No authorization endpoint: no response type is offered (RFC 8414 §2 requires the member).
            "response_types_supported": [],
        })

    @app.errorhandler(404)
    def not_found(_e):
        return _problem_response(ExchangeError("request.not_found", "No such control-plane address."))

    @app.errorhandler(405)
    def not_allowed(_e):
        return _problem_response(_method_not_allowed(flask_request.path))

    @app.errorhandler(RequestRedirect)
    def moved(exc: RequestRedirect):
        return exc.get_response()  # carries its Location

    @app.errorhandler(ExchangeError)
    def refused(exc: ExchangeError):
        from flask import g, request

        return _problem_response(_audit_refusal(engine, request.method, request.path, request.headers, exc,
                                                g.get("lgsp_caller")))

    @app.errorhandler(Exception)
    def failed(exc: Exception):
        known = _known_failure(exc)
        if known is not None:
            return _problem_response(known)
        app.logger.exception("control plane request failed")
        return _problem_response(_INTERNAL)

    return capp


_INTERNAL = ExchangeError("internal.error", "The request could not be completed; it has been logged.")


def _method_not_allowed(path: str) -> ExchangeError:
    allow = allowed_methods(path)
    return ExchangeError("request.method_not_allowed",
                         f"This address takes {allow} only." if allow else "This address does not take that method.",
                         headers={"Allow": allow} if allow else None)


def _known_failure(exc: Exception) -> ExchangeError | None:
    """Failures that are the request's fault, raised below the handlers (bytes, numbers out of range)."""
    unreadable = unreadable_body(exc)
    if unreadable is not None:
        return unreadable
    if isinstance(exc, DataError):  # a value the database cannot keep (too long, out of range)
        return ExchangeError("request.invalid", "A value is longer or larger than the LGSP can keep.")
    return None


def _http_problem(request, exc: StarletteHTTPException, respond=None):
    """Routing refusals of the control plane (404, 405, 413, slash redirects) in the one error format."""
    respond = respond or _problem
    status = exc.status_code
    if 300 <= status < 400:
        location = (exc.headers or {}).get("location") or str(exc.detail or "")
        return ConnexionResponse(status_code=status, body=b"", headers={"Location": location})
    if status == 405:
        return respond(request, _method_not_allowed(request.url.path))
    if status == 404:
        return respond(request, ExchangeError("request.not_found", "No such control-plane address."))
    return respond(request, refusal_for(exc, path=request.url.path))


def _failure(request, exc: Exception, respond=None) -> ConnexionResponse:
    known = _known_failure(exc)
    if known is None:
        log.error("control plane request failed", exc_info=exc)
        known = _INTERNAL
    return (respond or _problem)(request, known)


def _problem_body(exc: ExchangeError) -> tuple[bytes, dict]:
    headers = {"Content-Type": "application/problem+json", "Cache-Control": "no-store", **exc.headers}
    return json.dumps(problem(exc.code, exc.detail, None)).encode(), headers


def _problem_response(exc: ExchangeError):
    body, headers = _problem_body(exc)
    return app_response(body, exc.status, headers)


def _shape_problem(request, exc: ProblemException, respond=None) -> ConnexionResponse:
    """A request the spec refuses: an anonymous caller hears about the token first."""
    respond = respond or _problem
    if not bearer_token(request.headers.get("authorization")):
        return respond(request, ExchangeError("auth.token_missing", "Send an OAuth2 access token as "
                                              "'Authorization: Bearer <token>'.",
                                              headers={"WWW-Authenticate": 'Bearer realm="lgsp"'}))
    return respond(request, refusal_for(exc))


def _audit_refusal(engine: Engine, method: str, path: str, headers, exc: ExchangeError,
                   caller: str | None = None) -> ExchangeError:
    """Record a refused admin or audit API call; the answer is the refusal, or 503 if it cannot be recorded."""
    if not path.startswith(AUDITED_PREFIXES):
        return exc
    caller = caller or verified_caller(engine, headers.get("authorization"))
    rid = headers.get("x-request-id")
    try:
        control_audit.refusal(engine, method, path, exc, caller, request_id_from(rid) if rid else None)
    except AuditUnavailable:
        return ExchangeError("audit.unavailable", "The audit log cannot be written, so the request was refused.")
    return exc


def _problem(_request, exc: ExchangeError) -> ConnexionResponse:
    """ExchangeError raised in a spec-routed handler → problem+json (no stack trace)."""
    body, headers = _problem_body(exc)
    return ConnexionResponse(status_code=exc.status, body=body, headers=headers, content_type=headers["Content-Type"])


def app_response(body: bytes, status: int, headers: dict):
    from flask import Response

    return Response(body, status=status, headers=headers)
