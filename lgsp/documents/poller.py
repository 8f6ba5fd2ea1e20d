"""The inbound poller: documents the national axis holds for the province's agencies, into their inboxes.

Each round: getReceivedEdocList → for each DocID not yet stored: getEdoc → read, check the signature,
append this hop's TraceHeader → store it with a route per addressed local agency, in the transaction of
its audit record (kind ``delivery``, door ``queue``, service ``documents.receive``) → only then
updateStatus(done). A poller killed at any point loses nothing and stores nothing twice: a document stored
but not acknowledged is still listed by the axis, found by its DocID (unique in ``document_packages``)
and only acknowledged; two pollers storing the same DocID at once collide on that unique key, and the
loser only acknowledges. A package the LGSP refuses (bad signature, not edXML, no local recipient) is
acknowledged ``fail`` on the axis (the axis's sender sees it) and audited with its code, once: the refusal
(DocID, code, when) is stored in ``document_refusals`` with its audit record, so that a restarted poller does
not fetch, refuse and audit the same package again (it only repeats the ``fail`` acknowledgement, once per
process, in case the previous one was killed before sending it).

Runs in the worker plane (``lgsp serve --plane worker``) and in ``lgsp serve``, beside the delivery
worker, every ``LGSP_DOCUMENT_POLL`` seconds (default 10; 0 turns it off). Documents from the province's
own agencies were routed locally when they were sent: they are acknowledged, not stored again.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from typing import Any

from sqlalchemy import Column, DateTime, MetaData, String, Table, insert, select

from lgsp.adapter import CallContext, UpstreamError
from lgsp.audit.writer import StoreConflict
from lgsp.documents import edxml, routing, signature
from lgsp.documents import store as docs
from lgsp.errors import ExchangeError
from lgsp.storage.schema import agencies

# Migration 0018. DocIDs the poller refused (the axis keeps a package acknowledged `fail` in its pending list).
refusals = Table(
    "document_refusals", MetaData(),
    Column("axis_doc_id", String(128), primary_key=True),
    Column("code", String(64), nullable=False),
    Column("refused_at", DateTime(timezone=True), nullable=False),
)

log = logging.getLogger(__name__)

SERVICE = "documents.receive"


def interval() -> float:
    return float(os.environ.get("LGSP_DOCUMENT_POLL", "10"))


class Poller:
    def __init__(self, gw: Any, every: float | None = None):
        self.gw = gw
        self.every = interval() if every is None else every
        self._task: asyncio.Task[None] | None = None
        self._refused: set[str] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="document-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except UpstreamError as exc:
                log.warning("documents: the national axis could not be polled (%s)", exc.detail or exc.code)
            except Exception:
                log.exception("documents: polling the national axis failed")
            await asyncio.sleep(self.every)

    async def poll_once(self) -> int:
        """One round; returns how many documents were stored."""
        adapter = self.gw.registry.adapter(routing.AXIS)
        if adapter is None:
            return 0
        context = CallContext(request_id=f"poll-{int(time.time() * 1000)}", client_id="lgsp")
        listed = await adapter.call("edoc.received", {}, context)
        items = [i for i in listed.data.get("data", []) if isinstance(i, dict) and isinstance(i.get("DocID"), str)
                 and i["DocID"] and i["DocID"] not in self._refused]
        refused_before = await asyncio.to_thread(self._refused_before, [i["DocID"] for i in items])
        stored = 0
        for item in items:
            doc_id = item["DocID"]
            if doc_id in refused_before:  # refused and audited by an earlier run: acknowledged `fail` again, only
                self._refused.add(doc_id)
                await self._ack(adapter, doc_id, "fail", CallContext(request_id=f"axis:{doc_id}"[:64],
                                                                     client_id="lgsp", idempotency_key=doc_id))
                continue
            stored += await self.bring(adapter, doc_id, [str(t) for t in item.get("to") or []])
        return stored

    def _refused_before(self, doc_ids: list[str]) -> set[str]:
        if not doc_ids:
            return set()
        with self.gw.engine.connect() as conn:
            return set(conn.execute(select(refusals.c.axis_doc_id).where(refusals.c.axis_doc_id.in_(doc_ids)))
                       .scalars())

    async def bring(self, adapter: Any, doc_id: str, addressed: list[str]) -> int:
        context = CallContext(request_id=f"axis:{doc_id}"[:64], client_id="lgsp", idempotency_key=doc_id)
        engine = self.gw.engine
        if await asyncio.to_thread(docs.by_axis_id, engine, doc_id) is not None:
            await self._ack(adapter, doc_id, "done", context)  # stored by an earlier round: acknowledge only
            return 0
        started = time.perf_counter()
        data = await adapter.fetch_package(doc_id, context)
        try:
            outcome = await asyncio.to_thread(self._check, data, addressed)
        except ExchangeError as exc:
            self._refused.add(doc_id)
            record = _record(doc_id, started, len(data), exc.code, {"axis_doc_id": doc_id, "reason": exc.detail})
            remembered = insert(refusals).values(axis_doc_id=doc_id, code=exc.code, refused_at=docs.now())
            with contextlib.suppress(StoreConflict):  # another poller refused it at the same time, and audited it
                await self.gw.audit.commit(record, [remembered])
            await self._ack(adapter, doc_id, "fail", context)
            return 0
        if outcome is None:  # a document of the province's own agency: routed when it was sent
            await self._ack(adapter, doc_id, "done", context)
            return 0
        package, signer, traced, local = outcome
        sender = routing.Sender(None, None, f"axis:{doc_id}"[:64], SERVICE)
        _, statements, detail = routing.stored(sender, package, signer, [traced], local, [], origin=routing.AXIS,
                                               axis_doc_id=doc_id)
        record = _record(doc_id, started, len(data), None, {"axis_doc_id": doc_id, "document": package.audit(),
                                                            "signer": signer.audit(), **detail})
        try:
            await self.gw.audit.commit(record, statements)  # durable before the axis is told
        except StoreConflict:  # another poller stored it at the same time
            await self._ack(adapter, doc_id, "done", context)
            return 0
        await self._ack(adapter, doc_id, "done", context)
        return 1

    def _check(self, data: bytes, addressed: list[str]
               ) -> tuple[edxml.Package, signature.Signer, bytes, list[str]] | None:
        package, root = edxml.read(data, max_bytes=self.gw.settings.document_max_bytes)
        local = self._local(list(dict.fromkeys(package.recipients)))
        if package.sender in self._local([package.sender]):
            return None
        mine = [code for code in local if not addressed or code in addressed]
        if not mine:
            raise ExchangeError("document.unknown_recipient", "None of the document's recipients is an agency of "
                                                              "this province in the directory.")
        signer = signature.verify(data, root, package, signature.TrustStore.from_settings())
        organ = os.environ.get("LGSP_DOCUMENT_ORGAN_ID") or _system_id(self.gw)
        traced = b"".join(routing.stamped(data, root, package, organ))
        return package, signer, traced, mine

    def _local(self, codes: list[str]) -> list[str]:
        with self.gw.engine.connect() as conn:
            found = set(conn.execute(select(agencies.c.code).where(agencies.c.code.in_(codes),
                                                                   agencies.c.scope == "local")).scalars())
        return [c for c in codes if c in found]

    @staticmethod
    async def _ack(adapter: Any, doc_id: str, status: str, context: CallContext) -> None:
        await adapter.call("edoc.status.update", {"doc_id": doc_id, "status": status}, context)


def _system_id(gw: Any) -> str:
    conn = gw.registry.snapshot.connections.get(routing.AXIS)
    system_id = (conn.settings or {}).get("system_id") if conn is not None else None
    return system_id if isinstance(system_id, str) and system_id else "LGSP"


def _record(doc_id: str, started: float, size: int, error_code: str | None, detail: dict[str, Any]) -> Any:
    return {
        "at": docs.now(), "kind": "delivery", "request_id": f"axis:{doc_id}"[:64], "door": "queue",
        "client_id": None, "agency_code": None, "officer": None, "purpose": None, "service": SERVICE,
        "outcome": "ok" if error_code is None else "refused", "status": 200 if error_code is None else 400,
        "error_code": error_code, "latency_ms": round((time.perf_counter() - started) * 1000, 3), "fields": [],
        "upstream": routing.AXIS, "trace_id": doc_id[:64], "request_bytes": size, "response_bytes": 0,
        "response_sha256": hashlib.sha256(b"").hexdigest(), "detail": detail,
    }


def start_in_process(gw: Any, *, worker_plane: bool = False) -> Poller | None:
    """The poller of a gateway process (unless LGSP_DELIVERY_WORKER=0 there) or of a worker-plane process;
    none when LGSP_DOCUMENT_POLL=0."""
    if interval() <= 0 or (not worker_plane and os.environ.get("LGSP_DELIVERY_WORKER", "1") == "0"):
        return None
    poller = Poller(gw)
    poller.start()
    return poller
