"""Store-and-forward delivery: acceptance rate, drain rate, and drain after an outage.

    .venv/bin/python benchmarks/delivery.py                                   # SQLite in a temporary directory
    .venv/bin/python benchmarks/delivery.py --database-url postgresql://…/postgres   # a fresh database on that server

(a) acceptance: wrk posts dossiers (each a new dossier number) to POST /api/portal/v1/dossiers
    through the whole pipeline (token, grant, purpose, schema, meaning checks, the message stored
    in its audit record's transaction); messages/s durably accepted (202, counted in the
    database) and the 202's p99. The gateway runs `--workers 2` with no delivery worker in it.
(b) drain: the backlog (a)) left, delivered by 1 and by 4 `lgsp serve --plane worker` processes to
    a receiver on loopback (the tests' relay receiver: it applies each message once); delivered/s.
(b') accept while N workers run (--beside 4, the acceptance target's setting): N `lgsp serve --plane
    worker` processes started (and ready) first, then (a)'s load while they deliver; messages/s
    accepted and the 202's p99, the gateway's and the workers' CPU, and what they delivered meanwhile.
(c) outage: a steady 100 messages/s for --outage + 60 s, the receiver down for the first
    --outage seconds; the time from its return until the backlog is gone, with the default
    retry policy (backoff 1 s doubling, capped at 300 s, with jitter).

The destination is the test relay, not the portal simulator: this measures the engine (queue,
claims, audit), not the portal adapter's session and look-up calls. Results: benchmarks/results/<date>-delivery.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model, cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

LUA = r"""
local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  prefix = args[1] .. "-" .. tid
end
request = function()
  counter = counter + 1
  local body = string.format('{"version":1,"dossier_no":"%s-%d","procedure_code":"1.001193",' ..
    '"applicant":{"name":"Nguyen Van An","type":"citizen"},"received_at":"2026-11-30T08:15:00+07:00",' ..
    '"due_at":"2026-12-05T17:00:00+07:00","status":"received","summary":"Dang ky khai sinh"}', prefix, counter)
  return wrk.format("POST", "/api/portal/v1/dossiers", nil, body)
end
"""


def _pending(rig) -> int:
    from sqlalchemy import func, select

    from lgsp.storage import engine_for
    from lgsp.storage.schema import delivery_messages as M

    with engine_for(rig.db_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(M).where(
            M.c.status.in_(("accepted", "failed", "delivering")))).scalar() or 0


def _count(rig, prefix: str) -> int:
    from sqlalchemy import func, select

    from lgsp.storage import engine_for
    from lgsp.storage.schema import delivery_messages as M

    with engine_for(rig.db_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(M).where(M.c.msg_key.like(f"{prefix}-%"))).scalar() or 0


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and their descendants (from /proc)."""
    return sum(cpu_seconds(pid) for pid in pids)


def server(rig) -> tuple[float, int]:
    """PostgreSQL's side of our database (0, 0 on SQLite): CPU seconds of its backends serving it (from
    /proc: the server runs on this machine; a backend that ended meanwhile is not counted) and the
    transactions committed in it (reads included)."""
    if not rig.db_url.startswith("postgresql"):
        return 0.0, 0
    from sqlalchemy import text

    from lgsp.storage import engine_for

    with engine_for(rig.db_url).connect() as conn:
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND pid <> pg_backend_pid()")).scalars().all()
        commits = conn.execute(text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                                    )).scalar() or 0
    return _cpu_seconds([int(p) for p in pids]), int(commits)


def _server_delta(before: tuple[float, int], after: tuple[float, int], messages: int) -> dict:
    n = max(messages, 1)
    return {"pg_cpu_ms": (after[0] - before[0]) * 1000 / n, "commits_per_message": (after[1] - before[1]) / n}


def _pg(d: dict) -> str:
    return f"  PG server CPU {d['pg_cpu_ms']:.2f} ms/message, {d['commits_per_message']:.2f} commits/message" \
        if d.get("pg_cpu_ms") else ""


