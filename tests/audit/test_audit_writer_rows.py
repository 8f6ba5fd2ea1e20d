"""The writer's records go to the driver as tuples (lgsp.audit.writer._RecordInsert), not through
SQLAlchemy Core: what is stored must be what Core's INSERT stored, column by column, read back raw
(SQLite's datetime and JSON text, PostgreSQL's json text) and through the table, on the database
the tests run on (SQLite, or PostgreSQL when LGSP_TEST_DATABASE_URL is set)."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import insert, text

from lgsp.audit.verify import verify_database
from lgsp.audit.writer import _RECORD_COLUMNS, AuditRecord, AuditUnavailable, AuditWriter, _RecordInsert, read_chain
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records

AT = dt.datetime(2026, 12, 1, 3, 4, 5, 678901, tzinfo=dt.UTC)
ROWS = [
    # every column filled, JSON with non-ASCII text and nesting
    {"chain": "rows-test", "seq": 1, "prev_hash": "0" * 64, "hash": "a" * 64, "at": AT, "kind": "exchange",
     "request_id": "r-1", "door": "rest", "client_id": "c", "agency_code": "000.00.31.H30", "officer": "o",
     "purpose": "p", "service": "population.citizen.get", "outcome": "ok", "status": 200, "error_code": None,
     "latency_ms": 1.25, "fields": ["full_name", "gender"], "subject_hash": "b" * 64, "upstream": "http://u",
     "trace_id": "t", "request_bytes": 0, "response_bytes": 611, "response_sha256": "c" * 64,
     "detail": {"actor": "Nguyễn Văn An", "after": {"n": [1, 2.5, None, True]}}},
    # the nullable columns empty: JSON None is stored as Core stores it
    {**dict.fromkeys(_RECORD_COLUMNS), "chain": "rows-test", "seq": 2, "prev_hash": "a" * 64, "hash": "d" * 64,
     "at": AT, "kind": "admin", "outcome": "refused"},
]


@pytest.fixture
def engine(fresh_db_url):
    return engine_for(fresh_db_url)


def _raw(engine, chain: str) -> list[tuple]:
    cols = ", ".join(f"CAST({c} AS TEXT)" for c in _RECORD_COLUMNS)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            f"SELECT {cols} FROM audit_records WHERE chain = :c ORDER BY seq"), {"c": chain})]


def test_rows_are_stored_as_sqlalchemy_core_stores_them(engine):
    with engine.begin() as conn:
        conn.execute(insert(audit_records), [{**r, "chain": "core"} for r in ROWS])
    with engine.begin() as conn:
        _RecordInsert(engine)(conn, [{**r, "chain": "driver"} for r in ROWS])
    core, driver = _raw(engine, "core"), _raw(engine, "driver")
    assert [r[1:] for r in driver] == [r[1:] for r in core]
    read = {c: [{k: v for k, v in r.items() if k not in ("id", "chain")} for r in read_chain(engine, c)]
            for c in ("core", "driver")}
    assert read["driver"] == read["core"]
    assert read["driver"][0]["detail"] == ROWS[0]["detail"] and read["driver"][0]["fields"] == ROWS[0]["fields"]


def test_a_chain_written_in_groups_verifies(engine):
    """Lone records (on PostgreSQL each an autocommit INSERT), larger groups and groups with seals
    (a transaction) alternate on one connection, which is never left in autocommit."""
    writer = AuditWriter(engine, batch_max=64, seal_every=50)
    futures = [writer.submit({"at": dt.datetime.now(dt.UTC), "kind": "exchange", "outcome": "ok", "status": 200,
                              "fields": ["full_name"], "detail": {"n": i, "name": "Trần Thị Bình"}})
               for i in range(300)]
    for fut in futures:
        fut.result(30)
    for i in range(20):
        writer.commit_sync({"at": dt.datetime.now(dt.UTC), "kind": "exchange", "outcome": "ok", "detail": {"lone": i}})
    conn = writer._conn
    assert conn is not None and getattr(conn.connection.driver_connection, "autocommit", False) is False
    writer.close()
    report = verify_database(engine)
    assert report.ok, report.findings
    assert [r["seq"] for r in read_chain(engine, writer.chain)] == list(range(1, 321))


def test_every_durable_group_is_timed_for_operators(engine):
    """lgsp_audit_commit_seconds (what every answer waits for; LgspAuditCommitsSlow reads it) counts each group
    the writer commits, once it is durable, and nothing for a group that was not written."""
    from prometheus_client import REGISTRY

    def timed() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("lgsp_audit_commit_seconds_count") or 0.0,
                REGISTRY.get_sample_value("lgsp_audit_commit_seconds_sum") or 0.0)

    writer = AuditWriter(engine, chain="timed-test", seal_every=10_000, seal_seconds=3600)
    count, total = timed()
    try:
        for n in range(3):
            writer.commit_sync({"at": AT, "kind": "exchange", "request_id": f"t-{n}", "outcome": "ok"})
        assert timed()[0] - count == 3 and timed()[1] > total
        with engine.begin() as conn:  # the table gone: the next group fails and is not counted as durable
            conn.execute(text("ALTER TABLE audit_records RENAME TO audit_records_away"))
        try:
            with pytest.raises(AuditUnavailable):
                writer.commit_sync({"at": AT, "kind": "exchange", "request_id": "t-lost", "outcome": "ok"}, timeout=10)
        finally:
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE audit_records_away RENAME TO audit_records"))
        assert timed()[0] - count == 3
    finally:
        writer.close()


def test_a_group_is_written_whole_or_not_at_all(engine):
    """A group of records (on PostgreSQL one INSERT in autocommit, no transaction around it) is atomic:
    one record the database refuses leaves none of the group stored, every one of its waiters is told,
    and the chain goes on from where the database has it."""
    writer = AuditWriter(engine, chain="whole-test", seal_every=10_000, seal_seconds=3600)
    good: AuditRecord = {"at": AT, "kind": "exchange", "outcome": "ok"}
    try:
        writer.commit_sync({**good, "request_id": "before"})

        async def group() -> None:  # an exchange's records for several persons: one group
            await writer.commit_all([{**good, "request_id": "g-1"}, {**good, "request_id": "g-2", "outcome": None},
                                     {**good, "request_id": "g-3"}])

        with pytest.raises(AuditUnavailable):
            asyncio.run(group())
        writer.commit_sync({**good, "request_id": "after"})
    finally:
        writer.close()
    assert [(r["seq"], r["request_id"]) for r in read_chain(engine, "whole-test")] == [(1, "before"), (2, "after")]
    report = verify_database(engine)
    assert report.ok, report.findings


def test_the_records_of_one_event_loop_turn_reach_the_writer_as_one_group(engine):
    """Exchanges whose records are queued in the same turn of their event loop are handed to the writer
    together at the turn's end: one group, one commit, however long the turn ran (here each exchange
    sleeps 10 ms after queueing, time in which the writer thread is free to take a lone record)."""
    import time

    from prometheus_client import REGISTRY

    def groups() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("lgsp_audit_batch_records_count") or 0.0,
                REGISTRY.get_sample_value("lgsp_audit_batch_records_sum") or 0.0)

    writer = AuditWriter(engine, chain="turn-test", seal_every=10_000, seal_seconds=3600)
    try:
        writer.commit_sync({"at": AT, "kind": "exchange", "request_id": "first", "outcome": "ok"})  # start seal
        before = groups()

        async def turn() -> None:
            waiting = []
            for n in range(8):
                waiting += writer.queue_all([({"at": AT, "kind": "exchange", "request_id": f"turn-{n}",
                                               "outcome": "ok"}, ())])
                time.sleep(0.01)  # the rest of a busy turn; the GIL is free meanwhile
            await asyncio.gather(*waiting)

        asyncio.run(turn())
        after = groups()
    finally:
        writer.close()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 8)
    assert [r["request_id"] for r in read_chain(engine, "turn-test")] == ["first", *(f"turn-{n}" for n in range(8))]
