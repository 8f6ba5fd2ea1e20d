"""`lgsp apply -f province.yaml`: the province's configuration as a file kept in git.

The file declares connections, services, clients and grants. Applying it
creates what is missing and changes what differs, through lgsp.control.admin (so every
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
from lgsp.control.admin import Admin, AdminError
from lgsp.storage.schema import connections

_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
SERVICE_DEFAULTS = {"personal_data": True, "body_logging": "off", "enabled": True}


@dataclass
class Change:
    action: str            # create | update | unchanged
    kind: str              # connection | service | client | grant
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
    unknown = set(doc) - {"connections", "services", "clients", "grants"}
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
        desired = {"adapter": spec["adapter"], "settings": spec.get("settings") or {}, "enabled": spec.get("enabled", True)}
        row = stored.get(name)
        current = {"adapter": row.adapter, "settings": open_secrets(dict(row.settings)), "enabled": row.enabled} if row else None
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
    return changes


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
            admin.set_connection(c.name, d["adapter"], d["settings"], d["enabled"])
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
        elif c.kind == "grant":
            if c.action == "update":
                admin.revoke_grant(d["id"])
            admin.add_grant(d["client"], d["service"], d["fields"], d["purposes"])
    return notes
