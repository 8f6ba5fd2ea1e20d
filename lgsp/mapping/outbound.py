"""Declarative outbound mapping: the canonical model -> a backend's request (national field names).

The inbound direction (lgsp.mapping.compile) reads a national answer into canonical JSON. A
store-and-forward adapter also *writes* to a national system (the portal's
DongBoHoSoMC), so it needs the other way round. The ``outbound:`` section of a
mapping file says, per operation, which canonical field feeds which national field
and how: dates rendered in a fixed-width pattern in a named time zone, canonical
codes turned back into the source's codes through the same code lists, nested
templates for repeated elements. The format is in docs/mapping.md ("Outbound").

Compiled once into closures like the inbound direction. A canonical value that
cannot be rendered (a date without an offset, a code the list does not know)
raises :class:`lgsp.mapping.compile.MappingError` naming the canonical field: nothing
half-mapped is ever sent.
"""
from __future__ import annotations

import datetime as _dt
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from lgsp import codelists
from lgsp.mapping.converters import _compile_format, _Format
from lgsp.mapping.errors import MappingError, MappingSpecError

__all__ = ["CompiledOutbound", "compile_outbound"]

# canonical node -> national value (None: leave the field out)
Render = Callable[[Mapping[str, Any]], Any]

_SOURCES = ("path", "const")
_KEYS = frozenset(_SOURCES) | {"template", "many", "datetime", "date", "tz", "type", "codelist", "source",
                               "default", "required"}
_PLAIN = (str, int, float, bool, type(None))


def _split(path: Any, where: str) -> tuple[str, ...]:
    if not isinstance(path, str) or not path.strip() or not all(path.split(".")):
        raise MappingSpecError(f"{where}: a canonical path is dotted names, e.g. applicant.name")
    return tuple(path.split("."))


