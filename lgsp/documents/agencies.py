"""The agency directory of the document exchange axis: who may send and receive documents.

Two kinds of agency, one table (``agencies``):
- ``local``: an agency of the province, registered by the administrator (admin API, CLI, ``lgsp apply``),
  with the client id of its document-management system (the client that sends and reads its documents);
- ``national``: an agency reached through the national axis, synchronised from it (``lgsp agencies sync``).

Every change is an administrative action in the audit trail (who, what, before and after), like the
changes of clients and grants.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Iterable, Mapping

from sqlalchemy import Engine, delete, insert, select, update

from lgsp.config_notify import bump_generation
from lgsp.control.admin import Admin, AdminError
from lgsp.storage.schema import agencies, clients, connections

# QCVN 102 agency codes: three groups of digits and a level-1 letter with two digits (000.00.31.H30).
AGENCY_CODE = re.compile(r"[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[A-Z][0-9]{2}")
SCOPES = ("local", "national")
FIELDS = ("name", "parent_code", "email", "phone", "fax", "scope", "client_id")
_LIMITS = {"name": 300, "parent_code": 13, "email": 200, "phone": 50, "fax": 50, "client_id": 64}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def check_code(code: Any) -> str:
    if not isinstance(code, str) or not AGENCY_CODE.fullmatch(code):
        raise AdminError(f"{str(code)[:40]!r} is not a QCVN 102 agency code (NNN.NN.NN.XNN, e.g. 000.00.31.H30).")
    return code


def _public(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in dict(row).items()}


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    """The agency's fields checked: known names, bounded text without control characters."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise AdminError(f"Unknown agency field(s) {', '.join(sorted(unknown))}; fields are {', '.join(FIELDS)}.")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or value == "":
            out[key] = None
            continue
        if not isinstance(value, str) or _CONTROL.search(value) or len(value) > _LIMITS.get(key, 16):
            raise AdminError(f"Agency field {key!r} must be text of at most {_LIMITS.get(key, 16)} characters "
                             f"without control characters.")
        out[key] = value.strip()
    if "scope" in out and out["scope"] not in SCOPES:
        raise AdminError(f"An agency's scope is {' or '.join(SCOPES)}.")
    if out.get("parent_code"):
        check_code(out["parent_code"])
    return out


