"""Citizen access report and audit search over a province-sized audit trail.

    .venv/bin/python benchmarks/access_report.py                      # fresh SQLite, 1,000,000 records
    .venv/bin/python benchmarks/access_report.py --records 10000000 --subjects 1000000 --workdir /tmp/bench
    .venv/bin/python benchmarks/access_report.py --database-url postgresql://…/empty_db --records 30000000
    .venv/bin/python benchmarks/access_report.py --reuse --database-url …   # already filled: only time

Fills an empty database (schema by the migrations, so the real indexes and, on
PostgreSQL, the monthly partitions) with synthetic exchange records over one year
(2025), --subjects citizens, 24 clients and 20 interleaved hash chains hashed like
the audit writer does (so `lgsp audit verify` holds on the result). The fill is
bulk: SQLite takes big executemany batches on one connection with the indexes
dropped, PostgreSQL takes COPY; the migrations' indexes are rebuilt afterwards.
Then it refreshes statistics the way the gateway does (lgsp.storage.maintenance)
and times each audit query: median and max of --runs runs after a first run,
with the plan line of the query (which index it reads).
Not part of the test suite: it takes minutes and gigabytes of disk.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The keyed hash of the synthetic IDs needs a key that stays the same between a
# fill and a later `--reuse` run; it protects nothing but this synthetic data.
os.environ["LGSP_SECRET_KEY"] = "lgsp-benchmark-synthetic-data-only"

import hashlib  # noqa: E402

import orjson  # noqa: E402
from sqlalchemy import Engine, delete, func, insert, select, text  # noqa: E402

from lgsp.audit import search as audit_search  # noqa: E402
from lgsp.audit.writer import GENESIS, HASHED_FIELDS, record_hash  # noqa: E402
from lgsp.crypto import subject_hash  # noqa: E402
from lgsp.storage import engine_for, maintenance, partitions, upgrade  # noqa: E402
from lgsp.storage.schema import audit_records, clients  # noqa: E402

TYPICAL_ID, HOT_ID = "001090000020", "001090002000"
PURPOSES = ["administrative-procedure", "insurance-check", "land-registration", "social-benefit", "health-record"]
FIELDS = [["personal_id", "full_name", "birth_date"], ["personal_id", "full_name", "birth_date", "permanent_address"],
          ["match"], ["personal_id", "full_name", "gender", "birth_date", "permanent_address", "current_address"]]
SERVICES = ["population.citizen.get", "population.citizen.verify"]
CLIENTS = 24
CHAINS = 20
CHAIN_NAMES = [f"bench-{n:02d}" for n in range(CHAINS)]
CHUNK = 50_000
YEAR = dt.datetime(2025, 1, 1)  # naive UTC, as SQLite stores it
COLUMNS = HASHED_FIELDS + ("hash",)
AT = COLUMNS.index("at")
FIELDS_AT = COLUMNS.index("fields")


# -- synthetic records --------------------------------------------------------------------

def rows(records: int, subjects: int, seed: int):
    """Chunks of records as tuples in COLUMNS order, chained and hashed as the audit writer does.

    Each record is about a random citizen, except 20 about a typical and 2,000 about a hot one.
    """
    rng = random.Random(seed)
    special = dict.fromkeys(rng.sample(range(records), 2020), int(HOT_ID))
    for position in list(special)[:20]:
        special[position] = int(TYPICAL_ID)
    first_other = 1_090_010_000
    hashes: dict[int, str] = {}
    heads = [(0, GENESIS)] * CHAINS
    fields_json = [orjson.dumps(f).decode() for f in FIELDS]
    step_us = 365 * 86400 * 1_000_000 // records
    microsecond = dt.timedelta(microseconds=1)
    clients_ = [(f"sector-{c:02d}", f"000.00.{c:02d}.H30", "rest" if c % 5 else "soap") for c in range(CLIENTS)]
    rand = rng.random  # int(rand() * n) rather than randrange: the fill of 30M records is bound by this loop
    chunk: list[tuple] = []
    for i in range(records):
        pid = special.get(i) or first_other + int(rand() * (subjects - 2))
        subject = hashes.get(pid) or hashes.setdefault(pid, subject_hash(f"{pid:012d}"))
        chain = i % CHAINS  # 20 gateway processes writing side by side
        seq, head = heads[chain]
        seq += 1
        client = int(rand() * CLIENTS)
        client_id, agency, door = clients_[client]
        ok = rand() < 0.93
        field = int(rand() * len(FIELDS))
        stored_at = (YEAR + microsecond * (step_us * i + int(rand() * 1000))).isoformat(" ", "microseconds")
        values = [
            CHAIN_NAMES[chain], seq, head, stored_at, "exchange", f"bench{i:010d}", door, client_id, agency,
            f"officer-{client:02d}-{int(rand() * 40):02d}", PURPOSES[int(rand() * 5)], SERVICES[int(rand() * 2)],
            "ok" if ok else "refused", 200 if ok else 403, None if ok else "purpose.not_allowed",
            round(8 + rand() * 82, 3), FIELDS[field] if ok else [], subject, "https://dancu.example.gov.vn/dancu",
            f"bench{i:010d}", 0, 200 + int(rand() * 1800), "0" * 64, None,
        ]
        canon = list(values)
        canon[AT] = stored_at.replace(" ", "T") + "Z"  # lgsp.audit.writer._iso
        head = hashlib.sha256(orjson.dumps(canon)).hexdigest()
        heads[chain] = (seq, head)
        values[FIELDS_AT] = fields_json[field] if ok else "[]"
        values.append(head)
        chunk.append(tuple(values))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_hash(row: tuple) -> None:
    """The fast hashing above must be the writer's record_hash."""
    record = dict(zip(COLUMNS, row))
    record["at"] = dt.datetime.fromisoformat(record["at"]).replace(tzinfo=dt.timezone.utc)
    record["fields"] = orjson.loads(record["fields"])
    assert record_hash(record) == record["hash"], "synthetic hash differs from lgsp.audit.writer.record_hash"


