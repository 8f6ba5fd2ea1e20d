"""A/B of two checkouts of the LGSP on one busy box: both gateways up at once, wrk runs interleaved.

Back-to-back runs of benchmarks/run.py drift with whatever else the shared box does; here the two
gateways (this checkout and --base, another checkout's directory, e.g. from `git worktree add` or
`git archive`) serve the same recorded upstream side by side, and each round measures every row on
both, in alternating order. Printed: the median over the rounds of CPU ms per answered request (all the
gateway's processes, from /proc), req/s, p50 and p99, and B/A; and, as benchmarks/run.py does at one
connection, each side's added latency: its p50 less the p50 of a plain nginx proxy hop measured in the
same rounds (with `--connections 1`, issue 12's added-latency target as a ratio to the other side).

    .venv/bin/python benchmarks/ab.py --base /path/to/other/checkout [--rounds 5] [--duration 5]
        [--connections 50] [--workers 2] [--rows rest,soap,business] [--postgres URL]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import run as bench
from machine import cpu_model, free_port, speed_probe

from lgsp.demo import stop

# The installed top-level names and the checkout's folders behind them (pyproject.toml's package-dir).
PACKAGES = {"lgsp": "lgsp", "lgsp_adapters": "adapters", "lgsp_openapi": "openapi", "lgsp_wsdl": "wsdl",
            "lgsp_schemas": "schemas"}


def import_path(work: Path, code: Path) -> Path:
    """A directory whose packages are those of the checkout `code`, under their installed names: first on
    the path of side A's processes, so it runs A's adapters, specs and WSDL too, not only A's lgsp (this
    checkout's editable install maps lgsp_adapters & co. to its own folders)."""
    shim = work / "side-a-path"
    shim.mkdir(exist_ok=True)
    for name, folder in PACKAGES.items():
        if (code / folder).is_dir():
            (shim / name).symlink_to(code / folder)
    return shim


def start(work: Path, up: int, workers: int, code: Path | None, postgres: str | None) -> bench.Gateway:
    """A gateway on this checkout's code, or on the code of `code` (put first on the path of its processes);
    its audit on SQLite, or in a fresh database of the PostgreSQL server `postgres`."""
    saved = os.environ.get("PYTHONPATH")
    if code is not None:
        os.environ["PYTHONPATH"] = str(import_path(work, code))
    try:
        return bench.start_lgsp(work, up, workers, bench.fresh_postgres_database(postgres) if postgres else None)
    finally:
        if code is not None:
            if saved is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="directory of the checkout to compare against (A)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows", default="rest,soap,business")
    ap.add_argument("--postgres", metavar="URL", help="both gateways on this PostgreSQL server (a database each)")
    args = ap.parse_args()
    if not (args.base / "lgsp" / "__init__.py").exists():
        sys.exit(f"{args.base} is not a checkout of the LGSP")
    bench.ensure_tools()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; {speed_probe()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lgsp-ab-"))
    work.chmod(0o755)
    # `python -m` puts the working directory first on sys.path: run both sides from here, not from a
    # checkout, or side A would import this checkout's lgsp beside its own specs.
    os.chdir(work)
    procs: list = []
    try:
        pid, answer = bench.record_population(work)
        enterprise, token_answer, details = bench.record_business(work)
        up, hop = free_port(), free_port()
        procs.append(bench.start_nginx(work, answer, token_answer, details, up, hop))
        a = start(work, up, args.workers, args.base.resolve(), args.postgres)
        procs.append(a.proc)
        b = start(work, up, args.workers, None, args.postgres)
        procs.append(b.proc)
        index = {"rest": 0, "soap": 1, "business": 2}
        rows = [index[r] for r in args.rows.split(",")]
        targets = {side: bench.lgsp_targets(work, gw, f" {side}", pid, enterprise) for side, gw in (("A", a), ("B", b))}
        soap = bench.lua(work, "soap", "POST", {"Content-Type": "text/xml; charset=utf-8",
                                                "SOAPAction": "TraCuuThongTinCongDan"},
                         bench.SOAP_REQUEST.format(pid=pid))
        # The plain proxy hop, measured in the same rounds: the gateway's added latency is its p50 less this one's.
        hop_target = bench.Target("nginx proxy hop", f"http://127.0.0.1:{hop}/dancu", soap, procs[0].pid)
        for row_targets in targets.values():
            for t in row_targets:
                bench.probe(t)
        runs: dict[tuple[int, str], list[dict]] = {}
        once = argparse.Namespace(repeat=1, duration=args.duration)
        progress = [0, args.rounds * (len(rows) * 2 + 1)]
        hops: list[dict] = []
        for r in range(args.rounds):
            for row in rows:
                for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    runs.setdefault((row, side), []).append(
                        bench.measure(targets[side][row], args.connections, once, progress))
            hops.append(bench.measure(hop_target, args.connections, once, progress))
        print(f"\nA = {args.base.resolve()}, B = this checkout; {args.workers} workers, "
              f"{'PostgreSQL' if args.postgres else 'SQLite'}, "
              f"{args.connections} connections, median of {args.rounds} interleaved runs of {args.duration} s\n")
        hop_p50 = statistics.median(x["p50"] for x in hops)
        print(f"nginx proxy hop: p50 {hop_p50:.2f} ms (median of {len(hops)}); "
              f"added = the row's p50 less the hop's\n")
        print(f"{'row':28} {'A CPU ms':>9} {'B CPU ms':>9} {'B/A':>6} {'A req/s':>8} {'B req/s':>8} "
              f"{'A p50':>7} {'B p50':>7} {'A p99':>7} {'B p99':>7} {'A added':>8} {'B added':>8} {'B/A':>5} non-2xx")
        for row in rows:
            med = {s: {k: statistics.median(x[k] for x in runs[(row, s)]) for k in ("cpu_ms", "rps", "p50", "p99")}
                   for s in ("A", "B")}
            added = {s: med[s]["p50"] - hop_p50 for s in ("A", "B")}
            bad = sum(x["non2xx"] for s in ("A", "B") for x in runs[(row, s)])
            name = targets["A"][row].name.removesuffix(" A")
            print(f"{name:28} {med['A']['cpu_ms']:9.3f} {med['B']['cpu_ms']:9.3f} "
                  f"{med['B']['cpu_ms'] / med['A']['cpu_ms']:6.2f} {med['A']['rps']:8.0f} {med['B']['rps']:8.0f} "
                  f"{med['A']['p50']:7.2f} {med['B']['p50']:7.2f} {med['A']['p99']:7.1f} {med['B']['p99']:7.1f} "
                  f"{added['A']:8.2f} {added['B']:8.2f} {added['B'] / added['A']:5.2f} {bad}")
        if any(x["non2xx"] for v in runs.values() for x in v):
            sys.exit("FAILED: non-2xx answers")
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
