"""The LGSP's counter-signature (lgsp/documents/countersign.py): on a real gateway with the national axis simulator
behind it, what reaches a local inbox and the national axis carries the sender's signature (still valid) and the
LGSP's; a package counter-signed by another province's axis is still accepted; forged counter-signatures fail."""
from __future__ import annotations

import os
import sys

import httpx
import pytest
from document_world import NATIONAL, PDF, VPCP, build_world
from lxml import etree

from lgsp.documents import countersign, edxml, signature, testkit
from lgsp.documents.edxml import DS_NS
from lgsp.errors import ExchangeError
from lgsp_adapters.national_axis.simulator import API_BASE

A, B = "000.00.00.H30", "000.00.31.H30"
STAMP = "2026-11-30T10:00:00+07:00"


@pytest.fixture(scope="module")
def ca():
    return testkit.make_ca()


@pytest.fixture(scope="module")
def lgsp_id(ca):
    return testkit.make_signer(ca, A, "Trục liên thông tỉnh")   # made here: no key is in the repository


@pytest.fixture(scope="module")
def world(lgsp_env, tmp_path_factory, ca, lgsp_id):
    tmp = tmp_path_factory.mktemp("documents-countersign")
    (tmp / "lgsp.pem").write_bytes(lgsp_id.cert_pem)
    (tmp / "lgsp.key").write_bytes(lgsp_id.key_pem)
    (tmp / "lgsp.key").chmod(0o600)
    env = {"LGSP_DELIVERY_POLL": "0.05", "LGSP_DOCUMENT_POLL": "0.1",
           "LGSP_DOCUMENT_COUNTERSIGN_CERT": str(tmp / "lgsp.pem"),
           "LGSP_DOCUMENT_COUNTERSIGN_KEY": str(tmp / "lgsp.key")}
    with build_world(tmp, {A: "qlvb-cs-a", B: "qlvb-cs-b"}, ca=ca, axis=True, on_axis=[B], env=env) as world:
        yield world


def both_signatures(world, data: bytes) -> countersign.CounterSigner:
    """The sender's signature verifies and the counter-signature too; returns the counter-signer."""
    pkg, root = edxml.read(data)
    signature.verify(data, root, pkg, world.trust)
    found = countersign.verify(data, root, world.trust.path)
    assert found is not None
    return found


def signatures_in(data: bytes) -> int:
    return len(etree.fromstring(data).findall(f".//{{{DS_NS}}}Signature"))


def test_a_local_inbox_gets_the_package_counter_signed_after_the_trace_header(world):
    package = testkit.signed_package(world.signers[A], A, [B], [PDF])
    sent = world.api("POST", "/outbox", A, content=package, headers={"Content-Type": "application/xml"})
    assert sent.status_code == 202, sent.text
    data = world.api("GET", f"/inbox/{sent.json()['id']}", B).content
    assert signatures_in(data) == 2
    counter = both_signatures(world, data)
    assert "Trục liên thông tỉnh" in counter.subject and counter.organ_id == A
    pkg, _ = edxml.read(data)
    assert [(t.organ_id, t.timestamp) for t in pkg.traces] == [(A, counter.timestamp)]   # the hop it vouches for
    start = data.index(b"<ds:Signature", data.index(b"</ds:Signature>"))
    assert data[:start].replace(data[data.index(b"<edXML:TraceHeader>"):data.index(b"</edXML:TraceHeader>") + 20],
                                b"") == package[:package.index(b"</edXML:edXMLHeader>")]


def test_what_goes_to_the_national_axis_is_counter_signed_too(world):
    package = testkit.signed_package(world.signers[A], A, [NATIONAL], [PDF])
    sent = world.api("POST", "/outbox", A, content=package, headers={"Content-Type": "application/xml"}).json()

    def delivered():
        view = world.api("GET", f"/outbox/{sent['id']}", A).json()
        return next((r for r in view["recipients"] if r["delivery"] == "delivered"), None)

    doc_id = world.wait_until(delivered)["axis_doc_id"]
    on_axis = httpx.get(f"{world.axis.url}{API_BASE}/edocs/{doc_id}", headers=VPCP).content
    assert both_signatures(world, on_axis).organ_id == A


