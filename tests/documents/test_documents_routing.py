"""Routing on the provincial document exchange axis, on a real gateway (loopback) with the national axis
simulator behind it: the outbox (POST a signed edXML package), inboxes, acknowledgements, status messages
back to the sender, delivery to the national axis through the delivery engine, and the refusals."""
from __future__ import annotations

import secrets
import signal

import httpx
import pytest
from document_world import NATIONAL, PDF, VPCP, build_world
from lxml import etree
from sqlalchemy import select

from lgsp.documents import edxml, signature, testkit
from lgsp_adapters.national_axis.simulator import API_BASE

A, B, C = "000.00.00.H30", "000.00.31.H30", "000.00.32.H30"   # local agencies (A is known to the axis)
MAX_BYTES = 2_000_000


@pytest.fixture(scope="module")
def world(lgsp_env, tmp_path_factory):
    env = {"LGSP_DOCUMENT_MAX_BYTES": str(MAX_BYTES), "LGSP_DELIVERY_POLL": "0.05"}
    # B is registered on the national axis as an agency of this province's centre (registerAgency).
    with build_world(tmp_path_factory.mktemp("documents"), {A: "qlvb-a", B: "qlvb-b", C: "qlvb-c"},
                        axis=True, on_axis=[B], env=env) as world:
        yield world


def send(world, package: bytes, agency: str | None, **headers: str) -> httpx.Response:
    return world.api("POST", "/outbox", agency, content=package, headers={"Content-Type": "application/xml", **headers})


# -- the local path ------------------------------------------------------------------------------------

def test_a_signed_document_reaches_the_local_inbox_as_sent_plus_the_trace_header(world):
    package = testkit.signed_package(world.signers[A], A, [B], [PDF], subject="Bí mật nội dung")
    sent = send(world, package, A, **{"X-Request-ID": "doc-local-1"})
    assert sent.status_code == 202, sent.text
    doc = sent.json()
    assert doc["recipients"] == [{"agency": B, "route": "inbox"}] and sent.headers["location"] == doc["status_url"]

    listed = world.api("GET", "/inbox", B).json()["items"]
    item = next(i for i in listed if i["id"] == doc["id"])
    assert item["from"] == A and item["to"] == B and item["kind"] == "edoc"
    got = world.api("GET", f"/inbox/{doc['id']}", B)
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/xml")
    data = got.content
    assert testkit.without_trace(data, A) == package                      # byte-identical but for this hop
    pkg, root = edxml.read(data)
    assert [t.organ_id for t in pkg.traces] == [A]
    assert signature.verify(data, root, pkg, world.trust).subject   # the sender's signature, by signxml

    record = world.record_of("doc-local-1")
    assert record["service"] == "documents.send" and record["status"] == 202
    detail = record["detail"]
    assert detail["document"]["sha256"] == pkg.sha256 or detail["document"]["size"] == len(package)
    assert detail["stored"] == {"id": doc["id"], "size": len(data), "sha256": doc["sha256"]}
    assert "Bí mật".encode() not in str(record).encode() and "cong-van.pdf" not in str(record)


def test_only_the_addressed_agency_reads_and_acknowledges_and_the_sender_sees_it(world):
    package = testkit.signed_package(world.signers[A], A, [B], [PDF])
    doc = send(world, package, A).json()
    other = world.api("GET", f"/inbox/{doc['id']}", C)
    assert other.status_code == 404 and other.json()["code"] == "record.not_found"
    assert doc["id"] not in [i["id"] for i in world.api("GET", "/inbox", C).json()["items"]]
    assert world.api("POST", f"/inbox/{doc['id']}/status", C, json={"status": "done"}).status_code == 404
    assert world.api("GET", f"/outbox/{doc['id']}", B).status_code == 404     # not B's sending

    bad = world.api("POST", f"/inbox/{doc['id']}/status", B, json={"status": "read"})
    assert bad.status_code == 400 and bad.json()["code"] == "request.invalid"
    assert world.api("POST", f"/inbox/{doc['id']}/status", B, json={"status": "processing"}).status_code == 200
    assert doc["id"] in [i["id"] for i in world.api("GET", "/inbox", B).json()["items"]]
    assert world.api("POST", f"/inbox/{doc['id']}/status", B, json={"status": "done"}).status_code == 200
    assert doc["id"] not in [i["id"] for i in world.api("GET", "/inbox", B).json()["items"]]
    view = world.api("GET", f"/outbox/{doc['id']}", A).json()
    assert [(r["agency"], r["route"], r["delivery"]) for r in view["recipients"]] == [(B, "inbox", "done")]


