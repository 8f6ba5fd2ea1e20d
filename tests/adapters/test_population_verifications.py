"""Household, household-head, relatives, marital and vital-status services end to end:
real gateway, real population simulator, REST (httpx) and SOAP (zeep from the served WSDL)."""
from __future__ import annotations

import uuid

import httpx
import pytest
import zeep
from helpers import NS, assert_problem, audit_of, fault_code, get_token, wait_for_config, zeep_client
from zeep.wsse.username import UsernameToken

from lgsp.crypto import subject_hash
from lgsp_adapters.population.simulator import FIXED_IDS

API = "/api/population/v1"
PURPOSE = "civil-status"
AN, BINH, KHOI, HUNG, MAI, TU, NAM = (FIXED_IDS[k] for k in ("an", "binh", "khoi", "hung", "mai", "tu", "nam"))
GRANTS = {
    # The residence desk sees who lives in the household and how they relate, not their IDs or birth dates.
    "population.household.get": ["book_number", "head.full_name", "members.full_name", "members.relationship",
                                 "member_count"],
    "population.household_head.verify": ["match", "relationship"],
    "population.relatives.verify": ["match"],
    "population.marital_status.verify": ["match"],            # yes/no only: not the status on record
    "population.vital_status.verify": ["match", "vital_status", "event_date"],
}


