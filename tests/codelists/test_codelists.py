"""Code lists: data files load, translate per source system, and stay consistent."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lgsp import codelists
from lgsp.personal_id import PROVINCE_CODES

DATA = Path(codelists.__file__).parent / "data"
FLAT = ["blood-types", "ethnic-groups", "gender", "marital-status", "religions", "vital-status", "request-status"]


def test_names_lists_every_data_file():
    assert codelists.names() == sorted(p.stem for p in DATA.iterdir() if p.suffix in (".yaml", ".json"))
    assert set(FLAT) | {"admin-units"} <= set(codelists.names())


@pytest.mark.parametrize("name", FLAT)
def test_flat_lists_are_well_formed(name):
    clist = codelists.get(name)
    assert clist.name == name and clist.version and clist.source
    assert [e["code"] for e in clist.entries] == list(clist.by_code)
    assert all(isinstance(e["name"], str) and e["name"] for e in clist.entries)
    assert "population-db" in clist.translations
    for table in clist.translations.values():
        assert set(table.values()) <= set(clist.by_code)


def test_lists_are_cached_and_read_only():
    assert codelists.get("gender") is codelists.get("gender")
    assert codelists.admin_units() is codelists.admin_units()
    entry = codelists.translate("gender", "population-db", "1")
    with pytest.raises(TypeError):
        entry["name"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        codelists.get("gender").translations["population-db"]["9"] = "male"  # type: ignore[index]


@pytest.mark.parametrize(
    "source, code, expected",
    [
        ("population-db", "1", "male"),
        ("population-db", "2", "female"),
        ("social-insurance", "1", "male"),
        ("social-insurance", "2", "female"),
        ("social-insurance", "3", "other"),
        ("criminal-records", "1", "male"),
        ("criminal-records", "0", "female"),
    ],
)
def test_gender_per_source(source, code, expected):
    assert codelists.translate("gender", source, code)["code"] == expected


def test_gender_entry_shape():
    assert dict(codelists.translate("gender", "population-db", "1")) == {"code": "male", "name": "Nam"}
    assert codelists.translate("gender", "population-db", "0") is None  # 0 means female only in criminal records
    assert codelists.translate("gender", "criminal-records", "2") is None


def test_unknown_list_or_source():
    with pytest.raises(KeyError):
        codelists.get("no-such-list")
    with pytest.raises(KeyError):
        codelists.translate("gender", "no-such-system", "1")
    with pytest.raises(KeyError, match="admin_units"):
        codelists.get("admin-units")


def test_ethnic_groups_two_numberings():
    clist = codelists.get("ethnic-groups")
    assert [e["code"] for e in clist.entries] == [f"{i:02d}" for i in range(1, 55)]
    assert len({e["name"] for e in clist.entries}) == 54
    head = {"01": "Kinh", "02": "Tày", "03": "Thái", "04": "Mường", "05": "Khmer", "06": "Hoa", "07": "Nùng", "08": "Mông"}
    assert {c: clist.by_code[c]["name"] for c in head} == head
    # population-db 1..54 is a one-to-one renumbering of the same 54 groups
    table = clist.translations["population-db"]
    assert sorted(table[str(i)] for i in range(1, 55)) == sorted(clist.by_code)
    t = lambda code: codelists.translate("ethnic-groups", "population-db", code)["name"]  # noqa: E731
    assert [t(str(i)) for i in range(1, 10)] == ["Kinh", "Tày", "Thái", "Hoa", "Khmer", "Mường", "Nùng", "Mông", "Dao"]
    assert t("04") == "Hoa"  # leading zeros are ignored: 04 is population-db 4, not canonical 04
    assert codelists.translate("ethnic-groups", "population-db", "55") is None


def test_religions():
    t = lambda code: codelists.translate("religions", "population-db", code)  # noqa: E731
    assert {c: t(c)["name"] for c in "012345"} == {
        "0": "Không", "1": "Phật giáo", "2": "Công giáo", "3": "Phật giáo Hòa Hảo", "4": "Hồi giáo", "5": "Cao Đài",
    }
    assert dict(t("8"))["code"] == "08" and t("8")["name"] == "Tin lành"
    assert t("00")["code"] == "00"
    assert t("99") is None


def test_marital_status_and_blood_types():
    clist = codelists.get("marital-status")
    assert [e["code"] for e in clist.entries] == ["single", "married", "divorced", "widowed", "unknown"]
    assert clist.translation_info["population-db"]["status"] == "configurable"
    assert [e["code"] for e in codelists.get("blood-types").entries] == ["O", "A", "B", "AB"]
    assert codelists.translate("blood-types", "population-db", "AB")["code"] == "AB"


def test_reverse_table_for_simulators():
    rev = codelists.get("ethnic-groups").reverse("population-db")
    assert rev["06"] == "4" and rev["04"] == "6"
    assert codelists.get("gender").reverse("criminal-records") == {"male": "1", "female": "0"}


def test_data_files_quote_every_code():
    # An unquoted 01 would silently become the number 1.
    for path in DATA.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\bcode: \d", text), path.name


def test_malformed_file_is_refused(tmp_path, monkeypatch):
    bad = {"name": "gender", "version": "1", "source": "x", "entries": [{"code": 1, "name": "Nam"}]}
    (tmp_path / "gender.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    monkeypatch.setenv("LGSP_CODELISTS_DIR", str(tmp_path))
    codelists._data_dirs.cache_clear()
    try:
        with pytest.raises(codelists.CodeListError, match="quoted"):
            codelists._build_codelist(codelists._read("gender"))
    finally:
        monkeypatch.delenv("LGSP_CODELISTS_DIR")
        codelists._data_dirs.cache_clear()


# --------------------------------------------------------------------------
# administrative units
# --------------------------------------------------------------------------

MERGED = {  # current province -> the legacy provinces it was formed from (2025)
    "08": {"08", "02"}, "15": {"10", "15"}, "19": {"19", "06"}, "25": {"25", "26", "17"}, "24": {"24", "27"},
    "33": {"33", "34"}, "31": {"31", "30"}, "37": {"37", "35", "36"}, "44": {"44", "45"}, "48": {"48", "49"},
    "51": {"51", "62"}, "52": {"52", "64"}, "56": {"56", "58"}, "68": {"68", "67", "60"}, "66": {"66", "54"},
    "79": {"79", "74", "77"}, "75": {"75", "70"}, "80": {"72", "80"}, "92": {"92", "94", "93"},
    "86": {"86", "83", "84"}, "82": {"87", "82"}, "96": {"96", "95"}, "91": {"89", "91"},
}
UNCHANGED = {"01", "46", "12", "11", "14", "20", "22", "38", "40", "42", "04"}


def test_provinces_old_and_current():
    au = codelists.admin_units()
    assert len(au.provinces_legacy) == 63 and set(au.provinces_legacy) == PROVINCE_CODES
    assert len(au.provinces_current) == 34
    assert set(au.provinces_current) == UNCHANGED | set(MERGED)
    groups: dict[str, set[str]] = {}
    for code, (_, current) in au.provinces_legacy.items():
        groups.setdefault(current, set()).add(code)
    assert groups == {**MERGED, **{c: {c} for c in UNCHANGED}}


def test_unit_codes_have_their_shape():
    au = codelists.admin_units()
    for table, width in (
        (au.provinces_current, 2), (au.provinces_legacy, 2), (au.districts_legacy, 3),
        (au.communes_legacy, 5), (au.communes_current, 5),
    ):
        assert all(len(c) == width and c.isdigit() for c in table)


def test_the_whole_country_is_listed():
    """Built from the PyPI packages (lgsp/codelists/build_admin_units.py), not a sample."""
    au = codelists.admin_units()
    assert len(au.communes_current) == 3321 and len(au.provinces_legacy) == 63
    assert len(au.districts_legacy) > 690 and len(au.communes_legacy) > 10_000
    assert "vietnam-provinces" in au.source and "vietnamadminunits" in au.source
    targets = [v[3] for v in au.communes_legacy.values()]
    assert len(targets) > 2 * len(set(targets))  # several old communes became one
    # current communes of merged provinces belong to the new province
    for code, (_, _, p, current) in au.communes_legacy.items():
        assert au.communes_current[current][1] == au.provinces_legacy[p][1]


def test_split_communes_name_every_part():
    au = codelists.admin_units()
    assert len(au.communes_split) > 100
    for code, parts in au.communes_split.items():
        assert len(parts) >= 2 and au.communes_legacy[code][3] in parts
        assert {au.communes_current[p][1] for p in parts} == {au.communes_current[au.communes_legacy[code][3]][1]}


def test_codes_are_never_reused_for_another_place_but_for_the_listed_exceptions():
    au = codelists.admin_units()
    doc = codelists.load_file(DATA / "admin-units.json")
    reused = {code for code in au.communes_current if code in au.communes_legacy and au.communes_legacy[code][3] != code}
    assert reused == set(doc["code_reuse_exceptions"]) and len(reused) <= 20


def test_broken_admin_units_are_refused():
    doc = codelists.load_file(DATA / "admin-units.json")
    doc["communes_current"].append({"code": "00001", "name": "Phường Khác", "province": "01"})
    with pytest.raises(codelists.CodeListError, match="reuses the code"):
        codelists._build_admin_units(doc)


@pytest.mark.parametrize(
    "args, province, commune, legacy",
    [
        # pre-2025 address in a merged province: province and commune translated
        (("77", "747", "26508"), ("79", "Thành phố Hồ Chí Minh"), ("26506", "Phường Vũng Tàu"), ("77", "747", "26508")),
        # old commune code without a district is still recognised as old (Phúc Xá is now part of Hồng Hà)
        (("01", None, "00001"), ("01", "Thành phố Hà Nội"), ("00097", "Phường Hồng Hà"), ("01", None, "00001")),
        # a legacy-only province code marks the address as old even for a code that is also current
        (("49", None, "20401"), ("48", "Thành phố Đà Nẵng"), ("20401", "Phường Hội An Tây"), ("49", None, "20401")),
        # current codes: no legacy
        (("48", None, "20401"), ("48", "Thành phố Đà Nẵng"), ("20401", "Phường Hội An Tây"), None),
        ((None, None, "26740"), ("79", "Thành phố Hồ Chí Minh"), ("26740", "Phường Sài Gòn"), None),
        # unknown commune in an old province: province translated, commune kept
        (("02", "026", "00698"), ("08", "Tỉnh Tuyên Quang"), ("00698", None), ("02", "026", "00698")),
        # unknown commune in a current province
        (("48", None, "20999"), ("48", "Thành phố Đà Nẵng"), ("20999", None), None),
        # unknown everything: kept as given
        (("99", None, "12345"), ("99", None), ("12345", None), None),
        (("99", "999", None), ("99", None), None, ("99", "999", None)),
        (("01", None, None), ("01", "Thành phố Hà Nội"), None, None),
        ((None, None, None), None, None, None),
    ],
)
def test_current_unit(args, province, commune, legacy):
    p, c, lg = codelists.admin_units().current_unit(*args)
    assert p == (None if province is None else {"code": province[0], "name": province[1]})
    assert c == (None if commune is None else {"code": commune[0], "name": commune[1]})
    assert lg == (None if legacy is None else dict(zip(("province_code", "district_code", "commune_code"), legacy)))
