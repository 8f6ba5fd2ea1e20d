"""The sender's XML digital signature on an edXML package, verified with signxml.

What is checked, in this order (each refusal has its own code):
1. the signature inside ``edXMLHeader`` carries the signer's X.509 certificate in KeyInfo, and every
   certificate there is valid now (``document.certificate_expired``);
2. signxml verifies SignedInfo with that certificate after chaining it to a CA of the operator's
   bundle (``LGSP_DOCUMENT_TRUSTED_CAS``; ``document.certificate_untrusted``), then every reference's
   digest (``document.signature_invalid``); SHA-1 is refused;
3. against wrapping, nothing is trusted from the document as it lies: the sender, recipients,
   document id and manifest are re-derived from the XML signxml returns as signed, and every
   attachment's hash from the bytes it digested, and must equal what :func:`lgsp.documents.edxml.scan`
   read at the standard's positions; the signature must cover exactly the header (MessageHeader or
   Status) by ``#Id``, the body by ``#Id`` and each attachment's file by ``cid:N`` — the file's decoded
   bytes, digested from the package's bytes a chunk at a time (signxml's ``uri_resolver`` names the file,
   :func:`_verifier` streams its digest), so that memory does not grow with the package or a file
   (docs/documents.md, "Signature and trace header").
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from lxml import etree

from lgsp.documents.edxml import (
    DS_NS,
    EDXML_NS,
    Attachment,
    Package,
    Source,
    attachment_chunks,
    content_key,
    parser,
    refuse,
)

_E = f"{{{EDXML_NS}}}"
_SIGNATURE_AT = f"./{_E}edXMLEnvelope/{_E}edXMLHeader/"
_PARTS = {"MessageHeader": "header", "Status": "header", "edXMLBody": "body"}


@dataclass(frozen=True)
class Signer:
    """Who signed, as the audit records it (no personal data beyond the certificate's subject)."""

    subject: str
    issuer: str
    serial: str
    not_after: str
    fingerprint: str  # SHA-256 of the certificate

    def audit(self) -> dict[str, str]:
        return {"subject": self.subject, "issuer": self.issuer, "serial": self.serial,
                "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class TrustStore:
    """The operator's PEM bundle of CAs trusted to certify document signers."""

    path: Path

    @classmethod
    def from_settings(cls) -> TrustStore | None:
        from lgsp.config import settings

        configured = settings().document_trusted_cas
        return cls.load(configured) if configured else None

    @classmethod
    def load(cls, path: str | Path) -> TrustStore:
        path = Path(path)
        certs = x509.load_pem_x509_certificates(path.read_bytes())  # fails early on a bad bundle
        if not certs:
            raise ValueError(f"{path}: no certificate in the trusted CA bundle")
        return cls(path)


def _signature(root: etree._Element) -> etree._Element:
    found = root.find(f"{_SIGNATURE_AT}{{{DS_NS}}}Signature")
    if found is None:
        raise refuse("document.signature_invalid", "the package carries no XML signature in edXMLHeader; "
                                                   "every document must be signed.")
    return found


def _certificates(signature: etree._Element) -> list[x509.Certificate]:
    texts = signature.findall(f"{{{DS_NS}}}KeyInfo/{{{DS_NS}}}X509Data/{{{DS_NS}}}X509Certificate")
    if not texts:
        raise refuse("document.signature_invalid", "the signature's KeyInfo carries no X.509 certificate.")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode("".join((t.text or "").split()))) for t in texts]
    except ValueError:
        raise refuse("document.signature_invalid", "the signature's X.509 certificate cannot be read.") from None


def _check_validity(certs: list[x509.Certificate], now: datetime) -> None:
    for cert in certs:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise refuse("document.certificate_expired",
                         f"the certificate of {cert.subject.rfc4514_string()[:200]} is valid from "
                         f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}, "
                         f"not at {now:%Y-%m-%d %H:%M} UTC.")


def _expected_parts(root: etree._Element) -> dict[str, str]:
    """The XML parts the signature must cover, by role, from their positions in the package."""
    header = root.find(f"{_E}edXMLEnvelope/{_E}edXMLHeader")
    parts = {"header": header[0] if header is not None and len(header) else None,
             "body": root.find(f"{_E}edXMLEnvelope/{_E}edXMLBody")}
    return {role: el.get("Id") or "" for role, el in parts.items() if el is not None}


