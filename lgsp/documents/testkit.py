"""A small kit that makes what agencies' systems would send: a CA, agency certificates, signed edXML packages.

For the tests, the demo and the benchmarks — never for production signing (keys are generated in memory).
Packages follow the LGSP's signing profile (docs/documents.md): one XMLDSig inside edXMLHeader, RSA-SHA256,
exclusive c14n, the signer's certificate in KeyInfo, references by Id to MessageHeader (or Status) and
edXMLBody, and by ``cid:N`` to each attachment's file.
"""
from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from lgsp.documents.edxml import DS_NS, EDXML_NS

HEADER_ID, BODY_ID = "edxml-header", "edxml-body"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"


def _NOW() -> dt.datetime:  # reads like the constant it stands for
    return dt.datetime.now(dt.UTC)


@dataclass
class Identity:
    """A key and its certificate (a CA's or an agency's)."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_ca(name: str = "LGSP Test Root CA") -> Identity:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"), x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW() - dt.timedelta(days=1)).not_valid_after(_NOW() + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return Identity(key, cert)


def make_signer(ca: Identity, agency_code: str, name: str = "Văn thư", *,
                not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> Identity:
    """An agency officer's signing certificate issued by ``ca`` (valid a year from yesterday unless told)."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, agency_code),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = not_before or _NOW() - dt.timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(not_after or start + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return Identity(key, cert)


def expired_signer(ca: Identity, agency_code: str) -> Identity:
    """A certificate that expired yesterday."""
    return make_signer(ca, agency_code, not_before=_NOW() - dt.timedelta(days=400),
                       not_after=_NOW() - dt.timedelta(days=1))


# --- packages ---------------------------------------------------------------------------------------------

def _el(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, f"{{{EDXML_NS}}}{tag}", attrs)
    if text is not None:
        el.text = text
    return el


def _organ(parent: etree._Element, tag: str, organ_id: str, name: str | None = None) -> None:
    organ = _el(parent, tag)
    _el(organ, "OrganId", organ_id)
    _el(organ, "OrganName", name or f"Cơ quan {organ_id}")


def build(sender: str, recipients: Sequence[str], attachments: Iterable[tuple[str, str, bytes]] = (), *,
          number: str = "123", notation: str = "UBND-VP", subject: str = "V/v triển khai chia sẻ dữ liệu",
          traces: Sequence[tuple[str, str]] = (), with_trace_list: bool = True,
          default_namespace: bool = False) -> etree._Element:
    """An unsigned edXML document: ``attachments`` are (name, content type, file bytes); with
    ``default_namespace`` the edXML elements carry no prefix."""
    root = etree.Element(f"{{{EDXML_NS}}}edXML", nsmap={None if default_namespace else "edXML": EDXML_NS})
    envelope = _el(root, "edXMLEnvelope")
    header = _el(envelope, "edXMLHeader")
    message = _el(header, "MessageHeader", Id=HEADER_ID)
    _organ(message, "From", sender)
    for to in recipients:
        _organ(message, "To", to)
    _el(message, "DocumentId", f"{sender},2026/11/30,{number}/{notation}")
    code = _el(message, "Code")
    _el(code, "CodeNumber", number)
    _el(code, "CodeNotation", notation)
    info = _el(message, "PromulgationInfo")
    _el(info, "Place", "Pleiku")
    _el(info, "PromulgationDate", "2026-11-30")
    kind = _el(message, "DocumentType")
    _el(kind, "Type", "1")
    _el(kind, "TypeName", "Công văn")
    _el(message, "Subject", subject)
    signer = _el(message, "SignerInfo")
    _el(signer, "Position", "Chánh Văn phòng")
    _el(signer, "FullName", "Nguyễn Văn An")
    if with_trace_list:
        trace_list = _el(header, "TraceHeaderList")
        for organ_id, when in traces:
            trace = _el(trace_list, "TraceHeader")
            _el(trace, "OrganId", organ_id)
            _el(trace, "Timestamp", when)
        business = _el(trace_list, "Bussiness")
        _el(business, "BussinessDocType", "0")
    body = _el(envelope, "edXMLBody", Id=BODY_ID)
    manifest = _el(body, "edXMLManifest")
    encoded = _el(root, "AttachmentEncoded")
    for n, (name, content_type, content) in enumerate(attachments, 1):
        ref = _el(manifest, "Reference")
        _el(ref, "ContentId", f"cid:{n}")
        _el(ref, "ContentType", content_type)
        _el(ref, "AttachmentName", name)
        att = _el(encoded, "Attachment")
        _el(att, "ContentId", str(n))
        _el(att, "AttachmentName", name)
        _el(att, "ContentType", content_type)
        _el(att, "ContentTransferEncoded", base64.b64encode(content).decode("ascii"))
    return root


