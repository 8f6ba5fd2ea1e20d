"""The business registration adapter, its simulator, its mapping and the shared API
`GET /api/business/v1/enterprises/{enterprise_code}`.

Unit tests first (data, mapping, validation, the adapter's reading of answers),
then the adapter against the simulator on a loopback socket, then the whole
pipeline through the shared gateway.
"""
from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
import time
import unicodedata
import uuid
from typing import Iterator

import httpx
import pytest
import yaml
from helpers import (
    BUSINESS_TOKEN_TTL,
    FIXTURES,
    ROOT,
    assert_problem,
    audit_of,
    business_settings,
    get_token,
    serve_in_thread,
    wait_for_config,
)

from lgsp import specs
from lgsp.adapter import (
    CallContext,
    RecordNotFound,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from lgsp.errors import ERRORS, ExchangeError
from lgsp.mapping.compile import MappingError, compile_mapping, load_mapping
from lgsp.personal_id import parse as parse_id
from lgsp.pipeline.validate import check_enterprise_code
from lgsp_adapters.business import BusinessAdapter
from lgsp_adapters.business.simulator import API_BASE, FIXED_CODES, create_app, generate
from lgsp_adapters.business.simulator.app import main_information
from lgsp_adapters.business.simulator.data import VSIC, check_digit, load_units

MAPPING = ROOT / "adapters" / "business" / "mapping.yaml"
PURPOSE = "business-check"
FIELDS = ["enterprise_code", "name", "legal_form", "founding_date", "status", "head_office",
          "business_activities", "members.full_name", "members.legal_representative"]
MALFORMED = ["12345", "010123456X", "01012345650", "0101234565-1", "0101234565-0011", "0101234565_001",
             "0101234565-001-002", "０１０１２３４５６５"]


# ---------------------------------------------------------------------------------------
# simulator data
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset():
    return generate()


def test_dataset_is_deterministic_and_seeded(dataset):
    again = generate()
    assert [(e.code, e.name) for e in again.enterprises] == [(e.code, e.name) for e in dataset.enterprises]
    other = generate(seed=2)
    assert [e.code for e in other.enterprises][:7] == list(FIXED_CODES.values())  # fixed whatever the seed
    assert [e.code for e in other.enterprises][7:] != [e.code for e in dataset.enterprises][7:]


def test_codes_names_and_people_are_consistent(dataset):
    es = dataset.enterprises
    assert len(es) == 300 and len(dataset.by_code) == 300
    assert len({e.name for e in es}) == len(es)  # names are unique nationally
    ids = [m.id_number for e in es for m in e.members if m.id_number]
    assert len(ids) == len(set(ids)) > 400
    for e in es:
        base, _, branch = e.code.partition("-")
        assert re.fullmatch(r"[0-9]{10}", base) and check_digit(base[:9]) == int(base[9])
        if branch:
            assert e.parent == base and e.code in dataset.find(base).branches and e.capital is None
            assert e.founding_date >= dataset.find(base).founding_date
        else:
            assert e.parent is None and e.capital and e.capital % 100_000_000 == 0
        assert sum(a.main for a in e.activities) == 1
        assert all(VSIC[a.code] == a.name and len(a.code) in (4, 5) for a in e.activities)
        reps = [m for m in e.members if m.legal_representative]
        assert e.legal_names == ", ".join(m.full_name for m in reps)
        assert reps or e.parent  # a branch has a head, not a legal representative
        for m in e.members:
            assert m.full_name == m.full_name.upper()
            if m.id_number:
                assert parse_id(m.id_number).birth_year <= e.founding_date.year - 18
        # Head offices registered since the 2025 reorganisation carry current codes.
        assert e.legacy_codes == (e.founding_date.isoformat() < "2025-07-01")
        assert (e.head_office.district is None) == (not e.legacy_codes)
    forms = {e.legal_form for e in es}
    assert len(forms) == 5 and sum(e.parent is not None for e in es) >= 20
    assert {e.status for e in es} == {"1", "2", "3", "4", "5", "6"}


def test_head_offices_come_from_the_admin_units_file(dataset):
    units = {u.code: u for group in load_units().values() for u in group}
    current = {u.current: u for u in units.values()}
    for e in dataset.enterprises:
        ho = e.head_office
        if ho.district:
            u = units[ho.ward]
            assert (ho.city, ho.district) == (u.province, u.district)
            assert u.name in ho.full_text and u.province_name in ho.full_text
        else:
            assert current[ho.ward].current_province == ho.city


def test_list_command_prints_the_fixed_enterprises_first():
    out = subprocess.run([sys.executable, "-m", "lgsp_adapters.business.simulator", "--list", "5"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split("\t")[0] for line in out] == list(FIXED_CODES.values())[:5]
    assert out[0].split("\t")[1] == "CÔNG TY TNHH THƯƠNG MẠI VÀ DỊCH VỤ AN PHÁT"


# ---------------------------------------------------------------------------------------
# mapping
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def m():
    return load_mapping(MAPPING)


def fixture(case: str) -> tuple[dict, dict]:
    given = json.loads((FIXTURES / f"business_enterprise_{case}.input.json").read_text(encoding="utf-8"))
    expected = json.loads((FIXTURES / f"business_enterprise_{case}.expected.json").read_text(encoding="utf-8"))
    return given["Data"]["MainInformation"], expected


@pytest.mark.parametrize("case", ["legacy", "current", "branch"])
def test_enterprise_fixtures(m, case):
    national, expected = fixture(case)
    out = m.apply("enterprise.get", national)
    assert out == expected
    json.dumps(out)


def test_fixture_expectations(m):
    """What the fixtures pin down, said in words."""
    legacy, _ = fixture("legacy")
    out = m.apply("enterprise.get", legacy)
    assert out["founding_date"] == "2012-03-15" and out["charter_capital"] == 5_000_000_000
    assert out["status"] == {"code": "active", "name": "Đang hoạt động"}
    assert out["head_office"]["legacy"] == {"province_code": "01", "district_code": "001", "commune_code": "00001"}
    assert out["head_office"]["province"]["code"] == "01" and out["head_office"]["commune"]["name"]
    assert [a["code"] for a in out["business_activities"] if a["main"]] == ["4690"]
    assert out["members"][0] == {"full_name": "NGUYỄN VĂN AN", "role": "Thành viên góp vốn", "position": "Giám đốc",
                                 "legal_representative": True, "personal_id": "001085012345"}
    current, _ = fixture("current")
    assert m.apply("enterprise.get", current)["head_office"]["legacy"] is None


def test_every_simulated_enterprise_maps(m, dataset):
    for e in dataset.enterprises:
        out = m.apply("enterprise.get", json.loads(json.dumps(main_information(e))))
        assert out["enterprise_code"] == e.code and out["head_office"]["province"]["name"]


def test_text_numbers_flags_and_blanks_as_other_sources_send_them(m):
    national, _ = fixture("legacy")
    odd = copy.deepcopy(national)
    odd["CAPITAL_AMOUNT"] = "5000000000"
    odd["NAME"] = unicodedata.normalize("NFD", "  " + national["NAME"] + " ")
    odd["SHORT_NAME"] = None
    odd["ENTERPRISE_STATUS"] = "01"
    odd["BusinessActivity"] = [{"CODE": "4690", "NAME": "Bán buôn tổng hợp", "IS_MAIN": True},
                               {"CODE": "4632", "NAME": "Bán buôn thực phẩm", "IS_MAIN": "0"}, {}]
    odd["Member"] = {"FULL_NAME": "NGUYỄN VĂN AN", "IS_LEGAL_REPRESENTATIVE": "true", "ID_NUMBER": ""}
    out = m.apply("enterprise.get", odd)
    assert out["charter_capital"] == 5_000_000_000 and out["name"] == national["NAME"]
    assert out["short_name"] is None and out["status"]["code"] == "active"
    assert [a["main"] for a in out["business_activities"]] == [True, False]
    assert out["members"] == [{"full_name": "NGUYỄN VĂN AN", "role": None, "position": None,
                               "legal_representative": True, "personal_id": None}]


def test_unknown_status_is_kept_and_absent_parts_are_null(m):
    out = m.apply("enterprise.get", {"ENTERPRISE_GDT_CODE": "0101234565", "ENTERPRISE_STATUS": "9"})
    assert out["status"] == {"code": "9", "name": None}
    assert out["head_office"] is None and out["business_activities"] == [] and out["members"] == []
    assert out["founding_date"] is None and out["charter_capital"] is None


@pytest.mark.parametrize("field, value, message", [
    ("FOUNDING_DATE", "2012-03-15", "MainInformation/FOUNDING_DATE is not a date in the format dd/MM/yyyy"),
    ("FOUNDING_DATE", "31/02/2012", "not a date"),
    ("CAPITAL_AMOUNT", "5.000.000.000", "MainInformation/CAPITAL_AMOUNT is not a number"),
    ("CAPITAL_AMOUNT", True, "not a number"),
    ("ENTERPRISE_GDT_CODE", "", "MainInformation/ENTERPRISE_GDT_CODE is missing"),
])
def test_malformed_answers(m, field, value, message):
    national, _ = fixture("legacy")
    with pytest.raises(MappingError, match=message):
        m.apply("enterprise.get", dict(national, **{field: value}))


def test_flag_that_is_not_boolean_is_malformed(m):
    national, _ = fixture("legacy")
    bad = dict(national, BusinessActivity=[{"CODE": "4690", "IS_MAIN": 2}])
    with pytest.raises(MappingError, match="BusinessActivity/IS_MAIN is neither true nor false"):
        m.apply("enterprise.get", bad)


# -- the engine's JSON types (lgsp/mapping/compile.py) ---------------------------------------------

def _one(spec: dict):
    cm = compile_mapping({"name": "t", "source": "business-registry", "operations": {"op": {"fields": {"v": spec}}}})
    return lambda value: cm.apply("op", {"A": value})["v"]


@pytest.mark.parametrize("value, expected", [
    (12, 12), (-3, -3), (2.5, 2.5), ("12", 12), ("-12", -12), ("3.50", 3.5), ("0", 0), (None, None), ("", None),
])
def test_number_type(value, expected):
    got = _one({"path": "A", "type": "number"})(value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value", ["1e5", "1,5", "5.000.000", "-", ".5", "5.", "nan", "inf", "١٢", False, {"x": 1}])
def test_number_type_refuses(value):
    with pytest.raises(MappingError, match="is not a number"):
        _one({"path": "A", "type": "number"})(value)


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False), ("1", True), ("false", False), ("TRUE", True),
])
def test_bool_type_takes_json_values(value, expected):
    assert _one({"path": "A", "type": "bool"})(value) is expected


