"""Simulator of the national public-service portal (Cổng Dịch vụ công quốc gia) dossier sync.

One JSON endpoint (``POST /dvcqg/api``): header ``dstcode``, body ``session``, ``madonvi``,
``service`` and the service's fields. Sessions come from the same endpoint
(``service: LayPhienLamViec``) and expire after a configurable time. Every request
that reaches a write service is recorded (``GET /_sim/received``) with the idempotency
token the LGSP sends (``X-Request-ID``), so tests can assert that each message was applied
exactly once. Faults are switched through ``/_sim/faults`` (lgsp.simkit) with one mode more
than the common ones: ``5xx``.

What the field notes do not say (failure codes, the session service, the answer's message
field, TraCuuHoSo's shape) is assumed here and in docs/portal.md, and is configurable in the
adapter.
"""
from __future__ import annotations

import asyncio
import copy
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lgsp.sdk import FAULT_MODES, Faults

from .data import catalogue, dossier_problem, seed, step_problem

API_PATH = "/dvcqg/api"
DEFAULT_ACCOUNT = {"dstcode": "DVCQG-H30", "madonvi": "000.00.00.H30", "username": "lgsp-demo",
                   "password": "lgsp-demo-secret"}
SESSION_SERVICE = "LayPhienLamViec"
WRITES = ("DongBoHoSoMC", "CapNhatTienDoHoSoMC")
PORTAL_MODES = FAULT_MODES + ("5xx",)
MAX_SESSIONS = 10_000
MAX_RECORDS = 500_000  # received requests kept in full; counters go on beyond this

# Answer codes (ASSUMED: the field notes only say "00" is success). docs/portal.md lists them.
OK, SESSION_EXPIRED, EXISTS, MISSING, INVALID, UNAUTHORIZED, ALREADY_DONE, SYSTEM = (
    "00", "401", "02", "03", "04", "05", "06", "99")
MESSAGES = {
    OK: "Thành công",
    SESSION_EXPIRED: "Phiên làm việc không hợp lệ hoặc đã hết hạn",
    EXISTS: "Hồ sơ đã tồn tại trên Cổng Dịch vụ công quốc gia",
    MISSING: "Hồ sơ không tồn tại trên Cổng Dịch vụ công quốc gia",
    UNAUTHORIZED: "Thông tin xác thực hoặc mã đơn vị không hợp lệ",
    ALREADY_DONE: "Yêu cầu đã được xử lý trước đó",
    SYSTEM: "Lỗi hệ thống, vui lòng thử lại sau",
}
DOWN_PAGE = ("<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
             "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
             "</body>\r\n</html>\r\n")
DUPLICATE_MODES = ("apply", "acknowledge", "refuse")


