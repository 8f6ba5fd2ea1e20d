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
bad mapping file raises :class:`MappingSpecError` when it is loaded.
"""
from __future__ import annotations

import datetime as _dt
import functools
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from lgsp import codelists

__all__ = ["CompiledMapping", "MappingError", "MappingSpecError", "compile_mapping", "load_mapping"]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# (node, meta) -> value. ``node`` is always a dict; ``meta`` the collection's
# attributes (or None).
Getter = Callable[[dict, "Mapping[str, Any] | None"], Any]


class MappingError(ValueError):
    """The backend's answer cannot be mapped (malformed data); names the national field."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class MappingSpecError(ValueError):
    """The mapping file itself is wrong (raised when it is loaded, never per request)."""


# ---------------------------------------------------------------------------
# leaves and paths
# ---------------------------------------------------------------------------

_nfc = functools.partial(unicodedata.normalize, "NFC")


def _leaf(v: Any) -> Any:
    """Normalise a value read from the input: blank -> None, text stripped and NFC."""
    if v.__class__ is str:
        v = v.strip()
        if not v:
            return None
        # Vietnamese text reaches us both precomposed and decomposed.
        return v if v.isascii() else _nfc(v)
    if v.__class__ is list:
        return _leaf(v[0]) if v else None
    if v.__class__ is dict:
        return v or None
    return v


def _step(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and node and isinstance(node[0], dict):
        return node[0].get(key)  # a repeated element read as one value: its first occurrence
    return None


def _split(path: Any, where: str) -> tuple[str, ...]:
    if not isinstance(path, str) or not path.strip():
        raise MappingSpecError(f"{where}: a path must be a non-empty string")
    parts = tuple(p for p in path.replace(".", "/").split("/"))
    if not all(parts):
        raise MappingSpecError(f"{where}: malformed path {path!r}")
    return parts


def _path_getter(parts: tuple[str, ...], raw: bool = False) -> Getter:
    """A getter for a path below the node; ``raw`` keeps lists whole (for ``many``)."""
    finish = (lambda v: v) if raw else _leaf
    if len(parts) == 1:
        (a,) = parts
        if raw:
            return lambda node, meta: node.get(a)

        def get1(node: dict, meta: Any) -> Any:
            v = node.get(a)
            return None if v is None else _leaf(v)

        return get1
    if len(parts) == 2:
        a, b = parts

        def get2(node: dict, meta: Any) -> Any:
            v = node.get(a)
            if v is None:
                return None
            v = v.get(b) if v.__class__ is dict else _step(v, b)
            return None if v is None else finish(v)

        return get2

    def getn(node: dict, meta: Any) -> Any:
        v: Any = node
        for p in parts:
            v = _step(v, p)
            if v is None:
                return None
        return finish(v)

    return getn


# ---------------------------------------------------------------------------
# dates
# ---------------------------------------------------------------------------

_TOKENS = (("yyyy", "year", 4), ("MM", "month", 2), ("dd", "day", 2), ("HH", "hour", 2), ("mm", "minute", 2), ("ss", "second", 2))


@dataclass(frozen=True)
class _Format:
    """A fixed-width date pattern in the notation of the national documents (yyyyMMdd)."""

    text: str
    length: int
    slots: tuple[tuple[str, int, int], ...]
    literals: tuple[tuple[int, str], ...]

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for name, _, _ in self.slots)

    def match(self, s: str) -> dict[str, int] | None:
        """Numbers of the pattern's fields read from the start of ``s``, or None."""
        if len(s) < self.length or not s.isascii():
            return None
        for pos, ch in self.literals:
            if s[pos] != ch:
                return None
        out = {}
        for name, a, b in self.slots:
            part = s[a:b]
            if not part.isdigit():
                return None
            out[name] = int(part)
        return out


def _compile_format(text: Any, where: str) -> _Format:
    if not isinstance(text, str) or not text:
        raise MappingSpecError(f"{where}: a date format must be a non-empty string")
    slots, literals, i, pos, seen = [], [], 0, 0, set()
    while i < len(text):
        for token, name, width in _TOKENS:
            if text.startswith(token, i):
                if name in seen:
                    raise MappingSpecError(f"{where}: {token} appears twice in {text!r}")
                seen.add(name)
                slots.append((name, pos, pos + width))
                i += len(token)
                pos += width
                break
        else:
            if text[i] != "'":  # quotes only protect literals, as in yyyy-MM-dd'T'HH:mm:ss
                literals.append((pos, text[i]))
                pos += 1
            i += 1
    if "year" not in seen:
        raise MappingSpecError(f"{where}: date format {text!r} has no yyyy")
    return _Format(text, pos, tuple(slots), tuple(literals))


