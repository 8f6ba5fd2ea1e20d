"""Build lgsp/codelists/data/admin-units.json from the maintained PyPI packages.

    python -m lgsp.codelists.build_admin_units            # rewrite the data file
    python -m lgsp.codelists.build_admin_units --check    # exit 1 if the file is not what the packages give

Sources (their versions go into the file's `source` and `version`):

- ``vietnam-provinces``: the current official list (34 provinces, 3,321 communes since
  1 July 2025) with the statistics office's codes: ``provinces_current``, ``communes_current``.
- ``vietnamadminunits``: the pre-2025 list with codes (63 provinces, districts, communes) and
  its old → new conversion tables, keyed by name: ``provinces_legacy``, ``districts_legacy``,
  ``communes_legacy``; an old commune split across several new ones gets ``split`` (every new
  commune with a part of it) besides ``current`` (the package's default successor).

The two packages' current lists are cross-checked by tests/codelists/test_admin_units_sources.py;
disagreements are listed in docs/admin-units.md. The packages are needed only to rebuild
(the `build` extra); the gateway reads the committed file.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import sqlite3
import sys
import unicodedata
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "data" / "admin-units.json"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "admin-units.md"
CURRENT_PKG, LEGACY_PKG = "vietnam-provinces", "vietnamadminunits"


def _package_dir(module: str) -> Path:
    """Where a package's files are, without importing it (vietnamadminunits loads ~12 MB at import)."""
    spec = find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{module} is not installed: pip install -e '.[build]'")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class Sources:
    current: list[dict[str, Any]]              # vietnam-provinces nested divisions
    legacy_rows: list[dict[str, Any]]          # vietnamadminunits admin_units_legacy
    new_rows: list[dict[str, Any]]             # vietnamadminunits admin_units (its own current list)
    converter: dict[str, Any]                  # vietnamadminunits converter_2025.json
    versions: dict[str, str]


def load_sources() -> Sources:
    current = json.loads((_package_dir("vietnam_provinces") / "data" / "nested-divisions.json").read_text("utf-8"))
    data = _package_dir("vietnamadminunits") / "data"
    with sqlite3.connect(f"file:{data / 'dataset.db'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        legacy = [dict(r) for r in db.execute(
            "SELECT provinceCode, province, provinceKey, districtCode, district, districtKey, "
            "wardCode, ward, wardKey FROM admin_units_legacy")]
        new = [dict(r) for r in db.execute("SELECT provinceCode, province, provinceKey, wardCode, ward, wardKey "
                                           "FROM admin_units")]
    converter = json.loads((data / "converter_2025.json").read_text("utf-8"))
    versions = {p: importlib.metadata.version(p) for p in (CURRENT_PKG, LEGACY_PKG)}
    return Sources(current, legacy, new, converter, versions)


def _p(code: Any) -> str:
    return f"{int(code):02d}"


def _c(code: Any) -> str:
    return f"{int(code):05d}"


def current_lists(src: Sources) -> tuple[list[dict], list[dict]]:
    provinces, communes = [], []
    for p in sorted(src.current, key=lambda p: int(p["code"])):
        provinces.append({"code": _p(p["code"]), "name": _full_province_name(p)})
        for w in sorted(p["wards"], key=lambda w: int(w["code"])):
            communes.append({"code": _c(w["code"]), "name": w["name"], "province": _p(p["code"])})
    return provinces, communes


def _full_province_name(p: dict[str, Any]) -> str:
    # vietnam-provinces writes "Cao Bằng" for a tỉnh and "Thành phố Hà Nội" for a city.
    name = p["name"]
    return name if name.startswith(("Thành phố", "Tỉnh")) else f"Tỉnh {name}"


def plain(name: str) -> str:
    """A unit name without diacritics, case or extra spaces ("Xã  Hiệp Hoà" == "Xã Hiệp Hòa")."""
    decomposed = unicodedata.normalize("NFD", name.replace("Đ", "D").replace("đ", "d").replace("\u2019", "'"))
    text = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    return " ".join(text.replace("\u2013", " ").replace("-", " ").split())


@dataclass(frozen=True)
class Disagreement:
    code: str              # the code one of the sources gives
    province: str
    current_list: str      # what vietnam-provinces says of it ("" when it has no such code)
    conversion_list: str   # what vietnamadminunits says of it
    resolved: str          # the vietnam-provinces code used for the conversion's commune, or ""