@pytest.mark.parametrize("value", [2, -1, 1.0, "yes"])
def test_bool_type_refuses(value):
    with pytest.raises(MappingError, match="neither true nor false"):
        _one({"path": "A", "type": "bool"})(value)


def test_int_type_takes_json_integers_but_not_booleans_or_floats():
    conv = _one({"path": "A", "type": "int"})
    assert conv(7) == 7 and conv("7") == 7
    for bad in (True, 7.0, "7.0"):
        with pytest.raises(MappingError, match="not a whole number"):
            conv(bad)


# ---------------------------------------------------------------------------------------
# validation and error table
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["0101234565", "0101234565-001", "0000000000", None])
def test_well_formed_enterprise_codes_pass(code):
    check_enterprise_code(code)


@pytest.mark.parametrize("code", [*MALFORMED, "", 101234565, "0101234565\n"])
def test_malformed_enterprise_codes_are_refused(code):
    with pytest.raises(ExchangeError) as info:
        check_enterprise_code(code)
    assert info.value.code == "enterprise_code.malformed" and info.value.status == 400


def test_error_code_is_documented():
    assert ERRORS["enterprise_code.malformed"].status == 400
    assert "`enterprise_code.malformed` | 400" in (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------

def test_spec_declares_the_service():
    api = next(a for a in specs.shared_apis() if a.name == "business")
    assert api.base_path == "/api/business/v1"
    assert api.services == {"business.enterprise.get": {
        "version": "v1", "connection": "business", "operation": "enterprise.get", "personal_data": True,
        "name": "business.enterprise.get"}}
    doc = yaml.safe_load(api.path.read_text(encoding="utf-8"))
    param = doc["components"]["parameters"]["EnterpriseCode"]
    # The document states the shape the gateway checks (a refusal still says enterprise_code.malformed).
    from lgsp.pipeline.validate import _ENTERPRISE_CODE

    assert param["schema"] == {"type": "string", "pattern": f"^{_ENTERPRISE_CODE.pattern}$"}
    canonical = set(load_mapping(MAPPING).apply("enterprise.get", fixture("legacy")[0]))
    assert canonical == set(doc["components"]["schemas"]["Enterprise"]["properties"])


def test_docs_list_every_canonical_field(m):
    text = (ROOT / "docs" / "business.md").read_text(encoding="utf-8")
    for name in m.apply("enterprise.get", fixture("legacy")[0]):
        assert f"`{name}`" in text


# ---------------------------------------------------------------------------------------
# the adapter reading answers (no network)
# ---------------------------------------------------------------------------------------

def _adapter(**settings) -> BusinessAdapter:
    return BusinessAdapter({"endpoint": "http://127.0.0.1:9/apiCSDLDKDN/1.0", "token_url": "http://127.0.0.1:9/token",
                            "client_id": "c", "client_secret": "s", **settings})


def _answer(status: int, body: object) -> dict:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _adapter()._main_information(status, content, {})


def test_found():
    assert _answer(200, {"Status": 1, "Message": "Thành công",
                         "Data": {"MainInformation": {"ENTERPRISE_GDT_CODE": "0101234565"}}}) == {
        "ENTERPRISE_GDT_CODE": "0101234565"}


@pytest.mark.parametrize("status, body, error", [
    (200, {"Status": 0, "Message": "Không tìm thấy thông tin doanh nghiệp", "Data": None}, RecordNotFound),
    (404, {"Status": 0, "Message": "Doanh nghiệp KHÔNG TỒN TẠI"}, RecordNotFound),
    (200, {"Status": 0, "Message": "Hệ thống đang bận"}, UpstreamFault),  # never a false 404
    (200, {"Status": "0"}, UpstreamFault),
    (400, {"Status": 0, "Message": "Mã số doanh nghiệp không hợp lệ"}, UpstreamFault),
    (500, {"Status": 0, "Message": "Lỗi hệ thống"}, UpstreamFault),
    (503, b"<html>503 Service Temporarily Unavailable</html>", UpstreamUnavailable),
    (404, b"Not Found", UpstreamUnavailable),
    (200, b'{"Status": 1, "Message": "Th', UpstreamMalformed),
    (200, b"<html></html>", UpstreamMalformed),
    (200, {"Status": 1, "Data": None}, UpstreamMalformed),
    (200, {"Status": 1, "Data": {"MainInformation": []}}, UpstreamMalformed),
    (200, [1, 2], UpstreamMalformed),
])
def test_answers_become_clear_errors(status, body, error):
    with pytest.raises(error):
        _answer(status, body)


def test_not_found_phrases_are_a_setting():
    a = _adapter(not_found_messages=["no such enterprise"])
    with pytest.raises(RecordNotFound):
        a._main_information(200, b'{"Status": 0, "Message": "No such enterprise"}', {})
    with pytest.raises(UpstreamFault):
        a._main_information(200, "{\"Status\": 0, \"Message\": \"Không tìm thấy\"}".encode(), {})


@pytest.mark.parametrize("status, body, error", [
    (401, {"error": "invalid_client"}, UpstreamFault),
    (400, {"error": "unsupported_grant_type"}, UpstreamFault),
    (500, b"oops", UpstreamUnavailable),
    (200, {"token_type": "Bearer"}, UpstreamMalformed),
    (200, {"access_token": "t", "expires_in": 0}, UpstreamMalformed),
    (200, {"access_token": "t", "expires_in": "60"}, UpstreamMalformed),
    (200, b"not json", UpstreamMalformed),
])
def test_token_answers_become_clear_errors(status, body, error):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(error):
        BusinessAdapter._token_from(status, content, {})


def test_token_is_renewed_a_little_before_it_expires():
    token = BusinessAdapter._token_from(200, b'{"access_token": "t", "expires_in": 3600}', {})
    assert token.fresh and 3560 < token.renew_at - time.monotonic() <= 3570
    short = BusinessAdapter._token_from(200, b'{"access_token": "t", "expires_in": 2}', {})
    assert 1.7 < short.renew_at - time.monotonic() <= 1.8


def test_settings_schema_and_operations():
    from lgsp import plugins

    assert plugins.adapter_class("business") is BusinessAdapter
    plugins.validate_settings("business", {"endpoint": "https://x/apiCSDLDKDN/1.0", "token_url": "https://x/token",
                                           "client_id": "a", "client_secret": "b"})
    with pytest.raises(plugins.InvalidSettings, match="client_secret"):
        plugins.validate_settings("business", {"endpoint": "https://x", "token_url": "https://x/token",
                                               "client_id": "a"})
    assert BusinessAdapter.settings_schema["properties"]["client_secret"]["writeOnly"] is True
    assert set(BusinessAdapter.operations) == {"enterprise.get"}
    assert load_mapping(BusinessAdapter.mapping_file).operations == ("enterprise.get",)


# ---------------------------------------------------------------------------------------
# simulator and adapter over a loopback socket (in-process server)
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[str, object]]:
    app = create_app(300, 1, clients={"lgsp-unit": "unit-secret"})
    with serve_in_thread(app) as url:
        yield url, app.state.simulator


