"""HTTP simulator of the national document exchange axis, as its client SDK uses it.

The SDK's calls (sendEdoc, getReceivedEdocList, getEdoc, updateStatus, getSentEdocList, getAgenciesList,
registerAgency, deleteAgency) become small HTTP requests: credentials (the exchange centre's system id
and secret) and the SDK's parameters in headers or a JSON body, answers as JSON, and the edXML file
itself as the raw body (``application/xml``) so that a 50 MB package is not base64'd inside JSON.
Paths, header names and error codes are this project's reading of the SDK (*assumption*); see README.md.

State is in memory: documents, each recipient's acknowledgement, and agencies by exchange centre.
A document is pending for a centre while one of its recipient agencies registered there has not
acknowledged it ``done``. Faults switch on through ``/_sim/faults`` (lgsp.simkit).
"""
from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lgsp.sdk import Faults

from .data import OTHER_SYSTEMS, PROVINCE_SYSTEM, Agency, seed

API_BASE = "/vdxp/api/v1"
EDXML_NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
MAX_PACKAGE = 64 * 1024 * 1024
AGENCY_CODE = re.compile(r"[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[A-Z][0-9]{2}")
STATUSES = ("processing", "done", "fail")
MESSAGE_TYPES = ("edoc", "status")
DOWN_PAGE = "<html><head><title>503 Service Temporarily Unavailable</title></head><body>nginx</body></html>"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)

# Error codes of the envelope {"status": "FAIL", "ErrorCode", "ErrorDesc"} (*assumption*).
BAD_CREDENTIALS = ("15", "Sai SystemId hoặc Secret")
BAD_REQUEST = ("20", "Tham số không hợp lệ")
BAD_PACKAGE = ("21", "Gói tin edXML không hợp lệ")
UNKNOWN_AGENCY = ("22", "Đơn vị nhận không có trên trục")
NOT_SENDER = ("23", "Đơn vị gửi không thuộc hệ thống này")
NOT_FOUND = ("24", "Không tìm thấy văn bản")
AGENCY_EXISTS = ("25", "Mã đơn vị đã tồn tại")
BUSY = ("99", "Hệ thống trục liên thông đang bận, vui lòng thử lại sau")


@dataclass
class Document:
    doc_id: str
    system: str               # the sending centre
    sender: str               # From OrganId
    messagetype: str
    servicetype: str
    package: bytes
    created: float
    recipients: dict[str, str] = field(default_factory=dict)   # agency code -> pending|processing|done|fail
    updated: dict[str, float] = field(default_factory=dict)


def ok(**body: Any) -> JSONResponse:
    return JSONResponse({"status": "OK", "ErrorCode": "0", "ErrorDesc": "", **body})


def fail(error: tuple[str, str], http: int = 200, detail: str = "") -> JSONResponse:
    return JSONResponse({"status": "FAIL", "ErrorCode": error[0], "ErrorDesc": error[1] + (f": {detail}" if detail
                                                                                            else "")}, status_code=http)


def addressing(package: bytes) -> tuple[str, str, list[str]]:
    """(kind, From OrganId, recipients) of an edXML package, read with a hardened parser."""
    root = etree.fromstring(package, _PARSER)
    if root.getroottree().docinfo.internalDTD is not None:
        raise ValueError("DOCTYPE")
    ns = {"e": EDXML_NS}
    header = root.find("e:edXMLEnvelope/e:edXMLHeader", ns)
    if header is None:
        raise ValueError("no edXMLHeader")
    if header.find("e:Status", ns) is not None:
        sender = header.findtext("e:Status/e:From/e:OrganId", "", ns).strip()
        return "status", sender, [header.findtext("e:Status/e:ResponseFor/e:OrganId", "", ns).strip()]
    sender = header.findtext("e:MessageHeader/e:From/e:OrganId", "", ns).strip()
    return "edoc", sender, [t.text.strip() for t in header.iterfind("e:MessageHeader/e:To/e:OrganId", ns) if t.text]


