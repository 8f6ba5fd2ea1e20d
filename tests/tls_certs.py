"""Certificates the tests make for themselves (cryptography): a client CA, the gateway's
server certificate, client certificates (current, expired, self-signed), written as PEM files."""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def pair(self) -> tuple[str, str]:
        """(certificate file, key file), as requests' `cert=` and httpx's load_cert_chain take them."""
        return str(self.cert_file), str(self.key_file)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Province test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key) -> Issued:
    cert_file, key_file = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(cert, key, cert_file, key_file)


def _build(subject: x509.Name, issuer: x509.Name, public_key, signing_key, *, ca: bool, days: tuple[int, int],
           usage, san: list | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


class Authority:
    """A CA that issues the gateway's server certificate and clients' certificates."""

    def __init__(self, folder: Path, cn: str = "LGSP test client CA"):
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        cert = _build(_name(cn), _name(cn), self.key.public_key(), self.key, ca=True, days=(-1, 365), usage=None)
        self.issued = _write(folder, "ca", cert, self.key)

    @property
    def cert_file(self) -> Path:
        return self.issued.cert_file

    def server(self, stem: str = "server") -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _build(_name("127.0.0.1"), self.issued.cert.subject, key.public_key(), self.key, ca=False,
                      days=(-1, 30), usage=ExtendedKeyUsageOID.SERVER_AUTH,
                      san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
        return _write(self.folder, stem, cert, key)

    def client(self, cn: str, *, days: tuple[int, int] = (-1, 30)) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _build(_name(cn), self.issued.cert.subject, key.public_key(), self.key, ca=False, days=days,
                      usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        return _write(self.folder, cn, cert, key)


def self_signed(folder: Path, cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build(_name(cn), _name(cn), key.public_key(), key, ca=False, days=(-1, 30),
                  usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return _write(folder, cn, cert, key)
