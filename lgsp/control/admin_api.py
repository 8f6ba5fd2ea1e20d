"""Handlers of the administration API (openapi/admin.v1.yaml) — thin: every change
goes through lgsp.control.admin.Admin, which bumps the configuration generation and
records the change in the audit trail with the calling client as actor."""
from __future__ import annotations

from typing import Any

from connexion import request
from flask import current_app
from sqlalchemy.exc import IntegrityError

from lgsp.control import records as control_audit
from lgsp.control.admin import Admin, AdminError
from lgsp.control.auth import claims_from_header
from lgsp.errors import ExchangeError

INTEGRATOR = ("integrator", "admin")
ADMIN = ("admin",)


def _admin(scopes: tuple[str, ...]) -> Admin:
    """An Admin acting for the caller, if its token carries one of `scopes`."""
    engine = current_app.config["LGSP_ENGINE"]
    header = request.headers.get("Authorization")
    last: ExchangeError | None = None
    for scope in scopes:
        try:
            claims = claims_from_header(engine, header, scope)
            return Admin(engine, f"client:{claims['sub']}")
        except ExchangeError as exc:
            if exc.code != "access.no_grant":
                raise
            last = exc
    raise ExchangeError("access.no_grant", f"This operation needs the {' or '.join(scopes)} role.") from last


def _json(data: Any, status: int = 200):
    # The spec also declares problem+json answers, so the type must be named.
    return data, status, {"Content-Type": "application/json"}


def _run(fn, *args, **kwargs) -> Any:
    try:
        return fn(*args, **kwargs)
    except AdminError as exc:
        raise ExchangeError(exc.code, str(exc)) from None
    except IntegrityError:  # two callers made the same object at once: one of them wins
        raise ExchangeError("admin.conflict", "The object was changed by another request at the same time; "
                            "read it and try again.") from None


def _read(admin: Admin, action: str, target: str, result: Any) -> Any:
    """Reads of the configuration are recorded too: who looked at which connections, clients, grants."""
    count = len(result) if isinstance(result, list) else None
    control_audit.read(admin.engine, admin.actor, action, target, **({"results": count} if count is not None else {}))
    return result


def list_connections():
    admin = _admin(INTEGRATOR)
    return _json(_read(admin, "connection.list", "connections", admin.list_connections()))


def get_connection(name: str):
    admin = _admin(INTEGRATOR)
    return _json(_read(admin, "connection.get", name, _run(admin.get_connection, name)))


def put_connection(name: str, body: dict):
    admin = _admin(INTEGRATOR)
    _run(admin.set_connection, name, body["adapter"], body["settings"], body.get("enabled", True))
    return _json(admin.get_connection(name))


def disable_connection(name: str):
    admin = _admin(INTEGRATOR)
    current = _run(admin.get_connection, name)
    _run(admin.set_connection, name, current["adapter"], current["settings"], False)
    return None, 204


def list_services():
    admin = _admin(INTEGRATOR)
    return _json(_read(admin, "service.list", "services", admin.list_services()))


def put_service(name: str, body: dict):
    admin = _admin(INTEGRATOR)
    _run(admin.set_service, name, **body)
    return _json(next(s for s in admin.list_services() if s["name"] == name))


def list_clients():
    admin = _admin(ADMIN)
    return _json(_read(admin, "client.list", "clients", admin.list_clients()))


def create_client(body: dict):
    admin = _admin(ADMIN)
    secret = _run(admin.create_client, body["client_id"], body["name"], body.get("agency_code"),
                  body.get("agency_name"), None, body.get("roles") or ())
    return _json({**admin.get_client(body["client_id"]), "client_secret": secret}, 201)


def get_client(client_id: str):
    admin = _admin(ADMIN)
    return _json(_read(admin, "client.get", client_id, _run(admin.get_client, client_id)))


def update_client(client_id: str, body: dict):
    admin = _admin(ADMIN)
    _run(admin.update_client, client_id, **body)
    return _json(admin.get_client(client_id))


def list_grants(client_id: str | None = None):
    admin = _admin(ADMIN)
    return _json(_read(admin, "grant.list", client_id or "grants", admin.list_grants(client_id)))


def create_grant(body: dict):
    admin = _admin(ADMIN)
    grant_id = _run(admin.add_grant, body["client_id"], body["service"], body["fields"], body["purposes"])
    return _json(next(g for g in admin.list_grants(body["client_id"]) if g["id"] == grant_id), 201)


def revoke_grant(grant_id: int):
    _run(_admin(ADMIN).revoke_grant, grant_id)
    return None, 204
