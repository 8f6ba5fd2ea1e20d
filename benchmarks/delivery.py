"""Store-and-forward delivery: acceptance rate, drain rate, and drain after an outage.

    .venv/bin/python benchmarks/delivery.py                                   # SQLite in a temporary directory
    .venv/bin/python benchmarks/delivery.py --database-url postgresql://…/postgres   # a fresh database on that server

(a) acceptance: wrk posts dossiers (each a new dossier number) to POST /api/portal/v1/dossiers
    through the whole pipeline (token, grant, purpose, schema, meaning checks, the message stored
    in its audit record's transaction); messages/s durably accepted (202, counted in the
    database) and the 202's p99. The gateway runs `--workers 2` with no delivery worker in it.
(b) drain: the backlog (a)) left, delivered by 1 and by 4 `lgsp serve --plane worker` processes to
    a receiver on loopback (the tests' relay receiver: it applies each message once); delivered/s.
(c) outage: a steady 100 messages/s for --outage + 60 s, the receiver down for the first
    --outage seconds; the time from its return until the backlog is gone, with the default
    retry policy (backoff 1 s doubling, capped at 300 s, with jitter).

The destination is the test relay, not the portal simulator: this measures the engine (queue,
claims, audit), not the portal adapter's session and look-up calls. Results: benchmarks/results/.
"""
from __future__ import annotations

import argparse
import asyncio
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
            M.c.status.in_(("accepted", "failed", "delivering")))).scalar()


def _count(rig, prefix: str) -> int:
    from sqlalchemy import func, select

    from lgsp.storage import engine_for
    from lgsp.storage.schema import delivery_messages as M

    with engine_for(rig.db_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(M).where(M.c.msg_key.like(f"{prefix}-%"))).scalar()


def accept(rig, token: str, prefix: str, duration: int, connections: int) -> dict:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(LUA)
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
           "-H", f"Authorization: Bearer {token}", "-H", "X-Purpose: administrative-procedure",
           "-H", "Content-Type: application/json", rig.url, "--", prefix]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    script.unlink()
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    stored = _count(rig, prefix)
    return {"stored": stored, "per_s": stored / duration, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "p50_ms": _ms(p50), "p99_ms": _ms(p99), "wrk_requests": int(re.search(r"(\d+) requests in", out).group(1))}


def _ms(match) -> float:
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def drain(rig, workers: int, backlog: int, prefix: str) -> dict:
    """Time from the first delivery to the last (the workers' start-up is not the queue's speed)."""
    procs = [rig.start_worker() for _ in range(workers)]
    while _pending(rig) > 0:
        time.sleep(0.25)
    for p in procs:
        p.stop()
    rig.workers.clear()
    elapsed = _span(rig, prefix)
    return {"workers": workers, "messages": backlog, "seconds": elapsed, "per_s": backlog / elapsed}


def _span(rig, prefix: str) -> float:
    from sqlalchemy import func, select

    from lgsp.delivery.store import utc
    from lgsp.storage import engine_for
    from lgsp.storage.schema import delivery_messages as M

    with engine_for(rig.db_url).connect() as conn:
        first, last = conn.execute(select(func.min(M.c.finished_at), func.max(M.c.finished_at))
                                   .where(M.c.msg_key.like(f"{prefix}-%"))).one()
    return max((utc(last) - utc(first)).total_seconds(), 0.001)


async def _steady(rig, token: str, prefix: str, rate: float, seconds: float) -> tuple[int, int]:
    """Send `rate` dossiers a second for `seconds`; (sent, acknowledged with 202)."""
    import httpx

    sent = 0
    async with httpx.AsyncClient(base_url=rig.url, timeout=10) as client:
        start = time.monotonic()
        tasks = []
        while (now := time.monotonic() - start) < seconds:
            due = int(now * rate)
            while sent < due:
                sent += 1
                body = {"version": 1, "dossier_no": f"{prefix}-{sent}", "procedure_code": "1.001193",
                        "applicant": {"name": "Nguyen Van An", "type": "citizen"},
                        "received_at": "2026-11-30T08:15:00+07:00", "status": "received"}
                tasks.append(asyncio.create_task(client.post(
                    "/api/portal/v1/dossiers", json=body,
                    headers={"Authorization": f"Bearer {token}", "X-Purpose": "administrative-procedure"})))
            await asyncio.sleep(0.01)
        answers = await asyncio.gather(*tasks, return_exceptions=True)
    return sent, sum(1 for a in answers if not isinstance(a, BaseException) and a.status_code == 202)


