"""The audit trail at province scale: migration 0005 keeps every record and chain;
on PostgreSQL monthly partitions are made ahead, catch strays in a default
partition, and retention drops whole archived months; export and retention
report progress. (Query plans: test_audit_plans.py; figures: benchmarks/access_report.py.)
"""
from __future__ import annotations

import datetime as dt
import io
import os

import pytest
from helpers import lgsp_cli, postgres_database
from sqlalchemy import func, select, text, update

from lgsp.audit import export as audit_export
from lgsp.audit.export import export_jsonl, retain
from lgsp.audit.verify import verify_database, verify_file
from lgsp.audit.writer import AuditWriter
from lgsp.storage import engine_for, partitions, upgrade
from lgsp.storage.schema import audit_records

UTC = dt.timezone.utc
ON_POSTGRES = bool(os.environ.get("LGSP_TEST_DATABASE_URL"))
postgres_only = pytest.mark.skipif(not ON_POSTGRES, reason="partitions are PostgreSQL's (SQLite keeps one table)")


def record(i: int, at: dt.datetime) -> dict:
    return {"at": at, "kind": "exchange", "request_id": f"scale-{i}", "door": "rest", "client_id": "clerk",
            "officer": "officer-1", "purpose": "administrative-procedure", "service": "population.citizen.get",
            "outcome": "ok", "status": 200, "fields": ["full_name"], "latency_ms": 1.5, "subject_hash": "cd" * 32}


def write_chain(engine, times: list[dt.datetime], seal_every: int = 5) -> str:
    writer = AuditWriter(engine, batch_max=1, seal_every=seal_every)
    for i, at in enumerate(times):
        writer.commit_sync(record(i, at))
    writer.close()
    return writer.chain


@pytest.fixture
def database_url(lgsp_env, tmp_path):
    """An empty database of its own, not migrated yet."""
    drop = None
    if ON_POSTGRES:
        url, drop = postgres_database(os.environ["LGSP_TEST_DATABASE_URL"])
    else:
        url = f"sqlite:///{tmp_path / 'scale.db'}"
    yield url
    from lgsp.audit.writer import close_writers

    close_writers()
    engine_for(url).dispose()
    if drop:
        drop()


def snapshot(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(audit_records.c.id, audit_records.c.chain, audit_records.c.seq,
                                                      audit_records.c.hash, audit_records.c.at)
                                               .order_by(audit_records.c.id))]


def verify_cli(url: str):
    return lgsp_cli({"LGSP_DATABASE_URL": url}, "audit", "verify", check=False)


def test_migration_0005_keeps_every_record_and_chain(database_url):
    upgrade(database_url, "0003")
    engine = engine_for(database_url)
    now = dt.datetime.now(UTC)
    old = [now - dt.timedelta(days=70 - i) for i in range(12)]  # three months back to now
    write_chain(engine, old)
    write_chain(engine, [now] * 7)
    before = snapshot(engine)
    assert verify_database(engine).ok  # (the CLI refuses a schema behind its own: it says to upgrade first)

    upgrade(database_url)
    assert snapshot(engine) == before  # same ids, same hashes: nothing re-chained
    result = verify_cli(database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(before)} records" in result.stdout and " 0 findings" in result.stdout
    with engine.connect() as conn:
        assert partitions.is_partitioned(conn) == ON_POSTGRES
        if ON_POSTGRES:
            have = partitions.existing(conn)
            assert partitions.DEFAULT in have
            for at in (old[0], now, now + dt.timedelta(days=62)):  # the old records' month, this one, ahead
                assert partitions.Month.of(at).name in have
            assert conn.execute(text(f"SELECT count(*) FROM {partitions.Month.of(old[0]).name}")).scalar() > 0
    write_chain(engine, [dt.datetime.now(UTC)] * 3)  # the writer goes on after the migration
    assert verify_database(engine).ok


def test_migration_0005_downgrade_keeps_records_too(database_url):
    upgrade(database_url)
    engine = engine_for(database_url)
    write_chain(engine, [dt.datetime.now(UTC) - dt.timedelta(days=40), dt.datetime.now(UTC)])
    before = snapshot(engine)
    upgrade_to = __import__("lgsp.storage.db", fromlist=["MIGRATIONS"])
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(upgrade_to.MIGRATIONS))
    cfg.attributes["engine"] = engine
    command.downgrade(cfg, "0003")
    assert snapshot(engine) == before and verify_database(engine).ok
    upgrade(database_url)
    assert snapshot(engine) == before and verify_database(engine).ok


