"""Where an LGSP worker's memory goes, step by step, so a change to what a worker loads is measured.

    .venv/bin/python benchmarks/memory.py [--workers 2] [--duration 5] [--database-url URL]

Part 1, imports: a fresh interpreter's resident memory (VmRSS) after each thing a worker of
`lgsp serve` loads, in the order it loads them (uvicorn's spawned worker re-imports lgsp.cli,
then the app factory imports lgsp.app and assembles the planes), then what a worker builds later,
on the first request that needs it: the token endpoint, connexion's app of the shared APIs.

Part 2, a live gateway: `lgsp serve` in front of the same recorded upstreams as benchmarks/run.py,
and the resident (VmRSS) and peak (VmHWM) memory of every LGSP process (the supervisor first, then
the workers) after start-up, the first token, the first exchange of each door, wrk load on each
door, and last the control plane's pages (console, admin API), which the data plane never needs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import run as bench
from machine import cpu_model, free_port, memory_mib, speed_probe

from lgsp.demo import stop

# What a worker imports, in order; each line is run after the ones above it in one interpreter.
IMPORT_STEPS = [
    ("python", "pass"),
    ("uvicorn (the worker's server)", "import uvicorn, uvloop, httptools"),
    ("lgsp.cli (re-imported by the spawned worker)", "import lgsp.cli"),
    ("sqlalchemy", "import sqlalchemy"),
    ("lgsp.app", "import lgsp.app"),
    ("lgsp.app.combined() (the app factory)", "import lgsp.app; app = lgsp.app.combined()"),
    ("[not at start] the token endpoint (first token request)",
     "import lgsp.control.token_endpoint"),
    ("[not at start] connexion's shared APIs (first declined request)",
     "from lgsp.gateway import Gateway; gw = Gateway(); lgsp.app.shared_apis_app(gw, lgsp.app.gateway_pages(gw))"),
]
# What the app factory must not load (lazily built on a request that needs it); checked after the factory.
WATCHED = ("connexion", "flask", "jinja2", "requests", "rich", "zeep", "alembic", "signxml", "authlib",
           "lgsp.control.console", "lgsp.control.plane", "lgsp.control.admin_api", "lgsp.control.token_endpoint")
FACTORY_STEP = 5  # the index of the app factory in IMPORT_STEPS


def import_table(env: dict) -> list[tuple[str, float]]:
    """VmRSS after each import step, in one fresh interpreter, and which watched packages got loaded."""
    code = ["import sys, warnings", "warnings.simplefilter('ignore')",
            "def rss():\n    return next(int(l.split()[1]) / 1024 for l in open('/proc/self/status')"
            " if l.startswith('VmRSS'))"]
    for i, (_, step) in enumerate(IMPORT_STEPS):
        code += [step, f"print({i}, rss())"]
        if i == FACTORY_STEP:
            code.append(f"loaded = [m for m in {WATCHED!r} if m in sys.modules]")
    code.append("print('loaded', *loaded)")
    out = subprocess.run([sys.executable, "-c", "\n".join(code)], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    rows = [(IMPORT_STEPS[int(line.split()[0])][0], float(line.split()[1])) for line in out[:-1]]
    rows.append(("loaded by the factory: " + (" ".join(out[-1].split()[1:]) or "none of " + ", ".join(WATCHED)), 0.0))
    return rows


def memory(root: int) -> tuple[list[float], list[float]]:
    """VmRSS and VmHWM (MiB) of every LGSP process under root (multiprocessing's tracker left out)."""
    rows = [row for row in memory_mib(root, "VmRSS", "VmHWM") if len(row) == 2]
    return [rss for rss, _ in rows], [hwm for _, hwm in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=int, default=5, help="seconds of wrk load per door (50 connections)")
    ap.add_argument("--database-url", help="the gateway's database (default: SQLite in a temporary home)")
    args = ap.parse_args()
    bench.ensure_tools()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; {speed_probe()}\n")
    work = Path(tempfile.mkdtemp(prefix="lgsp-memory-"))
    work.chmod(0o755)
    procs: list[subprocess.Popen] = []
    try:
        env = dict(os.environ, LGSP_HOME=str(work / "imports"), LGSP_SECRET_KEY="x" * 43)
        print(f"{'imports, in a fresh interpreter':64} {'VmRSS MiB':>10} {'step MiB':>9}")
        previous = None
        for name, mib in import_table(env):
            if name.startswith("loaded"):
                print(name)
                continue
            print(f"{name:64} {mib:>10.1f} {mib - previous if previous else 0:>9.1f}")
            previous = mib
        pid, answer = bench.record_population(work)
        enterprise, token_answer, details = bench.record_business(work)
        up = free_port()
        procs.append(bench.start_nginx(work, answer, token_answer, details, up, free_port()))
        database_url = args.database_url
        if database_url and database_url.startswith("postgresql") and "lgsp_bench_" not in database_url:
            database_url = bench.fresh_postgres_database(database_url)
        gw = bench.start_lgsp(work, up, args.workers, database_url, token=False)
        procs.append(gw.proc)
        print(f"\nlive gateway on {gw.database}, {args.workers} workers; per process: supervisor, workers")
        print(f"{'after':40} {'VmRSS MiB':>28}   {'VmHWM MiB (peak)':>28}")

        def show(stage: str) -> None:
            rss, hwm = memory(gw.proc.pid)
            print(f"{stage:40} {str(rss):>28}   {str(hwm):>28}", flush=True)

        show("start-up")
        gw.issue_token()
        show("first token")
        rest, door, business = bench.lgsp_targets(work, gw, "", pid, enterprise)
        for target, name in ((rest, "REST"), (door, "SOAP door"), (business, "business REST")):
            bench.probe(target)
            show(f"first {name} exchange")
        for target, name in ((rest, "REST"), (door, "SOAP door"), (business, "business REST")):
            result = bench.wrk(target.url, 50, args.duration, target.script)
            if result["non2xx"]:
                sys.exit(f"{name}: {result['non2xx']} non-2xx answers under load")
            show(f"{args.duration} s of {name} at 50 connections")
        for path, name in (("/console/login", "console sign-in page"), ("/admin/v1/clients", "admin API (no token)")):
            httpx.get(gw.url + path, timeout=60)  # builds the control plane: seconds on a busy box
            show(name)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
