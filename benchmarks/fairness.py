"""Fairness under load: does a greedy client hurt a well-behaved one, and what does a refusal cost?

The greedy client's policy is RATE calls per second (burst = RATE) and it sends ten times that.
The well-behaved client sends GOOD calls per second (default: max(2 × RATE, 40), so a phase
holds enough samples for a p99) under a policy of 2 × GOOD (burst the same), so it is never
refused itself. Phases of DURATION seconds come in PAIRS: the well-behaved client alone (A) and
beside the greedy client (B), with a third phase (C) beside the greedy client sending exactly its
limit; in alternating order (ABC, CBA, ABC, …) so that a drift of the machine's load falls on every
side. The goal ("one client sending 10× its limit must not raise a well-behaved client's p99 by
more than 20 %") is judged on B over C: the same client sending ten times its limit against sending
its limit. The share its policy admits (C over A) is capacity the operator granted, which no traffic
control takes away and whose cost depends on the box (on 2 shared cores, 21 calls a second beside
40); it is printed beside the verdict, as is B over A (the greedy client absent). This reading
was fixed before the run that decides it. A ratio is that of the p99s of all kept pairs' calls
pooled (a p99 from pairs × phase calls, not from one phase's ~600, whose p99 is its 6 slowest),
with a 90 % range from a two-level bootstrap (pairs drawn again, then each drawn phase's calls):
"meets the goal" only if the whole range is at most 1.20, "misses" if it is all above, else
"undecided"; fewer than MIN_KEPT (3) kept pairs give no verdict at all, nor does any answer other
than 200 or 429 to a client holding a token (its token is issued to outlive the run). A pair is
left out of a ratio by a rule fixed in advance (SPOILED_CORES, SPOILED_PRESSURE): the machine's
other work (its busy CPU from /proc/stat less the gateway's, the simulator's, the store's and the
generator's) differed between the ratio's two phases by more than 0.2 cores, or the first of them
saw a CPU pressure over 50 %. Every phase also prints the
machine's CPU pressure (Linux PSI "some": share of the phase in which a runnable task waited for
a CPU) and the time the gateway's own threads were ready to run but waited for a CPU (schedstat).
Then one idle phase (the gateway's background CPU) and one greedy-only phase (py-spy on the
gateway during it with --profile) give the gateway's CPU per refusal (its CPU less the admitted
calls at the well-behaved price, over the refusals); one more phase sends the same flood without
a token (refused at identify, 401, audited like any refusal) for the floor of what an audited
refusal costs on this path. Also printed: the counter store's own CPU (Redis), the load
generator's own CPU, and the audit transactions of the greedy phase (records per transaction).
The greedy client's admitted calls in each B phase are checked against its policy: at most
RATE per second plus one burst of RATE (its bucket is full when a phase starts); its share of
all admitted calls is printed beside the share its limit gives it, and its calls' latency
split into admitted and refused (a refusal is answered once its audit record is durable, which
may wait for the next admitted exchange's commit: lgsp/traffic/grouped_audit.py).

The load generator is open loop and cheap: calls leave at their scheduled times whatever the
answers (a late answer never delays the next call), on raw keep-alive HTTP/1.1 connections with
prebuilt request bytes and a minimal answer reader (a new connection only when all are busy).
Latency is counted from the scheduled time, so a generator or gateway that falls behind shows in it.
Each client runs in a process of its own, as a real client is another machine (on one event loop the
greedy client's calls delayed the well-behaved client's sends and reads), with its cyclic garbage
collector off during a phase (run between phases): a full collection paused a generator 70-100 ms
once per B phase, a tail of the benchmark's own.
The gateway runs as `lgsp serve --workers 2` on SQLite with the embedded counter store (or Redis
with --redis URL), in front of the population simulator.

    .venv/bin/python benchmarks/fairness.py [--duration 15] [--pairs 12] [--rate 20] [--good 40] [--redis URL]
        [--profile stacks.txt] [--save latencies.json]

The defaults take about 12 minutes; `--pairs 48` (about 42 minutes) on an idle box is what decided (24 pairs
left the range too wide: the box stalls now and then, in any phase).

Not a timed test: the machine is shared and noisy; the figures of one run are compared with
each other only.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import multiprocessing
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, free_port, metric_samples, process_tree, speed_probe, wait  # noqa: E402

PURPOSE = "administrative-procedure"
CITIZEN = "001085012345"
TICK = os.sysconf("SC_CLK_TCK")


def set_up(env: dict, sim_url: str, limits: dict[str, int]) -> dict[str, tuple[str, str]]:
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
    tag = secrets.token_hex(3)  # client ids of this run only: a shared Redis may hold counters of other runs
    for name, rate in limits.items():
        cid = f"{name}-{tag}"
        secret = admin.create_client(cid, name, "000.00.31.H30")
        admin.add_grant(cid, "population.citizen.get", ["personal_id", "full_name"], [PURPOSE])
        admin.set_policy(f"client:{cid}", {"rate_per_second": rate, "burst": rate})
        clients[name] = (cid, secret)
    return clients


# -- the open-loop generator ------------------------------------------------------------------

@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)   # ms from the scheduled time, answers 200
    refused: list[float] = field(default_factory=list)     # the same, answers 429
    statuses: dict[int, int] = field(default_factory=dict)
    span: float = 0.0                                       # first scheduled call to last answer, s
    connections: int = 0
    errors: dict[str, int] = field(default_factory=dict)   # why calls got no answer


class Client:
    """One client's open-loop stream of lookups on raw keep-alive connections."""

    def __init__(self, host: str, port: int, token: str | None):
        self.host, self.port = host, port
        auth = f"Authorization: Bearer {token}\r\n" if token else ""  # none: every call is refused (401), audited
        self.request = (f"GET /api/population/v1/citizens/{CITIZEN} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"{auth}X-Purpose: {PURPOSE}\r\n\r\n").encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one(self, due: float, tally: Tally) -> None:
        status = 0
        while True:  # a kept-alive connection the server has since closed (idle timeout): try the next one
            reused = bool(self.idle)
            if reused:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                tally.connections += 1
            try:
                writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                at = head.lower().find(b"content-length:")
                length = int(head[at + 15:head.index(b"\r\n", at)]) if at >= 0 else 0
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                writer.close()
                if reused and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)) and not status:
                    continue
                status = 0
                tally.errors[type(exc).__name__] = tally.errors.get(type(exc).__name__, 0) + 1
            else:
                self.idle.append((reader, writer))
            break
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if status == 200:
            tally.latencies.append((time.perf_counter() - due) * 1000)
        elif status == 429:
            tally.refused.append((time.perf_counter() - due) * 1000)

    async def drive(self, per_second: float, duration: float) -> Tally:
        tally, tasks = Tally(), []
        begin = time.perf_counter()
        for n in range(int(per_second * duration)):
            due = begin + n / per_second
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(due, tally)))
        await asyncio.gather(*tasks)
        tally.span = time.perf_counter() - begin
        return tally

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class Remote:
    """A client's generator in a process of its own, as a real client is another machine. On one event loop
    the two clients delayed each other: the greedy client's 200 calls/s and their answers held the
    well-behaved client's sends and reads back, a latency that was the generator's, not the gateway's."""

    def __init__(self, host: str, port: int, token: str | None):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=client_process, args=(child, host, port, token), daemon=True)
        self.process.start()

    async def _call(self, *command: object) -> object:
        self._conn.send(command)
        return await asyncio.to_thread(self._conn.recv)

    async def drive(self, per_second: float, duration: float) -> Tally:
        return Tally(**await self._call("drive", per_second, duration))  # type: ignore[arg-type]

    async def warm_up(self, rate: int) -> None:
        await self._call("warm_up", rate)

    def cpu(self) -> float:
        return proc_cpu(self.process.pid)

    def close(self) -> None:
        self._conn.send(("close",))
        self.process.join(10)