@postgres_only
def test_months_ahead_and_the_default_partition(fresh_db_url):
    engine = engine_for(fresh_db_url)
    now = dt.datetime.now(UTC)
    partitions.ensure_months(engine)
    with engine.connect() as conn:
        have = partitions.existing(conn)
    month = partitions.Month.of(now)
    for _ in range(partitions.MONTHS_AHEAD + 1):  # this month and the next three
        assert month.name in have
        month = partitions.Month.of(month.end)
    far = dt.datetime(2031, 5, 17, tzinfo=UTC)  # no partition for it: the default one takes it, the insert never fails
    chain = write_chain(engine, [now, far, far])
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {partitions.DEFAULT}")).scalar() == 2
    assert partitions.ensure_months(engine, far, far) == ["audit_records_y2031m05"]
    with engine.connect() as conn:  # made later, the month takes its records out of the default partition
        assert conn.execute(text(f"SELECT count(*) FROM {partitions.DEFAULT}")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM audit_records_y2031m05")).scalar() == 2
        assert conn.execute(select(func.count()).where(audit_records.c.chain == chain)).scalar() == 3
    assert verify_database(engine).ok


@postgres_only
def test_retention_drops_whole_archived_months(fresh_db_url, tmp_path):
    engine = engine_for(fresh_db_url)
    jan, feb, mar = (dt.datetime(2024, m, 10, tzinfo=UTC) for m in (1, 2, 3))
    partitions.ensure_months(engine, jan, mar)
    recent = dt.datetime.now(UTC)
    # March holds a record stamped before the cut-off but written after one stamped after it
    # (a slow exchange): it must stay, so March's partition cannot go whole.
    times = [jan] * 6 + [feb] * 6 + [mar, dt.datetime(2024, 3, 20, tzinfo=UTC), mar] + [recent] * 3
    chain = write_chain(engine, times)
    cutoff = dt.datetime(2024, 3, 15, tzinfo=UTC)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(audit_records)).scalar()
    result = retain(engine, cutoff, tmp_path / "archive")
    assert result["records"] == 13  # Jan, Feb, the first March record
    assert result["partitions_dropped"] == ["audit_records_y2024m01", "audit_records_y2024m02"]
    with engine.connect() as conn:
        have = partitions.existing(conn)
        kept = conn.execute(select(audit_records.c.seq).where(audit_records.c.chain == chain)
                            .order_by(audit_records.c.seq)).scalars().all()
    assert "audit_records_y2024m01" not in have and "audit_records_y2024m03" in have
    assert kept == list(range(14, 19)) and total - len(kept) == 13
    assert verify_file(result["archive"]).ok
    report = verify_database(engine)
    assert report.ok, report.findings
    with engine.begin() as conn:  # and moving the base, or deleting past it, is still caught
        conn.execute(update(audit_records).where(audit_records.c.chain == chain, audit_records.c.seq == 14)
                     .values(officer="someone-else"))
    assert not verify_database(engine).ok


def test_export_and_retention_report_progress(fresh_db_url, tmp_path, monkeypatch):
    engine = engine_for(fresh_db_url)
    old = dt.datetime.now(UTC) - dt.timedelta(days=400)
    write_chain(engine, [old] * 23 + [dt.datetime.now(UTC)] * 2, seal_every=10)
    monkeypatch.setattr(audit_export, "PROGRESS_EVERY", 10)
    told: list[int] = []
    counts = export_jsonl(engine, None, None, io.BytesIO(), progress=told.append)
    assert counts["records"] == 25 and told == [10, 20]
    told.clear()
    result = retain(engine, dt.datetime.now(UTC) - dt.timedelta(days=365), tmp_path / "archive", progress=told.append)
    assert result["records"] == 23 and told == [10, 20]
    assert verify_database(engine).ok and verify_file(result["archive"]).ok


def test_export_of_a_period_reads_only_that_period(fresh_db_url):
    engine = engine_for(fresh_db_url)
    base = dt.datetime(2026, 1, 1, tzinfo=UTC)
    write_chain(engine, [base + dt.timedelta(days=i) for i in range(20)])
    out = io.BytesIO()
    counts = export_jsonl(engine, base + dt.timedelta(days=5), base + dt.timedelta(days=9), out)
    assert counts["records"] == 4
    lines = [line for line in out.getvalue().splitlines() if b'"type":"record"' in line]
    assert len(lines) == 4
