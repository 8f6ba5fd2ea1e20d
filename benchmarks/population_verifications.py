"""Population verifications against the simulator: one verification, and a 1,000-person list.

    .venv/bin/python benchmarks/population_verifications.py [--requests 300] [--repeat 3]

Starts the population simulator and one LGSP process (SQLite in a temporary directory) on
loopback, then measures through the REST door, with a real token, grant, purpose and audit:
(a) `POST /citizens/verify-marital-status` one request at a time: latency median / p90 / p99;
(b) `POST /bulk-verifications` with 1,000 persons: time from submission to a `done` job
    (the LGSP polls GetRequestStatus with backoff; the simulator takes 0.5 s for 1,000),
    and the audit records written (one per person). Median of --repeat runs.
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from machine import free_port, wait

ROOT = Path(__file__).resolve().parent.parent
PURPOSE = "benchmark"


def prepare(home: Path, port: int, sim_port: int) -> tuple[dict, str]:
    env = {"LGSP_HOME": str(home), "LGSP_DATABASE_URL": f"sqlite:///{home / 'lgsp.db'}",
           "LGSP_SECRET_KEY": secrets.token_urlsafe(32), "LGSP_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "LGSP_CONFIG_POLL_SECONDS": "0.5", "LGSP_LOG_LEVEL": "WARNING"}
    os.environ.update(env)
    from lgsp import keys
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for, upgrade

    upgrade(env["LGSP_DATABASE_URL"])
    engine = engine_for(env["LGSP_DATABASE_URL"])
    admin = Admin(engine, "benchmark")
    admin.register_spec_services()
    keys.ensure_key(engine)
    admin.set_connection("population", "population", {
        "endpoint": f"http://127.0.0.1:{sim_port}/dancu", "timeout": 10,
        "integration_code": "LGSP-BENCH", "account": "bench", "agency_code": "000.00.00.H30"})
    secret = admin.create_client("bench", "Benchmark", "000.00.31.H30")
    admin.add_grant("bench", "population.marital_status.verify", ["match"], [PURPOSE])
    admin.add_grant("bench", "population.bulk_verification.submit", ["personal_id", "match"], [PURPOSE])
    admin.add_grant("bench", "population.bulk_verification.get", ["items"], [PURPOSE])
    return env, secret


def audit_count(env: dict, prefix: str) -> int:
    from sqlalchemy import func, select

    from lgsp.storage import engine_for
    from lgsp.storage.schema import audit_records

    with engine_for(env["LGSP_DATABASE_URL"]).connect() as conn:
        return conn.execute(select(func.count()).where(audit_records.c.request_id.like(f"{prefix}-%"))).scalar_one()


def one_verification(base: str, headers: dict, requests: int) -> list[float]:
    body = {"personal_id": "001085012345", "marital_status": "married"}
    times = []
    with httpx.Client(headers=headers, timeout=30) as client:
        for _ in range(requests):
            t = time.perf_counter()
            r = client.post(f"{base}/api/population/v1/citizens/verify-marital-status", json=body)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and r.json() == {"match": True}, r.text
    return times


def bulk(base: str, headers: dict, env: dict, run: int) -> tuple[float, int]:
    items = [{"personal_id": f"0010{90 + run}{i:06d}", "full_name": "Nguyễn Văn Test", "birth_date": "1990"}
             for i in range(1000)]
    with httpx.Client(headers=headers, timeout=60) as client:
        t = time.perf_counter()
        r = client.post(f"{base}/api/population/v1/bulk-verifications", json={"items": items})
        assert r.status_code == 202, r.text
        while True:
            job = client.get(r.headers["location"]).json()
            if job["status"] != "pending":
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t
    assert job["status"] == "done" and len(job["items"]) == 1000, job
    time.sleep(0.5)  # the per-person audit records are committed right after the result is stored
    return elapsed, audit_count(env, job["job_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    port, sim_port = free_port(), free_port()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "lgsp_adapters.population.simulator",
                                           "--port", str(sim_port)], stdout=subprocess.DEVNULL))
            env, secret = prepare(Path(tmp), port, sim_port)
            procs.append(subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port)],
                                          env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            base = env["LGSP_PUBLIC_URL"]
            wait(f"http://127.0.0.1:{sim_port}/_sim/faults")
            wait(f"{base}/readyz")
            token = httpx.post(f"{base}/oauth/token", data={"grant_type": "client_credentials"},
                               auth=("bench", secret)).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}
            one_verification(base, headers, 20)  # warm-up
            times = sorted(one_verification(base, headers, args.requests))
            runs = [bulk(base, headers, env, run) for run in range(args.repeat)]
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    pct = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(f"{'measure':52} {'median':>9} {'p90':>9} {'p99':>9}")
    print(f"{'verify-marital-status, 1 at a time (ms)':52} {statistics.median(times):>9.2f} {pct(0.9):>9.2f} "
          f"{pct(0.99):>9.2f}")
    seconds = sorted(r[0] for r in runs)
    print(f"{'bulk verification of 1,000 persons, to done (s)':52} {statistics.median(seconds):>9.2f} "
          f"{'':>9} {'':>9}")
    print(f"audit records per 1,000-person job: {[r[1] for r in runs]}")


if __name__ == "__main__":
    main()
