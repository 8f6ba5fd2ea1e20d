"""Code lists (danh mục): versioned YAML data files, loaded once, read-only.

Each file names its source(s) and carries the canonical entries plus one
translation table per source system, because the same concept is numbered
differently by different national systems (gender is 1/2 in the population
database but 1/0 in criminal records). The mapping engine binds the tables it
needs when a mapping file is compiled; :func:`translate` is the same lookup for
everyone else.

Files live in ``lgsp/codelists/data``. A directory named by the environment
variable ``LGSP_CODELISTS_DIR`` is searched first, so an integrator can drop in
the official lists (e.g. the full administrative units) without touching the
package. Everything is cached for the life of the process.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import orjson
import yaml

__all__ = [
    "AdminUnits",
    "CodeList",
    "CodeListError",
    "admin_units",
    "get",
    "names",
    "translate",
]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DATA_DIR = Path(__file__).resolve().parent / "data"
ADMIN_UNITS = "admin-units"


class CodeListError(ValueError):
    """A code-list data file is missing or malformed."""


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------

@functools.cache
def _data_dirs() -> tuple[Path, ...]:
    extra = os.environ.get("LGSP_CODELISTS_DIR")
    return (Path(extra), DATA_DIR) if extra else (DATA_DIR,)


# Hand-written lists are YAML; the generated administrative units are JSON (read with orjson:
# libyaml on the same 1.2 MB of data peaked at 60 MiB more per worker).
SUFFIXES = (".json", ".yaml")


def file_of(name: str) -> Path:
    """The file a code list is read from (LGSP_CODELISTS_DIR first, then the shipped data)."""
    for directory in _data_dirs():
        for suffix in SUFFIXES:
            path = directory / f"{name}{suffix}"
            if path.is_file():
                return path
    raise KeyError(f"no code list named {name!r}")


def load_file(path: Path) -> Any:
    """A code-list file's document, JSON or YAML by its suffix."""
    with path.open("rb") as fh:
        return orjson.loads(fh.read()) if path.suffix == ".json" else yaml.load(fh, Loader=_Loader)


def _read(name: str) -> dict[str, Any]:
    path = file_of(name)
    doc = load_file(path)
    if not isinstance(doc, dict) or doc.get("name") != name:
        raise CodeListError(f"{path}: expected a mapping whose name is {name!r}")
    for key in ("version", "source"):
        if not isinstance(doc.get(key), str):
            raise CodeListError(f"{path}: {key!r} must be a quoted string")
    return doc


@functools.cache
def names() -> list[str]:
    """Names of the available code lists (including ``admin-units``)."""
    found = {p.stem for d in _data_dirs() if d.is_dir() for p in d.iterdir() if p.suffix in SUFFIXES}
    return sorted(found)


# ---------------------------------------------------------------------------
# flat code lists
# ---------------------------------------------------------------------------

def _code(value: Any, where: str) -> str:
    # Unquoted YAML codes turn into numbers (01 -> 1) and lose their form, so
    # every code in a data file has to be a quoted string.
    if not isinstance(value, str) or not value:
        raise CodeListError(f"{where}: code {value!r} must be a non-empty quoted string")
    return value


def _digits_key(code: str) -> str | None:
    """The leading-zero-free form of an all-digit code (\"01\" and \"1\" are one code)."""
    if code.isascii() and code.isdigit():
        return code.lstrip("0") or "0"
    return None