def resolve_current(src: Sources) -> tuple[dict[tuple[str, str], str], list[Disagreement]]:
    """vietnamadminunits' current communes -> vietnam-provinces codes, and where the two lists disagree.

    vietnam-provinces is the reference for current codes. A commune of the conversion tables
    keeps its code when vietnam-provinces gives that code the same name; otherwise it is found
    by name in the same province (both lists spell some names differently: tone-mark placement,
    double spaces), and the disagreement is reported.
    """
    _, communes = current_lists(src)
    by_code = {c["code"]: c for c in communes}
    by_name: dict[tuple[str, str], list[str]] = {}
    for c in communes:
        by_name.setdefault((c["province"], plain(c["name"])), []).append(c["code"])
    resolved, disagreements = {}, []
    for r in src.new_rows:
        code, province, name = _c(r["wardCode"]), _p(r["provinceCode"]), r["ward"]
        same = by_code.get(code)
        if same is not None and plain(same["name"]) == plain(name) and same["province"] == province:
            resolved[(r["provinceKey"], r["wardKey"])] = code
            if same["name"] != name:
                disagreements.append(Disagreement(code, province, same["name"], name, code))
            continue
        named = by_name.get((province, plain(name)), [])
        found = named[0] if len(named) == 1 else ""
        if found:
            resolved[(r["provinceKey"], r["wardKey"])] = found
        disagreements.append(Disagreement(code, province, same["name"] if same else "", name, found))
    return resolved, disagreements


def legacy_lists(src: Sources, current_codes: set[str]) -> tuple[list[dict], list[dict], list[dict], list[str]]:
    """provinces_legacy, districts_legacy, communes_legacy, and what could not be mapped."""
    new_by_key, _ = resolve_current(src)
    new_province_of_key = {r["provinceKey"]: _p(r["provinceCode"]) for r in src.new_rows}
    old_to_new_province = {old: new for new, olds in src.converter["DICT_PROVINCE"].items() for old in olds}
    undivided: dict[str, str] = {}
    for new_pkey, wards in src.converter["DICT_PROVINCE_WARD_NO_DIVIDED"].items():
        for new_wkey, old_keys in wards.items():
            for old_key in old_keys:
                undivided[old_key] = new_by_key.get((new_pkey, new_wkey), "")
    divided: dict[str, list[tuple[str, bool]]] = {}
    for new_pkey, olds in src.converter["DICT_PROVINCE_WARD_DIVIDED"].items():
        for old_key, parts in olds.items():
            divided[old_key] = [(new_by_key.get((new_pkey, w["newWardKey"]), ""), bool(w["isDefaultNewWard"]))
                                for w in parts]

    provinces: dict[str, dict] = {}
    districts: dict[str, dict] = {}
    communes: list[dict] = []
    unmapped: list[str] = []
    for r in sorted(src.legacy_rows, key=lambda r: (r["wardCode"] or "", r["districtCode"])):
        pcode = _p(r["provinceCode"])
        new_pkey = old_to_new_province.get(r["provinceKey"])
        if pcode not in provinces:
            provinces[pcode] = {"code": pcode, "name": r["province"], "current": new_province_of_key.get(new_pkey, "")}
        dcode = f"{int(r['districtCode']):03d}"
        districts.setdefault(dcode, {"code": dcode, "name": r["district"], "province": pcode})
        if not r["wardCode"]:
            continue  # a district without communes (island districts)
        key = f"{r['provinceKey']}_{r['districtKey']}_{r['wardKey']}"
        row = {"code": _c(r["wardCode"]), "name": r["ward"], "district": dcode, "province": pcode}
        if key in undivided and undivided[key] in current_codes:
            row["current"] = undivided[key]
        elif key in divided:
            parts = [code for code, _ in divided[key] if code in current_codes]
            default = next((code for code, is_default in divided[key] if is_default and code in current_codes), None)
            if not parts or default is None:
                unmapped.append(f"{row['code']} {row['name']} ({r['district']}, {r['province']})")
                continue
            # A new commune that kept the old one's code continues it: prefer it to the default.
            row["current"] = row["code"] if row["code"] in parts else default
            if len(parts) > 1:
                row["split"] = sorted(set(parts))
        else:
            unmapped.append(f"{row['code']} {row['name']} ({r['district']}, {r['province']})")
            continue
        communes.append(row)
    return (sorted(provinces.values(), key=lambda p: p["code"]), sorted(districts.values(), key=lambda d: d["code"]),
            communes, unmapped)


def build(src: Sources) -> tuple[dict[str, Any], list[str]]:
    provinces_current, communes_current = current_lists(src)
    provinces_legacy, districts_legacy, communes_legacy, unmapped = legacy_lists(
        src, {c["code"] for c in communes_current})
    current_codes = {c["code"] for c in communes_current}
    reused = sorted(c["code"] for c in communes_legacy if c["code"] in current_codes and c["current"] != c["code"])
    v = src.versions
    doc = {
        "name": "admin-units",
        "version": f"{CURRENT_PKG} {v[CURRENT_PKG]}; {LEGACY_PKG} {v[LEGACY_PKG]}",
        "source": (f"Generated by `python -m lgsp.codelists.build_admin_units` from the PyPI packages "
                   f"{CURRENT_PKG} {v[CURRENT_PKG]} (current units: Decision 19/2025/QĐ-TTg, statistics office "
                   f"codes) and {LEGACY_PKG} {v[LEGACY_PKG]} (pre-2025 units, Decision 124/2004/QĐ-TTg codes, "
                   f"and the old-to-new conversion). Do not edit by hand: rebuild."),
        "note": (f"{len(provinces_current)} current provinces, {len(communes_current)} current communes; "
                 f"{len(provinces_legacy)} old provinces, {len(districts_legacy)} old districts, "
                 f"{len(communes_legacy)} old communes. An old commune split across several new ones carries "
                 f"`split` (every new commune holding a part of it) and `current` (the successor the source "
                 f"names by default). {len(unmapped)} old communes have no successor in the sources and are "
                 f"left out. The {len(reused)} codes of code_reuse_exceptions are old communes whose "
                 f"code a different current commune carries, by the sources (docs/admin-units.md): "
                 f"with a district such a code is read as old, without one as current."),
        "code_reuse_exceptions": reused,
        "provinces_current": provinces_current,
        "provinces_legacy": provinces_legacy,
        "districts_legacy": districts_legacy,
        "communes_legacy": communes_legacy,
        "communes_current": communes_current,
    }
    return doc, unmapped