@pytest.fixture
def state(sim):
    """The simulator's state, reset around each test."""
    s = sim[1]
    s.faults.configure("normal")
    s.tokens.ttl = 3600.0
    s.tokens.revoke_all()
    yield s
    s.faults.configure("normal")
    s.tokens.ttl = 3600.0


def _token(base: str, **kw) -> httpx.Response:
    return httpx.post(f"{base}/token", **kw)


def test_sim_token_endpoint(sim, state):
    base = sim[0]
    r = _token(base, data={"grant_type": "client_credentials"}, auth=("lgsp-unit", "unit-secret"))
    assert r.status_code == 200 and r.json()["token_type"] == "Bearer" and r.json()["expires_in"] == 3600
    r = _token(base, data={"grant_type": "client_credentials", "client_id": "lgsp-unit",
                           "client_secret": "unit-secret"})
    assert r.status_code == 200  # client_secret_post works too
    assert _token(base, data={"grant_type": "client_credentials"}, auth=("lgsp-unit", "x")).status_code == 401
    r = _token(base, data={"grant_type": "password"}, auth=("lgsp-unit", "unit-secret"))
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_sim_data_api(sim, state):
    base = sim[0]
    url = f"{base}{API_BASE}/chiTietDoanhNghiep"
    r = httpx.get(url, params={"msdn": FIXED_CODES["anphat"]})
    assert r.status_code == 401 and r.json()["fault"]["code"] == 900902
    token = _token(base, data={"grant_type": "client_credentials"}, auth=("lgsp-unit", "unit-secret")).json()
    h = {"Authorization": f"Bearer {token['access_token']}"}
    r = httpx.get(url, params={"msdn": FIXED_CODES["anphat"]}, headers=h)
    assert r.status_code == 200 and r.json()["Status"] == 1
    assert r.json()["Data"]["MainInformation"]["FOUNDING_DATE"] == "15/03/2012"
    r = httpx.get(url, params={"msdn": "0100000000"}, headers=h)
    assert r.status_code == 200 and r.json() == {"Status": 0, "Message": "Không tìm thấy thông tin doanh nghiệp",
                                                 "Data": None}
    r = httpx.get(url, params={"msdn": "01-23"}, headers=h)
    assert r.status_code == 400 and r.json()["Status"] == 0
    assert httpx.get(url, params={"msdn": FIXED_CODES["anphat"]},
                     headers={"Authorization": "Bearer nope"}).json()["fault"]["code"] == 900901


