"""The pipeline both doors feed:

    identify → resolve → authorize → validate → invoke → to_canonical → minimize
    → (door renders the answer) → audit (committed) → answer

Each stage is a small module named after its job. A door builds an Exchange,
hands it to `serve` with a function that renders an Exchange into its own wire
format, and sends what comes back.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Awaitable, Callable

from lgsp import metrics
import orjson

from lgsp.audit import BODY, AuditUnavailable
from lgsp.authorize import authorize
from lgsp.canonical import to_canonical
from lgsp.crypto import fernet, subject_hash
from lgsp.errors import ExchangeError
from lgsp.exchange import Exchange
from lgsp.gateway import Gateway
from lgsp.identify import identify
from lgsp.invoke import invoke
from lgsp.minimize import minimize
from lgsp.resolve import resolve
from lgsp.validate import validate

log = logging.getLogger("lgsp.exchange")

Rendered = tuple[int, dict[str, str], bytes]
Renderer = Callable[[Exchange], Rendered]


async def run_stages(ex: Exchange, gw: Gateway) -> None:
    snap = gw.registry.snapshot
    try:
        identify(ex, snap)
        resolve(ex, snap)
        authorize(ex, snap)
        validate(ex, gw.registry)
        await invoke(ex, gw.registry)
        to_canonical(ex, gw.registry)
        minimize(ex)
    except ExchangeError as exc:
        ex.error = exc
    except Exception:
        log.exception("exchange failed unexpectedly", extra={"fields": {"request_id": ex.request_id}})
        ex.error = ExchangeError("internal.error", "The LGSP could not complete the exchange; it has been logged.")


def refuse(ex: Exchange, gw: Gateway, error: ExchangeError) -> None:
    """A refusal before the stages ran (bad shape, too large, no such route).

    Identification still runs so the audit record names the caller; a problem
    with the token is reported first, as it would be by the full pipeline.
    """
    try:
        identify(ex, gw.registry.snapshot)
    except ExchangeError as auth_error:
        error = auth_error
    ex.error = error


async def serve(ex: Exchange, gw: Gateway, render: Renderer, *, refusal: ExchangeError | None = None,
                stages: Callable[[Exchange, Gateway], Awaitable[None]] | None = None) -> Rendered:
    """Run the stages (the usual ones, or a service's own, e.g. lgsp.bulk), render, audit."""
    if refusal is None:
        await (stages or run_stages)(ex, gw)
    else:
        refuse(ex, gw, refusal)
    rendered = render(ex)
    try:
        await gw.audit.commit(audit_record(ex, rendered[2]))
    except AuditUnavailable:
        ex.error = ExchangeError("audit.unavailable", "The audit log cannot be written, so the exchange was refused.")
        rendered = render(ex)
    observe(ex)
    return rendered


def audit_record(ex: Exchange, body: bytes) -> dict:
    client = ex.client
    return {
        "at": ex.at,
        "kind": "exchange",
        "request_id": ex.request_id,
        "door": ex.door,
        "client_id": client.client_id if client else None,
        "agency_code": client.agency_code if client else None,
        "officer": ex.officer,
        "purpose": ex.purpose,
        "service": ex.service_name,
        "outcome": ex.outcome,
        "status": ex.status,
        "error_code": ex.error.code if ex.error else None,
        "latency_ms": round((time.perf_counter() - ex.started) * 1000, 3),
        "fields": ex.fields if not ex.error else [],
        "subject_hash": subject_hash(ex.subject) if ex.subject else None,
        "upstream": ex.upstream,
        "trace_id": ex.trace_id,
        "request_bytes": ex.request_bytes,
        "response_bytes": len(body),
        "response_sha256": hashlib.sha256(body).hexdigest(),
        "detail": None,
        **_body_logging(ex, body),
    }


def _body_logging(ex: Exchange, body: bytes) -> dict:
    """What the service's body-logging setting adds to the record (nothing by default)."""
    mode = ex.service.body_logging if ex.service else "off"
    if mode == "metadata":
        return {"detail": {"params": sorted(ex.params)}}
    if mode == "full":
        try:
            response = orjson.loads(body)
        except orjson.JSONDecodeError:  # a SOAP door answer is XML: keep it as text
            response = body.decode("utf-8", "replace")
        payload = orjson.dumps({"params": ex.params, "response": response})
        return {BODY: fernet().encrypt(payload).decode()}
    return {}


def observe(ex: Exchange) -> None:
    service = ex.service_name or "-"
    client = ex.client.client_id if ex.client else "-"
    code = ex.error.code if ex.error else ""
    elapsed = time.perf_counter() - ex.started
    metrics.exchanges.labels(service, client, ex.outcome, code).inc()
    metrics.exchange_seconds.labels(service).observe(elapsed)
    log.info(
        "exchange",
        extra={"fields": {
            "request_id": ex.request_id, "door": ex.door, "client": client, "service": service,
            "outcome": ex.outcome, "status": ex.status, "code": code, "latency_ms": round(elapsed * 1000, 2),
        }},
    )
