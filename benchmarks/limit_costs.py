"""What one rate-limit decision costs the gateway worker, per counter store, in CPU time.

For each store (the embedded SQLite file; Redis with --redis URL) and three kinds of decision:
an admitted call (two counters: a rate and a daily quota), a call the store refuses, and a call
the worker refuses from a refusal the store gave it (lgsp.traffic.limit.Refusals). Printed: CPU µs
per decision of this process (the worker's share; Redis's own CPU is not in it) and wall µs.
Median of --repeat rounds of --calls decisions each, one after another on one event loop.

    .venv/bin/python benchmarks/limit_costs.py [--calls 3000] [--repeat 3] [--redis redis://127.0.0.1:63790/0]

Not a timed test: the figures of one run are compared with each other only.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, speed_probe  # noqa: E402

from lgsp.traffic.counters import CounterStore, EmbeddedStore, Quota, Rate, RedisStore  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", help="Also measure this Redis.")
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


if __name__ == "__main__":
    main()
