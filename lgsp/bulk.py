"""Bulk verification: a list of persons checked through a national system's asynchronous family.

    POST …/bulk-verifications        → checks the list (limit, duplicates, IDs), submits it upstream
                                       (e.g. XacThucDanhSachCongDan), answers 202 with a job id
    GET  …/bulk-verifications/{id}   → the job's state, and each person's outcome once done

The submission goes through the whole pipeline (identify → … → invoke) like any exchange.
The LGSP then polls upstream itself (GetRequestStatus, then GetRequestResult) with backoff,
minimises each person's outcome to the submit grant's fields, keeps the result encrypted at
rest (lgsp.crypto.fernet) for LGSP_BULK_RESULT_TTL seconds, and writes one audit record per
person, with the same keyed personal-ID hash as any other exchange, so a citizen's access
report lists the check.

Polling runs in the worker that accepted the list; a job whose worker stopped stays
`pending` until it expires (resubmit it).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import delete, insert, select, update

from lgsp import personal_id
from lgsp.adapter import CallContext, RecordNotFound, UpstreamError
from lgsp.crypto import fernet, subject_hash
from lgsp.errors import ExchangeError
from lgsp.mapping.compile import MappingError, load_mapping
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.minimize import _tree, project
from lgsp.storage.schema import bulk_jobs

if TYPE_CHECKING:
    from lgsp.pipeline.stage import StageContext

log = logging.getLogger(__name__)

SUBMIT, GET = "population.bulk_verification.submit", "population.bulk_verification.get"
SUBMIT_OPERATION = "bulk_verification.submit"
PATH_SUFFIX = "/bulk-verifications"
# A list of 1,000 is about 90 KB of JSON, over the default body limit of other APIs.
MAX_BODY = 512 * 1024
FIRST_POLL, MAX_POLL = 0.1, 5.0  # seconds between GetRequestStatus calls: doubling, capped


def list_limit() -> int:
    """Persons per list: the national side's limit (1,000 for the population database)."""
    return int(os.environ.get("LGSP_BULK_LIST_LIMIT", "1000"))


def retention() -> dt.timedelta:
    return dt.timedelta(seconds=int(os.environ.get("LGSP_BULK_RESULT_TTL", str(24 * 3600))))


def poll_deadline() -> float:
    return float(os.environ.get("LGSP_BULK_POLL_TIMEOUT", "900"))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# -- input checks (the validate stage calls this before anything is sent) --------------

def check_items(items: Any) -> None:
    """Refuse a list over the limit, a malformed ID or a person listed twice, naming the items."""
    limit = list_limit()
    if not isinstance(items, list) or not 1 <= len(items) <= limit:
        count = len(items) if isinstance(items, list) else 0
        raise ExchangeError("bulk.too_many_items",
                            f"A list holds 1 to {limit} persons (the national side's limit); this one has {count}.")
    seen: dict[str, int] = {}
    duplicates = []
    for i, item in enumerate(items):
        value = item.get("personal_id") if isinstance(item, dict) else None
        try:
            personal_id.parse(value)
        except personal_id.PersonalIdError as exc:
            raise ExchangeError(exc.code, f"items[{i}].personal_id: {exc.detail}") from None
        if value in seen:
            duplicates.append(f"items[{seen[value]}] and items[{i}]")
        seen.setdefault(value, i)
    if duplicates:
        shown = ", ".join(duplicates[:10]) + (f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else "")
        raise ExchangeError("bulk.duplicate_items", f"The same personal ID is listed twice: {shown}.")


# -- jobs -----------------------------------------------------------------------------

def _public(row: Any, base_url: str) -> dict[str, Any]:
    view = {
        "job_id": row.id, "status": row.status, "count": row.item_count,
        "submitted_at": _utc(row.created_at).isoformat(), "expires_at": _utc(row.expires_at).isoformat(),
        "poll": f"{base_url}/api/population/v1/bulk-verifications/{row.id}",
    }
    if row.status == "done" and row.result:
        view["items"] = orjson.loads(fernet().decrypt(row.result.encode()))
    if row.status == "failed":
        view["error"] = row.error_code
    return view


