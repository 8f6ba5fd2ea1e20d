"""`lgsp backup` and `lgsp restore`: a copy restored into an empty database verifies in full
(every chain, every seal), and the master secret is part of the procedure: a restore under
another secret is refused before anything is written."""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import stat

import pytest
from helpers import lgsp_cli, postgres_database
from sqlalchemy import func, select

from lgsp import keys
from lgsp.audit import seals
from lgsp.audit.writer import AuditWriter, close_writers
from lgsp.control.admin import Admin
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records, clients


@pytest.fixture
def empty_db_url(lgsp_env, tmp_path):
    """A database with nothing in it, the restore's target."""
    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    if not pg:
        yield f"sqlite:///{tmp_path / 'restored.db'}"
        return
    url, drop = postgres_database(pg)
    yield url
    engine_for(url).dispose()
    drop()


@pytest.fixture
def populated_db_url(fresh_db_url):
    engine = engine_for(fresh_db_url)
    keys.ensure_key(engine)
    seals.ensure_key(engine)
    admin = Admin(engine, "tests")
    admin.register_spec_services()
    admin.create_client("backup-client", "Sector system", "000.00.31.H30")
    admin.add_grant("backup-client", "population.citizen.get", ["full_name"], ["administrative-procedure"])
    writer = AuditWriter(engine, seal_every=10)
    now = dt.datetime.now(dt.timezone.utc)
    for i in range(25):
        writer.commit_sync({"at": now, "kind": "exchange", "request_id": f"bk-{i}", "door": "rest",
                            "client_id": "backup-client", "service": "population.citizen.get", "outcome": "ok",
                            "status": 200, "latency_ms": 3.0})
    writer.close()
    close_writers()  # the admin actions' chain gets its shutdown seal
    return fresh_db_url


def count(url: str, table) -> int:
    with engine_for(url).connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_a_backup_restores_into_an_empty_database_and_verifies(populated_db_url, empty_db_url, tmp_path):
    dump = tmp_path / "backups" / "lgsp.dump"
    run = lgsp_cli({"LGSP_DATABASE_URL": populated_db_url}, "backup", str(dump))
    assert "master secret fingerprint" in run.stdout and "LGSP_SECRET_KEY" in run.stdout
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    meta = json.loads((tmp_path / "backups" / "lgsp.dump.json").read_text())
    assert meta["format"] == "lgsp-backup/1" and meta["schema"]
    assert os.environ["LGSP_SECRET_KEY"] not in dump.with_name("lgsp.dump.json").read_text()

    run = lgsp_cli({"LGSP_DATABASE_URL": empty_db_url}, "restore", str(dump), check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 findings" in run.stdout
    assert count(empty_db_url, audit_records) == count(populated_db_url, audit_records) >= 25
    assert count(empty_db_url, clients) == 1

    verify = lgsp_cli({"LGSP_DATABASE_URL": empty_db_url}, "audit", "verify", "--json", check=False)
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and report["ok"] and report["seals"] >= 3, report
    assert not report["unsealed"], report  # every chain was closed before the backup


def test_a_restore_under_another_master_secret_is_refused(populated_db_url, empty_db_url, tmp_path):
    dump = tmp_path / "lgsp.dump"
    lgsp_cli({"LGSP_DATABASE_URL": populated_db_url}, "backup", str(dump))
    run = lgsp_cli({"LGSP_DATABASE_URL": empty_db_url, "LGSP_SECRET_KEY": secrets.token_urlsafe(32)},
                   "restore", str(dump), check=False)
    assert run.returncode == 1
    assert "not the master secret this backup's keys were made with" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    with engine_for(empty_db_url).connect() as conn:
        assert not conn.dialect.has_table(conn, "audit_records")  # nothing was written


def test_a_restore_into_a_database_in_use_is_refused(populated_db_url, tmp_path):
    dump = tmp_path / "lgsp.dump"
    lgsp_cli({"LGSP_DATABASE_URL": populated_db_url}, "backup", str(dump))
    before = count(populated_db_url, audit_records)
    run = lgsp_cli({"LGSP_DATABASE_URL": populated_db_url}, "restore", str(dump), check=False)
    assert run.returncode == 1 and "not empty" in run.stderr, run.stderr
    assert count(populated_db_url, audit_records) == before
