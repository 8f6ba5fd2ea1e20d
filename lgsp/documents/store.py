"""Stored edXML packages and their routes: the documents' tables (migration 0016).

A package is stored once, whatever the number of recipients, in the database (PostgreSQL bytea /
SQLite blob) so that every node of the LGSP reads the same bytes with no shared volume to set up.
It is written in chunks of CHUNK bytes: no single value is the size of the whole package, and a
reader streams the chunks one at a time. Each recipient has a route: ``inbox`` (a local agency)
or ``national-axis`` (sent through the national axis by the delivery engine, ``message_id``).
Rows are written as statements committed with the exchange's audit record (lgsp.audit.writer), so
a stored document always has the record of its acceptance and a 202 is only sent for a stored one.
"""
from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.sql.dml import Update

from lgsp.delivery.store import M as delivery_messages
from lgsp.documents.edxml import Stamped

CHUNK = 1 << 20  # bytes per stored chunk

metadata = MetaData()

packages = Table(
    "document_packages", metadata,
    Column("id", String(36), primary_key=True),        # the LGSP's document id (given to the sender)
    Column("kind", String(8), nullable=False),         # edoc | status
    Column("sender", String(13), nullable=False),      # From/OrganId
    Column("doc_ref", String(128)),                    # the edXML DocumentId
    Column("response_for", String(128)),               # a status message: the DocumentId it is about
    Column("status_code", String(8)),                  # a status message: its code (01 … 06)
    Column("origin", String(16), nullable=False),      # outbox (a local sender) | national-axis (the poller)
    Column("client_id", String(64)),                   # the sending client (outbox)
    Column("request_id", String(64), nullable=False),  # the exchange that stored it
    Column("axis_doc_id", String(128)),                # the national axis's DocID (inbound: once only)
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),      # of the stored bytes (with this hop's trace header)
    Column("sent_sha256", String(64), nullable=False),  # of the bytes as the sender sent them
    Column("signer", JSON),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("axis_doc_id", name="uq_document_packages_axis_doc_id"),
    Index("ix_document_packages_doc_ref", "doc_ref"),
)

