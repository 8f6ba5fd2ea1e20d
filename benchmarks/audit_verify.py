"""How fast `lgsp audit verify` gets through a large trail: full (old code, new serial, new parallel)
and incremental, in one run on one machine.

    .venv/bin/python benchmarks/audit_verify.py [--records 1000000] [--chains 4] [--database-url URL]
                                                [--jobs N] [--legacy-rev REV] [--save]

Fills a fresh database fast (records hashed and sealed exactly as the writer does, sealed every
1,000 records, inserted in bulk; COPY on PostgreSQL): one long chain of half the records (one
long-running gateway process) and the rest spread over the other chains. Then times:

  legacy      the verifier as it was at --legacy-rev (read from git), one process;
  full, 1 job the new verifier in one process;
  full        the new verifier with --jobs worker processes (default: CPU count);
  incremental after a checkpoint, with --new-records more records written since.

Wall-clock figures depend on what else runs on the machine (load average printed); CPU seconds
(this process and its workers) are printed too, as records per CPU-second. --save appends the
result to benchmarks/results/audit_verify.md with the date and CPU model.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import resource
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
LEGACY_REV = "d178321"  # the verifier before parallel segments and checkpoints (issue 15)


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def fill(engine, records: int, chains: int, *, start_at: dt.datetime, first_seq: int = 1, chain_ids=None,
         heads=None, close: bool = True) -> dict[str, tuple[int, str]]:
    """Write `records` records over `chains` chains (the first holds half), sealed as the writer does."""
    from sqlalchemy import insert

    from lgsp.audit import seals
    from lgsp.audit.writer import GENESIS, record_hash
    from lgsp.storage.schema import audit_records, audit_seals

    signer = seals.signer(engine)
    sizes = [records] if chains == 1 else [records // 2] + [records // 2 // (chains - 1)] * (chains - 1)
    sizes[-1] += records - sum(sizes)
    chain_ids = chain_ids or [f"bench-{c}:{1000 + c}:{secrets.token_hex(4)}" for c in range(chains)]
    heads = dict(heads or {})
    postgres = engine.dialect.name == "postgresql"
    written = 0
    for c, (chain, size) in enumerate(zip(chain_ids, sizes)):
        seq, head = heads.get(chain, (0, GENESIS))
        rows, chain_seals = [], ([] if seq else [signer.seal(chain, 0, GENESIS, "start")])
        for n in range(size):
            seq += 1
            i = written + n
            row = {"chain": chain, "seq": seq, "prev_hash": head, "at": start_at + dt.timedelta(microseconds=i * 997),
                   "kind": "exchange", "request_id": f"r{c}-{seq}", "door": "rest", "client_id": f"client-{i % 40}",
                   "agency_code": None, "officer": f"officer-{i % 700}", "purpose": "administrative-procedure",
                   "service": "population.citizen.get", "outcome": "ok", "status": 200, "error_code": None,
                   "latency_ms": round(3 + (i % 997) / 100, 3), "fields": ["personal_id", "full_name", "birth_date"],
                   "subject_hash": secrets.token_hex(32), "upstream": None, "trace_id": None, "request_bytes": None,
                   "response_bytes": 900, "response_sha256": secrets.token_hex(32), "detail": None}
            row["hash"] = head = record_hash(row)
            rows.append(row)
            last = n == size - 1
            if seq % 1000 == 0 or (last and close):
                chain_seals.append(signer.seal(chain, seq, head, "shutdown" if last and close else "interval"))
            if len(rows) == 20_000 or last:
                if postgres:
                    _copy(engine, rows)
                else:
                    with engine.begin() as conn:
                        conn.execute(insert(audit_records), rows)
                with engine.begin() as conn:
                    if chain_seals:
                        conn.execute(insert(audit_seals), chain_seals)
                rows, chain_seals = [], []
        written += size
        heads[chain] = (seq, head)
    return heads


def _copy(engine, rows: list[dict]) -> None:
    import orjson

    columns = list(rows[0])
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(f"COPY audit_records ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([orjson.dumps(v).decode() if k in ("fields", "detail") and v is not None else v
                                for k, v in row.items()])
        raw.commit()
    finally:
        raw.close()


def legacy_verifier(rev: str):
    """The verifier module as it was at `rev`, or None if git cannot show it."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:lgsp/audit/verify.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("lgsp_legacy_audit_verify", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:lgsp/audit/verify.py", "exec"), module.__dict__)
    return module


