"""The inbound poller remembers what it refused across restarts (table document_refusals, migration 0018): two
poller processes one after the other against the national axis simulator, the second neither fetches nor audits
the package the first refused, and the axis still sees it acknowledged `fail`."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from helpers import Server, free_port, postgres_database, start_server
from sqlalchemy import func, select

from lgsp.documents import testkit
from lgsp.documents.agencies import Directory
from lgsp.documents.poller import refusals
from lgsp.storage.schema import audit_records
from lgsp_adapters.national_axis.simulator import API_BASE, OTHER_SYSTEMS, PROVINCE_SYSTEM

B = "000.00.31.H30"
NATIONAL = "000.00.00.G22"
PDF = ("cong-van.pdf", "application/pdf", b"%PDF-1.7 " + bytes(range(256)) * 40)
VPCP = {"systemid": NATIONAL, "secret": OTHER_SYSTEMS[NATIONAL]}
PROVINCE = {"systemid": PROVINCE_SYSTEM[0], "secret": PROVINCE_SYSTEM[1]}


@pytest.fixture(scope="module")
def world(lgsp_env, tmp_path_factory):
    from lgsp import keys
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for, upgrade

    tmp = tmp_path_factory.mktemp("documents-refusals")
    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    url, drop = postgres_database(pg) if pg else (f"sqlite:///{tmp / 'documents.db'}", None)
    upgrade(url)
    engine = engine_for(url)
    port = free_port()
    axis = start_server([sys.executable, "-m", "lgsp_adapters.national_axis.simulator", "--host", "127.0.0.1",
                         "--port", str(port)], f"http://127.0.0.1:{port}", "/_sim/faults", tmp / "axis.log")
    admin = Admin(engine, "tests")
    admin.register_spec_services()
    keys.ensure_key(engine)
    admin.set_connection("national-axis", "national-axis", {
        "endpoint": f"{axis.url}{API_BASE}", "system_id": PROVINCE_SYSTEM[0], "secret": PROVINCE_SYSTEM[1],
        "timeout": 5})
    admin.create_client("qlvb-refusals-b", "QLVB B")
    directory = Directory(engine, "tests")
    directory.set(B, name="Sở Tư pháp", client_id="qlvb-refusals-b")
    directory.set(NATIONAL, name="Văn phòng Chính phủ", scope="national")
    httpx.post(f"{axis.url}{API_BASE}/agencies", json={"pcode": "", "code": B, "name": "Sở Tư pháp"},
               headers=PROVINCE).raise_for_status()
    ca = testkit.make_ca()
    trust = tmp / "cas.pem"
    trust.write_bytes(ca.cert_pem)
    env = {"LGSP_DATABASE_URL": url, "LGSP_DOCUMENT_TRUSTED_CAS": str(trust), "LGSP_DOCUMENT_POLL": "0.05",
           "LGSP_DELIVERY_POLL": "0.05", "LGSP_DOCUMENT_ORGAN_ID": "000.00.00.H30"}
    yield {"axis": axis, "engine": engine, "env": env, "tmp": tmp, "signer": testkit.make_signer(ca, NATIONAL)}
    axis.stop()
    engine.dispose()
    if drop:
        drop()


def axis_send(world, package: bytes) -> str:
    answer = httpx.post(f"{world['axis'].url}{API_BASE}/edocs", content=package,
                        headers={**VPCP, "from": NATIONAL, "messagetype": "edoc", "servicetype": "eDoc"}).json()
    assert answer["status"] == "OK", answer
    return answer["DocID"]


def axis_statuses(world) -> dict[str, list[str]]:
    answer = httpx.get(f"{world['axis'].url}{API_BASE}/edocs/received", headers=PROVINCE).json()
    return {item["DocID"]: item["status"] for item in answer["data"]}


def records_of(world, doc_id: str) -> list[dict]:
    with world["engine"].connect() as conn:
        rows = conn.execute(select(audit_records).where(audit_records.c.request_id == f"axis:{doc_id}")).all()
    return [r._asdict() for r in rows]


def stored(world, doc_id: str) -> bool:
    from lgsp.documents.store import packages

    with world["engine"].connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(packages)
                                 .where(packages.c.axis_doc_id == doc_id)).scalar())


def wait_until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def start_worker(world, name: str) -> Server:
    log = world["tmp"] / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--plane", "worker"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env={**os.environ, **world["env"]})
    return Server("", proc, log)


def test_a_refused_package_is_not_fetched_refused_and_audited_again_after_a_restart(world):
    forged = axis_send(world, testkit.signed_package(world["signer"], NATIONAL, [B], [PDF], number="r-1")
                       .replace(b"V/v tri", b"V/V tri"))
    first = start_worker(world, "poller-1")
    try:
        wait_until(lambda: "fail" in axis_statuses(world).get(forged, []) and records_of(world, forged))
    finally:
        first.stop()
    with world["engine"].connect() as conn:
        remembered = conn.execute(select(refusals).where(refusals.c.axis_doc_id == forged)).one()
    assert remembered.code == "document.signature_invalid" and remembered.refused_at is not None

    later = axis_send(world, testkit.signed_package(world["signer"], NATIONAL, [B], [PDF], number="r-2"))
    second = start_worker(world, "poller-2")
    try:
        wait_until(lambda: stored(world, later))   # the second run went past the refused one at least once
        wait_until(lambda: later not in axis_statuses(world))
    finally:
        second.stop()
    records = records_of(world, forged)
    assert len(records) == 1 and records[0]["error_code"] == "document.signature_invalid"
    assert forged in axis_statuses(world) and "fail" in axis_statuses(world)[forged]   # still pending on the axis