def test_sim_tokens_expire(sim, state):
    base = sim[0]
    httpx.post(f"{base}/_sim/tokens", json={"ttl": 0.3}).raise_for_status()
    token = _token(base, data={"grant_type": "client_credentials"}, auth=("lgsp-unit", "unit-secret")).json()
    h = {"Authorization": f"Bearer {token['access_token']}"}
    url = f"{base}{API_BASE}/chiTietDoanhNghiep"
    assert httpx.get(url, params={"msdn": FIXED_CODES["anphat"]}, headers=h).status_code == 200
    time.sleep(0.4)
    r = httpx.get(url, params={"msdn": FIXED_CODES["anphat"]}, headers=h)
    assert r.status_code == 401 and "expired" in r.headers["www-authenticate"]


def test_sim_fault_switch_validates_and_counts(sim, state):
    base = sim[0]
    assert httpx.post(f"{base}/_sim/faults", json={"mode": "nope"}).status_code == 400
    assert httpx.post(f"{base}/_sim/faults", json={"mode": "down", "count": 1}).json() == {
        "mode": "down", "delay": 2.0, "count": 1}
    assert httpx.get(f"{base}{API_BASE}/chiTietDoanhNghiep").status_code == 503
    assert httpx.get(f"{base}/_sim/faults").json()["mode"] == "normal"


