"""Tamper evidence of the audit trail: seals, the verifier, export, retention, syslog.

Each test writes its own chain into a fresh database (SQLite, or PostgreSQL when
LGSP_TEST_DATABASE_URL is set) and then tampers with it the way an attacker with
database access would, directly in SQL.
"""
from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys

import orjson
import pytest
from sqlalchemy import select, text, update

from lgsp.audit import seals
from lgsp.audit.export import export_jsonl, retain
from lgsp.audit.verify import verify_database, verify_file
from lgsp.audit.writer import AuditWriter, record_hash
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records, audit_seals


@pytest.fixture
def engine(fresh_db_url):
    return engine_for(fresh_db_url)


def record(i: int, at: dt.datetime | None = None) -> dict:
    return {"at": at or dt.datetime.now(dt.timezone.utc), "kind": "exchange", "request_id": f"req-{i}",
            "door": "rest", "client_id": "clerk", "officer": "officer-1", "purpose": "administrative-procedure",
            "service": "population.citizen.get", "outcome": "ok", "status": 200, "fields": ["full_name"],
            "latency_ms": 1.5, "subject_hash": "ab" * 32}


def write_chain(engine, n: int = 30, *, seal_every: int = 10, ages: list[dt.datetime] | None = None) -> str:
    writer = AuditWriter(engine, batch_max=1, seal_every=seal_every)
    for i in range(n):
        writer.commit_sync(record(i, ages[i] if ages else None))
    writer.close()
    return writer.chain


def rows_of(engine, chain: str) -> list[dict]:
    with engine.connect() as conn:
        return [r._asdict() for r in conn.execute(
            select(audit_records).where(audit_records.c.chain == chain).order_by(audit_records.c.seq))]


def kinds(report) -> set[str]:
    return {f.kind for f in report.findings}


def test_untouched_chain_verifies_with_start_interval_and_shutdown_seals(engine):
    chain = write_chain(engine)
    report = verify_database(engine)
    assert report.ok, report.findings
    assert report.records == 30 and report.unsealed == {}
    with engine.connect() as conn:
        reasons = [r.reason for r in conn.execute(select(audit_seals).where(audit_seals.c.chain == chain)
                                                   .order_by(audit_seals.c.seq))]
    assert reasons[0] == "start" and reasons[-1] == "shutdown" and "interval" in reasons


def test_edit_is_caught(engine):
    chain = write_chain(engine)
    target = rows_of(engine, chain)[4]
    with engine.begin() as conn:
        conn.execute(update(audit_records).where(audit_records.c.id == target["id"]).values(purpose="curiosity"))
    report = verify_database(engine)
    assert ("edited", (target["id"],)) in [(f.kind, f.record_ids) for f in report.findings]


def test_edit_with_recomputed_hashes_is_caught_by_the_seal(engine):
    chain = write_chain(engine)
    rows = rows_of(engine, chain)
    prev = rows[3]["hash"]
    with engine.begin() as conn:  # an attacker who knows the hash function rewrites the rest of the chain
        for row in rows[4:]:
            row = dict(row, prev_hash=prev, purpose="curiosity" if row["seq"] == 5 else row["purpose"])
            row["hash"] = prev = record_hash(row)
            conn.execute(update(audit_records).where(audit_records.c.id == row["id"])
                         .values(purpose=row["purpose"], prev_hash=row["prev_hash"], hash=row["hash"]))
    report = verify_database(engine)
    assert "seal_mismatch" in kinds(report)
    assert not report.ok


def test_delete_is_caught(engine):
    chain = write_chain(engine)
    rows = rows_of(engine, chain)
    with engine.begin() as conn:
        conn.execute(audit_records.delete().where(audit_records.c.id == rows[6]["id"]))
    report = verify_database(engine)
    deleted = [f for f in report.findings if f.kind == "deleted"]
    assert deleted and set(deleted[0].record_ids) == {rows[5]["id"], rows[7]["id"]}


def test_insert_after_the_closing_seal_is_caught(engine):
    chain = write_chain(engine)
    last = rows_of(engine, chain)[-1]
    forged = dict(record(99), chain=chain, seq=last["seq"] + 1, prev_hash=last["hash"])
    forged["hash"] = record_hash(forged)  # well-formed and correctly linked: only the seal gives it away
    with engine.begin() as conn:
        new_id = conn.execute(audit_records.insert().values(**forged)).inserted_primary_key[0]
    report = verify_database(engine)
    assert ("inserted", (new_id,)) in [(f.kind, f.record_ids) for f in report.findings]


def test_insert_in_the_middle_is_caught(engine):
    chain = write_chain(engine)
    rows = rows_of(engine, chain)
    with engine.begin() as conn:  # make room at seq 8, then slip a record in
        conn.execute(update(audit_records).where(audit_records.c.chain == chain, audit_records.c.seq >= 8)
                     .values(seq=audit_records.c.seq + 1000))
        conn.execute(update(audit_records).where(audit_records.c.chain == chain, audit_records.c.seq >= 1000)
                     .values(seq=audit_records.c.seq - 999))
        forged = dict(record(77), chain=chain, seq=8, prev_hash=rows[6]["hash"])
        forged["hash"] = record_hash(forged)
        conn.execute(audit_records.insert().values(**forged))
    report = verify_database(engine)
    assert {"inserted", "renumbered"} <= kinds(report), report.findings


