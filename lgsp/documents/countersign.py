"""The LGSP's optional counter-signature on what it forwards, so that a receiver can prove the provincial axis
handled the package.

When the operator sets LGSP_DOCUMENT_COUNTERSIGN_CERT (PEM: the LGSP's certificate, then its chain) and
LGSP_DOCUMENT_COUNTERSIGN_KEY (PEM private key; a file outside the repository, readable by the LGSP only), every
package stored for a local inbox or the national axis gets a second ``ds:Signature`` (``Id="lgsp-countersignature"``)
at the end of ``edXMLHeader``, after this hop's TraceHeader was added. Made by signxml (detached construction,
exclusive c14n, RSA/ECDSA with SHA-256), it references:

- the header (MessageHeader or Status) and edXMLBody by ``#Id``, as the sender's signature does;
- a ``ds:Object`` of SignatureProperties holding this hop's OrganId and Timestamp (those of the TraceHeader the LGSP
  added) and the SHA-256 of the sender's ``SignedInfo`` (exclusive c14n) and ``SignatureValue``.

The last one is why the cost does not grow with the package: the sender's SignedInfo lists the digest of every
attachment's file (``cid:`` references), which the LGSP verified just before; signing its digest covers every file
without reading one again. Everything else is a few KiB of header; the splice is a view of the stored bytes.

The sender's signature still verifies (it covers neither TraceHeaderList nor a second signature), and the schema
allows two signatures: a package that already carries another axis's counter-signature is forwarded as it is.
"""
from __future__ import annotations

import base64
import copy
import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.parsers import expat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from lxml import etree

from lgsp.documents import edxml
from lgsp.documents.edxml import DS_NS, EDXML_NS, refuse

ID = "lgsp-countersignature"
NS = "urn:lgsp:documents:v1"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
_E = f"{{{EDXML_NS}}}"
_HEADER = f"{_E}edXMLEnvelope/{_E}edXMLHeader"
_SIGNATURE_AT = f"./{_E}edXMLEnvelope/{_E}edXMLHeader/"


@dataclass(frozen=True)
class Identity:
    """The LGSP's signing certificate (with its chain) and key."""

    key: Any
    chain: list[x509.Certificate]

    @classmethod
    def load(cls, cert_path: str | Path, key_path: str | Path) -> Identity:
        chain = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
        key = load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if chain[0].public_key() != key.public_key():
            raise ValueError(f"the key in {key_path} is not the key of the first certificate in {cert_path}")
        return cls(key, chain)


@functools.cache
def configured() -> Identity | None:
    """The operator's counter-signing identity, or None (no counter-signature) when neither setting is given."""
    cert, key = os.environ.get("LGSP_DOCUMENT_COUNTERSIGN_CERT"), os.environ.get("LGSP_DOCUMENT_COUNTERSIGN_KEY")
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("LGSP_DOCUMENT_COUNTERSIGN_CERT and LGSP_DOCUMENT_COUNTERSIGN_KEY go together")
    return Identity.load(cert, key)


def check() -> None:
    """At start-up (``lgsp serve``): both settings or neither, readable, the key the certificate's."""
    from lgsp.startup_checks import StartupRefusal

    try:
        configured()
    except (OSError, ValueError) as exc:
        raise StartupRefusal(f"The LGSP's counter-signature cannot be made ({exc}): set LGSP_DOCUMENT_COUNTERSIGN_CERT "
                             f"and LGSP_DOCUMENT_COUNTERSIGN_KEY to readable PEM files of one key pair, or unset both."
                             ) from None


@dataclass(frozen=True)
class CounterSigner:
    """Who counter-signed, at which hop, as a receiver reads it."""

    subject: str
    organ_id: str
    timestamp: str


def _signatures(root: etree._Element) -> list[etree._Element]:
    header = root.find(_HEADER)
    return header.findall(f"{{{DS_NS}}}Signature") if header is not None else []


def _signed_parts(root: etree._Element) -> list[str]:
    header = root.find(_HEADER)
    parts = [header[0] if header is not None and len(header) else None, root.find(f"{_E}edXMLEnvelope/{_E}edXMLBody")]
    return [f"#{el.get('Id')}" for el in parts if el is not None and el.get("Id")]


def _sender_digest(sender: etree._Element) -> str:
    """SHA-256 of the sender's SignedInfo (exclusive c14n: every reference's digest, the files' included) followed by
    its SignatureValue (so that the same content signed by someone else is another signature)."""
    info = sender.find(f"{{{DS_NS}}}SignedInfo")
    value = "".join((sender.findtext(f"{{{DS_NS}}}SignatureValue") or "").split())
    if info is None or not value:
        raise refuse("document.signature_invalid", "the sender's signature has no SignedInfo or SignatureValue.")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise refuse("document.signature_invalid", "the sender's SignatureValue is not base64.") from None
    digest = hashlib.sha256(etree.tostring(info, method="c14n", exclusive=True))
    digest.update(raw)
    return base64.b64encode(digest.digest()).decode("ascii")


