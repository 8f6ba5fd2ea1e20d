"""How long `lgsp audit verify` takes on an untouched log.

    .venv/bin/python benchmarks/audit_verify.py [--records 100000] [--database-url URL]

Writes the records through the real group-commit writer (sealed every 1,000
records, as in production) into a fresh database, then times the verifier.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--database-url", help="default: SQLite in a temporary directory")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="lgsp-verify-bench-")
    os.environ.setdefault("LGSP_HOME", home)
    os.environ.setdefault("LGSP_SECRET_KEY", secrets.token_urlsafe(32))
    url = args.database_url or f"sqlite:///{home}/audit.db"

    from lgsp.audit import AuditWriter
    from lgsp.audit_verify import verify_database
    from lgsp.storage import engine_for, upgrade

    upgrade(url)
    engine = engine_for(url)
    writer = AuditWriter(engine, batch_max=512)
    started = time.perf_counter()

    async def fill() -> None:
        sem = asyncio.Semaphore(512)

        async def one(i: int) -> None:
            async with sem:
                await writer.commit({
                    "at": dt.datetime.now(dt.timezone.utc), "kind": "exchange", "request_id": f"r{i}", "door": "rest",
                    "client_id": f"client-{i % 40}", "officer": f"officer-{i % 700}", "purpose": "administrative-procedure",
                    "service": "population.citizen.get", "outcome": "ok", "status": 200,
                    "fields": ["personal_id", "full_name", "birth_date"], "latency_ms": 3.2,
                    "subject_hash": secrets.token_hex(32), "response_bytes": 900, "response_sha256": secrets.token_hex(32),
                })
                if i and i % 20_000 == 0:
                    print(f"  written {i:,}", flush=True)

        await asyncio.gather(*(one(i) for i in range(args.records)))

    asyncio.run(fill())
    writer.close()
    print(f"wrote {args.records:,} records in {time.perf_counter() - started:.1f} s")
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        report = verify_database(engine)
        timings.append(time.perf_counter() - started)
        assert report.ok, report.findings[:3]
    timings.sort()
    print(f"verify: {report.records:,} records, {report.seals} seals, {report.chains} chain(s): "
          f"median {timings[1]:.2f} s ({report.records / timings[1]:,.0f} records/s)")


if __name__ == "__main__":
    main()
