"""Every person whose data an answer carries is in the audit trail: a household read is in each
member's access report, a link check in the relative's; only what minimisation left counts.
Real gateway and population simulator on loopback, REST and SOAP; the records verify and seal."""
from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import httpx
import pytest
from helpers import get_token, wait_for_config, zeep_client
from sqlalchemy import select

from lgsp.audit.search import access_report, get_record
from lgsp.audit.verify import verify_database
from lgsp.audit.writer import AuditUnavailable, AuditWriter
from lgsp.crypto import subject_hash
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records
from lgsp_adapters.population.simulator import FIXED_IDS

API = "/api/population/v1"
PURPOSE = "civil-status"
AN, BINH, KHOI, HA, HUNG, MAI = (FIXED_IDS[k] for k in ("an", "binh", "khoi", "ha", "hung", "mai"))
HOUSEHOLD = [AN, BINH, KHOI, HA, HUNG]  # An heads it; Hùng is his father, Khôi and Hà their children


def client_with(gateway, grants: dict[str, list[str]]) -> str:
    admin = gateway.extra["admin"]
    cid = f"persons-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Residence desk", "000.00.31.H30")
    for service, fields in grants.items():
        admin.add_grant(cid, service, fields, [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    return get_token(gateway, cid, secret)


@pytest.fixture(scope="module")
def names_only(gateway) -> str:
    """Sees who lives in the household by name and relation, never their IDs."""
    return client_with(gateway, {
        "population.household.get": ["book_number", "head.full_name", "members.full_name", "members.relationship"],
        "population.household_head.verify": ["match", "relationship"],
        "population.relatives.verify": ["match"],
        "population.citizen.get": ["personal_id", "full_name", "spouse.full_name"],
    })


def call(gateway, token: str, path: str, body: dict | None = None, **headers) -> httpx.Response:
    h = {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE, **headers}
    if body is None:
        return httpx.get(f"{gateway.url}{API}{path}", headers=h, timeout=15)
    return httpx.post(f"{gateway.url}{API}{path}", json=body, headers=h, timeout=15)


def records_of(gateway, request_id: str) -> list[dict]:
    with gateway.extra["engine"].connect() as conn:
        rows = conn.execute(select(audit_records).where(audit_records.c.request_id == request_id)
                            .order_by(audit_records.c.seq)).all()
    return [dict(r._mapping) for r in rows]


def reported(gateway, personal_id: str, request_id: str) -> list[dict]:
    report = access_report(gateway.extra["engine"], personal_id)
    return [a for a in report["accesses"] if a["request_id"] == request_id]


def test_a_household_read_is_in_every_members_access_report(gateway, names_only):
    rid = f"hh-{uuid.uuid4().hex[:8]}"
    r = call(gateway, names_only, f"/households/{KHOI}", **{"X-Request-ID": rid})
    assert r.status_code == 200, r.text
    assert all("personal_id" not in m for m in r.json()["members"])  # the caller saw names, not IDs
    for pid in HOUSEHOLD:
        (access,) = reported(gateway, pid, rid)  # once each, though An is both head and member
        assert access["service"] == "population.household.get" and access["outcome"] == "ok"
        assert access["purpose"] == PURPOSE
    records = records_of(gateway, rid)
    assert len(records) == 5 and records[0]["subject_hash"] == subject_hash(KHOI)  # the asked-about person first
    assert records[0]["detail"] is None and records[0]["fields"] == ["book_number", "head", "members"]
    others = {r["subject_hash"]: r for r in records[1:]}
    head = others[subject_hash(AN)]
    assert head["fields"] == ["full_name", "relationship"] and head["detail"]["other_person"][0] == "head"
    assert any(w.startswith("members[") for w in head["detail"]["other_person"])
    assert others[subject_hash(HUNG)]["fields"] == ["full_name", "relationship"]
    # One answer, one transaction: consecutive in one chain, each with the answer's digest.
    assert [r["seq"] for r in records] == list(range(records[0]["seq"], records[0]["seq"] + 5))
    assert len({(r["chain"], r["response_sha256"], r["client_id"], r["at"]) for r in records}) == 1
    assert not reported(gateway, MAI, rid)


def test_the_records_of_other_persons_are_chained_and_sealed(gateway, names_only):
    rid = f"hh-seal-{uuid.uuid4().hex[:8]}"
    assert call(gateway, names_only, f"/households/{HA}", **{"X-Request-ID": rid}).status_code == 200
    ids = [r["id"] for r in records_of(gateway, rid)]
    assert len(ids) == 5
    engine = gateway.extra["engine"]
    deadline = time.monotonic() + 30  # the gateway seals at least every 10 s
    while time.monotonic() < deadline:
        status = {get_record(engine, i)["integrity"]["status"] for i in ids}
        if status == {"sealed"}:
            break
        assert status <= {"sealed", "unsealed"}, status
        time.sleep(0.2)
    assert status == {"sealed"}
    report = verify_database(engine)
    assert not report.flagged_ids() & set(ids), report.findings  # other tests may tamper with other records


def test_members_the_grant_hides_are_not_recorded(gateway):
    token = client_with(gateway, {"population.household.get": ["book_number", "member_count"]})
    rid = f"hh-none-{uuid.uuid4().hex[:8]}"
    r = call(gateway, token, f"/households/{KHOI}", **{"X-Request-ID": rid})
    assert r.status_code == 200 and set(r.json()) == {"book_number", "member_count"}
    assert [rec["subject_hash"] for rec in records_of(gateway, rid)] == [subject_hash(KHOI)]
    assert not reported(gateway, AN, rid)


def test_a_refused_read_records_only_the_person_asked_about(gateway, names_only):
    rid = f"hh-refused-{uuid.uuid4().hex[:8]}"
    r = httpx.get(f"{gateway.url}{API}/households/{KHOI}", timeout=15,
                  headers={"Authorization": f"Bearer {names_only}", "X-Purpose": "marketing", "X-Request-ID": rid})
    assert r.status_code == 403
    assert [(rec["subject_hash"], rec["outcome"]) for rec in records_of(gateway, rid)] == [
        (subject_hash(KHOI), "refused")]


def test_link_checks_are_in_the_relatives_report(gateway, names_only):
    head_rid, rel_rid = f"head-{uuid.uuid4().hex[:8]}", f"rel-{uuid.uuid4().hex[:8]}"
    r = call(gateway, names_only, "/citizens/verify-household-head",
             {"personal_id": KHOI, "head_personal_id": AN}, **{"X-Request-ID": head_rid})
    assert r.status_code == 200 and r.json()["match"] is True
    r = call(gateway, names_only, "/citizens/verify-relatives",
             {"personal_id": AN, "relative_personal_id": HUNG, "relationship": "father"}, **{"X-Request-ID": rel_rid})
    assert r.status_code == 200 and r.json() == {"match": True}
    (head,) = reported(gateway, AN, head_rid)
    assert head["service"] == "population.household_head.verify" and head["fields"] == ["match", "relationship"]
    (father,) = reported(gateway, HUNG, rel_rid)
    assert father["service"] == "population.relatives.verify" and father["fields"] == ["match"]
    assert reported(gateway, KHOI, head_rid) and reported(gateway, AN, rel_rid)  # the asked-about persons too
    assert records_of(gateway, rel_rid)[1]["detail"] == {"other_person": ["params.relative_personal_id"]}


def test_a_citizen_lookup_that_shows_the_spouse_is_in_the_spouses_report(gateway, names_only):
    rid = f"cit-{uuid.uuid4().hex[:8]}"
    r = call(gateway, names_only, f"/citizens/{AN}", **{"X-Request-ID": rid})
    assert r.status_code == 200 and r.json()["spouse"] == {"full_name": "Trần Thị Bình"}
    (spouse,) = reported(gateway, BINH, rid)
    assert spouse["fields"] == ["full_name"]
    assert not reported(gateway, HUNG, rid)  # his father is on record, but not in this grant


def test_a_household_read_over_soap_is_in_every_members_report(gateway, names_only):
    service = zeep_client(gateway, token=names_only).service
    rid = f"hh-soap-{uuid.uuid4().hex[:8]}"
    household = service.PopulationHouseholdGet(personal_id=HUNG, purpose=PURPOSE, request_id=rid)
    assert len(household.members) == 5
    for pid in HOUSEHOLD:
        (access,) = reported(gateway, pid, rid)
        assert access["service"] == "population.household.get"
    assert {r["door"] for r in records_of(gateway, rid)} == {"soap"}


# -- the writer: an exchange's records are written together or not at all -------------------

def _record(request_id: str, person: str, **extra) -> dict:
    return {"at": dt.datetime.now(dt.UTC), "kind": "exchange", "request_id": request_id, "door": "rest",
            "client_id": "desk", "service": "population.household.get", "outcome": "ok", "status": 200,
            "subject_hash": subject_hash(person), **extra}


def test_an_exchanges_records_are_one_transaction(fresh_db_url):
    engine = engine_for(fresh_db_url)
    writer = AuditWriter(engine, seal_every=1000, seal_seconds=60)
    try:
        with pytest.raises(AuditUnavailable):  # one record of the group cannot be written: none is
            asyncio.run(writer.commit_all([_record("broken", AN), _record("broken", BINH, detail={"x": object()})]))
        asyncio.run(writer.commit_all([_record("whole", pid) for pid in HOUSEHOLD]))
    finally:
        writer.close()
    with engine.connect() as conn:
        rows = conn.execute(select(audit_records.c.request_id, audit_records.c.seq)
                            .where(audit_records.c.kind == "exchange").order_by(audit_records.c.seq)).all()
    assert rows == [("whole", seq) for seq in range(1, 6)]
    assert verify_database(engine).ok


def test_an_enterprise_lookup_is_in_each_members_access_report(business_gateway):
    """The members of an enterprise (owners, legal representatives) are persons too."""
    from lgsp_adapters.business.simulator import FIXED_CODES, generate

    code = FIXED_CODES["anphat"]
    ids = [m.id_number for m in generate().find(code).members if m.id_number]
    assert ids
    token = client_with(business_gateway, {"business.enterprise.get": ["enterprise_code", "members.full_name"]})
    rid = f"ent-{uuid.uuid4().hex[:8]}"
    r = httpx.get(f"{business_gateway.url}/api/business/v1/enterprises/{code}", timeout=15,
                  headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE, "X-Request-ID": rid})
    assert r.status_code == 200 and all(set(m) == {"full_name"} for m in r.json()["members"]), r.text
    for pid in ids:
        (access,) = reported(business_gateway, pid, rid)
        assert access["service"] == "business.enterprise.get" and access["fields"] == ["full_name"]
    assert records_of(business_gateway, rid)[0]["subject_hash"] is None  # the exchange itself: an enterprise


def test_an_answer_whose_other_persons_cannot_be_recorded_is_not_given(lgsp_env):
    """Fail closed: if the persons an answer carries cannot be worked out, the caller gets
    internal.error (recorded), not an answer some of whose persons have no record — and nothing
    the exchange meant to store with its record (an accepted message) is stored."""
    from types import SimpleNamespace

    from lgsp.doors.rest_exchange import render
    from lgsp.pipeline.exchange import Exchange
    from lgsp.pipeline.run import serve
    from lgsp.registry import Service

    class BrokenAdapter:
        @property
        def operations(self):
            raise RuntimeError("the adapter's declarations cannot be read")

    class Audit:
        def __init__(self) -> None:
            self.records: list[dict] = []
            self.stored: list = []

        async def commit(self, record: dict, statements=()) -> None:
            self.records.append(record)
            self.stored += list(statements)

        async def commit_all(self, records: list[dict], statements=()) -> None:
            self.records.extend(records)
            self.stored += list(statements)

    async def answered(ex, _ctx) -> None:
        ex.service = Service("population.household.get", "v1", "population", "household.get", True, True)
        ex.adapter = BrokenAdapter()
        ex.canonical = {"members": [{"personal_id": AN, "full_name": "Nguyễn Văn An"}]}
        ex.answer, ex.fields = {"members": [{"full_name": "Nguyễn Văn An"}]}, ["members"]
        ex.store = ["a row the exchange meant to store with its record"]

    gw = SimpleNamespace(registry=SimpleNamespace(snapshot=SimpleNamespace(services={})), audit=Audit())
    ex = Exchange(door="rest", request_id="closed-1", service_name="population.household.get",
                  params={"personal_id": KHOI})
    status, _headers, body = asyncio.run(serve(ex, gw, render, stages=(answered,)))
    assert status == 500 and b"internal.error" in body and "Nguy" not in body.decode()
    assert [(r["outcome"], r["error_code"], r["subject_hash"], r["fields"]) for r in gw.audit.records] == [
        ("failed", "internal.error", subject_hash(KHOI), [])]
    assert gw.audit.stored == []
