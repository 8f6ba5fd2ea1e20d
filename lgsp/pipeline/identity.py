"""Who the caller is, as the identify stage established it (from an access token or a UsernameToken)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Identity:
    client_id: str
    scopes: frozenset[str]
    expires_at: float                      # inf for a UsernameToken (checked on each request)
    issued_at: float | None = None
    jti: str | None = None
    kid: str | None = None                 # the signing key: a retired key invalidates a cached token
    cnf: Mapping[str, Any] | None = None   # RFC 8705 confirmation (certificate-bound token), when present

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Identity:
        """From a verified access token's claims (as lgsp.pipeline.identify.decode_access_token returns them)."""
        jti, cnf = claims.get("jti"), claims.get("cnf")
        return cls(
            client_id=claims["sub"], scopes=claims["_scopes"], expires_at=claims["exp"], issued_at=claims.get("iat"),
            jti=jti if isinstance(jti, str) else None, kid=claims.get("_kid"),
            cnf=cnf if isinstance(cnf, Mapping) else None,
        )
