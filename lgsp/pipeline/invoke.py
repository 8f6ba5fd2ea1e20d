"""Stage: call the backend through the service's connection and adapter."""
from __future__ import annotations

import logging
import time

from lgsp import metrics
from lgsp.adapter import CallContext, UpstreamError
from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.registry import Registry

log = logging.getLogger(__name__)


async def invoke(ex: Exchange, registry: Registry) -> None:
    service = ex.service
    try:
        adapter = registry.adapter(service.connection)
    except Exception:  # bad settings or a broken plug-in: this service is down, not the gateway
        log.error("connection %s: adapter could not be built", service.connection, exc_info=True)
        adapter = None
    if adapter is None:
        raise ExchangeError("service.unavailable", f"The connection behind '{service.name}' is not available.")
    context = CallContext(
        request_id=ex.request_id, client_id=ex.client.client_id, agency_code=ex.client.agency_code,
        officer=ex.officer, purpose=ex.purpose, fields=ex.grant.allowed_fields if ex.grant else None,
    )
    started = time.perf_counter()
    outcome = "ok"
    try:
        ex.result = await adapter.call(service.operation, ex.params, context)
    except UpstreamError as exc:
        outcome = exc.code
        ex.upstream, ex.trace_id = exc.upstream, exc.trace_id
        raise ExchangeError(exc.code, exc.detail) from None
    finally:
        metrics.upstream_seconds.labels(service.connection, service.operation, outcome).observe(
            time.perf_counter() - started
        )
    ex.upstream, ex.trace_id = ex.result.upstream, ex.result.trace_id