class _File(bytes):
    """What signxml's ``uri_resolver`` hands back for a ``cid:`` reference: not the file, an empty stand-in
    naming it, so that signxml (which keeps every reference's bytes in its results) never holds a file.
    :class:`_Verifier` digests the file from the package's bytes, a chunk at a time, when signxml asks
    for the reference's digest."""

    data: Source
    attachment: Attachment
    sha256: str | None

    def __new__(cls, data: Source, attachment: Attachment) -> _File:
        made = super().__new__(cls, b"")
        made.data, made.attachment, made.sha256 = data, attachment, None
        return made


def _resolver(data: Source, package: Package) -> Callable[[str], bytes | None]:
    """signxml's hook for references that are not ``#Id``: ``cid:N`` is attachment N's file."""
    files = {content_key(a.content_id): a for a in package.attachments}

    def resolve(uri: str) -> bytes | None:
        attachment = files.get(content_key(uri)) if uri.lower().startswith("cid:") else None
        return _File(data, attachment) if attachment is not None else None
    return resolve


def _verifier() -> Any:
    """signxml's verifier, the digest of a ``cid:`` reference streamed: its file decoded and hashed a chunk at a
    time (with the reference's own algorithm; SHA-256 beside it for the wrapping defence). Everything else —
    SignedInfo, the chain, the XML references' c14n and digests — is signxml's own. Should signxml stop
    asking ``_get_digest`` for a reference's digest, the stand-in's empty bytes are digested instead and every
    signed package is refused: the hook fails closed."""
    from cryptography.hazmat.primitives.hashes import Hash
    from signxml import XMLVerifier
    from signxml.algorithms import digest_algorithm_implementations

    class Verifier(XMLVerifier):
        def _get_digest(self, data: Any, algorithm: Any) -> bytes:
            if not isinstance(data, _File):
                return bytes(super()._get_digest(data, algorithm))
            hasher, sha256 = Hash(digest_algorithm_implementations[algorithm]()), hashlib.sha256()
            try:
                for piece in attachment_chunks(data.data, data.attachment):
                    hasher.update(piece)
                    sha256.update(piece)
            except binascii.Error:
                raise refuse("document.signature_invalid", "an attachment is not valid base64.") from None
            data.sha256 = sha256.hexdigest()
            return hasher.finalize()

    return Verifier()


def verify(data: Source, root: etree._Element, package: Package, trust: TrustStore | None, *,
           now: datetime | None = None) -> Signer:
    """Verify the package's signature (``root`` and ``package`` from :func:`lgsp.documents.edxml.read` of
    ``data``); returns the signer, or raises ExchangeError with a document.* code."""
    from signxml import SignatureConfiguration
    from signxml.exceptions import InvalidCertificate, InvalidInput, InvalidSignature

    now = now or datetime.now(UTC)
    signature = _signature(root)
    certs = _certificates(signature)
    _check_validity(certs, now)
    if trust is None:
        raise refuse("document.certificate_untrusted", "no CA is trusted for document signatures: the operator "
                                                       "has not set LGSP_DOCUMENT_TRUSTED_CAS.")
    expected = _expected_parts(root)
    _bound_to_positions(root, signature, expected)
    count = len(expected) + len(package.attachments)
    listed = len(signature.findall(f"{{{DS_NS}}}SignedInfo/{{{DS_NS}}}Reference"))
    if listed != count:  # before signxml digests anything: a file referenced 1,000 times is not decoded 1,000 times
        raise refuse("document.signature_invalid", f"the signature has {listed} references; it must cover the "
                                                   f"header, the body and each of the {len(package.attachments)} "
                                                   f"attachments, once each.")
    config = SignatureConfiguration(location=_SIGNATURE_AT, expect_references=count, verification_time=now)
    try:
        results = _verifier().verify(root, ca_pem_file=str(trust.path), expect_config=config, parser=parser(),
                                       uri_resolver=_resolver(data, package))
    except InvalidCertificate as exc:
        raise refuse("document.certificate_untrusted", f"the signer's certificate does not chain to a trusted "
                                                       f"CA ({str(exc)[:200]}).") from None
    except (InvalidSignature, InvalidInput, etree.LxmlError, ValueError, TypeError) as exc:
        raise refuse("document.signature_invalid", f"the XML signature does not verify ({str(exc)[:200]}).") from None
    results = results if isinstance(results, list) else [results]
    signed, files = _signed_parts(results, expected)
    _compare(package, signed, files)
    leaf = certs[0]
    return Signer(subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
                  serial=format(leaf.serial_number, "x"), not_after=leaf.not_valid_after_utc.isoformat(),
                  fingerprint=leaf.fingerprint(hashes_sha256()).hex())