def _run(coro_fn, base: str, **settings):
    """Run one coroutine with a fresh adapter (aiohttp sessions belong to one event loop)."""
    async def go():
        adapter = BusinessAdapter({"endpoint": f"{base}{API_BASE}", "token_url": f"{base}/token",
                                   "client_id": "lgsp-unit", "client_secret": "unit-secret", "timeout": 1,
                                   **settings})
        try:
            return await coro_fn(adapter)
        finally:
            await adapter.aclose()
    return asyncio.run(go())


def _ctx() -> CallContext:
    return CallContext(request_id=uuid.uuid4().hex, client_id="unit")


def _get(code: str):
    return lambda a: a.call("enterprise.get", {"enterprise_code": code}, _ctx())


def test_adapter_reuses_its_token(sim, state):
    issued = state.stats.tokens_issued

    async def three(a):
        return [await _get(FIXED_CODES[k])(a) for k in ("anphat", "anphat_danang", "bienxanh")]

    results = _run(three, sim[0])
    assert [r.data["ENTERPRISE_GDT_CODE"] for r in results] == [
        FIXED_CODES["anphat"], FIXED_CODES["anphat_danang"], FIXED_CODES["bienxanh"]]
    assert results[0].upstream.endswith("/chiTietDoanhNghiep") and "msdn" not in results[0].upstream
    assert state.stats.tokens_issued == issued + 1


