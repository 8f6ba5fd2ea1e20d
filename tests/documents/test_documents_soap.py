"""The documents API over SOAP (wsdl/documents/documents.wsdl), on a real gateway on loopback, called by zeep
from the WSDL the gateway serves: sending, inbox, package, acknowledgement and outbox status, the same refusals
and codes as the REST door (as SOAP Faults, audited), and the envelope reader's hardening."""
from __future__ import annotations

import base64
import secrets

import httpx
import pytest
import requests
import zeep
from document_world import PDF, build_world
from helpers import NS, fault_code
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

from lgsp.documents import edxml, signature, testkit

A, B, C = "000.00.00.H30", "000.00.31.H30", "000.00.32.H30"
MAX_BYTES = 9_000_000  # room for a package whose base64 is over libxml2's 10,000,000-character text node
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"


@pytest.fixture(scope="module")
def world(lgsp_env, tmp_path_factory):
    agencies = {A: "qlvb-soap-a", B: "qlvb-soap-b", C: "qlvb-soap-c"}
    with build_world(tmp_path_factory.mktemp("documents-soap"), agencies,
                        env={"LGSP_DOCUMENT_MAX_BYTES": str(MAX_BYTES)}) as world:
        yield world


def client(world, agency: str | None, *, wsse=None, request_id: str | None = None) -> zeep.Client:
    session = requests.Session()
    if agency:
        session.headers["Authorization"] = f"Bearer {world.tokens[agency]}"
    if request_id:
        session.headers["X-Request-ID"] = request_id
    return zeep.Client(f"{world.gw.url}/soap/documents/v1?wsdl", transport=Transport(session=session), wsse=wsse)