def hashes_sha256():  # a function so that cryptography's hashes import stays local to its one use
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _reference_uris(result: Any) -> list[str]:
    """The URIs of the verified SignedInfo, in the order signxml returns its results."""
    refs = result.signature_xml.findall(f"{{{DS_NS}}}SignedInfo/{{{DS_NS}}}Reference")
    return [r.get("URI") or "" for r in refs]


def _signed_parts(results: list, expected: dict[str, str]) -> tuple[dict[str, etree._Element], dict[str, str]]:
    """The signed XML of header and body, and the SHA-256 of each signed file by content id; the signature
    must cover header, body and every attachment, each once."""
    signed: dict[str, etree._Element] = {}
    files: dict[str, str] = {}
    uris = _reference_uris(results[0]) if results else []
    if len(uris) != len(results):
        raise refuse("document.signature_invalid", "the signature's references cannot be matched to what it signs.")
    for uri, result in zip(uris, results):
        if uri.lower().startswith("cid:"):
            key = content_key(uri)
            if key in files:
                _covers_other()
            data = result.signed_data
            files[key] = data.sha256 if isinstance(data, _File) and data.sha256 else hashlib.sha256(data).hexdigest()
            continue
        el = result.signed_xml
        name = etree.QName(el).localname if el is not None and etree.QName(el).namespace == EDXML_NS else ""
        role = _PARTS.get(name)
        if role is None or role in signed:
            _covers_other()
        signed[role] = el
    missing = sorted(set(expected) - set(signed))
    if missing:
        raise refuse("document.signature_invalid", f"the signature does not cover the package's {', '.join(missing)}.")
    return signed, files


def _bound_to_positions(root: etree._Element, signature: etree._Element, expected: dict[str, str]) -> None:
    """Against wrapping, before anything is digested: the XML references must be exactly ``#Id`` of the header and
    the body at the standard's positions, and each of those Ids must name no other element of the package (under
    any id attribute signxml resolves). Otherwise a forged header could sit at the position, another Id on it,
    with the signed original hidden elsewhere: the signature verifies, and every field the re-derivation in
    :func:`_compare` does not check (the subject, the dates, the signer's name) would be the forger's."""
    uris = sorted(r.get("URI") or "" for r in signature.findall(f"{{{DS_NS}}}SignedInfo/{{{DS_NS}}}Reference")
                  if not (r.get("URI") or "").lower().startswith("cid:"))
    if not all(expected.values()) or uris != sorted(f"#{ident}" for ident in expected.values()):
        _covers_other()
    for ident in expected.values():
        if len(_NAMED(root, ident=ident)) != 1:
            _covers_other()


_NAMED = etree.XPath("//*[@Id=$ident or @ID=$ident or @id=$ident or @xml:id=$ident]")


def _covers_other() -> None:
    raise refuse("document.signature_invalid", "the signature covers something other than the package's "
                                               "header, manifest and attachments, or one of them twice.")


def _organ_ids(el: etree._Element, path: str) -> list[str]:
    return [(t or "").strip() for t in el.xpath(path, namespaces={"e": EDXML_NS})]


def _compare(package: Package, signed: dict[str, etree._Element], files: dict[str, str]) -> None:
    """What the LGSP read at the standard's positions must be what was signed (wrapping defence)."""
    header = signed["header"]
    if etree.QName(header).localname == "MessageHeader":
        read = (package.sender, list(package.recipients), package.document_id)
        signed_values = (_first(header, "e:From/e:OrganId/text()"), _organ_ids(header, "e:To/e:OrganId/text()"),
                         _first(header, "e:DocumentId/text()"))
    else:
        read = (package.sender, package.response_for, package.status_code)
        signed_values = (_first(header, "e:From/e:OrganId/text()"), _first(header, "e:ResponseFor/e:DocumentId/text()"),
                         _first(header, "e:StatusCode/text()"))
    if read != signed_values:
        _wrapped("header")
    if "body" in signed:
        manifest = [(content_key(_first(r, "e:ContentId/text()") or ""), _first(r, "e:AttachmentName/text()"))
                    for r in signed["body"].iterfind(f"{_E}edXMLManifest/{_E}Reference")]
        if manifest != [(content_key(m.content_id), m.name) for m in package.manifest]:
            _wrapped("manifest")
    if files != {content_key(a.content_id): a.sha256 for a in package.attachments}:
        _wrapped("attachments")


def _first(el: etree._Element, path: str) -> str | None:
    found = el.xpath(path, namespaces={"e": EDXML_NS})
    return found[0].strip() if found else None


def _wrapped(part: str) -> None:
    raise refuse("document.signature_invalid", f"the package's {part} is not the one the signature covers "
                                               f"(signed content moved or substituted).")