def client_process(conn, host: str, port: int, token: str | None) -> None:
    """A client's process: runs the parent's commands (drive a phase, warm up) on its own event loop."""
    asyncio.run(_commands(conn, Client(host, port, token)))


async def _commands(conn, client: Client) -> None:
    while True:
        command = await asyncio.to_thread(conn.recv)
        if command[0] == "close":
            client.close()
            return
        if command[0] == "warm_up":
            await warm_up(client, command[1])
            conn.send(None)
            continue
        # Its cyclic garbage collector is kept out of the phase: a full collection paused a generator for
        # 70-100 ms once per B phase (240 calls/s allocate fast). Counted references free the rest.
        gc.collect()
        gc.disable()
        try:
            tally = await client.drive(command[1], command[2])
        finally:
            gc.enable()
        conn.send(dataclasses.asdict(tally))  # plain data: the class is this script's, named otherwise in the parent


def gateway_cpu(root: int) -> tuple[float, float, float]:
    """CPU seconds of the gateway's processes: their main threads (the event loops: doors, pipeline, limit stage)
    and their other threads (the audit writer, the thread pool, uvicorn's supervisor pings); and the seconds
    their threads were runnable but waited for a CPU (schedstat: the machine's other work shows in it)."""
    loops = others = 0
    waited = 0.0
    for pid in process_tree(root):
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks = int(fields[11]) + int(fields[12])  # utime stime
            if task.name == str(pid):
                loops += ticks
            else:
                others += ticks
            try:
                waited += int((task / "schedstat").read_text().split()[1]) / 1e9
            except (OSError, IndexError, ValueError):
                pass
    return loops / TICK, others / TICK, waited