@dataclass(frozen=True, slots=True)
class CodeList:
    """One code list: canonical entries and per-source translation tables."""

    name: str
    version: str
    source: str
    note: str | None
    #: Canonical entries in file order, each read-only with at least code and name.
    entries: tuple[Mapping[str, Any], ...]
    by_code: Mapping[str, Mapping[str, Any]]
    #: source system -> {source code -> canonical code}. Includes the
    #: leading-zero-free form of all-digit source codes.
    translations: Mapping[str, Mapping[str, str]]
    #: source system -> {"status": observed|official|configurable, "note": ...}
    translation_info: Mapping[str, Mapping[str, Any]]

    def entry(self, code: str) -> Mapping[str, Any] | None:
        """The canonical entry for a canonical code, or None."""
        return self.by_code.get(code)

    def translate(self, source: str, code: str) -> Mapping[str, Any] | None:
        """The canonical entry for ``code`` as numbered by ``source``, or None if unknown."""
        try:
            table = self.translations[source]
        except KeyError:
            raise KeyError(f"code list {self.name!r} has no table for source {source!r}") from None
        canonical = table.get(code)
        if canonical is None and isinstance(code, str):
            key = _digits_key(code.strip())
            canonical = table.get(key) if key is not None else None
        return None if canonical is None else self.by_code[canonical]

    def reverse(self, source: str) -> Mapping[str, str]:
        """canonical code -> the source's code for it (first listed); for simulators."""
        out: dict[str, str] = {}
        for src_code, canonical in self.translations[source].items():
            out.setdefault(canonical, src_code)
        return MappingProxyType(out)


def _build_codelist(doc: dict[str, Any]) -> CodeList:
    name = doc["name"]
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise CodeListError(f"{name}: 'entries' must be a non-empty list")
    entries = []
    by_code: dict[str, Mapping[str, Any]] = {}
    for item in raw_entries:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise CodeListError(f"{name}: every entry needs a code and a name: {item!r}")
        code = _code(item.get("code"), name)
        if code in by_code:
            raise CodeListError(f"{name}: code {code!r} is listed twice")
        entry = MappingProxyType(dict(item))
        entries.append(entry)
        by_code[code] = entry

    translations: dict[str, Mapping[str, str]] = {}
    info: dict[str, Mapping[str, Any]] = {}
    for source, table in (doc.get("translations") or {}).items():
        where = f"{name}/translations/{source}"
        if not isinstance(table, dict) or not isinstance(table.get("codes"), dict):
            raise CodeListError(f"{where}: expected a mapping with 'codes'")
        codes: dict[str, str] = {}
        aliases: dict[str, str] = {}
        for src, canonical in table["codes"].items():
            src = _code(src, where)
            canonical = _code(canonical, where)
            if canonical not in by_code:
                raise CodeListError(f"{where}: {src!r} maps to unknown code {canonical!r}")
            codes[src] = canonical
            key = _digits_key(src)
            if key is not None and key != src:
                aliases[key] = canonical
        for key, canonical in aliases.items():
            if codes.setdefault(key, canonical) != canonical:
                raise CodeListError(f"{where}: {key!r} is ambiguous once leading zeros are ignored")
        translations[source] = MappingProxyType(codes)
        info[source] = MappingProxyType({k: v for k, v in table.items() if k != "codes"})

    return CodeList(
        name=name,
        version=doc["version"],
        source=doc["source"],
        note=doc.get("note"),
        entries=tuple(entries),
        by_code=MappingProxyType(by_code),
        translations=MappingProxyType(translations),
        translation_info=MappingProxyType(info),
    )


@functools.cache
def get(name: str) -> CodeList:
    """The code list ``name`` (parsed once). Administrative units: see :func:`admin_units`."""
    if name == ADMIN_UNITS:
        raise KeyError("admin-units is not a flat code list; use codelists.admin_units()")
    return _build_codelist(_read(name))


def translate(name: str, source: str, code: str) -> Mapping[str, Any] | None:
    """Canonical entry of code list ``name`` for ``code`` as numbered by ``source``, or None."""
    return get(name).translate(source, code)


# ---------------------------------------------------------------------------
# administrative units
# ---------------------------------------------------------------------------

_SHAPES = {"province": re.compile(r"\d{2}"), "district": re.compile(r"\d{3}"), "commune": re.compile(r"\d{5}")}