def test_adapter_renews_an_expired_token_before_using_it(sim, state):
    state.tokens.ttl = 0.5
    issued, refused = state.stats.tokens_issued, state.stats.unauthorized

    async def spaced(a):
        await _get(FIXED_CODES["anphat"])(a)
        await asyncio.sleep(0.6)
        return await _get(FIXED_CODES["anphat"])(a)

    assert _run(spaced, sim[0]).data["NAME"]
    assert state.stats.tokens_issued == issued + 2
    assert state.stats.unauthorized == refused  # it knew the token had expired


def test_adapter_refreshes_once_on_401_for_many_concurrent_calls(sim, state):
    issued, refused = state.stats.tokens_issued, state.stats.unauthorized

    async def revoked_then_burst(a):
        await _get(FIXED_CODES["anphat"])(a)
        state.tokens.revoke_all()  # the national side drops tokens ahead of their expiry
        return await asyncio.gather(*[_get(FIXED_CODES["saigonxanh"])(a) for _ in range(10)])

    assert len(_run(revoked_then_burst, sim[0])) == 10
    assert state.stats.tokens_issued == issued + 2  # the first token, and one refresh for all ten
    assert state.stats.unauthorized == refused + 10


def test_adapter_gives_up_after_one_retry(sim, state, monkeypatch):
    issued = state.stats.tokens_issued
    monkeypatch.setattr(state.tokens, "check", lambda token: "unknown")  # every token refused

    with pytest.raises(UpstreamFault, match="fresh access token") as info:
        _run(_get(FIXED_CODES["anphat"]), sim[0])
    assert info.value.fault_code == "invalid_token"
    assert state.stats.tokens_issued == issued + 2


def test_adapter_errors(sim, state):
    with pytest.raises(RecordNotFound):
        _run(_get("0100000000"), sim[0])
    with pytest.raises(UpstreamFault, match="client credentials"):
        _run(_get(FIXED_CODES["anphat"]), sim[0], client_secret="wrong")
    state.faults.configure("slow", 1.5)
    with pytest.raises(UpstreamTimeout):
        _run(_get(FIXED_CODES["anphat"]), sim[0])
    with pytest.raises(ValueError):
        _run(_get("0101234565-1"), sim[0])
    with pytest.raises(UpstreamUnavailable):
        _run(_get(FIXED_CODES["anphat"]), "http://127.0.0.1:9")


