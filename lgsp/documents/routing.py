"""The document exchange axis's stages: a package in through the outbox, out through inboxes.

    check_password → identify → resolve → authorize → limit → read_body → accept_document

accept_document: read (scan, schema, manifest) → ``From`` is one of the caller's agencies → every
``To`` is in the directory → the sender's signature verifies → this hop's TraceHeader → the package
stored once with a route per recipient (a local agency's inbox, or the national axis through the
delivery engine), all of it statements committed with the exchange's audit record (202 only for a
stored document; a refusal stores nothing and is still audited). The record holds ids, sizes and
hashes (``Package.audit()``, the signer), never the document's contents.

A status message (edXML ``Status``) is routed the same way, back to the document's sender, and also
becomes the latest status of its recipient's route (``GET …/outbox/{id}``).
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from lgsp.adapter import RecordNotFound
from lgsp.delivery import store as delivery_store
from lgsp.delivery import worker as delivery_worker
from lgsp.delivery.policy import Policy
from lgsp.documents import countersign, edxml, signature
from lgsp.documents import store as docs
from lgsp.documents.agencies import Directory
from lgsp.errors import ExchangeError
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import Stage, StageContext
from lgsp.storage.schema import agencies

SEND = "documents.send"
OUTBOX_GET = "documents.outbox.get"
INBOX_LIST = "documents.inbox.list"
INBOX_GET = "documents.inbox.get"
INBOX_STATUS = "documents.inbox.status"
AXIS = "national-axis"          # the connection (and adapter) of the national axis
FORWARD = "documents.forward"   # the delivery message's operation: sendEdoc of a stored package (below)
ACKS = ("processing", "done", "fail")
STATUS_CODES = {"01": "arrived", "02": "refused", "03": "registered", "04": "assigned", "05": "processing",
                "06": "completed"}
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def organ_id(ctx: StageContext) -> str:
    """This hop's OrganId in the TraceHeader: LGSP_DOCUMENT_ORGAN_ID, else the province's system id on the
    national axis (the `national-axis` connection), else "LGSP"."""
    configured = os.environ.get("LGSP_DOCUMENT_ORGAN_ID")
    if configured:
        return configured
    conn = ctx.snap.connections.get(AXIS)
    system_id = (conn.settings or {}).get("system_id") if conn is not None else None
    return system_id if isinstance(system_id, str) and system_id else "LGSP"


# -- checks ------------------------------------------------------------------------------------------------

def check_sender(package: edxml.Package, own: list[str], client_id: str) -> None:
    if package.sender not in own:
        mine = ", ".join(own) or "none"
        raise ExchangeError("document.sender_mismatch",
                            f"The document is from {package.sender!r}, but client {client_id!r} sends for: {mine}.")


def recipients_by_scope(engine: Any, package: edxml.Package) -> tuple[list[str], list[str]]:
    """(local, national) recipients; any recipient not in the directory refuses the package."""
    wanted = list(dict.fromkeys(package.recipients))
    if not wanted:
        raise ExchangeError("document.unknown_recipient", "The document names no recipient (To).")
    with engine.connect() as conn:
        known = dict(conn.execute(select(agencies.c.code, agencies.c.scope).where(agencies.c.code.in_(wanted))).all())
    unknown = [code for code in wanted if code not in known]
    if unknown:
        raise ExchangeError("document.unknown_recipient",
                            f"Not in the agency directory: {', '.join(c[:20] for c in unknown[:10])}.")
    return [c for c in wanted if known[c] == "local"], [c for c in wanted if known[c] != "local"]


def verify(data: edxml.Source, root: Any, package: edxml.Package) -> signature.Signer:
    return signature.verify(data, root, package, signature.TrustStore.from_settings())  # type: ignore[arg-type]


# -- stages ------------------------------------------------------------------------------------------------

def accept_document(body: Callable[[], edxml.Source]) -> Stage:
    """Stage: check, stamp and store the package read by the door's read_body stage (answered 202)."""

    async def accept(ex: Exchange, ctx: StageContext) -> None:
        data = body()
        gw = ctx.gw
        package, root = await asyncio.to_thread(edxml.read, data, max_bytes=gw.settings.document_max_bytes)  # type: ignore[arg-type]
        ex.detail = {"document": package.audit()}
        own = await asyncio.to_thread(Directory(gw.engine, "documents").of_client, ex.bound_client.client_id)
        check_sender(package, own, ex.bound_client.client_id)
        local, national = await asyncio.to_thread(recipients_by_scope, gw.engine, package)
        signer = await asyncio.to_thread(verify, data, root, package)
        ex.detail["signer"] = signer.audit()
        # The stamped package is the sent bytes around the new TraceHeader (and the LGSP's counter-signature, when
        # configured): stored as views, never copied.
        traced = stamped(data, root, package, organ_id(ctx))
        if len(traced) > 3:
            ex.detail["countersigned"] = True
        store(ex, ctx, package, signer, traced, local, national)

    return accept