def accept(rig, token: str, prefix: str, duration: int, connections: int) -> dict:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(LUA)
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
           "-H", f"Authorization: Bearer {token}", "-H", "X-Purpose: administrative-procedure",
           "-H", "Content-Type: application/json", rig.url, "--", prefix]
    cpu0, server0 = _cpu_seconds([rig.gateway.proc.pid]), server(rig)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    cpu, server1 = _cpu_seconds([rig.gateway.proc.pid]) - cpu0, server(rig)
    script.unlink()
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    stored = _count(rig, prefix)
    return {"stored": stored, "per_s": stored / duration, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "cpu_ms": cpu * 1000 / max(stored, 1), **_server_delta(server0, server1, stored),
            "p50_ms": _ms(p50), "p99_ms": _ms(p99), "wrk_requests": int(re.search(r"(\d+) requests in", out).group(1))}


def _ms(match) -> float:
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def drain(rig, workers: int, backlog: int, prefix: str) -> dict:
    """Time from the first delivery to the last (the workers' start-up is not the queue's speed)."""
    procs = [rig.start_worker() for _ in range(workers)]
    while _delivered(rig, prefix) == 0:  # the workers' start-up (imports) is not the queue's cost
        time.sleep(0.05)
    pids = [p.proc.pid for p in procs]
    cpu0, receiver0, done0 = _cpu_seconds(pids), _cpu_seconds([rig.receiver.proc.pid]), _delivered(rig, prefix)
    server0 = server(rig)
    while _pending(rig) > 0:
        time.sleep(0.25)
    cpu, receiver = _cpu_seconds(pids) - cpu0, _cpu_seconds([rig.receiver.proc.pid]) - receiver0
    server1 = server(rig)
    done = max(_delivered(rig, prefix) - done0, 1)
    for p in procs:
        p.stop()
    rig.workers.clear()
    elapsed = _span(rig, prefix)
    return {"workers": workers, "messages": backlog, "seconds": elapsed, "per_s": backlog / elapsed,
            "cpu_ms": cpu * 1000 / done, "receiver_cpu_ms": receiver * 1000 / done,
            **_server_delta(server0, server1, done)}


def beside(rig, token: str, workers: int, prefix: str, duration: int, connections: int, nice: int = 0) -> dict:
    """(b'): acceptance load while `workers` delivery workers run and deliver what comes in."""
    from helpers import free_port, wait_for

    procs = [rig.start_worker(metrics_port=free_port(), LGSP_DELIVERY_NICE=str(nice)) for _ in range(workers)]
    for p in procs:  # started and listening: their start-up (imports) is not the acceptance's cost
        wait_for(p.url + "/metrics", timeout=120, proc=p.proc)
    time.sleep(1)
    pids = [p.proc.pid for p in procs]
    cpu0 = _cpu_seconds(pids)
    a = accept(rig, token, prefix, duration, connections)
    a["workers_cpu_s"] = _cpu_seconds(pids) - cpu0
    a["delivered_meanwhile"] = _delivered(rig, prefix)
    while _pending(rig) > 0:
        time.sleep(0.25)
    a["claims"] = sum(_claims(p.url) for p in procs)
    for p in procs:
        p.stop()
    rig.workers.clear()
    return a


def _claims(metrics_url: str) -> int:
    """A worker's claim transactions so far (its /metrics; 0 if it has none to tell)."""
    import httpx

    text = httpx.get(metrics_url + "/metrics").text
    return int(sum(float(m) for m in re.findall(r'^lgsp_delivery_claims_total\{[^}]*\} ([0-9.e+]+)$', text, re.M)))


def _delivered(rig, prefix: str) -> int:
    from sqlalchemy import func, select

    from lgsp.storage import engine_for
    from lgsp.storage.schema import delivery_messages as M

    with engine_for(rig.db_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(M).where(
            M.c.msg_key.like(f"{prefix}-%"), M.c.status == "delivered")).scalar() or 0


def _span(rig, prefix: str) -> float:
    from sqlalchemy import func, select

    from lgsp.delivery.store import utc
    from lgsp.storage import engine_for
    from lgsp.storage.schema import delivery_messages as M

    with engine_for(rig.db_url).connect() as conn:
        first, last = conn.execute(select(func.min(M.c.finished_at), func.max(M.c.finished_at))
                                   .where(M.c.msg_key.like(f"{prefix}-%"))).one()
    return max((utc(last) - utc(first)).total_seconds(), 0.001)


