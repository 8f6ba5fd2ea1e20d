"""The SOAP door: the shared services for sector systems that only speak SOAP.

The WSDL in wsdl/lgsp/ is the contract: its schema validates every request,
its binding maps each operation to a service (`<lgsp:service name=…>`), and it
is served at `/soap/v1?wsdl`. Requests go into the same pipeline as the REST
door (lgsp.pipeline.run.serve) — same identification, grants, purposes, mapping,
minimisation and audit — and errors come back as SOAP Faults carrying the same
stable codes.

SOAP 1.1 (text/xml) and 1.2 (application/soap+xml); authentication by bearer
token in the HTTP header or by WS-Security UsernameToken (PasswordText).
Parsing refuses DTDs, entities and external references, and bounds size and depth.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from lgsp import bulk, personal_id, soap, specs
from lgsp.delivery import accept as messages
from lgsp.errors import ERRORS, ExchangeError
from lgsp.gateway import Gateway
from lgsp.pipeline.exchange import Exchange, request_id_from
from lgsp.pipeline.identify import bearer_token
from lgsp.pipeline.run import PIPELINES, STAGES, Rendered, internal_error, serve
from lgsp.tls.peer import thumbprint_of

log = logging.getLogger(__name__)

NS = "urn:lgsp:soap:v1"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PASSWORD_TEXT = "#PasswordText"
CONTEXT_FIELDS = ("purpose", "on_behalf_of", "request_id")
PATH = "/soap/v1"
# Characters XML 1.0 cannot carry, even as character references (U+0001, U+FFFE, lone surrogates…).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class SoapOperation:
    name: str                # body element, e.g. PopulationCitizenGet
    service: str | None      # e.g. population.citizen.get; None: named in the request
    answer: str | None       # element wrapping the answer object, if any
    service_from: str | None = None  # the request field naming the service (CallService)
    repeated: tuple[str, ...] = ()   # request fields the schema lets repeat: always lists, even of one


class Contract:
    """What the door learns from its WSDL: operations, the request schema, the served text."""

    def __init__(self, path: Path):
        tree = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True))
        self.text = etree.tostring(tree, xml_declaration=True, encoding="utf-8")
        schema_el = tree.find(f"{{{WSDL_NS}}}types/{{{XSD_NS}}}schema")
        self.schema = etree.XMLSchema(etree.fromstring(etree.tostring(schema_el)))
        self.operations: dict[str, SoapOperation] = {}
        for binding in tree.iterfind(f"{{{WSDL_NS}}}binding"):
            for op in binding.iterfind(f"{{{WSDL_NS}}}operation"):
                service = op.find(f"{{{NS}}}service")
                if service is not None:
                    self.operations[op.get("name")] = SoapOperation(
                        op.get("name"), service.get("name"), service.get("answer"), service.get("from"),
                        _repeated(schema_el, op.get("name")))

    def served(self, base_url: str) -> bytes:
        """The WSDL with every address pointing at this LGSP."""
        return self.text.replace(b"http://127.0.0.1:8080/soap/v1", f"{base_url}{PATH}".encode())


def _repeated(schema: etree._Element, element: str) -> tuple[str, ...]:
    """The fields of a request element that may occur more than once (maxOccurs > 1)."""
    fields = schema.iterfind(f"{{{XSD_NS}}}element[@name='{element}']/{{{XSD_NS}}}complexType/"
                             f"{{{XSD_NS}}}sequence/{{{XSD_NS}}}element")
    return tuple(f.get("name") for f in fields if f.get("maxOccurs", "1") != "1")


# -- reading a request -------------------------------------------------------------

@dataclass
class SoapRequest:
    version: str                     # "1.1" | "1.2"
    operation: SoapOperation | None = None
    service: str | None = None
    params: dict[str, Any] | None = None
    context: dict[str, str] | None = None
    credentials: tuple[str, str] | None = None


def _version(content_type: str, envelope: etree._Element | None) -> str:
    if envelope is not None and etree.QName(envelope).namespace == soap.SOAP12_NS:
        return "1.2"
    return "1.2" if content_type.startswith("application/soap+xml") else "1.1"


def _username_token(envelope: etree._Element) -> tuple[str, str] | None:
    token = envelope.find(f"{{*}}Header/{{{WSSE_NS}}}Security/{{{WSSE_NS}}}UsernameToken")
    if token is None:
        return None
    password = token.find(f"{{{WSSE_NS}}}Password")
    if password is not None and not (password.get("Type") or PASSWORD_TEXT).endswith(PASSWORD_TEXT):
        raise ExchangeError("auth.digest_unsupported",
                            "PasswordDigest UsernameTokens are not supported (client secrets are stored hashed, so "
                            "a digest cannot be checked): send the secret as PasswordText over TLS, or a bearer token.")
    return (token.findtext(f"{{{WSSE_NS}}}Username") or "").strip(), (password.text or "") if password is not None else ""


def read_request(contract: Contract, body: bytes, content_type: str) -> tuple[SoapRequest, ExchangeError | None]:
    """The request, and why it is refused if it is (the door still audits the refusal)."""
    req = SoapRequest(version=_version(content_type, None))
    try:
        envelope = soap.parse(body)
        req.version = _version(content_type, envelope)
        element = soap.body_of(envelope)
        req.credentials = _username_token(envelope)
    except soap.XmlRefused as exc:
        return req, ExchangeError("request.invalid", f"The SOAP message was refused: {exc}.")
    except ExchangeError as exc:
        return req, exc
    op = contract.operations.get(soap.localname(element)) if etree.QName(element).namespace == NS else None
    if op is None:
        return req, ExchangeError("request.not_found", f"No operation {soap.localname(element)!r}; see {PATH}?wsdl.")
    req.operation = op
    values = soap.to_dict(element)
    for name in op.repeated:  # one <items> is still a list of one
        if name in values and not isinstance(values[name], list):
            values[name] = [values[name]]
    req.context = {k: values.pop(k) for k in CONTEXT_FIELDS if isinstance(values.get(k), str)}
    req.service = op.service
    repeated = None
    if op.service_from:
        req.service = values.pop(op.service_from, None)
        values, repeated = _named_params(values.pop("param", []))
    req.params = values
    if not contract.schema.validate(element):  # the body element in place: lxml validates a subtree as a root
        pid = values.get("personal_id")
        if isinstance(pid, str):
            try:  # the schema's pattern refused it: say why in the personal ID's own terms
                personal_id.parse(pid)
            except personal_id.PersonalIdError as exc:
                return req, ExchangeError(exc.code, exc.detail)
        error = contract.schema.error_log.last_error
        return req, ExchangeError("request.invalid", f"The request does not match the WSDL: {error.message}")
    if repeated is not None:
        return req, ExchangeError("request.invalid", f"The parameter {repeated!r} is given more than once.")
    return req, None


def _named_params(pairs: Any) -> tuple[dict[str, Any], str | None]:
    """CallService's <param> elements as a dict, and the first name given twice (refused, not settled by order).
    Read before the schema check, so that a refusal still names what it could read: a <param> that is not a
    <name> with text is left out here, and refused by the schema."""
    params: dict[str, Any] = {}
    repeated = None
    for pair in pairs if isinstance(pairs, list) else [pairs]:
        name = pair.get("name", "") if isinstance(pair, dict) else None
        if not isinstance(name, str):
            continue
        if name in params and repeated is None:
            repeated = name
        params[name] = pair.get("value", "")
    return params, repeated


# -- writing an answer ----------------------------------------------------------------

def append(parent: etree._Element, name: str, value: Any, ns: str = NS,
           item_names: Mapping[str, str] | None = None) -> None:
    """`value` under `parent` as element `name` in `ns`: a dict as child elements, a list as one element per item
    (named by `item_names` where the WSDL names the repeating element apart from the list), a bool as
    true/false. Shared by both SOAP doors (shared services and documents)."""
    if value is None:
        return
    if isinstance(value, list):
        item = item_names.get(name, name) if item_names else name
        for each in value:
            append(parent, item, each, ns, item_names)
        return
    child = etree.SubElement(parent, f"{{{ns}}}{name}")
    if isinstance(value, dict):
        for key, sub in value.items():
            append(child, key, sub, ns, item_names)
    elif isinstance(value, bool):
        child.text = "true" if value else "false"
    else:
        child.text = xml_text(str(value))


def xml_text(text: str) -> str:
    """`text` with the characters XML cannot carry replaced by U+FFFD: data from any
    backend can hold them, and the answer must still be well-formed XML."""
    return _NOT_XML.sub("\ufffd", text)


# -- the answer as text: the shape is fixed (envelope, body, response element), so it is written, not built --------

# Element names written as they are; any other name (rare) has the whole answer built by lxml, which checks it.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_PLAIN_NAMES: set[str] = set()  # names already matched (bounded: they are the answers' field names)


def _escaped(text: str) -> str:
    """What lxml escapes in element text, the same way (a carriage return as a reference, so it survives parsing)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


