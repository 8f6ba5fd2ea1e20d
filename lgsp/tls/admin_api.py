"""Admin API handlers of client bindings (openapi/admin.v1.yaml, /clients/{client_id}/binding)."""
from __future__ import annotations

from lgsp.control.admin_api import ADMIN, _admin, _json, _read, _run
from lgsp.errors import ExchangeError
from lgsp.tls import registration


def get_binding(client_id: str):
    admin = _admin(ADMIN)
    found = _read(admin, "client.binding.get", client_id, registration.get(admin, client_id))
    if found is None:
        raise ExchangeError("admin.not_found", f"Client '{client_id}' has no binding.")
    return _json(found)


def put_binding(client_id: str, body: dict):
    admin = _admin(ADMIN)
    return _json(_run(registration.put, admin, client_id, body))


def delete_binding(client_id: str):
    _run(registration.remove, _admin(ADMIN), client_id)
    return None, 204
