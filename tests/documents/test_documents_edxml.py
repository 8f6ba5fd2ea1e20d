"""edXML packages: schema, safe reading, manifest, XML signatures (real signxml signatures from a test CA),
and the trace header each hop appends."""
from __future__ import annotations

import base64
import re

import pytest
from document_world import PDF, trust_store
from lxml import etree

from lgsp.documents import edxml, signature, testkit
from lgsp.errors import ExchangeError

SENDER, LOCAL, NATIONAL, HOP = "000.00.31.H30", "000.00.32.H30", "000.00.00.G22", "000.00.00.H30"
DOCX = ("phu-luc.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", b"PK\x03\x04" * 500)


@pytest.fixture(scope="module")
def ca():
    return testkit.make_ca()


@pytest.fixture(scope="module")
def trust(ca, tmp_path_factory):
    return trust_store(ca, tmp_path_factory.mktemp("trust"))


@pytest.fixture(scope="module")
def signer(ca):
    return testkit.make_signer(ca, SENDER)


@pytest.fixture(scope="module")
def package(signer):
    return testkit.signed_package(signer, SENDER, [LOCAL, NATIONAL], [PDF, DOCX])


def accept(data: bytes, trust, **kw):
    pkg, root = edxml.read(data, **kw)
    return pkg, signature.verify(data, root, pkg, trust)


def refused(code: str, data: bytes, trust, **kw) -> ExchangeError:
    with pytest.raises(ExchangeError) as info:
        accept(data, trust, **kw)
    assert info.value.code == code, info.value.detail
    return info.value


# --- the valid case -------------------------------------------------------------------------------------

def test_a_signed_package_is_read_and_its_signature_verified(package, trust):
    pkg, signer = accept(package, trust)
    assert pkg.kind == "edoc" and pkg.sender == SENDER and pkg.recipients == (LOCAL, NATIONAL)
    assert pkg.document_id == f"{SENDER},2026/11/30,123/UBND-VP"
    assert [(a.name, a.size) for a in pkg.attachments] == [(PDF[0], len(PDF[2])), (DOCX[0], len(DOCX[2]))]
    import hashlib
    assert pkg.attachments[0].sha256 == hashlib.sha256(PDF[2]).hexdigest()
    assert pkg.sha256 == hashlib.sha256(package).hexdigest() and pkg.size == len(package)
    assert signer.subject.endswith(f"O={SENDER},C=VN") and "LGSP Test Root CA" in signer.issuer


def test_the_audit_view_holds_sizes_and_hashes_never_contents(package, trust):
    pkg, _ = accept(package, trust)
    audit = repr(pkg.audit())
    assert "V/v" not in audit and "PDF" not in audit and "Nguyễn" not in audit
    assert pkg.audit()["attachments"][1] == {"content_id": "2", "size": len(DOCX[2]),
                                             "sha256": pkg.attachments[1].sha256}


def test_the_schema_carries_the_standards_version_and_validates_the_kits_packages(signer):
    text = (edxml.files("lgsp_schemas") / "edxml" / "edxml.xsd").read_text()
    assert "QCVN 102:2016/BTTTT" in text and edxml.EDXML_NS in text
    status = testkit.sign(testkit.build_status(LOCAL, SENDER, "x,2026/11/30,1/UBND"), signer)
    edxml.parse(status)


# --- tampering -------------------------------------------------------------------------------------------

def test_one_byte_of_the_header_changed_is_refused(package, trust):
    refused("document.signature_invalid", package.replace(b"Pleiku", b"Pleikv"), trust)


def test_one_byte_of_the_manifest_changed_is_refused(package, trust):
    old = b"<edXML:ContentType>application/pdf</edXML:ContentType><edXML:AttachmentName>cong-van.pdf"
    assert package.count(old) == 1  # the manifest's Reference (an Attachment lists its name first)
    refused("document.signature_invalid", package.replace(old, old.replace(b"/pdf", b"/pdx")), trust)


def test_one_byte_of_an_attachment_changed_is_refused(package, trust):
    encoded = base64.b64encode(PDF[2])
    changed = base64.b64encode(PDF[2][:100] + b"X" + PDF[2][101:])
    assert encoded in package
    refused("document.signature_invalid", package.replace(encoded, changed), trust)


