"""What recording the other persons of an answer costs the audit writer: exchanges per second
when each exchange is one record (a citizen look-up) and when it is several committed together
(a household of five: the person asked about and four others, lgsp.pipeline.subjects).

    .venv/bin/python benchmarks/audit_other_persons.py [--exchanges 3000] [--persons 5] [--concurrency 16]
                                                      [--database-url URL]

One writer (one gateway process's chain) on a fresh database (a temporary SQLite file unless
--database-url names an empty PostgreSQL database), `--concurrency` exchanges waiting at a time,
rounds alternating so a noisy neighbour hits both kinds alike. Prints the CPU model and load.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import tempfile
import time

from machine import cpu_model


def record(i: int, person: int, subject_hash) -> dict:
    return {"at": dt.datetime.now(dt.UTC), "kind": "exchange", "request_id": f"bench-{i}", "door": "rest",
            "client_id": "residence-desk", "purpose": "residence", "service": "population.household.get",
            "outcome": "ok", "status": 200, "fields": ["full_name", "relationship"],
            "subject_hash": subject_hash(f"{person:012d}"), "response_sha256": "0" * 64}


async def round_(writer, subject_hash, exchanges: int, persons: int, concurrency: int, start: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            records = [record(i, (start + i) * persons + j, subject_hash) for j in range(persons)]
            await (writer.commit_all(records) if persons > 1 else writer.commit(records[0]))

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(exchanges)))
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exchanges", type=int, default=3000)
    ap.add_argument("--persons", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="lgsp-bench-")
    os.environ.setdefault("LGSP_HOME", workdir)
    os.environ.setdefault("LGSP_SECRET_KEY", secrets.token_urlsafe(32))
    from lgsp.audit.writer import AuditWriter
    from lgsp.crypto import subject_hash
    from lgsp.storage import engine_for, upgrade

    url = args.database_url or f"sqlite:///{workdir}/bench.db"
    upgrade(url)
    writer = AuditWriter(engine_for(url))
    print(f"{cpu_model()}, load {os.getloadavg()[0]:.2f}, {url.split(':')[0]}, concurrency {args.concurrency}")
    start = 0
    try:
        for _ in range(args.rounds):
            for persons in (1, args.persons):
                seconds = asyncio.run(round_(writer, subject_hash, args.exchanges, persons, args.concurrency, start))
                start += args.exchanges
                print(f"{persons} record(s) per exchange: {args.exchanges / seconds:,.0f} exchanges/s, "
                      f"{args.exchanges * persons / seconds:,.0f} records/s")
    finally:
        writer.close()


if __name__ == "__main__":
    main()
