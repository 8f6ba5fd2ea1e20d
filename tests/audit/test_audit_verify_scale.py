"""The verifier at scale: segments in parallel processes, incremental verify from sealed checkpoints.

Chains are written through the real group-commit writer into a fresh database
(SQLite, or PostgreSQL when LGSP_TEST_DATABASE_URL is set), then tampered with
directly in SQL, as an attacker with database access would. Segments are made
small (BLOCK seqs) so that a few thousand records make a chain of several
segments, and tampering is placed on the segment boundaries.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
from sqlalchemy import select, update

from lgsp.audit import checkpoint as audit_checkpoint
from lgsp.audit.verify import verify_database
from lgsp.audit.verify_chain import BLOCK
from lgsp.audit.writer import AuditWriter, record_hash
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records, audit_seals

SEGMENT = 2 * BLOCK  # 4,096 seqs: a 10,000-record chain is three segments


@pytest.fixture
def engine(fresh_db_url):
    return engine_for(fresh_db_url)


def record(i: int) -> dict:
    return {"at": dt.datetime.now(dt.timezone.utc), "kind": "exchange", "request_id": f"req-{i}", "door": "rest",
            "client_id": f"clerk-{i % 7}", "officer": f"officer-{i % 13}", "purpose": "administrative-procedure",
            "service": "population.citizen.get", "outcome": "ok", "status": 200, "fields": ["full_name", "birth_date"],
            "latency_ms": round(1.5 + i / 1000, 3), "subject_hash": f"{i:064x}"}


def write(writer: AuditWriter, n: int, first: int = 0) -> None:
    futures = [writer.submit(record(first + i)) for i in range(n)]
    for f in futures:
        f.result(60)


def write_chain(engine, n: int, *, seal_every: int = 500) -> str:
    writer = AuditWriter(engine, batch_max=512, seal_every=seal_every)
    write(writer, n)
    writer.close()
    return writer.chain


def rows_at(engine, chain: str, *seqs: int) -> list[dict]:
    with engine.connect() as conn:
        return [r._asdict() for r in conn.execute(select(audit_records).where(
            audit_records.c.chain == chain, audit_records.c.seq.in_(seqs)).order_by(audit_records.c.seq))]


def set_seq(conn, record_id: int, seq: int) -> None:
    conn.execute(update(audit_records).where(audit_records.c.id == record_id).values(seq=seq))


def rewrite_from(engine, chain: str, first_seq: int, last_seq: int) -> None:
    """Edit record `first_seq` and recompute every hash up to `last_seq` (an attacker who knows the hash)."""
    rows = sorted(rows_at(engine, chain, *range(first_seq - 1, last_seq + 1)), key=lambda r: r["seq"])
    prev = rows[0]["hash"]
    with engine.begin() as conn:
        for row in rows[1:]:
            row = dict(row, prev_hash=prev, purpose="curiosity" if row["seq"] == first_seq else row["purpose"])
            row["hash"] = prev = record_hash(row)
            conn.execute(update(audit_records).where(audit_records.c.id == row["id"]).values(
                purpose=row["purpose"], prev_hash=row["prev_hash"], hash=row["hash"]))


def summary(report) -> list[tuple]:
    return [(f.kind, f.chain, f.record_ids, f.detail) for f in report.findings]


def test_parallel_verify_finds_exactly_what_serial_verify_finds_on_a_tampered_trail(engine):
    long_chain = write_chain(engine, 10_000)
    short_chain = write_chain(engine, 300, seal_every=100)
    seqs = (2000, 2001, 2003, 4095, 4096, 4097, 6000, 8191, 8192, 8193, 9000)
    a = {r["seq"]: r for r in rows_at(engine, long_chain, *seqs)}
    with engine.begin() as conn:
        # an edit and a deletion either side of the segment boundary at 4,096
        conn.execute(update(audit_records).where(audit_records.c.id == a[4095]["id"]).values(officer="someone-else"))
        conn.execute(audit_records.delete().where(audit_records.c.id == a[4097]["id"]))
        # two records swapped across the boundary at 8,192
        set_seq(conn, a[8191]["id"], -1)
        set_seq(conn, a[8192]["id"], 8191)
        set_seq(conn, a[8191]["id"], 8192)
        # a record replaced by a forged one that claims seq 2,001's predecessor (a fork), and a forged seal
        conn.execute(audit_records.delete().where(audit_records.c.id == a[2003]["id"]))
        forged = dict(record(99_999), chain=long_chain, seq=2003, prev_hash=a[2000]["hash"])
        forged["hash"] = record_hash(forged)
        conn.execute(audit_records.insert().values(**forged))
        sealed = conn.execute(select(audit_seals.c.id).where(
            audit_seals.c.chain == long_chain, audit_seals.c.seq > 5000).order_by(audit_seals.c.seq).limit(1)).scalar()
        conn.execute(update(audit_seals).where(audit_seals.c.id == sealed).values(head_hash=a[9000]["hash"]))
        # the short chain loses its tail under a seal
        conn.execute(audit_records.delete().where(audit_records.c.chain == short_chain, audit_records.c.seq > 250))
    rewrite_from(engine, long_chain, 9000, 9400)  # recomputed hashes: the seals and 9,401's link give it away

    whole = verify_database(engine, jobs=1, segment=1 << 40)    # every chain in one piece
    serial = verify_database(engine, jobs=1, segment=SEGMENT)   # in segments, one process
    parallel = verify_database(engine, jobs=2, segment=SEGMENT)  # in segments, two worker processes
    assert summary(parallel) == summary(serial) == summary(whole)
    assert (parallel.records, parallel.seals, parallel.chains) == (whole.records, whole.seals, whole.chains)
    assert {"edited", "deleted", "reordered", "inserted", "forged_seal", "seal_mismatch", "truncated"} <= {
        f.kind for f in parallel.findings}, parallel.findings
    flagged = parallel.flagged_ids()
    assert {a[4095]["id"], a[8191]["id"], a[8192]["id"]} <= flagged


def test_a_long_single_chain_is_split_into_segments_and_never_held_whole(engine):
    from lgsp.audit.verify_scan import run_task

    chain = write_chain(engine, 10_000)
    report = verify_database(engine, jobs=2, segment=SEGMENT)
    assert report.ok, report.findings[:5]
    assert report.records == 10_000 and report.chains == 1 and report.unsealed == {}
    assert report.heads[chain][0] == 10_000

    from lgsp.audit import seals
    from lgsp.audit.verify import _plan_chain, _url_of

    tasks: list = []
    keys = seals.public_keys(engine)
    with engine.connect() as conn:
        _plan_chain(conn, chain, None, keys, _url_of(engine), tasks, SEGMENT, None)
    assert [(t.lo, t.hi) for t in tasks] == [(None, 4096), (4096, 8192), (8192, None)]
    results = [run_task(t, engine) for t in tasks]
    assert [r.records for r in results] == [4095, 4096, 1809]
    assert max(r.held for r in results) <= 3 * BLOCK  # three blocks, not the chain


def test_incremental_verify_catches_tampering_after_the_checkpoint(engine):
    writer = AuditWriter(engine, batch_max=512, seal_every=500)
    write(writer, 3000)
    old_chain = write_chain(engine, 1200)
    first = verify_database(engine)
    assert first.ok and first.mode == "full"
    assert audit_checkpoint.record(engine, first)

    write(writer, 1000, first=3000)  # the live chain goes on after the checkpoint
    writer.close()
    new_chain = write_chain(engine, 400)
    clean = verify_database(engine, incremental=True)
    assert clean.ok, clean.findings
    assert clean.mode == "incremental" and clean.checkpoint["chains"] == 2
    # what follows the checkpoint's heads, and the checkpoint's own chain (one record)
    assert clean.records == (4000 - first.heads[writer.chain][0]) + 400 + 1

    after = rows_at(engine, writer.chain, 3500)[0]
    new = rows_at(engine, new_chain, 10)[0]
    with engine.begin() as conn:
        conn.execute(update(audit_records).where(audit_records.c.id == after["id"]).values(outcome="refused"))
        conn.execute(audit_records.delete().where(audit_records.c.id == new["id"]))
    caught = verify_database(engine, incremental=True, jobs=2)
    assert caught.checkpoint is not None
    assert ("edited", (after["id"],)) in [(f.kind, f.record_ids) for f in caught.findings]
    assert "deleted" in {f.kind for f in caught.findings if f.chain == new_chain}

    # What incremental verify does not re-check: an edit before the checkpoint that leaves its head alone.
    before = rows_at(engine, old_chain, 100)[0]
    with engine.begin() as conn:
        conn.execute(update(audit_records).where(audit_records.c.id == before["id"]).values(outcome="refused"))
    assert before["id"] not in verify_database(engine, incremental=True).flagged_ids()
    assert ("edited", (before["id"],)) in [(f.kind, f.record_ids) for f in verify_database(engine).findings]


def test_incremental_verify_catches_a_rewrite_of_the_checkpoint_head(engine):
    chain = write_chain(engine, 2000)
    first = verify_database(engine)
    assert first.heads[chain][0] == 2000
    audit_checkpoint.record(engine, first)
    assert verify_database(engine, incremental=True).ok

    rewrite_from(engine, chain, 1500, 2000)  # history rewritten with recomputed hashes, through the head
    with engine.begin() as conn:  # and the seals that would give it away removed
        conn.execute(audit_seals.delete().where(audit_seals.c.chain == chain, audit_seals.c.seq >= 1500))
    report = verify_database(engine, incremental=True)
    assert report.checkpoint is not None
    head = rows_at(engine, chain, 2000)[0]
    assert ("seal_mismatch", chain, (head["id"],)) in [(f.kind, f.chain, f.record_ids) for f in report.findings]


def test_a_tampered_checkpoint_is_not_used(engine):
    chain = write_chain(engine, 600)
    first = verify_database(engine)
    checkpoint_chain, seq = audit_checkpoint.record(engine, first)
    cp = rows_at(engine, checkpoint_chain, seq)[0]
    detail = dict(cp["detail"])
    detail["after"] = dict(detail["after"], chains={chain: [600, "0" * 64, None]})
    with engine.begin() as conn:  # an attacker moves the checkpoint to hide what came before
        conn.execute(update(audit_records).where(audit_records.c.id == cp["id"]).values(detail=detail))
    report = verify_database(engine, incremental=True)
    assert report.checkpoint is None and report.mode == "full"  # back to a full verify
    assert ("edited", (cp["id"],)) in [(f.kind, f.record_ids) for f in report.findings]


def test_cli_incremental_verify_with_jobs_and_progress(engine, lgsp_env):
    env = dict(os.environ, LGSP_DATABASE_URL=str(engine.url.render_as_string(hide_password=False)))
    chain = write_chain(engine, 2500)

    def verify(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lgsp.cli", "audit", "verify", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    full = verify("--jobs", "2")
    assert full.returncode == 0 and "0 findings" in full.stdout, full.stderr
    assert "records/s" in full.stderr and "1/1 chains" in full.stderr and "checkpoint recorded" in full.stderr
    incremental = verify("--incremental")
    assert incremental.returncode == 0 and "incremental: from the checkpoint" in incremental.stderr
    target = rows_at(engine, chain, 2500)[0]
    with engine.begin() as conn:
        conn.execute(update(audit_records).where(audit_records.c.id == target["id"]).values(officer="x"))
    bad = verify("--incremental")
    assert bad.returncode == 1 and "edited" in bad.stdout and "checkpoint recorded" not in bad.stderr


def test_incremental_verify_after_retention_moved_a_chain_past_its_checkpoint(engine, tmp_path):
    from lgsp.audit.export import retain

    now = dt.datetime.now(dt.timezone.utc)
    writer = AuditWriter(engine, batch_max=1, seal_every=10)
    for i in range(30):
        writer.commit_sync(dict(record(i), at=now - dt.timedelta(days=400 - i)))
    writer.close()
    first = verify_database(engine)
    assert first.heads[writer.chain][0] == 30
    audit_checkpoint.record(engine, first)
    assert retain(engine, now - dt.timedelta(days=365), tmp_path / "archive")["records"] == 30
    report = verify_database(engine, incremental=True)
    assert report.ok and report.checkpoint is not None, report.findings
    with engine.begin() as conn:  # moving the base without its retention seal is still caught
        conn.execute(audit_seals.delete().where(audit_seals.c.chain == writer.chain,
                                                audit_seals.c.reason == "retention"))
    assert "deleted" in {f.kind for f in verify_database(engine, incremental=True).findings}


def test_incremental_verify_finds_what_full_verify_finds_after_the_checkpoint(engine):
    writer = AuditWriter(engine, batch_max=512, seal_every=500)
    write(writer, 2000)
    first = verify_database(engine)
    audit_checkpoint.record(engine, first)
    assert first.heads[writer.chain][0] <= 2000
    write(writer, 8000, first=2000)
    writer.close()
    closed = write_chain(engine, 300, seal_every=100)
    r = {x["seq"]: x for x in rows_at(engine, writer.chain, 6000, 6500, 7000, 7001, 8000, 8001)}
    last = rows_at(engine, closed, 300)[0]
    with engine.begin() as conn:
        conn.execute(update(audit_records).where(audit_records.c.id == r[6000]["id"]).values(status=500))
        conn.execute(audit_records.delete().where(audit_records.c.id == r[6500]["id"]))
        set_seq(conn, r[7000]["id"], -1)
        set_seq(conn, r[7001]["id"], 7000)
        set_seq(conn, r[7000]["id"], 7001)
        seal_ids = conn.execute(select(audit_seals.c.id).where(
            audit_seals.c.chain == writer.chain, audit_seals.c.seq > 8000).order_by(audit_seals.c.seq)).scalars().all()
        conn.execute(update(audit_seals).where(audit_seals.c.id == seal_ids[0]).values(kid="seal-unknown"))
        conn.execute(update(audit_seals).where(audit_seals.c.id == seal_ids[1]).values(head_hash=r[8000]["hash"]))
        conn.execute(audit_records.delete().where(audit_records.c.chain == writer.chain, audit_records.c.seq > 9900))
        forged = dict(record(77), chain=closed, seq=301, prev_hash=last["hash"])
        forged["hash"] = record_hash(forged)
        conn.execute(audit_records.insert().values(**forged))
    full = verify_database(engine, jobs=1, segment=SEGMENT)
    incremental = verify_database(engine, incremental=True, jobs=2, segment=SEGMENT)
    assert incremental.checkpoint is not None
    assert summary(incremental) == summary(full)
    # The renamed key: with the master secret at hand its name derives a key, under which the seal is forged.
    assert {"edited", "deleted", "reordered", "renumbered", "forged_seal", "truncated",
            "inserted"} <= {f.kind for f in incremental.findings}
