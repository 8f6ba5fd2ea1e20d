"""What every simulator of a national system shares: the switchable fault modes
behind `POST /_sim/faults` (normal, slow, down, malformed, fault; optionally for
the next N requests only), which tests and the contract kit drive."""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

FAULT_MODES = ("normal", "slow", "down", "malformed", "fault")


@dataclass
class Faults:
    """The switchable fault mode; ``remaining`` limits it to the next N data requests."""

    mode: str = "normal"
    delay: float = 0.0
    remaining: int | None = None
    #: The modes this simulator implements; a simulator with more (e.g. "5xx") passes its own tuple.
    modes: tuple[str, ...] = FAULT_MODES

    def configure(self, mode: str, delay: float = 0.0, count: int | None = None) -> None:
        if mode not in self.modes:
            raise ValueError(f"mode must be one of {', '.join(self.modes)}")
        if not 0 <= delay <= 600:
            raise ValueError("delay must be between 0 and 600 seconds")
        if count is not None and count < 1:
            raise ValueError("count must be a positive integer")
        self.mode, self.delay = mode, delay
        self.remaining = None if mode == "normal" else count

    def take(self) -> tuple[str, float]:
        """The mode for this request, counting down a count-limited fault."""
        mode, delay = self.mode, self.delay
        if mode != "normal" and self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.configure("normal")
        return mode, delay

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "delay": self.delay, "count": self.remaining}

    async def endpoint(self, request: Request, default_delay: float = 2.0) -> Response:
        """`/_sim/faults`: POST {"mode", "delay", "count"} switches the mode; both methods answer the switch."""
        if request.method == "POST":
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object")
                count = body.get("count")
                if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
                    raise ValueError("count must be an integer")
                self.configure(str(body.get("mode", "normal")), float(body.get("delay", default_delay) or 0.0), count)
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc) or "expected a JSON object"}, status_code=400)
        return JSONResponse(self.as_dict())


def serve(app: Any, host: str, port: int) -> None:
    """Run a simulator's app until stopped. Its data set lives as long as the process: frozen out of the
    garbage collector's reach, or each full collection walks it all (60-80 ms pauses in the population
    simulator, every ~12 s under load: latency its callers measured as the gateway's)."""
    import uvicorn

    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
