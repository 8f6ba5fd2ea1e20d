"""The documents API over SOAP (wsdl/documents/documents.wsdl), for document systems that only speak SOAP.

Every operation is a service of the REST documents door (SendDocument = documents.send, GetInbox, GetDocument,
UpdateStatus, GetOutboxStatus) and runs the same stages of lgsp.documents.routing behind the same token, grant,
limit and audit; refusals are SOAP Faults with the same stable codes.

Why a reader of its own rather than lgsp.soap.parse: SendDocument carries the edXML package as one base64 text
node of up to 4/3 × LGSP_DOCUMENT_MAX_BYTES, over libxml2's 10,000,000-character bound (huge_tree stays off).
So the envelope is read with expat as it arrives — no DTD, no entities, depth bounded, the message bounded —
and the package's base64 is decoded chunk by chunk into a temporary file (edxml.Spool): the door holds neither
the envelope nor the package.
The request element (the package left empty) is then validated against documents.xsd like any SOAP request.
"""
from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from lxml import etree

from lgsp import soap, specs
from lgsp.delivery.accept import wake_workers
from lgsp.documents import edxml, routing
from lgsp.documents.door import BEFORE, STAGES
from lgsp.doors.soap import NS as SERVICE_NS  # the binding's <lgsp:service name=…> elements
from lgsp.doors.soap import PASSWORD_TEXT, WSDL_NS, WSSE_NS, append, fault_answer
from lgsp.errors import ErrorCode, ExchangeError
from lgsp.gateway import Gateway
from lgsp.pipeline.exchange import Exchange, request_id_from
from lgsp.pipeline.identify import bearer_token
from lgsp.pipeline.run import Rendered, serve
from lgsp.pipeline.stage import Stage, StageContext
from lgsp.tls.peer import thumbprint_of

log = logging.getLogger(__name__)

PATH = "/soap/documents/v1"
NS = "urn:lgsp:documents:v1"
PACKAGE = "package"
ENVELOPE_SLACK = 65536               # the envelope, header and other fields around the package
MAX_FIELD = 1024                     # any field but the package
_WHITESPACE = b" \t\r\n"
# The answer's lists, by the element that repeats in the WSDL.
_ITEM_NAMES = {"recipients": "recipient", "items": "item", "agencies": "agency"}


