"""Declarative mapping: a backend's answer (national field names) -> the canonical model.

A mapping file (YAML, one per adapter) says, per operation, which national
field feeds which canonical field and how: renames, date formats, joins,
code-list translations, nested templates (address, person), defaults. The
format is described in docs/mapping.md.

A file is compiled once into closures over precomputed path tuples and bound
code-list tables, so applying it costs a few dict look-ups per field: it runs
for every answer on the hot path. No YAML, regex or strptime work per call.

Input is the element as a plain dict: local name -> str (leaf text as on the
wire) | dict (complex element) | list[dict] (repeated element); answers read
from JSON may also hold numbers and booleans. Missing keys,
empty strings and empty elements all count as absent. Bad data in the answer
(a malformed date, a boolean that is neither true nor false) raises
:class:`MappingError`, which the pipeline reports as ``upstream.malformed``; a
bad mapping file raises :class:`MappingSpecError` when it is loaded; a file is first
checked against lgsp/mapping/mapping.schema.json, so a wrong key names its line.

The compiler is three tables: sources (lgsp.mapping.sources: where a value comes from),
converters (lgsp.mapping.converters: what is done to a present value) and templates.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from lgsp.mapping.converters import CONVERTERS, Converter
from lgsp.mapping.errors import MappingError, MappingSpecError
from lgsp.mapping.paths import Getter
from lgsp.mapping.schema import check_document
from lgsp.mapping.sources import LEAF_SOURCES, PLAIN, Context, SourceCompiler

__all__ = ["CompiledMapping", "MappingError", "MappingSpecError", "compile_mapping", "load_mapping"]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------------------
# compiler
# ---------------------------------------------------------------------------

def _first_source(spec: dict[str, Any], ctx: Context, prefix: str, where: str) -> tuple[Getter, str | None]:
    if not isinstance(spec["first"], list) or not spec["first"]:
        raise MappingSpecError(f"{where}: 'first' takes a list of fields")
    alternatives = tuple(_compile_field(s, ctx, prefix, f"{where}/first[{i}]") for i, s in enumerate(spec["first"]))

    def get(node: dict[str, Any], meta: Any) -> Any:
        for g in alternatives:
            v = g(node, meta)
            if v is not None:
                return v
        return None

    return get, None


def _object_source(spec: dict[str, Any], ctx: Context, prefix: str, where: str) -> tuple[Getter, str | None]:
    return _compile_object(spec["object"], ctx, prefix, where, spec.get("null_if_empty", True)), None


# A field's source key → what compiles it (a field has exactly one, or only a template), in this order.
SOURCES: dict[str, SourceCompiler] = {
    "path": LEAF_SOURCES["path"], "join": LEAF_SOURCES["join"], "first": _first_source, "object": _object_source,
    "meta": LEAF_SOURCES["meta"], "const": LEAF_SOURCES["const"], "admin_unit": LEAF_SOURCES["admin_unit"],
}
_SOURCES = tuple(SOURCES)
_KEYS = frozenset(_SOURCES) | frozenset(CONVERTERS) | {
    "template", "many", "tz", "source", "take", "on_unknown", "default", "required", "sep", "null_if_empty", "spread",
}
# Options that only mean something next to another key.
_OPTIONS = (("tz", "datetime"), ("source", "codelist"), ("on_unknown", "codelist"), ("sep", "join"))


def _compile_field(spec: Any, ctx: Context, prefix: str, where: str) -> Getter:
    spec = _field_spec(spec, where)
    kind = _source_kind(spec, where)
    label = prefix.rstrip("/")
    if kind is None:  # a template applied to the current node
        get: Getter = lambda node, meta: node  # noqa: E731
    else:
        get, named = SOURCES[kind](spec, ctx, prefix, where)
        label = named or label
    if "template" in spec:
        get = _with_template(get, spec, ctx, label + "/" if kind else prefix, where)
    elif spec.get("many"):
        raise MappingSpecError(f"{where}: 'many' needs a template")
    return _with_absence(get, _converter(spec, ctx, label, where), spec, label, where)


def _field_spec(spec: Any, where: str) -> dict[str, Any]:
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        raise MappingSpecError(f"{where}: a field is a path or a mapping, not {spec!r}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise MappingSpecError(f"{where}: unknown keys {sorted(unknown)}")
    return spec


def _source_kind(spec: dict[str, Any], where: str) -> str | None:
    sources = [k for k in _SOURCES if k in spec]
    if len(sources) > 1:
        raise MappingSpecError(f"{where}: give only one of {sources}")
    if not sources and "template" not in spec:
        raise MappingSpecError(f"{where}: give one of {list(_SOURCES)} or a template")
    return sources[0] if sources else None


def _with_template(inner: Getter, spec: dict[str, Any], ctx: Context, prefix: str, where: str) -> Getter:
    """The template applied to the value: one element, or each of a repeated one (`many`)."""
    tfn = _compile_template(spec["template"], ctx, prefix, where)
    if spec.get("many"):
        def each(node: dict[str, Any], meta: Any) -> Any:
            v = inner(node, meta)
            if v is None:
                return []
            items = v if v.__class__ is list else [v]
            return [r for x in items if isinstance(x, dict) and (r := tfn(x, meta)) is not None]
        return each

    def one(node: dict[str, Any], meta: Any) -> Any:
        v = inner(node, meta)
        if v.__class__ is list:
            v = v[0] if v else None
        return tfn(v, meta) if v.__class__ is dict and v else None
    return one


def _converter(spec: dict[str, Any], ctx: Context, label: str, where: str) -> Converter | None:
    convs = [k for k in CONVERTERS if k in spec]
    if len(convs) > 1:
        raise MappingSpecError(f"{where}: give only one of {convs}")
    conv = CONVERTERS[convs[0]](spec, ctx, label, where) if convs else None
    for option, needs in _OPTIONS:
        if option in spec and needs not in spec:
            raise MappingSpecError(f"{where}: {option!r} only goes with {needs!r}")
    if "take" in spec and not {"date", "codelist"} & set(spec):
        raise MappingSpecError(f"{where}: 'take' only goes with 'date' or 'codelist'")
    return conv


def _with_absence(base: Getter, conv: Converter | None, spec: dict[str, Any], label: str, where: str) -> Getter:
    """A present value converted; an absent one the default, or an error when required."""
    default = spec.get("default")
    if not isinstance(default, PLAIN):
        raise MappingSpecError(f"{where}: 'default' must be a plain value")
    required = bool(spec.get("required"))
    if conv is None and default is None and not required:
        return base

    def value(node: dict[str, Any], meta: Any) -> Any:
        v = base(node, meta)
        if v is not None and conv is not None:
            v = conv(v)
        if v is None:
            if required:
                raise MappingError(f"{label} is missing.", field=label)
            return default
        return v

    return value


def _compile_object(fields: Any, ctx: Context, prefix: str, where: str, null_if_empty: bool) -> Getter:
    if not isinstance(fields, dict) or not fields:
        raise MappingSpecError(f"{where}: 'fields' must be a non-empty mapping")
    entries = []
    for key, spec in fields.items():
        if not isinstance(key, str):
            raise MappingSpecError(f"{where}: field name {key!r} must be a string")
        spread = isinstance(spec, dict) and bool(spec.get("spread"))
        entries.append((key, _compile_field(spec, ctx, prefix, f"{where}/{key}"), spread))
    if any(spread for _, _, spread in entries):
        return _spread_object(tuple(entries), null_if_empty)
    return _plain_object(tuple((k, f) for k, f, _ in entries), null_if_empty)


def _plain_object(items: tuple[tuple[str, Getter], ...], null_if_empty: bool) -> Getter:
    if not null_if_empty:
        return lambda node, meta: {k: f(node, meta) for k, f in items}

    def obj(node: dict[str, Any], meta: Any) -> Any:
        out = {k: f(node, meta) for k, f in items}
        for v in out.values():
            if v is not None:
                return out
        return None

    return obj


def _spread_object(steps: tuple[tuple[str, Getter, bool], ...], null_if_empty: bool) -> Getter:
    """An object some of whose fields (spread: true) merge their own keys into it."""
    def obj_spread(node: dict[str, Any], meta: Any) -> Any:
        out: dict[str, Any] = {}
        for k, f, spread in steps:
            v = f(node, meta)
            if spread:
                if v:
                    out.update(v)
            else:
                out[k] = v
        if null_if_empty:
            for v in out.values():
                if v is not None:
                    return out
            return None
        return out

    return obj_spread


def _compile_template(name: Any, ctx: Context, prefix: str, where: str) -> Getter:
    if not isinstance(name, str) or name not in ctx.templates:
        raise MappingSpecError(f"{where}: unknown template {name!r}")
    if name in ctx.stack:
        raise MappingSpecError(f"{where}: template {name!r} refers to itself")
    fields = _template_fields(name, ctx, where)
    spec = ctx.templates[name]
    inner = Context(ctx.source, ctx.templates, ctx.origin, ctx.stack + (name,))
    # Compiled per use so that error messages name the full national path.
    return _compile_object(fields, inner, prefix, f"templates/{name}", spec.get("null_if_empty", True))


def _template_fields(name: str, ctx: Context, where: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    spec = ctx.templates[name]
    if not isinstance(spec, dict) or not isinstance(spec.get("fields"), dict):
        raise MappingSpecError(f"templates/{name}: expected a mapping with 'fields'")
    unknown = set(spec) - {"fields", "extends", "null_if_empty", "description"}
    if unknown:
        raise MappingSpecError(f"templates/{name}: unknown keys {sorted(unknown)}")
    base = spec.get("extends")
    if base is None:
        return dict(spec["fields"])
    if base not in ctx.templates or base in seen + (name,):
        raise MappingSpecError(f"templates/{name}: cannot extend {base!r}")
    return {**_template_fields(base, ctx, where, seen + (name,)), **spec["fields"]}


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CompiledMapping:
    """A mapping file compiled into one callable per operation."""

    name: str
    version: str
    #: Source system; selects the code lists' translation tables.
    source: str
    origin: str
    _ops: Mapping[str, tuple[str, Getter]] = field(repr=False)
    #: The ``outbound:`` section (canonical -> national, for requests), see lgsp.mapping.outbound.
    outbound: Any = field(default=None, repr=False)

    @property
    def operations(self) -> tuple[str, ...]:
        return tuple(self._ops)

    def apply(self, operation: str, data: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Map one national element (as a dict) to its canonical form."""
        try:
            element, fn = self._ops[operation]
        except KeyError:
            raise KeyError(f"{self.origin}: no mapping for operation {operation!r}") from None
        if not isinstance(data, dict):
            raise MappingError(f"{element} is not an element with fields.", field=element)
        mapped: dict[str, Any] = fn(data, meta)
        return mapped

    def to_national(self, operation: str, canonical: Mapping[str, Any]) -> dict[str, Any]:
        """Render one canonical object as the national request fields (the ``outbound:`` section)."""
        if self.outbound is None:
            raise KeyError(f"{self.origin}: no outbound section")
        rendered: dict[str, Any] = self.outbound.render(operation, canonical)
        return rendered