def post_raw(world, envelope: bytes, agency: str | None = A, request_id: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    if agency:
        headers["Authorization"] = f"Bearer {world.tokens[agency]}"
    if request_id:
        headers["X-Request-ID"] = request_id
    return httpx.post(f"{world.gw.url}/soap/documents/v1", content=envelope, headers=headers, timeout=60)


def send_envelope(package_text: bytes | str) -> bytes:
    text = package_text.encode() if isinstance(package_text, str) else package_text
    return (b'<soap:Envelope xmlns:soap="' + SOAP11.encode() + b'" xmlns:d="urn:lgsp:documents:v1"><soap:Body>'
            b"<d:SendDocument><d:package>" + text + b"</d:package></d:SendDocument></soap:Body></soap:Envelope>")


def raw_fault_code(answer: httpx.Response) -> str:
    from lxml import etree

    return etree.fromstring(answer.content).find(".//lgsp:code", NS).text


# -- the contract ---------------------------------------------------------------------------------------

def test_the_wsdl_is_served_with_its_schema_and_its_address_at_this_gateway(world):
    wsdl = httpx.get(f"{world.gw.url}/soap/documents/v1?wsdl")
    assert wsdl.status_code == 200 and b"urn:lgsp:documents:v1" in wsdl.content
    assert f'location="{world.gw.url}/soap/documents/v1"'.encode() in wsdl.content
    xsd = httpx.get(f"{world.gw.url}/soap/documents/v1?xsd")
    assert xsd.status_code == 200 and b'name="SendDocument"' in xsd.content
    operations = set(client(world, A).service._binding._operations)
    assert operations == {"SendDocument", "GetInbox", "GetDocument", "UpdateStatus", "GetOutboxStatus"}


# -- the way through --------------------------------------------------------------------------------------

def test_a_document_sent_over_soap_is_read_over_rest_and_soap_as_sent_plus_the_trace_header(world):
    package = testkit.signed_package(world.signers[A], A, [B], [PDF], subject="Bí mật nội dung")
    sent = client(world, A).service.SendDocument(package=package, request_id="doc-soap-1")
    assert [(r.agency, r.route) for r in sent.recipient] == [(B, "inbox")] and sent.kind == "edoc"

    listed = client(world, B).service.GetInbox()
    item = next(i for i in listed.item if i.id == sent.id)
    assert (item["from"], item.to, item.kind) == (A, B, "edoc") and B in listed.agency
    over_soap = client(world, B).service.GetDocument(id=sent.id)
    over_rest = world.api("GET", f"/inbox/{sent.id}", B).content
    assert over_soap == over_rest and testkit.without_trace(over_soap, A) == package
    pkg, root = edxml.read(over_soap)
    assert signature.verify(over_soap, root, pkg, world.trust).subject

    assert client(world, C).service.GetInbox().item == [] or sent.id not in [
        i.id for i in client(world, C).service.GetInbox().item]
    with pytest.raises(zeep.exceptions.Fault) as other:
        client(world, C).service.GetDocument(id=sent.id)
    assert fault_code(other.value) == "record.not_found"

    done = client(world, B).service.UpdateStatus(id=sent.id, status="done")
    assert (done.agency, done.status) == (B, "done")
    view = client(world, A).service.GetOutboxStatus(id=sent.id)
    assert [(r.agency, r.route, r.delivery) for r in view.recipient] == [(B, "inbox", "done")]
    assert view.sha256 == sent.sha256

    record = world.record_of("doc-soap-1")
    assert (record["door"], record["service"], record["status"]) == ("soap", "documents.send", 202)
    assert record["detail"]["stored"]["id"] == sent.id
    assert "Bí mật".encode() not in str(record).encode() and "cong-van.pdf" not in str(record)


def test_a_ws_security_username_token_identifies_the_caller(world):
    cid, secret = world.clients[A]
    package = testkit.signed_package(world.signers[A], A, [C], [PDF])
    sent = client(world, None, wsse=UsernameToken(cid, secret)).service.SendDocument(package=package)
    assert [(r.agency, r.route) for r in sent.recipient] == [(C, "inbox")]


def test_a_package_over_libxml2s_text_node_bound_is_decoded_as_it_arrives(world):
    files = [(f"phu-luc-{i}.bin", "application/octet-stream", secrets.token_bytes(3_000_000)) for i in range(2)]
    package = testkit.signed_package(world.signers[A], A, [B], files)
    assert len(base64.b64encode(package)) > 10_000_000
    sent = client(world, A).service.SendDocument(package=package)
    got = world.api("GET", f"/inbox/{sent.id}", B).content
    assert testkit.without_trace(got, A) == package


# -- refusals: SOAP Faults with the REST door's codes, nothing stored, audited -----------------------------------

def _tampered(world) -> bytes:
    return testkit.signed_package(world.signers[A], A, [B], [PDF]).replace(b"V/v tri", b"V/V tri")


REFUSALS = {
    "bad-signature": (_tampered, "document.signature_invalid"),
    "not-the-caller": (lambda w: testkit.signed_package(w.signers[B], B, [C], [PDF]), "document.sender_mismatch"),
    "unknown-recipient": (lambda w: testkit.signed_package(w.signers[A], A, [B, "000.00.99.H30"], [PDF]),
                          "document.unknown_recipient"),
    "not-edxml": (lambda w: b"<x>not edXML</x>", "document.schema_invalid"),
    "entity-in-package": (lambda w: b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>",
                          "document.malformed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_package_is_a_fault_with_its_code_nothing_stored_and_audited(world, case):
    make, code = REFUSALS[case]
    before = world.stored_count()
    request_id = f"doc-soap-refused-{case}"
    with pytest.raises(zeep.exceptions.Fault) as fault:
        client(world, A).service.SendDocument(package=make(world), request_id=request_id)
    assert fault_code(fault.value) == code and fault.value.message and "Traceback" not in fault.value.message
    assert world.stored_count() == before
    record = world.record_of(request_id)
    assert (record["error_code"], record["door"], record["client_id"]) == (code, "soap", "qlvb-soap-a")


def test_without_a_token_it_is_a_fault_and_audited(world):
    package = testkit.signed_package(world.signers[A], A, [B], [PDF])
    with pytest.raises(zeep.exceptions.Fault) as fault:
        client(world, None).service.SendDocument(package=package, request_id="doc-soap-anonymous")
    assert fault_code(fault.value).startswith("auth.")
    record = world.record_of("doc-soap-anonymous")
    assert record["service"] == "documents.send" and record["error_code"].startswith("auth.")


def test_an_acknowledgement_outside_the_code_list_is_refused_by_the_schema(world):
    with pytest.raises(zeep.exceptions.Fault) as fault:
        client(world, B).service.UpdateStatus(id="00000000-0000-0000-0000-000000000000", status="read")
    assert fault_code(fault.value) == "request.invalid"


# -- the envelope reader's hardening ---------------------------------------------------------------------------

def test_a_doctype_or_entity_in_the_envelope_is_refused_before_anything_else(world):
    envelope = (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + send_envelope(b"&e;"))
    answer = post_raw(world, envelope, request_id="doc-soap-dtd")
    assert answer.status_code == 500 and raw_fault_code(answer) == "request.invalid"
    assert b"DOCTYPE" in answer.content and b"root:" not in answer.content
    assert world.record_of("doc-soap-dtd")["error_code"] == "request.invalid"


def test_a_message_over_the_bound_is_refused_as_too_large(world):
    big = base64.b64encode(secrets.token_bytes(MAX_BYTES + 3))
    answer = post_raw(world, send_envelope(big), request_id="doc-soap-big")
    assert raw_fault_code(answer) == "document.too_large"
    assert world.record_of("doc-soap-big")["error_code"] == "document.too_large"


def test_bad_base64_and_deep_nesting_are_refused(world):
    assert raw_fault_code(post_raw(world, send_envelope("QUJD=QUJD"))) == "request.invalid"
    assert raw_fault_code(post_raw(world, send_envelope("not base64 at all!"))) == "request.invalid"
    deep = b"<d:package>" + b"<a>" * 80 + b"</a>" * 80 + b"</d:package>"
    envelope = send_envelope(b"").replace(b"<d:package></d:package>", deep)
    assert raw_fault_code(post_raw(world, envelope)) == "request.invalid"
    answer = post_raw(world, send_envelope(b"").replace(b"SendDocument", b"DeleteEverything"))
    assert raw_fault_code(answer) == "request.not_found"


def test_a_soap_12_envelope_is_answered_in_soap_12(world):
    soap12 = "http://www.w3.org/2003/05/soap-envelope"
    envelope = (f'<s:Envelope xmlns:s="{soap12}" xmlns:d="urn:lgsp:documents:v1"><s:Body><d:GetInbox/></s:Body>'
                f'</s:Envelope>').encode()
    answer = httpx.post(f"{world.gw.url}/soap/documents/v1", content=envelope, timeout=30,
                        headers={"Content-Type": "application/soap+xml; charset=utf-8",
                                 "Authorization": f"Bearer {world.tokens[B]}"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/soap+xml")
    assert soap12.encode() in answer.content and b"GetInboxResponse" in answer.content


def test_a_password_digest_username_token_is_refused_as_unsupported(world):
    cid, secret = world.clients[A]
    with pytest.raises(zeep.exceptions.Fault) as fault:
        client(world, None, wsse=UsernameToken(cid, secret, use_digest=True)).service.GetInbox(
            request_id="doc-soap-digest")
    assert fault_code(fault.value) == "auth.digest_unsupported"
    assert world.record_of("doc-soap-digest")["error_code"] == "auth.digest_unsupported"


def test_an_operation_outside_the_envelopes_body_is_not_read_as_one(world):
    envelope = send_envelope(b"QUJD").replace(b"<soap:Body>", b'<x:Body xmlns:x="urn:elsewhere">').replace(
        b"</soap:Body>", b"</x:Body>")
    assert raw_fault_code(post_raw(world, envelope)) == "request.invalid"