def build_status(sender: str, original_sender: str, document_id: str, status_code: str = "01", *,
                 description: str = "Đã đến") -> etree._Element:
    """An unsigned status message answering ``document_id``."""
    root = etree.Element(f"{{{EDXML_NS}}}edXML", nsmap={"edXML": EDXML_NS})
    header = _el(_el(root, "edXMLEnvelope"), "edXMLHeader")
    status = _el(header, "Status", Id=HEADER_ID)
    response = _el(status, "ResponseFor")
    _el(response, "OrganId", original_sender)
    _el(response, "DocumentId", document_id)
    _organ(status, "From", sender)
    _el(status, "StatusCode", status_code)
    _el(status, "Description", description)
    _el(status, "Timestamp", "30/11/2026 10:00:00")
    _el(header, "TraceHeaderList")
    return root


ALGORITHMS = {  # name -> (SignatureMethod, DigestMethod, hash)
    "sha256": ("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256", "http://www.w3.org/2001/04/xmlenc#sha256",
               hashes.SHA256),
    "sha1": ("http://www.w3.org/2000/09/xmldsig#rsa-sha1", "http://www.w3.org/2000/09/xmldsig#sha1", hashes.SHA1),
}


def default_references(root: etree._Element) -> list[str]:
    """What the profile signs: header and body by Id, each attachment's file by ``cid:``."""
    refs = [f"#{el.get('Id')}" for el in root.iter() if el.get("Id") in (HEADER_ID, BODY_ID)]
    refs += [f"cid:{cid}" for cid in root.xpath("e:AttachmentEncoded/e:Attachment/e:ContentId/text()",
                                                   namespaces={"e": EDXML_NS})]
    return refs


def sign(root: etree._Element, signer: Identity, *, references: Sequence[str] | None = None,
         algorithm: str = "sha256") -> bytes:
    """The package signed by ``signer`` in the LGSP's profile (docs/documents.md), serialised.

    signxml, which verifies, cannot sign ``cid:`` references, so the kit writes the XMLDSig elements
    itself; each digest is over lxml's exclusive c14n of the referenced element, or over the file's
    bytes for a ``cid:`` reference, and the signature over the exclusive c14n of SignedInfo."""
    from cryptography.hazmat.primitives.asymmetric import padding

    signature_method, digest_method, hash_cls = ALGORITHMS[algorithm]
    ns = {"e": EDXML_NS}
    files = {cid: base64.b64decode(text) for cid, text in zip(
        root.xpath("e:AttachmentEncoded/e:Attachment/e:ContentId/text()", namespaces=ns),
        root.xpath("e:AttachmentEncoded/e:Attachment/e:ContentTransferEncoded/text()", namespaces=ns))}

    def ds(tag: str) -> str:
        return f"{{{DS_NS}}}{tag}"

    header = root.find("e:edXMLEnvelope/e:edXMLHeader", ns)
    signature = etree.SubElement(header, ds("Signature"), nsmap={"ds": DS_NS})
    info = etree.SubElement(signature, ds("SignedInfo"))
    etree.SubElement(info, ds("CanonicalizationMethod"), Algorithm=EXC_C14N)
    etree.SubElement(info, ds("SignatureMethod"), Algorithm=signature_method)
    for uri in default_references(root) if references is None else references:
        reference = etree.SubElement(info, ds("Reference"), URI=uri)
        if uri.startswith("#"):
            transforms = etree.SubElement(reference, ds("Transforms"))
            etree.SubElement(transforms, ds("Transform"), Algorithm=EXC_C14N)
            target = root.xpath("//*[@Id=$id]", id=uri[1:])[0]
            payload = etree.tostring(target, method="c14n", exclusive=True)
        else:
            payload = files[uri[4:]]
        etree.SubElement(reference, ds("DigestMethod"), Algorithm=digest_method)
        digest = hashes.Hash(hash_cls())
        digest.update(payload)
        etree.SubElement(reference, ds("DigestValue")).text = base64.b64encode(digest.finalize()).decode()
    signed_info = etree.tostring(info, method="c14n", exclusive=True)
    value = signer.key.sign(signed_info, padding.PKCS1v15(), hash_cls())
    etree.SubElement(signature, ds("SignatureValue")).text = base64.b64encode(value).decode()
    x509_data = etree.SubElement(etree.SubElement(signature, ds("KeyInfo")), ds("X509Data"))
    der = signer.cert.public_bytes(serialization.Encoding.DER)
    etree.SubElement(x509_data, ds("X509Certificate")).text = base64.b64encode(der).decode()
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


SAMPLE_PDF = ("cong-van.pdf", "application/pdf", b"%PDF-1.7 x")


def signed_package(signer: Identity, sender: str, recipients: Sequence[str],
                   attachments: Iterable[tuple[str, str, bytes]] = (SAMPLE_PDF,), **kw: object) -> bytes:
    return sign(build(sender, recipients, attachments, **kw), signer)


def without_trace(data: bytes, organ: str) -> bytes:
    """The package minus the one TraceHeader `organ` inserted on its hop: what was sent, if nothing else changed."""
    start = data.index(b"<edXML:TraceHeader><edXML:OrganId>" + organ.encode())
    end = data.index(b"</edXML:TraceHeader>", start) + len(b"</edXML:TraceHeader>")
    return data[:start] + data[end:]
