"""What one rate-limit decision costs the gateway worker, per counter store, in CPU time.

For each store (the embedded SQLite file; Redis with --redis URL) and three kinds of decision:
an admitted call (two counters: a rate and a daily quota), a call the store refuses, and a call
the worker refuses from a refusal the store gave it (lgsp.traffic.limit.Refusals). Printed: CPU µs
per decision of this process (the worker's share; Redis's own CPU is not in it) and wall µs.
Median of --repeat rounds of --calls decisions each, one after another on one event loop.

Then what auditing a flood's refusals costs a worker: refusals arriving at --audit-rate per second
(default 90: the fairness benchmark's 180 refusals/s over two workers), each recorded by the real
audit writer on a SQLite file, either committed one by one (`AuditWriter.commit`, as every exchange
before lgsp/traffic/grouped_audit.py) or in groups (`commit_refusal`); rounds of the two alternate.
Printed: CPU µs per refusal of the whole process (event loop and writer thread), transactions per
refusal, and the p50/p99 wait for the commit (what the refusal's answer waits).

    .venv/bin/python benchmarks/limit_costs.py [--calls 3000] [--repeat 3] [--redis redis://127.0.0.1:63790/0]
        [--audit-rate 90] [--audit-seconds 5]

Not a timed test: the figures of one run are compared with each other only.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, speed_probe  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402

from lgsp.audit.writer import AuditRecord, AuditWriter  # noqa: E402
from lgsp.storage import engine_for, upgrade  # noqa: E402
from lgsp.traffic.counters import CounterStore, EmbeddedStore, Quota, Rate, RedisStore  # noqa: E402
from lgsp.traffic.grouped_audit import commit_refusal  # noqa: E402
from lgsp.traffic.limit import Limiter  # noqa: E402


async def timed(take, counters, calls: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await take(counters)
    return (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


async def costs(store: CounterStore, calls: int, repeat: int) -> list[tuple[str, float, float]]:
    tag = uuid.uuid4().hex[:8]
    admitted = (Rate(f"bench-{tag}-r", 1e-6, 10**9), Quota(f"bench-{tag}-d", 10**12, time.time() + 86_400))
    refused = (Rate(f"bench-{tag}-x", 3600.0, 1), Quota(f"bench-{tag}-d", 10**12, time.time() + 86_400))
    limiter = Limiter(store)
    await store.take(refused)  # the one call the refused counter admits
    for _ in range(100):
        await store.take(admitted)  # warm up: connection, script loaded, statements prepared
    rows = []
    for label, take, counters in (("admitted (store)", store.take, admitted),
                                  ("refused by the store", store.take, refused),
                                  ("refused by the worker (learned)", limiter.take, refused)):
        runs = [await timed(take, counters, calls) for _ in range(repeat)]
        rows.append((label, statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)))
    await store.close()
    return rows


def refusal(n: int) -> AuditRecord:
    return {"at": dt.datetime.now(dt.timezone.utc), "kind": "exchange", "request_id": f"bench-{n}", "door": "rest",
            "client_id": "greedy", "service": "population.citizen.get", "outcome": "refused", "status": 429,
            "error_code": "rate.limited", "latency_ms": 0.4, "response_bytes": 260, "response_sha256": "ab" * 32}


async def audited(writer: AuditWriter, grouped: bool, rate: float, seconds: float) -> tuple[float, float, list[float]]:
    """CPU µs per refusal (all threads), transactions per refusal, and each refusal's wait for its commit (ms)."""
    waits: list[float] = []

    async def one(n: int) -> None:
        begin = time.perf_counter()
        await (commit_refusal(writer, refusal(n)) if grouped else writer.commit(refusal(n)))
        waits.append((time.perf_counter() - begin) * 1000)

    count = int(rate * seconds)
    groups0, cpu, start = REGISTRY.get_sample_value("lgsp_audit_batch_records_count") or 0, time.process_time(), \
        time.perf_counter()
    tasks = []
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    groups = (REGISTRY.get_sample_value("lgsp_audit_batch_records_count") or 0) - groups0
    return (time.process_time() - cpu) / count * 1e6, groups / count, waits


def audit_costs(rate: float, seconds: float, repeat: int) -> None:
    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'audit.db'}"
    upgrade(url)
    writer = AuditWriter(engine_for(url))
    results: dict[bool, list[tuple[float, float, list[float]]]] = {False: [], True: []}
    try:
        asyncio.run(audited(writer, False, rate, 1))  # warm up: connection, statements, seal key
        for n in range(repeat):
            for grouped in (n % 2 == 0, n % 2 != 0):  # alternating order: a drift of the box falls on both
                results[grouped].append(asyncio.run(audited(writer, grouped, rate, seconds)))
    finally:
        writer.close()
    print(f"\naudited refusals at {rate:g}/s, {seconds:g} s a round, median of {repeat} rounds; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'commit':<28} {'CPU µs/refusal':>15} {'commits/refusal':>16} {'wait p50 ms':>12} {'wait p99 ms':>12}")
    for grouped, label in ((False, "one transaction each"), (True, "grouped (commit_refusal)")):
        runs = results[grouped]
        waits = sorted(w for _, _, ws in runs for w in ws)
        print(f"{label:<28} {statistics.median(r[0] for r in runs):15.1f} {statistics.median(r[1] for r in runs):16.2f}"
              f" {waits[len(waits) // 2]:12.2f} {waits[int(len(waits) * 0.99)]:12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", help="Also measure this Redis.")
    parser.add_argument("--audit-rate", type=float, default=90, help="Refusals per second to audit (0: skip).")
    parser.add_argument("--audit-seconds", type=float, default=5)
    args = parser.parse_args()
    stores: list[tuple[str, CounterStore]] = [("embedded", EmbeddedStore(Path(tempfile.mkdtemp()) / "limits.sqlite"))]
    if args.redis:
        import redis

        parser_name = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure-Python parser"
        stores.append((f"redis ({parser_name})", RedisStore(args.redis)))
    print(f"CPU: {cpu_model()}; {speed_probe()}")
    print(f"{'store':<28} {'decision':<34} {'CPU µs':>8} {'wall µs':>8}")
    for name, store in stores:
        for label, cpu, wall in asyncio.run(costs(store, args.calls, args.repeat)):
            print(f"{name:<28} {label:<34} {cpu:8.1f} {wall:8.1f}")
    if args.audit_rate:
        audit_costs(args.audit_rate, args.audit_seconds, args.repeat)


if __name__ == "__main__":
    main()