@dataclass
class Phase:
    tallies: dict[str, Tally]
    gateway_cpu: float   # s, all threads
    thread_cpu: float    # s, of it in threads other than the event loops (the audit writer above all)
    store_cpu: float     # s (Redis server; 0 for the embedded store, whose work is in the gateway's)
    load_cpu: float      # s (the generator: this process and the clients' processes)
    pressure: float      # CPU pressure during the phase (PSI "some": % of the phase some runnable task waited)
    load: float          # the machine's load average at the phase's end
    waited: float = 0.0  # s the gateway's threads were runnable but waited for a CPU
    outside: float = 0.0  # cores of CPU the machine spent on other work (not the gateway, simulator, store, generator)


def stalled() -> float:
    """Linux PSI: microseconds in which some runnable task waited for a CPU, since boot; NaN if unknown."""
    try:
        return float(Path("/proc/pressure/cpu").read_text().split("total=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return float("nan")


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:13]) / TICK


async def phase(clients: dict[str, Remote], rates: dict[str, float], duration: float, gateway: int,
                store: int | None, sim: int | None = None) -> Phase:
    (loops0, others0, waited0), store0, load0 = gateway_cpu(gateway), proc_cpu(store), generator_cpu(clients)
    stall0, wall0, busy0, sim0 = stalled(), time.perf_counter(), machine_busy(), proc_cpu(sim)
    names = list(rates)
    tallies = await asyncio.gather(*(clients[n].drive(rates[n], duration) for n in names)) if names else \
        await asyncio.sleep(duration, [])
    loops, others, waited = gateway_cpu(gateway)
    wall = time.perf_counter() - wall0
    pressure = (stalled() - stall0) / (wall * 1e6) * 100
    ours = loops + others - loops0 - others0
    done = Phase(dict(zip(names, tallies, strict=True)), ours, others - others0, proc_cpu(store) - store0,
                 generator_cpu(clients) - load0, pressure, os.getloadavg()[0], (waited - waited0) / wall)
    spent = ours + done.store_cpu + done.load_cpu + proc_cpu(sim) - sim0
    done.outside = max(0.0, machine_busy() - busy0 - spent) / wall
    return done


def generator_cpu(clients: dict[str, Remote]) -> float:
    """CPU seconds of the load generator: this process and the clients' own."""
    return time.process_time() + sum(c.cpu() for c in clients.values())


# -- the report -------------------------------------------------------------------------------

def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def answered(t: Tally) -> int:
    return sum(t.statuses.values())


def admitted(t: Tally) -> int:
    return t.statuses.get(200, 0)


def unexpected(run: "Run") -> dict[int, int]:
    """Answers other than 200 and 429 in the phases whose clients hold a token (an expired token's 401, a 5xx):
    a phase with any of them measured something else than fairness, so the run gives no verdict."""
    out: dict[int, int] = {}
    phases = [p for _, a, b in run.pairs for p in (a, b)] + run.at_limit + [run.greedy]
    for tally in (t for phase in phases for t in phase.tallies.values()):
        for status, n in tally.statuses.items():
            if status not in (200, 429, 0):
                out[status] = out.get(status, 0) + n
    return out


