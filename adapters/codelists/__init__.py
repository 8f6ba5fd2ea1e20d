"""Adapter for the shared code lists (danh mục dùng chung) the mappings use.

Serves lgsp.codelists — administrative units with the old → current
translation, ethnic groups, religions, gender per source system … — through
the same pipeline as every shared service (token, grant, audit), so sector
systems read one maintained copy instead of keeping their own.
No backend: the answers are already in the canonical model (no mapping file).
"""
from __future__ import annotations

from typing import Any, Mapping

from lgsp.sdk import Adapter, AdapterResult, CallContext, Operation, RecordNotFound, codelists

__version__ = "1.0.0"

ADMIN_UNITS = "admin-units"


def _list_summary(name: str) -> dict[str, Any]:
    if name == ADMIN_UNITS:
        units = codelists.admin_units()
        return {"name": name, "version": units.version, "source": units.source,
                "entries": len(units.provinces_current) + len(units.communes_current)}
    cl = codelists.get(name)
    return {"name": name, "version": cl.version, "source": cl.source, "entries": len(cl.entries),
            "source_systems": sorted(cl.translations)}


def _codelist(name: str) -> dict[str, Any]:
    if name == ADMIN_UNITS:
        u = codelists.admin_units()
        return {
            "name": name, "version": u.version, "source": u.source, "note": u.note,
            "provinces": [{"code": c, "name": n} for c, n in u.provinces_current.items()],
            "communes": [{"code": c, "name": n, "province": p} for c, (n, p) in u.communes_current.items()],
            "legacy_provinces": [{"code": c, "name": n, "current": cur} for c, (n, cur) in u.provinces_legacy.items()],
            "legacy_districts": [{"code": c, "name": n, "province": p} for c, (n, p) in u.districts_legacy.items()],
            "legacy_communes": [{"code": c, "name": n, "district": d, "province": p, "current": cur}
                                for c, (n, d, p, cur) in u.communes_legacy.items()],
        }
    cl = codelists.get(name)
    return {
        "name": name, "version": cl.version, "source": cl.source, "note": cl.note,
        "entries": [dict(e) for e in cl.entries],
        "translations": {src: {"codes": dict(table), **dict(cl.translation_info.get(src, {}))}
                         for src, table in cl.translations.items()},
    }


class CodeListsAdapter(Adapter):
    name = "codelists"
    version = __version__
    settings_schema = {"type": "object", "additionalProperties": False, "properties": {}}
    operations = {
        "codelist.list": Operation("codelist.list", "The code lists offered, with versions and sources"),
        "codelist.get": Operation(
            "codelist.get", "One code list: entries and per-source translation tables",
            params_schema={"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        ),
        "admin_unit.translate": Operation(
            "admin_unit.translate", "Current units of an address given with old or current codes",
            params_schema={"type": "object", "required": ["province"], "properties": {
                "province": {"type": "string"}, "district": {"type": "string"}, "commune": {"type": "string"}}},
        ),
    }
    examples = {"codelist.get": {"name": "gender"}, "admin_unit.translate": {"province": "77"}}

    async def call(self, operation: str, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        if operation == "codelist.list":
            return AdapterResult(data={"codelists": [_list_summary(n) for n in codelists.names()]}, upstream="codelists")
        if operation == "codelist.get":
            if params["name"] not in codelists.names():
                raise RecordNotFound(f"There is no code list {params['name']!r}.", upstream="codelists")
            return AdapterResult(data=_codelist(params["name"]), upstream="codelists")
        units = codelists.admin_units()
        district, commune_code = params.get("district") or None, params.get("commune") or None
        province, commune, legacy = units.current_unit(params["province"], district, commune_code)
        data = {"province": province, "commune": commune, "legacy": legacy}
        split = units.split_of(commune_code, district) if legacy else None
        if split:  # the old commune now lies in several: say so, and name them all
            data["split"] = split
        return AdapterResult(data=data, upstream="codelists")
