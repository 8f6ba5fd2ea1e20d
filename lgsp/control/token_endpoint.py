"""The OAuth2 token endpoint (client credentials, RFC 6749 §4.4; JWT access tokens, RFC 9068), its
JWKS and metadata: Flask and authlib, without connexion.

The control plane (lgsp/control/plane.py) serves these beside its APIs; `token_plane` serves the
token endpoint alone, so a combined worker that issues a token does not build the whole control
plane (connexion, the console, the admin and audit APIs: ~25 MiB, docs/performance.md).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from a2wsgi import WSGIMiddleware
from authlib.integrations.flask_oauth2 import AuthorizationServer  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749 import grants  # type: ignore[import-untyped]
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator  # type: ignore[import-untyped]
from flask import Flask, Response, jsonify
from flask import request as flask_request
from flask.typing import ResponseReturnValue
from joserfc.jwk import KeySet
from sqlalchemy import Engine
from sqlalchemy.exc import DataError
from werkzeug.exceptions import HTTPException as WerkzeugHTTPException
from werkzeug.routing import RequestRedirect

from lgsp import auth_throttle, keys, secret_check
from lgsp.audit.writer import AuditUnavailable
from lgsp.config import Settings
from lgsp.control import JWKS_PATH, TOKEN_PATH
from lgsp.control import records as control_audit
from lgsp.control.auth import verified_caller
from lgsp.control.clients import UnknownClient, query_client
from lgsp.doors.request_guard import allowed_methods
from lgsp.doors.request_guard import unreadable as unreadable_body
from lgsp.errors import ExchangeError, problem
from lgsp.pipeline.exchange import request_id_from
from lgsp.tls import binding as tls_binding
from lgsp.tls.peer import certificate_of_environ, certificates_reach

log = logging.getLogger(__name__)

# Refusals of these APIs are audited (the console and the token endpoint keep their own records).
AUDITED_PREFIXES = ("/admin/", "/audit/")


def _claimed_client_id(req: Any) -> str | None:
    """The client id a token request names (HTTP Basic or form), before anything is checked."""
    auth = req.authorization
    if auth is not None and auth.type == "basic":
        return auth.username or None
    return req.form.get("client_id") or None


class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
    """The client credentials grant with both ways the metadata advertises (RFC 6749 §2.3.1)."""

    TOKEN_ENDPOINT_AUTH_METHODS = [*tls_binding.SECRET_METHODS, *tls_binding.METHODS]


class TokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 JWT access tokens signed with the active key (kid in the header)."""

    def __init__(self, engine: Engine, cfg: Settings) -> None:
        super().__init__(issuer=cfg.issuer, alg=keys.ALGORITHM, expires_generator=cfg.token_ttl)
        self.engine = engine
        self.cfg = cfg

    def get_jwks(self) -> KeySet:
        # A one-key set, so that the token header names the key (kid) for verifiers.
        return KeySet([keys.active_private_key(self.engine)])

    def get_audiences(self, client: Any, user: Any, scope: Any) -> Any:
        return self.cfg.audience

    def get_extra_claims(self, client: Any, grant_type: Any, user: Any, scope: Any) -> Any:
        # RFC 8705 §3: a certificate-bound client's token names the certificate it was issued over.
        from flask import request

        return tls_binding.confirmation(client.binding, certificate_of_environ(request.environ))


def _certificate_auth(method: str) -> Callable[[Any, Any], Any]:
    """An authlib client authentication method of RFC 8705 §2: the client names itself (client_id)
    and proves it with the certificate of the connection (or of the trusted proxy's header)."""
    def authenticate(query_client: Any, request: Any) -> Any:
        from flask import request as flask_req

        client_id = request.form.get("client_id")
        client = query_client(client_id) if client_id else None
        if client is None or client.binding is None or client.binding.method != method:
            return None
        if not tls_binding.certificate_matches(client.binding, certificate_of_environ(flask_req.environ)):
            return None
        return client

    return authenticate


