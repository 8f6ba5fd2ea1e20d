"""The audit writer's own connection: kept between group commits (no pool checkout, no pre-ping round
trip), and replaced without losing or doubling a record when the database cut it."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select, text

from lgsp.audit.verify import verify_database
from lgsp.audit.writer import AuditRecord, AuditWriter
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records

pytestmark = pytest.mark.integration


def record(i: int) -> AuditRecord:
    return {"at": dt.datetime.now(dt.UTC), "kind": "exchange", "request_id": f"conn-{i}", "door": "rest",
            "client_id": "clerk", "service": "population.citizen.get", "outcome": "ok", "status": 200,
            "fields": ["full_name"], "latency_ms": 1.0, "detail": {"n": i}}


def exchange_records(engine, chain: str) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(audit_records.c.seq, audit_records.c.request_id).where(
            audit_records.c.chain == chain, audit_records.c.kind == "exchange").order_by(audit_records.c.seq))]


def test_groups_share_one_connection_and_the_chain_verifies(fresh_db_url):
    engine = engine_for(fresh_db_url)
    writer = AuditWriter(engine, seal_every=7, seal_seconds=60)
    try:
        writer.commit_sync(record(0))
        first = writer._conn
        for i in range(1, 20):
            writer.commit_sync(record(i))
        assert writer._conn is first  # one connection for every group, none checked out per group

        async def many():  # a burst: several records per group, still one connection
            await asyncio.gather(*(writer.commit(record(i)) for i in range(20, 60)))
        asyncio.run(many())
        assert writer._conn is first
    finally:
        writer.close()
    assert exchange_records(engine, writer.chain) == [(i + 1, f"conn-{i}") for i in range(60)]
    assert verify_database(engine).ok


def test_a_connection_the_database_cut_is_replaced_without_a_refused_exchange(fresh_db_url):
    engine = engine_for(fresh_db_url)
    if engine.dialect.name != "postgresql":
        pytest.skip("the server cutting a connection is a PostgreSQL case (SQLite is a file)")
    writer = AuditWriter(engine, seal_every=1000, seal_seconds=60)
    try:
        writer.commit_sync(record(0))
        assert writer._conn is not None
        backend = writer._conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
        with engine.connect() as conn:  # what a restart or an idle-connection cut does to it
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend}).scalar() is True
        writer.commit_sync(record(1))  # answered: the writer reconnected and wrote the group once
        writer.commit_sync(record(2))
    finally:
        writer.close()
    assert exchange_records(engine, writer.chain) == [(1, "conn-0"), (2, "conn-1"), (3, "conn-2")]
    assert verify_database(engine).ok
