"""Stage: call the backend through the service's connection and adapter, inside the
connection's upstream protection (circuit breaker, bulkhead, retries of reads: lgsp.traffic)."""
from __future__ import annotations

import time

from lgsp import metrics
from lgsp.adapter import CallContext, UpstreamError
from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import StageContext
from lgsp.traffic.upstream import guard_for


async def invoke(ex: Exchange, ctx: StageContext) -> None:
    service, adapter, client = ex.bound_service, ex.adapter, ex.bound_client
    if adapter is None:
        raise ExchangeError("service.unavailable", f"The connection behind '{service.name}' is not available.")
    context = CallContext(
        request_id=ex.request_id, client_id=client.client_id, agency_code=client.agency_code,
        officer=ex.officer, purpose=ex.purpose, fields=ex.grant.allowed_fields if ex.grant else None,
    )
    guard = guard_for(service.connection, ex.connection)
    operation = adapter.operations.get(service.operation)
    started = time.perf_counter()
    outcome = "ok"
    try:
        result = ex.result = await guard.call(lambda: adapter.call(service.operation, ex.params, context),
                                              idempotent=operation is not None and not operation.writes)
    except UpstreamError as exc:
        outcome = exc.code
        ex.upstream, ex.trace_id = exc.upstream, exc.trace_id
        raise ExchangeError(exc.code, exc.detail) from None
    except ExchangeError as exc:  # refused by the protection: the upstream was not called
        outcome = exc.code
        raise
    finally:
        metrics.child(metrics.upstream_seconds, service.connection, service.operation, outcome).observe(
            time.perf_counter() - started
        )
    ex.upstream, ex.trace_id = result.upstream, result.trace_id