def render(doc: dict[str, Any]) -> str:
    """JSON, one unit per line: a worker reads it with orjson (the same data as YAML peaked at
    60 MiB per worker under libyaml), and a diff of a rebuild still reads unit by unit."""
    lines = ["{"]
    for i, (key, value) in enumerate(doc.items()):
        end = "," if i < len(doc) - 1 else ""
        if isinstance(value, list) and value:
            rows = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in value)
            lines.append(f"{json.dumps(key)}: [\n{rows}\n]{end}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{end}")
    return "\n".join(lines) + "\n}\n"


DOC_HEAD = """# Administrative units: where the list comes from

`lgsp/codelists/data/admin-units.json` is generated, not written by hand:

    pip install -e '.[build]'
    python -m lgsp.codelists.build_admin_units          # rewrites the JSON and this page
    python -m lgsp.codelists.build_admin_units --check  # CI: is the committed file what the packages give?

- **Current units** (since 1 July 2025: 34 provinces, 3,321 communes, no districts) come from the
  PyPI package `vietnam-provinces`, which follows the statistics office's list and codes.
- **Old units** (63 provinces, districts, communes, Decision 124/2004/QĐ-TTg codes) and the
  **old → new conversion** come from `vietnamadminunits`. Its conversion tables name units by
  their (diacritic-free) names; the builder joins them to codes.
- An old commune split across several new ones keeps `current` (the successor the package
  names by default, or the new commune that kept its code) and lists every part in `split`.
  `GET /api/codelists/v1/admin-units/translate` then answers `split: [{{code, name}}, ...]`
  beside `commune`, so a caller knows the address must be placed by its street.

The versions used are in the YAML's `version` and `source`. tests/codelists/test_admin_units_sources.py
rebuilds the list from the installed packages, compares it with the committed file, and
cross-checks the two packages' current lists.

## Disagreements between the two sources

`vietnamadminunits` carries its own copy of the current list. Where it disagrees with
`vietnam-provinces` (the reference for current codes), the builder matches the commune by name
within its province (ignoring diacritics, case, spacing and dash or apostrophe style) and uses
the `vietnam-provinces` code. {count} communes disagree ({renamed} only in spelling, {recoded}
by code):

| code in vietnamadminunits | province | name there | vietnam-provinces: name of that code | code used |
| --- | --- | --- | --- | --- |
"""

DOC_REUSE = """
## Codes that a different commune carries now

The project's rule "a current code equal to an old one continues that old commune" does not
hold for these old communes by the sources (most are the recoded communes above). With a
district the code is read as the old commune, without one as the current commune:
{codes}.
"""


def render_docs(src: Sources, doc: dict[str, Any]) -> str:
    _, disagreements = resolve_current(src)
    recoded = [d for d in disagreements if d.code != d.resolved]
    rows = "".join(f"| {d.code} | {d.province} | {d.conversion_list} | {d.current_list or '(no such code)'} "
                   f"| {d.resolved or '(not found)'} |\n" for d in sorted(disagreements, key=lambda d: d.code))
    head = DOC_HEAD.format(count=len(disagreements), renamed=len(disagreements) - len(recoded), recoded=len(recoded))
    reuse = ", ".join(doc["code_reuse_exceptions"]) or "none"
    return head + rows + DOC_REUSE.format(codes=reuse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed file")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    src = load_sources()
    doc, unmapped = build(src)
    text, docs = render(doc), render_docs(src, doc)
    if args.check:
        stale = [str(p) for p, t in ((args.output, text), (DOCS, docs)) if not p.is_file() or p.read_text("utf-8") != t]
        print(f"differs from what the packages give, rebuild: {', '.join(stale)}" if stale else "up to date")
        return 1 if stale else 0
    args.output.write_text(text, "utf-8")
    DOCS.write_text(docs, "utf-8")
    print(f"wrote {args.output}: {doc['note']}")
    for line in unmapped:
        print(f"  no successor: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
