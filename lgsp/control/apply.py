"""`lgsp apply -f province.yaml`: the province's configuration as a file kept in git.

The file declares connections, services, clients, grants and traffic policies (rates, quotas).
Applying it creates what is missing and changes what differs, through lgsp.control.admin (so every
change is audited and reaches the workers without a restart); what the file
does not mention is left alone. A second run of the same file changes nothing.
`${NAME}` in a string is replaced by the environment variable NAME, so secrets
stay out of the file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from lgsp.connection_secrets import open_secrets
from lgsp.control.admin import Admin, AdminError, check_protection
from lgsp.storage.schema import connections

_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
SERVICE_DEFAULTS = {"personal_data": True, "body_logging": "off", "enabled": True}


@dataclass
class Change:
    action: str            # create | update | unchanged
    kind: str              # connection | service | client | binding | grant | policy | agency
    name: str
    diff: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    desired: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        mark = {"create": "+", "update": "~", "unchanged": "="}[self.action]
        text = f"{mark} {self.kind} {self.name}"
        if self.diff:
            text += ": " + "; ".join(f"{k} {_show(k, a)} → {_show(k, b)}" for k, (a, b) in self.diff.items())
        return text


def _show(key: str, value: Any) -> str:
    if key.startswith("settings.headers") and value:
        return "(secret)"  # headers carry API keys (lgsp.plugins.secret_maps)
    return "(secret)" if key.startswith("settings.") and isinstance(value, str) and "secret" in key else repr(value)


def _substitute(value: Any) -> Any:
    if isinstance(value, str):
        def env(m: re.Match) -> str:
            if m.group(1) not in os.environ:
                raise AdminError(f"The file uses ${{{m.group(1)}}}, which is not set in the environment.")
            return os.environ[m.group(1)]
        return _VAR.sub(env, value)
    if isinstance(value, list):
        return [_substitute(v) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v) for k, v in value.items()}
    return value


def load(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise AdminError(f"{path} is not valid YAML: {exc}") from None
    unknown = set(doc) - {"connections", "services", "clients", "grants", "policies", "agencies"}
    if unknown:
        raise AdminError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}.")
    return _substitute(doc)


def _diff(current: dict[str, Any], desired: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    out = {}
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict) and isinstance(have, dict) and key == "settings":
            out.update(_diff(have, want, prefix=f"{key}."))
        elif have != want:
            out[prefix + key] = (have, want)
    return out


def plan(admin: Admin, doc: dict[str, Any]) -> list[Change]:
    changes: list[Change] = []
    with admin.engine.connect() as conn:
        stored = {r.name: r for r in conn.execute(select(connections))}
    for name, spec in (doc.get("connections") or {}).items():
        desired = {"adapter": spec["adapter"], "settings": spec.get("settings") or {}, "enabled": spec.get("enabled", True),
                   "protection": _protection(name, spec)}
        row = stored.get(name)
        current = {"adapter": row.adapter, "settings": open_secrets(dict(row.settings)), "enabled": row.enabled,
                   "protection": row.protection} if row else None
        changes.append(_change("connection", name, current, desired))
    services = {s["name"]: s for s in admin.list_services()}
    for name, spec in (doc.get("services") or {}).items():
        desired = {**SERVICE_DEFAULTS, **spec}
        current = {k: services[name].get(k) for k in desired} if name in services else None
        changes.append(_change("service", name, current, desired))
    clients = {c["client_id"]: c for c in admin.list_clients()}
    for client_id, spec in (doc.get("clients") or {}).items():
        desired = {"name": spec["name"], "agency_code": spec.get("agency_code"), "agency_name": spec.get("agency_name"),
                   "roles": list(spec.get("roles") or [])}
        current = {k: clients[client_id].get(k) for k in desired} if client_id in clients else None
        change = _change("client", client_id, current, desired)
        change.desired["secret_env"] = spec.get("secret_env")
        changes.append(change)
    changes.extend(_binding_changes(admin, doc.get("clients") or {}))
    grants = {(g["client_id"], g["service"]): g for g in admin.list_grants() if g["status"] == "active"}
    for spec in doc.get("grants") or []:
        key = (spec["client"], spec["service"])
        desired = {"fields": list(spec["fields"]), "purposes": list(spec["purposes"])}
        admin.check_grant_fields(key[1], desired["fields"])  # a typo must fail the dry run too
        g = grants.get(key)
        current = {"fields": g["allowed_fields"], "purposes": g["allowed_purposes"], "id": g["id"]} if g else None
        change = _change("grant", f"{key[0]} → {key[1]}", current, desired)
        change.desired.update(client=key[0], service=key[1], id=current and current["id"])
        changes.append(change)
    changes += _plan_policies(admin, doc)
    changes.extend(_plan_agencies(admin, doc.get("agencies") or {}))
    return changes


_AGENCY_KEYS = {"name": "name", "scope": "scope", "client": "client_id", "parent": "parent_code", "email": "email",
                "phone": "phone", "fax": "fax"}


def _plan_agencies(admin: Admin, specs: dict[str, Any]) -> list[Change]:
    """The `agencies:` section: code -> {name, scope (local), client, parent, email, phone, fax}."""
    from lgsp.documents.agencies import Directory, check_code

    known = {a["code"]: a for a in Directory(admin.engine, admin.actor).list()}
    changes = []
    for code, spec in specs.items():
        check_code(code)
        unknown = set(spec or {}) - set(_AGENCY_KEYS)
        if not isinstance(spec, dict) or unknown or not spec.get("name"):
            raise AdminError(f"agencies.{code}: give a name, and only {', '.join(_AGENCY_KEYS)}.")
        desired = {column: spec.get(key) for key, column in _AGENCY_KEYS.items()}
        desired["scope"] = desired["scope"] or "local"
        current = {k: known[code].get(k) for k in desired} if code in known else None
        changes.append(_change("agency", code, current, desired))
    return changes


def _plan_policies(admin: Admin, doc: dict[str, Any]) -> list[Change]:
    """Every policy checked now (values and names, counting what the file itself creates), so a bad
    one fails the plan before anything is applied."""
    from lgsp.traffic.policies import FIELDS, as_row, target_of

    entries = doc.get("policies") or []
    if not isinstance(entries, list):
        raise AdminError("policies: a list of entries, each with client (and service) or connection.")
    declared = {"clients": set(doc.get("clients") or {}), "services": set(doc.get("services") or {}),
                "connections": set(doc.get("connections") or {})}
    stored = {p["target"]: p for p in admin.list_policies()}
    changes, seen = [], set()
    for spec in entries:
        if not isinstance(spec, dict):
            raise AdminError(f"policies: each entry is a map, not {spec!r}.")
        values = {k: v for k, v in spec.items() if k not in ("client", "service", "connection")}
        try:
            target = target_of(spec.get("client"), spec.get("service"), spec.get("connection"))
        except ValueError as exc:
            raise AdminError(f"policies: {exc}") from None
        if target in seen:
            raise AdminError(f"policies: {target} is declared twice.")
        seen.add(target)
        policy = admin.check_policy(target, values, declared)
        desired = {k: as_row(policy)[k] for k in FIELDS}
        current = {k: stored[target].get(k) for k in FIELDS} if target in stored else None
        change = _change("policy", target, current, desired)
        change.desired = {k: v for k, v in desired.items() if v not in (None, {})}
        changes.append(change)
    return changes


def _protection(name: str, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The connection's protection policy, checked while planning: a bad one fails before anything is applied."""
    try:
        return check_protection(spec.get("protection"))
    except AdminError as exc:
        raise AdminError(f"Connection {name}: {exc}") from None