# ---------------------------------------------------------------------------------------
# through the gateway (real sockets, the shared gateway process)
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def business_client(business_gateway):
    admin = business_gateway.extra["admin"]
    cid = f"tax-desk-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Provincial tax desk", "000.00.35.H30")
    admin.add_grant(cid, "business.enterprise.get", FIELDS, [PURPOSE])
    wait_for_config(business_gateway.url, business_gateway.extra["engine"])
    return cid, secret


@pytest.fixture(scope="module")
def token(business_gateway, business_client) -> str:
    return get_token(business_gateway, *business_client)


@pytest.fixture
def sim_faults(business_sim):
    def set_mode(mode: str, **extra) -> None:
        httpx.post(f"{business_sim.url}/_sim/faults", json={"mode": mode, **extra}).raise_for_status()
    yield set_mode
    set_mode("normal")


def lookup(gw, code: str, token: str | None, purpose: str | None = PURPOSE, **headers) -> httpx.Response:
    h = {"X-On-Behalf-Of": "officer-12", **headers}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if purpose:
        h["X-Purpose"] = purpose
    return httpx.get(f"{gw.url}/api/business/v1/enterprises/{code}", headers=h, timeout=15)


def sim_stats(sim) -> dict:
    return httpx.get(f"{sim.url}/_sim/stats").json()


def test_gateway_lookup_is_canonical_and_limited_to_the_grant(business_gateway, token):
    rid = f"biz-{uuid.uuid4().hex[:8]}"
    r = lookup(business_gateway, FIXED_CODES["anphat"], token, **{"X-Request-ID": rid})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {f.split(".")[0] for f in FIELDS}
    assert body["enterprise_code"] == FIXED_CODES["anphat"] and body["founding_date"] == "2012-03-15"
    assert body["status"] == {"code": "active", "name": "Đang hoạt động"}
    assert body["head_office"]["legacy"]["district_code"] == "001"
    assert {"code": "4690", "name": "Bán buôn tổng hợp", "main": True} in body["business_activities"]
    # Members' names and roles as legal representatives only: no personal IDs, no positions.
    assert body["members"] == [{"full_name": "NGUYỄN VĂN AN", "legal_representative": True},
                               {"full_name": "TRẦN THỊ BÌNH", "legal_representative": False}]
    assert "charter_capital" not in body and "001085012345" not in r.text
    record = audit_of(business_gateway, rid)
    assert record["outcome"] == "ok" and record["service"] == "business.enterprise.get"
    assert record["purpose"] == PURPOSE and record["officer"] == "officer-12"
    assert record["upstream"].endswith("/apiCSDLDKDN/1.0/chiTietDoanhNghiep") and record["trace_id"] == rid


def test_gateway_branch_lookup(business_gateway, token):
    r = lookup(business_gateway, FIXED_CODES["anphat_danang"], token)
    assert r.status_code == 200, r.text
    assert r.json()["legal_form"] == "Chi nhánh" and r.json()["head_office"]["province"]["code"] == "48"


def test_gateway_unknown_enterprise_is_404(business_gateway, token):
    r = lookup(business_gateway, "0100000000", token)
    assert_problem(r, 404, "record.not_found")
    assert audit_of(business_gateway, r.headers["x-request-id"])["error_code"] == "record.not_found"


@pytest.mark.parametrize("code", ["12345", "010123456X", "0101234565-1", "01012345650", "0101234565%20"])
def test_gateway_refuses_malformed_codes_before_calling_the_registry(business_gateway, business_sim, token, code):
    before = sim_stats(business_sim)["requests"]
    r = lookup(business_gateway, code, token)
    assert_problem(r, 400, "enterprise_code.malformed")
    record = audit_of(business_gateway, r.headers["x-request-id"])
    assert record["outcome"] == "refused" and record["error_code"] == "enterprise_code.malformed"
    assert record["service"] == "business.enterprise.get"
    assert sim_stats(business_sim)["requests"] == before


def test_gateway_needs_token_and_purpose(business_gateway, token):
    assert_problem(lookup(business_gateway, FIXED_CODES["anphat"], None), 401, "auth.token_missing")
    assert_problem(lookup(business_gateway, FIXED_CODES["anphat"], token, purpose=None), 400, "purpose.missing")
    assert_problem(lookup(business_gateway, FIXED_CODES["anphat"], token, purpose="marketing"), 403,
                   "purpose.not_allowed")


