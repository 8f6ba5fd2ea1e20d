"""Fairness under load: does a greedy client hurt a well-behaved one?

Two clients with the same policy (RATE calls per second, burst = RATE). The well-behaved one
sends half its rate; the greedy one sends ten times its rate. Two runs of DURATION seconds each:
the well-behaved client alone, then with the greedy one. Printed: the well-behaved client's
p50/p99 latency in both runs, and each client's share (answered 200, refused 429, calls per second
admitted against its limit). The gateway runs as `lgsp serve --workers 2` on SQLite with the
embedded counter store (or Redis with --redis URL), in front of the population simulator.

    .venv/bin/python benchmarks/fairness.py [--duration 20] [--rate 20] [--redis redis://127.0.0.1:63790/0]

Not a timed test: the machine is shared and noisy; the figures of one run are compared with
each other only.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PURPOSE = "administrative-procedure"
CITIZEN = "001085012345"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} did not come up")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def set_up(env: dict, sim_url: str, rate: int) -> dict[str, tuple[str, str]]:
    os.environ.update(env)
    from lgsp import keys
    from lgsp.config import settings
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for, upgrade

    settings.cache_clear()
    upgrade(env["LGSP_DATABASE_URL"])
    engine = engine_for(env["LGSP_DATABASE_URL"])
    admin = Admin(engine, "benchmark")
    admin.register_spec_services()
    keys.ensure_key(engine)
    admin.set_connection("population", "population", {
        "endpoint": f"{sim_url}/dancu", "timeout": 5, "integration_code": "LGSP-BENCH", "account": "bench",
        "agency_code": "000.00.00.H30"})
    clients = {}
    for name in ("well-behaved", "greedy"):
        secret = admin.create_client(name, name, "000.00.31.H30")
        admin.add_grant(name, "population.citizen.get", ["personal_id", "full_name"], [PURPOSE])
        admin.set_policy(f"client:{name}", {"rate_per_second": rate, "burst": rate})
        clients[name] = (name, secret)
    return clients


async def drive(url: str, token: str, per_second: float, duration: float) -> tuple[list[float], dict[int, int], float]:
    """Open loop: one call every 1/per_second s whatever the answers; latencies of the 200s, counts by
    status, and the seconds from the first call to the last answer (longer than `duration` when the
    gateway falls behind)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def one() -> None:
            start = time.perf_counter()
            try:
                r = await client.get(f"{url}/api/population/v1/citizens/{CITIZEN}", headers=headers)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append((time.perf_counter() - start) * 1000)

        tasks, begin, n = [], time.perf_counter(), 0
        while (now := time.perf_counter()) - begin < duration:
            due = begin + n / per_second
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(one()))
            n += 1
        await asyncio.gather(*tasks)
    return latencies, statuses, time.perf_counter() - begin


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def run(url: str, tokens: dict[str, str], rate: int, duration: float, greedy: bool) -> dict:
    jobs = {"well-behaved": drive(url, tokens["well-behaved"], rate / 2, duration)}
    if greedy:
        jobs["greedy"] = drive(url, tokens["greedy"], rate * 10, duration)
    results = dict(zip(jobs, await asyncio.gather(*jobs.values())))
    return results


def report(title: str, results: dict, rate: int, duration: float) -> list[str]:
    lines = [f"## {title}", "",
             f"| client | sent/s | 200 | 429 | other | admitted/s over the run's span (limit {rate}) "
             "| span s | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, (latencies, statuses, span) in results.items():
        sent = sum(statuses.values())
        ok, refused = statuses.get(200, 0), statuses.get(429, 0)
        other = sent - ok - refused
        lines.append(f"| {name} | {sent / duration:.1f} | {ok} | {refused} | {other} | {(ok + other) / span:.1f} | "
                     f"{span:.1f} | {pct(latencies, 50):.1f} | {pct(latencies, 99):.1f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--rate", type=int, default=20, help="Each client's policy: calls per second (and burst).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis", help="Count in this Redis instead of the embedded store.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lgsp-fairness-"))
    port, sim_port = free_port(), free_port()
    env = {"LGSP_HOME": str(work), "LGSP_DATABASE_URL": f"sqlite:///{work / 'lgsp.db'}",
           "LGSP_SECRET_KEY": secrets.token_urlsafe(32), "LGSP_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "LGSP_EGRESS_ALLOW": "127.0.0.0/8", "LGSP_LOG_LEVEL": "WARNING", "LGSP_REDIS_URL": args.redis or ""}
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "lgsp_adapters.population.simulator", "--port",
                                       str(sim_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(f"http://127.0.0.1:{sim_port}/_sim/faults")
        clients = set_up(env, f"http://127.0.0.1:{sim_port}", args.rate)
        procs.append(subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port), "--workers",
                                       str(args.workers)], env={**os.environ, **env},
                                      stdout=open(work / "gateway.log", "wb"), stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait(f"{url}/readyz")
        tokens = {}
        for name, (cid, secret) in clients.items():
            r = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, secret))
            tokens[name] = r.json()["access_token"]
        asyncio.run(run(url, tokens, args.rate, 3, greedy=False))  # warm up: adapters, connections
        time.sleep(1.5)  # the buckets fill again
        alone = asyncio.run(run(url, tokens, args.rate, args.duration, greedy=False))
        time.sleep(1.5)
        both = asyncio.run(run(url, tokens, args.rate, args.duration, greedy=True))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(15)

    p99_alone, p99_both = pct(alone["well-behaved"][0], 99), pct(both["well-behaved"][0], 99)
    lines = [f"# Fairness: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"CPU: {cpu_model()} ({os.cpu_count()} cores, shared with other work: noisy). "
             f"Gateway: `lgsp serve --workers {args.workers}`, SQLite, counters "
             f"{'in Redis' if args.redis else 'embedded (SQLite file)'}; both clients limited to {args.rate}/s "
             f"(burst {args.rate}); {args.duration:g} s per run; load generator on the same machine.", ""]
    lines += report("Well-behaved client alone (half its rate)", alone, args.rate, args.duration)
    lines += report("With a greedy client sending 10× its rate", both, args.rate, args.duration)
    change = (p99_both / p99_alone - 1) * 100 if p99_alone else float("nan")
    _, greedy_statuses, greedy_span = both["greedy"]
    greedy_ok = sum(v for k, v in greedy_statuses.items() if k != 429)
    lines += [f"Well-behaved p99: {p99_alone:.1f} ms alone, {p99_both:.1f} ms with the greedy client "
              f"({change:+.0f} %).",
              f"Greedy client admitted {greedy_ok / greedy_span:.1f}/s over {greedy_span:.1f} s against its limit "
              f"of {args.rate}/s (plus a burst of {args.rate} at the start)."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