def _binding_changes(admin: Admin, clients: dict[str, Any]) -> list[Change]:
    """Clients' certificate bindings and allowed networks, each checked now (a malformed
    certificate or CIDR fails the plan, before anything is applied)."""
    from lgsp.tls import registration

    out = []
    for client_id, spec in clients.items():
        if spec.get("binding") is None:
            continue
        desired = registration.desired(spec["binding"])
        stored = registration.get(admin, client_id)
        current = {k: stored[k] for k in desired} if stored else None
        change = _change("binding", client_id, current, desired)
        change.desired["spec"] = spec["binding"]
        out.append(change)
    return out


def _change(kind: str, name: str, current: dict | None, desired: dict) -> Change:
    if current is None:
        return Change("create", kind, name, desired=dict(desired))
    diff = _diff(current, desired)
    return Change("update" if diff else "unchanged", kind, name, diff, dict(desired))


def apply(admin: Admin, changes: list[Change]) -> list[str]:
    """Carry out the plan; returns lines worth showing (new clients' secrets)."""
    notes = []
    for c in changes:
        if c.action == "unchanged":
            continue
        d = c.desired
        if c.kind == "connection":
            admin.set_connection(c.name, d["adapter"], d["settings"], d["enabled"], d["protection"])
        elif c.kind == "service":
            admin.set_service(c.name, **d)
        elif c.kind == "client" and c.action == "create":
            env = d.pop("secret_env", None)
            secret = os.environ.get(env) if env else None
            if env and not secret:
                raise AdminError(f"Client {c.name}: environment variable {env} is empty.")
            issued = admin.create_client(c.name, d["name"], d["agency_code"], d["agency_name"], secret, d["roles"])
            if not env:
                notes.append(f"client {c.name}: secret {issued} (shown once)")
        elif c.kind == "client":
            d.pop("secret_env", None)
            admin.update_client(c.name, **d)
        elif c.kind == "binding":
            from lgsp.tls import registration

            registration.put(admin, c.name, d["spec"])
        elif c.kind == "grant":
            if c.action == "update":
                admin.revoke_grant(d["id"])
            admin.add_grant(d["client"], d["service"], d["fields"], d["purposes"])
        elif c.kind == "policy":
            admin.set_policy(c.name, d)
        elif c.kind == "agency":
            from lgsp.documents.agencies import Directory

            Directory(admin.engine, admin.actor).set(c.name, source="apply", **d)
    return notes
