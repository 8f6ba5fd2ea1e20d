"""Certificate-bound clients (RFC 8705) and per-client address allow-lists: what is registered,
how the token endpoint authenticates such a client, and the data plane's checks.

- `tls_client_auth`: the client's certificate is issued by the client CA (LGSP_TLS_CLIENT_CA_FILE)
  and its subject is the registered distinguished name.
- `self_signed_tls_client_auth`: the client's certificate is the one registered (its SHA-256 thumbprint).
A bound client gets tokens bound to the certificate it presented (`cnf: {"x5t#S256": …}`), and the
data plane serves such a token only over a connection with that same certificate.
"""
from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select

from lgsp.config import settings
from lgsp.errors import ExchangeError
from lgsp.storage.schema import client_bindings
from lgsp.tls import certs, networks

log = logging.getLogger(__name__)

TLS_CLIENT_AUTH = "tls_client_auth"
SELF_SIGNED = "self_signed_tls_client_auth"
METHODS = (TLS_CLIENT_AUTH, SELF_SIGNED)
SECRET_METHODS = ("client_secret_basic", "client_secret_post")


@dataclass(frozen=True)
class Binding:
    client_id: str
    method: str | None                 # one of METHODS, or None: an address list only
    subject_dn: str | None = None
    thumbprint: str | None = None
    networks: tuple[networks.Network, ...] = ()


def _from_row(r) -> Binding:
    return Binding(r.client_id, r.method, r.subject_dn, r.thumbprint, networks.parse(r.allowed_networks or []))


def load_all(conn: Connection) -> dict[str, Binding]:
    return {r.client_id: _from_row(r) for r in conn.execute(select(client_bindings))}


def load_one(engine: Engine, client_id: str) -> Binding | None:
    with engine.connect() as conn:
        row = conn.execute(select(client_bindings).where(client_bindings.c.client_id == client_id)).first()
    return _from_row(row) if row else None


# -- the token endpoint -------------------------------------------------------------

def auth_methods(binding: Binding | None) -> tuple[str, ...]:
    """How a client may authenticate at the token endpoint: a bound client by its certificate only."""
    return (binding.method,) if binding is not None and binding.method else SECRET_METHODS


def certificate_matches(binding: Binding, cert_der: bytes | None) -> bool:
    """Whether the certificate presented authenticates the client its binding describes."""
    if cert_der is None or binding.method not in METHODS:
        return False
    try:
        cert = certs.load_der(cert_der)
    except certs.CertificateError:
        return False
    if not certs.current(cert):
        return False
    if binding.method == SELF_SIGNED:
        return hmac.compare_digest(certs.thumbprint(cert_der), binding.thumbprint or "")
    ca_file = settings().tls_client_ca_file
    if not ca_file:
        log.warning("tls_client_auth needs LGSP_TLS_CLIENT_CA_FILE; no client CA is configured")
        return False
    return certs.subject_dn(cert) == binding.subject_dn and certs.issued_by_any(cert, certs.client_ca(ca_file))


def confirmation(binding: Binding | None, cert_der: bytes | None) -> dict:
    """The `cnf` claim of a token issued to this client over this connection (RFC 8705 §3.1)."""
    if binding is None or not binding.method or cert_der is None:
        return {}
    return {"cnf": {"x5t#S256": certs.thumbprint(cert_der)}}


# -- the data plane ---------------------------------------------------------------------

def check(binding: Binding | None, client_id: str, cnf: Mapping[str, Any] | None, thumbprint: str | None,
          source: str | None) -> None:
    """Refuse an exchange whose token (its `cnf` confirmation) is bound to another certificate than the
    connection's, or whose client calls from outside its allowed networks."""
    if binding is not None and binding.networks and not networks.contains(binding.networks, source):
        raise ExchangeError("access.source_not_allowed", f"Client '{client_id}' may not call from this network "
                                                         "address; ask the LGSP operator to allow it.")
    bound = cnf.get("x5t#S256") if cnf is not None else None
    if bound is not None:
        if thumbprint is None:
            raise ExchangeError("token.binding", "The access token is bound to a client certificate; call over a "
                                                 "TLS connection that presents that certificate.")
        if not hmac.compare_digest(str(bound), thumbprint):
            raise ExchangeError("token.binding", "The access token is bound to another client certificate than "
                                                 "the one this connection presents.")
    elif binding is not None and binding.method:
        raise ExchangeError("token.binding", f"Client '{client_id}' is bound to a certificate: call with a "
                                             "certificate-bound token from the token endpoint (RFC 8705).")