def test_gateway_survives_upstream_token_expiry(business_gateway, business_sim, token):
    issued = sim_stats(business_sim)["tokens_issued"]
    first = lookup(business_gateway, FIXED_CODES["saigonxanh"], token)
    time.sleep(BUSINESS_TOKEN_TTL + 0.5)
    second = lookup(business_gateway, FIXED_CODES["saigonxanh"], token)
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json() == second.json()
    assert sim_stats(business_sim)["tokens_issued"] > issued


def test_gateway_survives_revoked_upstream_tokens(business_gateway, business_sim, token):
    tokens = f"{business_sim.url}/_sim/tokens"
    httpx.post(tokens, json={"ttl": 60}).raise_for_status()  # no expiry in the middle of this test
    try:
        httpx.delete(tokens).raise_for_status()
        assert lookup(business_gateway, FIXED_CODES["bienxanh"], token).status_code == 200  # holds a 60 s token
        refused = sim_stats(business_sim)["unauthorized"]
        httpx.delete(tokens).raise_for_status()  # the national side drops it early
        r = lookup(business_gateway, FIXED_CODES["bienxanh"], token)
        assert r.status_code == 200, r.text
        assert r.json()["head_office"]["legacy"] is None  # registered after the 2025 reorganisation
        assert sim_stats(business_sim)["unauthorized"] == refused + 1
    finally:
        httpx.post(tokens, json={"ttl": BUSINESS_TOKEN_TTL}).raise_for_status()


@pytest.mark.parametrize("mode, extra, status, code", [
    ("down", {}, 502, "upstream.unavailable"),
    ("malformed", {}, 502, "upstream.malformed"),
    ("fault", {}, 502, "upstream.fault"),
    ("slow", {"delay": 2}, 504, "upstream.timeout"),  # the connection's timeout is 1 s
])
def test_gateway_upstream_failures(business_gateway, token, sim_faults, mode, extra, status, code):
    sim_faults(mode, **extra)
    r = lookup(business_gateway, FIXED_CODES["anphat"], token)
    assert_problem(r, status, code)
    record = audit_of(business_gateway, r.headers["x-request-id"])
    assert record["outcome"] == "failed" and record["error_code"] == code and record["upstream"]


def test_gateway_wrong_upstream_credentials_are_a_clear_502(business_gateway, business_sim, token):
    admin = business_gateway.extra["admin"]
    admin.set_connection("business", "business", business_settings(business_sim, client_secret="wrong"))
    try:
        wait_for_config(business_gateway.url, business_gateway.extra["engine"])
        body = assert_problem(lookup(business_gateway, FIXED_CODES["anphat"], token), 502, "upstream.fault")
        assert "client credentials" in body["detail"] and "wrong" not in body["detail"]
    finally:
        admin.set_connection("business", "business", business_settings(business_sim))
        wait_for_config(business_gateway.url, business_gateway.extra["engine"])
    assert lookup(business_gateway, FIXED_CODES["anphat"], token).status_code == 200


def test_gateway_soap_door_reaches_the_registry_with_grant_and_audit(business_gateway, token):
    import requests
    import zeep
    from lxml import etree
    from zeep.transports import Transport

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    client = zeep.Client(f"{business_gateway.url}/soap/v1?wsdl", transport=Transport(session=session))
    rid = f"biz-soap-{uuid.uuid4().hex[:8]}"
    result = client.service.CallService(service="business.enterprise.get", request_id=rid, purpose=PURPOSE,
                                        param=[{"name": "enterprise_code", "value": FIXED_CODES["anphat"]}])
    names = {etree.QName(el).localname for el in result}
    assert "enterprise_code" in names and names <= {f.split(".")[0] for f in FIELDS}
    record = audit_of(business_gateway, rid)
    assert record["door"] == "soap" and record["service"] == "business.enterprise.get" and record["outcome"] == "ok"
    with pytest.raises(zeep.exceptions.Fault) as err:
        client.service.CallService(service="business.enterprise.get", purpose=PURPOSE,
                                   param=[{"name": "enterprise_code", "value": "12"}])
    assert err.value.detail.find(".//{urn:lgsp:soap:v1}code").text == "enterprise_code.malformed"
