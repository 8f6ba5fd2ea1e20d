"""Administrative actions on clients, grants, connections and services.

One place for every change, whoever asks (CLI today, admin API later): each
change bumps the configuration generation (workers pick it up within
`config_poll_seconds`) and is recorded in the audit trail with who, what,
before and after.
"""
from __future__ import annotations

import datetime as dt
import re
import secrets
from typing import Any, Sequence

from sqlalchemy import Connection, Engine, delete, insert, select, update

from lgsp import plugins, specs
from lgsp.audit.writer import writer_for
from lgsp.config_notify import bump_generation
from lgsp.connection_secrets import masked, open_secrets, seal_secrets, unmasked
from lgsp.control.roles import ROLE_SCOPES
from lgsp.crypto import hash_secret
from lgsp.egress import EgressRefused
from lgsp.storage.schema import clients, connections, grants, services, traffic_policies
from lgsp.traffic import policies as traffic
from lgsp.traffic import protection

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
KEEP = object()  # set_connection: leave the stored protection policy as it is


class AdminError(ValueError):
    """A change that cannot be made, with a sentence saying why, and a stable code."""

    def __init__(self, detail: str, code: str = "admin.invalid"):
        super().__init__(detail)
        self.code = code


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _row(conn: Connection, table, key_col, key) -> dict | None:
    row = conn.execute(select(table).where(key_col == key)).first()
    return dict(row._mapping) if row else None


def _existing(conn: Connection, key_col: Any, key: Any, missing: str) -> dict[str, Any]:
    """The row whose `key_col` is `key`, or admin.not_found with the sentence `missing`."""
    row = _row(conn, key_col.table, key_col, key)
    if row is None:
        raise AdminError(missing, "admin.not_found")
    return row


def _put(conn: Connection, key_col: Any, key: str, before: dict[str, Any] | None,
         values: dict[str, Any]) -> dict[str, Any] | None:
    """Update the row whose `key_col` is `key` (it exists: `before`) or insert it; the row as stored now."""
    table = key_col.table
    if before:
        conn.execute(update(table).where(key_col == key).values(**values))
    else:
        conn.execute(insert(table).values(**{key_col.name: key, **values}))
    return _row(conn, table, key_col, key)


