"""Routing on the provincial document exchange axis, on a real gateway (loopback) with the national axis
simulator behind it: the outbox (POST a signed edXML package), inboxes, acknowledgements, status messages
back to the sender, delivery to the national axis through the delivery engine, and the refusals."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import httpx
import pytest
from helpers import Server, free_port, get_token, postgres_database, start_server
from lxml import etree
from sqlalchemy import func, select

from lgsp.documents import edxml, signature, testkit
from lgsp.documents.agencies import Directory
from lgsp.storage.schema import audit_records
from lgsp_adapters.national_axis.simulator import API_BASE, OTHER_SYSTEMS, PROVINCE_SYSTEM

A, B, C = "000.00.00.H30", "000.00.31.H30", "000.00.32.H30"   # local agencies (A is known to the axis)
NATIONAL = "000.00.00.G22"                                     # the Government Office, on the national axis
MAX_BYTES = 2_000_000
SERVICES = ("documents.send", "documents.outbox.get", "documents.inbox.list", "documents.inbox.get",
            "documents.inbox.status")
PDF = ("cong-van.pdf", "application/pdf", b"%PDF-1.7 " + bytes(range(256)) * 40)


@pytest.fixture(scope="module")
def world(lgsp_env, tmp_path_factory):
    from lgsp import keys
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for, upgrade

    tmp = tmp_path_factory.mktemp("documents")
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
    directory = Directory(engine, "tests")
    clients = {}
    for code, client in ((A, "qlvb-a"), (B, "qlvb-b"), (C, "qlvb-c")):
        clients[code] = (client, admin.create_client(client, f"QLVB {code}"))
        directory.set(code, name=f"Agency {code}", client_id=client)
        for service in SERVICES:
            admin.add_grant(client, service, ["items" if service.endswith(".list") else "id"], ["document-exchange"])
    directory.set(NATIONAL, name="Văn phòng Chính phủ", scope="national")
    ca = testkit.make_ca()
    trust = tmp / "cas.pem"
    trust.write_bytes(ca.cert_pem)
    gw_port = free_port()
    env = {"LGSP_DATABASE_URL": url, "LGSP_PUBLIC_URL": f"http://127.0.0.1:{gw_port}",
           "LGSP_DOCUMENT_TRUSTED_CAS": str(trust), "LGSP_DOCUMENT_MAX_BYTES": str(MAX_BYTES),
           "LGSP_DELIVERY_POLL": "0.05", "LGSP_DOCUMENT_ORGAN_ID": A, "LGSP_DOCUMENT_POLL": "0"}
    # B is registered on the national axis as an agency of this province's centre (registerAgency).
    httpx.post(f"{axis.url}{API_BASE}/agencies", json={"pcode": "", "code": B, "name": "Sở Tư pháp"},
               headers={"systemid": PROVINCE_SYSTEM[0], "secret": PROVINCE_SYSTEM[1]}).raise_for_status()
    gateway = start_server([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(gw_port)],
                           f"http://127.0.0.1:{gw_port}", "/readyz", tmp / "gateway.log", env=env)
    tokens = {code: get_token(gateway, client, secret) for code, (client, secret) in clients.items()}
    yield {"gw": gateway, "axis": axis, "engine": engine, "tokens": tokens, "ca": ca, "env": env, "tmp": tmp,
           "trust": signature.TrustStore.load(trust),
           "signers": {code: testkit.make_signer(ca, code) for code in (A, B, C, NATIONAL)}}
    gateway.stop()
    axis.stop()
    engine.dispose()
    if drop:
        drop()


def api(world, method: str, path: str, agency: str | None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {world['tokens'][agency]}"} if agency else {}
    headers.update(kw.pop("headers", {}))
    return httpx.request(method, f"{world['gw'].url}/api/documents/v1{path}", headers=headers, timeout=30, **kw)


def send(world, package: bytes, agency: str | None, **headers: str) -> httpx.Response:
    return api(world, "POST", "/outbox", agency, content=package,
               headers={"Content-Type": "application/xml", **headers})


def stored_count(world) -> int:
    from lgsp.documents.store import packages

    with world["engine"].connect() as conn:
        return conn.execute(select(func.count()).select_from(packages)).scalar()


def record_of(world, request_id: str) -> dict:
    with world["engine"].connect() as conn:
        row = conn.execute(select(audit_records).where(audit_records.c.request_id == request_id)).first()
    assert row is not None, f"no audit record for {request_id}"
    return row._asdict()


def wait_until(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def without_trace(data: bytes, organ: str) -> bytes:
    """The package minus the one TraceHeader this LGSP inserted."""
    start = data.index(b"<edXML:TraceHeader><edXML:OrganId>" + organ.encode())
    end = data.index(b"</edXML:TraceHeader>", start) + len(b"</edXML:TraceHeader>")
    return data[:start] + data[end:]


# -- the local path ------------------------------------------------------------------------------------

def test_a_signed_document_reaches_the_local_inbox_as_sent_plus_the_trace_header(world):
    package = testkit.signed_package(world["signers"][A], A, [B], [PDF], subject="Bí mật nội dung")
    sent = send(world, package, A, **{"X-Request-ID": "doc-local-1"})
    assert sent.status_code == 202, sent.text
    doc = sent.json()
    assert doc["recipients"] == [{"agency": B, "route": "inbox"}] and sent.headers["location"] == doc["status_url"]

    listed = api(world, "GET", "/inbox", B).json()["items"]
    item = next(i for i in listed if i["id"] == doc["id"])
    assert item["from"] == A and item["to"] == B and item["kind"] == "edoc"
    got = api(world, "GET", f"/inbox/{doc['id']}", B)
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/xml")
    data = got.content
    assert without_trace(data, A) == package                      # byte-identical but for this hop
    pkg, root = edxml.read(data)
    assert [t.organ_id for t in pkg.traces] == [A]
    assert signature.verify(data, root, pkg, world["trust"]).subject   # the sender's signature, by signxml

    record = record_of(world, "doc-local-1")
    assert record["service"] == "documents.send" and record["status"] == 202
    detail = record["detail"]
    assert detail["document"]["sha256"] == pkg.sha256 or detail["document"]["size"] == len(package)
    assert detail["stored"] == {"id": doc["id"], "size": len(data), "sha256": doc["sha256"]}
    assert "Bí mật".encode() not in str(record).encode() and "cong-van.pdf" not in str(record)


def test_only_the_addressed_agency_reads_and_acknowledges_and_the_sender_sees_it(world):
    package = testkit.signed_package(world["signers"][A], A, [B], [PDF])
    doc = send(world, package, A).json()
    other = api(world, "GET", f"/inbox/{doc['id']}", C)
    assert other.status_code == 404 and other.json()["code"] == "record.not_found"
    assert doc["id"] not in [i["id"] for i in api(world, "GET", "/inbox", C).json()["items"]]
    assert api(world, "POST", f"/inbox/{doc['id']}/status", C, json={"status": "done"}).status_code == 404
    assert api(world, "GET", f"/outbox/{doc['id']}", B).status_code == 404     # not B's sending

    bad = api(world, "POST", f"/inbox/{doc['id']}/status", B, json={"status": "read"})
    assert bad.status_code == 400 and bad.json()["code"] == "request.invalid"
    assert api(world, "POST", f"/inbox/{doc['id']}/status", B, json={"status": "processing"}).status_code == 200
    assert doc["id"] in [i["id"] for i in api(world, "GET", "/inbox", B).json()["items"]]
    assert api(world, "POST", f"/inbox/{doc['id']}/status", B, json={"status": "done"}).status_code == 200
    assert doc["id"] not in [i["id"] for i in api(world, "GET", "/inbox", B).json()["items"]]
    view = api(world, "GET", f"/outbox/{doc['id']}", A).json()
    assert [(r["agency"], r["route"], r["delivery"]) for r in view["recipients"]] == [(B, "inbox", "done")]


def test_a_status_message_travels_back_to_the_sender_and_shows_in_the_outbox(world):
    package = testkit.signed_package(world["signers"][A], A, [B], [PDF])
    doc = send(world, package, A).json()
    document_id = edxml.scan(package).document_id
    assert document_id
    status = testkit.sign(testkit.build_status(B, A, document_id, "03", description="Đã vào sổ"),
                          world["signers"][B])
    answered = send(world, status, B)
    assert answered.status_code == 202, answered.text
    assert answered.json()["recipients"] == [{"agency": A, "route": "inbox"}]
    items = api(world, "GET", "/inbox", A).json()["items"]
    mine = next(i for i in items if i["id"] == answered.json()["id"])
    assert (mine["kind"], mine["from"], mine["status_code"], mine["response_for"]) == ("status", B, "03", document_id)
    view = api(world, "GET", f"/outbox/{doc['id']}", A).json()
    assert view["recipients"][0]["status"]["code"] == "03"
    assert view["recipients"][0]["status"]["meaning"] == "registered"


# -- the national axis ---------------------------------------------------------------------------------

def test_a_document_to_a_national_agency_is_delivered_through_the_national_axis(world):
    package = testkit.signed_package(world["signers"][A], A, [NATIONAL], [PDF])
    doc = send(world, package, A).json()
    assert doc["recipients"] == [{"agency": NATIONAL, "route": "national-axis"}]

    def delivered():
        view = api(world, "GET", f"/outbox/{doc['id']}", A).json()
        axis = next(r for r in view["recipients"] if r["agency"] == NATIONAL)
        return axis if axis["delivery"] == "delivered" else None

    axis_route = wait_until(delivered)
    vpcp = {"systemid": NATIONAL, "secret": OTHER_SYSTEMS[NATIONAL]}
    pending = httpx.get(f"{world['axis'].url}{API_BASE}/edocs/received", headers=vpcp).json()["data"]
    assert axis_route["axis_doc_id"] in [p["DocID"] for p in pending]
    on_axis = httpx.get(f"{world['axis'].url}{API_BASE}/edocs/{axis_route['axis_doc_id']}", headers=vpcp).content
    assert without_trace(on_axis, A) == package
    pkg, root = edxml.read(on_axis)
    signature.verify(on_axis, root, pkg, world["trust"])


# -- refusals: 4xx problem+json, nothing stored, audited ----------------------------------------------------

def _tampered(world) -> bytes:
    package = testkit.signed_package(world["signers"][A], A, [B], [PDF])
    return package.replace(b"V/v tri", b"V/V tri")


def _no_manifest_entry(world) -> bytes:
    root = testkit.build(A, [B], [PDF])
    for ref in root.iter("{%s}Reference" % edxml.EDXML_NS):
        ref.getparent().remove(ref)
    return testkit.sign(root, world["signers"][A])


REFUSALS = {
    "malformed": (lambda w: b"<edXML:edXML xmlns:edXML='x'><a></edXML:edXML>", A, 400, "document.malformed"),
    "dtd": (lambda w: b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>", A, 400,
            "document.malformed"),
    "not-the-caller": (lambda w: testkit.signed_package(w["signers"][B], B, [C], [PDF]), A, 403,
                       "document.sender_mismatch"),
    "unknown-recipient": (lambda w: testkit.signed_package(w["signers"][A], A, [B, "000.00.99.H30"], [PDF]), A, 400,
                          "document.unknown_recipient"),
    "no-manifest-entry": (_no_manifest_entry, A, 400, "document.manifest_mismatch"),
    "bad-signature": (_tampered, A, 400, "document.signature_invalid"),
    "untrusted": (lambda w: testkit.signed_package(testkit.make_signer(testkit.make_ca("Other CA"), A), A, [B], [PDF]),
                  A, 400, "document.certificate_untrusted"),
    "too-large": (lambda w: testkit.signed_package(w["signers"][A], A, [B], [
        (f"phu-luc-{i}.bin", "application/octet-stream", secrets.token_bytes(700_000)) for i in range(3)]),
        A, 413, "document.too_large"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_package_is_refused_with_its_code_nothing_stored_and_audited(world, case):
    make, caller, status, code = REFUSALS[case]
    package = make(world)
    before = stored_count(world)
    request_id = f"doc-refused-{case}"
    answer = send(world, package, caller, **{"X-Request-ID": request_id})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["code"] == code and problem["detail"] and "Traceback" not in answer.text
    assert stored_count(world) == before
    record = record_of(world, request_id)
    assert record["error_code"] == code and record["client_id"] == "qlvb-a"


def test_without_a_token_the_body_is_not_read_and_the_refusal_is_audited(world):
    package = testkit.signed_package(world["signers"][A], A, [B], [PDF])
    answer = send(world, package, None, **{"X-Request-ID": "doc-anonymous"})
    assert answer.status_code == 401 and answer.json()["code"].startswith("auth.")
    assert record_of(world, "doc-anonymous")["service"] == "documents.send"


def test_an_inbox_item_id_that_is_not_one_is_not_found(world):
    for path in ("/inbox/../../etc", "/inbox/not-an-id", "/outbox/00000000-0000-0000-0000-000000000000"):
        answer = api(world, "GET", path, B)
        assert answer.status_code == 404, (path, answer.text)


def test_the_schema_of_the_stored_package_is_still_edxml(world):
    package = testkit.signed_package(world["signers"][A], A, [B], [PDF])
    doc = send(world, package, A).json()
    data = api(world, "GET", f"/inbox/{doc['id']}", B).content
    assert etree.fromstring(data).tag == f"{{{edxml.EDXML_NS}}}edXML"


# -- the inbound poller -------------------------------------------------------------------------------

VPCP = {"systemid": NATIONAL, "secret": OTHER_SYSTEMS[NATIONAL]}
PROVINCE = {"systemid": PROVINCE_SYSTEM[0], "secret": PROVINCE_SYSTEM[1]}


def axis_send(world, package: bytes, sender: str = NATIONAL, messagetype: str = "edoc") -> str:
    """A document sent on the national axis by another centre (the Government Office)."""
    answer = httpx.post(f"{world['axis'].url}{API_BASE}/edocs", content=package,
                        headers={**VPCP, "from": sender, "messagetype": messagetype, "servicetype": "eDoc"})
    assert answer.json()["status"] == "OK", answer.text
    return answer.json()["DocID"]


def axis_statuses(world) -> dict[str, list[str]]:
    """DocID → statuses of the recipients not yet "done", of everything the axis still lists for the province."""
    answer = httpx.get(f"{world['axis'].url}{API_BASE}/edocs/received", headers=PROVINCE).json()
    return {item["DocID"]: item["status"] for item in answer["data"]}


def axis_pending(world) -> list[str]:
    return list(axis_statuses(world))


def start_worker(world, name: str) -> Server:
    log = world["tmp"] / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--plane", "worker"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, **world["env"], "LGSP_DOCUMENT_POLL": "0.05"})
    return Server("", proc, log)


def stored_from_axis(world, doc_ids: list[str]) -> list[str]:
    from lgsp.documents.store import packages

    with world["engine"].connect() as conn:
        return list(conn.execute(select(packages.c.axis_doc_id).where(packages.c.axis_doc_id.in_(doc_ids))).scalars())


def test_documents_on_the_national_axis_reach_the_inbox_once_even_when_the_poller_is_killed(world):
    signer = world["signers"][NATIONAL]
    doc_ids = [axis_send(world, testkit.signed_package(signer, NATIONAL, [B], [PDF], number=str(n)))
               for n in range(24)]
    forged = axis_send(world, testkit.signed_package(signer, NATIONAL, [B], [PDF]).replace(b"V/v tri", b"V/V tri"))
    first = start_worker(world, "poller-1")
    try:
        wait_until(lambda: len(stored_from_axis(world, doc_ids)) >= 3, timeout=60)
        first.proc.send_signal(signal.SIGKILL)   # mid-round: some stored, some not, maybe one not acknowledged
        first.proc.wait(10)
        second = start_worker(world, "poller-2")
        try:
            wait_until(lambda: not set(doc_ids) & set(axis_pending(world)), timeout=90)
            # the forged one stays listed; it is audited before it is acknowledged "fail", so "fail" means recorded
            wait_until(lambda: axis_statuses(world).get(forged) == ["fail"], timeout=30)
        finally:
            second.stop()
    finally:
        first.stop()
    stored = stored_from_axis(world, doc_ids)
    assert sorted(stored) == sorted(doc_ids)                              # nothing lost, nothing twice
    inbox = api(world, "GET", "/inbox", B).json()["items"]
    from_axis = [i for i in inbox if i["from"] == NATIONAL]
    assert len(from_axis) == len(doc_ids)
    data = api(world, "GET", f"/inbox/{from_axis[0]['id']}", B).content
    pkg, root = edxml.read(data)
    assert [t.organ_id for t in pkg.traces][-1] == A
    signature.verify(data, root, pkg, world["trust"])
    assert forged not in stored_from_axis(world, [forged])                 # refused, not stored, audited
    assert record_of(world, f"axis:{forged}")["error_code"] == "document.signature_invalid"
    sent = httpx.get(f"{world['axis'].url}{API_BASE}/edocs/{forged}/sent", headers=VPCP).json()["data"]
    assert [d["status"] for d in sent] == ["fail"]
