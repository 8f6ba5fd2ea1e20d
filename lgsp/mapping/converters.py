"""Converters of a present value, chosen by a field's key (`date`, `datetime`, `type`, `codelist`):
each is built once from the field's spec, then applied to every answer."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from lgsp import codelists
from lgsp.mapping.errors import MappingError, MappingSpecError

if TYPE_CHECKING:
    from lgsp.mapping.sources import Context

Converter = Callable[[Any], Any]

_TOKENS = (("yyyy", "year", 4), ("MM", "month", 2), ("dd", "day", 2),
           ("HH", "hour", 2), ("mm", "minute", 2), ("ss", "second", 2))


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


def date_converter(spec: dict[str, Any], ctx: Context, label: str, where: str) -> Converter:
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


def _named_zone(tz: Any) -> _dt.tzinfo | None:
    """A time zone named like Asia/Ho_Chi_Minh, or None."""
    import zoneinfo

    if not isinstance(tz, str) or "/" not in tz:
        return None
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def datetime_converter(spec: dict[str, Any], ctx: Context, label: str, where: str) -> Converter:
    formats = _formats(spec["datetime"], where)
    tz = spec.get("tz")
    parsed_tz = _suffix(tz) if isinstance(tz, str) else None
    zone = _named_zone(tz) if tz is not None and parsed_tz is None else None
    if tz is not None and zone is None and (parsed_tz is None or parsed_tz[0] or not parsed_tz[1]):
        raise MappingSpecError(f"{where}: tz must be an offset such as '+07:00' or 'Z', or a zone "
                               f"such as Asia/Ho_Chi_Minh")
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
                if not offset and zone is not None:  # the zone's offset at that moment
                    offset = t.replace(tzinfo=zone).isoformat()[19:]
                # Without an offset the value is the source's local time, as configured.
                return t.isoformat() + frac + (offset or default_offset)
        got = f"{len(v)} characters" if isinstance(v, str) else type(v).__name__
        raise MappingError(f"{label} is not a timestamp in the format {expected} (got {got}).", field=label)

    return conv


_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def _decimal(v: str) -> int | float | None:
    """'-12', '3.50' -> a number; None for anything else (no exponents, separators, NaN)."""
    digits = v[1:] if v[:1] == "-" else v
    whole, dot, frac = digits.partition(".")
    if not (digits.isascii() and whole.isdigit() and (not dot or frac.isdigit())):
        return None
    return float(v) if dot else int(v)


# JSON answers carry numbers and booleans as such, XML answers as text: each type accepts both.
def _to_str(label: str) -> Converter:
    return lambda v: v if v.__class__ is str else None


def _to_int(label: str) -> Converter:
    def to_int(v: Any) -> int:
        if v.__class__ is int:
            return v
        if v.__class__ is str and v.isascii() and v.isdigit():
            return int(v)
        raise MappingError(f"{label} is not a whole number.", field=label)
    return to_int


def _to_number(label: str) -> Converter:
    def to_number(v: Any) -> int | float:
        if v.__class__ is int or v.__class__ is float:
            return v
        n = _decimal(v) if v.__class__ is str else None
        if n is None:
            raise MappingError(f"{label} is not a number.", field=label)
        return n
    return to_number


def _to_bool(label: str) -> Converter:
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


_TYPES: dict[str, Callable[[str], Converter]] = {"str": _to_str, "int": _to_int, "number": _to_number, "bool": _to_bool}


def type_converter(spec: dict[str, Any], ctx: Context, label: str, where: str) -> Converter:
    kind = spec["type"]
    make = _TYPES.get(kind) if isinstance(kind, str) else None
    if make is None:
        raise MappingSpecError(f"{where}: unknown type {kind!r} (str, int, number or bool)")
    return make(label)


_KEEP = "keep"


def codelist_converter(spec: dict[str, Any], ctx: Context, label: str, where: str) -> Converter:
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


# A field's converter key → what builds its converter (a field has at most one).
CONVERTERS: dict[str, Callable[[dict[str, Any], Context, str, str], Converter]] = {
    "date": date_converter,
    "datetime": datetime_converter,
    "type": type_converter,
    "codelist": codelist_converter,
}