@pytest.fixture(scope="module")
def desk(gateway):
    admin = gateway.extra["admin"]
    cid = f"civil-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Civil status desk", "000.00.31.H30")
    for service, fields in GRANTS.items():
        admin.add_grant(cid, service, fields, [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    return cid, secret


@pytest.fixture(scope="module")
def token(gateway, desk) -> str:
    return get_token(gateway, *desk)


def call(gateway, token, path: str, body: dict | None = None, purpose: str | None = PURPOSE, **headers):
    h = {"Authorization": f"Bearer {token}", **headers}
    if purpose:
        h["X-Purpose"] = purpose
    if body is None:
        return httpx.get(f"{gateway.url}{API}{path}", headers=h, timeout=15)
    return httpx.post(f"{gateway.url}{API}{path}", json=body, headers=h, timeout=15)


def sim_count(gateway, operation: str) -> int:
    sim = gateway.extra.get("population_sim_url")
    return httpx.get(f"{sim}/_sim/stats").json()["operations"].get(operation, 0)


@pytest.fixture(autouse=True, scope="module")
def _sim_url(gateway, population_sim):
    gateway.extra["population_sim_url"] = population_sim.url


def test_household_is_minimised_to_the_grant(gateway, token):
    r = call(gateway, token, f"/households/{KHOI}", **{"X-Request-ID": "hh-khoi"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"book_number", "head", "members", "member_count"}
    assert body["book_number"] == "010000000001" and body["head"] == {"full_name": "Nguyễn Văn An"}
    assert body["member_count"] == 5 == len(body["members"])
    assert {"full_name": "Nguyễn Minh Khôi", "relationship": "Con"} in body["members"]
    assert all(set(m) == {"full_name", "relationship"} for m in body["members"])  # no IDs, no birth dates
    record = audit_of(gateway, "hh-khoi")
    assert record["service"] == "population.household.get" and record["subject_hash"] == subject_hash(KHOI)


def test_household_of_unknown_citizen_is_404(gateway, token):
    assert_problem(call(gateway, token, "/households/001099999999"), 404, "record.not_found")


@pytest.mark.parametrize("head,match,relationship", [(AN, True, "Con"), (BINH, False, None)])
def test_verify_household_head(gateway, token, head, match, relationship):
    r = call(gateway, token, "/citizens/verify-household-head", {"personal_id": KHOI, "head_personal_id": head})
    assert r.status_code == 200, r.text
    assert r.json() == {"match": match, "relationship": relationship}  # null: a "no" says nothing else


@pytest.mark.parametrize("who,other,kind,match", [
    (AN, HUNG, "father", True), (KHOI, BINH, "mother", True), (BINH, AN, "spouse", True),
    (HUNG, AN, "child", True), (AN, KHOI, "father", False), (MAI, AN, "spouse", False),
])
def test_verify_relatives(gateway, token, who, other, kind, match):
    r = call(gateway, token, "/citizens/verify-relatives",
             {"personal_id": who, "relative_personal_id": other, "relationship": kind})
    assert r.status_code == 200, r.text
    assert r.json() == {"match": match}


def test_verify_marital_status_answers_only_yes_or_no(gateway, token):
    yes = call(gateway, token, "/citizens/verify-marital-status", {"personal_id": AN, "marital_status": "married"})
    no = call(gateway, token, "/citizens/verify-marital-status", {"personal_id": MAI, "marital_status": "married"})
    assert yes.json() == {"match": True} and no.json() == {"match": False}  # the status itself is not granted


@pytest.mark.parametrize("who,status,date", [(AN, "alive", None), (TU, "deceased", "2024-02-10"),
                                             (NAM, "missing", "2019-08-15")])
def test_verify_vital_status(gateway, token, who, status, date):
    r = call(gateway, token, "/citizens/verify-vital-status", {"personal_id": who, "vital_status": "alive"})
    assert r.status_code == 200, r.text
    expected = {"match": status == "alive", "vital_status": status}
    if date:
        expected["event_date"] = date
    assert {k: v for k, v in r.json().items() if v is not None} == expected


def test_vital_status_of_unknown_citizen_is_404(gateway, token):
    r = call(gateway, token, "/citizens/verify-vital-status", {"personal_id": "001099999999", "vital_status": "alive"})
    assert_problem(r, 404, "record.not_found")


@pytest.mark.parametrize("path,body,field,operation", [
    ("/citizens/verify-household-head", {"personal_id": KHOI, "head_personal_id": "12345"},
     "head_personal_id", "XacMinhThongTinChuHo"),
    ("/citizens/verify-relatives", {"personal_id": AN, "relative_personal_id": "0010550123x9", "relationship": "father"},
     "relative_personal_id", "XacMinhThongTinNhanThan"),
    ("/citizens/verify-relatives", {"personal_id": AN, "relative_personal_id": "099055012349", "relationship": "father"},
     "relative_personal_id", "XacMinhThongTinNhanThan"),
])
def test_malformed_other_id_is_refused_naming_the_field_and_not_sent(gateway, token, path, body, field, operation):
    before = sim_count(gateway, operation)
    r = call(gateway, token, path, body)
    problem = r.json()
    assert r.status_code == 400 and problem["code"].startswith("personal_id."), problem
    assert problem["detail"].startswith(f"{field}:")
    assert audit_of(gateway, r.headers["x-request-id"])["outcome"] == "refused"
    assert sim_count(gateway, operation) == before


@pytest.mark.parametrize("path,body", [
    ("/citizens/verify-marital-status", {"personal_id": "12345", "marital_status": "single"}),
    ("/citizens/verify-vital-status", {"personal_id": AN, "vital_status": "zombie"}),
    ("/citizens/verify-relatives", {"personal_id": AN, "relative_personal_id": HUNG, "relationship": "cousin"}),
])
def test_bad_bodies_are_400(gateway, token, path, body):
    r = call(gateway, token, path, body)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")


def test_each_operation_needs_its_own_grant_and_purpose(gateway, token):
    assert_problem(call(gateway, token, "/citizens/verify-vital-status", {"personal_id": AN, "vital_status": "alive"},
                        purpose="marketing"), 403, "purpose.not_allowed")
    assert_problem(call(gateway, token, "/citizens/verify-vital-status", {"personal_id": AN, "vital_status": "alive"},
                        purpose=None), 400, "purpose.missing")
    # The desk has no grant for the full citizen record.
    assert_problem(call(gateway, token, f"/citizens/{AN}"), 403, "access.no_grant")


# -- the SOAP door's typed operations ---------------------------------------------------

@pytest.fixture(scope="module")
def soap(gateway, desk) -> zeep.Client:
    return zeep_client(gateway, wsse=UsernameToken(*desk))


def test_soap_household(soap):
    household = soap.service.PopulationHouseholdGet(personal_id=KHOI, purpose=PURPOSE)
    assert household.book_number == "010000000001" and household.member_count == 5
    assert [m.relationship for m in household.members].count("Con") == 2
    assert all(m.personal_id is None and m.birth_date is None for m in household.members)


def test_soap_verifications(soap):
    head = soap.service.PopulationVerifyHouseholdHead(personal_id=KHOI, head_personal_id=AN, purpose=PURPOSE)
    assert head.match is True and head.relationship == "Con"
    relative = soap.service.PopulationVerifyRelatives(personal_id=AN, relative_personal_id=HUNG,
                                                      relationship="father", purpose=PURPOSE)
    assert relative.match is True
    marital = soap.service.PopulationVerifyMaritalStatus(personal_id=MAI, marital_status="single", purpose=PURPOSE)
    assert marital.match is True and marital.marital_status is None  # not granted
    vital = soap.service.PopulationVerifyVitalStatus(personal_id=NAM, vital_status="alive", purpose=PURPOSE)
    assert vital.match is False and vital.vital_status == "missing" and vital.event_date == "2019-08-15"


def test_soap_malformed_other_id_is_a_fault_naming_the_field(soap):
    with pytest.raises(zeep.exceptions.Fault) as err:
        soap.service.PopulationVerifyHouseholdHead(personal_id=KHOI, head_personal_id="123", purpose=PURPOSE)
    assert fault_code(err.value) == "personal_id.malformed"
    assert err.value.detail.find(".//lgsp:detail", NS).text.startswith("head_personal_id:")


def test_soap_unknown_citizen_is_a_not_found_fault(soap):
    with pytest.raises(zeep.exceptions.Fault) as err:
        soap.service.PopulationVerifyMaritalStatus(personal_id="001099999999", marital_status="single",
                                                   purpose=PURPOSE)
    assert fault_code(err.value) == "record.not_found"