def test_a_status_message_travels_back_to_the_sender_and_shows_in_the_outbox(world):
    package = testkit.signed_package(world.signers[A], A, [B], [PDF])
    doc = send(world, package, A).json()
    document_id = edxml.scan(package).document_id
    assert document_id
    status = testkit.sign(testkit.build_status(B, A, document_id, "03", description="Đã vào sổ"),
                          world.signers[B])
    answered = send(world, status, B)
    assert answered.status_code == 202, answered.text
    assert answered.json()["recipients"] == [{"agency": A, "route": "inbox"}]
    items = world.api("GET", "/inbox", A).json()["items"]
    mine = next(i for i in items if i["id"] == answered.json()["id"])
    assert (mine["kind"], mine["from"], mine["status_code"], mine["response_for"]) == ("status", B, "03", document_id)
    view = world.api("GET", f"/outbox/{doc['id']}", A).json()
    assert view["recipients"][0]["status"]["code"] == "03"
    assert view["recipients"][0]["status"]["meaning"] == "registered"


# -- the national axis ---------------------------------------------------------------------------------

def test_a_document_to_a_national_agency_is_delivered_through_the_national_axis(world):
    package = testkit.signed_package(world.signers[A], A, [NATIONAL], [PDF])
    doc = send(world, package, A).json()
    assert doc["recipients"] == [{"agency": NATIONAL, "route": "national-axis"}]

    def delivered():
        view = world.api("GET", f"/outbox/{doc['id']}", A).json()
        axis = next(r for r in view["recipients"] if r["agency"] == NATIONAL)
        return axis if axis["delivery"] == "delivered" else None

    axis_route = world.wait_until(delivered)
    pending = httpx.get(f"{world.axis.url}{API_BASE}/edocs/received", headers=VPCP).json()["data"]
    assert axis_route["axis_doc_id"] in [p["DocID"] for p in pending]
    on_axis = httpx.get(f"{world.axis.url}{API_BASE}/edocs/{axis_route['axis_doc_id']}", headers=VPCP).content
    assert testkit.without_trace(on_axis, A) == package
    pkg, root = edxml.read(on_axis)
    signature.verify(on_axis, root, pkg, world.trust)


# -- refusals: 4xx problem+json, nothing stored, audited ----------------------------------------------------

def _tampered(world) -> bytes:
    package = testkit.signed_package(world.signers[A], A, [B], [PDF])
    return package.replace(b"V/v tri", b"V/V tri")


def _no_manifest_entry(world) -> bytes:
    root = testkit.build(A, [B], [PDF])
    for ref in root.iter("{%s}Reference" % edxml.EDXML_NS):
        ref.getparent().remove(ref)
    return testkit.sign(root, world.signers[A])


