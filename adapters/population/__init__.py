"""Adapter for the national population database (CSDL quốc gia về dân cư), SOAP 1.1.

Built with zeep from the WSDL in wsdl/population/; the endpoint, timeouts and
the integration codes the national side expects are connection settings, so
the simulator and a real endpoint differ only by configuration.
"""
from __future__ import annotations

import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping

import httpx
from lxml import etree
from zeep import AsyncClient, Settings
from zeep.exceptions import Error as ZeepError
from zeep.exceptions import Fault, TransportError, XMLParseError, XMLSyntaxError
from zeep.helpers import serialize_object
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport

from lgsp.adapter import (
    Adapter, AdapterResult, CallContext, Operation, RecordNotFound, UpstreamError, UpstreamFault,
    UpstreamMalformed, UpstreamTimeout, UpstreamUnavailable,
)

__version__ = "1.0.0"

def default_wsdl() -> str:
    return str(Path(str(files("lgsp_wsdl"))) / "population" / "population.wsdl")


class PopulationAdapter(Adapter):
    name = "population"
    version = __version__
    settings_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["endpoint", "integration_code", "account", "agency_code"],
        "properties": {
            "endpoint": {"type": "string", "pattern": "^https?://", "description": "SOAP endpoint URL"},
            "wsdl": {"type": "string", "description": "WSDL path or URL; defaults to the bundled one"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 120, "default": 10},
            "max_connections": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            "integration_code": {"type": "string", "minLength": 1, "description": "MaTichHop issued by the national side"},
            "account": {"type": "string", "minLength": 1, "description": "TaiKhoan of the province's integration account"},
            "agency_code": {"type": "string", "minLength": 1,
                            "description": "MaDonVi (the province's agency code) used when the client has none"},
            "service_codes": {
                "type": "object",
                "properties": {"citizen.get": {"type": "string"}, "citizen.verify": {"type": "string"}},
                "additionalProperties": False,
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
        ),
        "citizen.verify": Operation(
            "citizen.verify", "Verify ID, name and birth date (XacThucThongTinCongDan)", mapping="citizen.verify",
            params_schema={"type": "object", "required": ["personal_id", "full_name", "birth_date"],
                           "properties": {"personal_id": {"type": "string"}, "full_name": {"type": "string"},
                                          "birth_date": {"type": "string"}}},
        ),
    }
    mapping_file = Path(__file__).parent / "mapping.yaml"
    simulator = "lgsp_adapters.population.simulator:create_app"

    DEFAULT_SERVICE_CODES = {"citizen.get": "037", "citizen.verify": "033"}

    def __init__(self, settings: Mapping[str, Any]):
        super().__init__(settings)
        self.endpoint = self.settings["endpoint"]
        self.timeout = float(self.settings.get("timeout", 10))
        limit = int(self.settings.get("max_connections", 100))
        self._http = httpx.AsyncClient(
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            headers=self.settings.get("headers") or {},
        )
        # The WSDL is read once, from a file: nothing is fetched at call time.
        transport = AsyncTransport(client=self._http, wsdl_client=httpx.Client(timeout=self.timeout))
        zeep_settings = Settings(strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True,
                                 forbid_external=True)
        self._client = AsyncClient(self.settings.get("wsdl") or default_wsdl(), transport=transport,
                                   settings=zeep_settings)
        binding = next(iter(self._client.wsdl.bindings.values()))  # the WSDL declares one SOAP 1.1 binding
        self._service = AsyncServiceProxy(self._client, binding, address=self.endpoint)
        self._codes = {**self.DEFAULT_SERVICE_CODES, **(self.settings.get("service_codes") or {})}

    async def aclose(self) -> None:
        await self._http.aclose()

    def _header_fields(self, operation: str, context: CallContext, trace_id: str) -> dict[str, Any]:
        return {
            "MaYeuCau": trace_id,
            "MaDVC": self._codes[operation],
            "MaTichHop": self.settings["integration_code"],
            "MaDonVi": context.agency_code or self.settings["agency_code"],
            "MaCanBo": context.officer,
            "TaiKhoan": self.settings["account"],
        }

    async def call(self, operation: str, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        trace_id = context.request_id or uuid.uuid4().hex
        fields = self._header_fields(operation, context, trace_id)
        pid = params["personal_id"]
        fields["SoCMND" if len(pid) == 9 else "SoDinhDanh"] = pid
        try:
            if operation == "citizen.get":
                answer = await self._service.TraCuuThongTinCongDan(**fields)
                return self._citizen(answer, trace_id)
            if operation == "citizen.verify":
                fields["HoVaTen"] = params["full_name"]
                birth = params["birth_date"]
                fields["NgayThangNamSinh"] = (
                    {"Nam": birth} if len(birth) == 4 else {"NgayThangNam": birth.replace("-", "")}
                )
                answer = await self._service.XacThucThongTinCongDan(**fields)
                return AdapterResult(data=_plain(serialize_object(answer, dict)), upstream=self.endpoint,
                                     trace_id=trace_id)
        except UpstreamError:
            raise
        except Fault as exc:
            raise UpstreamFault(f"The population database answered with a fault: {exc.message}",
                                fault_code=str(exc.code), upstream=self.endpoint, trace_id=trace_id) from None
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"The population database did not answer within {self.timeout:g} s.",
                                  upstream=self.endpoint, trace_id=trace_id) from None
        except TransportError as exc:
            if exc.status_code == 200:  # zeep's way of saying "200 OK, but not XML"
                raise UpstreamMalformed("The population database's answer is not valid XML.",
                                        upstream=self.endpoint, trace_id=trace_id) from None
            raise UpstreamUnavailable(f"The population database answered HTTP {exc.status_code}.",
                                      upstream=self.endpoint, trace_id=trace_id) from None
        except httpx.TransportError:
            raise UpstreamUnavailable("The population database could not be reached.",
                                      upstream=self.endpoint, trace_id=trace_id) from None
        except (XMLSyntaxError, XMLParseError, etree.XMLSyntaxError, ZeepError, ValueError) as exc:
            raise UpstreamMalformed(f"The population database's answer is not valid ({type(exc).__name__}).",
                                    upstream=self.endpoint, trace_id=trace_id) from None
        raise UpstreamError(f"Unknown operation {operation!r}.")

    def _citizen(self, answer: Any, trace_id: str) -> AdapterResult:
        collection = _plain(serialize_object(answer, dict)) or {}
        found = collection.get("CongDan") or []
        if isinstance(found, dict):
            found = [found]
        if not found:
            raise RecordNotFound("The national population database has no citizen with this personal ID.",
                                 upstream=self.endpoint, trace_id=trace_id)
        meta = {k: collection[k] for k in ("SoCongDan", "GhiChu", "ThoiDiemDuLieu") if k in collection}
        return AdapterResult(data=found[0], meta=meta, upstream=self.endpoint, trace_id=trace_id)


def _plain(value: Any) -> Any:
    """zeep objects → plain dicts of strings, dropping absent elements (the mapping's input contract)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _plain(v)
            if v not in (None, "", [], {}):
                out[k] = v
        return out
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return None
    return str(value)
