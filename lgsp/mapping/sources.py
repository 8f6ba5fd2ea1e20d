"""Where a field's value comes from, chosen by its source key (`path`, `join`, `meta`, `const`,
`admin_unit`; `first` and `object` nest fields and live with the compiler, lgsp.mapping.compile).
Each source compiles its part of the spec once into a getter, and may name the field's label
(the national path used in error messages)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from lgsp import codelists
from lgsp.mapping.errors import MappingSpecError
from lgsp.mapping.paths import Getter, leaf, path_getter, split

PLAIN = (str, int, float, bool, type(None))


@dataclass
class Context:
    """What compiling one mapping file knows: its source system (for code lists), its templates,
    where it came from, and the templates being expanded (to refuse a template in itself)."""

    source: str
    templates: Mapping[str, Any]
    origin: str
    stack: tuple[str, ...] = field(default_factory=tuple)


# (spec, ctx, prefix, where) -> (getter, label or None to keep the default)
SourceCompiler = Callable[[dict[str, Any], Context, str, str], "tuple[Getter, str | None]"]


def path_source(spec: dict[str, Any], ctx: Context, prefix: str, where: str) -> tuple[Getter, str | None]:
    parts = split(spec["path"], where)
    return path_getter(parts, raw=bool(spec.get("many"))), prefix + "/".join(parts)


def join_source(spec: dict[str, Any], ctx: Context, prefix: str, where: str) -> tuple[Getter, str | None]:
    if not isinstance(spec["join"], list) or not spec["join"]:
        raise MappingSpecError(f"{where}: 'join' takes a list of paths")
    getters = tuple(path_getter(split(p, where)) for p in spec["join"])
    sep = spec.get("sep", " ")

    def get(node: dict[str, Any], meta: Any) -> Any:
        parts = [v for g in getters if (v := g(node, meta)).__class__ is str]
        return sep.join(parts) if parts else None

    return get, None


def meta_source(spec: dict[str, Any], ctx: Context, prefix: str, where: str) -> tuple[Getter, str | None]:
    attribute = spec["meta"]
    if not isinstance(attribute, str):
        raise MappingSpecError(f"{where}: 'meta' names one attribute")

    def get(node: dict[str, Any], meta: Any) -> Any:
        if not meta:
            return None
        v = meta.get(attribute)
        return None if v is None else leaf(v)

    return get, "@" + attribute


def const_source(spec: dict[str, Any], ctx: Context, prefix: str, where: str) -> tuple[Getter, str | None]:
    const = spec["const"]
    if not isinstance(const, PLAIN):
        raise MappingSpecError(f"{where}: 'const' must be a plain value")
    return (lambda node, meta: const), None


def admin_unit_source(spec: dict[str, Any], ctx: Context, prefix: str, where: str) -> tuple[Getter, str | None]:
    units = spec["admin_unit"]
    if not isinstance(units, dict) or set(units) - {"province", "district", "commune"} or "province" not in units:
        raise MappingSpecError(f"{where}: 'admin_unit' maps province, district and commune to paths")
    province = path_getter(split(units["province"], where))
    district = path_getter(split(units["district"], where)) if "district" in units else (lambda n, m: None)
    commune = path_getter(split(units["commune"], where)) if "commune" in units else (lambda n, m: None)
    current_unit = codelists.admin_units().current_unit

    def get(node: dict[str, Any], meta: Any) -> Any:
        p, c, legacy = current_unit(province(node, meta), district(node, meta), commune(node, meta))
        return {"province": p, "commune": c, "legacy": legacy}

    return get, None


# The sources that read the answer directly; lgsp.mapping.compile adds the nesting ones.
LEAF_SOURCES: dict[str, SourceCompiler] = {
    "path": path_source,
    "join": join_source,
    "meta": meta_source,
    "const": const_source,
    "admin_unit": admin_unit_source,
}