class _NotPlain(Exception):
    """A name the text writer does not vouch for: the answer is built with lxml instead."""


def _write(out: list[str], name: Any, value: Any) -> None:
    """`append` as text: the same elements, bytes for bytes, for plain element names."""
    if value is None:
        return
    if isinstance(value, list):
        for item in value:
            _write(out, name, item)
        return
    if name not in _PLAIN_NAMES:
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
            raise _NotPlain(name)
        if len(_PLAIN_NAMES) < 4096:
            _PLAIN_NAMES.add(name)
    if isinstance(value, dict):
        mark = len(out)
        out.append(f"<lgsp:{name}>")
        for key, sub in value.items():
            _write(out, key, sub)
        if len(out) == mark + 1:  # no child written: an empty element
            out[mark] = f"<lgsp:{name}/>"
        else:
            out.append(f"</lgsp:{name}>")
        return
    text = ("true" if value else "false") if isinstance(value, bool) else xml_text(str(value))
    out.append(f"<lgsp:{name}>{_escaped(text)}</lgsp:{name}>")


def _answer_text(version: str, operation: str, answer: dict[str, Any]) -> bytes | None:
    """The success envelope as lxml would serialise it, or None if a name needs lxml's check."""
    out = [_HEAD[version], f"<lgsp:{operation}Response>"]
    try:
        for key, value in answer.items():
            _write(out, key, value)
    except _NotPlain:
        return None
    if len(out) == 2:
        out[1] = f"<lgsp:{operation}Response/>"
    else:
        out.append(f"</lgsp:{operation}Response>")
    out.append("</soap:Body></soap:Envelope>")
    return "".join(out).encode("utf-8")