REFUSALS = {
    "malformed": (lambda w: b"<edXML:edXML xmlns:edXML='x'><a></edXML:edXML>", A, 400, "document.malformed"),
    "dtd": (lambda w: b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>", A, 400,
            "document.malformed"),
    "not-the-caller": (lambda w: testkit.signed_package(w.signers[B], B, [C], [PDF]), A, 403,
                       "document.sender_mismatch"),
    "unknown-recipient": (lambda w: testkit.signed_package(w.signers[A], A, [B, "000.00.99.H30"], [PDF]), A, 400,
                          "document.unknown_recipient"),
    "no-manifest-entry": (_no_manifest_entry, A, 400, "document.manifest_mismatch"),
    "bad-signature": (_tampered, A, 400, "document.signature_invalid"),
    "untrusted": (lambda w: testkit.signed_package(testkit.make_signer(testkit.make_ca("Other CA"), A), A, [B], [PDF]),
                  A, 400, "document.certificate_untrusted"),
    "too-large": (lambda w: testkit.signed_package(w.signers[A], A, [B], [
        (f"phu-luc-{i}.bin", "application/octet-stream", secrets.token_bytes(700_000)) for i in range(3)]),
        A, 413, "document.too_large"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_package_is_refused_with_its_code_nothing_stored_and_audited(world, case):
    make, caller, status, code = REFUSALS[case]
    package = make(world)
    before = world.stored_count()
    request_id = f"doc-refused-{case}"
    answer = send(world, package, caller, **{"X-Request-ID": request_id})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["code"] == code and problem["detail"] and "Traceback" not in answer.text
    assert world.stored_count() == before
    record = world.record_of(request_id)
    assert record["error_code"] == code and record["client_id"] == "qlvb-a"


def test_without_a_token_the_body_is_not_read_and_the_refusal_is_audited(world):
    package = testkit.signed_package(world.signers[A], A, [B], [PDF])
    answer = send(world, package, None, **{"X-Request-ID": "doc-anonymous"})
    assert answer.status_code == 401 and answer.json()["code"].startswith("auth.")
    assert world.record_of("doc-anonymous")["service"] == "documents.send"


def test_an_inbox_item_id_that_is_not_one_is_not_found(world):
    for path in ("/inbox/../../etc", "/inbox/not-an-id", "/outbox/00000000-0000-0000-0000-000000000000"):
        answer = world.api("GET", path, B)
        assert answer.status_code == 404, (path, answer.text)


def test_the_schema_of_the_stored_package_is_still_edxml(world):
    package = testkit.signed_package(world.signers[A], A, [B], [PDF])
    doc = send(world, package, A).json()
    data = world.api("GET", f"/inbox/{doc['id']}", B).content
    assert etree.fromstring(data).tag == f"{{{edxml.EDXML_NS}}}edXML"


# -- the inbound poller -------------------------------------------------------------------------------

def axis_pending(world) -> list[str]:
    return list(world.axis_statuses())


def stored_from_axis(world, doc_ids: list[str]) -> list[str]:
    from lgsp.documents.store import packages

    with world.engine.connect() as conn:
        return list(conn.execute(select(packages.c.axis_doc_id).where(packages.c.axis_doc_id.in_(doc_ids))).scalars())


def test_documents_on_the_national_axis_reach_the_inbox_once_even_when_the_poller_is_killed(world):
    signer = world.signers[NATIONAL]
    doc_ids = [world.axis_send(testkit.signed_package(signer, NATIONAL, [B], [PDF], number=str(n)))
               for n in range(24)]
    forged = world.axis_send(testkit.signed_package(signer, NATIONAL, [B], [PDF]).replace(b"V/v tri", b"V/V tri"))
    first = world.start_worker("poller-1", LGSP_DOCUMENT_POLL="0.05")
    try:
        world.wait_until(lambda: len(stored_from_axis(world, doc_ids)) >= 3, timeout=60)
        first.proc.send_signal(signal.SIGKILL)   # mid-round: some stored, some not, maybe one not acknowledged
        first.proc.wait(10)
        second = world.start_worker("poller-2", LGSP_DOCUMENT_POLL="0.05")
        try:
            world.wait_until(lambda: not set(doc_ids) & set(axis_pending(world)), timeout=90)
            # the forged one stays listed; it is audited before it is acknowledged "fail", so "fail" means recorded
            world.wait_until(lambda: world.axis_statuses().get(forged) == ["fail"], timeout=30)
        finally:
            second.stop()
    finally:
        first.stop()
    stored = stored_from_axis(world, doc_ids)
    assert sorted(stored) == sorted(doc_ids)                              # nothing lost, nothing twice
    inbox = world.api("GET", "/inbox", B).json()["items"]
    from_axis = [i for i in inbox if i["from"] == NATIONAL]
    assert len(from_axis) == len(doc_ids)
    data = world.api("GET", f"/inbox/{from_axis[0]['id']}", B).content
    pkg, root = edxml.read(data)
    assert [t.organ_id for t in pkg.traces][-1] == A
    signature.verify(data, root, pkg, world.trust)
    assert forged not in stored_from_axis(world, [forged])                 # refused, not stored, audited
    assert world.record_of(f"axis:{forged}")["error_code"] == "document.signature_invalid"
    sent = httpx.get(f"{world.axis.url}{API_BASE}/edocs/{forged}/sent", headers=VPCP).json()["data"]
    assert [d["status"] for d in sent] == ["fail"]
