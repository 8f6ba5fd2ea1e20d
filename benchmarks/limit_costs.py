"""What one rate-limit decision costs the gateway worker, per counter store, in CPU time.

For each store (the embedded SQLite file; Redis with --redis URL) and three kinds of decision:
an admitted call (two counters: a rate and a daily quota), a call the store refuses, and a call
the worker refuses from a refusal the store gave it (lgsp.traffic.limit.Refusals). Printed: CPU µs
per decision of this process (the worker's share; Redis's own CPU is not in it) and wall µs.
Median of --repeat rounds of --calls decisions each, one after another on one event loop.

Then what auditing a flood's refusals costs a worker: refusals arriving at --audit-rate per second
(default 90: the fairness benchmark's 180 refusals/s over two workers) beside admitted exchanges at
--admitted-rate (default 30: the well-behaved client's 40/s and the greedy client's 20/s over two
workers), each recorded by the real audit writer on a SQLite file. The refusals are committed one
by one (`AuditWriter.commit`, as every exchange before lgsp/traffic/grouped_audit.py), in groups of
their own (`commit_refusal` with a 50 ms linger, the admitted ones committed apart: yesterday's
way), or riding in the admitted exchanges' transactions (`commit_with_refusals`, linger LINGER);
a round of the admitted exchanges alone is the baseline taken off. Rounds alternate. Printed:
CPU µs per refusal of the whole process (event loop and writer thread) above the baseline,
transactions per refusal above it, and the p50/p99 wait of refusals and of admitted exchanges
for their commit (what their answers wait).

    .venv/bin/python benchmarks/limit_costs.py [--calls 3000] [--repeat 3] [--redis redis://127.0.0.1:63790/0]
        [--audit-rate 90] [--admitted-rate 30] [--audit-seconds 5]

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
from lgsp.traffic import grouped_audit  # noqa: E402
from lgsp.traffic.counters import CounterStore, EmbeddedStore, Quota, Rate, RedisStore  # noqa: E402
from lgsp.traffic.grouped_audit import commit_refusal, commit_with_refusals  # noqa: E402
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


def refusal(n: int, status: int = 429) -> AuditRecord:
    return {"at": dt.datetime.now(dt.timezone.utc), "kind": "exchange", "request_id": f"bench-{status}-{n}",
            "door": "rest", "client_id": "greedy", "service": "population.citizen.get",
            "outcome": "refused" if status == 429 else "ok", "status": status,
            "error_code": "rate.limited" if status == 429 else None, "latency_ms": 0.4, "response_bytes": 260,
            "response_sha256": "ab" * 32}


# How refusals are committed: (label, refusal's commit, admitted exchange's commit, linger).
MODES = {
    "alone": ("admitted alone (baseline)", None, None, 0.0),
    "each": ("one transaction each", "commit", "commit", 0.0),
    "own": ("own groups, 50 ms", "group", "commit", 0.05),
    "ride": (f"riding, linger {grouped_audit.LINGER * 1000:.0f} ms", "group", "ride", grouped_audit.LINGER),
}


async def audited(writer: AuditWriter, mode: str, rate: float, admitted_rate: float, seconds: float
                  ) -> tuple[float, float, list[float], list[float]]:
    """CPU s and transactions of the round, each refusal's and each admitted exchange's wait for its commit (ms)."""
    _, refusal_commit, admitted_commit, grouped_audit.LINGER = MODES[mode]
    waits: dict[int, list[float]] = {429: [], 200: []}

    async def one(n: int, status: int) -> None:
        begin, record = time.perf_counter(), refusal(n, status)
        if status == 429:
            await (commit_refusal(writer, record) if refusal_commit == "group" else writer.commit(record))
        else:
            await (commit_with_refusals(writer, [record]) if admitted_commit == "ride" else writer.commit(record))
        waits[status].append((time.perf_counter() - begin) * 1000)

    calls = sorted([(n / admitted_rate, n, 200) for n in range(int(admitted_rate * seconds))]
                   + ([(n / rate, n, 429) for n in range(int(rate * seconds))] if refusal_commit else []))
    groups0, cpu, start = REGISTRY.get_sample_value("lgsp_audit_batch_records_count") or 0, time.process_time(), \
        time.perf_counter()
    tasks = []
    for at, n, status in calls:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.create_task(one(n, status)))
    await asyncio.gather(*tasks)
    groups = (REGISTRY.get_sample_value("lgsp_audit_batch_records_count") or 0) - groups0
    return time.process_time() - cpu, groups, waits[429], waits[200]


def audit_costs(rate: float, admitted_rate: float, seconds: float, repeat: int) -> None:
    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'audit.db'}"
    upgrade(url)
    writer = AuditWriter(engine_for(url))
    linger = grouped_audit.LINGER
    results: dict[str, list[tuple[float, float, list[float], list[float]]]] = {mode: [] for mode in MODES}
    try:
        asyncio.run(audited(writer, "each", rate, admitted_rate, 1))  # warm up: connection, statements, seal key
        for n in range(repeat):
            order = list(MODES)[n % len(MODES):] + list(MODES)[:n % len(MODES)]  # rotated: a drift falls on all
            for mode in order:
                results[mode].append(asyncio.run(audited(writer, mode, rate, admitted_rate, seconds)))
    finally:
        writer.close()
        grouped_audit.LINGER = linger
    refusals = int(rate * seconds)
    base_cpu = statistics.median(r[0] for r in results["alone"])
    base_groups = statistics.median(r[1] for r in results["alone"])
    print(f"\naudited refusals at {rate:g}/s beside admitted exchanges at {admitted_rate:g}/s, {seconds:g} s a round, "
          f"median of {repeat} rounds; load average {os.getloadavg()[0]:.2f}")
    print(f"{'refusals committed':<28} {'CPU µs/refusal':>15} {'commits/refusal':>16} {'refusal wait p50/p99 ms':>24}"
          f" {'admitted wait p50/p99 ms':>25}")
    for mode, (label, *_rest) in MODES.items():
        runs = results[mode]
        cpu = (statistics.median(r[0] for r in runs) - base_cpu) / refusals * 1e6
        commits = (statistics.median(r[1] for r in runs) - base_groups) / refusals
        no, ok = sorted(w for r in runs for w in r[2]), sorted(w for r in runs for w in r[3])
        print(f"{label:<28} {cpu if mode != 'alone' else 0:15.1f} {commits if mode != 'alone' else 0:16.2f} "
              f"{quantiles(no):>24} {quantiles(ok):>25}")


def quantiles(waits: list[float]) -> str:
    return f"{waits[len(waits) // 2]:.1f} / {waits[int(len(waits) * 0.99)]:.1f}" if waits else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", help="Also measure this Redis.")
    parser.add_argument("--audit-rate", type=float, default=90, help="Refusals per second to audit (0: skip).")
    parser.add_argument("--admitted-rate", type=float, default=30, help="Admitted exchanges per second beside them.")
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
        audit_costs(args.audit_rate, args.admitted_rate, args.audit_seconds, args.repeat)


if __name__ == "__main__":
    main()