def _public(row: dict | None) -> dict | None:
    """What the audit trail and the admin API may show of a row: never secret material."""
    if row is None:
        return None
    out = {str(k): (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items() if k != "secret_hash"}
    if isinstance(out.get("settings"), dict):
        out["settings"] = {k: masked(v) for k, v in out["settings"].items()}
    return out


def check_protection(policy: Any) -> dict[str, Any] | None:
    """A connection's upstream protection policy as stored, or AdminError saying what is wrong."""
    try:
        return protection.check(policy)
    except protection.InvalidProtection as exc:
        raise AdminError(str(exc)) from None


def _check_grant_fields(conn: Connection, svc: dict, fields: Sequence[str]) -> None:
    """A field the service's answer does not have would grant nothing: refuse it, suggest the nearest."""
    from lgsp.pipeline import grant_fields

    connection = _row(conn, connections, connections.c.name, svc["connection"]) or {}
    try:
        settings = open_secrets(connection.get("settings") or {})
    except Exception:  # settings sealed with another key: fall back to the document's shape
        settings = {}
    shape = grant_fields.service_shape(svc["name"], connection.get("adapter"), svc["operation"], settings)
    unknown = grant_fields.unknown_fields(shape, fields) if shape is not None else {}
    if unknown:
        raise AdminError(grant_fields.describe(svc["name"], unknown))


class Admin:
    def __init__(self, engine: Engine, actor: str):
        self.engine = engine
        self.actor = actor

    def record_action(self, action: str, target: str, before: dict | None, after: dict | None) -> None:
        """Record an administrative action done elsewhere (keys, retention) in the audit trail."""
        self._record(action, target, before, after)

    def _record(self, action: str, target: str, before: dict | None, after: dict | None) -> None:
        writer_for(self.engine).commit_sync({
            "at": _now(), "kind": "admin", "outcome": "ok", "client_id": None, "service": None,
            "detail": {"actor": self.actor, "action": action, "target": target,
                       "before": _public(before), "after": _public(after)},
        })

    # -- clients ---------------------------------------------------------------
    def create_client(self, client_id: str, name: str, agency_code: str | None = None,
                      agency_name: str | None = None, secret: str | None = None,
                      roles: Sequence[str] = ()) -> str:
        """Create a client; returns its secret (shown once, stored only as a hash)."""
        unknown = set(roles) - set(ROLE_SCOPES)
        if unknown:
            raise AdminError(f"Unknown role(s) {', '.join(sorted(unknown))}; roles are {', '.join(ROLE_SCOPES)}.")
        if not _ID.match(client_id):
            raise AdminError("A client id is 2-64 characters: lower-case letters, digits, '.', '_' or '-'.")
        secret = secret or secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            if _row(conn, clients, clients.c.client_id, client_id):
                raise AdminError(f"Client '{client_id}' already exists.", "admin.conflict")
            now = _now()
            conn.execute(insert(clients).values(
                client_id=client_id, name=name, agency_code=agency_code, agency_name=agency_name,
                secret_hash=hash_secret(secret), status="active", created_at=now, updated_at=now,
                roles=list(roles),
            ))
            after = _row(conn, clients, clients.c.client_id, client_id)
            bump_generation(conn)
        self._record("client.create", client_id, None, after)
        return secret

    def list_clients(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [_public(dict(r._mapping)) for r in conn.execute(select(clients).order_by(clients.c.client_id))]

    def set_client_status(self, client_id: str, status: str) -> None:
        with self.engine.begin() as conn:
            before = _existing(conn, clients.c.client_id, client_id, f"No client '{client_id}'.")
            conn.execute(update(clients).where(clients.c.client_id == client_id)
                         .values(status=status, updated_at=_now()))
            after = _row(conn, clients, clients.c.client_id, client_id)
            bump_generation(conn)
        self._record(f"client.{'disable' if status == 'disabled' else 'enable'}", client_id, before, after)

    # -- grants ----------------------------------------------------------------
    def add_grant(self, client_id: str, service: str, fields: Sequence[str], purposes: Sequence[str]) -> int:
        if not fields:
            raise AdminError("A grant names at least one field (or '*'-free list of canonical fields).")
        if not purposes:
            raise AdminError("A grant names at least one allowed purpose.")
        with self.engine.begin() as conn:
            _existing(conn, clients.c.client_id, client_id, f"No client '{client_id}'.")
            svc = _row(conn, services, services.c.name, service)
            if not svc:
                raise AdminError(f"No service '{service}'; see `lgsp services list`.", "admin.not_found")
            _check_grant_fields(conn, svc, fields)
            existing = conn.execute(select(grants.c.id).where(
                grants.c.client_id == client_id, grants.c.service == service, grants.c.status == "active")).first()
            if existing:
                raise AdminError(f"Client '{client_id}' already has grant {existing.id} for '{service}'; "
                                 "revoke it first.", "admin.conflict")
            grant_id = conn.execute(insert(grants).values(
                client_id=client_id, service=service, allowed_fields=list(fields), allowed_purposes=list(purposes),
                status="active", created_at=_now(),
            )).inserted_primary_key[0]
            after = _row(conn, grants, grants.c.id, grant_id)
            bump_generation(conn)
        self._record("grant.add", f"{client_id}/{service}", None, after)
        return grant_id

    def check_grant_fields(self, service: str, fields: Sequence[str]) -> None:
        """Refuse field names the service's answer does not have (used by `lgsp apply --dry-run` too)."""
        with self.engine.connect() as conn:
            svc = _row(conn, services, services.c.name, service)
            if svc:
                _check_grant_fields(conn, svc, fields)

    def list_grants(self, client_id: str | None = None) -> list[dict]:
        q = select(grants).order_by(grants.c.id)
        if client_id:
            q = q.where(grants.c.client_id == client_id)
        with self.engine.connect() as conn:
            return [_public(dict(r._mapping)) for r in conn.execute(q)]

    def revoke_grant(self, grant_id: int) -> None:
        with self.engine.begin() as conn:
            before = _row(conn, grants, grants.c.id, grant_id)
            if before is None or before["status"] != "active":
                raise AdminError(f"No active grant {grant_id}.", "admin.not_found")
            conn.execute(update(grants).where(grants.c.id == grant_id).values(status="revoked", revoked_at=_now()))
            after = _row(conn, grants, grants.c.id, grant_id)
            bump_generation(conn)
        self._record("grant.revoke", str(grant_id), before, after)

    # -- connections and services ---------------------------------------------
    def set_connection(self, name: str, adapter: str, settings: dict[str, Any], enabled: bool = True,
                       protection: Any = KEEP) -> None:
        """Create or replace a connection; `protection` is its upstream protection policy (None: the
        defaults; KEEP: as stored)."""
        if not _ID.match(name):
            raise AdminError("A connection name is 2-64 characters: lower-case letters, digits, '.', '_' or '-'.")
        if protection is not KEEP:
            protection = check_protection(protection)
        with self.engine.begin() as conn:
            before = _row(conn, connections, connections.c.name, name)
            previous = before["settings"] if before and before["adapter"] == adapter else None
            plain = open_secrets(previous) if previous else {}
            check = unmasked(settings, plain)
            try:
                plugins.validate_settings(adapter, check)
            except (plugins.AdapterNotFound, plugins.InvalidSettings) as exc:
                raise AdminError(str(exc)) from None
            except EgressRefused as exc:
                raise AdminError(exc.detail, "admin.egress_refused") from None
            except ValueError as exc:  # an adapter's own check_settings
                raise AdminError(str(exc)) from None
            values = dict(adapter=adapter, settings=seal_secrets(adapter, settings, previous), enabled=enabled,
                          updated_at=_now())
            if protection is not KEEP:
                values["protection"] = protection
            after = _put(conn, connections.c.name, name, before, values)
            bump_generation(conn)
        self._record("connection.set", name, before, after)

    def get_connection(self, name: str) -> dict:
        with self.engine.connect() as conn:
            return _public(_existing(conn, connections.c.name, name, f"No connection '{name}'."))

    def list_connections(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [_public(dict(r._mapping)) for r in conn.execute(select(connections).order_by(connections.c.name))]

    def set_service(self, name: str, *, version: str, connection: str, operation: str, personal_data: bool = True,
                    body_logging: str = "off", enabled: bool = True, description: str | None = None) -> None:
        if not re.match(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", name) or len(name) > 128:
            raise AdminError("A service name is dotted lower-case words, at most 128 characters, "
                             "e.g. population.citizen.get.")
        if len(operation) > 64 or len(version) > 16:
            raise AdminError("An operation name is at most 64 characters, a version at most 16.")
        if body_logging not in ("off", "metadata", "full"):
            raise AdminError("Body logging is one of: off, metadata, full.")
        with self.engine.begin() as conn:
            _existing(conn, connections.c.name, connection, f"No connection '{connection}'.")
            before = _row(conn, services, services.c.name, name)
            values = dict(version=version, connection=connection, operation=operation, personal_data=personal_data,
                          body_logging=body_logging, enabled=enabled, updated_at=_now())
            if description is not None or not before:
                values["description"] = description
            after = _put(conn, services.c.name, name, before, values)
            bump_generation(conn)
        self._record("service.set", name, before, after)

    def get_client(self, client_id: str) -> dict:
        with self.engine.connect() as conn:
            return _public(_existing(conn, clients.c.client_id, client_id, f"No client '{client_id}'."))

    def update_client(self, client_id: str, **changes: Any) -> None:
        allowed = {"name", "agency_code", "agency_name", "roles", "status"}
        unknown = set(changes) - allowed
        if unknown:
            raise AdminError(f"Cannot change {', '.join(sorted(unknown))} of a client.")
        if set(changes.get("roles") or ()) - set(ROLE_SCOPES):
            raise AdminError(f"Roles are {', '.join(ROLE_SCOPES)}.")
        if changes.get("status") not in (None, "active", "disabled"):
            raise AdminError("A client's status is active or disabled.")
        with self.engine.begin() as conn:
            before = _existing(conn, clients.c.client_id, client_id, f"No client '{client_id}'.")
            conn.execute(update(clients).where(clients.c.client_id == client_id)
                         .values(**changes, updated_at=_now()))
            after = _row(conn, clients, clients.c.client_id, client_id)
            bump_generation(conn)
        self._record("client.update", client_id, before, after)

    def register_spec_services(self) -> list[str]:
        """Create the services that the shared API specs declare and the database lacks,
        and the connections of adapters that need no settings (e.g. code lists)."""
        created = []
        with self.engine.begin() as conn:
            for api in specs.shared_apis():
                for name, svc in api.services.items():
                    self._ensure_settingless_connection(conn, svc["connection"])
                    if _row(conn, services, services.c.name, name):
                        continue
                    conn.execute(insert(services).values(
                        name=name, version=svc["version"], connection=svc["connection"], operation=svc["operation"],
                        personal_data=bool(svc.get("personal_data", True)), description=api.title,
                        enabled=True, updated_at=_now(),
                    ))
                    created.append(name)
            if created:
                bump_generation(conn)
        for name in created:
            self._record("service.create", name, None, {"name": name})
        return created

    def set_body_logging(self, service: str, mode: str) -> None:
        if mode not in ("off", "metadata", "full"):
            raise AdminError("Body logging is one of: off, metadata, full.")
        with self.engine.begin() as conn:
            before = _existing(conn, services.c.name, service, f"No service '{service}'; see `lgsp services list`.")
            conn.execute(update(services).where(services.c.name == service)
                         .values(body_logging=mode, updated_at=_now()))
            after = _row(conn, services, services.c.name, service)
            bump_generation(conn)
        self._record("service.body_logging", service, before, after)

    def _ensure_settingless_connection(self, conn: Connection, name: str) -> None:
        if _row(conn, connections, connections.c.name, name) or name not in plugins.installed():
            return
        if plugins.adapter_class(name).settings_schema.get("required"):
            return  # it needs an integrator to say where the backend is
        conn.execute(insert(connections).values(name=name, adapter=name, settings={}, enabled=True, updated_at=_now()))

    def list_services(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [_public(dict(r._mapping)) for r in conn.execute(select(services).order_by(services.c.name))]

    # -- traffic policies (rates and quotas, lgsp.traffic) ---------------------------
    def check_policy(self, target: str, values: dict[str, Any],
                     also_known: dict[str, set[str]] | None = None) -> traffic.Policy:
        """The policy, checked (values and the names it refers to), or AdminError; nothing is stored.

        `also_known`: names a file being applied creates first ({"clients": …, "services": …, "connections": …}).
        """
        try:
            policy = traffic.checked(target, values)
        except traffic.PolicyError as exc:
            raise AdminError(str(exc), exc.code) from None
        extra = also_known or {}
        with self.engine.connect() as conn:
            def known(kind: str, table, column, name: str) -> None:
                if name not in extra.get(kind, set()) and not _row(conn, table, column, name):
                    raise AdminError(f"No {kind[:-1]} '{name}' (policy {target}).", "admin.not_found")

            for client_id in ([policy.client_id] if policy.client_id else []) + sorted(policy.shares):
                known("clients", clients, clients.c.client_id, client_id)
            if policy.service:
                known("services", services, services.c.name, policy.service)
            if policy.connection:
                known("connections", connections, connections.c.name, policy.connection)
        return policy

    def set_policy(self, target: str, values: dict[str, Any]) -> dict:
        """Create or replace the policy of `target` (fields left out are no limit)."""
        policy = self.check_policy(target, values)
        with self.engine.begin() as conn:
            before = _row(conn, traffic_policies, traffic_policies.c.target, target)
            row = {**traffic.as_row(policy), "updated_at": _now()}
            after = _put(conn, traffic_policies.c.target, target, before, row)
            bump_generation(conn)
        self._record("policy.set", target, before, after)
        return _public(after)

    def delete_policy(self, target: str) -> None:
        with self.engine.begin() as conn:
            before = _existing(conn, traffic_policies.c.target, target,
                               f"No policy '{target}'; see `lgsp policies list`.")
            conn.execute(delete(traffic_policies).where(traffic_policies.c.target == target))
            bump_generation(conn)
        self._record("policy.delete", target, before, None)

    def get_policy(self, target: str) -> dict:
        with self.engine.connect() as conn:
            return _public(_existing(conn, traffic_policies.c.target, target, f"No policy '{target}'."))

    def list_policies(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(traffic_policies).order_by(traffic_policies.c.target))
            return [_public(dict(r._mapping)) for r in rows]