class FastJSON(JSONResponse):
    """orjson for the API's answers: the simulator must outpace the delivery workers it serves."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def answer(code: str, message: str | None = None, **extra: Any) -> JSONResponse:
    return FastJSON({"error_code": code, "message": message or MESSAGES.get(code, ""), **extra})


@dataclass
class Sessions:
    """Opaque session tokens with an expiry (monotonic clock)."""

    ttl: float = 1800.0
    live: dict[str, float] = field(default_factory=dict)
    issued: int = 0

    def issue(self) -> str:
        now = time.monotonic()
        if len(self.live) >= MAX_SESSIONS:
            self.live = {t: exp for t, exp in self.live.items() if exp > now}
            while len(self.live) >= MAX_SESSIONS:
                self.live.pop(next(iter(self.live)))
        token = secrets.token_urlsafe(24)
        self.live[token] = now + self.ttl
        self.issued += 1
        return token

    def valid(self, token: Any) -> bool:
        expiry = self.live.get(token) if isinstance(token, str) else None
        if expiry is None:
            return False
        if expiry <= time.monotonic():
            del self.live[token]
            return False
        return True


@dataclass
class Received:
    """Everything that reached the portal, and how often each idempotency token was applied."""

    records: deque = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    seq: int = 0
    by_service: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)          # "service key" -> times applied
    applied_items: dict[str, int] = field(default_factory=dict)    # per write service
    duplicates: int = 0                # writes applied again for a token already applied
    identical_steps: int = 0           # progress steps equal to one the dossier already had
    injected: dict[str, int] = field(default_factory=dict)

    def add(self, record: dict[str, Any]) -> None:
        self.seq += 1
        record["seq"] = self.seq
        self.records.append(record)
        _bump(self.by_service, record["service"])
        _bump(self.outcomes, record["error_code"] or f"HTTP {record['http_status']}")

    def as_dict(self, since: int, limit: int, keys: bool) -> dict[str, Any]:
        items = [r for r in self.records if r["seq"] > since][:limit]
        out = {"requests": self.seq, "by_service": self.by_service, "outcomes": self.outcomes,
               "applied": self.applied_items, "duplicates": self.duplicates,
               "duplicate_keys": sorted(k for k, n in self.applied.items() if n > 1)[:1000],
               "identical_steps": self.identical_steps, "injected": self.injected, "items": items}
        if keys:
            out["applied_by_key"] = self.applied
        return out


def _bump(counter: dict[str, int], key: str, n: int = 1) -> None:
    counter[key] = counter.get(key, 0) + n


class Portal:
    def __init__(self, account: dict[str, str], sessions: Sessions, faults: Faults):
        self.account = account
        self.sessions = sessions
        self.faults = faults
        self.procedures = catalogue()
        self.dossiers = seed()
        self.received = Received()
        self.duplicate_mode = "apply"

    # POST /dvcqg/api
    async def api(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        service = body.get("service") if isinstance(body, dict) else None
        key = request.headers.get("x-request-id")
        record = {"service": service if isinstance(service, str) else None, "key": key,
                  "dstcode": request.headers.get("dstcode"), "at": time.time(), "http_status": 200,
                  "error_code": None, "applied": False, "duplicate": False}
        if record["service"] in WRITES and isinstance(body, dict):
            record["isUpdating"] = body.get("isUpdating")
            record["data"] = body.get("data")
        response = await self._answer(request, body, record)
        record["http_status"] = response.status_code
        if record["service"] is not None and record["service"] != SESSION_SERVICE:
            self.received.add(record)
        return response

    async def _answer(self, request: Request, body: Any, record: dict[str, Any]) -> Response:
        if record["service"] == SESSION_SERVICE:
            # As the business simulator's /token: faults hit the data services, so that a
            # count-limited fault lands on the request a test aims at.
            return self._serve(request, body, record)
        mode, delay = self.faults.take()
        if mode != "normal":
            _bump(self.received.injected, mode)
        if mode == "down":
            return HTMLResponse(DOWN_PAGE, status_code=503)
        if mode == "5xx":
            # An application server error behind the proxy: a 500 that still carries an envelope.
            return FastJSON({"error_code": SYSTEM, "message": "Internal Server Error"}, status_code=500)
        if mode == "slow":
            # The portal still does the work after the delay, even when the caller gave up: a
            # time-out says nothing about whether a write happened.
            await asyncio.sleep(delay)
        if mode == "fault":
            record["error_code"] = SYSTEM
            return answer(SYSTEM)
        response = self._serve(request, body, record)
        if mode == "malformed":  # cut off mid-stream
            return Response(response.body[: len(response.body) // 2], media_type="application/json")
        return response

    def _serve(self, request: Request, body: Any, record: dict[str, Any]) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("service"), str):
            record["error_code"] = INVALID
            return answer(INVALID, "Yêu cầu không đúng định dạng JSON hoặc thiếu service")
        if request.headers.get("dstcode") != self.account["dstcode"] or body.get("madonvi") != self.account["madonvi"]:
            record["error_code"] = UNAUTHORIZED
            return answer(UNAUTHORIZED)
        service = body["service"]
        if service == SESSION_SERVICE:
            return self._session(body)
        if not self.sessions.valid(body.get("session")):
            record["error_code"] = SESSION_EXPIRED
            return answer(SESSION_EXPIRED)
        handler = {"TraCuuHoSo": self._lookup, "LayThuTuc": self._procedure, "DongBoHoSoMC": self._sync,
                   "CapNhatTienDoHoSoMC": self._progress}.get(service)
        if handler is None:
            record["error_code"] = INVALID
            return answer(INVALID, f"Dịch vụ {service[:64]} không được hỗ trợ")
        return handler(body, record)

    def _session(self, body: dict) -> Response:
        ok = secrets.compare_digest(str(body.get("username", "")).encode(), self.account["username"].encode()) \
            and secrets.compare_digest(str(body.get("password", "")).encode(), self.account["password"].encode())
        if not ok:
            return answer(UNAUTHORIZED)
        ttl = self.sessions.ttl
        return answer(OK, session=self.sessions.issue(), expires_in=int(ttl) if ttl == int(ttl) else ttl)

    def _lookup(self, body: dict, record: dict) -> Response:
        record["error_code"] = OK
        found = self.dossiers.get(body.get("mahoso")) if isinstance(body.get("mahoso"), str) else None
        return answer(OK, result=[found] if found else [])

    def _procedure(self, body: dict, record: dict) -> Response:
        record["error_code"] = OK
        found = self.procedures.get(body.get("maTTHC")) if isinstance(body.get("maTTHC"), str) else None
        return answer(OK, result=[found] if found else [])

    def _duplicate(self, service: str, key: str | None, record: dict) -> Response | None:
        """What to do with a write whose token was already applied (None: apply it, counted)."""
        if key is None or not self.received.applied.get(f"{service} {key}"):
            return None
        record["duplicate"] = True
        if self.duplicate_mode == "acknowledge":
            record["error_code"] = OK
            return answer(OK, MESSAGES[ALREADY_DONE])
        if self.duplicate_mode == "refuse":
            record["error_code"] = ALREADY_DONE
            return answer(ALREADY_DONE)
        return None

    def _applied(self, service: str, key: str | None, record: dict, items: int) -> None:
        record["applied"] = True
        record["error_code"] = OK
        _bump(self.received.applied_items, service, items)
        if key is not None:
            tag = f"{service} {key}"
            if self.received.applied.get(tag):
                self.received.duplicates += 1
            _bump(self.received.applied, tag)

    def _sync(self, body: dict, record: dict) -> Response:
        key = record["key"]
        early = self._duplicate("DongBoHoSoMC", key, record)
        if early is not None:
            return early
        items, updating = body.get("data"), body.get("isUpdating")
        if not isinstance(items, list) or not items or updating not in ("True", "False"):
            record["error_code"] = INVALID
            return answer(INVALID, "data phải là danh sách hồ sơ và isUpdating là \"True\" hoặc \"False\"")
        for item in items:  # all or nothing
            problem = dossier_problem(item, self.procedures)
            if problem is not None:
                record["error_code"] = INVALID
                return answer(INVALID, problem)
            exists = item["MaHoSo"] in self.dossiers
            if updating == "False" and exists:
                record["error_code"] = EXISTS
                return answer(EXISTS, f"{MESSAGES[EXISTS]}: {item['MaHoSo']}")
            if updating == "True" and not exists:
                record["error_code"] = MISSING
                return answer(MISSING, f"{MESSAGES[MISSING]}: {item['MaHoSo']}")
        for item in items:
            steps = self.dossiers.get(item["MaHoSo"], {}).get("QuaTrinhXuLy", [])
            self.dossiers[item["MaHoSo"]] = {**copy.deepcopy(item), "QuaTrinhXuLy": steps}
        self._applied("DongBoHoSoMC", key, record, len(items))
        return answer(OK, "Đồng bộ hồ sơ thành công")

    def _progress(self, body: dict, record: dict) -> Response:
        key = record["key"]
        early = self._duplicate("CapNhatTienDoHoSoMC", key, record)
        if early is not None:
            return early
        items = body.get("data")
        if not isinstance(items, list) or not items:
            record["error_code"] = INVALID
            return answer(INVALID, "data phải là danh sách tiến độ xử lý")
        for item in items:
            problem = step_problem(item)
            if problem is not None:
                record["error_code"] = INVALID
                return answer(INVALID, problem)
            if item["MaHoSo"] not in self.dossiers:
                record["error_code"] = MISSING
                return answer(MISSING, f"{MESSAGES[MISSING]}: {item['MaHoSo']}")
        for item in items:
            steps = self.dossiers[item["MaHoSo"]]["QuaTrinhXuLy"]
            if item in steps:
                self.received.identical_steps += 1
            steps.append(copy.deepcopy(item))
        self._applied("CapNhatTienDoHoSoMC", key, record, len(items))
        return answer(OK, "Cập nhật tiến độ thành công")

    # -- /_sim/ ---------------------------------------------------------------------------
    async def faults_endpoint(self, request: Request) -> Response:
        return await self.faults.endpoint(request)

    async def received_endpoint(self, request: Request) -> Response:
        """GET ?since=SEQ&limit=N&keys=1: what reached the portal; DELETE: forget it (dossiers stay)."""
        if request.method == "DELETE":
            self.received = Received()
            return JSONResponse({"requests": 0})
        try:
            since = int(request.query_params.get("since", 0))
            limit = min(int(request.query_params.get("limit", 1000)), MAX_RECORDS)
        except ValueError:
            return JSONResponse({"error": "since and limit are integers"}, status_code=400)
        return JSONResponse(self.received.as_dict(since, limit, request.query_params.get("keys") == "1"))

    async def config_endpoint(self, request: Request) -> Response:
        """GET, or POST {"session_ttl": s, "duplicates": apply|acknowledge|refuse}; DELETE /_sim/sessions revokes."""
        if request.method == "POST":
            try:
                body = await request.json()
                if "session_ttl" in body:
                    ttl = float(body["session_ttl"])
                    if not 0 < ttl <= 86400:
                        raise ValueError("session_ttl must be between 0 and 86400 seconds")
                    self.sessions.ttl = ttl
                if "duplicates" in body:
                    if body["duplicates"] not in DUPLICATE_MODES:
                        raise ValueError(f"duplicates is one of {', '.join(DUPLICATE_MODES)}")
                    self.duplicate_mode = body["duplicates"]
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"error": str(exc) or "expected a JSON object"}, status_code=400)
        return JSONResponse({"session_ttl": self.sessions.ttl, "sessions_issued": self.sessions.issued,
                             "live_sessions": len(self.sessions.live), "duplicates": self.duplicate_mode})

    async def sessions_endpoint(self, request: Request) -> Response:
        n = len(self.sessions.live)
        self.sessions.live.clear()
        return JSONResponse({"revoked": n})

    async def dossier_endpoint(self, request: Request) -> Response:
        found = self.dossiers.get(request.path_params["no"])
        return JSONResponse(found) if found else JSONResponse({"error": "no such dossier"}, status_code=404)

    async def index(self, request: Request) -> Response:
        return JSONResponse({"service": "Simulator of the national public-service portal's dossier sync",
                             "api": str(request.url.replace(path=API_PATH, query="")),
                             "dossiers": len(self.dossiers), "procedures": len(self.procedures)})


def create_app(*, account: dict[str, str] | None = None, session_ttl: float = 1800.0,
               faults: Faults | None = None) -> Starlette:
    """The simulator's ASGI app; its state is ``app.state.simulator``."""
    faults = faults or Faults(modes=PORTAL_MODES)
    faults.modes = PORTAL_MODES
    portal = Portal({**DEFAULT_ACCOUNT, **(account or {})}, Sessions(session_ttl), faults)
    app = Starlette(routes=[
        Route("/", portal.index),
        Route(API_PATH, portal.api, methods=["POST"]),
        Route("/_sim/faults", portal.faults_endpoint, methods=["GET", "POST"]),
        Route("/_sim/received", portal.received_endpoint, methods=["GET", "DELETE"]),
        Route("/_sim/config", portal.config_endpoint, methods=["GET", "POST"]),
        Route("/_sim/sessions", portal.sessions_endpoint, methods=["DELETE"]),
        Route("/_sim/dossiers/{no}", portal.dossier_endpoint, methods=["GET"]),
    ])
    app.state.simulator = portal
    return app
