"""Adapter for the national public-service portal (Cổng Dịch vụ công quốc gia): dossier sync.

The portal has one JSON endpoint. Every request is a ``POST`` with the header ``dstcode``
(the province's destination code) and a body carrying ``session`` (a session token the
adapter obtains from the portal first and renews when the portal says it expired),
``madonvi`` (the province's unit code) and ``service``:

- ``dossier.sync`` -> ``DongBoHoSoMC`` (create or replace one dossier). The adapter decides
  ``isUpdating`` itself by looking the dossier up with ``TraCuuHoSo`` first, every time: the
  portal is the only truth that holds across workers, nodes and restarts, and after a
  time-out only the portal knows whether a create went through. The same look-up makes a
  redelivery harmless: when the portal already holds exactly this dossier, nothing is sent.
- ``dossier.progress`` -> ``CapNhatTienDoHoSoMC`` (append one step). Steps are appended, so a
  write repeated after a time-out would show twice: the adapter looks the dossier up first
  and sends nothing when the portal already has an identical step.
- ``dossier.get`` -> ``TraCuuHoSo``; ``procedure.get`` -> ``LayThuTuc``.

Canonical dossiers are rendered into the portal's fields by the ``outbound:`` section of
mapping.yaml (dates as yyyyMMddHHmmss in Asia/Ho_Chi_Minh, codes through the code lists).

Errors, as the delivery engine reads them: a portal refusal (``error_code`` other than "00",
a create for an existing dossier, an update for a missing one) is an ``UpstreamFault``
carrying the portal's code and message (permanent); an outage, an HTTP 5xx, 408 or 429, or
an ``error_code`` listed in ``transient_error_codes`` is ``UpstreamUnavailable``, a time-out
``UpstreamTimeout`` (both transient); an answer that is not the portal's envelope is
``UpstreamMalformed``. The LGSP's idempotency token (``CallContext.request_id``, stable per
message across redeliveries) travels in the ``X-Request-ID`` header.

Everything the field notes do not confirm (the session service, failure codes, the message
field) is a setting with the project's assumption as default: see docs/portal.md.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
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
    load_mapping,
)

__version__ = "1.0.0"

HERE = Path(__file__).parent
DOSSIER_SCHEMA = json.loads((HERE / "dossier.schema.json").read_text(encoding="utf-8"))
PROGRESS_SCHEMA = json.loads((HERE / "progress.schema.json").read_text(encoding="utf-8"))
MAX_ANSWER = 8 * 1024 * 1024  # a dossier with its steps is tens of KB; refuse to buffer more
OK = "00"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PROCEDURE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.-]{0,63}")
# Fields the portal adds to a dossier it stores (TraCuuHoSo) that a sync never sends.
PORTAL_ONLY = frozenset({"QuaTrinhXuLy"})

# dossier.progress takes {"dossier_no", "step": {...}}, or the step's fields flat beside dossier_no
# (as the REST door's body and the URL's dossier number come together).
PROGRESS_PARAMS = {
    "$defs": PROGRESS_SCHEMA["$defs"],
    "oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["dossier_no", "step"],
         "properties": {"dossier_no": DOSSIER_SCHEMA["$defs"]["dossier_no"], "step": PROGRESS_SCHEMA}},
        {"type": "object", "additionalProperties": False, "required": ["dossier_no", *PROGRESS_SCHEMA["required"]],
         "properties": {"dossier_no": DOSSIER_SCHEMA["$defs"]["dossier_no"], **PROGRESS_SCHEMA["properties"]}},
    ],
}

EXAMPLE_DOSSIER = {
    "version": 1, "dossier_no": "000.00.31.H30-261101-0001", "procedure_code": "1.001193",
    "procedure_name": "Đăng ký khai sinh", "field_code": "HT", "field_name": "Hộ tịch",
    "applicant": {"name": "Trần Thị Bình", "type": "citizen", "phone": "0912000111"},
    "summary": "Đăng ký khai sinh cho con", "received_at": "2026-11-01T08:30:00+07:00",
    "due_at": "2026-11-03T17:00:00+07:00", "status": "processing", "handling_agency": "UBND phường Phúc Xá",
    "submitted_files": [{"file_id": "f1", "name": "to-khai-khai-sinh.pdf", "deleted": False}],
    "fees": [{"name": "Lệ phí đăng ký khai sinh", "code": "LP01", "collection_method": "1", "amount": 0, "kind": "1"}],
}


class _Session:
    """The portal session token and when to stop using it (monotonic clock)."""

    __slots__ = ("value", "renew_at")

    def __init__(self, value: str, expires_in: float | None):
        self.value = value
        # Renew a little early when the portal says how long a session lives; otherwise use
        # it until the portal answers that it expired.
        self.renew_at = float("inf") if expires_in is None else \
            time.monotonic() + expires_in - min(30.0, expires_in / 10)

    @property
    def fresh(self) -> bool:
        return time.monotonic() < self.renew_at


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


class PortalAdapter(Adapter):
    name = "portal"
    version = __version__
    settings_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["endpoint", "dstcode", "madonvi", "username", "password"],
        "properties": {
            "endpoint": {"type": "string", "pattern": "^https?://",
                         "description": "The portal's JSON endpoint every service is posted to"},
            "dstcode": {"type": "string", "minLength": 1, "maxLength": 64,
                        "description": "Destination code the portal gave the province (header dstcode)"},
            "madonvi": {"type": "string", "minLength": 1, "maxLength": 64,
                        "description": "The province's unit code on the portal (body madonvi)"},
            "username": {"type": "string", "minLength": 1, "description": "Account for the session service"},
            "password": {"type": "string", "minLength": 1, "writeOnly": True, "description": "Its password"},
            "session_service": {"type": "string", "minLength": 1, "default": "LayPhienLamViec",
                                "description": "The service that issues a session (assumption)"},
            "session_expired_codes": {"type": "array", "items": {"type": "string"}, "default": ["401"],
                                      "description": "error_code values meaning the session is no longer "
                                                     "valid: renew it and retry once (assumption)"},
            "transient_error_codes": {"type": "array", "items": {"type": "string"}, "default": [],
                                      "description": "error_code values meaning 'busy, try later' "
                                                     "(retried, not dead-lettered); none known"},
            "message_field": {"type": "string", "minLength": 1, "default": "message",
                              "description": "Field of an answer holding the portal's message (assumption)"},
            "check_before_write": {"type": "boolean", "default": True,
                                   "description": "Look the dossier up before a progress step and send nothing "
                                                  "when the portal already has it (exactly-once on redelivery)"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 120, "default": 10},
            "max_connections": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Extra HTTP headers the portal expects"},
        },
    }
    operations = {
        "dossier.sync": Operation(
            "dossier.sync", "Create or replace a dossier on the national portal (TraCuuHoSo, DongBoHoSoMC)",
            mapping="dossier.sync", params_schema=DOSSIER_SCHEMA, writes=True),
        "dossier.progress": Operation(
            "dossier.progress", "Append a progress step to a dossier on the portal (CapNhatTienDoHoSoMC)",
            mapping="dossier.progress", writes=True, params_schema=PROGRESS_PARAMS),
        "dossier.get": Operation(
            "dossier.get", "Read a dossier as the portal holds it (TraCuuHoSo)", mapping="dossier.get",
            params_schema={"type": "object", "required": ["dossier_no"],
                           "properties": {"dossier_no": DOSSIER_SCHEMA["$defs"]["dossier_no"]}}),
        "procedure.get": Operation(
            "procedure.get", "Read a procedure of the national catalogue (LayThuTuc)", mapping="procedure.get",
            params_schema={"type": "object", "required": ["procedure_code"],
                           "properties": {"procedure_code": DOSSIER_SCHEMA["properties"]["procedure_code"]}}),
    }
    mapping_file = HERE / "mapping.yaml"
    simulator = "lgsp_adapters.portal.simulator:create_app"
    # dossier.sync is safe to repeat (create or replace); a progress step is appended, so it has no example.
    examples = {"dossier.sync": EXAMPLE_DOSSIER, "dossier.get": {"dossier_no": "000.00.31.H30-261101-0001"},
                "procedure.get": {"procedure_code": "1.001193"}}
    not_found_examples = {"dossier.get": {"dossier_no": "000.00.31.H30-000000-0000"},
                          "procedure.get": {"procedure_code": "9.999999"}}

    def __init__(self, settings: Mapping[str, Any]):
        super().__init__(settings)
        s = self.settings
        self.endpoint = s["endpoint"]
        self.timeout = float(s.get("timeout", 10))
        self._headers = {"Accept": "application/json", "Content-Type": "application/json",
                         **(s.get("headers") or {}), "dstcode": s["dstcode"]}
        self._expired = frozenset(s.get("session_expired_codes", ["401"]))
        self._transient = frozenset(s.get("transient_error_codes", []))
        self._message = s.get("message_field", "message")
        self._check = bool(s.get("check_before_write", True))
        self._mapping = load_mapping(self.mapping_file)
        self._session: _Session | None = None
        self._session_lock = asyncio.Lock()
        self._http = LazySession(limit=int(s.get("max_connections", 100)), timeout=self.timeout)

    async def aclose(self) -> None:
        await self._http.close()

    # -- the operations -------------------------------------------------------------------
    async def call(self, operation: str, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        where = {"upstream": self.endpoint, "trace_id": context.request_id}
        if operation == "dossier.sync":
            data = await self._sync(params, context, where)
        elif operation == "dossier.progress":
            data = await self._progress(params, context, where)
        elif operation == "dossier.get":
            data = await self._one("TraCuuHoSo", {"mahoso": self._key(params.get("dossier_no"), "dossier_no")},
                                   context, where, "The national portal has no dossier with this number.")
        elif operation == "procedure.get":
            code = params.get("procedure_code")
            if not isinstance(code, str) or not _PROCEDURE.fullmatch(code):
                raise ValueError("procedure_code is not a national procedure code")
            data = await self._one("LayThuTuc", {"maTTHC": code}, context, where,
                                   "The national procedure catalogue has no procedure with this code.")
        else:
            raise UpstreamError(f"The portal adapter has no operation {operation!r}.")
        return AdapterResult(data=data, **where)

    async def _sync(self, dossier: Mapping[str, Any], context: CallContext, where: dict) -> dict:
        item = self._render("dossier.sync", dossier, where)
        number = item["MaHoSo"]
        stored = await self._lookup(number, context, where)
        if stored is not None and self._holds(stored, item):
            return self._receipt(number, {"error_code": OK}, updating="True", already=True)
        updating = "True" if stored is not None else "False"
        doc = await self._post("DongBoHoSoMC", {"isUpdating": updating, "data": [item]}, context, where)
        return self._receipt(number, doc, updating=updating)

    async def _progress(self, params: Mapping[str, Any], context: CallContext, where: dict) -> dict:
        number = params.get("dossier_no")
        if not isinstance(number, str) or not _KEY.fullmatch(number):
            raise UpstreamFault("The dossier.progress input has no valid dossier_no.", fault_code="lgsp.unmappable",
                                **where)
        step = params.get("step")
        if step is None:  # the step's fields given flat beside dossier_no
            step = {k: v for k, v in params.items() if k != "dossier_no"}
        item = {"MaHoSo": number, **self._render("dossier.progress", step, where)}
        if self._check:
            stored = await self._lookup(number, context, where)
            steps = stored.get("QuaTrinhXuLy") if stored else None
            if isinstance(steps, list) and item in steps:
                return self._receipt(number, {"error_code": OK}, already=True)
        doc = await self._post("CapNhatTienDoHoSoMC", {"data": [item]}, context, where)
        return self._receipt(number, doc)

    def _receipt(self, number: str, doc: dict, *, updating: str | None = None, already: bool = False) -> dict:
        out = {"MaHoSo": number, "error_code": _text(doc.get("error_code")) or None,
               "message": _text(doc.get(self._message)) or None, "AlreadyOnPortal": already}
        if updating is not None:
            out["isUpdating"] = updating
        return out

    @staticmethod
    def _holds(stored: dict, item: dict) -> bool:
        """The portal already holds exactly this dossier (a redelivery after an unacknowledged write)."""
        return all(stored.get(k) == v for k, v in item.items()) and \
            set(stored) - PORTAL_ONLY <= set(item)

    async def _lookup(self, number: str, context: CallContext, where: dict) -> dict | None:
        result = self._result(await self._post("TraCuuHoSo", {"mahoso": number}, context, where), where)
        return result[0] if result else None

    async def _one(self, service: str, fields: dict, context: CallContext, where: dict, missing: str) -> dict:
        result = self._result(await self._post(service, fields, context, where), where)
        if not result:
            raise RecordNotFound(missing, **where)
        return result[0]

    @staticmethod
    def _result(doc: dict, where: dict) -> list[dict]:
        result = doc.get("result")
        if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
            raise UpstreamMalformed("The national portal's answer has no result list.", **where)
        return result

    def _render(self, operation: str, canonical: Any, where: dict) -> dict:
        try:
            item = self._mapping.to_national(operation, canonical)
            if operation == "dossier.sync" and not _KEY.fullmatch(item["MaHoSo"]):
                raise ValueError("dossier_no is not a dossier number.")
            return item
        except ValueError as exc:  # a MappingError (a ValueError) names the canonical field, never its value
            # The door validates against the schema first; what still cannot be written in the
            # portal's format never will be: permanent, never sent.
            raise UpstreamFault(f"The {operation} input cannot be written in the portal's format: {exc}",
                                fault_code="lgsp.unmappable", **where) from None

    @staticmethod
    def _key(value: Any, name: str) -> str:
        if not isinstance(value, str) or not _KEY.fullmatch(value):
            raise ValueError(f"{name} is not a dossier number")
        return value

    # -- the wire -----------------------------------------------------------------------
    async def _post(self, service: str, fields: dict, context: CallContext, where: dict) -> dict:
        """The portal's answer with error_code "00", after one session renewal if it expired."""
        session = await self._current_session(context, where)
        doc = await self._send(service, session, fields, context, where)
        if self._code(doc) in self._expired:
            session = await self._current_session(context, where, stale=session)
            doc = await self._send(service, session, fields, context, where)
            if self._code(doc) in self._expired:
                raise UpstreamFault("The national portal refused a session it had just issued.",
                                    fault_code=self._code(doc), **where)
        return self._accepted(doc, where)

    async def _send(self, service: str, session: str | None, fields: dict, context: CallContext,
                    where: dict) -> dict:
        body = {"madonvi": self.settings["madonvi"], "service": service, **fields}
        if session is not None:
            body["session"] = session
        headers = dict(self._headers, **{"X-Request-ID": context.request_id})
        try:
            async with self._http.get().post(self.endpoint, data=orjson.dumps(body), headers=headers) as resp:
                status, content = resp.status, await resp.content.read(MAX_ANSWER + 1)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"The national portal did not answer within {self.timeout:g} s.", **where) from None
        except aiohttp.ClientError:
            raise UpstreamUnavailable("The national portal could not be reached.", **where) from None
        return self._envelope(status, content, where)

    @staticmethod
    def _envelope(status: int, content: bytes, where: dict) -> dict:
        if status >= 500 or status in (408, 429):
            # Whatever the body says: the portal (or the proxy before it) is not able to work now.
            raise UpstreamUnavailable(f"The national portal answered HTTP {status}.", **where)
        if len(content) > MAX_ANSWER:
            raise UpstreamMalformed("The national portal's answer is too large.", **where)
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and "error_code" in doc:
            return doc  # an envelope, whatever the HTTP status: its error_code says more
        if status != 200:
            raise UpstreamFault(f"The national portal answered HTTP {status} without its envelope "
                                f"(check the endpoint and dstcode).", fault_code=f"HTTP {status}", **where)
        raise UpstreamMalformed("The national portal's answer is not its JSON envelope.", **where)

    @staticmethod
    def _code(doc: dict) -> str:
        code = _text(doc.get("error_code")).strip()
        # "00" is success; a JSON 0 or "0" is read the same way rather than as a refusal.
        return OK if code and not code.strip("0") else code

    def _accepted(self, doc: dict, where: dict) -> dict:
        code = self._code(doc)
        if code == OK:
            return doc
        message = _text(doc.get(self._message))[:300]
        if code in self._transient:
            raise UpstreamUnavailable(f"The national portal is busy ({code}): {message}", **where)
        raise UpstreamFault(f"The national portal refused the request ({code}): {message}", fault_code=code, **where)

    # -- the session ------------------------------------------------------------------------
    async def _current_session(self, context: CallContext, where: dict, stale: str | None = None) -> str:
        """A usable session; ``stale`` is one the portal just refused, so it is not handed out again."""
        session = self._session
        if session is not None and session.fresh and session.value != stale:
            return session.value
        async with self._session_lock:  # one renewal for many waiting calls
            session = self._session
            if session is None or not session.fresh or session.value == stale:
                self._session = session = await self._open_session(context, where)
            return session.value

    async def _open_session(self, context: CallContext, where: dict) -> _Session:
        fields = {"username": self.settings["username"], "password": self.settings["password"]}
        doc = self._accepted(await self._send(self.settings.get("session_service", "LayPhienLamViec"), None,
                                              fields, context, where), where)
        value, expires_in = doc.get("session"), doc.get("expires_in")
        if not isinstance(value, str) or not value:
            raise UpstreamMalformed("The national portal's session answer has no session token.", **where)
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
            expires_in = None
        return _Session(value, None if expires_in is None else float(expires_in))
