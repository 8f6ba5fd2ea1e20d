"""Bulk verification end to end: a real gateway polls the real simulator's asynchronous
family; each person's outcome is its own audit record; results are encrypted at rest."""
from __future__ import annotations

import time
import uuid

import httpx
import pytest
from helpers import assert_problem, audit_of, get_token, wait_for_config
from sqlalchemy import select

from lgsp.crypto import subject_hash
from lgsp.storage.schema import audit_records, bulk_jobs
from lgsp_adapters.population.simulator import FIXED_IDS

URL = "/api/population/v1/bulk-verifications"
PURPOSE = "social-assistance"
AN, MAI, SAU = FIXED_IDS["an"], FIXED_IDS["mai"], FIXED_IDS["sau"]


@pytest.fixture(scope="module")
def token(gateway):
    admin = gateway.extra["admin"]
    cid = f"bulk-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Social assistance office", "000.00.33.H30")
    admin.add_grant(cid, "population.bulk_verification.submit", ["personal_id", "match"], [PURPOSE])
    admin.add_grant(cid, "population.bulk_verification.get", ["items"], [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    return get_token(gateway, cid, secret)


def post(gateway, token, items, **headers) -> httpx.Response:
    return httpx.post(f"{gateway.url}{URL}", json={"items": items}, timeout=30,
                      headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE, **headers})


def poll(gateway, token, location: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(location, headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE})
        assert r.status_code == 200, r.text
        if r.json()["status"] != "pending":
            return r.json()
        time.sleep(0.1)
    raise AssertionError("the bulk verification did not finish")


def sim_lists(population_sim) -> int:
    return httpx.get(f"{population_sim.url}/_sim/stats").json()["operations"].get("XacThucDanhSachCongDan", 0)


def test_a_list_is_verified_asynchronously_and_each_person_audited(gateway, token):
    items = [{"personal_id": AN, "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"},
             {"personal_id": MAI, "full_name": "Lê Thị Mai", "birth_date": "1990-01-01"},
             {"personal_id": SAU, "full_name": "Phạm Văn Sáu", "birth_date": "1940"}]
    r = post(gateway, token, items, **{"X-Request-ID": "bulk-three"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "pending" and job["count"] == 3 and r.headers["location"] == job["poll"]
    done = poll(gateway, token, r.headers["location"])
    assert done["status"] == "done"
    assert done["items"] == [{"personal_id": AN, "match": True}, {"personal_id": MAI, "match": False},
                             {"personal_id": SAU, "match": True}]
    assert audit_of(gateway, "bulk-three")["service"] == "population.bulk_verification.submit"
    with gateway.extra["engine"].connect() as conn:
        rows = conn.execute(select(audit_records).where(audit_records.c.request_id.like(f"{job['job_id']}-%"))
                            .order_by(audit_records.c.request_id)).all()
        stored = conn.execute(select(bulk_jobs.c.result).where(bulk_jobs.c.id == job["job_id"])).scalar_one()
    assert [row.subject_hash for row in rows] == [subject_hash(i["personal_id"]) for i in items]
    assert all(row.outcome == "ok" and row.fields == ["match", "personal_id"] and row.trace_id for row in rows)
    assert AN not in stored and "match" not in stored  # encrypted at rest
    # The citizen's access report (Decree 13/2023) lists the bulk check like any other exchange.
    from lgsp.audit.search import access_report

    report = access_report(gateway.extra["engine"], MAI)
    assert any(a["service"] == "population.bulk_verification.submit" for a in report["accesses"]), report


def test_another_client_cannot_read_the_job(gateway, token):
    r = post(gateway, token, [{"personal_id": AN, "full_name": "Nguyễn Văn An", "birth_date": "1985"}])
    admin = gateway.extra["admin"]
    other = f"other-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(other, "Someone else", "000.00.34.H30")
    admin.add_grant(other, "population.bulk_verification.get", ["items"], [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    theirs = get_token(gateway, other, secret)
    resp = httpx.get(r.headers["location"], headers={"Authorization": f"Bearer {theirs}", "X-Purpose": PURPOSE})
    assert_problem(resp, 404, "record.not_found")


def _items(n: int, start: int = 0) -> list[dict]:
    return [{"personal_id": f"001090{i:06d}", "full_name": "Nguyễn Văn Test", "birth_date": "1990"}
            for i in range(start, start + n)]


@pytest.mark.parametrize("items,code,named", [
    (_items(1001), "bulk.too_many_items", "1001"),
    ([], "request.invalid", "non-empty"),  # the spec says minItems: 1
    (_items(3) + _items(1, start=1), "bulk.duplicate_items", "items[1] and items[3]"),
    (_items(2) + [{"personal_id": "12345", "full_name": "X", "birth_date": "1990"}], "personal_id.malformed",
     "items[2].personal_id"),
    (_items(2) + [{"personal_id": "099090000001", "full_name": "X", "birth_date": "1990"}], "personal_id.impossible",
     "items[2].personal_id"),
])
def test_bad_lists_are_refused_naming_the_items_and_nothing_is_sent(gateway, token, population_sim, items, code,
                                                                     named):
    before = sim_lists(population_sim)
    r = post(gateway, token, items)
    body = assert_problem(r, 400, code)
    assert named in body["detail"]
    assert audit_of(gateway, r.headers["x-request-id"])["outcome"] == "refused"
    assert sim_lists(population_sim) == before


def test_a_list_sent_by_service_name_is_a_job_too(gateway, token):
    r = httpx.post(f"{gateway.url}/api/services/v1/population.bulk_verification.submit",
                   json={"items": [{"personal_id": AN, "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"}]},
                   headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}, timeout=30)
    assert r.status_code == 202, r.text
    assert poll(gateway, token, r.headers["location"])["items"] == [{"personal_id": AN, "match": True}]


def test_upstream_down_fails_the_submission(gateway, token, faults):
    faults.set("down")
    r = post(gateway, token, _items(2))
    assert_problem(r, 502, "upstream.unavailable")


def test_a_thousand_persons(gateway, token):
    started = time.perf_counter()
    r = post(gateway, token, _items(1000, start=5000))
    assert r.status_code == 202, r.text
    done = poll(gateway, token, r.headers["location"], timeout=60)
    assert done["status"] == "done" and len(done["items"]) == 1000
    assert not any(item["match"] for item in done["items"])  # made-up IDs
    assert time.perf_counter() - started < 30