def test_a_package_counter_signed_by_another_province_is_accepted_and_keeps_that_counter_signature(world, ca):
    other = testkit.make_signer(ca, "000.00.00.H29", "Trục liên thông tỉnh khác")
    package = testkit.signed_package(world.signers[NATIONAL], NATIONAL, [B], [PDF], number="cs-other")
    pkg, root = edxml.read(package)
    pieces = edxml.trace_pieces(package, pkg, "000.00.00.H29")
    elsewhere = b"".join(countersign.apply(pieces, package, root, "000.00.00.H29", STAMP,
                                           countersign.Identity(other.key, [other.cert])))
    world.axis_send(elsewhere)

    def arrived():
        items = world.api("GET", "/inbox", B).json()["items"]
        return next((i for i in items if i["from"] == NATIONAL and i["document_id"] == pkg.document_id), None)

    item = world.wait_until(arrived)
    data = world.api("GET", f"/inbox/{item['id']}", B).content
    assert signatures_in(data) == 2                                  # not a third: the schema allows two
    assert both_signatures(world, data).organ_id == "000.00.00.H29"
    assert [t.organ_id for t in edxml.read(data)[0].traces] == ["000.00.00.H29", A]


# -- forged counter-signatures (no server) ---------------------------------------------------------------------

def _countersigned(world, lgsp_id) -> bytes:
    package = testkit.signed_package(world.signers[A], A, [B], [PDF])
    pkg, root = edxml.read(package)
    lgsp = countersign.Identity(lgsp_id.key, [lgsp_id.cert])
    return b"".join(countersign.apply(edxml.trace_pieces(package, pkg, A), package, root, A, STAMP, lgsp))


def test_a_changed_hop_in_the_counter_signature_is_refused(world, lgsp_id):
    forged = _countersigned(world, lgsp_id).replace(f"<lgsp:OrganId>{A}".encode(), b"<lgsp:OrganId>000.00.00.H99")
    pkg, root = edxml.read(forged)
    with pytest.raises(ExchangeError) as refused:
        countersign.verify(forged, root, world.trust.path)
    assert refused.value.code == "document.signature_invalid"


def test_a_counter_signature_moved_onto_another_senders_signature_is_refused(world, lgsp_id):
    good = _countersigned(world, lgsp_id)
    counter = good[good.index(b'<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#" Id="lgsp-'):
                   good.index(b"</edXML:edXMLHeader>")]
    officer = testkit.make_signer(world.ca, A, "Phó văn thư")     # the same content, signed by someone else
    other = testkit.signed_package(officer, A, [B], [PDF])
    end = other.index(b"</edXML:edXMLHeader>")
    moved = other[:end] + counter + other[end:]
    pkg, root = edxml.read(moved)
    with pytest.raises(ExchangeError) as refused:
        countersign.verify(moved, root, world.trust.path)
    assert refused.value.code == "document.signature_invalid"
    assert "another sender" in str(refused.value.detail)


def test_an_untrusted_counter_signer_is_refused(world):
    stranger = testkit.make_signer(testkit.make_ca("Other CA"), A)
    package = testkit.signed_package(world.signers[A], A, [B], [PDF])
    pkg, root = edxml.read(package)
    signed = b"".join(countersign.apply(edxml.trace_pieces(package, pkg, A), package, root, A, STAMP,
                                        countersign.Identity(stranger.key, [stranger.cert])))
    pkg, root = edxml.read(signed)
    with pytest.raises(ExchangeError) as refused:
        countersign.verify(signed, root, world.trust.path)
    assert refused.value.code == "document.certificate_untrusted"


def test_a_key_that_is_not_the_certificates_stops_the_gateway_at_start(lgsp_id, tmp_path, lgsp_env):
    import subprocess

    stranger = testkit.make_signer(testkit.make_ca("Other CA"), A)
    (tmp_path / "cert.pem").write_bytes(lgsp_id.cert_pem)
    (tmp_path / "key.pem").write_bytes(stranger.key_pem)
    env = {**os.environ, "LGSP_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "LGSP_DOCUMENT_COUNTERSIGN_CERT": str(tmp_path / "cert.pem"),
           "LGSP_DOCUMENT_COUNTERSIGN_KEY": str(tmp_path / "key.pem")}
    started = subprocess.run([sys.executable, "-m", "lgsp.cli", "serve", "--migrate", "--port", "1"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode != 0 and "counter-signature cannot be made" in started.stderr
    assert "Traceback" not in started.stderr
