"""Token signing keys: stored encrypted, rotated without invalidating live tokens.

One key is `active` (signs new tokens). Rotation retires it; a retired key stays
in the JWKS, and keeps verifying, until every token it signed has expired.
"""
from __future__ import annotations

import datetime as dt
import secrets

from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import Engine, insert, select, update

from lgsp.config import settings
from lgsp.config_notify import bump_generation
from lgsp.crypto import fernet
from lgsp.storage.schema import signing_keys

ALGORITHM = "RS256"  # RFC 9068 requires RS256 support of every verifier.


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def create_key(engine: Engine) -> str:
    """Make a new active key, retiring the current one. Returns the new kid."""
    key = RSAKey.generate_key(2048)
    kid = f"{_now():%Y%m%d}-{secrets.token_hex(4)}"
    public = key.as_dict(private=False)
    public.update(kid=kid, alg=ALGORITHM, use="sig")
    private_pem = key.as_pem(private=True)
    with engine.begin() as conn:
        conn.execute(
            update(signing_keys).where(signing_keys.c.status == "active").values(status="retired", retired_at=_now())
        )
        conn.execute(
            insert(signing_keys).values(
                kid=kid, algorithm=ALGORITHM, private_key=fernet().encrypt(private_pem).decode(),
                public_jwk=public, status="active", created_at=_now(),
            )
        )
        bump_generation(conn)
    return kid


rotate = create_key


def ensure_key(engine: Engine) -> None:
    with engine.connect() as conn:
        exists = conn.execute(select(signing_keys.c.kid).where(signing_keys.c.status == "active")).first()
    if not exists:
        create_key(engine)


def published_keys(rows) -> list[dict]:
    """Public JWKs that may still verify a live token: the active key and recently retired ones."""
    horizon = _now() - dt.timedelta(seconds=settings().token_ttl + 60)
    keys = []
    for row in rows:
        retired_at = row.retired_at
        if retired_at is not None and retired_at.tzinfo is None:
            retired_at = retired_at.replace(tzinfo=dt.timezone.utc)
        if row.status == "active" or (retired_at and retired_at > horizon):
            keys.append(dict(row.public_jwk))
    return keys


def load_rows(engine: Engine):
    with engine.connect() as conn:
        return conn.execute(select(signing_keys).order_by(signing_keys.c.created_at.desc())).all()


def active_private_key(engine: Engine) -> RSAKey:
    with engine.connect() as conn:
        row = conn.execute(select(signing_keys).where(signing_keys.c.status == "active")).first()
    if row is None:
        raise RuntimeError("no active signing key; run `lgsp keys rotate`")
    pem = fernet().decrypt(row.private_key.encode())
    return RSAKey.import_key(pem, {"kid": row.kid, "alg": ALGORITHM, "use": "sig"})


def public_key_set(jwks: list[dict]) -> KeySet:
    return KeySet.import_key_set({"keys": jwks})
