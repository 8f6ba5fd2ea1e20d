"""Seals: a chain head (chain, seq, hash) signed with Ed25519 at intervals.

A hash chain alone shows edits by someone who cannot recompute hashes; a seal
signed with a key kept outside the database also catches someone who can
(rewrite a record, recompute every later hash: the sealed head no longer
matches). Keys rotate; retired public keys stay so old seals keep verifying.

Which public keys verify a seal is never the database's word alone: a key is
derived from the master secret (its seed is HKDF(master, "lgsp/audit-seal/KID"))
and listed in the operator's trust file; see lgsp/audit/trust.py.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, insert, select, update

from lgsp.crypto import derive_key, fernet
from lgsp.storage.schema import audit_keys

REASONS = ("start", "interval", "shutdown", "retention")


def message(chain: str, seq: int, head_hash: str, at: dt.datetime, kid: str, reason: str) -> bytes:
    """The signed bytes: every field of the seal, so none can be changed alone."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.timezone.utc)
    stamp = at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"lgsp-audit-seal/1|{chain}|{seq}|{head_hash}|{stamp}|{kid}|{reason}".encode()


@dataclass(frozen=True)
class Signer:
    kid: str
    key: Ed25519PrivateKey

    def seal(self, chain: str, seq: int, head_hash: str, reason: str) -> dict:
        at = dt.datetime.now(dt.timezone.utc)
        signature = self.key.sign(message(chain, seq, head_hash, at, self.kid, reason)).hex()
        return {"chain": chain, "seq": seq, "head_hash": head_hash, "at": at, "kid": self.kid,
                "signature": signature, "reason": reason}


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def derived_private(kid: str) -> Ed25519PrivateKey:
    """The seal key named `kid`, derived from the master secret: nobody without it can make one."""
    return Ed25519PrivateKey.from_private_bytes(derive_key(f"lgsp/audit-seal/{kid}"))


def derived_public(kid: str) -> str:
    return public_hex(derived_private(kid))


def fingerprint(public: str) -> str:
    """SSH-style fingerprint of a raw public key, for operators to compare out of band."""
    digest = hashlib.sha256(bytes.fromhex(public)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def create_key(engine: Engine) -> str:
    """A new active seal key; the current one is retired (and keeps verifying). Added to the trust file."""
    from lgsp.audit import trust as audit_trust

    kid = f"seal-{dt.datetime.now(dt.timezone.utc):%Y%m%d}-{secrets.token_hex(4)}"
    key = derived_private(kid)
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    now = dt.datetime.now(dt.timezone.utc)
    with engine.begin() as conn:
        conn.execute(update(audit_keys).where(audit_keys.c.status == "active").values(status="retired", retired_at=now))
        conn.execute(insert(audit_keys).values(kid=kid, public_key=public_hex(key),
                                               private_key=fernet().encrypt(private).decode(),
                                               status="active", created_at=now))
    audit_trust.add_key(kid, public_hex(key))
    return kid


def ensure_key(engine: Engine) -> str | None:
    """An active, derived seal key, and the trust file; the kid if a key was made. A key made
    before keys were derived is trusted on first use (when the trust file is made), then rotated."""
    from lgsp.audit import trust as audit_trust

    audit_trust.ensure_trust_file(engine)
    with engine.connect() as conn:
        active = conn.execute(select(audit_keys.c.kid, audit_keys.c.public_key)
                              .where(audit_keys.c.status == "active")).all()
    if any(row.public_key == derived_public(row.kid) for row in active):
        return None
    return create_key(engine)


def signer(engine: Engine) -> Signer:
    """The newest active key that derives from the master secret (a key row a database writer
    slipped in is never used to sign)."""
    ensure_key(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(audit_keys.c.kid, audit_keys.c.public_key).where(audit_keys.c.status == "active")
                            .order_by(audit_keys.c.created_at.desc())).all()
    for row in rows:
        if row.public_key == derived_public(row.kid):
            return Signer(row.kid, derived_private(row.kid))
    raise RuntimeError("no active seal key derives from the master secret")


def database_keys(engine: Engine) -> dict[str, str]:
    """kid → hex raw public key, as the database has them (active and retired): not to be trusted."""
    with engine.connect() as conn:
        return {r.kid: r.public_key for r in conn.execute(select(audit_keys.c.kid, audit_keys.c.public_key))}


def public_keys(engine: Engine) -> dict[str, str]:
    """The seal keys to verify with: trusted from outside the database (derived or in the trust file)."""
    from lgsp.audit import trust as audit_trust

    return audit_trust.trusted_keys(engine)


def verify(seal: dict, keys: dict[str, str]) -> str | None:
    """None if the seal's signature holds under `keys`; otherwise why not."""
    public = keys.get(seal["kid"])
    untrusted = seal["kid"] in getattr(keys, "untrusted", ())
    if public is not None:
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(
                bytes.fromhex(seal["signature"]),
                message(seal["chain"], seal["seq"], seal["head_hash"], seal["at"], seal["kid"], seal["reason"]),
            )
            return None
        except (InvalidSignature, ValueError):
            if not untrusted:
                return "signature does not verify"
    if untrusted:
        return f"signed with key {seal['kid']}, which is not trusted (a key the database holds, not the operator)"
    return f"signed with unknown key {seal['kid']}"
