"""The pipeline both doors feed:

    identify → resolve → authorize → limit → validate → invoke → to_canonical → minimize
    → (door renders the answer) → audit (committed) → answer

Each stage is a small module named after its job, and every stage has the one
signature of the stage contract (lgsp/pipeline/stage.py):

    async def stage(ex: Exchange, ctx: StageContext) -> None

`STAGES` below is the pipeline, in order; a new stage goes into that tuple at its
place (and into the bulk services' tuples in `PIPELINES` if it applies to them).
A door builds an Exchange, hands it to `serve` with a function that renders an
Exchange into its own wire format, and sends what comes back.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Callable, Mapping, cast

import orjson
from sqlalchemy import String

from lgsp import bulk, metrics
from lgsp.audit.writer import AuditRecord, AuditUnavailable, AuditWriter, StoreConflict
from lgsp.crypto import fernet, subject_hash
from lgsp.errors import ExchangeError, problem
from lgsp.gateway import Gateway
from lgsp.pipeline.authorize import authorize
from lgsp.pipeline.canonical import to_canonical
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.identify import check_password, identify
from lgsp.pipeline.invoke import invoke
from lgsp.pipeline.minimize import minimize
from lgsp.pipeline.resolve import resolve
from lgsp.pipeline.stage import Stage, StageContext
from lgsp.pipeline.subjects import companion_records
from lgsp.pipeline.validate import validate
from lgsp.storage.schema import audit_records
from lgsp.traffic.grouped_audit import commit_refusal, commit_with_refusals, groupable
from lgsp.traffic.limit import limit

log = logging.getLogger("lgsp.pipeline.exchange")

Rendered = tuple[int, dict[str, str], bytes]
Renderer = Callable[[Exchange], Rendered]

# The pipeline: every exchange of a shared service goes through these, in this order.
STAGES: tuple[Stage, ...] = (check_password, identify, resolve, authorize, limit, validate, invoke, to_canonical,
                             minimize)
# Identification alone: what a refusal made before the stages still runs, to name the caller.
IDENTIFY: tuple[Stage, ...] = (check_password, identify)
# Services with a pipeline of their own (bulk verification: a job, not an answer); the doors look them up here.
PIPELINES: dict[str, tuple[Stage, ...]] = {
    bulk.SUBMIT: (*STAGES, bulk.create_job),
    bulk.GET: (identify, resolve, authorize, bulk.view_job),
}


async def run_stages(ex: Exchange, gw: Gateway, stages: tuple[Stage, ...] = STAGES) -> None:
    ctx = StageContext(gw, gw.registry.snapshot)  # the one snapshot the whole exchange is served from
    try:
        for stage in stages:
            await stage(ex, ctx)
    except ExchangeError as exc:
        ex.error = kept(exc)
    except Exception:
        log.exception("exchange failed unexpectedly", extra={"fields": {"request_id": ex.request_id}})
        ex.error = internal_error()


def kept(error: ExchangeError) -> ExchangeError:
    """A raised error as the exchange keeps it: without its traceback. The traceback's frames hold the
    exchange, which holds the error: a reference cycle per refused exchange that only the garbage
    collector frees, in pauses of 20-40 ms per collection under a flood of refusals
    (benchmarks/results/2026-12-01-fairness-gc.md)."""
    return error.with_traceback(None)


def internal_error() -> ExchangeError:
    return ExchangeError("internal.error", "The LGSP could not complete the exchange; it has been logged.")


async def refuse(ex: Exchange, gw: Gateway, error: ExchangeError) -> None:
    """A refusal before the stages ran (bad shape, too large, no such route).

    Identification still runs so the audit record names the caller; a problem
    with the token is reported first, as it would be by the full pipeline.
    """
    if error.code.startswith("auth."):  # the refusal is about the credentials themselves: say that
        ex.error = kept(error)
        return
    ctx = StageContext(gw, gw.registry.snapshot)
    try:
        for stage in IDENTIFY:
            await stage(ex, ctx)
        await count_against_rate(ex, ctx)
    except ExchangeError as earlier_error:
        error = earlier_error
    ex.error = kept(error)


async def count_against_rate(ex: Exchange, ctx: StageContext) -> None:
    """A refused request of a known service still counts against its client's rate, as `limit` comes
    before `validate` in STAGES: otherwise malformed requests would be a way around every policy."""
    if ex.client is None or not ex.service_name:
        return
    try:
        await resolve(ex, ctx)
    except ExchangeError:  # no such service (or not offered): nothing to count against; the refusal stands
        return
    await limit(ex, ctx)


async def serve(ex: Exchange, gw: Gateway, render: Renderer, *, refusal: ExchangeError | None = None,
                anonymous: bool = False, stages: tuple[Stage, ...] = STAGES) -> Rendered:
    """The exchange through the stages (the usual ones, or a service's own from PIPELINES) or refused,
    its answer rendered, its record committed.

    `anonymous`: a refusal made before any of the request could be trusted (an
    over-large head): the caller is not identified, nothing it sent is recorded.
    """
    context_problem = ex.drop_bad_context()  # before anything records the caller's values
    if context_problem and (refusal is None or refusal.code == "request.invalid"):
        # One code for a bad officer, purpose or request id, whether or not the spec declares the header.
        refusal = ExchangeError("request.context_invalid", context_problem)
    if refusal is None:
        await run_stages(ex, gw, stages)
    elif anonymous:
        ex.error = kept(refusal)
    else:
        await refuse(ex, gw, refusal)
    rendered = with_response_headers(ex, render_safely(ex, render))
    try:
        record = audit_record(ex, rendered[2])
    except Exception:  # e.g. full body logging of an answer it cannot encode: still an exchange with a record
        log.exception("audit record could not be made", extra={"fields": {"request_id": ex.request_id}})
        ex.error = internal_error()
        rendered = render_safely(ex, render)
        record = audit_record(ex, rendered[2], body_logging=False)
    try:
        # Every other person the answer carried gets a record too, committed with this one (lgsp.pipeline.subjects).
        others = companion_records(ex, record, gw.registry)
    except Exception:  # fail closed: no answer whose persons are not all recorded
        log.exception("other persons could not be recorded", extra={"fields": {"request_id": ex.request_id}})
        ex.error = internal_error()
        rendered = render_safely(ex, render)
        record, others = audit_record(ex, rendered[2], body_logging=False), []
    try:
        try:
            # ex.store: what the exchange stores with its record, in the same transaction (an accepted message);
            # nothing of it when the exchange ended in an error after the stage that prepared it.
            writer, stored = _writer(gw), (ex.store if ex.error is None else [])
            if groupable(ex.error) and not others:  # a flood's refusal: rides in the next commit of this worker
                await commit_refusal(writer, record)
            else:  # the refusals waiting in this worker ride in its transaction
                await commit_with_refusals(writer, [record, *others], stored)
        except StoreConflict:
            if ex.on_store_conflict is None:
                raise AuditUnavailable("store conflict") from None
            ex.store = []
            await ex.on_store_conflict(ex)
            rendered = render_safely(ex, render)
            await writer.commit(audit_record(ex, rendered[2]))
    except AuditUnavailable:
        ex.error = ExchangeError("audit.unavailable", "The audit log cannot be written, so the exchange was refused.")
        rendered = render_safely(ex, render)
    observe(ex, gw.registry.snapshot.services)
    return rendered


def _writer(gw: Gateway) -> AuditWriter:
    if gw.audit is None:
        raise RuntimeError("The gateway serves exchanges only once started (it has no audit writer yet).")
    return gw.audit


def _recordable(value: str | None, width: int) -> str | None:
    """A caller's value as the audit column can hold it: an oversize one (refused by the spec) is left out,
    so the refusal is still recorded (PostgreSQL would refuse the whole record)."""
    return value if value is None or len(value) <= width else None


def with_response_headers(ex: Exchange, rendered: Rendered) -> Rendered:
    """The headers the stages set for every answer (the RateLimit fields), whatever the outcome."""
    if not ex.response_headers:
        return rendered
    status, headers, body = rendered
    return status, {**headers, **ex.response_headers}, body


def render_safely(ex: Exchange, render: Renderer) -> Rendered:
    """The door's answer; if rendering fails, the door's own internal.error answer instead.

    Whatever fails between the stages and the audit commit must still end in an
    answer of the door's format and a record of it: nothing leaves unrecorded.
    """
    try:
        return render(ex)
    except Exception:
        log.exception("answer could not be rendered", extra={"fields": {"request_id": ex.request_id}})
    ex.error = internal_error()
    try:
        return render(ex)
    except Exception:  # even the error answer failed: a fixed one, still audited by the caller
        log.exception("error answer could not be rendered", extra={"fields": {"request_id": ex.request_id}})
        body = orjson.dumps(problem(ex.error.code, ex.error.detail, ex.request_id))
        return ex.status, {"Content-Type": "application/problem+json", "X-Request-ID": ex.request_id}, body


# The columns a caller's request can put values into, and the largest value each takes.
def _width(column: str) -> int:
    kind = audit_records.c[column].type
    assert isinstance(kind, String) and kind.length, column  # a text column of bounded width
    return kind.length


_TEXT_COLUMNS = {name: _width(name) for name in ("service", "upstream", "trace_id")}
_MAX_INT = 2**31 - 1


def fitted(record: AuditRecord) -> AuditRecord:
    """The record with what the caller controls fitted to its columns. A value the database
    refuses (PostgreSQL checks lengths and ranges) would fail the whole group commit, and so
    every exchange committed with it; a refused request's over-long service name is cut."""
    row = cast(dict[str, Any], record)  # the columns are walked by name
    for name, length in _TEXT_COLUMNS.items():
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            row[name] = None
        elif value is not None and len(value) > length:
            row[name] = value[:length]
    for name in ("request_bytes", "response_bytes"):
        if isinstance(row.get(name), int):
            row[name] = max(0, min(row[name], _MAX_INT))
    return record


def audit_record(ex: Exchange, body: bytes, *, body_logging: bool = True) -> AuditRecord:
    return fitted(_audit_record(ex, body, body_logging))


def _audit_record(ex: Exchange, body: bytes, body_logging: bool) -> AuditRecord:
    client = ex.client
    record: AuditRecord = {
        "at": ex.at,
        "kind": "exchange",
        "request_id": ex.request_id,
        "door": ex.door,
        "client_id": client.client_id if client else None,
        "agency_code": client.agency_code if client else None,
        "officer": _recordable(ex.officer, 128),
        "purpose": _recordable(ex.purpose, 64),
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
        "detail": ex.detail,
    }
    if body_logging:
        _body_logging(ex, body, record)
    return record


def _body_logging(ex: Exchange, body: bytes, record: AuditRecord) -> None:
    """What the service's body-logging setting adds to the record (nothing by default)."""
    mode = ex.service.body_logging if ex.service else "off"
    if mode == "metadata":
        record["detail"] = {"params": sorted(ex.params)}
    elif mode == "full":
        try:
            response = orjson.loads(body)
        except orjson.JSONDecodeError:  # a SOAP door answer is XML: keep it as text
            response = body.decode("utf-8", "replace")
        payload = orjson.dumps({"params": ex.params, "response": response})
        record["_body"] = fernet().encrypt(payload).decode()


def observe(ex: Exchange, services: Mapping[str, object] | None = None) -> None:
    # Labels only from registered names: a made-up service name must not become a new series.
    service = "-" if not ex.service_name else ex.service_name if ex.service or (
        services is not None and ex.service_name in services) else "unknown"
    client = ex.client.client_id if ex.client else "-"
    code = ex.error.code if ex.error else ""
    elapsed = time.perf_counter() - ex.started
    metrics.child(metrics.exchanges, service, client, ex.outcome, code).inc()
    metrics.child(metrics.exchange_seconds, service).observe(elapsed)
    metrics.child(metrics.client_exchange_seconds, client).observe(elapsed)
    if log.isEnabledFor(logging.INFO):  # the line's fields are not built when the level leaves it out
        log.info(
            "exchange",
            extra={"fields": {
                "request_id": ex.request_id, "door": ex.door, "client": client, "service": service,
                "outcome": ex.outcome, "status": ex.status, "code": code, "latency_ms": round(elapsed * 1000, 2),
            }},
        )