def _formats(value: Any, where: str) -> tuple[_Format, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise MappingSpecError(f"{where}: give at least one date format")
    return tuple(_compile_format(t, where) for t in items)


def _suffix(rest: str) -> tuple[str, str] | None:
    """What may follow the seconds: (fraction, offset) in ISO form, either may be ''."""
    frac = ""
    if rest.startswith("."):
        i = 1
        while i < len(rest) and rest[i].isdigit():
            i += 1
        if i == 1:
            return None
        frac, rest = rest[:i], rest[i:]
    if rest in ("", "Z"):
        return frac, rest
    if rest[0] in "+-":
        hhmm = rest[1:].replace(":", "")
        if len(hhmm) == 4 and hhmm.isdigit() and int(hhmm[:2]) <= 23 and int(hhmm[2:]) <= 59:
            return frac, f"{rest[0]}{hhmm[:2]}:{hhmm[2:]}"
    return None


def _date_converter(spec: dict, label: str, where: str) -> Callable[[Any], Any]:
    formats = _formats(spec["date"], where)
    take = spec.get("take")
    if take not in (None, "year"):
        raise MappingSpecError(f"{where}: with 'date', 'take' can only be 'year'")
    if take is None:
        for f in formats:
            if not {"year", "month", "day"} <= f.fields:
                raise MappingSpecError(f"{where}: {f.text!r} is not a full date; add take: year")
    expected = " or ".join(f.text for f in formats)

    def bad(v: Any) -> MappingError:
        # Never echo the value: it is personal data and errors end up in logs.
        got = f"{len(v)} characters" if isinstance(v, str) else type(v).__name__
        return MappingError(f"{label} is not a date in the format {expected} (got {got}).", field=label)

    def conv(v: Any) -> Any:
        if v.__class__ is str:
            for f in formats:
                if len(v) != f.length:
                    continue
                parts = f.match(v)
                if parts is None:
                    continue
                year = parts["year"]
                try:
                    d = _dt.date(year, parts.get("month", 1), parts.get("day", 1))
                except ValueError:
                    raise bad(v) from None
                return year if take == "year" else d.isoformat()
        raise bad(v)

    return conv


def _datetime_converter(spec: dict, label: str, where: str) -> Callable[[Any], Any]:
    formats = _formats(spec["datetime"], where)
    tz = spec.get("tz")
    parsed_tz = _suffix(tz) if isinstance(tz, str) else None
    if tz is not None and (parsed_tz is None or parsed_tz[0] or not parsed_tz[1]):
        raise MappingSpecError(f"{where}: tz must be an offset such as '+07:00' or 'Z'")
    default_offset = parsed_tz[1] if parsed_tz else ""
    expected = " or ".join(f.text for f in formats)

    def conv(v: Any) -> Any:
        if v.__class__ is str:
            for f in formats:
                parts = f.match(v)
                if parts is None:
                    continue
                suffix = _suffix(v[f.length:])
                if suffix is None:
                    continue
                try:
                    t = _dt.datetime(
                        parts["year"], parts.get("month", 1), parts.get("day", 1),
                        parts.get("hour", 0), parts.get("minute", 0), parts.get("second", 0),
                    )
                except ValueError:
                    break
                frac, offset = suffix
                # Without an offset the value is the source's local time, as configured.
                return t.isoformat() + frac + (offset or default_offset)
        got = f"{len(v)} characters" if isinstance(v, str) else type(v).__name__
        raise MappingError(f"{label} is not a timestamp in the format {expected} (got {got}).", field=label)

    return conv


# ---------------------------------------------------------------------------
# other converters
# ---------------------------------------------------------------------------

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def _decimal(v: str) -> int | float | None:
    """'-12', '3.50' -> a number; None for anything else (no exponents, separators, NaN)."""
    digits = v[1:] if v[:1] == "-" else v
    whole, dot, frac = digits.partition(".")
    if not (digits.isascii() and whole.isdigit() and (not dot or frac.isdigit())):
        return None
    return float(v) if dot else int(v)


def _type_converter(kind: Any, label: str, where: str) -> Callable[[Any], Any]:
    # JSON answers carry numbers and booleans as such, XML answers as text: accept both.
    if kind == "str":
        return lambda v: v if v.__class__ is str else None
    if kind == "int":
        def to_int(v: Any) -> int:
            if v.__class__ is int:
                return v
            if v.__class__ is str and v.isascii() and v.isdigit():
                return int(v)
            raise MappingError(f"{label} is not a whole number.", field=label)
        return to_int
    if kind == "number":
        def to_number(v: Any) -> int | float:
            if v.__class__ is int or v.__class__ is float:
                return v
            n = _decimal(v) if v.__class__ is str else None
            if n is None:
                raise MappingError(f"{label} is not a number.", field=label)
            return n
        return to_number
    if kind == "bool":
        def to_bool(v: Any) -> bool:
            if v.__class__ is bool:
                return v
            if v.__class__ is int and v in (0, 1):
                return v == 1
            if v.__class__ is str:
                low = v.lower()
                if low in _TRUE:
                    return True
                if low in _FALSE:
                    return False
            raise MappingError(f"{label} is neither true nor false.", field=label)
        return to_bool
    raise MappingSpecError(f"{where}: unknown type {kind!r} (str, int, number or bool)")


_KEEP = "keep"


def _codelist_converter(spec: dict, ctx: "_Context", label: str, where: str) -> Callable[[Any], Any]:
    name = spec["codelist"]
    source = spec.get("source", ctx.source)
    take = spec.get("take", "entry")
    if take not in ("entry", "code", "name"):
        raise MappingSpecError(f"{where}: with 'codelist', 'take' is entry, code or name")
    try:
        clist = codelists.get(name)
    except KeyError as exc:
        raise MappingSpecError(f"{where}: {exc.args[0]}") from None
    by_code = clist.by_code
    if source == "canonical":
        table: Mapping[str, str] = {c: c for c in by_code}
    elif source in clist.translations:
        table = clist.translations[source]
    else:
        raise MappingSpecError(f"{where}: code list {name!r} has no table for source {source!r}")
    on_unknown = spec.get("on_unknown", _KEEP)
    if on_unknown is not None and not isinstance(on_unknown, (str, int, bool)):
        raise MappingSpecError(f"{where}: on_unknown must be 'keep', null or a plain value")

    def unknown(v: str) -> Any:
        if on_unknown != _KEEP:
            return on_unknown
        # Codes the list does not know are kept as given, never dropped.
        return {"code": v, "name": None} if take == "entry" else v if take == "code" else None

    def conv(v: Any) -> Any:
        if v.__class__ is not str:
            raise MappingError(f"{label} is not a code.", field=label)
        c = table.get(v)
        if c is None and v.isascii() and v.isdigit():
            c = table.get(v.lstrip("0") or "0")
        if c is None:
            return unknown(v)
        if take == "code":
            return c
        entry = by_code[c]
        return entry["name"] if take == "name" else {"code": c, "name": entry["name"]}

    return conv


# ---------------------------------------------------------------------------
# compiler
# ---------------------------------------------------------------------------

_SOURCES = ("path", "join", "first", "object", "meta", "const", "admin_unit")
_KEYS = frozenset(_SOURCES) | {
    "template", "many", "date", "datetime", "tz", "type", "codelist", "source", "take",
    "on_unknown", "default", "required", "sep", "null_if_empty", "spread",
}
_PLAIN = (str, int, float, bool, type(None))


@dataclass
class _Context:
    source: str
    templates: Mapping[str, Any]
    origin: str
    stack: tuple[str, ...] = field(default_factory=tuple)


def _compile_field(spec: Any, ctx: _Context, prefix: str, where: str) -> Getter:
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict):
        raise MappingSpecError(f"{where}: a field is a path or a mapping, not {spec!r}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise MappingSpecError(f"{where}: unknown keys {sorted(unknown)}")
    sources = [k for k in _SOURCES if k in spec]
    if len(sources) > 1:
        raise MappingSpecError(f"{where}: give only one of {sources}")
    if not sources and "template" not in spec:
        raise MappingSpecError(f"{where}: give one of {list(_SOURCES)} or a template")
    kind = sources[0] if sources else None
    many = bool(spec.get("many"))
    label = prefix.rstrip("/")

    # 1. where the value comes from
    get: Getter
    if kind == "path":
        parts = _split(spec["path"], where)
        label = prefix + "/".join(parts)
        get = _path_getter(parts, raw=many)
    elif kind == "join":
        if not isinstance(spec["join"], list) or not spec["join"]:
            raise MappingSpecError(f"{where}: 'join' takes a list of paths")
        getters = tuple(_path_getter(_split(p, where)) for p in spec["join"])
        sep = spec.get("sep", " ")

        def get(node: dict, meta: Any) -> Any:
            parts = [v for g in getters if (v := g(node, meta)).__class__ is str]
            return sep.join(parts) if parts else None
    elif kind == "first":
        if not isinstance(spec["first"], list) or not spec["first"]:
            raise MappingSpecError(f"{where}: 'first' takes a list of fields")
        alternatives = tuple(
            _compile_field(s, ctx, prefix, f"{where}/first[{i}]") for i, s in enumerate(spec["first"])
        )

        def get(node: dict, meta: Any) -> Any:
            for g in alternatives:
                v = g(node, meta)
                if v is not None:
                    return v
            return None
    elif kind == "object":
        get = _compile_object(spec["object"], ctx, prefix, where, spec.get("null_if_empty", True))
    elif kind == "meta":
        attribute = spec["meta"]
        if not isinstance(attribute, str):
            raise MappingSpecError(f"{where}: 'meta' names one attribute")
        label = "@" + attribute

        def get(node: dict, meta: Any) -> Any:
            if not meta:
                return None
            v = meta.get(attribute)
            return None if v is None else _leaf(v)
    elif kind == "const":
        const = spec["const"]
        if not isinstance(const, _PLAIN):
            raise MappingSpecError(f"{where}: 'const' must be a plain value")
        get = lambda node, meta: const  # noqa: E731
    elif kind == "admin_unit":
        get = _compile_admin_unit(spec["admin_unit"], where)
    else:  # a template applied to the current node
        get = lambda node, meta: node  # noqa: E731

    # 2. a template applied to the value (one element, or each of a repeated one)
    if "template" in spec:
        tfn = _compile_template(spec["template"], ctx, label + "/" if kind else prefix, where)
        inner = get
        if many:
            def get(node: dict, meta: Any) -> Any:
                v = inner(node, meta)
                if v is None:
                    return []
                items = v if v.__class__ is list else [v]
                return [r for x in items if isinstance(x, dict) and (r := tfn(x, meta)) is not None]
        else:
            def get(node: dict, meta: Any) -> Any:
                v = inner(node, meta)
                if v.__class__ is list:
                    v = v[0] if v else None
                return tfn(v, meta) if v.__class__ is dict and v else None
    elif many:
        raise MappingSpecError(f"{where}: 'many' needs a template")

    # 3. conversion of a present value
    convs = [k for k in ("date", "datetime", "type", "codelist") if k in spec]
    if len(convs) > 1:
        raise MappingSpecError(f"{where}: give only one of {convs}")
    conv: Callable[[Any], Any] | None = None
    if convs == ["date"]:
        conv = _date_converter(spec, label, where)
    elif convs == ["datetime"]:
        conv = _datetime_converter(spec, label, where)
    elif convs == ["type"]:
        conv = _type_converter(spec["type"], label, where)
    elif convs == ["codelist"]:
        conv = _codelist_converter(spec, ctx, label, where)
    for option, needs in (("tz", "datetime"), ("source", "codelist"), ("on_unknown", "codelist"), ("sep", "join")):
        if option in spec and needs not in spec:
            raise MappingSpecError(f"{where}: {option!r} only goes with {needs!r}")
    if "take" in spec and not {"date", "codelist"} & set(spec):
        raise MappingSpecError(f"{where}: 'take' only goes with 'date' or 'codelist'")

    # 4. absent values: default, or an error when required
    default = spec.get("default")
    if not isinstance(default, _PLAIN):
        raise MappingSpecError(f"{where}: 'default' must be a plain value")
    required = bool(spec.get("required"))
    if conv is None and default is None and not required:
        return get
    base = get

    def value(node: dict, meta: Any) -> Any:
        v = base(node, meta)
        if v is not None and conv is not None:
            v = conv(v)
        if v is None:
            if required:
                raise MappingError(f"{label} is missing.", field=label)
            return default
        return v

    return value


def _compile_object(fields: Any, ctx: _Context, prefix: str, where: str, null_if_empty: bool) -> Getter:
    if not isinstance(fields, dict) or not fields:
        raise MappingSpecError(f"{where}: 'fields' must be a non-empty mapping")
    entries = []
    for key, spec in fields.items():
        if not isinstance(key, str):
            raise MappingSpecError(f"{where}: field name {key!r} must be a string")
        spread = isinstance(spec, dict) and bool(spec.get("spread"))
        entries.append((key, _compile_field(spec, ctx, prefix, f"{where}/{key}"), spread))

    if not any(spread for _, _, spread in entries):
        items = tuple((k, f) for k, f, _ in entries)
        if not null_if_empty:
            return lambda node, meta: {k: f(node, meta) for k, f in items}

        def obj(node: dict, meta: Any) -> Any:
            out = {k: f(node, meta) for k, f in items}
            for v in out.values():
                if v is not None:
                    return out
            return None

        return obj

    steps = tuple(entries)

    def obj_spread(node: dict, meta: Any) -> Any:
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


def _compile_template(name: Any, ctx: _Context, prefix: str, where: str) -> Getter:
    if not isinstance(name, str) or name not in ctx.templates:
        raise MappingSpecError(f"{where}: unknown template {name!r}")
    if name in ctx.stack:
        raise MappingSpecError(f"{where}: template {name!r} refers to itself")
    fields = _template_fields(name, ctx, where)
    spec = ctx.templates[name]
    inner = _Context(ctx.source, ctx.templates, ctx.origin, ctx.stack + (name,))
    # Compiled per use so that error messages name the full national path.
    return _compile_object(fields, inner, prefix, f"templates/{name}", spec.get("null_if_empty", True))


def _template_fields(name: str, ctx: _Context, where: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
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


def _compile_admin_unit(spec: Any, where: str) -> Getter:
    if not isinstance(spec, dict) or set(spec) - {"province", "district", "commune"} or "province" not in spec:
        raise MappingSpecError(f"{where}: 'admin_unit' maps province, district and commune to paths")
    province = _path_getter(_split(spec["province"], where))
    district = _path_getter(_split(spec["district"], where)) if "district" in spec else (lambda n, m: None)
    commune = _path_getter(_split(spec["commune"], where)) if "commune" in spec else (lambda n, m: None)
    current_unit = codelists.admin_units().current_unit

    def get(node: dict, meta: Any) -> Any:
        p, c, legacy = current_unit(province(node, meta), district(node, meta), commune(node, meta))
        return {"province": p, "commune": c, "legacy": legacy}

    return get


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
        return fn(data, meta)


def compile_mapping(document: Mapping[str, Any], origin: str = "<mapping>") -> CompiledMapping:
    """Compile a parsed mapping document (see docs/mapping.md)."""
    if not isinstance(document, dict):
        raise MappingSpecError(f"{origin}: expected a mapping")
    unknown = set(document) - {"name", "version", "source", "description", "templates", "operations"}
    if unknown:
        raise MappingSpecError(f"{origin}: unknown keys {sorted(unknown)}")
    for key in ("name", "source"):
        if not isinstance(document.get(key), str):
            raise MappingSpecError(f"{origin}: {key!r} is required")
    templates = document.get("templates") or {}
    operations = document.get("operations")
    if not isinstance(templates, dict) or not isinstance(operations, dict) or not operations:
        raise MappingSpecError(f"{origin}: 'templates' and 'operations' must be mappings")
    ctx = _Context(document["source"], templates, origin)
    ops: dict[str, tuple[str, Getter]] = {}
    for op, spec in operations.items():
        where = f"{origin}: operations/{op}"
        if not isinstance(spec, dict) or set(spec) - {"input", "fields", "description"}:
            raise MappingSpecError(f"{where}: expected 'input' and 'fields'")
        element = spec.get("input") or op
        ops[op] = (element, _compile_object(spec.get("fields"), ctx, f"{element}/", where, null_if_empty=False))
    return CompiledMapping(
        name=document["name"],
        version=str(document.get("version", "0")),
        source=document["source"],
        origin=origin,
        _ops=ops,
    )


@functools.cache
def _load(path: str) -> CompiledMapping:
    with open(path, "rb") as fh:
        document = yaml.load(fh, Loader=_Loader)
    return compile_mapping(document, origin=path)


@functools.lru_cache(maxsize=256)
def load_mapping(path: str | os.PathLike[str]) -> CompiledMapping:
    """Load and compile a mapping file; cached by the path given and by its resolved path
    (the first cache keeps filesystem look-ups off the hot path)."""
    return _load(str(Path(path).resolve()))