def _getter(parts: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    def get(node: Mapping[str, Any]) -> Any:
        v: Any = node
        for p in parts:
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        # Absent, null, blank text and empty lists are all "absent": the field is left out.
        if v is None or v == "" or v == []:
            return None
        return v
    return get


def _render(fmt: _Format, moment: _dt.datetime | _dt.date) -> str:
    out = [""] * fmt.length
    for name, a, b in fmt.slots:
        out[a] = str(getattr(moment, name)).zfill(b - a)
    for pos, ch in fmt.literals:
        out[pos] = ch
    return "".join(out)


def _zone(tz: Any, where: str) -> _dt.tzinfo:
    if not isinstance(tz, str) or not tz:
        raise MappingSpecError(f"{where}: 'tz' names a time zone (e.g. Asia/Ho_Chi_Minh) or an offset (+07:00)")
    if tz == "Z":
        return _dt.timezone.utc
    if tz[0] in "+-":
        try:
            return _dt.datetime.fromisoformat(f"2000-01-01T00:00:00{tz}").tzinfo
        except ValueError:
            raise MappingSpecError(f"{where}: bad offset {tz!r}") from None
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise MappingSpecError(f"{where}: unknown time zone {tz!r}") from None


def _datetime_renderer(spec: dict, label: str, where: str) -> Callable[[Any], str]:
    fmt = _compile_format(spec["datetime"], where)
    if "tz" not in spec:
        raise MappingSpecError(f"{where}: an outbound 'datetime' needs 'tz', the zone the backend reads times in")
    zone = _zone(spec["tz"], where)

    def render(v: Any) -> str:
        try:
            moment = _dt.datetime.fromisoformat(v) if isinstance(v, str) else None
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            # A time without an offset is ambiguous: refuse rather than guess the zone.
            raise MappingError(f"{label} is not an ISO 8601 date and time with an offset.", field=label)
        return _render(fmt, moment.astimezone(zone))

    return render


def _date_renderer(spec: dict, label: str, where: str) -> Callable[[Any], str]:
    fmt = _compile_format(spec["date"], where)

    def render(v: Any) -> str:
        try:
            day = _dt.date.fromisoformat(v) if isinstance(v, str) and len(v) == 10 else None
        except ValueError:
            day = None
        if day is None:
            raise MappingError(f"{label} is not an ISO 8601 date (YYYY-MM-DD).", field=label)
        return _render(fmt, day)

    return render


def _type_renderer(kind: Any, label: str, where: str) -> Callable[[Any], Any]:
    if kind == "str":
        def to_str(v: Any) -> str:
            if v.__class__ is str:
                return v
            if v.__class__ is bool:
                return "True" if v else "False"  # as .NET services write booleans (the portal's isUpdating)
            if v.__class__ is float and v.is_integer():
                return str(int(v))
            if v.__class__ in (int, float):
                return str(v)
            raise MappingError(f"{label} is not text or a number.", field=label)
        return to_str
    if kind == "number":
        def to_number(v: Any) -> int | float:
            if v.__class__ in (int, float):
                return v
            raise MappingError(f"{label} is not a number.", field=label)
        return to_number
    if kind == "int":
        def to_int(v: Any) -> int:
            if v.__class__ is int or (v.__class__ is float and v.is_integer()):
                return int(v)
            raise MappingError(f"{label} is not a whole number.", field=label)
        return to_int
    if kind == "bool":
        def to_bool(v: Any) -> bool:
            if v.__class__ is bool:
                return v
            raise MappingError(f"{label} is not true or false.", field=label)
        return to_bool
    raise MappingSpecError(f"{where}: unknown type {kind!r} (str, int, number or bool)")


def _codelist_renderer(spec: dict, source: str, label: str, where: str) -> Callable[[Any], str]:
    name = spec["codelist"]
    source = spec.get("source", source)
    try:
        clist = codelists.get(name)
    except KeyError as exc:
        raise MappingSpecError(f"{where}: {exc.args[0]}") from None
    if source not in clist.translations:
        raise MappingSpecError(f"{where}: code list {name!r} has no table for source {source!r}")
    table = clist.reverse(source)

    def render(v: Any) -> str:
        code = table.get(v) if v.__class__ is str else None
        if code is None:
            # Never send a code the backend's list does not have; never echo the value.
            raise MappingError(f"{label} is not a code of the list {name}.", field=label)
        return code

    return render


@dataclass
class _Context:
    source: str
    templates: Mapping[str, Any]
    stack: tuple[str, ...] = ()


def _compile_field(spec: Any, ctx: _Context, prefix: str, where: str) -> Render:
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        raise MappingSpecError(f"{where}: a field is a canonical path or a mapping, not {spec!r}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise MappingSpecError(f"{where}: unknown keys {sorted(unknown)}")
    sources = [k for k in _SOURCES if k in spec]
    if len(sources) != 1:
        raise MappingSpecError(f"{where}: give exactly one of {list(_SOURCES)}")
    if "const" in spec:
        const = spec["const"]
        if not isinstance(const, _PLAIN):
            raise MappingSpecError(f"{where}: 'const' must be a plain value")
        return lambda node: const
    parts = _split(spec["path"], where)
    label = prefix + ".".join(parts)
    get = _getter(parts)

    convs = [k for k in ("template", "datetime", "date", "type", "codelist") if k in spec]
    if len(convs) > 1:
        raise MappingSpecError(f"{where}: give only one of {convs}")
    for option, needs in (("tz", "datetime"), ("source", "codelist"), ("many", "template")):
        if option in spec and needs not in spec:
            raise MappingSpecError(f"{where}: {option!r} only goes with {needs!r}")
    conv: Callable[[Any], Any] | None = None
    if convs == ["template"]:
        conv = _template_renderer(spec, ctx, label, where)
    elif convs == ["datetime"]:
        conv = _datetime_renderer(spec, label, where)
    elif convs == ["date"]:
        conv = _date_renderer(spec, label, where)
    elif convs == ["type"]:
        conv = _type_renderer(spec["type"], label, where)
    elif convs == ["codelist"]:
        conv = _codelist_renderer(spec, ctx.source, label, where)

    default = spec.get("default")
    if not isinstance(default, _PLAIN):
        raise MappingSpecError(f"{where}: 'default' must be a plain value")
    required = bool(spec.get("required"))

    def render(node: Mapping[str, Any]) -> Any:
        v = get(node)
        if v is None:
            if required:
                raise MappingError(f"{label} is missing.", field=label)
            return default
        return v if conv is None else conv(v)

    return render


def _template_renderer(spec: dict, ctx: _Context, label: str, where: str) -> Callable[[Any], Any]:
    name = spec["template"]
    if not isinstance(name, str) or name not in ctx.templates:
        raise MappingSpecError(f"{where}: unknown template {name!r}")
    if name in ctx.stack:
        raise MappingSpecError(f"{where}: template {name!r} refers to itself")
    tspec = ctx.templates[name]
    if not isinstance(tspec, dict) or set(tspec) - {"fields", "description"}:
        raise MappingSpecError(f"outbound/templates/{name}: expected a mapping with 'fields'")
    inner = _Context(ctx.source, ctx.templates, ctx.stack + (name,))
    many = bool(spec.get("many"))
    obj = _compile_object(tspec.get("fields"), inner, f"{label}[]." if many else f"{label}.",
                          f"outbound/templates/{name}")

    def one(v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise MappingError(f"{label} is not an object.", field=label)
        return obj(v)

    if not many:
        return one

    def each(v: Any) -> list[dict[str, Any]]:
        if not isinstance(v, list):
            raise MappingError(f"{label} is not a list.", field=label)
        return [one(item) for item in v]

    return each


def _compile_object(fields: Any, ctx: _Context, prefix: str, where: str) -> Callable[[Mapping[str, Any]], dict]:
    if not isinstance(fields, dict) or not fields:
        raise MappingSpecError(f"{where}: 'fields' must be a non-empty mapping")
    items = []
    for key, spec in fields.items():
        if not isinstance(key, str) or not key:
            raise MappingSpecError(f"{where}: national field name {key!r} must be a string")
        items.append((key, _compile_field(spec, ctx, prefix, f"{where}/{key}")))
    entries = tuple(items)

    def obj(node: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for key, render in entries:
            v = render(node)
            if v is not None:  # absent canonical values are left out of the request
                out[key] = v
        return out

    return obj


@dataclass(frozen=True)
class CompiledOutbound:
    """The outbound section of a mapping file, one renderer per operation."""

    _ops: Mapping[str, Callable[[Mapping[str, Any]], dict]]

    @property
    def operations(self) -> tuple[str, ...]:
        return tuple(self._ops)

    def render(self, operation: str, canonical: Mapping[str, Any]) -> dict[str, Any]:
        try:
            fn = self._ops[operation]
        except KeyError:
            raise KeyError(f"no outbound mapping for operation {operation!r}") from None
        if not isinstance(canonical, dict):
            raise MappingError(f"{operation}: the canonical input is not an object.", field=operation)
        return fn(canonical)


def compile_outbound(section: Any, source: str, origin: str) -> CompiledOutbound:
    """Compile the ``outbound:`` section of a mapping document."""
    where = f"{origin}: outbound"
    if not isinstance(section, dict) or set(section) - {"templates", "operations", "description"}:
        raise MappingSpecError(f"{where}: expected 'templates' and 'operations'")
    templates = section.get("templates") or {}
    operations = section.get("operations")
    if not isinstance(templates, dict) or not isinstance(operations, dict) or not operations:
        raise MappingSpecError(f"{where}: 'templates' and 'operations' must be mappings")
    ctx = _Context(source, templates)
    ops = {}
    for op, spec in operations.items():
        if not isinstance(spec, dict) or set(spec) - {"fields", "description"}:
            raise MappingSpecError(f"{where}/operations/{op}: expected 'fields'")
        ops[op] = _compile_object(spec.get("fields"), ctx, "", f"{where}/operations/{op}")
    return CompiledOutbound(ops)
