"""Citizen access report over a large audit trail: is it under one second at 1M records?

    .venv/bin/python benchmarks/access_report.py                      # fresh SQLite, 1,000,000 records
    .venv/bin/python benchmarks/access_report.py --database-url postgresql://…/lgsp_bench
    .venv/bin/python benchmarks/access_report.py --records 200000     # quicker

Fills an empty database (schema by the migrations, so the real indexes) with
synthetic exchange records spread over a year, ~100,000 citizens, 24 clients and
20 chains with real hash chains, then times `audit_search.access_report` (plus
JSON encoding) for a typical citizen (~20 accesses) and a "hot" one (~2,000), and
a few searches. Median and max of 5 runs after one warm-up run.
Not part of the test suite: it takes minutes and a gigabyte of disk.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The keyed hash of the synthetic IDs needs a key that stays the same between a
# fill and a later `--reuse` run; it protects nothing but this synthetic data.
os.environ["LGSP_SECRET_KEY"] = "lgsp-benchmark-synthetic-data-only"

import orjson  # noqa: E402
from sqlalchemy import Engine, delete, func, insert, select, text  # noqa: E402

from lgsp import audit_search  # noqa: E402
from lgsp.audit import GENESIS, record_hash  # noqa: E402
from lgsp.crypto import subject_hash  # noqa: E402
from lgsp.storage import engine_for, upgrade  # noqa: E402
from lgsp.storage.schema import audit_records, clients  # noqa: E402

TYPICAL_ID, HOT_ID = "001090000020", "001090002000"
PURPOSES = ["administrative-procedure", "insurance-check", "land-registration", "social-benefit", "health-record"]
FIELDS = [["personal_id", "full_name", "birth_date"], ["personal_id", "full_name", "birth_date", "permanent_address"],
          ["match"], ["personal_id", "full_name", "gender", "birth_date", "permanent_address", "current_address"]]
SERVICES = ["population.citizen.get", "population.citizen.verify"]
CLIENTS = 24
CHAINS = 20
CHUNK = 20_000


def _subjects(records: int, subjects: int, rng: random.Random) -> list[str]:
    """The personal ID of each record, in time order: a typical and a hot citizen among the rest."""
    special = [TYPICAL_ID] * 20 + [HOT_ID] * 2000
    others = [f"0010{n:08d}" for n in range(10_000, 10_000 + subjects - 2)]
    out = [rng.choice(others) for _ in range(records - len(special))] + special
    rng.shuffle(out)
    return out


def _rows(records: int, subjects: int, seed: int):
    """Synthetic exchange records, chained and hashed like the audit writer does, in chunks."""
    rng = random.Random(seed)
    ids = _subjects(records, subjects, rng)
    hashes = {pid: subject_hash(pid) for pid in set(ids)}
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    step = dt.timedelta(days=365) / records
    per_chain = -(-records // CHAINS)
    chunk, seq, head = [], 0, GENESIS
    for i, pid in enumerate(ids):
        if i % per_chain == 0:
            seq, head = 0, GENESIS
        seq += 1
        client = rng.randrange(CLIENTS)
        ok = rng.random() < 0.93
        row = {
            "chain": f"bench-{i // per_chain:02d}", "seq": seq, "prev_hash": head,
            "at": start + step * i + dt.timedelta(microseconds=rng.randrange(1000)),
            "kind": "exchange", "request_id": f"bench{i:010d}", "door": "rest" if client % 5 else "soap",
            "client_id": f"sector-{client:02d}", "agency_code": f"000.00.{client:02d}.H30",
            "officer": f"officer-{client:02d}-{rng.randrange(40):02d}", "purpose": rng.choice(PURPOSES),
            "service": rng.choice(SERVICES), "outcome": "ok" if ok else "refused", "status": 200 if ok else 403,
            "error_code": None if ok else "purpose.not_allowed", "latency_ms": round(rng.uniform(8, 90), 3),
            "fields": rng.choice(FIELDS) if ok else [], "subject_hash": hashes[pid],
            "upstream": "https://dancu.example.gov.vn/dancu", "trace_id": f"bench{i:010d}",
            "request_bytes": 0, "response_bytes": rng.randrange(200, 2000), "response_sha256": "0" * 64,
            "detail": None,
        }
        row["hash"] = head = record_hash(row)
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def fill(engine: Engine, records: int, subjects: int, seed: int) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    with engine.begin() as conn:
        conn.execute(delete(clients).where(clients.c.client_id.like("sector-%")))
        conn.execute(insert(clients), [
            {"client_id": f"sector-{n:02d}", "name": f"Hệ thống ngành {n:02d}", "agency_code": f"000.00.{n:02d}.H30",
             "agency_name": f"Sở {n:02d} tỉnh Thử nghiệm", "secret_hash": "!", "status": "disabled",
             "created_at": now, "updated_at": now, "roles": []} for n in range(CLIENTS)])
    # Building the indexes once after the load is much faster than keeping them up to date.
    for index in audit_records.indexes:
        index.drop(engine)
    started, done = time.perf_counter(), 0
    for chunk in _rows(records, subjects, seed):
        with engine.begin() as conn:
            conn.execute(insert(audit_records), chunk)
        done += len(chunk)
        rate = done / (time.perf_counter() - started)
        print(f"\r  inserted {done:>9,} / {records:,}  ({rate:,.0f} records/s)", end="", flush=True)
    print()
    t = time.perf_counter()
    for index in audit_records.indexes:
        index.create(engine)
    if engine.url.get_backend_name() == "postgresql":  # as autovacuum would; SQLite runs no ANALYZE by itself
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    print(f"  indexes built in {time.perf_counter() - t:.1f} s")


def timed(fn, runs: int = 5) -> dict:
    t = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"first": first, "median": statistics.median(times), "max": max(times), "result": result}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def report_case(engine: Engine, label: str, pid: str) -> None:
    figures = timed(lambda: orjson.dumps(audit_search.access_report(engine, pid)))
    count = orjson.loads(figures["result"])["summary"]["count"]
    print(f"  {label:<38} {count:>6,} accesses   first {_ms(figures['first'])}   "
          f"median {_ms(figures['median'])}   max {_ms(figures['max'])}")


def search_case(engine: Engine, label: str, filters: audit_search.Filters) -> None:
    figures = timed(lambda: audit_search.search(engine, filters, 50))
    rows, cursor = figures["result"]
    nxt = timed(lambda: audit_search.search(engine, filters, 50, cursor)) if cursor else None
    extra = f"   next page median {_ms(nxt['median'])}" if nxt else ""
    print(f"  {label:<38} {len(rows):>6,} records    median {_ms(figures['median'])}   max {_ms(figures['max'])}{extra}")


def explain(engine: Engine) -> None:
    if engine.url.get_backend_name() != "sqlite":
        return
    where = audit_search.Filters(kind="exchange", subject_hash=subject_hash(HOT_ID)).clauses()
    query = select(*audit_search._ACCESS_COLUMNS).select_from(audit_search._JOINED).where(*where) \
        .order_by(audit_records.c.at, audit_records.c.id)
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
    print("  report query plan: " + " | ".join(row[-1] for row in plan))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--database-url", help="an EMPTY database (default: a fresh SQLite file in a temporary directory)")
    parser.add_argument("--reuse", action="store_true", help="the database is already filled: only time")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    workdir = None
    url = args.database_url
    if not url:
        workdir = tempfile.TemporaryDirectory(prefix="lgsp-bench-")
        url = f"sqlite:///{Path(workdir.name) / 'audit.db'}"
    engine = engine_for(url)
    print(f"database: {engine.url.render_as_string(hide_password=True)}")
    if not args.reuse:
        upgrade(url)
        with engine.connect() as conn:
            existing = conn.execute(select(func.count()).select_from(audit_records)).scalar()
        if existing:
            print(f"the database already holds {existing:,} audit records: give an empty one", file=sys.stderr)
            return 2
        print(f"filling {args.records:,} records over {args.subjects:,} citizens …")
        t = time.perf_counter()
        fill(engine, args.records, args.subjects, args.seed)
        print(f"  filled in {time.perf_counter() - t:.0f} s")
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(audit_records)).scalar()
    print(f"\n{total:,} audit records; timings (first run, then median and max of 5):")
    report_case(engine, "citizen access report, typical citizen", TYPICAL_ID)
    report_case(engine, "citizen access report, hot citizen", HOT_ID)
    search_case(engine, "search: newest 50, no filter", audit_search.Filters())
    search_case(engine, "search: one client", audit_search.Filters(client_id="sector-07"))
    search_case(engine, "search: one officer", audit_search.Filters(officer="officer-07-03"))
    search_case(engine, "search: client + outcome refused", audit_search.Filters(client_id="sector-07", outcome="refused"))
    search_case(engine, "search: by personal ID (hot)", audit_search.Filters(subject_hash=subject_hash(HOT_ID)))
    search_case(engine, "search: one day of one service", audit_search.Filters(
        service="population.citizen.verify", start=dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc),
        end=dt.datetime(2025, 6, 2, tzinfo=dt.timezone.utc)))
    # Worst cases: filters on columns without an index of their own scan the time index.
    search_case(engine, "search: by request id", audit_search.Filters(request_id="bench0000500000"))
    search_case(engine, "search: a purpose nobody used", audit_search.Filters(purpose="no-such-purpose"))
    explain(engine)
    engine.dispose()
    if workdir:
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
