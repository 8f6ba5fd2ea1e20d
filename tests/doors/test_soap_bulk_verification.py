"""Bulk verification through the SOAP door: zeep as the client from the served WSDL, the real
gateway polling the real simulator. The same limits, refusals and audit as the REST API."""
from __future__ import annotations

import time
import uuid

import httpx
import pytest
import requests
import zeep
from helpers import audit_of, get_token, wait_for_config
from lxml import etree
from sqlalchemy import select
from zeep.transports import Transport

from lgsp.crypto import subject_hash
from lgsp.storage.schema import audit_records
from lgsp_adapters.population.simulator import FIXED_IDS

PURPOSE = "social-assistance"
NS = {"lgsp": "urn:lgsp:soap:v1"}
AN, MAI, SAU = FIXED_IDS["an"], FIXED_IDS["mai"], FIXED_IDS["sau"]
THREE = [{"personal_id": AN, "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"},
         {"personal_id": MAI, "full_name": "Lê Thị Mai", "birth_date": "1990-01-01"},
         {"personal_id": SAU, "full_name": "Phạm Văn Sáu", "birth_date": "1940"}]


def new_client(gateway, *, get: bool = True, submit: bool = True) -> str:
    admin = gateway.extra["admin"]
    cid = f"soapbulk-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Social assistance office (SOAP)", "000.00.33.H30")
    if submit:
        admin.add_grant(cid, "population.bulk_verification.submit", ["personal_id", "match"], [PURPOSE])
    if get:
        admin.add_grant(cid, "population.bulk_verification.get", ["items"], [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    return get_token(gateway, cid, secret)


@pytest.fixture(scope="module")
def token(gateway) -> str:
    return new_client(gateway)


def service(gateway, token: str, port: str = "Soap11"):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    client = zeep.Client(f"{gateway.url}/soap/v1?wsdl", transport=Transport(session=session, timeout=60))
    return client.bind("LgspSharedServices", port)


def poll(svc, job_id: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = svc.GetBulkVerification(job_id=job_id, purpose=PURPOSE)
        if job.status != "pending":
            return job
        time.sleep(0.1)
    raise AssertionError("the bulk verification did not finish")


def sim_lists(population_sim) -> int:
    return httpx.get(f"{population_sim.url}/_sim/stats").json()["operations"].get("XacThucDanhSachCongDan", 0)


def fault_of(err: pytest.ExceptionInfo) -> tuple[str, str, str]:
    detail = err.value.detail
    return (detail.find(".//lgsp:code", NS).text, detail.find(".//lgsp:detail", NS).text,
            detail.find(".//lgsp:request_id", NS).text)


@pytest.mark.parametrize("port", ["Soap11", "Soap12"])
def test_a_list_is_submitted_polled_and_each_person_audited(gateway, token, port):
    svc = service(gateway, token, port)
    request_id = f"soap-bulk-{port}-{uuid.uuid4().hex[:6]}"
    job = svc.SubmitBulkVerification(items=THREE, purpose=PURPOSE, on_behalf_of="officer-7", request_id=request_id)
    assert job.status == "pending" and job.count == 3 and job.job_id and not job.items
    done = poll(svc, job.job_id)
    assert done.status == "done" and done.error is None
    assert [(i.personal_id, i.match) for i in done.items] == [(AN, True), (MAI, False), (SAU, True)]
    submitted = audit_of(gateway, request_id)
    assert submitted["door"] == "soap" and submitted["service"] == "population.bulk_verification.submit"
    assert submitted["outcome"] == "ok" and submitted["officer"] == "officer-7"
    with gateway.extra["engine"].connect() as conn:
        rows = conn.execute(select(audit_records).where(audit_records.c.request_id.like(f"{job.job_id}-%"))
                            .order_by(audit_records.c.request_id)).all()
    assert [row.subject_hash for row in rows] == [subject_hash(i["personal_id"]) for i in THREE]
    assert all(r.door == "soap" and r.outcome == "ok" and r.officer == "officer-7" and r.detail["submitted_by"]
               == request_id for r in rows)
    from lgsp.audit.search import access_report

    report = access_report(gateway.extra["engine"], MAI)
    assert any(a["request_id"] == f"{job.job_id}-0001" and a["service"] == "population.bulk_verification.submit"
               for a in report["accesses"]), report


def test_a_list_of_one_is_still_a_list(gateway, token):
    svc = service(gateway, token)
    job = svc.SubmitBulkVerification(items=[THREE[0]], purpose=PURPOSE)
    assert [(i.personal_id, i.match) for i in poll(svc, job.job_id).items] == [(AN, True)]


def _items(n: int, start: int = 0) -> list[dict]:
    return [{"personal_id": f"001090{i:06d}", "full_name": "Nguyễn Văn Test", "birth_date": "1990"}
            for i in range(start, start + n)]


@pytest.mark.parametrize("items,code,named", [
    (_items(1001), "bulk.too_many_items", "1001"),
    (_items(3) + _items(1, start=1), "bulk.duplicate_items", "items[1] and items[3]"),
    (_items(2) + [{"personal_id": "12345", "full_name": "X", "birth_date": "1990"}], "personal_id.malformed",
     "items[2].personal_id"),
    (_items(2) + [{"personal_id": "099090000001", "full_name": "X", "birth_date": "1990"}], "personal_id.impossible",
     "items[2].personal_id"),
])
def test_bad_lists_are_faults_naming_the_items_and_nothing_is_sent(gateway, token, population_sim, items, code,
                                                                     named):
    before = sim_lists(population_sim)
    with pytest.raises(zeep.exceptions.Fault) as err:
        service(gateway, token).SubmitBulkVerification(items=items, purpose=PURPOSE)
    got, detail, request_id = fault_of(err)
    assert got == code and named in detail, (got, detail)
    record = audit_of(gateway, request_id)
    assert record["outcome"] == "refused" and record["error_code"] == code and record["door"] == "soap"
    assert sim_lists(population_sim) == before


def raw(gateway, token: str, inner: str) -> httpx.Response:
    body = ('<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:l="urn:lgsp:soap:v1"><soap:Body>{inner}</soap:Body></soap:Envelope>').encode()
    return httpx.post(f"{gateway.url}/soap/v1", content=body, timeout=30,
                      headers={"Content-Type": "text/xml; charset=utf-8", "Authorization": f"Bearer {token}"})


def raw_code(resp: httpx.Response) -> str:
    assert resp.status_code == 500, resp.text  # SOAP 1.1: every Fault is a 500
    return etree.fromstring(resp.content).find(".//lgsp:Error/lgsp:code", NS).text


def test_an_empty_list_is_refused_by_the_contract(gateway, token, population_sim):
    before = sim_lists(population_sim)
    r = raw(gateway, token, f"<l:SubmitBulkVerification><l:purpose>{PURPOSE}</l:purpose></l:SubmitBulkVerification>")
    assert raw_code(r) == "request.invalid"
    assert audit_of(gateway, r.headers["x-request-id"])["outcome"] == "refused"
    assert sim_lists(population_sim) == before


def test_only_a_list_may_be_larger_than_the_usual_body_limit(gateway, token):
    """A list of 1,000 is over the usual 64 KB; any other operation that size is still refused."""
    padded = "<l:personal_id>001090000001</l:personal_id>" + "<!-- pad -->" * 8000
    r = raw(gateway, token, f"<l:GetBulkVerification>{padded}<l:purpose>{PURPOSE}</l:purpose>"
                            "</l:GetBulkVerification>")
    assert raw_code(r) == "request.too_large"
    huge = "".join(f"<l:items><l:personal_id>{i:012d}</l:personal_id><l:full_name>{'A' * 200}</l:full_name>"
                   "<l:birth_date>1990</l:birth_date></l:items>" for i in range(2200))
    r = raw(gateway, token, f"<l:SubmitBulkVerification>{huge}<l:purpose>{PURPOSE}</l:purpose>"
                            "</l:SubmitBulkVerification>")
    assert raw_code(r) == "request.too_large"  # over the bulk body limit too


def test_a_thousand_persons_over_soap(gateway, token):
    svc = service(gateway, token)
    started = time.perf_counter()
    job = svc.SubmitBulkVerification(items=_items(1000, start=7000), purpose=PURPOSE)
    done = poll(svc, job.job_id, timeout=60)
    assert done.status == "done" and len(done.items) == 1000
    assert [i.personal_id for i in done.items] == [i["personal_id"] for i in _items(1000, start=7000)]
    assert time.perf_counter() - started < 30


def test_another_client_cannot_read_the_job(gateway, token):
    job = service(gateway, token).SubmitBulkVerification(items=[THREE[0]], purpose=PURPOSE)
    other = new_client(gateway, submit=False)
    with pytest.raises(zeep.exceptions.Fault) as err:
        service(gateway, other).GetBulkVerification(job_id=job.job_id, purpose=PURPOSE)
    assert fault_of(err)[0] == "record.not_found"


def test_without_a_grant_nothing_is_submitted(gateway, population_sim):
    before = sim_lists(population_sim)
    with pytest.raises(zeep.exceptions.Fault) as err:
        service(gateway, new_client(gateway, submit=False)).SubmitBulkVerification(items=THREE, purpose=PURPOSE)
    assert fault_of(err)[0] == "access.no_grant"
    assert sim_lists(population_sim) == before


def test_a_list_by_service_name_is_a_job_too(gateway, token):
    """CallService with the submit service cannot carry a list, but it must not reach upstream as one
    person; polling by name reads the same job."""
    svc = service(gateway, token)
    job = svc.SubmitBulkVerification(items=[THREE[0]], purpose=PURPOSE)
    poll(svc, job.job_id)
    result = svc.CallService(service="population.bulk_verification.get",
                             param=[{"name": "job_id", "value": job.job_id}], purpose=PURPOSE)
    values = {etree.QName(el).localname: el for el in result}
    assert values["job_id"].text == job.job_id and values["status"].text == "done"