_HEAD = {version: "<?xml version='1.0' encoding='utf-8'?>\n<soap:Envelope xmlns:soap=\"" + ns
         + f'" xmlns:lgsp="{NS}"><soap:Body>' for version, ns in (("1.1", soap.SOAP11_NS), ("1.2", soap.SOAP12_NS))}


def _answer_tree(version: str, operation: str, answer: dict[str, Any]) -> bytes:
    env, body_el = _envelope(version)
    response = etree.SubElement(body_el, f"{{{NS}}}{operation}Response")
    for key, value in answer.items():
        append(response, key, value)
    built: bytes = etree.tostring(env, xml_declaration=True, encoding="utf-8")
    return built


def _envelope(version: str) -> tuple[etree._Element, etree._Element]:
    ns = soap.SOAP12_NS if version == "1.2" else soap.SOAP11_NS
    env = etree.Element(f"{{{ns}}}Envelope", nsmap={"soap": ns, "lgsp": NS})
    return env, etree.SubElement(env, f"{{{ns}}}Body")


def _fault(version: str, error: ExchangeError, request_id: str) -> tuple[int, bytes]:
    env, body = _envelope(version)
    side = ERRORS[error.code].soap_fault
    if version == "1.2":
        ns = soap.SOAP12_NS
        fault = etree.SubElement(body, f"{{{ns}}}Fault")
        code = etree.SubElement(fault, f"{{{ns}}}Code")
        etree.SubElement(code, f"{{{ns}}}Value").text = f"soap:{'Sender' if side == 'Client' else 'Receiver'}"
        reason = etree.SubElement(fault, f"{{{ns}}}Reason")
        text = etree.SubElement(reason, f"{{{ns}}}Text")
        text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        text.text = xml_text(error.detail)
        detail = etree.SubElement(fault, f"{{{ns}}}Detail")
        status = 400 if side == "Client" else 500
    else:
        fault = etree.SubElement(body, f"{{{soap.SOAP11_NS}}}Fault")
        etree.SubElement(fault, "faultcode").text = f"soap:{side}"
        etree.SubElement(fault, "faultstring").text = xml_text(error.detail)
        detail = etree.SubElement(fault, "detail")
        status = 500  # SOAP 1.1 over HTTP: every fault is a 500
    err = etree.SubElement(detail, f"{{{NS}}}Error")
    append(err, "code", error.code)
    append(err, "detail", error.detail)
    append(err, "request_id", request_id)
    return status, etree.tostring(env, xml_declaration=True, encoding="utf-8")


def fault_answer(version: str, error: ExchangeError, request_id: str, headers: dict[str, str]) -> Rendered:
    """An exchange's error as a SOAP Fault, for both SOAP doors (shared services and documents)."""
    status, body = _fault(version, error, request_id)
    headers = {**headers, **error.headers}
    if error.status == 429:  # throttled: say so in HTTP terms too, so clients back off
        status = 429
        headers.setdefault("Retry-After", "1")
    return status, headers, body


