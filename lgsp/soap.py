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
    if _depth(root) > MAX_DEPTH:
        raise XmlRefused(f"XML nested deeper than {MAX_DEPTH} levels")
    return root


def _depth(root: etree._Element) -> int:
    depth = deepest = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                break
    return deepest


def localname(el: etree._Element) -> str:
    tag = el.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def to_dict(el: etree._Element) -> dict[str, Any]:
    """Children by local name: text for leaves, dicts for complex elements, lists when repeated.

    Empty leaves are left out, so "absent" has one spelling for the mapping.
    """
    out: dict[str, Any] = {}
    for child in el:
        if not isinstance(child.tag, str):
            continue
        key = localname(child)
        value: Any = to_dict(child) if len(child) else (child.text or "").strip()
        if value in ("", {}):
            continue
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