class Simulator:
    def __init__(self, systems: dict[str, str], faults: Faults):
        self.systems = systems
        self.faults = faults
        self.agencies: dict[str, Agency] = seed()
        self.documents: dict[str, Document] = {}
        self.requests = 0

    # -- the common front: faults, then credentials -------------------------------------------------
    async def _front(self, request: Request) -> tuple[str | None, Response | None, str]:
        """(system id, a response to send instead, fault mode)."""
        self.requests += 1
        mode, delay = self.faults.take()
        if mode == "down":
            return None, HTMLResponse(DOWN_PAGE, status_code=503), mode
        system = request.headers.get("systemid", "")
        secret = self.systems.get(system)
        given = request.headers.get("secret", "")
        if secret is None or not hmac.compare_digest(secret.encode(), given.encode()):
            return None, fail(BAD_CREDENTIALS, 401), mode
        if mode == "slow":
            await asyncio.sleep(delay)
        if mode == "fault":
            return system, fail(BUSY), mode
        return system, None, mode

    @staticmethod
    def _finish(response: Response, mode: str) -> Response:
        if mode == "malformed":  # an answer cut off mid-stream
            return Response(response.body[: len(response.body) // 2], media_type=response.media_type)
        return response

    # -- sendEdoc ---------------------------------------------------------------------------------------
    async def send(self, request: Request) -> Response:
        system, early, mode = await self._front(request)
        if early is not None:
            return early
        return self._finish(await self._send(request, system), mode)

    async def _send(self, request: Request, system: str) -> Response:
        messagetype = request.headers.get("messagetype", "edoc")
        servicetype = request.headers.get("servicetype", "eDoc")
        claimed = request.headers.get("from", "")
        if messagetype not in MESSAGE_TYPES:
            return fail(BAD_REQUEST, 400, "messagetype must be edoc or status")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_PACKAGE:
                return fail(BAD_PACKAGE, 413, "package too large")
        try:
            kind, sender, recipients = addressing(bytes(body))
        except (etree.XMLSyntaxError, ValueError) as exc:
            return fail(BAD_PACKAGE, 400, str(exc)[:200])
        if kind != messagetype:
            return fail(BAD_PACKAGE, 400, f"the package is a {kind}, not a {messagetype}")
        own = self.agencies.get(sender)
        if sender != claimed or own is None or own.system != system:
            return fail(NOT_SENDER, 403, sender)
        unknown = [r for r in recipients if r not in self.agencies]
        if unknown or not recipients:
            return fail(UNKNOWN_AGENCY, 400, ", ".join(unknown) or "no recipient")
        doc = Document(uuid.uuid4().hex, system, sender, messagetype, servicetype, bytes(body), time.time(),
                       {r: "pending" for r in dict.fromkeys(recipients)})
        self.documents[doc.doc_id] = doc
        return ok(DocID=doc.doc_id)

    # -- getReceivedEdocList, getEdoc, updateStatus, getSentEdocList ----------------------------------
    def _mine(self, doc: Document, system: str) -> list[str]:
        return [r for r in doc.recipients if self.agencies.get(r) and self.agencies[r].system == system]

    async def received(self, request: Request) -> Response:
        system, early, mode = await self._front(request)
        if early is not None:
            return early
        want = request.query_params.get("messagetype")
        items = []
        for doc in self.documents.values():
            pending = [r for r in self._mine(doc, system) if doc.recipients[r] != "done"]
            if pending and (want is None or doc.messagetype == want):
                items.append({"DocID": doc.doc_id, "from": doc.sender, "to": pending, "messagetype": doc.messagetype,
                              "servicetype": doc.servicetype, "size": len(doc.package),
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(doc.created)),
                              "status": sorted({doc.recipients[r] for r in pending})})
        return self._finish(ok(data=items), mode)

    def _document(self, request: Request, system: str, *, as_sender: bool = False) -> Document | Response:
        doc = self.documents.get(request.path_params["doc_id"])
        allowed = doc is not None and (doc.system == system if as_sender else
                                       (doc.system == system or self._mine(doc, system)))
        return doc if allowed else fail(NOT_FOUND, 404, request.path_params["doc_id"][:64])

    async def get(self, request: Request) -> Response:
        system, early, mode = await self._front(request)
        if early is not None:
            return early
        doc = self._document(request, system)
        if isinstance(doc, Response):
            return self._finish(doc, mode)
        return self._finish(Response(doc.package, media_type="application/xml"), mode)

    async def update_status(self, request: Request) -> Response:
        system, early, mode = await self._front(request)
        if early is not None:
            return early
        doc = self._document(request, system)
        if isinstance(doc, Response):
            return self._finish(doc, mode)
        try:
            status = (await request.json()).get("status")
        except (ValueError, AttributeError):
            status = None
        if status not in STATUSES:
            return self._finish(fail(BAD_REQUEST, 400, "status must be processing, done or fail"), mode)
        for agency in self._mine(doc, system):
            doc.recipients[agency] = status
            doc.updated[agency] = time.time()
        return self._finish(ok(DocID=doc.doc_id, statusUpdated=status), mode)

    async def sent(self, request: Request) -> Response:
        system, early, mode = await self._front(request)
        if early is not None:
            return early
        doc = self._document(request, system, as_sender=True)
        if isinstance(doc, Response):
            return self._finish(doc, mode)
        data = [{"to": r, "status": s, "updated": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                               time.gmtime(doc.updated.get(r, doc.created)))}
                for r, s in doc.recipients.items()]
        return self._finish(ok(DocID=doc.doc_id, data=data), mode)

    # -- agencies ---------------------------------------------------------------------------------------
    async def agencies_list(self, request: Request) -> Response:
        _, early, mode = await self._front(request)
        if early is not None:
            return early
        return self._finish(ok(data=[a.wire() for a in sorted(self.agencies.values(), key=lambda a: a.code)]), mode)

    async def agencies_register(self, request: Request) -> Response:
        system, early, mode = await self._front(request)
        if early is not None:
            return early
        try:
            body = await request.json()
            code, name = str(body["code"]), str(body["name"]).strip()
        except (ValueError, KeyError, TypeError, AttributeError):
            return self._finish(fail(BAD_REQUEST, 400, "code and name are required"), mode)
        if not AGENCY_CODE.fullmatch(code) or not name:
            return self._finish(fail(BAD_REQUEST, 400, "code must look like 000.00.31.H30"), mode)
        if code in self.agencies:
            return self._finish(fail(AGENCY_EXISTS, 409, code), mode)
        self.agencies[code] = Agency(code, name[:500], str(body.get("pcode") or ""), str(body.get("mail") or ""),
                                     str(body.get("mobile") or ""), str(body.get("fax") or ""), system)
        return self._finish(ok(data=self.agencies[code].wire()), mode)

    async def agencies_delete(self, request: Request) -> Response:
        system, early, mode = await self._front(request)
        if early is not None:
            return early
        code = request.path_params["code"]
        agency = self.agencies.get(code)
        if agency is None or agency.system != system:
            return self._finish(fail(NOT_FOUND, 404, code[:64]), mode)
        del self.agencies[code]
        return self._finish(ok(), mode)

    # -- simulator controls -----------------------------------------------------------------------------
    async def faults_endpoint(self, request: Request) -> Response:
        return await self.faults.endpoint(request)

    async def stats_endpoint(self, request: Request) -> Response:
        by_status: dict[str, int] = {}
        for doc in self.documents.values():
            for status in doc.recipients.values():
                by_status[status] = by_status.get(status, 0) + 1
        return JSONResponse({"requests": self.requests, "documents": len(self.documents),
                             "deliveries": by_status, "agencies": len(self.agencies)})

    async def index(self, request: Request) -> Response:
        return JSONResponse({"service": "Simulator of the national document exchange axis (synthetic data)",
                             "api": str(request.url.replace(path=API_BASE, query="")),
                             "systems": sorted(self.systems), "agencies": len(self.agencies)})


