"""The audit queries read the index meant for them, on SQLite and on PostgreSQL.

Each test runs the real read path (access report, search per filter, one record
with its integrity and chain status), captures every SELECT it sends, and asks
the database for that statement's plan with the same parameters (EXPLAIN QUERY
PLAN / EXPLAIN (FORMAT JSON)). A schema or query change that loses an index, or a
planner that drifts to another one, fails here instead of at a province.

The trail is shaped like a real one (200 clients, 2,000 officers, 40 services,
5,000 citizens, 1 % admin records, 20,000 records over three months, so three
monthly partitions on PostgreSQL), with the statistics the gateway keeps
(lgsp.storage.maintenance; on PostgreSQL a VACUUM ANALYZE as autovacuum would).
We do not `SET enable_seqscan = off`: on a tiny table PostgreSQL rightly scans
it whole, and forbidding that asserts a plan no production database would
choose. On these statistics a sequential scan of a partition that holds
records, or any index but the intended one, is a failure; how an empty
partition (the default one, months ahead) is read does not matter: it costs nothing.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import random
import re
from dataclasses import dataclass

import pytest
from sqlalchemy import event, text

from lgsp.audit import search as audit_search
from lgsp.audit.search import Filters
from lgsp.audit.writer import AuditWriter
from lgsp.crypto import subject_hash
from lgsp.storage import engine_for, maintenance, partitions

START = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
RECORDS = 20_000
CITIZEN = "001090000777"


@dataclass(frozen=True)
class Access:
    table: str           # audit_records, audit_seals, … (a partition counts as its table)
    index: str | None    # the index read (a partition's index counts as its parent's); None: a full scan
    sorted: bool         # the rows are sorted after they are read (not read in index order)


def _record(rng: random.Random, i: int) -> dict:
    client = rng.randrange(200)
    admin = rng.random() < 0.01
    roll = rng.random()
    outcome = "ok" if roll < 0.93 else "refused" if roll < 0.99 else "failed"
    return {
        "at": START + dt.timedelta(days=90) * i / RECORDS, "kind": "admin" if admin else "exchange",
        "request_id": f"plan-{i:06d}", "door": "rest", "client_id": f"client-{client:03d}",
        "agency_code": f"000.00.{client:03d}.H30", "officer": f"officer-{client:03d}-{rng.randrange(10)}",
        "purpose": f"purpose-{rng.randrange(20):02d}", "service": f"service.{rng.randrange(40):02d}.get",
        "outcome": outcome, "status": 200, "fields": ["full_name"],
        "subject_hash": subject_hash(CITIZEN if i % 1000 == 7 else f"0010{rng.randrange(5000):08d}"),
    }


@pytest.fixture(scope="module")
def trail(tmp_path_factory, lgsp_env):
    """A migrated database of its own, filled by the audit writer, statistics as the gateway keeps them."""
    import os

    from helpers import postgres_database

    from lgsp.storage import upgrade

    drop = None
    if os.environ.get("LGSP_TEST_DATABASE_URL"):
        url, drop = postgres_database(os.environ["LGSP_TEST_DATABASE_URL"])
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('plans') / 'plans.db'}"
    upgrade(url)
    engine = engine_for(url)
    partitions.ensure_months(engine, START, START + dt.timedelta(days=89))
    rng = random.Random(15)
    writer = AuditWriter(engine, batch_max=1000, seal_every=1000)
    futures = [writer.submit(_record(rng, i)) for i in range(RECORDS)]
    for fut in futures:
        fut.result(60)
    writer.close()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE audit_records"))
    maintenance.keep_statistics(engine)
    yield engine
    engine.dispose()
    if drop:
        drop()


@contextlib.contextmanager
def captured(engine):
    """The SELECTs sent while inside, with their parameters."""
    seen: list[tuple[str, object]] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def accesses(engine, statement: str, parameters) -> list[Access]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return _sqlite_plan(conn, statement, parameters)
        return _postgres_plan(conn, statement, parameters)


def _sqlite_plan(conn, statement, parameters) -> list[Access]:
    details = [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    sorted_ = any(d.startswith("USE TEMP B-TREE FOR ORDER BY") for d in details)
    out = []
    for d in details:
        m = re.match(r"(SCAN|SEARCH) (\w+)(?: USING (?:COVERING )?INDEX (\w+)| USING (INTEGER PRIMARY KEY))?", d)
        if not m or m.group(2) == "clients":
            continue
        index = m.group(3) or ("pkey" if m.group(4) else None)
        if index and index.startswith("sqlite_autoindex_"):  # a UNIQUE constraint's index: name it as the model does
            index = "uq_audit_chain_seq" if m.group(2) == "audit_records" else index
        out.append(Access(m.group(2), index, sorted_))
    return out


def _postgres_plan(conn, statement, parameters) -> list[Access]:
    plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar()[0]["Plan"]
    parent = dict(conn.execute(text(
        "SELECT c.relname, p.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent")).all())
    empty = {name for name, in conn.execute(text(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'audit_records%' AND reltuples = 0"))}
    out: list[Access] = []

    def walk(node: dict, sorted_: bool) -> None:
        sorted_ = sorted_ or node["Node Type"] in ("Sort", "Incremental Sort")
        relation = node.get("Relation Name")
        if relation and relation != "clients" and relation not in empty:
            names = _index_names(node)  # a bitmap scan may AND several indexes
            names = sorted({"pkey" if parent.get(n, n) == "audit_records_pkey" else parent.get(n, n) for n in names})
            out.append(Access(parent.get(relation, relation), "+".join(names) or None, sorted_))
            return
        for child in node.get("Plans", []):
            walk(child, sorted_)

    walk(plan, False)
    return out


def _index_names(node: dict) -> list[str]:
    own = [node["Index Name"]] if node.get("Index Name") else []
    return own + [n for child in node.get("Plans", []) for n in _index_names(child)]


def plans_of(engine, fn) -> list[tuple[str, list[Access]]]:
    with captured(engine) as seen:
        fn()
    return [(statement, accesses(engine, statement, parameters)) for statement, parameters in seen]


def assert_reads(engine, fn, table: str, index: str, *, ordered: bool = True, also: set[str] = frozenset()) -> None:
    """Every read of `table` by `fn` goes through `index` (and, if `ordered`, in its order: no sort).

    `also`: indexes PostgreSQL may AND with it in a bitmap scan (other filters' own indexes).
    """
    reads = [(s, a) for s, plan in plans_of(engine, fn) for a in plan if a.table == table]
    assert reads, f"no query read {table}"
    for statement, access in reads:
        used = set(access.index.split("+")) if access.index else set()
        assert index in used and used <= {index, *also}, \
            f"read {table} through {access.index or 'a full scan'}, not {index}:\n{statement}"
        if ordered:
            assert not access.sorted, f"sorted the rows of {index} instead of reading them in order:\n{statement}"


# -- the citizen access report ------------------------------------------------------------------

def test_access_report_reads_the_citizen_index(trail):
    assert_reads(trail, lambda: audit_search.access_report(trail, CITIZEN), "audit_records", "ix_audit_subject_at",
                 ordered=trail.dialect.name == "sqlite")  # PostgreSQL may sort one citizen's few rows: bounded
    window = (START + dt.timedelta(days=30), START + dt.timedelta(days=60))
    assert_reads(trail, lambda: audit_search.access_report(trail, CITIZEN, *window), "audit_records",
                 "ix_audit_subject_at", ordered=trail.dialect.name == "sqlite")
    assert audit_search.access_report(trail, CITIZEN)["summary"]["count"] == RECORDS // 1000


def test_truncated_report_summary_reads_the_citizen_index(trail, monkeypatch):
    monkeypatch.setattr(audit_search, "REPORT_MAX", 5)
    report = audit_search.access_report(trail, CITIZEN)
    assert report["truncated"] and report["summary"]["count"] == RECORDS // 1000 and len(report["accesses"]) == 5
    assert_reads(trail, lambda: audit_search.access_report(trail, CITIZEN), "audit_records", "ix_audit_subject_at",
                 ordered=False)


# -- search, one filter at a time ----------------------------------------------------------------

SEARCHES = {
    "no filter": (Filters(), "ix_audit_at"),
    "time range": (Filters(start=START + dt.timedelta(days=40), end=START + dt.timedelta(days=41)), "ix_audit_at"),
    "client": (Filters(client_id="client-042"), "ix_audit_client_at"),
    "officer": (Filters(officer="officer-042-3"), "ix_audit_officer_at"),
    "service": (Filters(service="service.07.get"), "ix_audit_service_at"),
    "purpose": (Filters(purpose="purpose-03"), "ix_audit_purpose_at"),
    "purpose nobody used": (Filters(purpose="no-such-purpose"), "ix_audit_purpose_at"),
    "outcome": (Filters(outcome="failed"), "ix_audit_outcome_at"),
    "kind": (Filters(kind="admin"), "ix_audit_kind_at"),
    "personal id": (Filters(subject_hash=subject_hash(CITIZEN)), "ix_audit_subject_at"),
    "request id": (Filters(request_id="plan-012345"), "ix_audit_request_id"),
    "client and a day": (Filters(client_id="client-042", start=START + dt.timedelta(days=40),
                                 end=START + dt.timedelta(days=41)), "ix_audit_client_at"),
    "client and outcome": (Filters(client_id="client-042", outcome="refused"), None),
}


@pytest.mark.parametrize("name", list(SEARCHES))
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_search_reads_the_index_of_its_filter(trail, name, order):
    filters, index = SEARCHES[name]
    index = index or filters.index
    assert filters.index == index  # the filter → index table in audit_search agrees
    # SQLite walks the pinned index in order. PostgreSQL reads the same index, in order or, when its
    # statistics say the filter matches few rows (one officer of 2,000 here), all of them and sorts
    # those: both read only matching rows. One request's few records are sorted on both.
    ordered = name != "request id" and trail.dialect.name == "sqlite"
    also = {i for f, i in audit_search.INDEXES if getattr(filters, f)}
    assert_reads(trail, lambda: audit_search.search(trail, filters, 20, order=order), "audit_records", index,
                 ordered=ordered, also=also)
    rows, cursor = audit_search.search(trail, filters, 20, order=order)
    if cursor:  # the next page starts the same index range at the cursor
        assert_reads(trail, lambda: audit_search.search(trail, filters, 20, cursor, order), "audit_records", index,
                     ordered=ordered, also=also)


def test_search_results_match_the_filters(trail):
    """The pinned queries still answer the question: every record matches, newest first."""
    filters = Filters(client_id="client-042", outcome="ok")
    rows, _ = audit_search.search(trail, filters, 500)
    assert rows and all(r["client_id"] == "client-042" and r["outcome"] == "ok" for r in rows)
    assert [(r["at"], r["id"]) for r in rows] == sorted(((r["at"], r["id"]) for r in rows), reverse=True)


# -- one record: lookup, integrity, chain status --------------------------------------------------

def test_record_page_reads_by_key_only(trail, monkeypatch):
    monkeypatch.setattr(audit_search, "COUNT_MAX", RECORDS + 1)  # the chain is counted: its plan is checked too
    record_id = audit_search.search(trail, Filters(request_id="plan-010500"), 1)[0][0]["id"]
    plans = plans_of(trail, lambda: audit_search.get_record(trail, record_id))
    expected = {"audit_records": {"pkey", "uq_audit_chain_seq"}, "audit_seals": {"ix_audit_seals_chain_seq"},
                "audit_bodies": {"ix_audit_bodies_chain_seq"}, "audit_chain_bases": {"pkey", "audit_chain_bases_pkey"},
                "audit_keys": None}
    by_id = [a for s, plan in plans for a in plan if a.table == "audit_records" and a.index == "pkey"]
    assert by_id, "the record itself is not read by its id"
    for statement, plan in plans:
        for access in plan:
            allowed = expected[access.table]
            if allowed is not None:  # audit_keys: a handful of rows, read whole
                assert access.index and set(access.index.split("+")) <= allowed, f"{access} for:\n{statement}"
    record = audit_search.get_record(trail, record_id)
    assert record["integrity"]["status"] == "sealed" and record["chain_status"]["records"] == RECORDS
    assert record["chain_status"]["gaps"] == 0


def test_long_chains_are_not_counted_on_the_record_page(trail, monkeypatch):
    """A chain lives as long as its process; counting it would read its whole index range."""
    record_id = audit_search.search(trail, Filters(request_id="plan-010500"), 1)[0][0]["id"]
    monkeypatch.setattr(audit_search, "COUNT_MAX", 1000)
    with captured(trail) as seen:
        status = audit_search.get_record(trail, record_id)["chain_status"]
    assert status["records"] is None and status["gaps"] is None
    assert (status["first_seq"], status["last_seq"]) == (1, RECORDS)
    assert not [s for s, _ in seen if "count(" in s.lower() and "audit_records" in s]
