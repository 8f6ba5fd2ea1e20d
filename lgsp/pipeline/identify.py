"""Stage: identify the client from its bearer token (a JWT we issued, RFC 9068)."""
from __future__ import annotations

import hashlib
import time
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from lgsp import auth_throttle, secret_check
from lgsp.config import settings
from lgsp.control.roles import ROLE_SCOPES
from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.identity import Identity
from lgsp.pipeline.stage import StageContext
from lgsp.registry import Snapshot
from lgsp.tls import binding as tls_binding

# Verified tokens, so a client reusing its token costs one RSA verification,
# not one per request. Bounded; expiry and client status are still checked each time.
_verified: dict[str, Identity] = {}
_CACHE_MAX = 20_000


# (client id, secret digest) → the stored hash it was checked against; scrypt is
# deliberately slow, and a changed secret (new stored hash) invalidates the entry.
_passwords: dict[tuple[str, str], str] = {}


def _password_identity(client_id: str, secret: str, snap: Snapshot) -> Identity:
    """The identity of a WS-Security UsernameToken: the client's granted services and roles as scopes.

    The secret itself was checked by `check_password` (off the event loop); here only its result is read.
    """
    client = snap.clients.get(client_id)
    if client is None or _passwords.get(_password_key(client_id, secret)) != client.secret_hash:
        raise ExchangeError("auth.token_invalid", "The UsernameToken's client id or secret is wrong.")
    scopes = snap.granted.get(client_id, frozenset()) | {ROLE_SCOPES[r] for r in client.roles if r in ROLE_SCOPES}
    return Identity(client_id, frozenset(scopes), expires_at=float("inf"))


def _password_key(client_id: str, secret: str) -> tuple[str, str]:
    return client_id, hashlib.sha256(secret.encode()).hexdigest()


async def check_password(ex: Exchange, ctx: StageContext) -> None:
    """Check a WS-Security UsernameToken's secret before `identify`: in the secret-check pool
    (never on the event loop), throttled per client id and source, failures audited in aggregate."""
    if ex.token or not ex.credentials:
        return
    client_id, secret = ex.credentials
    client = ctx.snap.clients.get(client_id)
    key = _password_key(client_id, secret)
    if client is not None and _passwords.get(key) == client.secret_hash:
        return  # checked before: proof of the secret, so no throttle applies
    wait = auth_throttle.retry_after("soap", client_id, ex.source)
    if wait is None:
        try:
            ok = await secret_check.check_async(secret, client.secret_hash if client else None)
        except secret_check.Busy:
            wait = 1
    if wait is not None:
        raise ExchangeError("auth.throttled", f"Too many failed authentications; try again in {wait} s.",
                            headers={"Retry-After": str(wait)})
    if not ok or client is None:
        auth_throttle.failed("soap", client_id, ex.source)
        raise ExchangeError("auth.token_invalid", "The UsernameToken's client id or secret is wrong.")
    if len(_passwords) >= 1000:
        _passwords.clear()
    _passwords[key] = client.secret_hash


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def verify_token(token: str, snap: Snapshot) -> Identity:
    identity = _verified.get(token)
    if identity is None:
        identity = _decode(token, snap)
        if len(_verified) >= _CACHE_MAX:
            _verified.clear()
        _verified[token] = identity
    elif identity.kid not in snap.key_kids:
        _verified.pop(token, None)
        identity = _decode(token, snap)
    if identity.expires_at <= time.time():
        raise ExchangeError("auth.token_expired", "The access token has expired; request a new one.")
    return identity


def _decode(token: str, snap: Snapshot) -> Identity:
    if snap.key_set is None:
        raise ExchangeError("auth.token_invalid", "No token signing keys are configured.")
    return Identity.from_claims(decode_access_token(token, snap.key_set))


def decode_access_token(token: str, key_set: KeySet) -> dict[str, Any]:
    """Verify an access token we issued (signature, typ, iss, aud, exp present) and return its claims."""
    cfg = settings()
    try:
        tok = jwt.decode(token, key_set, algorithms=["RS256"])
    except (JoseError, ValueError) as exc:
        raise ExchangeError("auth.token_invalid", "The access token is not valid.") from exc
    if tok.header.get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
        raise ExchangeError("auth.token_invalid", "The token is not an access token.")
    claims = dict(tok.claims)
    aud = claims.get("aud")
    if claims.get("iss") != cfg.issuer or cfg.audience not in (aud if isinstance(aud, list) else [aud]):
        raise ExchangeError("auth.token_invalid", "The access token was not issued for this API.")
    if not isinstance(claims.get("exp"), (int, float)) or not isinstance(claims.get("sub"), str):
        raise ExchangeError("auth.token_invalid", "The access token lacks required claims.")
    _check_times(claims, max(cfg.token_max_lifetime, cfg.token_ttl))  # never refuse our own tokens
    claims["_kid"] = tok.header.get("kid")
    claims["_scopes"] = frozenset(str(claims.get("scope", "")).split())
    return claims


# Clock skew tolerated between the token's issuer and this process.
LEEWAY_SECONDS = 60


def _check_times(claims: dict[str, Any], max_lifetime: int) -> None:
    """iat and nbf not in the future, and a lifetime no longer than the operator allows: a
    token that lives for a year (a leaked signing key, a mis-set issuer) is refused."""
    iat, nbf = claims.get("iat"), claims.get("nbf")
    if not isinstance(iat, (int, float)) or (nbf is not None and not isinstance(nbf, (int, float))):
        raise ExchangeError("auth.token_invalid", "The access token lacks a valid issue time (iat).")
    now = time.time()
    if iat > now + LEEWAY_SECONDS or (nbf is not None and nbf > now + LEEWAY_SECONDS):
        raise ExchangeError("auth.token_not_yet_valid", "The access token is not valid yet (iat or nbf is in the "
                                                        "future); check the clocks, or request a new token.")
    if claims["exp"] - iat > max_lifetime:
        raise ExchangeError("auth.token_lifetime", f"The access token's lifetime is over the {max_lifetime} s "
                                                   f"this LGSP accepts; request a new token.")


async def identify(ex: Exchange, ctx: StageContext) -> None:
    snap = ctx.snap
    if not ex.token and ex.credentials:
        ex.identity = _password_identity(*ex.credentials, snap)
        ex.client = snap.clients[ex.identity.client_id]
        if not ex.client.active:
            raise ExchangeError("auth.client_disabled", f"Client '{ex.client.client_id}' is disabled.")
        tls_binding.check(snap.bindings.get(ex.client.client_id), ex.client.client_id, None, ex.certificate, ex.source)
        return
    if not ex.token:
        raise ExchangeError(
            "auth.token_missing",
            "Send an OAuth2 access token as 'Authorization: Bearer <token>'; get one from the token endpoint.",
            headers={"WWW-Authenticate": 'Bearer realm="lgsp"'},
        )
    ex.identity = verify_token(ex.token, snap)
    client = snap.clients.get(ex.identity.client_id)
    if client is None:
        raise ExchangeError("auth.token_invalid", "The access token names an unknown client.")
    ex.client = client
    if not client.active:
        raise ExchangeError("auth.client_disabled", f"Client '{client.client_id}' is disabled.")
    # Certificate-bound tokens (RFC 8705) and the client's allowed networks.
    tls_binding.check(snap.bindings.get(client.client_id), client.client_id, ex.identity.cnf, ex.certificate,
                      ex.source)