class BulkJobs:
    """The jobs of one gateway process, and the tasks polling upstream for them."""

    def __init__(self, gw: Any):
        self.gw = gw
        self.tasks: set[asyncio.Task] = set()

    # database (run in a thread: the event loop never waits on it)
    def _insert(self, ex: Exchange, job_id: str, handle: str) -> Any:
        now = _now()
        values = {
            "id": job_id, "client_id": ex.client.client_id, "service": ex.service.name, "request_id": ex.request_id,
            "purpose": ex.purpose, "officer": ex.officer, "status": "pending", "item_count": len(ex.params["items"]),
            "upstream_handle": handle, "allowed_fields": list(ex.grant.allowed_fields),
            "created_at": now, "updated_at": now, "expires_at": now + retention(),
        }
        with self.gw.engine.begin() as conn:
            conn.execute(delete(bulk_jobs).where(bulk_jobs.c.expires_at < now))  # results are kept only so long
            conn.execute(insert(bulk_jobs).values(**values))
            return conn.execute(select(bulk_jobs).where(bulk_jobs.c.id == job_id)).one()

    def _finish(self, job_id: str, *, items: list | None = None, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": "failed" if error else "done", "error_code": error, "updated_at": _now()}
        if items is not None:
            values["result"] = fernet().encrypt(orjson.dumps(items)).decode()
        with self.gw.engine.begin() as conn:
            conn.execute(update(bulk_jobs).where(bulk_jobs.c.id == job_id).values(**values))

    def _read(self, job_id: str, client_id: str) -> Any:
        with self.gw.engine.connect() as conn:
            row = conn.execute(select(bulk_jobs).where(bulk_jobs.c.id == job_id)).first()
        # Another client's job is answered exactly like a missing one.
        if row is None or row.client_id != client_id or _utc(row.expires_at) < _now():
            raise ExchangeError("record.not_found",
                                "No bulk verification with this id for this client (results are kept "
                                f"{int(retention().total_seconds() // 3600)} h).")
        return row

    async def create(self, ex: Exchange) -> dict[str, Any]:
        handle = (ex.canonical or {}).get("handle")
        if not handle:
            raise ExchangeError("upstream.malformed", "The national side accepted the list but gave no handle.")
        row = await asyncio.to_thread(self._insert, ex, str(uuid.uuid4()), handle)
        task = asyncio.create_task(self._poll(row.id, handle, _Origin.of(ex)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return _public(row, self.gw.settings.public_url)

    async def view(self, job_id: str, client_id: str) -> dict[str, Any]:
        row = await asyncio.to_thread(self._read, job_id, client_id)
        return _public(row, self.gw.settings.public_url)

    # polling
    async def _poll(self, job_id: str, handle: str, origin: _Origin) -> None:
        try:
            items = await self._wait_for_result(handle, origin)
        except UpstreamError as exc:
            log.warning("bulk job %s failed upstream: %s", job_id, exc.code)
            await asyncio.to_thread(self._finish, job_id, error=exc.code)
            await self._audit_items(job_id, handle, origin, None, exc.code)
            return
        except Exception:
            log.exception("bulk job %s failed", job_id)
            await asyncio.to_thread(self._finish, job_id, error="internal.error")
            await self._audit_items(job_id, handle, origin, None, "internal.error")
            return
        tree = _tree(origin.allowed_fields)
        minimised = [project(item, tree) for item in items]
        await asyncio.to_thread(self._finish, job_id, items=minimised)
        await self._audit_items(job_id, handle, origin, minimised, None)

    async def _call(self, origin: _Origin, operation: str, handle: str) -> dict[str, Any]:
        adapter = self.gw.registry.adapter(origin.connection)
        if adapter is None:
            raise UpstreamError(f"The connection {origin.connection} is not available.")
        context = CallContext(request_id=origin.request_id, client_id=origin.client_id,
                              agency_code=origin.agency_code, officer=origin.officer, purpose=origin.purpose)
        result = await adapter.call(operation, {"handle": handle}, context)
        try:
            return load_mapping(adapter.mapping_file).apply(operation, result.data, meta=result.meta)
        except MappingError as exc:
            raise UpstreamError(f"The upstream answer could not be mapped: {exc}") from None

    async def _wait_for_result(self, handle: str, origin: _Origin) -> list[dict[str, Any]]:
        """GetRequestStatus with backoff until done, then GetRequestResult."""
        deadline = time.monotonic() + poll_deadline()
        delay, transient = FIRST_POLL, 0
        while True:
            await asyncio.sleep(delay)
            try:
                status = await self._call(origin, "bulk_verification.status", handle)
            except RecordNotFound:
                raise
            except UpstreamError:
                transient += 1  # a national system that blinks: keep polling until the deadline
                status = {}
            if status.get("state") == "done":
                break
            if time.monotonic() > deadline:
                raise UpstreamError(f"The list was not done within {poll_deadline():g} s ({transient} failed polls).")
            delay = min(delay * 2, MAX_POLL)
        return (await self._call(origin, "bulk_verification.result", handle)).get("items") or []

    async def _audit_items(self, job_id: str, handle: str, origin: _Origin, items: list | None,
                           error: str | None) -> None:
        """One audit record per person: the citizen's access report finds each of them."""
        records = []
        for i, pid in enumerate(origin.personal_ids):
            outcome = None if items is None or i >= len(items) else items[i]
            body = orjson.dumps(outcome) if outcome is not None else b""
            code = error or (None if outcome is not None else "upstream.malformed")
            records.append({
                "at": _now(), "kind": "exchange", "request_id": f"{job_id}-{i:04d}", "door": origin.door,
                "client_id": origin.client_id, "agency_code": origin.agency_code, "officer": origin.officer,
                "purpose": origin.purpose, "service": origin.service, "outcome": "ok" if code is None else "failed",
                "status": 200 if code is None else 502, "error_code": code,
                "latency_ms": round((time.perf_counter() - origin.started) * 1000, 3),
                "fields": sorted(k for k, v in (outcome or {}).items() if v is not None) if code is None else [],
                "subject_hash": subject_hash(pid), "upstream": origin.upstream, "trace_id": handle,
                "request_bytes": 0, "response_bytes": len(body), "response_sha256": hashlib.sha256(body).hexdigest(),
                "detail": {"bulk_job": job_id, "item": i, "submitted_by": origin.request_id},
            })
        await self.gw.audit.commit_all(records)  # one transaction: every person's record, or none


class _Origin:
    """What the poller keeps of the submitting exchange (not the exchange itself)."""

    __slots__ = (
        "agency_code",
        "allowed_fields",
        "client_id",
        "connection",
        "door",
        "officer",
        "personal_ids",
        "purpose",
        "request_id",
        "service",
        "started",
        "upstream",
    )

    @classmethod
    def of(cls, ex: Exchange) -> _Origin:
        o = cls()
        o.request_id, o.client_id, o.agency_code = ex.request_id, ex.client.client_id, ex.client.agency_code
        o.officer, o.purpose, o.service, o.door = ex.officer, ex.purpose, ex.service.name, ex.door
        o.connection, o.allowed_fields = ex.service.connection, tuple(ex.grant.allowed_fields)
        o.personal_ids = [item["personal_id"] for item in ex.params["items"]]
        o.upstream, o.started = ex.upstream, ex.started
        return o


def jobs_for(gw: Any) -> BulkJobs:
    jobs = getattr(gw, "_bulk_jobs", None)
    if jobs is None:
        jobs = gw._bulk_jobs = BulkJobs(gw)
    return jobs


# -- the two services' own stages (lgsp.pipeline.run.PIPELINES puts them after the usual ones) ----

async def create_job(ex: Exchange, ctx: StageContext) -> None:
    """Last stage of a submit: the national side took the list; start polling it."""
    ex.answer = await jobs_for(ctx.gw).create(ex)
    ex.fields = []


async def view_job(ex: Exchange, ctx: StageContext) -> None:
    """Last stage of a poll: the job as its submitter may see it."""
    ex.answer = answer = await jobs_for(ctx.gw).view(str(ex.params.get("job_id", "")), ex.bound_client.client_id)
    ex.fields = [k for k in ("items",) if k in answer]


def accepted(render: Callable) -> Callable:
    """A submit's answer is 202 Accepted, with the job's address in Location."""

    def render_accepted(ex: Exchange):
        status, headers, body = render(ex)
        if ex.error is None and ex.service_name == SUBMIT and isinstance(ex.answer, dict):
            return 202, {**headers, "Location": ex.answer["poll"]}, body
        return status, headers, body

    return render_accepted