def test_reorder_is_caught(engine):
    chain = write_chain(engine)
    a, b = rows_of(engine, chain)[10:12]
    with engine.begin() as conn:
        conn.execute(update(audit_records).where(audit_records.c.id == a["id"]).values(seq=-1))
        conn.execute(update(audit_records).where(audit_records.c.id == b["id"]).values(seq=a["seq"]))
        conn.execute(update(audit_records).where(audit_records.c.id == a["id"]).values(seq=b["seq"]))
    report = verify_database(engine)
    assert "reordered" in kinds(report)
    assert {a["id"], b["id"]} <= report.flagged_ids()


def test_truncated_tail_is_caught(engine):
    chain = write_chain(engine)
    with engine.begin() as conn:
        conn.execute(audit_records.delete().where(audit_records.c.chain == chain, audit_records.c.seq > 24))
    assert "truncated" in kinds(verify_database(engine))


def test_forged_seal_is_caught(engine):
    chain = write_chain(engine)
    rows = rows_of(engine, chain)
    with engine.begin() as conn:
        conn.execute(update(audit_seals).where(audit_seals.c.chain == chain, audit_seals.c.seq == 10)
                     .values(head_hash=rows[0]["hash"]))
    assert "forged_seal" in kinds(verify_database(engine))


def test_old_seals_verify_after_key_rotation(engine):
    write_chain(engine)
    seals.create_key(engine)
    write_chain(engine)
    report = verify_database(engine)
    assert report.ok and report.chains == 2
    with engine.connect() as conn:
        assert len({r.kid for r in conn.execute(select(audit_seals.c.kid))}) == 2


def test_cli_verify_exit_codes(engine, lgsp_env):
    env = dict(os.environ, LGSP_DATABASE_URL=str(engine.url.render_as_string(hide_password=False)))
    chain = write_chain(engine)
    ok = subprocess.run([sys.executable, "-m", "lgsp.cli", "audit", "verify"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "0 findings" in ok.stdout
    with engine.begin() as conn:
        conn.execute(update(audit_records).where(audit_records.c.chain == chain, audit_records.c.seq == 3)
                     .values(outcome="refused"))
    bad = subprocess.run([sys.executable, "-m", "lgsp.cli", "audit", "verify"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "edited" in bad.stdout


def test_export_verifies_offline_and_tampering_with_the_file_is_caught(engine, tmp_path):
    write_chain(engine, 25)
    path = tmp_path / "export.jsonl"
    with open(path, "wb") as out:
        counts = export_jsonl(engine, None, None, out)
    assert counts["records"] == 25 and counts["seals"] >= 2
    assert verify_file(path).ok
    lines = path.read_bytes().splitlines()
    doctored = []
    for line in lines:
        item = orjson.loads(line)
        if item["type"] == "record" and item["seq"] == 12:
            item["officer"] = "someone-else"
        doctored.append(orjson.dumps(item))
    path.write_bytes(b"\n".join(doctored) + b"\n")
    assert "edited" in kinds(verify_file(path))


def test_partial_export_of_a_time_range_verifies(engine, tmp_path):
    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    write_chain(engine, 30, ages=[base + dt.timedelta(hours=i) for i in range(30)])
    path = tmp_path / "range.jsonl"
    with open(path, "wb") as out:
        counts = export_jsonl(engine, base + dt.timedelta(hours=5), base + dt.timedelta(hours=15), out)
    assert counts["records"] == 10
    assert verify_file(path).ok


def test_retention_archives_then_removes_and_the_rest_still_verifies(engine, tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    ages = [now - dt.timedelta(days=400 - i) for i in range(20)] + [now - dt.timedelta(days=1)] * 10
    write_chain(engine, 30, ages=ages)
    result = retain(engine, now - dt.timedelta(days=365), tmp_path / "archive")
    assert result["records"] == 20
    assert verify_file(result["archive"]).ok
    report = verify_database(engine)
    assert report.ok, report.findings
    assert report.records == 10
    with engine.connect() as conn:  # moving the base to hide a deletion is caught
        conn.execute(text("SELECT 1"))
    with engine.begin() as conn:
        first = conn.execute(select(audit_records.c.id).order_by(audit_records.c.seq).limit(1)).scalar()
        conn.execute(audit_records.delete().where(audit_records.c.id == first))
    assert not verify_database(engine).ok


def test_records_are_forwarded_to_syslog_as_rfc5424(engine, monkeypatch):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    monkeypatch.setenv("LGSP_AUDIT_SYSLOG", f"udp://127.0.0.1:{sock.getsockname()[1]}")
    chain = write_chain(engine, 3)
    received = [sock.recv(65536).partition(b" - ") for _ in range(5)]  # 3 records, the start and shutdown seals
    sock.close()
    messages = [(header, body) for header, _, body in received if header.endswith(b"exchange")]
    for i, (header, body) in enumerate(messages):
        assert header.startswith(b"<110>1 ") and b" lgsp " in header
        data = orjson.loads(body)
        assert data["request_id"] == f"req-{i}" and data["hash"] and data["seq"] == i + 1
    assert len(messages) == 3
    sealed = [orjson.loads(body) for header, _, body in received if header.endswith(b" seal")]
    assert [(s["chain"], s["seq"], s["reason"]) for s in sealed] == [(chain, 0, "start"), (chain, 3, "shutdown")]
    assert all(s["signature"] and s["head_hash"] for s in sealed)