def stamped(data: edxml.Source, root: Any, package: edxml.Package, organ: str
            ) -> Sequence[bytes | memoryview] | edxml.Stamped:
    """This hop's TraceHeader, then the LGSP's counter-signature if the operator configured one (countersign.py)."""
    when = dt.datetime.now(dt.UTC)
    return countersign.apply(edxml.trace_pieces(data, package, organ, when), data, root, organ,
                             edxml.trace_timestamp(when))


def store(ex: Exchange, ctx: StageContext, package: edxml.Package, signer: signature.Signer,
          traced: Sequence[bytes | memoryview], local: list[str], national: list[str]) -> None:
    """The statements that store the package and its routes with the exchange's record; the 202 answer."""
    sender = Sender(ex.client.client_id if ex.client else None, ex.client.agency_code if ex.client else None,
                    ex.request_id, ex.service_name or SEND, ex.officer, ex.purpose)
    package_id, statements, detail = stored(sender, package, signer, traced, local, national)
    ex.store = statements
    ex.ok_status, ex.fields = 202, []
    ex.detail = {**(ex.detail or {}), **detail}
    base = ctx.gw.settings.public_url
    ex.answer = {"id": package_id, "kind": package.kind, "document_id": package.document_id,
                 "size": detail["stored"]["size"], "sha256": detail["stored"]["sha256"],
                 "status_url": f"{base}/api/documents/v1/outbox/{package_id}",
                 "recipients": [{"agency": c, "route": "inbox"} for c in local]
                 + [{"agency": c, "route": AXIS} for c in national]}


@dataclass(frozen=True)
class Sender:
    """Who hands the package to the LGSP: a client through the outbox, or the inbound poller (no client)."""

    client_id: str | None
    agency_code: str | None
    request_id: str
    service: str
    officer: str | None = None
    purpose: str | None = None


def stored(sender: Sender, package: edxml.Package, signer: signature.Signer, traced: Sequence[bytes | memoryview],
           local: list[str],
           national: list[str], *, origin: str = "outbox", axis_doc_id: str | None = None
           ) -> tuple[str, list[Any], dict[str, Any]]:
    """(package id, the statements that store the package, its routes and its delivery message, the audit
    record's detail)."""
    package_id = str(uuid.uuid4())
    at = docs.now()
    digest = hashlib.sha256()
    for piece in traced:
        digest.update(piece)
    row = {"id": package_id, "kind": package.kind, "sender": package.sender, "doc_ref": package.document_id,
           "response_for": package.response_for, "status_code": package.status_code, "origin": origin,
           "client_id": sender.client_id, "request_id": sender.request_id, "axis_doc_id": axis_doc_id,
           "size": sum(len(p) for p in traced), "sha256": digest.hexdigest(), "sent_sha256": package.sha256,
           "signer": signer.audit(), "received_at": at}
    message_id = str(uuid.uuid4()) if national else None
    statements: list[Any] = list(docs.package_statements(row, traced))
    statements += docs.route_rows(package_id, local, national, message_id)
    if message_id is not None:
        statements += delivery_store.store_statements(
            _message(sender, message_id, package_id, package.sender, at), sender.client_id or "", [])
    if package.kind == "status" and package.response_for and package.status_code:
        for original_sender in package.recipients:
            statements.append(docs.status_statement(package.response_for, original_sender, package.sender,
                                                    package.status_code, at))
    detail = {"stored": {"id": package_id, "size": row["size"], "sha256": row["sha256"]},
              "routes": {"inbox": local, AXIS: national}, **({"message_id": message_id} if message_id else {})}
    return package_id, statements, detail


def _message(sender: Sender, message_id: str, package_id: str, organ: str, at: dt.datetime) -> dict[str, Any]:
    """The delivery engine's message that sends the stored package to the national axis (one sendEdoc for
    all national recipients: the axis fans it out). Its payload names the package, never carries it."""
    policy = Policy.from_environment()
    return {
        "id": message_id, "client_id": sender.client_id or "", "service": sender.service,
        "destination": AXIS, "operation": FORWARD, "msg_key": package_id, "request_id": sender.request_id,
        "purpose": sender.purpose, "officer": sender.officer, "agency_code": sender.agency_code,
        "payload": delivery_store.seal_payload({"package_id": package_id, "from": organ}), "status": "accepted",
        "attempts": 0, "accepted_at": at, "next_attempt_at": at,
        "expires_at": at + dt.timedelta(seconds=policy.max_age), "callback_url": None,
    }


