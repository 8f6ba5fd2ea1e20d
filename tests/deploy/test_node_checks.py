"""What a node checks before it joins the others on a shared database, and one fix
that several busy nodes brought out (admin and exchange records in one group commit)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import secrets
import subprocess
import sys
import time

import pytest
from helpers import free_port
from sqlalchemy import select, text

from lgsp import keys
from lgsp.audit import seals
from lgsp.audit.verify import verify_database
from lgsp.audit.writer import AuditWriter
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records


def serve(db_url: str, **env: str) -> subprocess.CompletedProcess:
    """`lgsp serve` against `db_url`: a refusal exits at once; a node that starts is a failure here."""
    try:
        return subprocess.run([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(free_port())],
                              env={**os.environ, "LGSP_DATABASE_URL": db_url, **env},
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the node started instead of refusing")


@pytest.fixture
def keyed_db(fresh_db_url):
    engine = engine_for(fresh_db_url)
    keys.ensure_key(engine)
    seals.ensure_key(engine)
    return fresh_db_url


def test_a_node_refuses_a_database_of_a_newer_schema(keyed_db):
    with engine_for(keyed_db).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    run = serve(keyed_db)
    assert run.returncode == 1
    assert "9999_from_the_future, newer than this LGSP knows" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_a_node_refuses_a_database_it_has_not_migrated(keyed_db):
    with engine_for(keyed_db).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    run = serve(keyed_db)
    assert run.returncode == 1 and "older than this LGSP" in run.stderr and "lgsp db upgrade" in run.stderr, run.stderr


def test_a_node_with_another_master_secret_refuses_to_start(keyed_db):
    run = serve(keyed_db, LGSP_SECRET_KEY=secrets.token_urlsafe(32))
    assert run.returncode == 1
    assert "cannot read key" in run.stderr and "LGSP_SECRET_KEY" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_admin_and_exchange_records_commit_in_one_group(fresh_db_url):
    """An admin action on a node under load lands in the same group commit as exchanges;
    their different columns once failed the whole group (every exchange in it answered 503)."""
    engine = engine_for(fresh_db_url)
    writer = AuditWriter(engine)
    try:
        now = dt.datetime.now(dt.timezone.utc)
        admin = {"at": now, "kind": "admin", "outcome": "ok", "client_id": None, "service": None,
                 "detail": {"actor": "tests", "action": "grant.revoke", "target": "1"}}
        exchange = {"at": now, "kind": "exchange", "request_id": "mixed-1", "door": "rest", "client_id": "c",
                    "service": "population.citizen.get", "outcome": "ok", "status": 200, "latency_ms": 1.0}
        batch = [(exchange, concurrent.futures.Future()), (admin, concurrent.futures.Future())]
        deadline = time.monotonic() + 10
        while writer._signer is None and time.monotonic() < deadline:  # the writer thread loads its seal key
            time.sleep(0.01)
        writer._write(batch)  # one group, as the writer thread forms it under load
        for _, fut in batch:
            assert fut.exception(timeout=5) is None
    finally:
        writer.close()
    with engine.connect() as conn:
        kinds = sorted(conn.execute(select(audit_records.c.kind).where(audit_records.c.chain == writer.chain)))
    assert [k for (k,) in kinds] == ["admin", "exchange"]
    assert verify_database(engine).ok


def test_a_call_under_way_finishes_when_its_connection_changes(fresh_db_url, population_sim, faults):
    """A connection changed on any node (pushed to every node at once) must not cut the calls
    its old adapter is serving: the old one is closed only once they are done."""
    from lgsp.adapter import CallContext
    from lgsp.control.admin import Admin
    from lgsp.registry import Registry

    engine = engine_for(fresh_db_url)
    admin = Admin(engine, "tests")
    settings = {"endpoint": f"{population_sim.url}/dancu", "timeout": 5, "integration_code": "LGSP-TEST",
                "account": "lgsp-test", "agency_code": "000.00.00.H30"}
    admin.set_connection("population", "population", settings)

    async def scenario():
        registry = Registry(engine, poll_seconds=0.05)
        await registry.start()
        try:
            old = registry.adapter("population")
            faults.set("slow", delay=1.5, count=1)
            call = asyncio.create_task(old.call("citizen.get", {"personal_id": "001085012345"},
                                                CallContext(request_id="drain-1", client_id="tests")))
            await asyncio.sleep(0.3)  # the call is waiting on the slow upstream
            admin.set_connection("population", "population", {**settings, "timeout": 6})
            while registry.adapter("population") is old:
                await asyncio.sleep(0.05)
            return await asyncio.wait_for(call, 10)
        finally:
            await registry.stop()

    result = asyncio.run(scenario())
    assert result.data, result
