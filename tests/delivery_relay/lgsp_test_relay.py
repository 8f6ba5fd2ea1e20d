"""Test-only destination for the delivery engine: an adapter that relays a message as JSON to a
receiver (below) which applies each (key, version) once and keeps its own record of what it got.

Installed for the tests' gateway processes through the dist-info beside this file (PYTHONPATH),
the way any adapter is found: the `lgsp.adapters` entry-point group.
"""
from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from lgsp.sdk import (
    Adapter,
    AdapterResult,
    CallContext,
    LazySession,
    Operation,
    UpstreamFault,
    UpstreamTimeout,
    UpstreamUnavailable,
)


class RelayAdapter(Adapter):
    name = "relay"
    version = "1"
    settings_schema = {"type": "object", "required": ["endpoint"],
                       "properties": {"endpoint": {"type": "string", "format": "uri"},
                                      "timeout": {"type": "number"}}}
    operations = {op: Operation(op, "relay", writes=True) for op in ("dossier.sync", "dossier.progress")}

    def __init__(self, settings: Mapping[str, Any]):
        super().__init__(settings)
        self._http = LazySession(limit=200, timeout=float(self.settings.get("timeout", 5)))

    async def call(self, operation: str, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        url = self.settings["endpoint"] + "/receive"
        body = {"operation": operation, "params": dict(params), "idempotency_key": context.idempotency_key}
        try:
            async with self._http.get().post(url, data=orjson.dumps(body),
                                             headers={"Content-Type": "application/json"}) as resp:
                status, answer = resp.status, await resp.read()
        except TimeoutError:
            raise UpstreamTimeout("The receiver did not answer in time.", upstream=url) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"The receiver cannot be reached ({type(exc).__name__}).", upstream=url) from None
        if status >= 500:
            raise UpstreamUnavailable(f"The receiver answered {status}.", upstream=url)
        data = orjson.loads(answer)
        if status >= 400:
            raise UpstreamFault(data.get("message", "refused"), fault_code=str(status), upstream=url)
        return AdapterResult(data, upstream=url, trace_id=context.idempotency_key)

    async def aclose(self) -> None:
        await self._http.close()


# -- the receiver -----------------------------------------------------------------------------

class Receiver:
    """Applies each (operation, key, version) once; counts repeats; switchable faults."""

    def __init__(self):
        self.lock = threading.Lock()
        self.applied: list[dict] = []      # what took effect, in order of arrival
        self.seen: set[tuple] = set()
        self.calls = 0
        self.duplicates = 0
        self.mode = "normal"
        self.delay = 0.0
        self.delay_after = 0.0             # after applying, before answering: a crash window for the sender
        self.refuse_left = 0

    def identity(self, body: dict) -> tuple:
        p = body["params"]
        return body["operation"], p.get("dossier_no"), p.get("version", p.get("step_id"))


def app_for(receiver: Receiver):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def receive(request: Request):
        body = orjson.loads(await request.body())
        with receiver.lock:
            receiver.calls += 1
            mode, delay = receiver.mode, receiver.delay
        if delay:
            await asyncio.sleep(delay)
        if mode == "down":
            return JSONResponse({"message": "down"}, status_code=503)
        if mode == "refuse":
            return JSONResponse({"message": "Hồ sơ không hợp lệ (refused by the receiver)"}, status_code=400)
        with receiver.lock:
            if receiver.refuse_left > 0:
                receiver.refuse_left -= 1
                return JSONResponse({"message": "busy"}, status_code=503)
            ident = receiver.identity(body)
            if ident in receiver.seen:
                receiver.duplicates += 1
                return JSONResponse({"error_code": "00", "duplicate": True})
            receiver.seen.add(ident)
            receiver.applied.append({"operation": ident[0], "dossier_no": ident[1], "version": ident[2],
                                     "idempotency_key": body.get("idempotency_key")})
        if receiver.delay_after:
            await asyncio.sleep(receiver.delay_after)
        return JSONResponse({"error_code": "00", "dossier_no": ident[1]})

    async def record(_request: Request):
        with receiver.lock:
            return JSONResponse({"applied": receiver.applied, "calls": receiver.calls,
                                 "duplicates": receiver.duplicates})

    async def faults(request: Request):
        body = await request.json()
        with receiver.lock:
            receiver.mode = body.get("mode", "normal")
            receiver.delay = float(body.get("delay", 0))
            receiver.delay_after = float(body.get("delay_after", 0))
            receiver.refuse_left = int(body.get("refuse_n", 0))
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/receive", receive, methods=["POST"]), Route("/_sim/record", record),
                             Route("/_sim/faults", faults, methods=["POST"])])


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app_for(Receiver()), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