def add_token_endpoints(app: Flask, engine: Engine, cfg: Settings) -> None:
    """The token endpoint, JWKS and metadata on a Flask app, with its error handlers (problem+json)."""
    def save_token(token: dict[str, Any], request: Any) -> None:
        # Nothing is stored (tokens are self-contained JWTs), but each issue is recorded.
        control_audit.token_issued(engine, request.client.get_client_id(), token.get("scope"), token.get("expires_in"))

    server = AuthorizationServer(app, query_client=lambda cid: query_client(engine, cid) or UnknownClient(cid),
                                 save_token=save_token)
    server.register_grant(ClientCredentials)
    for method in tls_binding.METHODS:
        server.register_client_auth_method(method, _certificate_auth(method))
    server.register_token_generator("default", TokenGenerator(engine, cfg))

    @app.post(TOKEN_PATH)
    def issue_token() -> ResponseReturnValue:
        from flask import request

        client_id, source = _claimed_client_id(request), request.remote_addr
        wait = auth_throttle.retry_after("token", client_id, source)
        if wait is None:
            try:
                response: Response = server.create_token_response()
            except secret_check.Busy:
                wait = 1
        if wait is not None:
            return problem_response(ExchangeError("auth.throttled", f"Too many failed authentications; try again "
                                                  f"in {wait} s.", headers={"Retry-After": str(wait)}))
        if response.status_code == 401:  # invalid_client: a wrong or unknown id or secret
            auth_throttle.failed("token", client_id, source)
        return response

    @app.get(JWKS_PATH)
    def jwks() -> ResponseReturnValue:
        resp = jsonify({"keys": keys.published_keys(keys.load_rows(engine))})
        resp.headers["Cache-Control"] = "public, max-age=60"
        return resp

    @app.get("/.well-known/oauth-authorization-server")
    def metadata() -> ResponseReturnValue:
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
        from flask import g, request

        return problem_response(audit_refusal(engine, request.method, request.path, request.headers, exc,
                                              g.get("lgsp_caller")))

    @app.errorhandler(Exception)
    def failed(exc: Exception) -> ResponseReturnValue:
        known = known_failure(exc)
        if known is not None:
            return problem_response(known)
        app.logger.exception("control plane request failed")
        return problem_response(INTERNAL)


def token_plane(engine: Engine, cfg: Settings) -> WSGIMiddleware:
    """The token endpoint alone (ASGI): what the combined app serves a token request with, so that a
    worker issuing tokens does not build the whole control plane (lgsp.app.combined)."""
    app = Flask("lgsp.control.plane")
    add_token_endpoints(app, engine, cfg)

    @app.errorhandler(WerkzeugHTTPException)
    def refused_by_http(exc: WerkzeugHTTPException) -> ResponseReturnValue:
        # Worded as the control plane's connexion handlers word them (lgsp.doors.rest.refusal_for).
        if exc.code == 413:
            return problem_response(ExchangeError("request.too_large",
                                                  "The request body is over the size limit of this API."))
        if exc.code and 400 <= exc.code < 500:
            return problem_response(ExchangeError("request.invalid", exc.description or "The request is not valid."))
        return problem_response(INTERNAL)

    return WSGIMiddleware(app.wsgi_app)  # type: ignore[arg-type]  # wsgiref's and a2wsgi's types of one thing


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
    if isinstance(exc, DataError):  # a value the database cannot keep (too long, out of range)
        return ExchangeError("request.invalid", "A value is longer or larger than the LGSP can keep.")
    return None


def problem_body(exc: ExchangeError) -> tuple[bytes, dict[str, str]]:
    headers = {"Content-Type": "application/problem+json", "Cache-Control": "no-store", **exc.headers}
    return json.dumps(problem(exc.code, exc.detail, None)).encode(), headers


def problem_response(exc: ExchangeError) -> Response:
    body, headers = problem_body(exc)
    return app_response(body, exc.status, headers)


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
        return ExchangeError("audit.unavailable", "The audit log cannot be written, so the request was refused.")
    return exc


def app_response(body: bytes, status: int, headers: dict[str, str]) -> Response:
    return Response(body, status=status, headers=headers)
