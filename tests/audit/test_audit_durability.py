"""Durability under load: SIGKILL the gateway mid-load; every answered request has its record.

A dedicated gateway (two worker processes, its own database) takes thousands of
concurrent requests; it is killed with SIGKILL while they are in flight,
restarted, and the audit trail is checked: one record for every request that
got an answer, and every chain verifies (records after the last seal of a
killed process are reported as unsealed, not as findings).
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import aiohttp
import httpx
from helpers import free_port, wait_for
from sqlalchemy import select

from lgsp import keys
from lgsp.audit import seals
from lgsp.audit.verify import verify_database
from lgsp.control.admin import Admin
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records

PURPOSE = "administrative-procedure"
TOTAL, CONCURRENCY, KILL_AFTER = 4000, 50, 1500


def start_gateway(url: str, port: int, log) -> subprocess.Popen:
    env = dict(os.environ, LGSP_DATABASE_URL=url, LGSP_PUBLIC_URL=f"http://127.0.0.1:{port}")
    proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port), "--workers", "2"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", proc=proc)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)  # never leave a half-started gateway and its workers behind
        raise
    return proc


async def load(url: str, token: str, answered: list[str], killed: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(TOTAL):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty() and not killed.is_set():
            i = queue.get_nowait()
            rid = f"load-{i}"
            try:
                async with session.get(url, headers={**headers, "X-Request-ID": rid}) as resp:
                    await resp.read()
                    if resp.status == 200:
                        answered.append(rid)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # the gateway died under this request: it was never answered

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))


def test_sigkill_mid_load_loses_no_answered_record(fresh_db_url, population_sim, tmp_path):
    own_database = fresh_db_url
    engine = engine_for(own_database)
    admin = Admin(engine, "tests")
    admin.register_spec_services()
    keys.ensure_key(engine)
    seals.ensure_key(engine)
    admin.set_connection("population", "population", {
        "endpoint": f"{population_sim.url}/dancu", "timeout": 5,
        "integration_code": "LGSP-TEST", "account": "lgsp-test", "agency_code": "000.00.00.H30",
    })
    secret = admin.create_client("load-client", "Load generator", "000.00.31.H30")
    admin.add_grant("load-client", "population.citizen.get", ["full_name"], [PURPOSE])

    port = free_port()
    log = open(tmp_path / "gateway.log", "ab")
    proc = start_gateway(own_database, port, log)
    base = f"http://127.0.0.1:{port}"
    token = httpx.post(f"{base}/oauth/token", data={"grant_type": "client_credentials"},
                       auth=("load-client", secret)).json()["access_token"]
    answered: list[str] = []
    killed = asyncio.Event()

    async def run() -> None:
        load_task = asyncio.create_task(load(f"{base}/api/population/v1/citizens/001085012345", token, answered,
                                             killed))
        # Kill mid-load; if the load ends first (too few answers on a starved box), kill anyway
        # and let the assertion below say so rather than wait forever.
        while len(answered) < KILL_AFTER and not load_task.done():
            await asyncio.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the serve process and its workers, no clean shutdown
        killed.set()
        await load_task

    asyncio.run(run())
    proc.wait(10)
    assert len(answered) >= KILL_AFTER

    # The gateway comes back on the same database and serves again.
    proc = start_gateway(own_database, port, log)
    try:
        r = httpx.get(f"{base}/api/population/v1/citizens/001085012345",
                      headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE, "X-Request-ID": "after"})
        assert r.status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)

    with engine.connect() as conn:
        recorded = set(conn.execute(select(audit_records.c.request_id)
                                    .where(audit_records.c.request_id.like("load-%"))).scalars())
    missing = [rid for rid in answered if rid not in recorded]
    assert not missing, f"{len(missing)} answered requests have no audit record, e.g. {missing[:5]}"
    report = verify_database(engine)
    assert report.ok, report.findings[:5]
    assert report.records >= len(answered)
