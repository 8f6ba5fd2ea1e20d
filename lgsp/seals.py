"""Seals: a chain head (chain, seq, hash) signed with Ed25519 at intervals.

A hash chain alone shows edits by someone who cannot recompute hashes; a seal
signed with a key kept outside the database also catches someone who can
(rewrite a record, recompute every later hash: the sealed head no longer
matches). Keys rotate; retired public keys stay so old seals keep verifying.
"""
from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, insert, select, update

from lgsp.crypto import fernet
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


def _raw_public(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def create_key(engine: Engine) -> str:
    """A new active seal key; the current one is retired (and keeps verifying)."""
    key = Ed25519PrivateKey.generate()
    kid = f"seal-{dt.datetime.now(dt.timezone.utc):%Y%m%d}-{secrets.token_hex(4)}"
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    now = dt.datetime.now(dt.timezone.utc)
    with engine.begin() as conn:
        conn.execute(update(audit_keys).where(audit_keys.c.status == "active").values(status="retired", retired_at=now))
        conn.execute(insert(audit_keys).values(kid=kid, public_key=_raw_public(key),
                                               private_key=fernet().encrypt(private).decode(),
                                               status="active", created_at=now))
    return kid


def ensure_key(engine: Engine) -> None:
    with engine.connect() as conn:
        if conn.execute(select(audit_keys.c.kid).where(audit_keys.c.status == "active")).first():
            return
    create_key(engine)


def signer(engine: Engine) -> Signer:
    ensure_key(engine)
    with engine.connect() as conn:
        row = conn.execute(select(audit_keys).where(audit_keys.c.status == "active")
                           .order_by(audit_keys.c.created_at.desc())).first()
    raw = fernet().decrypt(row.private_key.encode())
    return Signer(row.kid, Ed25519PrivateKey.from_private_bytes(raw))


def public_keys(engine: Engine) -> dict[str, str]:
    """kid → hex raw public key, active and retired alike."""
    with engine.connect() as conn:
        return {r.kid: r.public_key for r in conn.execute(select(audit_keys.c.kid, audit_keys.c.public_key))}


def verify(seal: dict, keys: dict[str, str]) -> str | None:
    """None if the seal's signature holds; otherwise why not."""
    public = keys.get(seal["kid"])
    if public is None:
        return f"signed with unknown key {seal['kid']}"
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(
            bytes.fromhex(seal["signature"]),
            message(seal["chain"], seal["seq"], seal["head_hash"], seal["at"], seal["kid"], seal["reason"]),
        )
    except (InvalidSignature, ValueError):
        return "signature does not verify"
    return None
