"""Settings, read once from the environment (twelve-factor: secrets never in the repo)."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(_env("LGSP_HOME", ".lgsp")).resolve())
    database_url: str = field(default_factory=lambda: _env("LGSP_DATABASE_URL", ""))
    # Public base URL of this LGSP: the token issuer and the base of served documents.
    public_url: str = field(default_factory=lambda: _env("LGSP_PUBLIC_URL", "http://127.0.0.1:8080").rstrip("/"))
    token_ttl: int = field(default_factory=lambda: int(_env("LGSP_TOKEN_TTL", "900")))
    max_body_bytes: int = field(default_factory=lambda: int(_env("LGSP_MAX_BODY_BYTES", str(64 * 1024))))
    # All header fields of a request together (refused with 431 above it).
    max_header_bytes: int = field(default_factory=lambda: int(_env("LGSP_MAX_HEADER_BYTES", str(16 * 1024))))
    # How often a worker looks for configuration changes (clients, grants, keys).
    config_poll_seconds: float = field(default_factory=lambda: float(_env("LGSP_CONFIG_POLL_SECONDS", "1")))
    audit_batch_max: int = field(default_factory=lambda: int(_env("LGSP_AUDIT_BATCH_MAX", "256")))
    log_level: str = field(default_factory=lambda: _env("LGSP_LOG_LEVEL", "INFO"))
    # Longest access-token lifetime (exp - iat) accepted, whoever signed it.
    token_max_lifetime: int = field(default_factory=lambda: int(_env("LGSP_TOKEN_MAX_LIFETIME", "3600")))
    # Private, loopback and link-local networks adapters may reach (CIDRs, comma-separated); none by default.
    egress_allow: str = field(default_factory=lambda: _env("LGSP_EGRESS_ALLOW", ""))
    # Rate-limit and quota counters: Redis shared by several nodes, else a SQLite file in LGSP_HOME.
    redis_url: str = field(default_factory=lambda: _env("LGSP_REDIS_URL", ""))
    # Quota days and months start at local midnight in this zone.
    quota_timezone: str = field(default_factory=lambda: _env("LGSP_QUOTA_TIMEZONE", "Asia/Ho_Chi_Minh"))
    # TLS at `lgsp serve` (PEM files): the server's certificate and key, and the CA bundle client
    # certificates must chain to (clients are asked for a certificate; one without is still served).
    tls_cert_file: str = field(default_factory=lambda: _env("LGSP_TLS_CERT_FILE", ""))
    tls_key_file: str = field(default_factory=lambda: _env("LGSP_TLS_KEY_FILE", ""))
    tls_client_ca_file: str = field(default_factory=lambda: _env("LGSP_TLS_CLIENT_CA_FILE", ""))
    # Behind a TLS-terminating proxy: its addresses (CIDRs, comma-separated), and the header in which it
    # passes the client certificate (URL-encoded PEM, as nginx's $ssl_client_escaped_cert). Nobody else's
    # header is believed.
    trusted_proxies: str = field(default_factory=lambda: _env("LGSP_TRUSTED_PROXIES", ""))
    client_cert_header: str = field(default_factory=lambda: _env("LGSP_CLIENT_CERT_HEADER", "X-Client-Cert"))
    # Document exchange: PEM bundle of the CAs whose certificates may sign edXML documents (none: nothing is
    # trusted), and the largest package accepted.
    document_trusted_cas: str = field(default_factory=lambda: _env("LGSP_DOCUMENT_TRUSTED_CAS", ""))
    document_max_bytes: int = field(default_factory=lambda: int(_env("LGSP_DOCUMENT_MAX_BYTES", str(50 * 1024 * 1024))))

    @property
    def issuer(self) -> str:
        return self.public_url

    @property
    def audience(self) -> str:
        # RFC 9068: the resource server the token is for — the shared APIs.
        return f"{self.public_url}/api"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'lgsp.db'}"

    @cached_property
    def master_secret(self) -> bytes:
        """The one root secret; every other key (audit HMAC, key encryption) derives from it.

        Taken from LGSP_SECRET_KEY; for the embedded set-up it is generated once
        into LGSP_HOME with owner-only permissions.
        """
        value = os.environ.get("LGSP_SECRET_KEY")
        if value:
            return value.encode()
        path = self.home / "secret.key"
        if not path.exists():
            self.ensure_home()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()


    def ensure_home(self) -> Path:
        """LGSP_HOME, created owner-only (0700): it holds the database, logs and keys."""
        return private_dir(self.home)


def private_dir(path: Path) -> Path:
    """A directory only its owner can enter, when this creates it (an existing one is the operator's choice)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def private_file(path: Path) -> Path:
    """Create `path` if missing, owner read/write only (0600), without truncating it."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


@cache
def settings() -> Settings:
    return Settings()