@dataclass
class Run:
    pairs: list[tuple[str, Phase, Phase]]   # (order, A: well-behaved alone, B: beside the greedy client)
    at_limit: list[Phase]   # C, one per pair: the well-behaved client beside the greedy client sending at its limit
    idle: Phase
    greedy: Phase
    anonymous: Phase   # the greedy client's flood without a token: refused at identify (401), each audited
    greedy_commits: tuple[float, float] = (0.0, 0.0)   # audit transactions and records in the greedy phase


# The rule for leaving a pair out of the verdict, fixed before any run: its ratio measures the box, not us, when
# its two phases saw different amounts of the machine's other work (a neighbour's burst in one phase only), or
# when the box had no CPU to spare even in the ratio's first phase (its CPU pressure; on an otherwise idle box A
# phases show ~5 %, C phases ~7 %): then any extra work queues, whoever does it.
SPOILED_CORES = 0.2
SPOILED_PRESSURE = 50.0
GOAL = 1.20
MIN_KEPT = 3   # kept pairs below which there is no verdict: a bootstrap over one or two pairs knows no drift


def spoiled(first: Phase, second: Phase) -> bool:
    return abs(first.outside - second.outside) > SPOILED_CORES or first.pressure > SPOILED_PRESSURE


def p99(values: list[float]) -> float:
    """Nearest-rank p99 (the bootstrap's thousands of p99s need it quick)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


Sides = tuple[list[float], list[float]]   # the well-behaved client's latencies in a pair's two phases, in ratio order


def pooled(pairs: list[Sides]) -> float:
    """p99 of all second phases' calls over p99 of all first phases' calls (B over C for the goal): p99 from pairs ×
    phase samples, not one phase."""
    return p99([x for _, b in pairs for x in b]) / p99([x for a, _ in pairs for x in a])


def confidence(pairs: list[Sides], rounds: int = 1000) -> tuple[float, float]:
    """90 % range of the pooled ratio, bootstrapped in two levels: pairs drawn with replacement (the box's drift
    between pairs), then each drawn phase's calls (the tail's sampling noise)."""
    rng = random.Random(9)
    ratios = sorted(pooled([(rng.choices(a, k=len(a)), rng.choices(b, k=len(b)))
                            for a, b in rng.choices(pairs, k=len(pairs))]) for _ in range(rounds))
    return ratios[int(0.05 * rounds)], ratios[int(0.95 * rounds) - 1]


def verdict(low: float, high: float) -> str:
    if high <= GOAL:
        return "meets the goal"
    if low > GOAL:
        return "misses the goal"
    return "undecided at this run's precision (the range straddles the goal): run more or longer pairs"


def verdict_lines(run: Run, excess: list[Sides], absent: list[Sides], shares: list[Sides]) -> list[str]:
    """The goal's verdict on B over C (the flood against the same client at its limit), then B over A (against
    the greedy client absent) and C over A (its admitted share) for comparison, each with its 90 % range."""
    lines = [f"Rule fixed before the run: a pair is left out of a ratio when the machine's other work differed between "
             f"its two phases by more than {SPOILED_CORES} cores, or its first phase (C for B/C, A for B/A) saw a CPU "
             f"pressure over {SPOILED_PRESSURE:g} %. Kept {len(excess)} of {len(run.pairs)} pairs for B/C, "
             f"{len(absent)} for B/A."]
    odd = unexpected(run)
    if odd:
        lines[0] += (" **No verdict: calls with a token got answers other than 200 and 429 ("
                     + ", ".join(f"{n} × {status}" for status, n in sorted(odd.items())) + ").**")
        return lines
    if len(excess) >= MIN_KEPT:
        ratio, (low, high) = pooled(excess), confidence(excess)
        calls = sum(len(c) for c, _ in excess)
        lines.append(f"**The goal (B/C): the greedy client sending ten times its limit, against sending its limit, "
                     f"raises the well-behaved p99 (pooled over the kept pairs: {calls} calls a side, p99 ≈ the "
                     f"{max(1, calls // 100)} slowest) by a ratio of {ratio:.2f} ({(ratio - 1) * 100:+.0f} %), 90 % "
                     f"range {low:.2f}–{high:.2f}; goal at most {GOAL:.2f}: {verdict(low, high)}.**")
    else:
        lines[0] += f" No verdict (fewer than {MIN_KEPT} kept pairs)."
    beside = (("Beside the greedy client, against the well-behaved client alone (B/A, not the goal's reading: it "
               "includes the share the greedy client's policy admits)", absent),
              ("Its admitted share alone (C/A: capacity its policy grants, which no traffic control takes away)",
               shares))
    for label, pairs in beside:
        if len(pairs) >= MIN_KEPT:
            ratio, (low, high) = pooled(pairs), confidence(pairs)
            lines.append(f"{label}: {ratio:.2f}, 90 % range {low:.2f}–{high:.2f} ({compared(low, high)} {GOAL:.2f}).")
    return lines


def compared(low: float, high: float) -> str:
    return "all at most" if high <= GOAL else "all above" if low > GOAL else "straddling"


def summary(run: Run, rate: int, good: float, duration: float) -> list[str]:
    lines = ["| pair | order | A: p50 ms | A: p99 ms | B: p50 ms | B: p99 ms | C: p99 ms | B/C p99 | B/A p99 "
             "| CPU pressure A / B / C | other work A / B / C (cores) | load A / B | gateway waited for a CPU A / B "
             "(ms/s) | greedy admitted (≤ limit × s + burst) | greedy refused/s | no answer |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ratios: list[float] = []
    over: list[bool] = []
    excess: list[Sides] = []   # (C, B): the goal
    absent: list[Sides] = []   # (A, B)
    shares: list[Sides] = []   # (A, C)
    for n, ((order, a, b), c) in enumerate(zip(run.pairs, run.at_limit, strict=True), 1):
        wa, wb, wc = (p.tallies["well-behaved"] for p in (a, b, c))
        g = b.tallies["greedy"]
        ratio = pct(wb.latencies, 99) / pct(wc.latencies, 99)
        ratios.append(ratio)
        marks = {side: " (spoiled)" if spoiled(first, b) else "" for side, first in (("A", a), ("C", c))}
        for first, second, kept in ((c, b, excess), (a, b, absent), (a, c, shares)):
            early, late = first.tallies["well-behaved"].latencies, second.tallies["well-behaved"].latencies
            if not spoiled(first, second) and early and late:
                kept.append((early, late))
        allowed = rate * g.span + rate
        over.append(admitted(g) > allowed)
        lost = sum(t.statuses.get(0, 0) for t in (wa, wb, g))
        lines.append(f"| {n} | {order} | {pct(wa.latencies, 50):.1f} | {pct(wa.latencies, 99):.1f} "
                     f"| {pct(wb.latencies, 50):.1f} | {pct(wb.latencies, 99):.1f} | {pct(wc.latencies, 99):.1f} "
                     f"| {ratio:.2f}{marks['C']} | {pct(wb.latencies, 99) / pct(wa.latencies, 99):.2f}{marks['A']} "
                     f"| {a.pressure:.0f} % / {b.pressure:.0f} % / {c.pressure:.0f} % "
                     f"| {a.outside:.2f} / {b.outside:.2f} / {c.outside:.2f} "
                     f"| {a.load:.1f} / {b.load:.1f} "
                     f"| {a.waited * 1000:.0f} / {b.waited * 1000:.0f} "
                     f"| {admitted(g)} ({admitted(g) / g.span:.2f}/s; ≤ {allowed:.0f}) "
                     f"| {g.statuses.get(429, 0) / g.span:.1f} | {lost} |")
    samples = med([len(p.tallies["well-behaved"].latencies) for _, a, b in run.pairs for p in (a, b)])
    # CPU per call: the gateway's background CPU (configuration polling, audit writer) of the idle phase taken off.
    ok_calls = sum(admitted(a.tallies["well-behaved"]) for _, a, _ in run.pairs)
    ok_cpu = sum(a.gateway_cpu - run.idle.gateway_cpu for _, a, _ in run.pairs) / ok_calls
    ok_threads = sum(a.thread_cpu - run.idle.thread_cpu for _, a, _ in run.pairs) / ok_calls
    g = run.greedy.tallies["greedy"]
    refused = g.statuses.get(429, 0) or 1
    per_refusal = (run.greedy.gateway_cpu - run.idle.gateway_cpu - admitted(g) * ok_cpu) / refused
    per_refusal_threads = (run.greedy.thread_cpu - run.idle.thread_cpu - admitted(g) * ok_threads) / refused
    store = (run.greedy.store_cpu - run.idle.store_cpu) / (answered(g) or 1)
    anon = run.anonymous.tallies["anonymous"]
    floor = (run.anonymous.gateway_cpu - run.idle.gateway_cpu) / (anon.statuses.get(401, 0) or 1)
    floor_threads = (run.anonymous.thread_cpu - run.idle.thread_cpu) / (anon.statuses.get(401, 0) or 1)
    phases = [p for _, a, b in run.pairs for p in (a, b)]
    load = med([p.load_cpu / sum(answered(t) for t in p.tallies.values()) for p in phases])
    both_cpu = med([b.gateway_cpu / duration for _, _, b in run.pairs])
    middle = med(ratios)
    lines += [""] + verdict_lines(run, excess, absent, shares)
    lines += [f"Well-behaved calls measured per phase (median): {samples:.0f}. Per pair (p99 of one phase ≈ the "
              f"{max(1, round(samples / 100)):.0f} slowest, noisy): median B/C ratio {middle:.2f}; ratios: "
              + ", ".join(f"{r:.2f}" for r in ratios) + ".",
              f"Greedy client (limit {rate}/s, burst {rate}) admitted over the limit plus one burst in "
              f"{sum(over)} of {len(over)} B phases; its calls never reach the backend when refused (tests).",
              share_line(run, rate), split_line(run),
              f"Greedy alone ({rate * 10}/s for {duration:g} s): {admitted(g)} admitted, {g.statuses.get(429, 0)} "
              f"refused, {g.statuses.get(0, 0)} without an answer; p99 of its admitted calls "
              f"{pct(g.latencies, 99):.1f} ms; CPU pressure {run.greedy.pressure:.0f} %; the gateway's threads "
              f"waited for a CPU {run.greedy.waited * 1000:.0f} ms per second; its records went to the audit in "
              f"{run.greedy_commits[0]:.0f} transactions ({run.greedy_commits[1] / (run.greedy_commits[0] or 1):.1f} "
              f"records each).",
              f"Gateway CPU per admitted call (A phases): {ok_cpu * 1000:.3f} ms; **per refusal (greedy alone): "
              f"{per_refusal * 1000:.3f} ms**; of these in the threads beside the event loops (audit writer, thread "
              f"pool): {ok_threads * 1000:.3f} ms and {per_refusal_threads * 1000:.3f} ms; counter store (Redis "
              f"server) CPU per greedy call: {store * 1000:.3f} ms.",
              f"The floor of any audited refusal on this path: the same flood without a token "
              f"({anon.statuses.get(401, 0)} refused at identify, 401 `auth.token_missing`, each audited): "
              f"{floor * 1000:.3f} ms of gateway CPU "
              f"per refusal, {floor_threads * 1000:.3f} ms of it beside the event loops; so the token, the grant and "
              f"the limit stage add {(per_refusal - floor) * 1000:+.3f} ms to a refusal.",
              f"Gateway CPU idle: {run.idle.gateway_cpu / duration * 100:.1f} % of one core; in B phases: "
              f"{both_cpu * 100:.0f} % of one core (of {os.cpu_count()}); load generator CPU per call: "
              f"{load * 1000:.3f} ms; CPU pressure while idle {run.idle.pressure:.0f} %."]
    return lines


def share_line(run: Run, rate: int) -> str:
    """The greedy client's share of the calls admitted in B phases, beside the share its limit gives it."""
    greedy = sum(admitted(b.tallies["greedy"]) for _, _, b in run.pairs)
    good = sum(admitted(b.tallies["well-behaved"]) for _, _, b in run.pairs)
    span = sum(b.tallies["greedy"].span for _, _, b in run.pairs)
    allowed = rate * span + rate * len(run.pairs)
    return (f"**Greedy client's share of the admitted calls in B phases: {greedy / ((greedy + good) or 1) * 100:.1f} %"
            f"** ({greedy / (span or 1):.2f}/s against its limit of {rate}/s); its limit gives it at most "
            f"{allowed / ((allowed + good) or 1) * 100:.1f} % beside the well-behaved client's calls.")


