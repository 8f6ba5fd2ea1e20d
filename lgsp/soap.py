"""SOAP and XML on the wire: hardened parsing, envelopes, faults, element → dict.

Shared by SOAP adapters and the SOAP door. Parsing never loads a DTD, never
resolves entities, never touches the network, and refuses any DOCTYPE, so
entity-expansion and external-entity attacks fail before they start.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lxml import etree

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
MAX_DEPTH = 64

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False,
    remove_comments=True, remove_pis=True, collect_ids=False,
)


# Whether any element lies deeper than MAX_DEPTH: one XPath evaluated in libxml2, not a Python walk of the tree.
_TOO_DEEP = etree.XPath("boolean(/" + "/".join(["*"] * (MAX_DEPTH + 1)) + ")")
# Local names of the tags seen, so each is split once (bounded: tags come from the other side).
_LOCAL_NAMES: dict[str, str] = {}
_MAX_LOCAL_NAMES = 4096


class XmlRefused(ValueError):
    """The document is not acceptable XML (malformed, DOCTYPE, too deep)."""


def parse(data: bytes) -> etree._Element:
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise XmlRefused(f"not well-formed XML ({exc.msg})") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XmlRefused("DOCTYPE declarations are not accepted")
    if _TOO_DEEP(root):
        raise XmlRefused(f"XML nested deeper than {MAX_DEPTH} levels")
    return root


def localname(el: etree._Element) -> str:
    tag = el.tag
    return _local(tag) if isinstance(tag, str) else ""


def _local(tag: str) -> str:
    name = _LOCAL_NAMES.get(tag)
    if name is None:
        name = tag.rpartition("}")[2]
        if len(_LOCAL_NAMES) < _MAX_LOCAL_NAMES:
            _LOCAL_NAMES[tag] = name
    return name


def to_dict(el: etree._Element) -> dict[str, Any]:
    """Children by local name: text for leaves, dicts for complex elements, lists when repeated.

    Empty leaves are left out, so "absent" has one spelling for the mapping.
    """
    out: dict[str, Any] = {}
    value: Any
    for child in el.iterchildren(etree.Element):  # elements only (no comments, PIs or entities), filtered in C
        if len(child):
            value = to_dict(child)
        else:
            text = child.text
            value = text.strip() if text else ""
        if not value:
            continue
        key = _local(child.tag)
        if key in out:
            existing = out[key]
            out[key] = existing + [value] if isinstance(existing, list) else [existing, value]
        else:
            out[key] = value
    return out


@dataclass
class Fault:
    code: str
    message: str
    detail: dict[str, Any]


def body_of(envelope: etree._Element) -> etree._Element:
    """The first element inside soap:Body (SOAP 1.1 or 1.2)."""
    if localname(envelope) != "Envelope" or etree.QName(envelope).namespace not in (SOAP11_NS, SOAP12_NS):
        raise XmlRefused("not a SOAP envelope")
    ns = etree.QName(envelope).namespace
    body = envelope.find(f"{{{ns}}}Body")
    if body is None or len(body) == 0:
        raise XmlRefused("the SOAP envelope has no body content")
    return body[0]


def fault_of(element: etree._Element) -> Fault | None:
    """A Fault's code, message and detail, if `element` (a Body child) is one."""
    if localname(element) != "Fault":
        return None
    if etree.QName(element).namespace == SOAP12_NS:
        code = element.findtext(f"{{{SOAP12_NS}}}Code/{{{SOAP12_NS}}}Value") or ""
        message = element.findtext(f"{{{SOAP12_NS}}}Reason/{{{SOAP12_NS}}}Text") or ""
        detail_el = element.find(f"{{{SOAP12_NS}}}Detail")
    else:
        code = element.findtext("faultcode") or ""
        message = element.findtext("faultstring") or ""
        detail_el = element.find("detail")
    return Fault(code.strip(), message.strip(), to_dict(detail_el) if detail_el is not None else {})