def envelope_limit(max_package: int) -> int:
    """The largest SOAP message accepted: the package base64-encoded (4/3, with a line break every 76
    characters), plus the envelope."""
    encoded = -(-max_package // 3) * 4
    return encoded + encoded // 76 * 2 + ENVELOPE_SLACK


class Contract:
    """The served WSDL and schema, and each operation's service (from the binding)."""

    def __init__(self, folder: Path):
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        wsdl = etree.parse(str(folder / "documents.wsdl"), parser)
        self.wsdl: bytes = etree.tostring(wsdl, xml_declaration=True, encoding="utf-8")
        self.xsd = (folder / "documents.xsd").read_bytes()
        self.schema = etree.XMLSchema(etree.fromstring(self.xsd, parser))
        self.services: dict[str, str] = {}
        for op in wsdl.iterfind(f"{{{WSDL_NS}}}binding/{{{WSDL_NS}}}operation"):
            service = op.find(f"{{{SERVICE_NS}}}service")
            if service is not None:
                self.services[op.get("name")] = service.get("name")

    def served_wsdl(self, base_url: str) -> bytes:
        """The WSDL with its address and its schema's location at this LGSP."""
        text = self.wsdl.replace(b"http://127.0.0.1:8080" + PATH.encode(), f"{base_url}{PATH}".encode())
        return text.replace(b'schemaLocation="documents.xsd"', f'schemaLocation="{base_url}{PATH}?xsd"'.encode())


# -- reading a request as it arrives ----------------------------------------------------------------------

@dataclass
class Request:
    version: str = "1.1"
    operation: str | None = None
    fields: list[tuple[str, str]] = field(default_factory=list)   # in order; the package's text left empty
    package: edxml.Spool = field(default_factory=edxml.Spool)  # decoded into a temporary file, never held whole
    username: str | None = None
    password: str | None = None
    password_type: str | None = None
    complete: bool = False           # the whole message was read (else the connection is closed after the answer)


class Refused(Exception):
    def __init__(self, error: ExchangeError):
        self.error = error


def _refuse(code: ErrorCode, detail: str) -> Refused:
    return Refused(ExchangeError(code, detail))


class EnvelopeReader:
    """expat over the SOAP message, fed chunk by chunk; raises Refused on anything unacceptable."""

    def __init__(self, max_package: int):
        self.max_package = max_package
        self.req = Request()
        self.path: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.pending = b""          # base64 characters not yet forming a group of four
        self.padded = False
        p = self.parser = expat.ParserCreate(namespace_separator=" ")
        p.buffer_text, p.buffer_size = True, 1 << 20
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        p.StartDoctypeDeclHandler = self._doctype
        p.EntityDeclHandler = self._doctype
        p.ExternalEntityRefHandler = self._external
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._chars

    def feed(self, chunk: bytes, final: bool = False) -> None:
        try:
            self.parser.Parse(chunk, final)
        except expat.ExpatError as exc:
            raise _refuse("request.invalid", f"The SOAP message was refused: not well-formed XML "
                                             f"({expat.errors.messages[exc.code]}).") from None

    def _doctype(self, *_: Any) -> None:
        raise _refuse("request.invalid", "The SOAP message was refused: DOCTYPE declarations and entities are not "
                                         "accepted.")

    def _external(self, *_: Any) -> int:
        raise _refuse("request.invalid", "The SOAP message was refused: external entities are not accepted.")

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        ns, _, local = name.rpartition(" ")
        depth = len(self.path)
        if depth >= soap.MAX_DEPTH:
            raise _refuse("request.invalid", f"The SOAP message was refused: nested deeper than {soap.MAX_DEPTH}.")
        if depth == 0 and (local != "Envelope" or ns not in (soap.SOAP11_NS, soap.SOAP12_NS)):
            raise _refuse("request.invalid", "The SOAP message was refused: not a SOAP envelope.")
        if depth == 0:
            self.req.version = "1.2" if ns == soap.SOAP12_NS else "1.1"
        in_body = depth >= 2 and self._in_body()
        if in_body and depth == 2:
            if self.req.operation is not None:
                raise _refuse("request.invalid", "The SOAP body holds more than one operation.")
            if ns != NS:
                raise _refuse("request.not_found", f"No operation {local!r}; see {PATH}?wsdl.")
            self.req.operation = local
        elif in_body and depth > 3:
            raise _refuse("request.invalid", f"The request does not match the WSDL: {local!r} is not expected there.")
        if depth == 4 and local == "Password" and ns == WSSE_NS:
            self.req.password_type = attrs.get("Type") or PASSWORD_TEXT
        self.path.append((ns, local))
        self.text = []

    def _chars(self, data: str) -> None:
        if self._in_package():
            self._decode(data)
        elif sum(map(len, self.text)) + len(data) > MAX_FIELD:
            raise _refuse("request.invalid", f"A field of the SOAP message is over {MAX_FIELD} characters.")
        else:
            self.text.append(data)

    def _in_body(self) -> bool:
        """Inside the envelope's own Body (in the envelope's namespace)."""
        return len(self.path) >= 2 and self.path[1] == (self.path[0][0], "Body")

    def _in_package(self) -> bool:
        return len(self.path) == 4 and self._in_body() and self.path[3] == (NS, PACKAGE)

    def _decode(self, data: str) -> None:
        chars = self.pending + data.encode("ascii", "replace").translate(None, _WHITESPACE)
        whole = len(chars) - len(chars) % 4
        self.pending = chars[whole:]
        if not whole:
            return
        if self.padded or b"=" in chars[:whole - 4]:
            raise _refuse("request.invalid", "The package is not valid base64 (padding inside the text).")
        try:
            self.req.package.write(base64.b64decode(chars[:whole], validate=True))
        except binascii.Error:
            raise _refuse("request.invalid", "The package is not valid base64.") from None
        self.padded = chars[whole - 1:whole] == b"="
        if len(self.req.package) > self.max_package:
            raise _refuse("document.too_large", f"The package is over the limit of {self.max_package:,} bytes "
                                                f"(LGSP_DOCUMENT_MAX_BYTES).")

    def _end(self, name: str) -> None:
        depth = len(self.path)
        ns, local = self.path.pop()
        text = "".join(self.text).strip()
        self.text = []
        if depth == 4 and self._in_body():
            if (ns, local) == (NS, PACKAGE) and self.pending:
                raise _refuse("request.invalid", "The package is not valid base64 (its length is not a multiple "
                                                 "of four).")
            self.req.fields.append((local if ns == NS else f"{{{ns}}}{local}", "" if local == PACKAGE else text))
        elif depth == 5 and self.path[1] == (self.path[0][0], "Header") and ns == WSSE_NS:
            if local == "Username":
                self.req.username = text
            elif local == "Password":
                self.req.password = text


async def read(receive: Any, declared: str | None, max_package: int) -> tuple[Request, int, ExchangeError | None]:
    """The request, the bytes read, and why it is refused if it is (the refusal is still audited)."""
    reader = EnvelopeReader(max_package)
    limit = envelope_limit(max_package)
    too_large = _refuse("document.too_large", f"The SOAP message is over {limit:,} bytes (a package of at most "
                                              f"{max_package:,} bytes, LGSP_DOCUMENT_MAX_BYTES, base64-encoded).")
    size = 0
    try:
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _refuse("request.invalid", "The client closed the connection before the body ended.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            more = message.get("more_body", False)
            reader.feed(chunk, final=not more)
            if not more:
                reader.req.complete = True
                break
        if reader.req.operation is None:
            raise _refuse("request.invalid", "The SOAP message was refused: the envelope has no body content.")
    except Refused as exc:
        reader.req.package.close()
        return reader.req, size, exc.error
    return reader.req, size, None


def validate(contract: Contract, req: Request) -> ExchangeError | None:
    """The request element, rebuilt from its fields (the package empty), against documents.xsd."""
    element = etree.Element(f"{{{NS}}}{req.operation}")
    for name, text in req.fields:
        etree.SubElement(element, name if name.startswith("{") else f"{{{NS}}}{name}").text = text
    if not contract.schema.validate(element):
        error = contract.schema.error_log.last_error
        return ExchangeError("request.invalid", f"The request does not match the WSDL: {error.message}")
    if req.operation == "SendDocument" and not req.package:
        return ExchangeError("document.malformed", "The request has no edXML package.")
    return None


# -- answering --------------------------------------------------------------------------------------------

def renderer(req: Request) -> Callable[[Exchange], Rendered]:
    content_type = ("application/soap+xml" if req.version == "1.2" else "text/xml") + "; charset=utf-8"

    def render(ex: Exchange) -> Rendered:
        headers = {"Content-Type": content_type, "X-Request-ID": ex.request_id, "Cache-Control": "no-store"}
        if ex.error is not None:
            return fault_answer(req.version, ex.error, ex.request_id, headers)
        env_ns = soap.SOAP12_NS if req.version == "1.2" else soap.SOAP11_NS
        env = etree.Element(f"{{{env_ns}}}Envelope", nsmap={"soap": env_ns, "doc": NS})
        answer = etree.SubElement(etree.SubElement(env, f"{{{env_ns}}}Body"), f"{{{NS}}}{req.operation}Response")
        if isinstance(ex.answer, (bytes, bytearray)):  # GetDocument: the stored package
            etree.SubElement(answer, f"{{{NS}}}{PACKAGE}").text = base64.b64encode(ex.answer).decode("ascii")
        else:
            for key, value in (ex.answer or {}).items():
                append(answer, key, value, NS, _ITEM_NAMES)
        return 200, headers, etree.tostring(env, xml_declaration=True, encoding="utf-8")

    return render


# -- the ASGI app ---------------------------------------------------------------------------------------

class DocumentSoapDoor:
    def __init__(self, gw: Gateway, folder: Path | None = None):
        self.gw = gw
        self.contract = Contract(folder or specs.wsdl_dir() / "documents")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").lower()
        if scope["method"] == "GET" and query in (b"wsdl", b"wsdl="):
            return await _send(send, 200, {"Content-Type": "text/xml; charset=utf-8"},
                               self.contract.served_wsdl(self.gw.settings.public_url))
        if scope["method"] == "GET" and query in (b"xsd", b"xsd="):
            return await _send(send, 200, {"Content-Type": "text/xml; charset=utf-8"}, self.contract.xsd)
        refusal: ExchangeError | None
        if scope["method"] != "POST":
            req, size, refusal = Request(complete=True), 0, ExchangeError(
                "request.method_not_allowed", f"POST SOAP requests (GET {PATH}?wsdl for the contract).",
                headers={"Allow": "GET, POST"})
        else:
            req, size, refusal = await read(receive, headers.get("content-length"),
                                            self.gw.settings.document_max_bytes)
        service = self.contract.services.get(req.operation or "")
        if refusal is None and service is None:
            refusal = ExchangeError("request.not_found", f"No operation {req.operation!r}; see {PATH}?wsdl.")
        refusal = refusal or validate(self.contract, req)
        fields = dict(req.fields)
        claimed = fields.get("request_id") or headers.get("x-request-id")
        ex = Exchange(
            door="soap", request_id=request_id_from(claimed), service_name=service,
            params={k: v for k, v in fields.items() if k in ("id", "status")},
            token=bearer_token(headers.get("authorization")),
            credentials=(req.username or "", req.password or "") if req.username is not None else None,
            request_bytes=size, claimed_request_id=claimed,
            source=(scope.get("client") or (None,))[0], certificate=thumbprint_of(scope),
        )
        if refusal is None and req.password_type and not req.password_type.endswith(PASSWORD_TEXT):
            refusal = ExchangeError("auth.digest_unsupported",
                                    "PasswordDigest UsernameTokens are not supported (client secrets are stored "
                                    "hashed): send the secret as PasswordText over TLS, or a bearer token.")
        package = req.package  # closed when nothing holds it (an audit statement still queued may read it)
        if service == routing.SEND:
            stages = (*BEFORE, _count(size), routing.accept_document(lambda: package))
        else:
            stages = STAGES.get(service or "", BEFORE)
        rendered = await serve(ex, self.gw, renderer(req), stages=stages, refusal=refusal)
        if service == routing.SEND and ex.error is None:
            wake_workers(self.gw)
        status, out_headers, body = rendered
        if not req.complete:  # the rest of an unread body is not read: the connection ends
            out_headers = {**out_headers, "Connection": "close"}
        await _send(send, status, out_headers, body)


def _count(size: int) -> Stage:
    async def count(ex: Exchange, ctx: StageContext) -> None:
        ex.request_bytes = size  # the SOAP message as received (the audit records it; the package's size is beside)

    return count


async def _send(send: Any, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
