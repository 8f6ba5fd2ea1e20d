"""Adapter for the national population database (CSDL quốc gia về dân cư), SOAP 1.1.

The WSDL in wsdl/population/ is the contract: zeep loads it at start-up and
renders, from it, a request template per operation (operation, SOAPAction,
element types checked); an exchange only fills the template's slots, so zeep
is never on the hot path. The exchange itself goes over the SDK's KeepAliveClient (kept-alive
HTTP/1.1, egress policy checked at connect, redirects refused), and the answer is read with the
hardened lxml parser of lgsp.soap into plain data for the mapping. Measured on
the project's 2-core box: zeep's own answer parsing costs ~400 µs CPU per
citizen and httpx ~2.4 ms per call at 50 concurrent calls, against ~40 µs and
~90 µs this way (see benchmarks/).

The endpoint, timeouts and the integration codes the national side expects
are connection settings, so the simulator and a real endpoint differ only by
configuration.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
import uuid
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit
from urllib.request import url2pathname
from xml.sax.saxutils import escape

from lxml import etree

from lgsp.sdk import (
    Adapter,
    AdapterResult,
    CallContext,
    ClientFailure,
    KeepAliveClient,
    Operation,
    RecordNotFound,
    UpstreamError,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
    codelists,
    egress,
    soap,
)

if TYPE_CHECKING:
    from .wsdl import Contract

__version__ = "1.1.0"

# The adapter's operations and the WSDL operations behind them.
SOAP_OPERATIONS = {
    "citizen.get": "TraCuuThongTinCongDan",
    "citizen.verify": "XacThucThongTinCongDan",
    "household.get": "CungCapThongTinHoGiaDinh",
    "household_head.verify": "XacMinhThongTinChuHo",
    "relatives.verify": "XacMinhThongTinNhanThan",
    "marital_status.verify": "XacMinhTinhTrangHonNhan",
    "vital_status.verify": "XacMinhTinhTrangChetMatTich",
    "bulk_verification.submit": "XacThucDanhSachCongDan",
    "bulk_verification.status": "GetRequestStatus",
    "bulk_verification.result": "GetRequestResult",
}
LIST_OPERATIONS = ("bulk_verification.submit", "bulk_verification.status", "bulk_verification.result")
EXAMPLE_HANDLE = "VIDU-000001"  # the simulator's always-finished example list
# Canonical values -> the population database's codes, for the verifications' claims.
RELATIONSHIPS = {"father": "Cha", "mother": "Me", "spouse": "VoChong", "child": "Con"}
MARITAL_STATUSES = ("single", "married", "divorced", "widowed")
VITAL_STATUSES = ("alive", "deceased", "missing")
# Answers whose TonTai=false means "no such citizen" (the others say so with KetQua=false).
STATUS_ANSWERS = ("marital_status.verify", "vital_status.verify")

_PID = {"type": "string"}


def _params(*required: str, **extra: Any) -> dict[str, Any]:
    props = {name: _PID for name in required if name.endswith("personal_id")}
    props.update(extra)
    return {"type": "object", "required": list(required), "properties": props}


def wsdl_directory() -> Path:
    """The WSDL and schemas shipped with the adapter: the only local files a connection may name."""
    return Path(str(files("lgsp_wsdl"))).resolve() / "population"


def default_wsdl() -> str:
    return str(wsdl_directory() / "population.wsdl")


def _packaged(location: str) -> Path:
    """The local WSDL or schema file, if it lies inside the adapter's package."""
    if location.lower().startswith("file:"):
        location = url2pathname(urlsplit(location).path)
    path = Path(location).resolve()
    if not path.is_relative_to(wsdl_directory()):
        raise egress.EgressRefused(f"WSDL {location[:200]!r}: a WSDL is read from the adapter's package "
                                   f"({wsdl_directory()}) or from an http(s) host the egress policy allows.")
    return path