@dataclass(frozen=True, slots=True)
class AdminUnits:
    """Provinces and communes before and after the 1 July 2025 reorganisation.

    Tables map a code to a tuple, kept flat because :meth:`current_unit` runs
    for every address of every answer.
    """

    name: str
    version: str
    source: str
    note: str | None
    provinces_current: Mapping[str, str]  # code -> name
    provinces_legacy: Mapping[str, tuple[str, str]]  # code -> (name, current province)
    districts_legacy: Mapping[str, tuple[str, str]]  # code -> (name, province)
    communes_legacy: Mapping[str, tuple[str, str, str, str]]  # code -> (name, district, province, current commune)
    communes_current: Mapping[str, tuple[str, str]]  # code -> (name, province)
    # Old communes split across several current ones -> every current commune holding a part.
    communes_split: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def split_of(self, commune_code: str | None, district_code: str | None = None) -> list[dict[str, Any]] | None:
        """The current communes an old commune was split into (None when it was not split).

        `current_unit` names one successor (the one the sources give by default); an address in
        an old commune that was split may lie in any of these, so a caller must check the street.
        A current code given without a district is not an old commune: no split.
        """
        parts = self.communes_split.get(commune_code or "")
        if not parts or (not district_code and commune_code in self.communes_current):
            return None
        return [{"code": c, "name": self.communes_current[c][0]} for c in parts]

    def current_unit(
        self,
        province_code: str | None,
        district_code: str | None = None,
        commune_code: str | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
        """Translate an address's unit codes to current units.

        Returns ``(province, commune, legacy)``: ``{code, name}`` of the current
        province and commune (``name`` None for a code we do not know, None when
        no code was given) and ``{province_code, district_code, commune_code}``
        as given when the address carried pre-2025 codes, else None.

        The codes are pre-2025 when a district is given, when the province code
        exists only in the old list, or when the commune code is an old one and
        not a current one (a current commune may keep the code of an old commune
        merged into it; without a district such a code is read as current).
        Unknown codes are kept, never dropped.
        """
        pc = self.provinces_current
        legacy_form = bool(district_code) or (
            province_code is not None and province_code not in pc and province_code in self.provinces_legacy
        )
        if commune_code:
            if not legacy_form:
                hit = self.communes_current.get(commune_code)
                if hit is not None:
                    # Commune codes are national, so the commune decides the province.
                    return {"code": hit[1], "name": pc[hit[1]]}, {"code": commune_code, "name": hit[0]}, None
            old = self.communes_legacy.get(commune_code)
            if old is not None:
                cur_name, cur_province = self.communes_current[old[3]]
                return (
                    {"code": cur_province, "name": pc[cur_province]},
                    {"code": old[3], "name": cur_name},
                    {"province_code": province_code, "district_code": district_code, "commune_code": commune_code},
                )
            if legacy_form:
                hit = self.communes_current.get(commune_code)
                if hit is not None:  # a current code next to a district: trust the commune
                    return (
                        {"code": hit[1], "name": pc[hit[1]]},
                        {"code": commune_code, "name": hit[0]},
                        {"province_code": province_code, "district_code": district_code, "commune_code": commune_code},
                    )
        commune = {"code": commune_code, "name": None} if commune_code else None
        legacy = (
            {"province_code": province_code, "district_code": district_code, "commune_code": commune_code}
            if legacy_form
            else None
        )
        if province_code is None:
            return None, commune, legacy
        if not legacy_form and province_code in pc:
            return {"code": province_code, "name": pc[province_code]}, commune, None
        old_province = self.provinces_legacy.get(province_code)
        if old_province is not None:
            current = old_province[1]
            return {"code": current, "name": pc[current]}, commune, legacy
        return {"code": province_code, "name": None}, commune, legacy


def _rows(doc: dict[str, Any], key: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
    rows = doc.get(key) or []
    if not isinstance(rows, list):
        raise CodeListError(f"admin-units: {key!r} must be a list")
    for row in rows:
        if not isinstance(row, dict):
            raise CodeListError(f"admin-units/{key}: {row!r} is not a mapping")
        for f in fields:
            _code(row.get(f), f"admin-units/{key}/{row.get('code')}/{f}")
    return rows


def _build_admin_units(doc: dict[str, Any]) -> AdminUnits:
    pc_rows = _rows(doc, "provinces_current", ("code", "name"))
    pl_rows = _rows(doc, "provinces_legacy", ("code", "name", "current"))
    d_rows = _rows(doc, "districts_legacy", ("code", "name", "province"))
    cl_rows = _rows(doc, "communes_legacy", ("code", "name", "district", "province", "current"))
    cc_rows = _rows(doc, "communes_current", ("code", "name", "province"))

    def table(rows: list[dict[str, str]], key: str, shape: str, value: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for row in rows:
            code = row["code"]
            if not _SHAPES[shape].fullmatch(code):
                raise CodeListError(f"admin-units/{key}: {code!r} is not a {shape} code")
            if code in out:
                raise CodeListError(f"admin-units/{key}: {code!r} is listed twice")
            out[code] = row["name"] if value == ("name",) else tuple(row[v] for v in value)
        return out

    pc = table(pc_rows, "provinces_current", "province", ("name",))
    pl = table(pl_rows, "provinces_legacy", "province", ("name", "current"))
    dl = table(d_rows, "districts_legacy", "district", ("name", "province"))
    cl = table(cl_rows, "communes_legacy", "commune", ("name", "district", "province", "current"))
    cc = table(cc_rows, "communes_current", "commune", ("name", "province"))

    # Referential checks: a broken file must fail at start-up, not on a request.
    problems = []
    problems += [f"legacy province {c} -> unknown current province {v[1]}" for c, v in pl.items() if v[1] not in pc]
    problems += [f"district {c} -> unknown legacy province {v[1]}" for c, v in dl.items() if v[1] not in pl]
    for c, (_, d, p, cur) in cl.items():
        if d not in dl or dl[d][1] != p:
            problems.append(f"legacy commune {c}: district {d} is not in province {p}")
        if cur not in cc:
            problems.append(f"legacy commune {c} -> unknown current commune {cur}")
        elif p in pl and cc[cur][1] != pl[p][1]:
            problems.append(f"legacy commune {c}: current commune {cur} is not in province {pl[p][1]}")
    problems += [f"current commune {c} -> unknown province {v[1]}" for c, v in cc.items() if v[1] not in pc]
    # Codes are never reused: a current code equal to an old one must continue that old commune.
    # `code_reuse_exceptions` lists where the sources themselves say otherwise (see the file's note).
    excepted = {_code(c, "admin-units/code_reuse_exceptions") for c in doc.get("code_reuse_exceptions") or ()}
    problems += [
        f"current commune {c} reuses the code of old commune {c}, which became {cl[c][3]}"
        for c in cc
        if c in cl and cl[c][3] != c and c not in excepted
    ]
    split: dict[str, tuple[str, ...]] = {}
    for row in cl_rows:
        parts = row.get("split")
        if parts is None:
            continue
        if not isinstance(parts, list) or row["current"] not in parts:
            problems.append(f"legacy commune {row['code']}: split must list its current commune")
            continue
        problems += [f"legacy commune {row['code']}: split names unknown commune {p}" for p in parts if p not in cc]
        split[row["code"]] = tuple(parts)
    if problems:
        raise CodeListError("admin-units: " + "; ".join(problems))

    return AdminUnits(
        name=doc["name"],
        version=doc["version"],
        source=doc["source"],
        note=doc.get("note"),
        provinces_current=MappingProxyType(pc),
        provinces_legacy=MappingProxyType(pl),
        districts_legacy=MappingProxyType(dl),
        communes_legacy=MappingProxyType(cl),
        communes_current=MappingProxyType(cc),
        communes_split=MappingProxyType(split),
    )


@functools.cache
def admin_units() -> AdminUnits:
    """Administrative units (parsed and checked once)."""
    return _build_admin_units(_read(ADMIN_UNITS))