def split_line(run: Run) -> str:
    """The greedy client's latency, admitted calls apart from refused ones (a refusal waits for its audit commit)."""
    def both(tallies: list[Tally]) -> str:
        ok = [x for t in tallies for x in t.latencies]
        no = [x for t in tallies for x in t.refused]
        return (f"admitted p50 / p99 {pct(ok, 50):.1f} / {pct(ok, 99):.1f} ms ({len(ok)}), refused "
                f"{pct(no, 50):.1f} / {pct(no, 99):.1f} ms ({len(no)})")
    beside = [b.tallies["greedy"] for _, _, b in run.pairs]
    return (f"Greedy client's calls, from their scheduled time: in B phases {both(beside)}; "
            f"alone {both([run.greedy.tallies['greedy']])}.")


async def warm_up(client: Client, rate: int) -> None:
    """Admitted calls on fresh concurrent connections, so that every worker has loaded its adapter, mapping and
    code lists (a worker's first answer takes a second or more) before anything is measured."""
    for _ in range(4):
        tally = Tally()
        await asyncio.gather(*(client.one(time.perf_counter(), tally) for _ in range(min(rate, 8))))
        client.close()
        await asyncio.sleep(1.5)


async def audit_commits(url: str) -> tuple[float, float]:
    """The audit writers' transactions and the records in them so far, all workers (the gateway's /metrics)."""
    samples = await asyncio.to_thread(metric_samples, url, "lgsp_audit_batch_records")
    found = {s.name: s.value for s in samples}
    return found.get("lgsp_audit_batch_records_count", 0.0), found.get("lgsp_audit_batch_records_sum", 0.0)