def check_wsdl_location(location: str) -> None:
    if urlsplit(location).scheme.lower() in egress.SCHEMES:
        egress.check_url(location)
    else:
        _packaged(location)


class ZeepError(ValueError):
    """zeep's refusal of a request that does not fit the WSDL (zeep itself is imported only on demand)."""


# The single-person requests' shapes rendered at start-up: every value a slot, an officer named or not,
# a 12-digit ID (SoDinhDanh) or a 9-digit one (SoCMND), a full birth date or a year only.
TEMPLATE_VARIANTS: tuple[dict[str, str], ...] = ({}, {"personal_id": "012345678"}, {"birth_date": "1985"},
                     {"personal_id": "012345678", "birth_date": "1985"})
CHILD_TIMEOUT = 120  # seconds; an http(s) WSDL and its schemas are fetched by the child


_PREPARED: dict[str, dict[str, Any]] = {}


def prepare_in_child(asked: dict[str, Any]) -> dict[str, Any]:
    """The SOAPActions and the envelopes of the shapes asked, rendered by zeep from the WSDL in a child
    process (adapters/population/wsdl.py, run as a script: -P keeps its directory off the import path),
    so that zeep's modules and the WSDL's objects leave with it. Kept per process for a packaged WSDL,
    keyed by its files' content, so a connection change that only moves the endpoint (which no envelope
    or SOAPAction contains) rebuilds without a child, and a changed file is rendered again. A WSDL on
    the network is fetched and rendered every time: it may change at its source without a sign."""
    if urlsplit(asked["wsdl"]).scheme.lower() in egress.SCHEMES:
        return _render_in_child(asked)
    key = json.dumps({k: v for k, v in asked.items() if k != "endpoint"}, sort_keys=True) + _content_digest()
    if key not in _PREPARED:
        _PREPARED[key] = _render_in_child(asked)
    return _PREPARED[key]


