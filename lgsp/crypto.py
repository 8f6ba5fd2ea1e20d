"""Small cryptographic helpers: secret hashing, key derivation, keyed hashes.

Every key derives from the one master secret (LGSP_SECRET_KEY) with HKDF, so an
operator has a single secret to keep, and each use gets its own key.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import cache

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lgsp.config import settings

# N·p = 2^14 as before (the same CPU per check, ~40 ms), but an 8 MiB work area instead of 16: a worker
# checks secrets beside its exchanges, and each concurrent check held 16 MiB (docs/security.md).
# Hashes made with other parameters still verify: they are stored in the hash.
_SCRYPT = {"n": 2**13, "r": 8, "p": 2}


def hash_secret(secret: str) -> str:
    """A salted scrypt hash, self-describing so parameters can change later."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${digest}".format(
        **_SCRYPT, salt=salt.hex(), digest=digest.hex()
    )


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), dklen=32, n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(candidate.hex(), digest)


def derive_key(purpose: str, length: int = 32) -> bytes:
    return _derive(settings().master_secret, purpose, length)


@cache
def _derive(master: bytes, purpose: str, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode()).derive(master)


def fernet() -> Fernet:
    """Encrypts secrets at rest (signing keys, connection secrets)."""
    return Fernet(base64.urlsafe_b64encode(derive_key("lgsp/secrets-at-rest")))


def subject_hash(personal_id: str) -> str:
    """Keyed hash of a personal ID: searchable by whoever holds the key, opaque to anyone else."""
    mac = _subject_mac(settings().master_secret).copy()
    mac.update(personal_id.encode())
    return mac.hexdigest()


@cache
def _subject_mac(master: bytes):
    return hmac.new(_derive(master, "lgsp/audit-subject", 32), digestmod=hashlib.sha256)
