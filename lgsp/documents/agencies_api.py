"""Admin API handlers for the agency directory (openapi/admin.v1.yaml, paths /agencies…).

Thin, like lgsp.control.admin_api: the caller's role is checked there, every change goes through
lgsp.documents.agencies.Directory (audited), and reads are recorded as control-plane reads."""
from __future__ import annotations

import asyncio

from lgsp.control import admin_api
from lgsp.documents.agencies import Directory, fetch_national


def _directory(scopes: tuple[str, ...]) -> Directory:
    admin = admin_api._admin(scopes)
    return Directory(admin.engine, admin.actor)


def list_agencies(scope: str | None = None):
    directory = _directory(admin_api.INTEGRATOR)
    rows = directory.list(scope)
    admin_api._read(directory._admin, "agency.list", scope or "agencies", rows)
    return admin_api._json(rows)


def get_agency(code: str):
    directory = _directory(admin_api.INTEGRATOR)
    row = admin_api._run(directory.get, code)
    admin_api._read(directory._admin, "agency.get", code, row)
    return admin_api._json(row)


def put_agency(code: str, body: dict):
    directory = _directory(admin_api.ADMIN)
    values = {k: body.get(k) for k in ("name", "scope", "client_id", "parent_code", "email", "phone", "fax")
              if k in body}
    admin_api._run(directory.set, code, **values)
    return admin_api._json(directory.get(code))


def delete_agency(code: str):
    directory = _directory(admin_api.ADMIN)
    admin_api._run(directory.delete, code)
    return None, 204


async def _listed(directory: Directory, connection: str) -> list:
    return await fetch_national(directory.engine, connection)


def sync_agencies(connection: str = "national-axis"):
    directory = _directory(admin_api.ADMIN)

    def run() -> dict:
        return directory.sync_national(asyncio.run(_listed(directory, connection)))
    return admin_api._json(_in_thread(lambda: admin_api._run(run)))


def _in_thread(fn):
    """Run ``fn`` in a thread of its own: the adapter call needs an event loop of its own, and the
    admin API's handlers may be called from inside the server's loop."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()