def outage(rig, token: str, outage_s: int) -> dict:
    worker = rig.start_worker()
    rig.faults("down")
    total = outage_s + 60
    result: dict = {}

    async def run():
        load = asyncio.create_task(_steady(rig, token, "OUT", 100, total))
        await asyncio.sleep(outage_s)
        result["backlog_at_return"] = await asyncio.to_thread(_pending, rig)
        rig.faults("normal")
        back = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            # Drained: what is left is no more than the last second's arrivals.
            if await asyncio.to_thread(_pending, rig) <= 100:
                result["drain_seconds"] = time.monotonic() - back
                break
            if time.monotonic() - back > 900:
                result["drain_seconds"] = None
                break
        result["sent"], result["acked"] = await load

    asyncio.run(run())
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
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (Debian package wrk)")
    work = Path(tempfile.mkdtemp(prefix="lgsp-delivery-bench-"))
    os.environ.update({"LGSP_HOME": str(work), "LGSP_SECRET_KEY": secrets.token_urlsafe(32),
                       "LGSP_EGRESS_ALLOW": "127.0.0.0/8", "LGSP_LOG_LEVEL": "WARNING"})
    drop = None
    if args.database_url:
        from conftest import _postgres_database

        url, drop = _postgres_database(args.database_url)
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
        for workers in (() if args.outage_only else (1, 4)):
            token = rig.token()  # fresh for each phase (tokens are short-lived)
            a = accept(rig, token, f"A{workers}", args.duration, args.connections)
            lines.append(f"accept  {a['stored']:6d} stored in {args.duration} s = {a['per_s']:7.0f} messages/s   "
                         f"202 p50 {a['p50_ms']:.1f} ms  p99 {a['p99_ms']:.1f} ms  non-2xx {a['non_2xx']}  "
                         f"(wrk -c{args.connections}, load {os.getloadavg()[0]:.1f})")
            d = drain(rig, workers, a["stored"], f"A{workers}")
            lines.append(f"drain   {d['messages']:6d} by {workers} worker(s) in {d['seconds']:6.1f} s (first to last "
                         f"delivery) = "
                         f"{d['per_s']:7.0f} delivered/s   (load {os.getloadavg()[0]:.1f})")
            print("\n".join(lines[-2:]), flush=True)
        if args.outage:
            o = outage(rig, rig.token(), args.outage)  # a fresh token: the first may have expired by now
            drained = f"{o['drain_seconds']:.1f} s" if o["drain_seconds"] is not None else "not within 900 s"
            lines.append(f"outage  {args.outage} s down at 100 messages/s ({o['sent']} sent, {o['acked']} acknowledged): backlog "
                         f"{o['backlog_at_return']} at return, drained {drained} after it (1 worker)")
            print(lines[-1], flush=True)
        record = rig.record()
        lines.append(f"receiver: {len(record['applied'])} applied, {record['duplicates']} duplicates recognised")
    finally:
        rig.stop()
        if drop:
            from lgsp.storage import engine_for

            engine_for(url).dispose()
            drop()
    lines.append("```")
    print("\n".join(lines))
    out = ROOT / "benchmarks" / "results" / "delivery.md"
    header = "" if out.exists() else ("# benchmarks/delivery.py — dated results\n\nEach entry is one run of "
                                      "`.venv/bin/python benchmarks/delivery.py …` on the machine named.\n")
    with out.open("a") as fh:
        fh.write(header + "\n" + "\n".join(lines) + "\n")


def _cpu() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