def profiler(gateway: int, duration: float, out: Path | None) -> subprocess.Popen | None:
    """py-spy on the gateway's processes for one phase, folded stacks per thread into `out` (none without --profile)."""
    if out is None:
        return None
    return subprocess.Popen(["py-spy", "record", "-s", "-t", "--nonblocking", "-r", "100", "-f", "raw", "-d",
                             str(int(duration)), "-o", str(out), "-p", str(gateway)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(url: str, tokens: dict[str, str], rate: int, good: float, duration: float, pairs: int,
                  gateway: int, store: int | None, profile: Path | None = None, sim: int | None = None) -> Run:
    host, port = url.split("//")[1].split(":")
    clients = {n: Remote(host, int(port), t) for n, t in tokens.items()}
    calm = 1.5  # > burst / rate: the greedy bucket is full again before a phase starts
    alone, both = {"well-behaved": good}, {"well-behaved": good, "greedy": rate * 10.0}
    loads = {"A": alone, "B": both, "C": {"well-behaved": good, "greedy": float(rate)}}
    await clients["well-behaved"].warm_up(int(good))
    await phase(clients, both, 3, gateway, store, sim)
    done, at_limit = [], []
    for n in range(pairs):
        order = "ABC" if n % 2 == 0 else "CBA"  # alternating: a drift of the box's load falls on every side
        measured = {}
        for side in order:
            await asyncio.sleep(calm)
            measured[side] = await phase(clients, loads[side], duration, gateway, store, sim)
        done.append((order, measured["A"], measured["B"]))
        at_limit.append(measured["C"])
    await asyncio.sleep(calm)
    idle = await phase(clients, {}, duration, gateway, store, sim)  # the gateway's own background CPU
    spy, commits = profiler(gateway, duration, profile), await audit_commits(url)
    greedy = await phase(clients, {"greedy": rate * 10.0}, duration, gateway, store, sim)
    if spy is not None:
        spy.wait()
    transactions, records = (after - before for after, before in zip(await audit_commits(url), commits, strict=True))
    await asyncio.sleep(calm)
    anonymous = await phase(clients, {"anonymous": rate * 10.0}, duration, gateway, store, sim)
    for c in clients.values():
        c.close()
    return Run(done, at_limit, idle, greedy, anonymous, (transactions, records))


def redis_pid(url: str) -> int | None:
    import redis

    with redis.Redis.from_url(url) as r:
        return int(r.info("server")["process_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15, help="Seconds per phase.")
    parser.add_argument("--pairs", type=int, default=12, help="Pairs of phases (alone, beside the greedy client).")
    parser.add_argument("--rate", type=int, default=20, help="The greedy client's policy: calls per second (and "
                                                             "burst); it sends ten times that.")
    parser.add_argument("--good", type=float, help="The well-behaved client's calls per second (its policy: twice "
                                                   "that); default max(2 × rate, 40).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis", help="Count in this Redis instead of the embedded store.")
    parser.add_argument("--profile", type=Path, help="py-spy the gateway during the greedy-only phase: folded "
                                                     "stacks per thread into this file (py-spy on the PATH).")
    parser.add_argument("--save", type=Path, help="Also write every pair's well-behaved latencies (ms; A, B, C) "
                                                  "and the phases' other work and pressure into this JSON file, "
                                                  "to look at the tail again or pool runs later.")
    args = parser.parse_args()
    good = args.good or max(args.rate * 2, 40)

    work = Path(tempfile.mkdtemp(prefix="lgsp-fairness-"))
    port, sim_port = free_port(), free_port()
    env = {"LGSP_HOME": str(work), "LGSP_DATABASE_URL": f"sqlite:///{work / 'lgsp.db'}",
           "LGSP_SECRET_KEY": secrets.token_urlsafe(32), "LGSP_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "LGSP_EGRESS_ALLOW": "127.0.0.0/8", "LGSP_LOG_LEVEL": "WARNING", "LGSP_REDIS_URL": args.redis or "",
           # The tokens are fetched once and must outlive the run (3 phases a pair and 3 more, and margin): a
           # client refreshing its token is not what is measured, and an expired one turns every call into a 401.
           "LGSP_TOKEN_TTL": str(max(900, math.ceil((args.pairs * 3 + 3) * args.duration * 1.5) + 300))}
    probe = speed_probe()
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "lgsp_adapters.population.simulator", "--port",
                                       str(sim_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(f"http://127.0.0.1:{sim_port}/_sim/faults")
        clients = set_up(env, f"http://127.0.0.1:{sim_port}",
                         {"well-behaved": math.ceil(good * 2), "greedy": args.rate})
        procs.append(subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port), "--workers",
                                       str(args.workers)], env={**os.environ, **env},
                                      stdout=open(work / "gateway.log", "wb"), stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait(f"{url}/readyz")
        tokens = {}
        for name, (cid, secret) in clients.items():
            r = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, secret))
            tokens[name] = r.json()["access_token"]
        tokens["anonymous"] = None
        run = asyncio.run(measure(url, tokens, args.rate, good, args.duration, args.pairs, procs[-1].pid,
                                  redis_pid(args.redis) if args.redis else None, args.profile,
                                  procs[0].pid))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(15)

    store = "in Redis" if args.redis else "embedded"
    lines = [f"# Fairness, greedy client limited to {args.rate}/s, counters {store}: "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"CPU: {cpu_model()} ({os.cpu_count()} cores, shared with other work: noisy); {probe}.",
             f"Gateway: `lgsp serve --workers {args.workers}`, SQLite, counters "
             f"{'in Redis' if args.redis else 'embedded (SQLite file)'}; greedy client limited to {args.rate}/s "
             f"(burst {args.rate}) sending {args.rate * 10}/s; well-behaved client sending {good:g}/s (its limit "
             f"{math.ceil(good * 2)}/s); {args.pairs} pairs of {args.duration:g} s phases (A: well-behaved alone, "
             "B: both; with each pair a phase C: the greedy client sending exactly its limit), alternating order; "
             "open-loop generator on the same machine, one process per client; "
             "latency from each call's scheduled time.", ""]
    if args.save:  # first: the measurements outlive a mistake in the report
        args.save.write_text(json.dumps(saved(run)))
    lines += summary(run, args.rate, good, args.duration)
    print("\n".join(lines))


def saved(run: Run) -> list[dict]:
    """Each pair's well-behaved latencies per phase and what the spoiled rule looks at."""
    def side(p: Phase) -> dict:
        return {"ms": [round(x, 3) for x in p.tallies["well-behaved"].latencies], "outside": p.outside,
                "pressure": p.pressure}
    return [{"order": order, "A": side(a), "B": side(b), "C": side(c)}
            for (order, a, b), c in zip(run.pairs, run.at_limit, strict=True)]


if __name__ == "__main__":
    main()
