"""Registering a client's certificate binding and allowed networks (admin API, CLI, `lgsp apply`).

Everything sent is checked before anything is stored: a malformed certificate, distinguished
name or CIDR changes nothing. Each change bumps the configuration generation and is recorded
in the audit trail, like every administrative change (lgsp.admin).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, insert, select, update

from lgsp.config_notify import bump_generation
from lgsp.control.admin import Admin, AdminError
from lgsp.storage.schema import client_bindings, clients
from lgsp.tls import certs, networks
from lgsp.tls.binding import METHODS, SELF_SIGNED, TLS_CLIENT_AUTH

FIELDS = ("method", "subject_dn", "certificate", "allowed_networks")


def normalise(spec: dict[str, Any]) -> dict[str, Any]:
    """The binding as stored: method checked, DN normalised, certificate read and thumbprinted,
    CIDRs parsed. AdminError (admin.certificate_invalid / admin.network_invalid) says what is wrong."""
    unknown = set(spec) - set(FIELDS)
    if unknown:
        raise AdminError(f"Unknown binding field(s) {', '.join(sorted(unknown))}; fields are {', '.join(FIELDS)}.")
    method = spec.get("method") or None
    if method is not None and method not in METHODS:
        raise AdminError(f"Unknown method {method!r}; methods are {', '.join(METHODS)}.", "admin.certificate_invalid")
    out: dict[str, Any] = {"method": method, "subject_dn": None, "certificate": None, "thumbprint": None}
    try:
        if method == TLS_CLIENT_AUTH:
            dn = spec.get("subject_dn")
            if not isinstance(dn, str) or not dn.strip():
                raise certs.CertificateError("tls_client_auth needs the certificate's subject_dn (RFC 4514).")
            out["subject_dn"] = certs.normal_dn(dn)
        elif method == SELF_SIGNED:
            pem = spec.get("certificate")
            if not isinstance(pem, str) or not pem.strip():
                raise certs.CertificateError("self_signed_tls_client_auth needs the client's certificate (PEM).")
            cert = certs.load_pem(pem)
            out["certificate"] = certs.pem(cert)
            out["thumbprint"] = certs.thumbprint(certs.der(cert))
        elif spec.get("subject_dn") or spec.get("certificate"):
            raise certs.CertificateError("A subject_dn or certificate needs a method (tls_client_auth or "
                                         "self_signed_tls_client_auth).")
    except certs.CertificateError as exc:
        raise AdminError(str(exc), "admin.certificate_invalid") from None
    nets = spec.get("allowed_networks") or []
    if not isinstance(nets, list):
        raise AdminError("allowed_networks is a list of CIDRs.", "admin.network_invalid")
    try:
        out["allowed_networks"] = [str(n) for n in networks.parse(nets)]
    except networks.NetworkError as exc:
        raise AdminError(str(exc), "admin.network_invalid") from None
    if not method and not out["allowed_networks"]:
        raise AdminError("A binding names a method, allowed networks, or both; to remove one, delete it.")
    return out


def public(row: dict | None) -> dict | None:
    """A binding as the admin API shows it."""
    if row is None:
        return None
    return {"client_id": row["client_id"], "method": row["method"], "subject_dn": row["subject_dn"],
            "certificate": row["certificate"], "thumbprint": row["thumbprint"],
            "allowed_networks": list(row["allowed_networks"] or []),
            "updated_at": row["updated_at"].isoformat() if row.get("updated_at") else None}


def get(admin: Admin, client_id: str) -> dict | None:
    with admin.engine.connect() as conn:
        row = conn.execute(select(client_bindings).where(client_bindings.c.client_id == client_id)).first()
    return public(dict(row._mapping)) if row else None


def desired(spec: dict[str, Any]) -> dict[str, Any]:
    """The fields of a binding to compare with a stored one (`lgsp apply`)."""
    norm = normalise(spec)
    return {"method": norm["method"], "subject_dn": norm["subject_dn"], "thumbprint": norm["thumbprint"],
            "allowed_networks": norm["allowed_networks"]}


def put(admin: Admin, client_id: str, spec: dict[str, Any]) -> dict:
    """Set the binding of an existing client; returns it."""
    values = normalise(spec)
    with admin.engine.begin() as conn:
        if conn.execute(select(clients.c.client_id).where(clients.c.client_id == client_id)).first() is None:
            raise AdminError(f"No client '{client_id}'.", "admin.not_found")
        row = conn.execute(select(client_bindings).where(client_bindings.c.client_id == client_id)).first()
        before = public(dict(row._mapping)) if row else None
        values["updated_at"] = dt.datetime.now(dt.UTC)
        if row is None:
            conn.execute(insert(client_bindings).values(client_id=client_id, **values))
        else:
            conn.execute(update(client_bindings).where(client_bindings.c.client_id == client_id).values(**values))
        bump_generation(conn)
    after = get(admin, client_id)
    admin.record_action("client.binding.set", client_id, before, after)
    return after


def remove(admin: Admin, client_id: str) -> None:
    with admin.engine.begin() as conn:
        row = conn.execute(select(client_bindings).where(client_bindings.c.client_id == client_id)).first()
        if row is None:
            raise AdminError(f"Client '{client_id}' has no binding.", "admin.not_found")
        conn.execute(delete(client_bindings).where(client_bindings.c.client_id == client_id))
        bump_generation(conn)
    admin.record_action("client.binding.remove", client_id, public(dict(row._mapping)), None)