# -- bulk load ---------------------------------------------------------------------------

def _progress(done: int, total: int, started: float) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    print(f"\r  loaded {done:>11,} / {total:,}  ({rate:,.0f} records/s)", end="", file=sys.stderr, flush=True)


def _load_sqlite(engine: Engine, chunks, total: int) -> None:
    import sqlite3

    engine.dispose()
    conn = sqlite3.connect(engine.url.database, isolation_level=None)
    # One writer, nothing to protect yet: no journal, no fsync, a big cache; WAL again afterwards.
    for pragma in ("journal_mode=DELETE", "synchronous=OFF", "cache_size=-1000000", "temp_store=FILE", "threads=2"):
        conn.execute(f"PRAGMA {pragma}")
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_records' "
                           "AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    sql = f"INSERT INTO audit_records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    started, done = time.perf_counter(), 0
    conn.execute("BEGIN")
    for chunk in chunks:
        conn.executemany(sql, chunk)
        done += len(chunk)
        if done % 1_000_000 < CHUNK:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
        _progress(done, total, started)
    conn.execute("COMMIT")
    print(file=sys.stderr)
    t = time.perf_counter()
    for name, sql in indexes:
        conn.execute(sql)
        print(f"  index {name} built ({time.perf_counter() - t:.0f} s so far)", file=sys.stderr)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def _copy_text(chunk: list[tuple]) -> bytes:
    out = io.StringIO()
    for row in chunk:
        out.write("\t".join("\\N" if v is None else (v + "+00" if i == AT else str(v))
                            for i, v in enumerate(row)))
        out.write("\n")
    return out.getvalue().encode()


