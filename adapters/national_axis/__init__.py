"""Adapter for the national document exchange axis (Trục liên thông văn bản quốc gia).

The axis's client SDK exposes sendEdoc, getReceivedEdocList, getEdoc, updateStatus, getSentEdocList and
the agency calls, authenticated by the exchange centre's system id and secret. This adapter speaks the
same calls over HTTP the way the simulator beside it does: credentials and the SDK's parameters in
headers or a small JSON body, JSON answers ``{"status": "OK"|"FAIL", "ErrorCode", "ErrorDesc", …}``,
and the edXML file as the raw body in both directions (never base64'd inside JSON on the wire). Paths
and header names are this project's reading of the SDK (*assumption*: a connection setting can change
the base path; see docs/documents.md).

Operations (params and answers are JSON; an edXML package travels as base64 text in params/answers,
because the adapter contract is JSON — the routing layer passes bytes through :meth:`send_package` and
:meth:`fetch_package` instead, without that copy):

| operation | SDK call |
| --- | --- |
| ``edoc.send`` | sendEdoc(from, servicetype, messagetype, file) → ``{"doc_id"}`` |
| ``edoc.received`` | getReceivedEdocList(servicetype, messagetype) → ``{"items": [...]}`` |
| ``edoc.get`` | getEdoc(docId) → ``{"doc_id", "size", "sha256", "package"}`` |
| ``edoc.status.update`` | updateStatus(docId, processing/done/fail) |
| ``edoc.sent`` | getSentEdocList(docId) → per-recipient delivery |
| ``agencies.list`` / ``agencies.register`` / ``agencies.delete`` | getAgenciesList / registerAgency / deleteAgency |
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

import aiohttp
import orjson

from lgsp.sdk import (
    Adapter,
    AdapterResult,
    CallContext,
    LazySession,
    Operation,
    RecordNotFound,
    UpstreamError,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__version__ = "1.0.0"

MAX_ANSWER = 4 * 1024 * 1024            # a JSON answer (lists of ids, agencies)
DEFAULT_MAX_PACKAGE = 64 * 1024 * 1024  # an edXML package
NOT_FOUND_CODES = ("24",)               # ErrorCode of "no such document / agency" (*assumption*)
_CODE = {"type": "string", "pattern": r"^[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[A-Z][0-9]{2}$"}
_DOC_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[A-Za-z0-9._:-]+$"}
_MESSAGE_TYPE = {"enum": ["edoc", "status"]}
_DOC_ID_RE = re.compile(_DOC_ID["pattern"].strip("^$"))
_CODE_RE = re.compile(_CODE["pattern"].strip("^$"))


def _object(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


class NationalAxisAdapter(Adapter):
    name = "national-axis"
    version = __version__
    settings_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["endpoint", "system_id", "secret"],
        "properties": {
            "endpoint": {"type": "string", "pattern": "^https?://",
                         "description": "Base URL of the axis's API, e.g. https://…/vdxp/api/v1"},
            "system_id": {"type": "string", "minLength": 1, "description": "The province's exchange centre code"},
            "secret": {"type": "string", "minLength": 1, "writeOnly": True, "description": "Its secret"},
            "servicetype": {"type": "string", "default": "eDoc"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600, "default": 30,
                        "description": "Seconds per call; large packages need more than small answers"},
            "max_package_bytes": {"type": "integer", "minimum": 1024, "default": DEFAULT_MAX_PACKAGE},
            "max_connections": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20},
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Extra HTTP headers the axis expects"},
        },
    }
    operations = {
        "edoc.send": Operation("edoc.send", "Send an edXML document or status message (sendEdoc)", mapping="edoc.send",
                               writes=True, params_schema=_object(["from", "package"], **{
                                   "from": _CODE, "messagetype": _MESSAGE_TYPE,
                                   "package": {"type": "string", "contentEncoding": "base64"}})),
        "edoc.received": Operation("edoc.received", "Documents pending for this centre (getReceivedEdocList)",
                                   mapping="edoc.received", params_schema=_object([], messagetype=_MESSAGE_TYPE)),
        "edoc.get": Operation("edoc.get", "One document's edXML package (getEdoc)", mapping="edoc.get",
                              params_schema=_object(["doc_id"], doc_id=_DOC_ID)),
        "edoc.status.update": Operation("edoc.status.update", "Acknowledge a received document (updateStatus)",
                                        mapping="edoc.status.update", writes=True, params_schema=_object(
                                            ["doc_id", "status"], doc_id=_DOC_ID,
                                            status={"enum": ["processing", "done", "fail"]})),
        "edoc.sent": Operation("edoc.sent", "Delivery of a sent document per recipient (getSentEdocList)",
                               mapping="edoc.sent", params_schema=_object(["doc_id"], doc_id=_DOC_ID)),
        "agencies.list": Operation("agencies.list", "Agencies on the axis (getAgenciesList)", mapping="agencies.list",
                                   params_schema=_object([])),
        "agencies.register": Operation("agencies.register", "Register an agency of this centre (registerAgency)",
                                       mapping="agencies.register", writes=True, params_schema=_object(
                                           ["code", "name"], code=_CODE, pcode={"type": "string"},
                                           name={"type": "string", "minLength": 1}, mail={"type": "string"},
                                           mobile={"type": "string"}, fax={"type": "string"})),
        "agencies.delete": Operation("agencies.delete", "Remove an agency of this centre (deleteAgency)",
                                     mapping="agencies.delete", writes=True,
                                     params_schema=_object(["code"], code=_CODE)),
    }
    mapping_file = Path(__file__).parent / "mapping.yaml"
    simulator = "lgsp_adapters.national_axis.simulator:create_app"
    examples = {"edoc.received": {"messagetype": "edoc"}, "agencies.list": {}}
    not_found_examples = {"edoc.get": {"doc_id": "no-such-document"}, "edoc.sent": {"doc_id": "no-such-document"}}

    def __init__(self, settings: Mapping[str, Any]):
        super().__init__(settings)
        self.endpoint = self.settings["endpoint"].rstrip("/")
        self.timeout = float(self.settings.get("timeout", 30))
        self.max_package = int(self.settings.get("max_package_bytes", DEFAULT_MAX_PACKAGE))
        self.servicetype = self.settings.get("servicetype", "eDoc")
        self._headers = {"Accept": "application/json", **(self.settings.get("headers") or {}),
                         "systemid": self.settings["system_id"], "secret": self.settings["secret"]}
        self._http = LazySession(limit=int(self.settings.get("max_connections", 20)), timeout=self.timeout)

    async def aclose(self) -> None:
        await self._http.close()

    # -- the wire -----------------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, context: CallContext, *, headers: Mapping[str, str] = (),
                       json: Any = None, data: bytes | None = None, params: Mapping[str, str] | None = None,
                       limit: int = MAX_ANSWER) -> tuple[int, str, bytes, dict]:
        url = f"{self.endpoint}{path}"
        where = {"upstream": url, "trace_id": context.request_id}
        send = {**self._headers, "X-Request-ID": context.request_id, **dict(headers)}
        try:
            async with self._http.get().request(method, url, headers=send, json=json, data=data,
                                                params=params) as resp:
                body = await resp.content.read(limit + 1)
                if len(body) > limit:
                    raise UpstreamMalformed(f"The national axis's answer is over {limit:,} bytes.", **where)
                return resp.status, resp.headers.get("Content-Type", ""), body, where
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"The national axis did not answer within {self.timeout:g} s.", **where) from None
        except aiohttp.ClientError:
            raise UpstreamUnavailable("The national axis could not be reached.", **where) from None

    @staticmethod
    def _envelope(status: int, body: bytes, where: dict) -> dict:
        """The JSON envelope of an OK answer, or the right UpstreamError."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or "status" not in doc:
            if status >= 500 or (status != 200 and not body.lstrip().startswith(b"{")):
                raise UpstreamUnavailable(f"The national axis answered HTTP {status}.", **where)
            raise UpstreamMalformed("The national axis's answer is not its JSON envelope.", **where)
        if doc["status"] == "OK":
            return doc
        code, desc = str(doc.get("ErrorCode", "")), str(doc.get("ErrorDesc", ""))[:300]
        if code in NOT_FOUND_CODES:
            raise RecordNotFound(f"The national axis has no such item ({desc}).", **where)
        if status == 401:
            raise UpstreamFault(f"The national axis refused the LGSP's system id or secret ({desc}).",
                                fault_code=code, **where)
        raise UpstreamFault(f"The national axis refused the call: {desc}", fault_code=code, **where)

    async def _json(self, method: str, path: str, context: CallContext, **kw: Any) -> tuple[dict, dict]:
        status, _, body, where = await self._request(method, path, context, **kw)
        return self._envelope(status, body, where), where

    # -- bytes in, bytes out (for the routing layer) ----------------------------------------------------
    async def send_package(self, sender: str, package: bytes, context: CallContext, *,
                           messagetype: str = "edoc") -> str:
        """sendEdoc: the axis's DocID for ``package`` (sent as the raw body)."""
        doc, where = await self._json("POST", "/edocs", context, data=package, headers={
            "from": sender, "servicetype": self.servicetype, "messagetype": messagetype,
            "Content-Type": "application/xml"})
        doc_id = doc.get("DocID")
        if not isinstance(doc_id, str) or not doc_id:
            raise UpstreamMalformed("The national axis accepted the document but gave no DocID.", **where)
        return doc_id

    async def fetch_package(self, doc_id: str, context: CallContext) -> bytes:
        """getEdoc: the package's bytes as the axis holds them."""
        status, content_type, body, where = await self._request("GET", f"/edocs/{doc_id}", context,
                                                                limit=self.max_package)
        if status == 200 and "xml" in content_type:
            return body
        self._envelope(status, body, where)  # raises the right error
        raise UpstreamMalformed("The national axis answered getEdoc without an edXML package.", **where)

    # -- the adapter contract ---------------------------------------------------------------------------
    async def call(self, operation: str, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        handler = getattr(self, "_op_" + operation.replace(".", "_"), None)
        if handler is None or operation not in self.operations:
            raise UpstreamError(f"The national-axis adapter has no operation {operation!r}.")
        # Ids go into the URL path: never send one the params schema would refuse.
        for key, pattern in (("doc_id", _DOC_ID_RE), ("code", _CODE_RE)):
            if key in params and not (isinstance(params[key], str) and pattern.fullmatch(params[key])):
                raise ValueError(f"{key} is not acceptable")
        data, where = await handler(params, context)
        return AdapterResult(data=data, **where)

    async def _op_edoc_send(self, params: Mapping[str, Any], context: CallContext) -> tuple[dict, dict]:
        try:
            package = base64.b64decode(params["package"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise ValueError("package must be base64") from None
        doc_id = await self.send_package(params["from"], package, context,
                                         messagetype=params.get("messagetype", "edoc"))
        return {"DocID": doc_id}, {"upstream": f"{self.endpoint}/edocs", "trace_id": context.request_id}

    async def _op_edoc_received(self, params: Mapping[str, Any], context: CallContext) -> tuple[dict, dict]:
        query = {"servicetype": self.servicetype, **({"messagetype": params["messagetype"]}
                                                     if params.get("messagetype") else {})}
        doc, where = await self._json("GET", "/edocs/received", context, params=query)
        items = doc.get("data")
        if not isinstance(items, list):
            raise UpstreamMalformed("The national axis's pending list is not a list.", **where)
        return {"data": items}, where

    async def _op_edoc_get(self, params: Mapping[str, Any], context: CallContext) -> tuple[dict, dict]:
        package = await self.fetch_package(params["doc_id"], context)
        where = {"upstream": f"{self.endpoint}/edocs/{params['doc_id']}", "trace_id": context.request_id}
        return {"DocID": params["doc_id"], "size": len(package), "sha256": hashlib.sha256(package).hexdigest(),
                "package": base64.b64encode(package).decode("ascii")}, where

    async def _op_edoc_status_update(self, params: Mapping[str, Any], context: CallContext) -> tuple[dict, dict]:
        doc, where = await self._json("POST", f"/edocs/{params['doc_id']}/status", context,
                                      json={"status": params["status"]})
        return {"DocID": params["doc_id"], "statusUpdated": doc.get("statusUpdated", params["status"])}, where

    async def _op_edoc_sent(self, params: Mapping[str, Any], context: CallContext) -> tuple[dict, dict]:
        doc, where = await self._json("GET", f"/edocs/{params['doc_id']}/sent", context)
        if not isinstance(doc.get("data"), list):
            raise UpstreamMalformed("The national axis's delivery list is not a list.", **where)
        return {"DocID": params["doc_id"], "data": doc["data"]}, where

    async def _op_agencies_list(self, params: Mapping[str, Any], context: CallContext) -> tuple[dict, dict]:
        doc, where = await self._json("GET", "/agencies", context)
        if not isinstance(doc.get("data"), list):
            raise UpstreamMalformed("The national axis's agency list is not a list.", **where)
        return {"data": doc["data"]}, where

    async def _op_agencies_register(self, params: Mapping[str, Any], context: CallContext) -> tuple[dict, dict]:
        body = {k: params.get(k, "") for k in ("pcode", "code", "name", "mail", "mobile", "fax")}
        doc, where = await self._json("POST", "/agencies", context, json=body)
        return doc.get("data") if isinstance(doc.get("data"), dict) else body, where

    async def _op_agencies_delete(self, params: Mapping[str, Any], context: CallContext) -> tuple[dict, dict]:
        _, where = await self._json("DELETE", f"/agencies/{params['code']}", context)
        return {"code": params["code"], "deleted": True}, where
