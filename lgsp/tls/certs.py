"""Reading and checking X.509 certificates: parse, thumbprint, subject, issuer.

Certificates arrive as PEM (admin API, files, a proxy's header) or DER (the TLS connection);
everything here works on `cryptography` objects and never raises anything but
`CertificateError` for bad input.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

# A certificate chain, not a bundle of many: bounds the work one request can cause.
MAX_PEM_BYTES = 16 * 1024


class CertificateError(ValueError):
    """Input that is not one readable X.509 certificate, with a sentence saying why."""


def load_pem(text: str | bytes) -> x509.Certificate:
    """The one certificate in `text` (PEM); CertificateError if there is none, several, or garbage."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > MAX_PEM_BYTES:
        raise CertificateError(f"The certificate is over {MAX_PEM_BYTES} bytes.")
    if data.count(b"-----BEGIN CERTIFICATE-----") != 1:
        raise CertificateError("Give exactly one PEM certificate (-----BEGIN CERTIFICATE----- … "
                               "-----END CERTIFICATE-----).")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError("The certificate cannot be read: not valid PEM-encoded X.509.") from None


def load_der(data: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateError("The certificate cannot be read: not valid DER-encoded X.509.") from None


def load_bundle(path: str | Path) -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle file (the client CA)."""
    certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    if not certs:
        raise CertificateError(f"{path} holds no PEM certificate.")
    return certs


@cache
def client_ca(path: str) -> tuple[x509.Certificate, ...]:
    return tuple(load_bundle(path))


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


def thumbprint(cert_der: bytes) -> str:
    """RFC 8705 §3.1 `x5t#S256`: base64url (no padding) of the SHA-256 of the DER certificate."""
    return base64.urlsafe_b64encode(hashlib.sha256(cert_der).digest()).rstrip(b"=").decode()


def subject_dn(cert: x509.Certificate) -> str:
    """The subject as an RFC 4514 string, the form the admin registers."""
    return cert.subject.rfc4514_string()


def normal_dn(text: str) -> str:
    """A distinguished name in one comparable form (RFC 4514 parsed, then printed again)."""
    try:
        return x509.Name.from_rfc4514_string(text).rfc4514_string()
    except ValueError:
        raise CertificateError(f"{text!r} is not a distinguished name (RFC 4514, e.g. "
                               f"'CN=one-stop-shop,O=Province,C=VN').") from None


def current(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    now = now or dt.datetime.now(dt.UTC)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def issued_by_any(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    """Whether one of `cas` (a CA certificate, current) signed `cert` directly."""
    for ca in cas:
        if ca.subject != cert.issuer or not _is_ca(ca) or not current(ca):
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):  # not this CA's signature, or a key that cannot sign
            continue
        return True
    return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