def signature_element(root: etree._Element, identity: Identity, organ_id: str, timestamp: str) -> bytes | None:
    """The serialised counter-signature for the package ``root`` (its tree as edxml.read gives it, the sender's
    signature verified), or None when the package already carries two signatures."""
    from signxml import SignatureConstructionMethod, XMLSigner

    signatures = _signatures(root)
    if len(signatures) != 1:
        return None
    props = etree.Element(f"{{{NS}}}CounterSignature", nsmap={"lgsp": NS})
    etree.SubElement(props, f"{{{NS}}}OrganId").text = organ_id
    etree.SubElement(props, f"{{{NS}}}Timestamp").text = timestamp
    etree.SubElement(props, f"{{{NS}}}SenderSignatureDigest", Algorithm="sha256").text = _sender_digest(signatures[0])
    algorithm = "ecdsa-sha256" if isinstance(identity.key, ec.EllipticCurvePrivateKey) else "rsa-sha256"
    signer = XMLSigner(method=SignatureConstructionMethod.detached, signature_algorithm=algorithm,
                       digest_algorithm="sha256", c14n_algorithm=EXC_C14N)
    signed = signer.sign(root, key=identity.key, cert=identity.chain, reference_uri=_signed_parts(root),
                         signature_properties=props)
    signed.set("Id", ID)
    return bytes(etree.tostring(signed))


def header_end(data: edxml.Source) -> int:
    """The offset of ``</edXMLHeader>`` in the package (read from the start, a block at a time: the header comes
    before body and attachments, so this reads a few KiB whatever the package's size)."""
    parser = expat.ParserCreate(namespace_separator=" ")
    found: list[int] = []

    class Found(Exception):
        pass

    def end(name: str) -> None:
        if name == f"{EDXML_NS} edXMLHeader":
            found.append(parser.CurrentByteIndex)
            raise Found

    parser.EndElementHandler = end
    view = data if isinstance(data, edxml.Spool) else memoryview(data)
    for start in range(0, len(view), 1 << 16):
        try:
            parser.Parse(bytes(view[start:start + (1 << 16)]), False)
        except Found:
            return found[0]
    raise refuse("document.malformed", "the package has no edXMLHeader.")


def apply(pieces: Sequence[bytes | memoryview] | edxml.Stamped, data: edxml.Source, root: etree._Element,
          organ_id: str, timestamp: str, identity: Identity | None = None
          ) -> Sequence[bytes | memoryview] | edxml.Stamped:
    """The stamped package's pieces (edxml.trace_pieces of ``data``) with the counter-signature spliced in before
    ``</edXMLHeader>``; unchanged when no identity is configured or the package is counter-signed already."""
    identity = identity or configured()
    element = signature_element(root, identity, organ_id, timestamp) if identity is not None else None
    if element is None:
        return pieces if isinstance(pieces, edxml.Stamped) else list(pieces)
    if isinstance(pieces, edxml.Stamped):  # a spooled package: spliced in where it is read, never held whole
        return pieces.inserted(header_end(data), element)
    at = header_end(data) + sum(len(p) for p in pieces) - len(data)  # the trace header comes before it
    out: list[bytes | memoryview] = []
    offset = 0
    for piece in pieces:
        if offset <= at < offset + len(piece) and element is not None:
            view = memoryview(piece)
            out += [view[:at - offset], element, view[at - offset:]]
            element = None
        else:
            out.append(piece)
        offset += len(piece)
    return out


def verify(data: bytes, root: etree._Element, trust_pem: str | Path, *, now: datetime | None = None
           ) -> CounterSigner | None:
    """The counter-signature of a package (``root`` from edxml.read of ``data``), verified by signxml against the CAs
    in ``trust_pem``, and bound to the sender's signature; None when the package carries none. The sender's own
    signature is verified separately (lgsp.documents.signature)."""
    from signxml import SignatureConfiguration, XMLVerifier
    from signxml.exceptions import InvalidCertificate, InvalidInput, InvalidSignature

    signatures = _signatures(root)
    if len(signatures) < 2:
        return None
    sender, counter = signatures[0], signatures[1]
    alone = copy.deepcopy(root)  # headers and manifest only: edxml.read leaves the attachments' text out
    _signatures(alone)[0].getparent().remove(_signatures(alone)[0])
    expected = _signed_parts(root)
    config = SignatureConfiguration(location=_SIGNATURE_AT, expect_references=len(expected) + 1,
                                    verification_time=now)
    try:
        results = XMLVerifier().verify(alone, ca_pem_file=str(trust_pem), expect_config=config, parser=edxml.parser())
    except InvalidCertificate as exc:
        raise refuse("document.certificate_untrusted", f"the counter-signer's certificate does not chain to a "
                                                       f"trusted CA ({str(exc)[:200]}).") from None
    except (InvalidSignature, InvalidInput, etree.LxmlError, ValueError) as exc:
        raise refuse("document.signature_invalid",
                     f"the counter-signature does not verify ({str(exc)[:200]}).") from None
    results = results if isinstance(results, list) else [results]
    uris = [r.get("URI") for r in counter.findall(f"{{{DS_NS}}}SignedInfo/{{{DS_NS}}}Reference")]
    props = [r.signed_xml for r in results if r.signed_xml is not None
             and r.signed_xml.find(f".//{{{NS}}}CounterSignature") is not None]
    if sorted(u for u in uris if u != "#prop") != sorted(expected) or len(props) != 1:
        raise refuse("document.signature_invalid", "the counter-signature does not cover the package's header, "
                                                   "manifest and the sender's signature.")
    prop = props[0].find(f".//{{{NS}}}CounterSignature")
    if prop.findtext(f"{{{NS}}}SenderSignatureDigest") != _sender_digest(sender):
        raise refuse("document.signature_invalid", "the counter-signature is over another sender's signature.")
    cert = x509.load_der_x509_certificate(base64.b64decode("".join(
        (counter.findtext(f"{{{DS_NS}}}KeyInfo/{{{DS_NS}}}X509Data/{{{DS_NS}}}X509Certificate") or "").split())))
    return CounterSigner(cert.subject.rfc4514_string(), prop.findtext(f"{{{NS}}}OrganId") or "",
                         prop.findtext(f"{{{NS}}}Timestamp") or "")
