"""REST simulator of the national business registration database (CSDL đăng ký doanh nghiệp)
as the national gateway (NGSP) exposes it: an OAuth2 client-credentials ``/token``
endpoint issuing opaque bearer tokens, and ``GET /apiCSDLDKDN/1.0/chiTietDoanhNghiep?msdn=``
answering the registry's JSON envelope ``{Status, Message, Data}``.

Tokens expire after a configurable time so that clients' refresh logic is
exercised; faults can be switched on at run time through ``/_sim/faults``.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lgsp.sdk import Faults

from .data import STATUSES, Dataset, Enterprise, generate

API_BASE = "/apiCSDLDKDN/1.0"
DEFAULT_CLIENT = ("lgsp-demo", "lgsp-demo-secret")
MAX_TOKENS = 10_000  # live tokens kept; the oldest are dropped beyond this
_MSDN = re.compile(r"[0-9]{10}(-[0-9]{3})?")

NOT_FOUND = "Không tìm thấy thông tin doanh nghiệp"
BAD_CODE = "Mã số doanh nghiệp không hợp lệ"
BUSY = "Hệ thống CSDL quốc gia về đăng ký doanh nghiệp đang bận, vui lòng thử lại sau"
DOWN_PAGE = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


# --- the wire format ----------------------------------------------------------------

def main_information(e: Enterprise) -> dict[str, Any]:
    """Data.MainInformation for one enterprise; empty text is sent as "" as the registry does."""
    ho = e.head_office
    return {
        "ENTERPRISE_GDT_CODE": e.code,
        "NAME": e.name,
        "SHORT_NAME": e.short_name,
        "NAME_F": e.foreign_name,
        "ENTERPRISE_TYPE_NAME": e.legal_form,
        "FOUNDING_DATE": e.founding_date.strftime("%d/%m/%Y"),
        "ENTERPRISE_STATUS": e.status,
        "ENTERPRISE_STATUS_NAME": STATUSES[e.status],
        "LEGAL_NAMES": e.legal_names,
        "CAPITAL_AMOUNT": e.capital,
        "HOAdress": {"CityID": ho.city, "DistrictID": ho.district or "", "WardID": ho.ward,
                     "AddressFullText": ho.full_text},
        "BusinessActivity": [{"CODE": a.code, "NAME": a.name, "IS_MAIN": 1 if a.main else 0}
                             for a in e.activities],
        "Member": [{"FULL_NAME": m.full_name, "MEMBER_TYPE": m.member_type, "POSITION_NAME": m.position or "",
                    "IS_LEGAL_REPRESENTATIVE": 1 if m.legal_representative else 0, "ID_NUMBER": m.id_number or ""}
                   for m in e.members],
    }


def envelope(status: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"Status": status, "Message": message, "Data": data}


def gateway_fault(code: int, message: str, description: str) -> JSONResponse:
    """A 401 as the national API manager answers it (WSO2 style)."""
    return JSONResponse(
        {"fault": {"code": code, "message": message, "description": description}}, status_code=401,
        headers={"WWW-Authenticate": f'Bearer realm="NGSP", error="invalid_token", error_description="{message}"'})


# --- fault injection, tokens and stats -------------------------------------------------

@dataclass
class Tokens:
    """Opaque bearer tokens with an expiry, per client."""

    ttl: float = 3600.0
    live: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (client, expiry on the monotonic clock)

    def issue(self, client_id: str) -> str:
        now = time.monotonic()
        if len(self.live) >= MAX_TOKENS:
            self.live = {t: v for t, v in self.live.items() if v[1] > now}
            while len(self.live) >= MAX_TOKENS:
                self.live.pop(next(iter(self.live)))
        token = str(uuid.uuid4())
        self.live[token] = (client_id, now + self.ttl)
        return token

    def check(self, token: str) -> str:
        """'ok', 'expired' or 'unknown'."""
        entry = self.live.get(token)
        if entry is None:
            return "unknown"
        if entry[1] <= time.monotonic():
            del self.live[token]
            return "expired"
        return "ok"

    def revoke_all(self) -> int:
        n = len(self.live)
        self.live.clear()
        return n


@dataclass
class Stats:
    requests: int = 0            # data requests (chiTietDoanhNghiep)
    tokens_issued: int = 0
    token_refused: int = 0       # /token requests refused
    unauthorized: int = 0        # data requests answered 401
    answers: dict[str, int] = field(default_factory=dict)   # found / not_found / bad_request
    injected: dict[str, int] = field(default_factory=dict)  # requests hit by a fault mode

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "tokens_issued": self.tokens_issued,
                "token_refused": self.token_refused, "unauthorized": self.unauthorized,
                "answers": dict(self.answers), "injected": dict(self.injected)}


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _basic(header: str) -> tuple[str, str] | None:
    if not header.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = raw.partition(":")
    return (user, password) if sep else None


# --- the HTTP service -----------------------------------------------------------------

class Simulator:
    def __init__(self, dataset: Dataset, clients: dict[str, str], tokens: Tokens, faults: Faults):
        self.dataset = dataset
        self.clients = clients
        self.tokens = tokens
        self.faults = faults
        self.stats = Stats()

    # POST /token
    async def token(self, request: Request) -> Response:
        form = await request.form()
        creds = _basic(request.headers.get("authorization", "")) or (
            str(form.get("client_id", "")), str(form.get("client_secret", "")))
        known = self.clients.get(creds[0])
        if known is None or not secrets.compare_digest(known.encode(), creds[1].encode()):
            self.stats.token_refused += 1
            return JSONResponse({"error": "invalid_client", "error_description": "Client authentication failed"},
                                status_code=401, headers={"WWW-Authenticate": 'Basic realm="NGSP"'})
        if form.get("grant_type") != "client_credentials":
            self.stats.token_refused += 1
            return JSONResponse({"error": "unsupported_grant_type",
                                 "error_description": "Only client_credentials is supported"}, status_code=400)
        self.stats.tokens_issued += 1
        ttl = self.tokens.ttl
        return JSONResponse({"access_token": self.tokens.issue(creds[0]), "token_type": "Bearer",
                             "expires_in": int(ttl) if ttl == int(ttl) else ttl, "scope": "default"},
                            headers={"Cache-Control": "no-store"})

    # GET /apiCSDLDKDN/1.0/chiTietDoanhNghiep?msdn=
    async def enterprise(self, request: Request) -> Response:
        self.stats.requests += 1
        mode, delay = self.faults.take()
        if mode != "normal":
            _bump(self.stats.injected, mode)
        if mode == "down":  # the gateway in front answers, the registry behind it does not
            return HTMLResponse(DOWN_PAGE, status_code=503)
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        if mode == "slow":
            await asyncio.sleep(delay)
        if mode == "fault":
            return JSONResponse(envelope(0, BUSY))
        response = self._lookup(request.query_params.get("msdn", "").strip())
        if mode == "malformed":  # a reply cut off mid-stream
            return Response(response.body[: len(response.body) // 2], media_type="application/json")
        return response

    def _authenticate(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.stats.unauthorized += 1
            return gateway_fault(900902, "Missing Credentials",
                                 "Make sure your API invocation call has a header: 'Authorization: Bearer ACCESS_TOKEN'")
        state = self.tokens.check(token.strip())
        if state != "ok":
            self.stats.unauthorized += 1
            what = "The access token expired" if state == "expired" else "Invalid Credentials"
            return gateway_fault(900901, what, "Make sure you have provided the correct security credentials")
        return None

    def _lookup(self, msdn: str) -> JSONResponse:
        if not _MSDN.fullmatch(msdn):
            _bump(self.stats.answers, "bad_request")
            return JSONResponse(envelope(0, BAD_CODE), status_code=400)
        e = self.dataset.find(msdn)
        if e is None:
            _bump(self.stats.answers, "not_found")
            return JSONResponse(envelope(0, NOT_FOUND))
        _bump(self.stats.answers, "found")
        return JSONResponse(envelope(1, "Thành công", {"MainInformation": main_information(e)}))

    # /_sim/faults, /_sim/stats, /_sim/tokens
    async def faults_endpoint(self, request: Request) -> Response:
        return await self.faults.endpoint(request)

    async def stats_endpoint(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.stats = Stats()
        return JSONResponse(self.stats.as_dict())

    async def tokens_endpoint(self, request: Request) -> Response:
        """GET: the TTL and live-token count; POST {"ttl": s}: new TTL; DELETE: revoke every token."""
        if request.method == "DELETE":
            return JSONResponse({"revoked": self.tokens.revoke_all()})
        if request.method == "POST":
            try:
                ttl = float((await request.json())["ttl"])
                if not 0 < ttl <= 86400:
                    raise ValueError("ttl must be between 0 and 86400 seconds")
            except (ValueError, TypeError, KeyError) as exc:
                return JSONResponse({"error": str(exc) or "expected {\"ttl\": seconds}"}, status_code=400)
            self.tokens.ttl = ttl
        return JSONResponse({"ttl": self.tokens.ttl, "live": len(self.tokens.live)})

    async def index(self, request: Request) -> Response:
        return JSONResponse({
            "service": "Simulator of the national business registration database (synthetic data)",
            "token_url": str(request.url_for("token")),
            "api": str(request.url.replace(path=f"{API_BASE}/chiTietDoanhNghiep", query="")),
            "enterprises": len(self.dataset.enterprises),
        })


def create_app(enterprises: int = 300, seed: int = 1, *, admin_units: str | None = None,
               faults: Faults | None = None, clients: dict[str, str] | None = None,
               token_ttl: float = 3600.0) -> Starlette:
    """The simulator's ASGI app; its state is ``app.state.simulator``."""
    sim = Simulator(generate(enterprises, seed, admin_units), dict(clients or [DEFAULT_CLIENT]),
                    Tokens(token_ttl), faults or Faults())
    app = Starlette(routes=[
        Route("/", sim.index),
        Route("/token", sim.token, methods=["POST"], name="token"),
        Route(f"{API_BASE}/chiTietDoanhNghiep", sim.enterprise, methods=["GET"]),
        Route("/_sim/faults", sim.faults_endpoint, methods=["GET", "POST"]),
        Route("/_sim/stats", sim.stats_endpoint, methods=["GET", "DELETE"]),
        Route("/_sim/tokens", sim.tokens_endpoint, methods=["GET", "POST", "DELETE"]),
    ])
    app.state.simulator = sim
    return app