def _load_postgres(engine: Engine, chunks, total: int) -> None:
    import psycopg

    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        constraints = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'audit_records'::regclass AND contype IN ('p', 'u')").fetchall()
        for name, _ in constraints:
            conn.execute(f"ALTER TABLE audit_records DROP CONSTRAINT {name}")
        indexes = conn.execute("SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                               "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'audit_records'::regclass"
                               ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        started, done = time.perf_counter(), 0
        with conn.cursor().copy(f"COPY audit_records ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for chunk in chunks:
                copy.write(_copy_text(chunk))
                done += len(chunk)
                _progress(done, total, started)
        print(file=sys.stderr)
        t = time.perf_counter()
        for name, ddl in constraints:
            conn.execute(f"ALTER TABLE audit_records ADD CONSTRAINT {name} {ddl}")
            print(f"  constraint {name} built ({time.perf_counter() - t:.0f} s so far)", file=sys.stderr)
        for name, ddl in indexes:
            conn.execute(ddl.replace(" ON ONLY ", " ON "))
            print(f"  index {name} built ({time.perf_counter() - t:.0f} s so far)", file=sys.stderr)
        conn.execute("VACUUM (ANALYZE) audit_records")  # as autovacuum would, once: visibility map and statistics


def fill(engine: Engine, records: int, subjects: int, seed: int) -> float:
    """Load the synthetic year; returns seconds taken."""
    started = time.perf_counter()
    now = dt.datetime.now(dt.timezone.utc)
    with engine.begin() as conn:
        conn.execute(delete(clients).where(clients.c.client_id.like("sector-%")))
        conn.execute(insert(clients), [
            {"client_id": f"sector-{n:02d}", "name": f"Hệ thống ngành {n:02d}", "agency_code": f"000.00.{n:02d}.H30",
             "agency_name": f"Sở {n:02d} tỉnh Thử nghiệm", "secret_hash": "!", "status": "disabled",
             "created_at": now, "updated_at": now, "roles": []} for n in range(CLIENTS)])
    year = YEAR.replace(tzinfo=dt.timezone.utc)
    partitions.ensure_months(engine, year, year + dt.timedelta(days=366))
    chunks = rows(records, subjects, seed)
    first = next(chunks)
    _check_hash(first[0])
    _check_hash(first[-1])

    def all_chunks():
        yield first
        yield from chunks

    if engine.url.get_backend_name() == "postgresql":
        _load_postgres(engine, all_chunks(), records)
    else:
        _load_sqlite(engine, all_chunks(), records)
    return time.perf_counter() - started


# -- timing ---------------------------------------------------------------------------------

def timed(fn, runs: int) -> dict:
    t = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"first": first, "median": statistics.median(times), "max": max(times), "result": result}


def plan_line(engine: Engine, query) -> str:
    """How the database reads audit_records for `query`: the index of each scan."""
    compiled = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.url.get_backend_name() == "sqlite":
            plan = [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")]
            return " | ".join(p for p in plan if "audit_records" in p or "B-TREE" in p)
        plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}").scalar()[0]["Plan"]
        parents = dict(conn.execute(text(
            "SELECT c.relname, p.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE c.relkind = 'i'")).all())
    scans: dict[str, int] = {}

    def walk(node: dict, depth: int) -> None:
        if node.get("Relation Name", "").startswith("audit_records"):
            index = node.get("Index Name") or next(
                (c.get("Index Name") for c in node.get("Plans", []) if c.get("Index Name")), None)
            what = f"{node['Node Type']} {parents.get(index, index)}" if index else node["Node Type"]
            scans[what] = scans.get(what, 0) + 1
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(plan, 0)
    top = plan["Node Type"] + (f" > {plan['Plans'][0]['Node Type']}" if plan.get("Plans") else "")
    return f"{top}: " + ", ".join(f"{what} ×{n}" for what, n in scans.items())


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


class Bench:
    def __init__(self, engine: Engine, runs: int):
        self.engine, self.runs, self.lines = engine, runs, []

    def case(self, label: str, fn, count, query) -> None:
        figures = timed(fn, self.runs)
        n = count(figures["result"])
        plan = plan_line(self.engine, query) if query is not None else ""
        self.lines.append((label, n, figures, plan))
        print(f"  {label:<44} {n:>7,}  first {_ms(figures['first']):>9} ms  median {_ms(figures['median']):>9} ms  "
              f"max {_ms(figures['max']):>9} ms\n      plan: {plan}", flush=True)

    def report(self, label: str, pid: str) -> None:
        where = audit_search.report_filters(pid).clauses()
        self.case(label, lambda: orjson.dumps(audit_search.access_report(self.engine, pid)),
                  lambda r: orjson.loads(r)["summary"]["count"], audit_search.report_query(where).limit(10_001))

    def search(self, label: str, filters: audit_search.Filters, next_page: bool = False) -> None:
        self.case(label, lambda: audit_search.search(self.engine, filters, 50), lambda r: len(r[0]),
                  audit_search.search_query(filters).limit(51))
        rows, cursor = audit_search.search(self.engine, filters, 50)
        if next_page and cursor:
            conditions = filters.clauses() + [audit_search._after(*audit_search.decode_cursor(cursor, "desc"), "desc")]
            self.case(label + ", next page", lambda: audit_search.search(self.engine, filters, 50, cursor),
                      lambda r: len(r[0]), audit_search.search_query(filters, conditions).limit(51))

    def markdown(self) -> str:
        out = ["| query | rows | first ms | median ms | max ms | plan |", "| --- | ---: | ---: | ---: | ---: | --- |"]
        for label, n, f, plan in self.lines:
            out.append(f"| {label} | {n:,} | {_ms(f['first'])} | {_ms(f['median'])} | {_ms(f['max'])} | `{plan}` |")
        return "\n".join(out)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ×{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ×{os.cpu_count()}"


def database_size(engine: Engine) -> int:
    if engine.url.get_backend_name() == "sqlite":
        path = Path(engine.url.database)
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_database_size(current_database())")).scalar()


def run_queries(engine: Engine, runs: int, total: int) -> Bench:
    bench = Bench(engine, runs)
    request_id = f"bench{total // 2:010d}"
    f = audit_search.Filters
    bench.report("access report, typical citizen", TYPICAL_ID)
    bench.report("access report, hot citizen", HOT_ID)
    bench.search("search: newest 50, no filter", f(), next_page=True)
    bench.search("search: one client", f(client_id="sector-07"), next_page=True)
    bench.search("search: one officer", f(officer="officer-07-03"))
    bench.search("search: client + outcome refused", f(client_id="sector-07", outcome="refused"))
    bench.search("search: by personal ID (hot)", f(subject_hash=subject_hash(HOT_ID)))
    day = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
    bench.search("search: one day of one service", f(service="population.citizen.verify", start=day,
                                                     end=day + dt.timedelta(days=1)))
    bench.search("search: by request id", f(request_id=request_id))
    bench.search("search: a purpose nobody used", f(purpose="no-such-purpose"))
    bench.search("search: outcome failed (none)", f(outcome="failed"))
    bench.search("search: kind admin (none)", f(kind="admin"))
    with engine.connect() as conn:
        middle = conn.execute(select(audit_records.c.id).where(audit_records.c.request_id == request_id)).scalar()
    bench.case("one record with integrity and chain status", lambda: audit_search.get_record(engine, middle),
               lambda r: 1, select(audit_records).where(audit_records.c.id == middle))
    return bench


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def export_month(engine: Engine) -> str:
    """`lgsp audit export` of one month (June 2025) to /dev/null: rate, and resident memory while it runs."""
    from lgsp.audit.export import export_jsonl

    before = _rss_mb()
    samples = [before]
    t = time.perf_counter()
    with open(os.devnull, "wb") as out:
        counts = export_jsonl(engine, dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc),
                              dt.datetime(2025, 7, 1, tzinfo=dt.timezone.utc), out,
                              progress=lambda n: samples.append(_rss_mb()))
    seconds = time.perf_counter() - t
    return (f"export of one month (June 2025): {counts['records']:,} records in {seconds:.1f} s "
            f"({counts['records'] / seconds:,.0f} records/s); resident memory {before:,.0f} MB before, "
            f"at most {max(samples):,.0f} MB while writing (sampled every 100,000 records)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--database-url", help="an EMPTY database (default: a fresh SQLite file in --workdir)")
    parser.add_argument("--workdir", type=Path, help="where the SQLite file goes (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file (for --reuse)")
    parser.add_argument("--reuse", action="store_true", help="the database is already filled: only time")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--results", type=Path, help="also write the figures as Markdown to this file")
    parser.add_argument("--migrate-from", metavar="REVISION",
                        help="fill the schema of this revision (e.g. 0003), then time the migrations to the head")
    args = parser.parse_args()

    workdir = None
    url = args.database_url
    if not url:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{args.workdir / 'audit.db'}"
        else:
            workdir = tempfile.TemporaryDirectory(prefix="lgsp-bench-")
            url = f"sqlite:///{Path(workdir.name) / 'audit.db'}"
    engine = engine_for(url)
    print(f"database: {engine.url.render_as_string(hide_password=True)}\ncpu: {cpu_model()}")
    fill_seconds = migrate_seconds = None
    if not args.reuse:
        upgrade(url, args.migrate_from or "head")
        with engine.connect() as conn:
            existing = conn.execute(select(func.count()).select_from(audit_records)).scalar()
        if existing:
            print(f"the database already holds {existing:,} audit records: give an empty one", file=sys.stderr)
            return 2
        print(f"filling {args.records:,} records over {args.subjects:,} citizens …")
        fill_seconds = fill(engine, args.records, args.subjects, args.seed)
        print(f"  filled (indexes included) in {fill_seconds:.0f} s")
        if args.migrate_from:
            t = time.perf_counter()
            upgrade(url)
            migrate_seconds = time.perf_counter() - t
            print(f"  migrated from {args.migrate_from} to the head in {migrate_seconds:.0f} s "
                  f"({args.records / migrate_seconds:,.0f} records/s)")
    t = time.perf_counter()
    maintenance.keep_statistics(engine)
    stats_seconds = time.perf_counter() - t
    print(f"  statistics refreshed as the gateway does (lgsp.storage.maintenance) in {stats_seconds:.1f} s")
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(audit_records)).scalar()
    size = database_size(engine)
    print(f"\n{total:,} audit records, {size / 1e9:.1f} GB; timings (first run, then median and max of {args.runs}):")
    bench = run_queries(engine, args.runs, total)
    exported = export_month(engine)
    print(f"  {exported}")
    if args.results:
        version = engine.dialect.server_version_info
        head = [f"# benchmarks/access_report.py, {dt.date.today().isoformat()}", "",
                f"- database: {engine.url.get_backend_name()} {'.'.join(map(str, version or ()))}",
                f"- cpu: {cpu_model()}",
                f"- records: {total:,}; citizens: {args.subjects:,}; size: {size / 1e9:.1f} GB",
                f"- fill (load + indexes): {f'{fill_seconds:.0f} s' if fill_seconds else 'reused'}; "
                f"statistics refresh: {stats_seconds:.1f} s",
                f"- command: `{' '.join(sys.argv)}`", "", ""]
        if migrate_seconds:
            head.insert(-2, f"- migration from {args.migrate_from} to the head: {migrate_seconds:.0f} s "
                            f"({args.records / migrate_seconds:,.0f} records/s)")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text("\n".join(head) + bench.markdown() + f"\n\n{exported}\n")
    engine.dispose()
    if workdir and not args.keep:
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
