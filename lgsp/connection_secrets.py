"""Secrets in connection settings: sealed at rest, masked in every view, opened only in memory.

An adapter marks settings writeOnly (passwords, API keys, header maps of secrets);
they are stored encrypted under a key derived from the master secret, shown as a
mask by the admin API and the audit trail, and opened when the registry builds
the adapter.
"""
from __future__ import annotations

from typing import Any

from lgsp import plugins
from lgsp.crypto import fernet

MASK = "********"


def masked(value: Any) -> Any:
    if _is_sealed(value):
        return MASK
    if isinstance(value, dict):  # a map of secrets (headers): each value masked
        return {k: (MASK if _is_sealed(v) else v) for k, v in value.items()}
    return value


def _is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$secret"}


def seal_secrets(adapter: str, settings: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Encrypt the settings the adapter marks writeOnly; a masked value keeps the stored secret."""
    secret_names, secret_maps = plugins.secret_fields(adapter), plugins.secret_maps(adapter)
    previous = previous or {}
    out = {}
    for key, value in settings.items():
        if key in secret_names:
            out[key] = sealed(value, previous.get(key))
        elif key in secret_maps and isinstance(value, dict):
            before = previous.get(key) if isinstance(previous.get(key), dict) else {}
            out[key] = {name: sealed(v, before.get(name)) for name, v in value.items()}
        else:
            out[key] = value
    return out


def sealed(value: Any, previous: Any) -> Any:
    """One secret value encrypted; the mask keeps the stored secret it stands for."""
    if value == MASK and previous is not None:
        return previous
    if _is_sealed(value):
        return value
    return {"$secret": fernet().encrypt(str(value).encode()).decode()}


def _open(value: Any) -> Any:
    return fernet().decrypt(value["$secret"].encode()).decode() if _is_sealed(value) else value


def open_secrets(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as the adapter needs them (in memory only)."""
    return {k: ({n: _open(x) for n, x in v.items()} if isinstance(v, dict) and not _is_sealed(v) else _open(v))
            for k, v in settings.items()}


def unmasked(settings: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """Settings as sent, with each mask replaced by the stored value it stands for (for validation)."""
    out = {}
    for key, value in settings.items():
        stored = plain.get(key)
        if value == MASK and key in plain:
            out[key] = stored
        elif isinstance(value, dict) and isinstance(stored, dict):
            out[key] = {n: (stored.get(n, x) if x == MASK else x) for n, x in value.items()}
        else:
            out[key] = value
    return out
