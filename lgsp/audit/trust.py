"""Which seal keys the verifier trusts: never the database's word alone.

A seal proves nothing if whoever can write the database can also add the key
that verifies it. So a seal key is trusted only from outside the database:

- derived from the master secret: the key named KID has the Ed25519 seed
  HKDF(LGSP_SECRET_KEY, "lgsp/audit-seal/KID"), so whoever holds the master
  secret recomputes its public key, and a database writer cannot make one;
- listed in the trust file the operator keeps (LGSP_AUDIT_TRUST, default
  LGSP_HOME/audit-trust.jsonl): one JSON object per line,
  {"kid", "public_key" (hex, raw Ed25519), "fingerprint", "added"}; blank lines
  and lines starting with "#" are ignored. This installation appends each key it
  makes; `lgsp audit trust export` writes one for an auditor, who verifies an
  export with it and without the master secret.

A key in the database that is neither is *untrusted*: seals it made are findings.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
from functools import cache
from pathlib import Path
from typing import Iterable, Mapping

import orjson
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, select

from lgsp.audit import seals
from lgsp.config import settings
from lgsp.crypto import fernet
from lgsp.storage.schema import audit_keys

log = logging.getLogger(__name__)


class TrustFileError(Exception):
    pass


class TrustedKeys(dict):
    """kid → public key (hex) of the trusted keys. With the master secret at hand, any other kid
    is looked up by derivation (so a key row the database changed cannot discredit genuine
    seals); `untrusted` names the keys seen (in the database, in an export) but not trusted."""

    def __init__(self, keys: Mapping[str, str], *, derive: bool, untrusted: Iterable[str] = ()):
        super().__init__(keys)
        self.derive = derive
        self.untrusted = set(untrusted) - set(keys)

    def get(self, kid, default=None):
        if kid in self:
            return self[kid]
        if not self.derive:
            return default
        return _derived_public(settings().master_secret, kid)


@cache
def _derived_public(master: bytes, kid: str) -> str:  # keyed on the secret: tests change it
    return seals.derived_public(kid)


def trust_path() -> Path:
    return Path(os.environ.get("LGSP_AUDIT_TRUST") or settings().home / "audit-trust.jsonl")


def master_secret_available() -> bool:
    """Whether the master secret is configured here (never made up just to verify)."""
    return bool(os.environ.get("LGSP_SECRET_KEY")) or (settings().home / "secret.key").exists()


def read_trust(path: Path) -> dict[str, str]:
    """kid → public key from a trust file; the first line for a kid wins."""
    keys: dict[str, str] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            try:
                item = orjson.loads(line)
                kid, public = str(item["kid"]), str(item["public_key"])
                if len(bytes.fromhex(public)) != 32:
                    raise ValueError("not a 32-byte key")
            except (ValueError, KeyError, TypeError) as exc:
                raise TrustFileError(f"{path}, line {number}: not a trusted key ({exc})") from None
            keys.setdefault(kid, public)
    return keys


def trust_line(kid: str, public: str) -> bytes:
    return orjson.dumps({"kid": kid, "public_key": public, "fingerprint": seals.fingerprint(public),
                         "added": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}) + b"\n"


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # several processes may add keys at once
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def add_key(kid: str, public: str) -> None:
    """Trust a key this installation just made (best effort: derivation still trusts it)."""
    path = trust_path()
    try:
        if path.exists() and read_trust(path).get(kid) == public:
            return
        _append(path, trust_line(kid, public))
    except (OSError, TrustFileError) as exc:
        log.warning("could not add seal key %s to the trust file %s: %s", kid, path, exc)


def _made_here(row) -> bool:
    """A key made before keys were derived: trusted if its private half decrypts with the master secret."""
    if row.public_key == seals.derived_public(row.kid):
        return True
    try:
        private = fernet().decrypt(row.private_key.encode())
        return seals.public_hex(Ed25519PrivateKey.from_private_bytes(private)) == row.public_key
    except (InvalidToken, ValueError, TypeError, AttributeError):
        return False


def ensure_trust_file(engine: Engine) -> None:
    """Make the trust file on first start, from the database keys this installation made.

    Keys made before keys were derived are trusted here, once, on first use; afterwards
    only derivation and this file count."""
    path = trust_path()
    if path.exists():
        return
    with engine.connect() as conn:
        rows = conn.execute(select(audit_keys.c.kid, audit_keys.c.public_key, audit_keys.c.private_key)).all()
    lines = b"".join(trust_line(r.kid, r.public_key) for r in rows if _made_here(r))
    header = (b"# LGSP audit seal keys trusted by this installation (lgsp/audit/trust.py). "
              b"Keep it outside the database.\n")
    try:
        _append(path, header + lines)
    except OSError as exc:
        log.warning("could not create the audit trust file %s: %s", path, exc)


def trusted_keys(engine: Engine | None = None, *, trust_file: Path | None = None,
                 seen: Mapping[str, str] | None = None) -> TrustedKeys:
    """The trusted keys: those of the trust file (`trust_file`, or the configured one if it exists),
    and, when no trust file is given and the master secret is here, the derived ones.

    `seen` (kid → public key, from the database or an export file) only serves to name the
    keys that are not trusted; with `engine`, the database's keys are `seen`."""
    explicit = trust_file is not None
    path = trust_file or trust_path()
    keys = read_trust(path) if (explicit or path.exists()) else {}
    derive = not explicit and master_secret_available()
    if seen is None and engine is not None:
        seen = seals.database_keys(engine)
    untrusted = set()
    for kid, public in (seen or {}).items():
        if kid in keys:
            continue
        if derive and public == _derived_public(settings().master_secret, kid):
            keys[kid] = public
        else:
            untrusted.add(kid)
    return TrustedKeys(keys, derive=derive, untrusted=untrusted)