def renderer(req: SoapRequest):
    content_type = ("application/soap+xml" if req.version == "1.2" else "text/xml") + "; charset=utf-8"

    def render(ex: Exchange) -> Rendered:
        headers = {"Content-Type": content_type, "X-Request-ID": ex.request_id, "Cache-Control": "no-store"}
        if ex.error is not None:
            return fault_answer(req.version, ex.error, ex.request_id, headers)
        answer = {req.operation.answer: ex.answer} if req.operation.answer else ex.answer
        name = req.operation.name
        text = _answer_text(req.version, name, answer)
        return 200, headers, text if text is not None else _answer_tree(req.version, name, answer)

    return render


# -- the ASGI app -----------------------------------------------------------------------

class SoapDoor:
    def __init__(self, gateway: Gateway, wsdl: Path | None = None):
        self.gateway = gateway
        self.contract = Contract(wsdl or specs.wsdl_dir() / "lgsp" / "lgsp.wsdl")
        self.limit = gateway.settings.max_body_bytes
        # A bulk verification's list is larger than any other request: the door reads up to this, and
        # refuses any other operation over `limit` once the body names it (a SOAPAction header can lie).
        self.read_limit = max(self.limit, bulk.MAX_BODY)

    async def __call__(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] == "GET":
            if scope.get("query_string", b"").lower() in (b"wsdl", b"wsdl="):
                return await _send(send, 200, {"Content-Type": "text/xml; charset=utf-8"},
                                   self.contract.served(self.gateway.settings.public_url))
            return await self._refuse(send, headers, ExchangeError(
                "request.not_found", f"Ask for {PATH}?wsdl, or POST a SOAP request."))
        if scope["method"] != "POST":
            return await self._refuse(send, headers, ExchangeError(
                "request.method_not_allowed", "POST SOAP requests (GET ?wsdl for the contract).",
                headers={"Allow": "GET, POST"}))
        body, too_large = await _read_body(receive, headers, self.read_limit)
        if too_large:
            req, refusal = SoapRequest(_version(headers.get("content-type", ""), None)), self._too_large()
        else:
            try:
                req, refusal = read_request(self.contract, body, headers.get("content-type", ""))
            except Exception:  # a defect, not the caller's fault: still a Fault, still audited
                log.exception("SOAP request could not be read")
                req, refusal = SoapRequest(_version(headers.get("content-type", ""), None)), internal_error()
            if len(body) > self.limit and (req.operation is None or req.operation.service != bulk.SUBMIT):
                req, refusal = SoapRequest(req.version), self._too_large()
        context = req.context or {}
        ex = Exchange(
            door="soap",
            request_id=request_id_from(context.get("request_id") or headers.get("x-request-id")),
            service_name=req.service,
            params=req.params or {},
            token=bearer_token(headers.get("authorization")),
            credentials=req.credentials,
            purpose=context.get("purpose"),
            officer=context.get("on_behalf_of"),
            request_bytes=len(body),
            check_params=bool(req.operation and req.operation.service_from),
            claimed_request_id=context.get("request_id") or headers.get("x-request-id"),
            source=(scope.get("client") or (None,))[0],
            certificate=thumbprint_of(scope),
        )
        # Bulk verification runs its own stages (a job polled upstream, one audit record per person);
        # so does a message handed over for delivery (CallService naming a message service).
        stages = PIPELINES.get(req.service) if isinstance(req.service, str) else None
        message_stages = (messages.stages_for(req.service)
                          if stages is None and req.operation and req.operation.service_from else None)
        status, out_headers, payload = await serve(ex, self.gateway, renderer(req), refusal=refusal,
                                                   stages=stages or message_stages or STAGES)
        if message_stages is not None and ex.error is None:  # a message stored for delivery (CallService)
            messages.wake_workers(self.gateway)
        await _send(send, status, out_headers, payload)

    def _too_large(self) -> ExchangeError:
        return ExchangeError("request.too_large", f"The SOAP message is over the limit of {self.limit} bytes "
                             f"({self.read_limit} for SubmitBulkVerification).")

    async def _refuse(self, send, headers: dict[str, str], error: ExchangeError) -> None:
        await _refuse_plain(self, send, headers, error)


async def _refuse_plain(door: "SoapDoor", send, headers: dict[str, str], error: ExchangeError) -> None:
    """A request that is no SOAP call at all, answered as a Fault and audited like any refusal."""
    req = SoapRequest(_version(headers.get("content-type", ""), None))
    ex = Exchange(door="soap", request_id=request_id_from(headers.get("x-request-id")), service_name=None,
                  params={}, token=bearer_token(headers.get("authorization")))
    status, out_headers, payload = await serve(ex, door.gateway, renderer(req), refusal=error)
    await _send(send, status, out_headers, payload)


async def _read_body(receive, headers: dict[str, str], limit: int) -> tuple[bytes, bool]:
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return b"", True
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks), False


async def _send(send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
