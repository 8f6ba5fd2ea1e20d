"""The OAuth2 token endpoint (client credentials, RFC 6749 §4.4; JWT access tokens, RFC 9068) on
authlib's framework-free server classes: `TokenServer.issue` answers one token request.

The control plane (lgsp/control/plane.py) serves it, with the JWKS and metadata, among its Flask
routes; `token_plane` serves it alone as a small ASGI app, so a combined worker that issues tokens
holds neither Flask nor connexion (docs/performance.md).
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Payload, OAuth2Request, grants  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.errors import InvalidClientError  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.util import extract_basic_authorization  # type: ignore[import-untyped]
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator  # type: ignore[import-untyped]
from joserfc.jwk import KeySet
from sqlalchemy import Engine
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from lgsp import auth_throttle, keys, secret_check
from lgsp.audit.writer import AuditUnavailable
from lgsp.config import Settings
from lgsp.control import JWKS_PATH, TOKEN_PATH
from lgsp.control import records as control_audit
from lgsp.control.clients import UnknownClient, query_client
from lgsp.errors import ExchangeError, problem
from lgsp.tls import binding as tls_binding
from lgsp.tls.peer import CERT, certificates_reach

log = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 500_000  # werkzeug's limit of a form, which the Flask endpoint had: 413 above it
Answer = tuple[int, dict[str, str], bytes]  # status, headers, body

# The client certificate of the token request being answered (for its token's cnf claim).
_certificate: ContextVar[bytes | None] = ContextVar("lgsp_token_certificate", default=None)


class FormPayload(OAuth2Payload):  # type: ignore[misc]
    """A token request's parameters: the query's, then the form's (as Flask's request.values)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class TokenRequest(OAuth2Request):  # type: ignore[misc]
    """One token request, parsed by whichever server received it, with the certificate of its connection."""

    def __init__(self, uri: str, headers: Any, query: list[tuple[str, str]],  # werkzeug's or Starlette's headers
                 form: list[tuple[str, str]], certificate: bytes | None):
        super().__init__("POST", uri, headers=headers)
        self._args, self._form = dict(reversed(query)), dict(reversed(form))  # the first of each name
        self.payload = FormPayload([*query, *form])
        self.certificate = certificate

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


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
        return tls_binding.confirmation(client.binding, _certificate.get())


def _certificate_auth(method: str) -> Callable[[Any, Any], Any]:
    """An authlib client authentication method of RFC 8705 §2: the client names itself (client_id)
    and proves it with the certificate of the connection (or of the trusted proxy's header)."""
    def authenticate(query_client: Any, request: TokenRequest) -> Any:
        client_id = request.form.get("client_id")
        client = query_client(client_id) if client_id else None
        if client is None or client.binding is None or client.binding.method != method:
            return None
        if not tls_binding.certificate_matches(client.binding, request.certificate):
            return None
        return client

    return authenticate


class TokenServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's authorization server with the client credentials grant only, the clients of the
    database, and the active signing key; `issue` is the whole token endpoint."""

    def __init__(self, engine: Engine, cfg: Settings):
        super().__init__()
        self.engine = engine
        self.register_grant(ClientCredentials)
        for method in tls_binding.METHODS:
            self.register_client_auth_method(method, _certificate_auth(method))
        self.register_token_generator("default", TokenGenerator(engine, cfg))

    def query_client(self, client_id: str) -> Any:
        return query_client(self.engine, client_id) or UnknownClient(client_id)

    def save_token(self, token: dict[str, Any], request: TokenRequest) -> None:
        # Nothing is stored (tokens are self-contained JWTs), but each issue is recorded.
        control_audit.token_issued(self.engine, request.client.get_client_id(), token.get("scope"),
                                   token.get("expires_in"))

    def create_oauth2_request(self, request: TokenRequest) -> TokenRequest:
        return request

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError("the token endpoint takes forms only")

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Answer:
        return status, dict(headers), body.encode() if isinstance(body, str) else json.dumps(body).encode()

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass  # nothing listens

    def issue(self, request: TokenRequest, source: str | None) -> Answer:
        """A token, or the refusal (throttled callers first): blocking (database, secret check)."""
        try:
            client_id = _claimed_client_id(request)
        except UnicodeDecodeError:  # HTTP Basic credentials that are not UTF-8: authlib cannot decode them
            return self._unreadable_credentials(request, source)
        wait = auth_throttle.retry_after("token", client_id, source)
        if wait is None:
            token = _certificate.set(request.certificate)
            try:
                status, headers, body = self.create_token_response(request)
            except secret_check.Busy:
                wait = 1
            finally:
                _certificate.reset(token)
        if wait is not None:
            return _throttled(wait)
        if status == 401:  # invalid_client: a wrong or unknown id or secret
            auth_throttle.failed("token", client_id, source)
        return status, headers, body

    def _unreadable_credentials(self, request: TokenRequest, source: str | None) -> Answer:
        """invalid_client (401), as for a wrong secret, and counted as a failed authentication of the address."""
        wait = auth_throttle.retry_after("token", None, source)
        if wait is not None:
            return _throttled(wait)
        auth_throttle.failed("token", None, source)
        answer: Answer = self.handle_error_response(request, InvalidClientError(
            description="The client id and secret in the Authorization header are not UTF-8 text.", status_code=401))
        return answer


def _throttled(wait: int) -> Answer:
    return problem_answer(ExchangeError("auth.throttled", f"Too many failed authentications; try again in {wait} s.",
                                        headers={"Retry-After": str(wait)}))


def _claimed_client_id(request: TokenRequest) -> str | None:
    """The client id a token request names (HTTP Basic or form), before anything is checked."""
    basic, _ = extract_basic_authorization(request.headers)
    if basic is not None:
        return basic or None
    return request.form.get("client_id") or None


def published_jwks(engine: Engine) -> dict[str, Any]:
    return {"keys": keys.published_keys(keys.load_rows(engine))}


def metadata(cfg: Settings) -> dict[str, Any]:
    """RFC 8414, so standard clients can discover the token endpoint and keys."""
    return {
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
    }


def token_plane(engine: Engine, cfg: Settings) -> Callable[[Scope, Receive, Send], Any]:
    """The token endpoint alone (ASGI) for a client's form-encoded POST (lgsp.app.token_request): what a
    combined worker serves a token request with, without Flask or the rest of the control plane."""
    server = TokenServer(engine, cfg)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await _form_body(receive)
        if body is None:
            status, headers, answer = problem_answer(ExchangeError(
                "request.too_large", "The request body is over the size limit of this API."))
        else:
            request = TokenRequest(cfg.public_url + TOKEN_PATH, Headers(scope=scope),
                                   _pairs(scope.get("query_string", b"")), _pairs(body),
                                   (scope.get("extensions") or {}).get(CERT))
            source = (scope.get("client") or (None,))[0]
            status, headers, answer = await asyncio.to_thread(_issue_or_refuse, server, request, source)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status,
                    "headers": [*raw, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


# An answer that cannot be recorded is refused (here and on the control plane's Flask routes).
AUDIT_UNAVAILABLE = ExchangeError("audit.unavailable", "The audit log cannot be written, so the request was refused.")


def _issue_or_refuse(server: TokenServer, request: TokenRequest, source: str | None) -> Answer:
    """`server.issue`, or problem+json if it fails (the token's record cannot be written, a defect)."""
    try:
        return server.issue(request, source)
    except AuditUnavailable:
        return problem_answer(AUDIT_UNAVAILABLE)
    except Exception:
        log.exception("token request failed")
        return problem_answer(ExchangeError("internal.error", "The token request could not be completed; "
                                            "it has been logged."))


async def _form_body(receive: Receive) -> bytes | None:
    """The request body, or None once it is over MAX_FORM_BYTES."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _pairs(raw: bytes) -> list[tuple[str, str]]:
    return parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)


def problem_body(exc: ExchangeError) -> tuple[bytes, dict[str, str]]:
    headers = {"Content-Type": "application/problem+json", "Cache-Control": "no-store", **exc.headers}
    return json.dumps(problem(exc.code, exc.detail, None)).encode(), headers


def problem_answer(exc: ExchangeError) -> Answer:
    body, headers = problem_body(exc)
    return exc.status, headers, body
