"""Stage: call the backend through the service's connection and adapter."""
from __future__ import annotations

import time

from lgsp import metrics
from lgsp.adapter import CallContext, UpstreamError
from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import StageContext


async def invoke(ex: Exchange, ctx: StageContext) -> None:
    service, adapter, client = ex.bound_service, ex.adapter, ex.bound_client
    if adapter is None:
        raise ExchangeError("service.unavailable", f"The connection behind '{service.name}' is not available.")
    context = CallContext(
        request_id=ex.request_id, client_id=client.client_id, agency_code=client.agency_code,
        officer=ex.officer, purpose=ex.purpose, fields=ex.grant.allowed_fields if ex.grant else None,
    )
    started = time.perf_counter()
    outcome = "ok"
    try:
        result = ex.result = await adapter.call(service.operation, ex.params, context)
    except UpstreamError as exc:
        outcome = exc.code
        ex.upstream, ex.trace_id = exc.upstream, exc.trace_id
        raise ExchangeError(exc.code, exc.detail) from None
    finally:
        metrics.upstream_seconds.labels(service.connection, service.operation, outcome).observe(
            time.perf_counter() - started
        )
    ex.upstream, ex.trace_id = result.upstream, result.trace_id