def create_app(*, systems: dict[str, str] | None = None, faults: Faults | None = None) -> Starlette:
    """The simulator's ASGI app; its state is ``app.state.simulator``. ``systems`` maps system ids to secrets
    (default: the province's centre and two others, see data.py)."""
    sim = Simulator(dict(systems or {PROVINCE_SYSTEM[0]: PROVINCE_SYSTEM[1], **OTHER_SYSTEMS}), faults or Faults())
    app = Starlette(routes=[
        Route("/", sim.index),
        Route(f"{API_BASE}/edocs", sim.send, methods=["POST"]),
        Route(f"{API_BASE}/edocs/received", sim.received, methods=["GET"]),
        Route(f"{API_BASE}/edocs/{{doc_id}}", sim.get, methods=["GET"]),
        Route(f"{API_BASE}/edocs/{{doc_id}}/status", sim.update_status, methods=["POST"]),
        Route(f"{API_BASE}/edocs/{{doc_id}}/sent", sim.sent, methods=["GET"]),
        Route(f"{API_BASE}/agencies", sim.agencies_list, methods=["GET"]),
        Route(f"{API_BASE}/agencies", sim.agencies_register, methods=["POST"]),
        Route(f"{API_BASE}/agencies/{{code}}", sim.agencies_delete, methods=["DELETE"]),
        Route("/_sim/faults", sim.faults_endpoint, methods=["GET", "POST"]),
        Route("/_sim/stats", sim.stats_endpoint, methods=["GET"]),
    ])
    app.state.simulator = sim
    return app