def _steady(rig, token: str, prefix: str, rate: float, seconds: float, counts: dict) -> None:
    """Send `rate` dossiers a second for `seconds` from a pool of threads (a slow answer never holds
    the schedule up); counts["sent"], counts["acked"] (202s) as they happen."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    lock = threading.Lock()
    auth = {"Authorization": f"Bearer {token}", "X-Purpose": "administrative-procedure"}
    with httpx.Client(base_url=rig.url, timeout=30, limits=httpx.Limits(max_connections=64)) as client:

        def one(n: int) -> None:
            body = {"version": 1, "dossier_no": f"{prefix}-{n}", "procedure_code": "1.001193",
                    "applicant": {"name": "Nguyen Van An", "type": "citizen"},
                    "received_at": "2026-11-30T08:15:00+07:00", "status": "received"}
            try:
                ok = client.post("/api/portal/v1/dossiers", json=body, headers=auth).status_code == 202
            except httpx.HTTPError:
                ok = False
            with lock:
                counts["acked"] += ok

        with ThreadPoolExecutor(64) as pool:
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < seconds:
                while counts["sent"] < int(elapsed * rate):
                    counts["sent"] += 1
                    pool.submit(one, counts["sent"])
                time.sleep(0.005)


def outage(rig, token: str, outage_s: int, rate: int = 100, after_s: int = 60) -> dict:
    """The receiver down for `outage_s` seconds under a steady `rate`/s, then up for `after_s` more
    seconds of the same load: how long from its return until the backlog is gone (no more than one
    second's arrivals waiting)."""
    import threading

    worker = rig.start_worker()
    rig.faults("down")
    counts = {"sent": 0, "acked": 0}
    load = threading.Thread(target=_steady, args=(rig, token, "OUT", rate, outage_s + after_s, counts), daemon=True)
    load.start()
    time.sleep(outage_s)
    result: dict = {"backlog_at_return": _pending(rig), "drain_seconds": None}
    rig.faults("normal")
    back = time.monotonic()
    print(f"outage  receiver back after {outage_s} s: {result['backlog_at_return']} waiting, "
          f"{counts['acked']} of {counts['sent']} acknowledged so far", flush=True)
    while time.monotonic() - back < 900:
        time.sleep(0.5)
        waiting = _pending(rig)
        if waiting <= rate:
            result["drain_seconds"] = time.monotonic() - back
            break
    load.join()
    while _pending(rig) > 0 and time.monotonic() - back < 900:  # the load's tail, so the receiver's count is whole
        time.sleep(0.5)
    result.update(sent=counts["sent"], acked=counts["acked"])
    worker.stop()
    rig.workers.clear()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a PostgreSQL server's URL (a fresh database is made on it)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of acceptance load per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64, help="deliveries in flight per worker process")
    parser.add_argument("--outage-only", action="store_true", help="only (c)")
    parser.add_argument("--outage", type=int, default=60, help="seconds the receiver is down in (c); 0 skips (c)")
    parser.add_argument("--beside", default="4", help="(b'): accept while this many workers run (comma list; 0 skips)")
    parser.add_argument("--worker-nice", type=int, default=0, help="(b'): LGSP_DELIVERY_NICE of its workers")
    parser.add_argument("--only-beside", action="store_true", help="only (b') (after the warm-up)")
    parser.add_argument("--out", help="results file (default benchmarks/results/<date>-delivery.md)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (Debian package wrk)")
    work = Path(tempfile.mkdtemp(prefix="lgsp-delivery-bench-"))
    os.environ.update({"LGSP_HOME": str(work), "LGSP_SECRET_KEY": secrets.token_urlsafe(32),
                       "LGSP_EGRESS_ALLOW": "127.0.0.0/8", "LGSP_LOG_LEVEL": "WARNING"})
    drop = None
    if args.database_url:
        from helpers import postgres_database

        url, drop = postgres_database(args.database_url)
        kind = "postgresql"
    else:
        url, kind = f"sqlite:///{work / 'bench.db'}", "sqlite"
    os.environ["LGSP_DATABASE_URL"] = url
    from delivery_rig import make_rig

    from lgsp.storage import upgrade

    upgrade(url)
    rig = make_rig(url, work, LGSP_DELIVERY_CONCURRENCY=str(args.concurrency), LGSP_DELIVERY_BACKOFF="1", LGSP_DELIVERY_BACKOFF_CAP="300", LGSP_DELIVERY_LEASE="60",
                   LGSP_DELIVERY_POLL="0.2", LGSP_LOG_LEVEL="WARNING")
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {_cpu()}  Python {platform.python_version()}  "
             f"{kind}", f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", "```"]
    try:
        rig.start_gateway("--workers", "2", worker_in_process=False)
        token = rig.token()
        accept(rig, token, "WARM", 2, 8)  # warm-up: adapters built, caches filled
        drain(rig, 1, _pending(rig), "WARM")
        for workers in (() if args.outage_only or args.only_beside else (1, 4)):
            token = rig.token()  # fresh for each phase (tokens are short-lived)
            a = accept(rig, token, f"A{workers}", args.duration, args.connections)
            lines.append(f"accept  {a['stored']:6d} stored in {args.duration} s = {a['per_s']:7.0f} messages/s   "
                         f"202 p50 {a['p50_ms']:.1f} ms  p99 {a['p99_ms']:.1f} ms  non-2xx {a['non_2xx']}  "
                         f"CPU {a['cpu_ms']:.2f} ms/message{_pg(a)}  (wrk -c{args.connections}, "
                         f"load {os.getloadavg()[0]:.1f})")
            d = drain(rig, workers, a["stored"], f"A{workers}")
            lines.append(f"drain   {d['messages']:6d} by {workers} worker(s) in {d['seconds']:6.1f} s (first to last "
                         f"delivery) = "
                         f"{d['per_s']:7.0f} delivered/s  CPU {d['cpu_ms']:.2f} ms/message (receiver "
                         f"{d['receiver_cpu_ms']:.2f}){_pg(d)}  (load {os.getloadavg()[0]:.1f})")
            print("\n".join(lines[-2:]), flush=True)
        for workers in (() if args.outage_only else [int(n) for n in args.beside.split(",") if int(n) > 0]):
            b = beside(rig, rig.token(), workers, f"B{workers}", args.duration, args.connections, args.worker_nice)
            lines.append(f"accept  {b['stored']:6d} stored in {args.duration} s = {b['per_s']:7.0f} messages/s   "
                         f"202 p50 {b['p50_ms']:.1f} ms  p99 {b['p99_ms']:.1f} ms  non-2xx {b['non_2xx']}  "
                         f"CPU {b['cpu_ms']:.2f} ms/message{_pg(b)}  beside {workers} delivering worker(s) "
                         f"(nice {args.worker_nice}): "
                         f"{b['delivered_meanwhile']} delivered meanwhile, their CPU "
                         f"{b['workers_cpu_s'] * 1000 / max(b['delivered_meanwhile'], 1):.2f} ms/delivery, "
                         f"{b['claims']} claims (with the drain after)  "
                         f"(wrk -c{args.connections}, load {os.getloadavg()[0]:.1f})")
            print(lines[-1], flush=True)
        if args.outage and not args.only_beside:
            o = outage(rig, rig.token(), args.outage)  # a fresh token: the first may have expired by now
            drained = f"{o['drain_seconds']:.1f} s" if o["drain_seconds"] is not None else "not within 900 s"
            lines.append(f"outage  {args.outage} s down at 100 messages/s ({o['sent']} sent, {o['acked']} acknowledged): "
                         f"backlog {o['backlog_at_return']} at return, drained {drained} after it (1 worker)")
            print(lines[-1], flush=True)
        record = rig.record()
        lines.append(f"receiver: {len(record['applied'])} applied, {record['duplicates']} duplicates recognised")
    finally:
        rig.stop()
        if drop:
            from lgsp.audit.writer import close_writers
            from lgsp.storage import engine_for

            close_writers()  # this process's writer (the rig's admin records) before its database goes

            engine_for(url).dispose()
            drop()
    lines.append("```")
    print("\n".join(lines))
    out = Path(args.out) if args.out else \
        ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d', time.gmtime())}-delivery.md"
    header = "" if out.exists() else ("# benchmarks/delivery.py — dated results\n\nEach entry is one run of "
                                      "`.venv/bin/python benchmarks/delivery.py …` on the machine named.\n")
    with out.open("a") as fh:
        fh.write(header + "\n" + "\n".join(lines) + "\n")


def _cpu() -> str:
    return f"{cpu_model()}, {os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