def compile_mapping(document: Mapping[str, Any], origin: str = "<mapping>") -> CompiledMapping:
    """Compile a parsed mapping document (see docs/mapping.md)."""
    if not isinstance(document, dict):
        raise MappingSpecError(f"{origin}: expected a mapping")
    unknown = set(document) - {"name", "version", "source", "description", "templates", "operations", "outbound"}
    if unknown:
        raise MappingSpecError(f"{origin}: unknown keys {sorted(unknown)}")
    for key in ("name", "source"):
        if not isinstance(document.get(key), str):
            raise MappingSpecError(f"{origin}: {key!r} is required")
    templates = document.get("templates") or {}
    operations = document.get("operations")
    if not isinstance(templates, dict) or not isinstance(operations, dict) or not operations:
        raise MappingSpecError(f"{origin}: 'templates' and 'operations' must be mappings")
    ctx = Context(document["source"], templates, origin)
    ops: dict[str, tuple[str, Getter]] = {}
    for op, spec in operations.items():
        where = f"{origin}: operations/{op}"
        if not isinstance(spec, dict) or set(spec) - {"input", "fields", "description"}:
            raise MappingSpecError(f"{where}: expected 'input' and 'fields'")
        element = spec.get("input") or op
        ops[op] = (element, _compile_object(spec.get("fields"), ctx, f"{element}/", where, null_if_empty=False))
    outbound = None
    if "outbound" in document:
        from lgsp.mapping.outbound import compile_outbound  # the other direction, only for files that write

        outbound = compile_outbound(document["outbound"], document["source"], origin)
    return CompiledMapping(
        name=document["name"],
        version=str(document.get("version", "0")),
        source=document["source"],
        origin=origin,
        _ops=ops,
        outbound=outbound,
    )


@functools.cache
def _load(path: str) -> CompiledMapping:
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        document = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise MappingSpecError(f"{path}: not YAML: {exc}") from None
    check_document(document, path, raw.decode("utf-8", "replace"))  # a wrong key: its line, before compiling
    return compile_mapping(document, origin=path)


@functools.lru_cache(maxsize=256)
def load_mapping(path: str | os.PathLike[str]) -> CompiledMapping:
    """Load and compile a mapping file; cached by the path given and by its resolved path
    (the first cache keeps filesystem look-ups off the hot path)."""
    return _load(str(Path(path).resolve()))
