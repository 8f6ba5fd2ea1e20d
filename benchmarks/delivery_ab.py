"""A/B of store-and-forward on one busy box: two checkouts' gateways up at once, runs interleaved.

Side A runs another checkout's code (e.g. `git archive main | tar -x -C /tmp/main`), side B this one;
each on a database of its own (SQLite, or a fresh database each on --database-url). Each round runs,
on both sides in alternating order, benchmarks/delivery.py's acceptance load (wrk) and, with
--drain N, the drain of what it accepted by N `lgsp serve --plane worker` processes. Printed: the
median over the rounds of messages/s, the 202's p99, CPU ms per message from /proc (gateway; workers
and PostgreSQL's backends for the drain), and B/A.

    .venv/bin/python benchmarks/delivery_ab.py --base /tmp/main [--rounds 5] [--duration 8]
        [--connections 16] [--drain 1] [--database-url postgresql://…/postgres]
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import delivery as bench
from ab import import_path
from machine import cpu_model, speed_probe


def side(work: Path, name: str, base: Path | None, database_url: str | None, drops: list):
    from delivery_rig import RELAY, make_rig

    from lgsp.storage import upgrade

    if database_url:
        from helpers import postgres_database

        url, drop = postgres_database(database_url)
        drops.append((url, drop))
    else:
        url = f"sqlite:///{work / f'{name}.db'}"
    upgrade(url)  # this checkout's migrations: side A's schema may lack only what B adds
    folder = work / name
    folder.mkdir()
    rig = make_rig(url, folder, LGSP_DELIVERY_CONCURRENCY="64", LGSP_DELIVERY_BACKOFF="1",
                   LGSP_DELIVERY_BACKOFF_CAP="300", LGSP_DELIVERY_LEASE="60", LGSP_DELIVERY_POLL="0.2",
                   LGSP_LOG_LEVEL="WARNING")
    rig.env["LGSP_DATABASE_URL"] = url
    if base is not None:
        rig.env["PYTHONPATH"] = os.pathsep.join((str(import_path(folder, base)), str(RELAY)))
    rig.start_gateway("--workers", "2", worker_in_process=False)
    bench.accept(rig, rig.token(), "WARM", 2, 8)
    bench.drain(rig, 1, bench._pending(rig), "WARM")
    return rig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="directory of the checkout to compare against (A)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8, help="seconds of acceptance load per run")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--drain", type=int, default=0, help="also drain each run's messages with this many workers")
    ap.add_argument("--database-url", help="a PostgreSQL server's URL (a fresh database per side)")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; {speed_probe()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lgsp-delivery-ab-"))
    os.environ.update({"LGSP_HOME": str(work), "LGSP_SECRET_KEY": secrets.token_urlsafe(32),
                       "LGSP_EGRESS_ALLOW": "127.0.0.0/8", "LGSP_LOG_LEVEL": "WARNING"})
    os.chdir(work)  # `python -m` puts the working directory first on sys.path: never a checkout
    rigs: dict = {}
    drops: list = []
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    try:
        rigs["A"] = side(work, "A", args.base.resolve(), args.database_url, drops)
        rigs["B"] = side(work, "B", None, args.database_url, drops)
        for r in range(args.rounds):
            for s in ("A", "B") if r % 2 == 0 else ("B", "A"):
                rig = rigs[s]
                a = bench.accept(rig, rig.token(), f"R{r}", args.duration, args.connections)
                row = {"rate": a["per_s"], "p99": a["p99_ms"], "cpu": a["cpu_ms"], "pg": a.get("pg_cpu_ms", 0.0),
                       "non2xx": a["non_2xx"]}
                if args.drain:
                    d = bench.drain(rig, args.drain, a["stored"], f"R{r}")
                    row.update(drain=d["per_s"], wcpu=d["cpu_ms"], wpg=d.get("pg_cpu_ms", 0.0))
                runs[s].append(row)
                print(f"round {r} {s}: {row}", flush=True)
    finally:
        for rig in rigs.values():
            rig.stop()
        from lgsp.audit.writer import close_writers
        from lgsp.storage import engine_for

        close_writers()
        for url, drop in drops:
            engine_for(url).dispose()
            drop()
        shutil.rmtree(work, ignore_errors=True)
    keys = ["rate", "p99", "cpu", "pg"] + (["drain", "wcpu", "wpg"] if args.drain else [])
    names = {"rate": "accepted/s", "p99": "202 p99 ms", "cpu": "gateway CPU ms/msg", "pg": "PG CPU ms/msg (accept)",
             "drain": f"delivered/s ({args.drain} worker)", "wcpu": "worker CPU ms/msg", "wpg": "PG CPU ms/msg (drain)"}
    print(f"\nA = {args.base.resolve()}, B = this checkout; {'PostgreSQL' if args.database_url else 'SQLite'}, "
          f"wrk -c{args.connections} {args.duration} s, median of {args.rounds} interleaved rounds")
    print(f"{'':26} {'A':>9} {'B':>9} {'B/A':>6}")
    for k in keys:
        ma, mb = (statistics.median(x[k] for x in runs[s]) for s in ("A", "B"))
        print(f"{names[k]:26} {ma:9.2f} {mb:9.2f} {mb / ma if ma else float('nan'):6.2f}")
    if any(x["non2xx"] for v in runs.values() for x in v):
        sys.exit("FAILED: non-2xx answers")


if __name__ == "__main__":
    main()