def _content_digest() -> str:
    """A digest of the adapter's packaged WSDL and schemas (a few kB: cheaper than one child)."""
    digest = hashlib.sha256()
    for path in sorted(wsdl_directory().glob("*.[wx]s*")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _render_in_child(asked: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-P", str(Path(__file__).with_name("wsdl.py"))], input=json.dumps(asked),
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise ValueError(f"The population WSDL {asked['wsdl'][:200]!r} could not be loaded: {reason}")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


class PopulationAdapter(Adapter):
    name = "population"
    version = __version__
    settings_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["endpoint", "integration_code", "account", "agency_code"],
        "properties": {
            "endpoint": {"type": "string", "pattern": "^https?://", "description": "SOAP endpoint URL"},
            "wsdl": {"type": "string", "description": "WSDL file of the adapter's package, or an http(s) URL the "
                                                     "egress policy allows; defaults to the bundled one"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 120, "default": 10},
            "max_connections": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            "integration_code": {"type": "string", "minLength": 1, "description": "MaTichHop issued by the national side"},
            "account": {"type": "string", "minLength": 1, "description": "TaiKhoan of the province's integration account"},
            "agency_code": {"type": "string", "minLength": 1,
                            "description": "MaDonVi (the province's agency code) used when the client has none"},
            "service_codes": {
                "type": "object",
                "properties": {op: {"type": "string"} for op in SOAP_OPERATIONS},
                "additionalProperties": False,
            },
            "service_code_field": {
                "enum": ["MaDVC", "MaDichVu"], "default": "MaDVC",
                "description": "The name the national side expects for the service code (both are seen)",
            },
            "headers": {
                "type": "object", "additionalProperties": {"type": "string"},
                "description": "Extra HTTP headers the national gateway expects (e.g. an API key)",
            },
        },
    }
    operations = {
        "citizen.get": Operation(
            "citizen.get", "Look up a citizen (TraCuuThongTinCongDan)", mapping="citizen.get",
            params_schema={"type": "object", "required": ["personal_id"],
                           "properties": {"personal_id": {"type": "string"}}},
            persons=("father", "mother", "spouse", "representative", "household.head"),
        ),
        "citizen.verify": Operation(
            "citizen.verify", "Verify ID, name and birth date (XacThucThongTinCongDan)", mapping="citizen.verify",
            params_schema={"type": "object", "required": ["personal_id", "full_name", "birth_date"],
                           "properties": {"personal_id": {"type": "string"}, "full_name": {"type": "string"},
                                          "birth_date": {"type": "string"}}},
        ),
        "household.get": Operation(
            "household.get", "The household of a citizen: head, members, address (CungCapThongTinHoGiaDinh)",
            mapping="household.get", params_schema=_params("personal_id"), persons=("head", "members"),
        ),
        "household_head.verify": Operation(
            "household_head.verify", "Verify who heads a citizen's household (XacMinhThongTinChuHo)",
            mapping="household_head.verify", params_schema=_params("personal_id", "head_personal_id"),
            persons=("params.head_personal_id",),
        ),
        "relatives.verify": Operation(
            "relatives.verify", "Verify a father, mother, spouse or child (XacMinhThongTinNhanThan)",
            mapping="relatives.verify",
            params_schema=_params("personal_id", "relative_personal_id", "relationship",
                                  relationship={"enum": list(RELATIONSHIPS)}),
            persons=("params.relative_personal_id",),
        ),
        "marital_status.verify": Operation(
            "marital_status.verify", "Verify a citizen's marital status (XacMinhTinhTrangHonNhan)",
            mapping="marital_status.verify",
            params_schema=_params("personal_id", "marital_status", marital_status={"enum": list(MARITAL_STATUSES)}),
        ),
        "vital_status.verify": Operation(
            "vital_status.verify", "Verify whether a citizen is alive, deceased or missing (XacMinhTinhTrangChetMatTich)",
            mapping="vital_status.verify",
            params_schema=_params("personal_id", "vital_status", vital_status={"enum": list(VITAL_STATUSES)}),
        ),
        "bulk_verification.submit": Operation(
            "bulk_verification.submit", "Submit a list of ID, name and birth date to verify (XacThucDanhSachCongDan)",
            mapping="bulk_verification.submit",
            params_schema={"type": "object", "required": ["items"], "properties": {"items": {
                "type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["personal_id", "full_name", "birth_date"],
                    "properties": {"personal_id": _PID, "full_name": {"type": "string"},
                                   "birth_date": {"type": "string"}}}}}},
        ),
        "bulk_verification.status": Operation(
            "bulk_verification.status", "Whether a submitted list is done (GetRequestStatus)",
            mapping="bulk_verification.status",
            params_schema={"type": "object", "required": ["handle"], "properties": {"handle": {"type": "string"}}},
        ),
        "bulk_verification.result": Operation(
            "bulk_verification.result", "The outcome of each person of a list (GetRequestResult)",
            mapping="bulk_verification.result",
            params_schema={"type": "object", "required": ["handle"], "properties": {"handle": {"type": "string"}}},
        ),
    }
    mapping_file = Path(__file__).parent / "mapping.yaml"
    simulator = "lgsp_adapters.population.simulator:create_app"
    examples = {
        "citizen.get": {"personal_id": "001085012345"},
        "citizen.verify": {"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"},
        "household.get": {"personal_id": "001212012347"},
        "household_head.verify": {"personal_id": "001212012347", "head_personal_id": "001085012345"},
        "relatives.verify": {"personal_id": "001085012345", "relative_personal_id": "001055012349",
                             "relationship": "father"},
        "marital_status.verify": {"personal_id": "001085012345", "marital_status": "married"},
        "vital_status.verify": {"personal_id": "079048067891", "vital_status": "alive"},
        "bulk_verification.submit": {"items": [
            {"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"},
            {"personal_id": "079040067890", "full_name": "Phạm Văn Sáu", "birth_date": "1940"}]},
        "bulk_verification.status": {"handle": EXAMPLE_HANDLE},
        "bulk_verification.result": {"handle": EXAMPLE_HANDLE},
    }
    not_found_examples = {
        "citizen.get": {"personal_id": "001099999999"},
        "household.get": {"personal_id": "001099999999"},
        "marital_status.verify": {"personal_id": "001099999999", "marital_status": "single"},
        "vital_status.verify": {"personal_id": "001099999999", "vital_status": "alive"},
        "bulk_verification.status": {"handle": "KHONGCO-000000"},
        "bulk_verification.result": {"handle": "KHONGCO-000000"},
    }

    # 037 (look-up) and 033 (verify) are the codes seen; the others follow them by kind
    # and are settings (`service_codes`) until the national side publishes its own.
    DEFAULT_SERVICE_CODES = {
        "citizen.get": "037", "citizen.verify": "033", "household.get": "037", "household_head.verify": "033",
        "relatives.verify": "033", "marital_status.verify": "033", "vital_status.verify": "033",
        "bulk_verification.submit": "033", "bulk_verification.status": "033", "bulk_verification.result": "033",
    }

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        if settings.get("wsdl"):
            check_wsdl_location(settings["wsdl"])

    def __init__(self, settings: Mapping[str, Any]):
        super().__init__(settings)
        self.endpoint = self.settings["endpoint"]
        self.timeout = float(self.settings.get("timeout", 10))
        self._limit = int(self.settings.get("max_connections", 100))
        self._headers = {"Content-Type": "text/xml; charset=utf-8", **(self.settings.get("headers") or {})}
        self._wsdl = self.settings.get("wsdl") or default_wsdl()
        self._contract: Contract | None = None  # zeep, loaded in this process only for a shape no template covers
        self._codes = {**self.DEFAULT_SERVICE_CODES, **(self.settings.get("service_codes") or {})}
        self._code_field = self.settings.get("service_code_field") or "MaDVC"
        self._http = KeepAliveClient(limit=self._limit, timeout=self.timeout)
        self._templates: dict[tuple[str, str], list[str]] = {}
        self._prepare_templates()

    async def aclose(self) -> None:
        await self._http.close()

    def _request_fields(self, operation: str, params: Mapping[str, Any], context: CallContext,
                        trace_id: str) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "MaYeuCau": trace_id,
            self._code_field: self._codes[operation],
            "MaTichHop": self.settings["integration_code"],
            "MaDonVi": context.agency_code or self.settings["agency_code"],
            "MaCanBo": context.officer,
            "TaiKhoan": self.settings["account"],
        }
        if operation in LIST_OPERATIONS:
            return {**fields, **_list_fields(operation, params)}
        pid = params["personal_id"]
        fields["SoCMND" if len(pid) == 9 else "SoDinhDanh"] = pid  # callers choose by length
        if operation == "citizen.verify":
            fields["HoVaTen"] = params["full_name"]
            birth = params["birth_date"]
            fields["NgayThangNamSinh"] = {"Nam": birth} if len(birth) == 4 else {"NgayThangNam": birth.replace("-", "")}
        fields.update(_claim_fields(operation, params))
        return fields

    def _prepare_templates(self) -> None:
        """Render the request templates from the WSDL at start-up, in a child process where zeep checks
        them against the contract, so no exchange waits for zeep and no worker holds it: every shape of
        every single-person operation (TEMPLATE_VARIANTS). A shape no template covers (a list) is
        rendered by zeep in this process, imported then."""
        shapes: dict[tuple[str, str], dict[str, Any]] = {}
        for operation, example in self.examples.items():
            if operation in LIST_OPERATIONS:
                continue
            for variant in TEMPLATE_VARIANTS:
                params = {**example, **{k: v for k, v in variant.items() if k in example}}
                for officer in ("template", None):
                    context = CallContext(request_id="template", client_id="template", officer=officer)
                    shaped = _slotted(self._request_fields(operation, params, context, "template"), [])
                    shapes[(operation, repr(shaped))] = shaped
        prepared = prepare_in_child({"wsdl": self._wsdl, "endpoint": self.endpoint, "directory": str(wsdl_directory()),
                                     "operations": SOAP_OPERATIONS,
                                     "shapes": [[op, shaped] for (op, _), shaped in shapes.items()]})
        self._actions = prepared["actions"]
        # Split once at the slots, so a value can never be mistaken for a slot.
        self._templates = {key: _SLOT.split(text) for key, text in zip(shapes, prepared["envelopes"], strict=True)}

    @property
    def contract(self) -> Contract:
        """zeep's view of the WSDL in this process, loaded on first use (not at start-up)."""
        if self._contract is None:
            from .wsdl import Contract

            self._contract = Contract(self._wsdl, self.endpoint, str(wsdl_directory()), SOAP_OPERATIONS)
        return self._contract

    def _zeep_message(self, operation: str, fields: dict[str, Any]) -> bytes:
        from zeep.exceptions import Error

        try:
            return self.contract.message(operation, fields)
        except Error as exc:
            raise ZeepError(str(exc)) from None

    def _envelope(self, operation: str, fields: dict[str, Any]) -> bytes:
        """The request envelope, from the template of its shape (rendered by zeep from the WSDL once).

        zeep checks the structure and renders a template whose values are slots;
        each call only fills the slots (escaped), which saves ~150 µs of CPU.
        """
        values: list[str] = []
        shaped = _slotted(fields, values)
        key = (operation, repr(shaped))
        parts = self._templates.get(key)
        if parts is None:
            # Split once at the slots, so a value can never be mistaken for a slot.
            parts = self._templates[key] = _SLOT.split(self._zeep_message(operation, shaped).decode("utf-8"))
        out = [parts[0]]
        for i, value in enumerate(values):
            out += (escape(value), parts[i + 1])
        return "".join(out).encode("utf-8")

    async def call(self, operation: str, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        if operation not in SOAP_OPERATIONS:
            raise UpstreamError(f"The population adapter has no operation {operation!r}.")
        trace_id = context.request_id or uuid.uuid4().hex
        where = {"upstream": self.endpoint, "trace_id": trace_id}
        try:
            fields = self._request_fields(operation, params, context, trace_id)
            # A list has a new shape for every length: build it directly, no template to cache.
            body = self._list_envelope(operation, fields) if operation in LIST_OPERATIONS else (
                self._envelope(operation, fields))
        except (ZeepError, TypeError, ValueError, KeyError) as exc:
            raise UpstreamError(f"The request does not fit the population database's WSDL: {exc}", **where) from None
        headers = dict(self._headers, SOAPAction=f'"{self._actions[operation]}"')
        try:
            reply = await self._http.request("POST", self.endpoint, body=body, headers=headers)
            status, content = reply.status, reply.body
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"The population database did not answer within {self.timeout:g} s.", **where) from None
        except ClientFailure:
            raise UpstreamUnavailable("The population database could not be reached.", **where) from None
        answer = self._answer(status, content, where)
        if operation == "citizen.get":
            return self._citizen(answer, where)
        if operation == "household.get":
            return self._household(answer, where)
        data = soap.to_dict(answer)
        if operation in ("bulk_verification.status", "bulk_verification.result") and (
                data.get("TrangThai") == "KhongTonTai"):
            raise RecordNotFound("The population database has no list request with this handle (or it expired).",
                                 **where)
        if operation == "bulk_verification.result" and isinstance(data.get("KetQua"), dict):
            data["KetQua"] = [data["KetQua"]]  # one person: still a list
        if operation in STATUS_ANSWERS and data.get("TonTai") == "false":
            raise RecordNotFound("The national population database has no citizen with this personal ID.", **where)
        return AdapterResult(data=data, **where)

    def _answer(self, status: int, content: bytes, where: dict) -> etree._Element:
        """The SOAP Body's content, or the right UpstreamError."""
        try:
            element = soap.body_of(soap.parse(content))
        except soap.XmlRefused as exc:
            if status != 200:
                raise UpstreamUnavailable(f"The population database answered HTTP {status}.", **where) from None
            raise UpstreamMalformed(f"The population database's answer is not a valid SOAP message: {exc}.",
                                    **where) from None
        fault = soap.fault_of(element)
        if fault is not None:
            code = fault.detail.get("Loi", {}).get("MaLoi") if isinstance(fault.detail.get("Loi"), dict) else None
            raise UpstreamFault(f"The population database answered with a fault: {fault.message}",
                                fault_code=code or fault.code, **where)
        if status != 200:
            raise UpstreamUnavailable(f"The population database answered HTTP {status}.", **where)
        return element

    def _citizen(self, collection: etree._Element, where: dict) -> AdapterResult:
        found = collection.findall("{*}CongDan")
        if not found:
            raise RecordNotFound("The national population database has no citizen with this personal ID.", **where)
        meta = {k: v for k, v in collection.attrib.items() if k in ("SoCongDan", "GhiChu", "ThoiDiemDuLieu")}
        return AdapterResult(data=soap.to_dict(found[0]), meta=meta, **where)


    def _list_envelope(self, operation: str, fields: dict[str, Any]) -> bytes:
        return self._zeep_message(operation, fields)

    def _household(self, household: etree._Element, where: dict) -> AdapterResult:
        if household.find("{*}ThanhVien") is None:
            raise RecordNotFound("The national population database has no household for this personal ID.",
                                 **where)
        meta = {k: v for k, v in household.attrib.items() if k in ("SoThanhVien", "GhiChu", "ThoiDiemDuLieu")}
        return AdapterResult(data=soap.to_dict(household), meta=meta, **where)