chunks = Table(
    "document_chunks", metadata,
    Column("package_id", String(36), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

routes = Table(
    "document_routes", metadata,
    Column("package_id", String(36), primary_key=True),
    Column("recipient", String(13), primary_key=True),  # To/OrganId
    Column("route", String(16), nullable=False),        # inbox | national-axis
    Column("message_id", String(36)),                   # the delivery engine's message (national-axis)
    Column("inbox_state", String(16)),                  # pending | done | fail (inbox)
    Column("acked_at", DateTime(timezone=True)),
    Column("status_code", String(8)),                   # the latest status message from this recipient
    Column("status_at", DateTime(timezone=True)),
    Index("ix_document_routes_inbox", "recipient", "inbox_state"),
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()


def package_statements(row: dict[str, Any], pieces: Sequence[bytes | memoryview] | Stamped) -> list[Any]:
    """The package's row and its chunks: the concatenation of ``pieces`` cut in rows of at most CHUNK bytes,
    as views into them, not copies (both drivers bind a buffer). A spooled package's chunks are read from
    its file as each row is written (:func:`_spooled_chunks`)."""
    out: list[Any] = [(packages, row)]
    if isinstance(pieces, Stamped):
        return out + _spooled_chunks(row["id"], pieces)
    seq = 0
    for piece in pieces:
        view = memoryview(piece)
        for at in range(0, len(view), CHUNK):
            out.append((chunks, {"package_id": row["id"], "seq": seq, "data": view[at:at + CHUNK]}))
            seq += 1
    return out


def _spooled_chunks(package_id: str, stamped: Stamped) -> list[Any]:
    """One INSERT per chunk whose bytes are read from the spool when the audit writer runs it (a bind
    parameter's ``callable_``), not before: the writer's transaction holds one chunk at a time, whatever
    the package weighs, where rows given as values would be bound all at once in one executemany."""
    def reader(at: int) -> Callable[[], bytes]:
        return lambda: stamped.read(at, CHUNK)

    return [insert(chunks).values(package_id=package_id, seq=seq,
                                  data=bindparam(None, callable_=reader(at), type_=LargeBinary))
            for seq, at in enumerate(range(0, stamped.size, CHUNK))]


def route_rows(package_id: str, local: Sequence[str], national: Sequence[str], message_id: str | None
               ) -> list[tuple[Any, Any]]:
    rows = [(routes, {"package_id": package_id, "recipient": code, "route": "inbox", "message_id": None,
                      "inbox_state": "pending", "acked_at": None, "status_code": None, "status_at": None})
            for code in local]
    rows += [(routes, {"package_id": package_id, "recipient": code, "route": "national-axis",
                       "message_id": message_id, "inbox_state": None, "acked_at": None, "status_code": None,
                       "status_at": None})
             for code in national]
    return rows


def status_statement(doc_ref: str, original_sender: str, recipient: str, code: str, at: dt.datetime) -> Update:
    """A status message from ``recipient`` about document ``doc_ref`` of ``original_sender``: the route's
    latest status (every package of that sender with that DocumentId)."""
    ids = select(packages.c.id).where(packages.c.doc_ref == doc_ref, packages.c.sender == original_sender,
                                      packages.c.kind == "edoc").scalar_subquery()
    return (update(routes).where(routes.c.package_id.in_(ids), routes.c.recipient == recipient)
            .values(status_code=code, status_at=at))


def read(engine: Engine, package_id: str) -> Any | None:
    with engine.connect() as conn:
        return conn.execute(select(packages).where(packages.c.id == package_id)).first()


def by_axis_id(engine: Engine, axis_doc_id: str) -> Any | None:
    with engine.connect() as conn:
        return conn.execute(select(packages).where(packages.c.axis_doc_id == axis_doc_id)).first()


def chunks_of(engine: Engine, package_id: str) -> Iterator[bytes]:
    """The stored bytes, one chunk (one short query) at a time."""
    seq = 0
    while True:
        with engine.connect() as conn:
            data = conn.execute(select(chunks.c.data).where(chunks.c.package_id == package_id,
                                                            chunks.c.seq == seq)).scalar()
        if data is None:
            return
        yield bytes(data)
        seq += 1


def load(engine: Engine, package_id: str) -> bytes:
    """The whole package (an inbox read, a forward to the national axis): grown in one buffer whose bytes are
    handed over without a copy — 1 × the package at the peak, where joining the chunks held them and the
    result, 2 ×."""
    out = io.BytesIO()
    for data in chunks_of(engine, package_id):
        out.write(data)
    return out.getvalue()


def route(engine: Engine, package_id: str, recipient: str) -> Any | None:
    with engine.connect() as conn:
        return conn.execute(select(routes).where(routes.c.package_id == package_id,
                                                 routes.c.recipient == recipient)).first()


def inbox(engine: Engine, agencies: Sequence[str], limit: int = 100) -> list[dict[str, Any]]:
    """Inbox items of these agencies not yet acknowledged `done`, oldest first."""
    if not agencies:
        return []
    query = (select(packages.c.id, packages.c.kind, packages.c.sender, packages.c.doc_ref, packages.c.response_for,
                    packages.c.status_code, packages.c.size, packages.c.sha256, packages.c.received_at,
                    routes.c.recipient)
             .join(routes, routes.c.package_id == packages.c.id)
             .where(routes.c.recipient.in_(agencies), routes.c.route == "inbox", routes.c.inbox_state != "done")
             .order_by(packages.c.received_at, packages.c.id).limit(limit))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{"id": r.id, "kind": r.kind, "from": r.sender, "to": r.recipient, "document_id": r.doc_ref,
             **({"response_for": r.response_for, "status_code": r.status_code} if r.kind == "status" else {}),
             "size": r.size, "sha256": r.sha256, "received_at": _iso(r.received_at)} for r in rows]


def ack_statement(package_id: str, recipient: str, state: str, at: dt.datetime) -> Update:
    return (update(routes).where(routes.c.package_id == package_id, routes.c.recipient == recipient,
                                 routes.c.route == "inbox").values(inbox_state=state, acked_at=at))


def outbox_view(engine: Engine, package_id: str) -> dict[str, Any] | None:
    """What the sender sees: the package and, per recipient, its delivery and latest status."""
    with engine.connect() as conn:
        row = conn.execute(select(packages).where(packages.c.id == package_id)).first()
        if row is None:
            return None
        rows = conn.execute(select(routes, delivery_messages.c.status.label("delivery"),
                                   delivery_messages.c.reason, delivery_messages.c.answer,
                                   delivery_messages.c.finished_at)
                            .outerjoin(delivery_messages, delivery_messages.c.id == routes.c.message_id)
                            .where(routes.c.package_id == package_id).order_by(routes.c.recipient)).all()
    return {
        "id": row.id, "kind": row.kind, "document_id": row.doc_ref, "from": row.sender, "size": row.size,
        "sha256": row.sha256, "sent_sha256": row.sent_sha256, "accepted_at": _iso(row.received_at),
        "client_id": row.client_id,
        "recipients": [_recipient(r) for r in rows],
    }


def _recipient(r: Any) -> dict[str, Any]:
    if r.route == "inbox":
        delivery = {"pending": "in_inbox", "done": "done", "fail": "fail"}.get(r.inbox_state or "", r.inbox_state)
        extra: dict[str, Any] = {"acknowledged_at": _iso(r.acked_at)}
    else:
        delivery = r.delivery or "unknown"
        extra = {"reason": r.reason, "axis_doc_id": (r.answer or {}).get("DocID") if isinstance(r.answer, dict)
                 else None}
    return {"agency": r.recipient, "route": r.route, "delivery": delivery, **extra,
            "status": ({"code": r.status_code, "at": _iso(r.status_at)} if r.status_code else None)}
