"""Refusals' audit records committed in groups (lgsp.traffic.grouped_audit), on a real audit writer and database."""
from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from lgsp.audit.writer import GENESIS, AuditRecord, AuditUnavailable, AuditWriter, read_chain
from lgsp.errors import ExchangeError
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records
from lgsp.traffic import grouped_audit
from lgsp.traffic.grouped_audit import commit_refusal, commit_with_refusals, groupable


def refusal(n: int) -> AuditRecord:
    return {"at": dt.datetime.now(dt.timezone.utc), "kind": "exchange", "door": "rest",
            "request_id": f"flood-{uuid.uuid4().hex[:8]}-{n}", "client_id": "greedy",
            "service": "population.citizen.get", "outcome": "refused", "status": 429,
            "error_code": "rate.limited", "latency_ms": 0.5}


def groups() -> tuple[float, float]:
    """Transactions the audit writers committed so far in this process, and the records in them."""
    return (REGISTRY.get_sample_value("lgsp_audit_batch_records_count") or 0.0,
            REGISTRY.get_sample_value("lgsp_audit_batch_records_sum") or 0.0)


def stored(engine, request_id: str | None) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(audit_records.c.seq).where(audit_records.c.request_id == request_id)).first() \
            is not None


@pytest.fixture
def writer(fresh_db_url):
    engine = engine_for(fresh_db_url)
    writer = AuditWriter(engine, chain=f"grouped-{uuid.uuid4().hex[:8]}")
    yield writer
    writer.close()


def test_a_flood_of_refusals_is_committed_in_one_group_each_record_durable_before_its_waiter_returns(writer):
    records = [refusal(n) for n in range(40)]
    seen_durable = []

    async def one(record: AuditRecord) -> None:
        await commit_refusal(writer, record)
        seen_durable.append(stored(writer.engine, record["request_id"]))  # as the door would answer now

    async def flood() -> None:
        await asyncio.gather(*(one(r) for r in records))

    count, total = groups()
    asyncio.run(flood())
    assert seen_durable == [True] * 40
    assert groups() == (count + 1, total + 40), "40 refusals arriving together should make one transaction"
    chain = read_chain(writer.engine, writer.chain)
    assert sorted(r["request_id"] for r in chain) == sorted(str(r["request_id"]) for r in records)  # one each
    assert [r["seq"] for r in chain] == list(range(1, 41))  # consecutive in the hash chain, linked
    assert [r["prev_hash"] for r in chain] == [GENESIS] + [r["hash"] for r in chain[:-1]]


def test_a_full_group_is_committed_without_waiting_and_the_rest_after_the_linger(writer):
    records = [refusal(n) for n in range(grouped_audit.GROUP_MAX + 5)]

    async def flood() -> None:
        await asyncio.gather(*(commit_refusal(writer, r) for r in records))

    count, total = groups()
    asyncio.run(flood())
    after_count, after_total = groups()
    assert after_total == total + len(records) and count + 1 <= after_count <= count + 2
    assert all(stored(writer.engine, r["request_id"]) for r in records)


def test_a_waiter_that_went_away_leaves_its_record_written_and_the_others_answered(writer):
    records = [refusal(n) for n in range(5)]

    async def flood() -> list:
        tasks = [asyncio.ensure_future(commit_refusal(writer, r)) for r in records]
        await asyncio.sleep(0)
        tasks[2].cancel()  # the client closed its connection while its refusal waited for the group
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(flood())
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r for n, r in enumerate(results) if n != 2] == [None] * 4
    assert all(stored(writer.engine, r["request_id"]) for r in records)


def test_every_waiter_learns_the_audit_is_unavailable(writer):
    writer.close()

    async def flood() -> list:
        return await asyncio.gather(*(commit_refusal(writer, refusal(n)) for n in range(3)), return_exceptions=True)

    assert [type(r) for r in asyncio.run(flood())] == [AuditUnavailable] * 3


def test_only_a_floods_refusals_wait_for_a_group():
    assert groupable(ExchangeError("rate.limited", "over"))
    assert groupable(ExchangeError("auth.token_missing", "no token"))
    assert not groupable(None)  # an answered exchange is committed at once
    assert not groupable(ExchangeError("purpose.missing", "why?"))
    assert not groupable(ExchangeError("upstream.unavailable", "down"))


def admitted(n: int) -> AuditRecord:
    return {**refusal(n), "request_id": f"calm-{uuid.uuid4().hex[:8]}-{n}", "client_id": "calm",
            "outcome": "ok", "status": 200, "error_code": None}


def test_waiting_refusals_ride_in_the_next_admitted_exchanges_transaction_without_waiting_the_linger(writer):
    refusals, answer = [refusal(n) for n in range(10)], admitted(0)
    waited: list[float] = []

    async def one(record: AuditRecord) -> None:
        begin = asyncio.get_running_loop().time()
        await commit_refusal(writer, record)
        waited.append(asyncio.get_running_loop().time() - begin)

    async def flood() -> None:
        tasks = [asyncio.ensure_future(one(r)) for r in refusals]
        await asyncio.sleep(0)  # the refusals wait in their group
        await commit_with_refusals(writer, [answer])
        await asyncio.gather(*tasks)

    count, total = groups()
    asyncio.run(flood())
    assert groups() == (count + 1, total + 11), "the refusals should have ridden in the admitted record's transaction"
    assert max(waited) < grouped_audit.LINGER
    assert all(stored(writer.engine, r["request_id"]) for r in [*refusals, answer])


def test_an_admitted_exchange_with_no_refusals_waiting_commits_alone(writer):
    count, total = groups()
    asyncio.run(commit_with_refusals(writer, [admitted(1), admitted(2)]))  # an answer and another person's record
    assert groups() == (count + 1, total + 2)


def test_a_store_conflict_fails_only_its_exchange_not_the_refusals_riding_with_it(writer):
    from lgsp.audit.writer import StoreConflict
    from lgsp.storage.schema import audit_chain_bases

    clash = (audit_chain_bases, {"chain": f"clash-{uuid.uuid4().hex[:8]}", "base_seq": 0, "base_hash": "0" * 64,
                                 "at": dt.datetime.now(dt.timezone.utc)})  # a row the second insert repeats
    refusals = [refusal(n) for n in range(3)]

    async def flood() -> list:
        tasks = [asyncio.ensure_future(commit_refusal(writer, r)) for r in refusals]
        await asyncio.sleep(0)
        await writer.commit(admitted(3), [clash])  # stored once
        tasks.append(asyncio.ensure_future(commit_with_refusals(writer, [admitted(4)], [clash])))
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(flood())
    assert results[:3] == [None] * 3 and isinstance(results[3], StoreConflict)
    assert all(stored(writer.engine, r["request_id"]) for r in refusals)