async def forward(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A `documents.forward` message at delivery time: the stored package, as the national-axis adapter's
    `edoc.send` takes it (base64 in its params: the adapter contract is JSON). Adapters see the LGSP only
    through lgsp.sdk, so the package is read here, by the delivery worker, not by the adapter."""
    from lgsp.config import settings
    from lgsp.storage import engine_for

    engine = engine_for(settings().db_url)
    row = await asyncio.to_thread(docs.read, engine, str(params["package_id"]))
    if row is None:
        raise RecordNotFound("The LGSP holds no stored package with this id.")
    data = await asyncio.to_thread(docs.load, engine, row.id)
    return "edoc.send", {"from": params["from"], "messagetype": "status" if row.kind == "status" else "edoc",
                         "package": base64.b64encode(data).decode("ascii")}


delivery_worker.PREPARE[FORWARD] = forward


def _package_id(ex: Exchange) -> str:
    value = ex.params.get("id")
    if not isinstance(value, str) or not _ID.match(value):
        raise ExchangeError("record.not_found", "No document with this id.")
    return value


async def _own_agencies(ex: Exchange, ctx: StageContext) -> list[str]:
    return await asyncio.to_thread(Directory(ctx.gw.engine, "documents").of_client, ex.bound_client.client_id)


async def list_inbox(ex: Exchange, ctx: StageContext) -> None:
    """Stage: GET …/inbox — the pending items of the caller's agencies."""
    own = await _own_agencies(ex, ctx)
    items = await asyncio.to_thread(docs.inbox, ctx.gw.engine, own)
    ex.answer, ex.fields = {"agencies": own, "items": items}, []
    ex.detail = {"items": [i["id"] for i in items]}


async def _inbox_route(ex: Exchange, ctx: StageContext) -> tuple[str, Any]:
    package_id = _package_id(ex)
    own = await _own_agencies(ex, ctx)
    for agency in own:
        found = await asyncio.to_thread(docs.route, ctx.gw.engine, package_id, agency)
        if found is not None and found.route == "inbox":
            return package_id, found
    # Another agency's document: as if it did not exist.
    raise ExchangeError("record.not_found", "No document with this id in the inbox of the caller's agencies.")


async def get_inbox_item(ex: Exchange, ctx: StageContext) -> None:
    """Stage: GET …/inbox/{id} — the stored package's bytes (answered as application/xml)."""
    package_id, found = await _inbox_route(ex, ctx)
    data = await asyncio.to_thread(docs.load, ctx.gw.engine, package_id)
    ex.answer, ex.fields = data, []
    ex.detail = {"id": package_id, "agency": found.recipient, "size": len(data),
                 "sha256": hashlib.sha256(data).hexdigest()}


async def acknowledge(ex: Exchange, ctx: StageContext) -> None:
    """Stage: POST …/inbox/{id}/status — processing | done | fail, like the national axis's updateStatus:
    `done` takes the item out of the pending list, `processing` and `fail` keep it there."""
    state = ex.params.get("status")
    if state not in ACKS:
        raise ExchangeError("request.invalid", f"status: one of {', '.join(ACKS)}.")
    package_id, found = await _inbox_route(ex, ctx)
    at = docs.now()
    ex.store = [docs.ack_statement(package_id, found.recipient, state, at)]
    ex.answer, ex.fields = {"id": package_id, "agency": found.recipient, "status": state, "at": at.isoformat()}, []
    ex.detail = {"id": package_id, "agency": found.recipient, "status": state}


async def read_outbox(ex: Exchange, ctx: StageContext) -> None:
    """Stage: GET …/outbox/{id} — per recipient: route, delivery and latest status; only for the sender."""
    package_id = _package_id(ex)
    view = await asyncio.to_thread(docs.outbox_view, ctx.gw.engine, package_id)
    if view is None or view["client_id"] != ex.bound_client.client_id:
        raise ExchangeError("record.not_found", "No document with this id was sent by this client.")
    view.pop("client_id")
    for r in view["recipients"]:
        if r["status"]:
            r["status"]["meaning"] = STATUS_CODES.get(r["status"]["code"], "unknown")
    ex.answer, ex.fields = view, []
