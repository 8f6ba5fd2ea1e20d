"""Adapter discovery through the `lgsp.adapters` entry-point group.

Built-in adapters are found exactly as third-party ones: by the entry points
their package declares. Settings are validated against the adapter's schema
before the adapter is built.
"""
from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Mapping

import jsonschema

from lgsp import egress
from lgsp.adapter import Adapter

GROUP = "lgsp.adapters"


class AdapterNotFound(LookupError):
    pass


class InvalidSettings(ValueError):
    pass


def installed() -> dict[str, Any]:
    """Entry points of every installed adapter, by name (read afresh: adapters can be
    pip-installed while the gateway runs)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@cache
def adapter_class(name: str) -> type[Adapter]:
    importlib.invalidate_caches()  # a package installed after start-up must be importable
    ep = installed().get(name)
    if ep is None:
        raise AdapterNotFound(f"no adapter named {name!r} is installed (entry-point group {GROUP})")
    return ep.load()


def validate_settings(name: str, settings: Mapping[str, Any]) -> None:
    """Check settings against the adapter's schema, then the egress policy (lgsp.egress.EgressRefused)."""
    cls = adapter_class(name)
    schema = cls.settings_schema
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(dict(settings)), key=str)
    if errors:
        raise InvalidSettings("; ".join(f"{'/'.join(map(str, e.path)) or 'settings'}: {e.message}" for e in errors))
    for key in destination_fields(name):
        if isinstance(settings.get(key), str):
            try:
                egress.check_url(settings[key])
            except egress.EgressRefused as exc:
                raise egress.EgressRefused(f"settings/{key}: {exc.detail}") from None
    cls.check_settings(settings)


def destination_fields(name: str) -> set[str]:
    """Settings that name a URL the adapter sends requests to: declared with `format: uri`
    or a pattern starting with ^https?:// (or ^http), and checked against the egress policy."""
    props = adapter_class(name).settings_schema.get("properties", {})
    return {k for k, v in props.items() if isinstance(v, dict)
            and (v.get("format") in ("uri", "url") or str(v.get("pattern", "")).startswith("^http"))}


def build(name: str, settings: Mapping[str, Any]) -> Adapter:
    validate_settings(name, settings)
    return adapter_class(name)(settings)


def secret_fields(name: str) -> set[str]:
    """Settings the adapter marks `writeOnly`: stored encrypted, never shown back."""
    props = adapter_class(name).settings_schema.get("properties", {})
    return {k for k, v in props.items() if isinstance(v, dict) and v.get("writeOnly")}


def secret_maps(name: str) -> set[str]:
    """Settings whose every value is a secret: `headers` (where API keys go) unless the adapter
    marks it `x-lgsp-secret-values: false`, and any object marked `x-lgsp-secret-values: true`."""
    props = adapter_class(name).settings_schema.get("properties", {})
    return {k for k, v in props.items() if isinstance(v, dict)
            and v.get("x-lgsp-secret-values", k == "headers") is True}