def test_a_sha1_signature_is_refused(signer, trust):
    data = testkit.sign(testkit.build(SENDER, [LOCAL], [PDF]), signer, algorithm="sha1")
    assert b"rsa-sha1" in data
    assert "SHA1" in refused("document.signature_invalid", data, trust).detail


def test_the_same_package_signed_in_sha256_verifies(signer, trust):
    accept(testkit.sign(testkit.build(SENDER, [LOCAL], [PDF]), signer, algorithm="sha256"), trust)


# --- certificates ----------------------------------------------------------------------------------------

def test_an_expired_certificate_is_refused(ca, trust):
    data = testkit.signed_package(testkit.expired_signer(ca, SENDER), SENDER, [LOCAL])
    error = refused("document.certificate_expired", data, trust)
    assert "valid from" in error.detail


def test_a_certificate_from_an_untrusted_ca_is_refused(trust):
    stranger = testkit.make_signer(testkit.make_ca("Some Other CA"), SENDER)
    refused("document.certificate_untrusted", testkit.signed_package(stranger, SENDER, [LOCAL]), trust)


def test_a_self_signed_certificate_claiming_the_trusted_cas_name_is_refused(trust):
    impostor_ca = testkit.make_ca("LGSP Test Root CA")  # same name, other key
    refused("document.certificate_untrusted",
            testkit.signed_package(testkit.make_signer(impostor_ca, SENDER), SENDER, [LOCAL]), trust)


def test_without_a_configured_trust_bundle_nothing_is_trusted(package):
    refused("document.certificate_untrusted", package, None)


def test_an_unsigned_package_is_refused(trust):
    data = etree.tostring(testkit.build(SENDER, [LOCAL], [PDF]))
    assert "no XML signature" in refused("document.signature_invalid", data, trust).detail


# --- wrapping --------------------------------------------------------------------------------------------

def test_a_signature_over_the_header_only_does_not_cover_the_attachments(signer, trust):
    data = testkit.sign(testkit.build(SENDER, [LOCAL], [PDF]), signer, references=[f"#{testkit.HEADER_ID}"])
    refused("document.signature_invalid", data, trust)


NS = {"e": edxml.EDXML_NS}


def wrapped(package: bytes, forge) -> bytes:
    """The signed MessageHeader hidden in an extension slot, and where the standard puts it a copy with another
    Id, changed by `forge`."""
    root = etree.fromstring(package)
    header = root.find("e:edXMLEnvelope/e:edXMLHeader", NS)
    original = header.find("e:MessageHeader", NS)
    forged = etree.fromstring(etree.tostring(original))
    forged.set("Id", "forged")
    forge(forged)
    hideout = etree.SubElement(root.find("e:edXMLEnvelope/e:edXMLHeader/e:TraceHeaderList/e:Bussiness", NS),
                               "{urn:example:ext}Hideout")
    header.replace(original, forged)
    hideout.append(original)
    return etree.tostring(root)


def test_wrapping_a_signed_header_away_and_forging_a_new_one_is_refused(package, trust):
    """Other recipients in the forged header. The signature itself verifies (its reference finds the hidden
    original): binding the references to the standard's positions catches it, and re-deriving From/To from the
    signed XML would."""
    data = wrapped(package, lambda forged: setattr(forged.find("e:To/e:OrganId", NS), "text", "000.00.99.H99"))
    pkg, _tree = edxml.read(data)  # schema-valid: the extension slot is skipped
    assert "000.00.99.H99" in pkg.recipients
    error = refused("document.signature_invalid", data, trust)
    assert "header" in error.detail


def test_a_forged_header_that_keeps_the_routing_fields_is_refused_too(package, trust):
    """Only the subject changed (From, To and the document id kept): the signature must cover the header at the
    standard's position, not one hidden elsewhere."""
    data = wrapped(package, lambda forged: setattr(forged.find("e:Subject", NS), "text", "Forged subject"))
    assert "covers something other" in refused("document.signature_invalid", data, trust).detail


def test_a_signature_that_leaves_out_one_attachment_is_refused(signer, trust):
    root = testkit.build(SENDER, [LOCAL], [PDF, DOCX])
    refs = [r for r in testkit.default_references(root) if r != "cid:2"]
    refused("document.signature_invalid", testkit.sign(root, signer, references=refs), trust)


def test_swapping_two_signed_files_between_content_ids_is_refused(package, trust):
    first, second = base64.b64encode(PDF[2]), base64.b64encode(DOCX[2])
    swapped = package.replace(first, b"@@").replace(second, first).replace(b"@@", second)
    refused("document.signature_invalid", swapped, trust)


