"""Who is calling a control-plane API (audit search, console, admin): the same
OAuth2 access tokens as the shared APIs, a role scope instead of a service scope.

The control plane is not the hot path, so the client's status and roles are read
from the database on every call (one primary-key lookup): a disabled auditor, or an
admin whose role was taken away, is refused at once, whatever its token still says.
Like grants on the data plane, a role needs both: the token's scope and the live role.
"""
from __future__ import annotations

import time

from flask import g, has_request_context
from sqlalchemy import Engine, select

from lgsp import keys
from lgsp.control.roles import ROLE_SCOPES
from lgsp.errors import ExchangeError
from lgsp.pipeline.identify import bearer_token, decode_access_token
from lgsp.storage.schema import clients
from lgsp.tls import binding as tls_binding
from lgsp.tls import certs
from lgsp.tls.peer import certificate_of_environ

_KEYS_TTL = 5.0
_key_cache: dict[str, tuple[float, object]] = {}


def _key_set(engine: Engine):
    cached = _key_cache.get(str(engine.url))
    if cached and time.monotonic() - cached[0] < _KEYS_TTL:
        return cached[1]
    key_set = keys.public_key_set(keys.published_keys(keys.load_rows(engine)))
    _key_cache[str(engine.url)] = (time.monotonic(), key_set)
    return key_set


def claims_for(engine: Engine, token: str | None, scope: str) -> dict:
    """Verified claims of `token` if it carries `scope` and its client is active; else ExchangeError."""
    if not token:
        raise ExchangeError("auth.token_missing", "Send an OAuth2 access token as 'Authorization: Bearer <token>'.",
                            headers={"WWW-Authenticate": 'Bearer realm="lgsp"'})
    claims = decode_access_token(token, _key_set(engine))
    if has_request_context():
        g.lgsp_caller = claims["sub"]  # a verified caller: named in the audit record of a refusal
    if claims["exp"] <= time.time():
        raise ExchangeError("auth.token_expired", "The access token has expired; request a new one.")
    with engine.connect() as conn:
        row = conn.execute(select(clients.c.status, clients.c.roles)
                           .where(clients.c.client_id == claims["sub"])).first()
    if row is None:
        raise ExchangeError("auth.token_invalid", "The access token names an unknown client.")
    if row.status != "active":
        raise ExchangeError("auth.client_disabled", f"Client '{claims['sub']}' is disabled.")
    if has_request_context():  # certificate-bound tokens and allowed networks hold here too (RFC 8705)
        from flask import request

        cert = certificate_of_environ(request.environ)
        cnf = claims.get("cnf")
        tls_binding.check(tls_binding.load_one(engine, claims["sub"]), claims["sub"],
                          cnf if isinstance(cnf, dict) else None, certs.thumbprint(cert) if cert else None,
                          request.remote_addr)
    if scope not in claims["_scopes"]:
        raise ExchangeError("access.no_grant", f"This API needs the '{scope}' scope (role), which the token lacks.")
    if scope not in live_scopes(row.roles):
        raise ExchangeError("access.no_grant", f"Client '{claims['sub']}' no longer holds the role this API needs "
                                               f"('{scope}').")
    return claims


def live_scopes(roles) -> set[str]:
    """The scopes a client's roles, as stored now, give it."""
    return {ROLE_SCOPES[r] for r in roles or () if r in ROLE_SCOPES}


def verified_caller(engine: Engine, authorization: str | None) -> str | None:
    """The client id of a validly signed token, else None (for the record of a refusal only)."""
    token = bearer_token(authorization)
    if not token:
        return None
    try:
        return decode_access_token(token, _key_set(engine))["sub"]
    except ExchangeError:
        return None


def claims_from_header(engine: Engine, authorization: str | None, scope: str) -> dict:
    return claims_for(engine, bearer_token(authorization), scope)