def timed(label: str, fn, records_of=lambda r: r.records) -> dict:
    load = os.getloadavg()[0]
    cpu, started = cpu_seconds(), time.perf_counter()
    report = fn()
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    assert report.ok, report.findings[:3]
    n = records_of(report)
    line = (f"{label:<22} {n:>11,} records {seconds:8.2f} s {n / seconds:>11,.0f} records/s   "
            f"cpu {cpu:7.2f} s {n / cpu if cpu else 0:>11,.0f} records/cpu-s   load {load:.1f}")
    print(line, flush=True)
    return {"label": label, "records": n, "seconds": seconds, "rate": n / seconds, "cpu_rate": n / cpu if cpu else 0,
            "line": line}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--new-records", type=int, default=10_000, help="written after the checkpoint (incremental)")
    ap.add_argument("--database-url", help="default: SQLite in a temporary directory")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--legacy-rev", default=LEGACY_REV)
    ap.add_argument("--skip-legacy", action="store_true")
    ap.add_argument("--save", action="store_true", help="append the result to benchmarks/results/audit_verify.md")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="lgsp-verify-bench-")
    os.environ.setdefault("LGSP_HOME", home)
    os.environ.setdefault("LGSP_SECRET_KEY", secrets.token_urlsafe(32))
    url = args.database_url or f"sqlite:///{home}/audit.db"

    from lgsp.audit import checkpoint as audit_checkpoint
    from lgsp.audit import seals
    from lgsp.audit.verify import verify_database
    from lgsp.storage import engine_for, upgrade

    upgrade(url)
    engine = engine_for(url)
    header = (f"{dt.date.today()}  {cpu_model()}, {os.cpu_count()} CPUs  Python {platform.python_version()}  "
              f"{engine.dialect.name} {sqlite3.sqlite_version if engine.dialect.name == 'sqlite' else ''}".rstrip())
    print(header)
    started = time.perf_counter()
    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    chain_ids = [f"bench-{c}:{1000 + c}:{secrets.token_hex(4)}" for c in range(args.chains)]
    live = chain_ids[0]
    heads = fill(engine, args.records, args.chains, start_at=base, chain_ids=chain_ids, close=False)
    print(f"filled {args.records:,} records in {args.chains} chains in {time.perf_counter() - started:.0f} s",
          flush=True)

    results = []
    if not args.skip_legacy:
        legacy = legacy_verifier(args.legacy_rev)
        if legacy is None:
            print(f"legacy: git cannot show {args.legacy_rev}:lgsp/audit/verify.py; skipped")
        else:
            results.append(timed(f"full, legacy {args.legacy_rev}", lambda: legacy.verify_database(engine)))
    results.append(timed("full, 1 job", lambda: verify_database(engine, jobs=1)))
    full = None

    def parallel():
        nonlocal full
        full = verify_database(engine, jobs=args.jobs)
        return full
    results.append(timed(f"full, {args.jobs} jobs", parallel))
    audit_checkpoint.record(engine, full)
    fill(engine, args.new_records, 1, start_at=base + dt.timedelta(days=1), chain_ids=[live], heads=heads, close=False)
    results.append(timed(f"incremental (+{args.new_records:,})", lambda: verify_database(engine, incremental=True)))
    ratio = None
    if not args.skip_legacy and len(results) == 4:
        old, one, many = results[0], results[1], results[2]
        ratio = (f"vs legacy: full, {args.jobs} jobs {many['rate'] / old['rate']:.1f}x, full, 1 job "
                 f"{one['rate'] / old['rate']:.1f}x (wall clock); "
                 f"{one['cpu_rate'] / old['cpu_rate']:.1f}x per CPU-second")
        print(ratio)
    if args.save:
        out = ROOT / "benchmarks" / "results" / "audit_verify.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            shown = " ".join(engine.url.render_as_string(hide_password=True) if a == args.database_url else a
                             for a in sys.argv[1:])
            f.write(f"\n## {header}\n`{shown or '(defaults)'}`, {args.records:,} records, "
                    f"{args.chains} chains, seal keys {len(seals.public_keys(engine))}\n```\n")
            f.write("\n".join(r["line"] for r in results) + "\n")
            if ratio:
                f.write(ratio + "\n")
            f.write("```\n")
        print(f"saved to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
