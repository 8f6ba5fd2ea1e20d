"""Stage: resolve the named service to its current definition, and bind its connection's adapter."""
from __future__ import annotations

import logging

from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import StageContext

log = logging.getLogger(__name__)


async def resolve(ex: Exchange, ctx: StageContext) -> None:
    service = ctx.snap.services.get(ex.service_name or "")
    if service is None:
        raise ExchangeError("service.unknown", f"There is no service '{ex.service_name}'; GET /api lists them.")
    if not service.enabled:
        raise ExchangeError("service.unavailable", f"Service '{ex.service_name}' is not offered at the moment.")
    ex.service = service
    # Bound once, from the exchange's snapshot: the later stages use this adapter even if a
    # reload replaces the connection while the exchange awaits its backend.
    try:
        ex.connection, ex.adapter = ctx.registry.bind(ctx.snap, service.connection)
    except Exception:  # bad settings or a broken plug-in: this service is down, not the gateway
        log.error("connection %s: adapter could not be built", service.connection, exc_info=True)