def test_an_attachment_named_otherwise_than_in_the_signed_manifest_is_refused(package, trust):
    data = package.replace(b"<edXML:AttachmentName>cong-van.pdf</edXML:AttachmentName><edXML:ContentType>",
                           b"<edXML:AttachmentName>virus.exe</edXML:AttachmentName><edXML:ContentType>")
    assert data != package
    assert "named otherwise" in refused("document.manifest_mismatch", data, trust).detail


def test_base64_with_character_references_is_refused(package, trust):
    encoded = base64.b64encode(DOCX[2])
    data = package.replace(encoded, b"&#85;" + encoded[1:])
    assert data != package
    assert "plain base64" in refused("document.malformed", data, trust).detail


def test_a_second_element_with_the_signed_id_is_refused(package, trust):
    forged = package.replace(b"<edXML:BussinessDocType>0</edXML:BussinessDocType>",
                             b"<edXML:BussinessDocType>0</edXML:BussinessDocType>"
                             b"<x:Copy xmlns:x='urn:x' Id='edxml-header'/>")
    refused("document.signature_invalid", forged, trust)


def test_a_signature_outside_the_header_is_not_looked_for(signer, trust):
    data = testkit.signed_package(signer, SENDER, [LOCAL])
    pattern = rb"<ds:Signature[ >].*</ds:Signature>"
    sig = re.search(pattern, data, flags=re.DOTALL).group(0)
    moved = re.sub(pattern, b"", data, flags=re.DOTALL)
    moved = moved.replace(b"</edXML:BussinessDocType>", b"</edXML:BussinessDocType><x:W xmlns:x='urn:x'>" + sig
                          + b"</x:W>")
    assert "no XML signature" in refused("document.signature_invalid", moved, trust).detail


# --- unsafe and malformed input --------------------------------------------------------------------------

LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<edXML:edXML xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">&lol3;</edXML:edXML>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<edXML:edXML xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">&x;</edXML:edXML>"""


@pytest.mark.parametrize("data", [LAUGHS, XXE, b"<!DOCTYPE edXML><edXML/>"], ids=["laughs", "xxe", "doctype"])
def test_dtds_and_entities_are_refused_before_any_tree_is_built(data, trust):
    error = refused("document.malformed", data, trust)
    assert "DOCTYPE" in error.detail and "root" not in error.detail


def test_an_undeclared_entity_and_broken_xml_are_malformed(trust):
    refused("document.malformed", b"<edXML:edXML xmlns:edXML='x'>&nbsp;</edXML:edXML>", trust)
    refused("document.malformed", b"<edXML:edXML xmlns:edXML='x'><a></edXML:edXML>", trust)


def test_deep_nesting_is_refused(trust):
    refused("document.malformed", b"<a>" * 100 + b"</a>" * 100, trust)


def test_a_package_over_the_limit_is_refused_unread(package, trust):
    refused("document.too_large", package, trust, max_bytes=len(package) - 1)


def test_an_attachment_over_libxml2s_text_limit_is_too_large(signer, trust):
    big = ("scan.pdf", "application/pdf", b"\0" * (edxml.MAX_TEXT // 4 * 3 + 3))
    data = etree.tostring(testkit.build(SENDER, [LOCAL], [big]))
    assert "7.1 MiB" in refused("document.too_large", data, trust).detail


def test_an_element_the_standard_does_not_have_is_schema_invalid(package, trust):
    data = package.replace(b"<edXML:Subject>", b"<edXML:Secret>x</edXML:Secret><edXML:Subject>")
    assert "Secret" in refused("document.schema_invalid", data, trust).detail


def test_a_package_without_recipients_is_schema_invalid(signer, trust):
    refused("document.schema_invalid", testkit.signed_package(signer, SENDER, []), trust)


# --- manifest --------------------------------------------------------------------------------------------

def _drop(root: etree._Element, path: str) -> bytes:
    el = root.find(path, {"e": edxml.EDXML_NS})
    el.getparent().remove(el)
    return etree.tostring(root)


def test_a_manifest_reference_without_its_attachment_is_refused(trust):
    data = _drop(testkit.build(SENDER, [LOCAL], [PDF, DOCX]), "e:AttachmentEncoded/e:Attachment[2]")
    assert "'cid:2'" in refused("document.manifest_mismatch", data, trust).detail.replace("'2'", "'cid:2'")


def test_an_attachment_the_manifest_does_not_list_is_refused(trust):
    data = _drop(testkit.build(SENDER, [LOCAL], [PDF, DOCX]),
                 "e:edXMLEnvelope/e:edXMLBody/e:edXMLManifest/e:Reference[1]")
    assert "does not list" in refused("document.manifest_mismatch", data, trust).detail


def test_a_content_id_used_twice_is_refused(trust):
    data = etree.tostring(testkit.build(SENDER, [LOCAL], [PDF, DOCX])).replace(b"cid:2", b"cid:1")
    assert "more than once" in refused("document.manifest_mismatch", data, trust).detail


# --- trace header ----------------------------------------------------------------------------------------

def _inserted(before: bytes, after: bytes, at: int) -> tuple[bytes, bytes, bytes]:
    """(bytes before ``at``, the inserted bytes, the rest)."""
    n = len(after) - len(before)
    return after[:at], after[at:at + n], after[at + n:]


def test_a_trace_header_appended_keeps_every_other_byte_and_the_signature(package, trust):
    pkg, _ = accept(package, trust)
    once = edxml.append_trace(package, pkg, HOP)
    head, inserted, tail = _inserted(package, once, pkg.trace_at)
    assert head + tail == package
    assert re.fullmatch(rb"<edXML:TraceHeader><edXML:OrganId>000\.00\.00\.H30</edXML:OrganId>"
                        rb"<edXML:Timestamp>[0-9T:+-]+</edXML:Timestamp></edXML:TraceHeader>", inserted)
    pkg2, _signer = accept(once, trust)
    assert [t.organ_id for t in pkg2.traces] == [HOP]
    twice = edxml.append_trace(once, pkg2, NATIONAL)
    pkg3, _ = accept(twice, trust)
    assert [t.organ_id for t in pkg3.traces] == [HOP, NATIONAL]


def test_a_trace_list_is_created_when_the_package_has_none(signer, trust):
    data = testkit.sign(testkit.build(SENDER, [LOCAL], [PDF], with_trace_list=False), signer)
    pkg, _ = accept(data, trust)
    out = edxml.append_trace(data, pkg, HOP)
    assert out.count(b"TraceHeaderList>") == 2
    assert [t.organ_id for t in accept(out, trust)[0].traces] == [HOP]


def test_a_status_message_with_an_empty_trace_list_gets_its_trace(signer, trust):
    data = testkit.sign(testkit.build_status(SENDER, LOCAL, f"{LOCAL},2026/11/30,5/STTTT", "03"), signer)
    assert b"<edXML:TraceHeaderList/>" in data
    pkg, _ = accept(data, trust)
    assert (pkg.kind, pkg.sender, pkg.recipients, pkg.status_code) == ("status", SENDER, (LOCAL,), "03")
    out = edxml.append_trace(data, pkg, HOP)
    assert [t.organ_id for t in accept(out, trust)[0].traces] == [HOP]


@pytest.mark.parametrize("with_list", [True, False], ids=["list", "no-list"])
def test_a_package_in_the_default_namespace_gets_an_unprefixed_trace_header(signer, trust, with_list):
    data = testkit.sign(testkit.build(SENDER, [LOCAL], [PDF], default_namespace=True, with_trace_list=with_list),
                        signer)
    assert b"<edXML:" not in data
    pkg, _ = accept(data, trust)
    out = edxml.append_trace(data, pkg, HOP)
    assert b"<TraceHeader><OrganId>000.00.00.H30</OrganId>" in out
    assert [t.organ_id for t in accept(out, trust)[0].traces] == [HOP]


@pytest.mark.parametrize("data", [
    "<?xml version='1.0' encoding='ISO-8859-1'?><edXML xmlns='http://www.mic.gov.vn/TBT/QCVN_102_2016'/>".encode(
        "latin-1"),
    "<?xml version='1.0' encoding='UTF-16'?><edXML/>".encode("utf-16"),
], ids=["latin-1", "utf-16"])
def test_a_package_not_in_utf8_is_refused(data, trust):
    assert "UTF-8" in refused("document.malformed", data, trust).detail


def test_the_trace_header_escapes_the_organ_id(package, trust):
    pkg, _ = accept(package, trust)
    out = edxml.append_trace(package, pkg, "A&B")
    assert b"<edXML:OrganId>A&amp;B</edXML:OrganId>" in out