class Directory:
    """Reads and changes of the agency directory, each change recorded for ``actor``."""

    def __init__(self, engine: Engine, actor: str):
        self.engine = engine
        self.actor = actor
        self._admin = Admin(engine, actor)

    # -- reads ------------------------------------------------------------------------------------------
    def list(self, scope: str | None = None) -> list[dict]:
        query = select(agencies).order_by(agencies.c.code)
        if scope is not None:
            query = query.where(agencies.c.scope == scope)
        with self.engine.connect() as conn:
            return [_public(r._mapping) for r in conn.execute(query)]

    def get(self, code: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(select(agencies).where(agencies.c.code == check_code(code))).first()
        if row is None:
            raise AdminError(f"No agency '{code}' in the directory.", "admin.not_found")
        return _public(row._mapping)

    def of_client(self, client_id: str) -> list[str]:
        """The local agencies whose document system is this client (a sender may only send as these)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(agencies.c.code).where(agencies.c.client_id == client_id,
                                                                   agencies.c.scope == "local")).scalars())

    # -- changes ----------------------------------------------------------------------------------------
    def set(self, code: str, *, source: str = "admin", **values: Any) -> bool:
        """Create or change one agency; True when something changed."""
        code = check_code(code)
        fields = _clean(values)
        with self.engine.begin() as conn:
            before = conn.execute(select(agencies).where(agencies.c.code == code)).first()
            before = dict(before._mapping) if before else None
            merged = {**{k: (before or {}).get(k) for k in FIELDS}, **fields}
            if not merged.get("name"):
                raise AdminError(f"Agency '{code}' needs a name.")
            merged["scope"] = merged.get("scope") or "local"
            self._check_client(conn, merged)
            if before is not None and all(before.get(k) == merged[k] for k in FIELDS):
                return False
            now = _now()
            if before is None:
                conn.execute(insert(agencies).values(code=code, **merged, source=source, created_at=now,
                                                     updated_at=now))
            else:
                conn.execute(update(agencies).where(agencies.c.code == code).values(**merged, source=source,
                                                                                     updated_at=now))
            after = dict(conn.execute(select(agencies).where(agencies.c.code == code)).first()._mapping)
            bump_generation(conn)
        self._admin.record_action("agency.create" if before is None else "agency.update", code,
                                  _public(before), _public(after))
        return True

    @staticmethod
    def _check_client(conn: Any, merged: dict[str, Any]) -> None:
        client_id = merged.get("client_id")
        if client_id is None:
            return
        if merged["scope"] != "local":
            raise AdminError("Only a local agency has a document system client of this LGSP.")
        if conn.execute(select(clients.c.client_id).where(clients.c.client_id == client_id)).first() is None:
            raise AdminError(f"No client '{client_id}' for the agency's document system; create it first.",
                             "admin.not_found")

    def delete(self, code: str) -> None:
        code = check_code(code)
        with self.engine.begin() as conn:
            before = conn.execute(select(agencies).where(agencies.c.code == code)).first()
            if before is None:
                raise AdminError(f"No agency '{code}' in the directory.", "admin.not_found")
            conn.execute(delete(agencies).where(agencies.c.code == code))
            bump_generation(conn)
        self._admin.record_action("agency.delete", code, _public(before._mapping), None)

    def sync_national(self, listed: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
        """Make the ``national`` agencies those the national axis lists (its getAgenciesList answer, wire
        names pcode/code/name/mail/mobile/fax). Local agencies are never touched: an agency of the province
        that the axis also lists stays local. Returns the codes created, updated and removed."""
        wanted: dict[str, dict[str, Any]] = {}
        skipped: list[str] = []
        for item in listed:
            code = item.get("code") if isinstance(item, Mapping) else None
            if not isinstance(code, str) or not AGENCY_CODE.fullmatch(code):
                skipped.append(str(code)[:40])
                continue
            parent = item.get("pcode") if isinstance(item.get("pcode"), str) and \
                AGENCY_CODE.fullmatch(item.get("pcode") or "") else None
            wanted[code] = {"name": _bounded(item.get("name"), 300) or code, "parent_code": parent,
                            "email": _bounded(item.get("mail"), 200), "phone": _bounded(item.get("mobile"), 50),
                            "fax": _bounded(item.get("fax"), 50)}
        result: dict[str, list[str]] = {"created": [], "updated": [], "removed": [], "skipped": skipped}
        with self.engine.begin() as conn:
            current = {r.code: dict(r._mapping) for r in conn.execute(select(agencies))}
            now = _now()
            for code, values in wanted.items():
                row = current.get(code)
                if row is None:
                    conn.execute(insert(agencies).values(code=code, **values, scope="national", client_id=None,
                                                         source="national-axis", created_at=now, updated_at=now))
                    result["created"].append(code)
                elif row["scope"] == "national" and any(row[k] != v for k, v in values.items()):
                    conn.execute(update(agencies).where(agencies.c.code == code).values(
                        **values, source="national-axis", updated_at=now))
                    result["updated"].append(code)
            gone = [c for c, r in current.items() if r["scope"] == "national" and c not in wanted]
            if gone:
                conn.execute(delete(agencies).where(agencies.c.code.in_(gone)))
            result["removed"] = sorted(gone)
            if result["created"] or result["updated"] or gone:
                bump_generation(conn)
        self._admin.record_action("agency.sync", "national-axis", None,
                                  {k: (v[:200] if isinstance(v, list) else v) for k, v in result.items()}
                                  | {"listed": len(wanted)})
        return result


def _bounded(value: Any, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    value = _CONTROL.sub("", value).strip()
    return value[:limit] or None


async def fetch_national(engine: Engine, connection: str = "national-axis") -> list[dict[str, Any]]:
    """getAgenciesList through the connection's adapter (any adapter offering ``agencies.list``)."""
    from lgsp import plugins
    from lgsp.adapter import CallContext, UpstreamError
    from lgsp.control.contract import ContractError, load_connection

    try:
        adapter_name, settings = load_connection(engine, connection)
    except ContractError as exc:
        raise AdminError(str(exc), "admin.not_found") from None
    with engine.connect() as conn:
        enabled = conn.execute(select(connections.c.enabled).where(connections.c.name == connection)).scalar_one()
    if not enabled:
        raise AdminError(f"Connection '{connection}' is disabled; enable it to synchronise agencies.")
    adapter = plugins.build(adapter_name, settings)
    try:
        if "agencies.list" not in adapter.operations:
            raise AdminError(f"Connection '{connection}' ({adapter_name}) has no agencies.list operation.")
        result = await adapter.call("agencies.list", {}, CallContext(request_id="agencies-sync",
                                                                     client_id="lgsp-agencies-sync"))
    except UpstreamError as exc:
        raise AdminError(f"The national axis could not list its agencies: {exc.detail}", exc.code) from None
    finally:
        await adapter.aclose()
    data = result.data.get("data") if isinstance(result.data, dict) else None
    if not isinstance(data, list):
        raise AdminError("The national axis's agency list is not a list.", "upstream.malformed")
    return data
