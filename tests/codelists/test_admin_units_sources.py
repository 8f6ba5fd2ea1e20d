"""The administrative-units code list is the whole country, built from the PyPI packages:
the committed file is what they give, the two sources are cross-checked, and every old unit
translates (with every part named where an old commune was split)."""
from __future__ import annotations

import uuid

import httpx
import pytest
from helpers import get_token, wait_for_config

from lgsp import codelists
from lgsp.codelists import build_admin_units as builder


@pytest.fixture(scope="module")
def sources() -> builder.Sources:
    return builder.load_sources()


def test_committed_file_and_docs_are_what_the_packages_give(capsys):
    assert builder.main(["--check"]) == 0, capsys.readouterr().out


def test_metadata_names_the_packages_and_their_versions(sources):
    au = codelists.admin_units()
    for package, version in sources.versions.items():
        assert f"{package} {version}" in au.version and f"{package} {version}" in au.source


def test_the_two_sources_agree_on_the_provinces_and_the_count_of_communes(sources):
    provinces, communes = builder.current_lists(sources)
    other_provinces = {builder._p(r["provinceCode"]) for r in sources.new_rows}
    assert {p["code"] for p in provinces} == other_provinces and len(provinces) == 34
    assert len(communes) == len({r["wardCode"] for r in sources.new_rows}) == 3321


def test_every_disagreement_is_resolved_by_name_and_documented(sources):
    resolved, disagreements = builder.resolve_current(sources)
    assert len(resolved) == len(sources.new_rows)  # every commune of the conversion found in the reference list
    assert all(d.resolved for d in disagreements)
    assert 0 < len(disagreements) < 200  # a handful, not a different list
    doc = builder.DOCS.read_text("utf-8")
    for d in disagreements:
        assert f"| {d.code} | {d.province} | {d.conversion_list} |" in doc


def test_every_old_unit_translates_to_a_current_one():
    au = codelists.admin_units()
    for code, (_, district, province, _) in au.communes_legacy.items():
        p, c, legacy = au.current_unit(province, district, code)
        assert p["name"] and c["name"] and legacy["commune_code"] == code, code
    for code, (_, province) in au.districts_legacy.items():
        p, _, legacy = au.current_unit(province, code)
        assert p["name"] and legacy["district_code"] == code
    for code in au.provinces_legacy:
        assert au.current_unit(code, "000")[0]["name"]


def test_a_split_commune_names_every_part():
    au = codelists.admin_units()
    code = "00073"  # Phường Cửa Nam (Hoàn Kiếm): now spread over four wards
    parts = au.split_of(code, "002")
    assert {p["code"] for p in parts} == set(au.communes_split[code]) and len(parts) == 4
    assert au.current_unit("01", "002", code)[1]["code"] in {p["code"] for p in parts}
    assert au.split_of(code) is None  # without a district 00073 is the current Phường Cửa Nam
    assert au.split_of("00082", "002") is None  # Trần Hưng Đạo went whole into one ward


@pytest.fixture(scope="module")
def token(gateway):
    admin = gateway.extra["admin"]
    cid = f"units-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Land registry", "000.00.41.H30")
    admin.add_grant(cid, "codelists.admin_unit.translate", ["province", "commune", "legacy", "split"],
                    ["reference-data"])
    wait_for_config(gateway.url, gateway.extra["engine"])
    return get_token(gateway, cid, secret)


def translate(gateway, token, **params) -> dict:
    r = httpx.get(f"{gateway.url}/api/codelists/v1/admin-units/translate", params=params,
                  headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_translate_api_says_where_an_old_commune_was_split(gateway, token):
    split = translate(gateway, token, province="01", district="002", commune="00073")
    assert split["legacy"]["commune_code"] == "00073"
    assert [p["code"] for p in split["split"]] == ["00004", "00070", "00073", "00196"]
    whole = translate(gateway, token, province="77", district="747", commune="26508")
    assert whole["commune"] == {"code": "26506", "name": "Phường Vũng Tàu"} and "split" not in whole