def _claim_fields(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The operation's own request fields after the citizen's ID (canonical values → national codes)."""
    if operation == "household_head.verify":
        return {"SoDinhDanhChuHo": params["head_personal_id"]}
    if operation == "relatives.verify":
        return {"QuanHe": RELATIONSHIPS[params["relationship"]], "SoDinhDanhNguoiThan": params["relative_personal_id"]}
    if operation == "marital_status.verify":
        return {"TinhTrangHonNhan": _national_code("marital-status", params["marital_status"])}
    if operation == "vital_status.verify":
        return {"TinhTrang": _national_code("vital-status", params["vital_status"])}
    return {}


def _list_fields(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    if operation != "bulk_verification.submit":
        return {"MaTraCuu": params["handle"]}
    rows = []
    for item in params["items"]:
        pid, birth = item["personal_id"], item["birth_date"]
        row: dict[str, Any] = {"SoCMND" if len(pid) == 9 else "SoDinhDanh": pid, "HoVaTen": item["full_name"]}
        row["NgayThangNamSinh"] = {"Nam": birth} if len(birth) == 4 else {"NgayThangNam": birth.replace("-", "")}
        rows.append(row)
    return {"DanhSach": {"CongDan": rows}}


def _national_code(codelist: str, canonical: str) -> str:
    code = codelists.get(codelist).reverse("population-db").get(canonical)
    if code is None:
        raise ValueError(f"{codelist} has no population-db code for {canonical!r}")
    return code


_SLOT = re.compile(r"LGSPSLOT\d{3}X")


def _slot(i: int) -> str:
    return f"LGSPSLOT{i:03d}X"


def _slotted(fields: Mapping[str, Any], values: list[str]) -> dict[str, Any]:
    """The same request with every value replaced by a numbered slot (None left out)."""
    shaped: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            shaped[key] = _slotted(value, values)
        else:
            values.append(str(value))
            shaped[key] = _slot(len(values) - 1)
    return shaped
