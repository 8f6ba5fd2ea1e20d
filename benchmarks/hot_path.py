"""The pieces of an exchange's hot path, timed in CPU per call, for this checkout beside another.

A benchmark of the whole gateway (benchmarks/run.py, ab.py) on a box shared with other work moves
by ±20 % from run to run; the CPU a piece of code takes per call, run alone in a process, moves far
less. Each round runs this file's pieces in a fresh process on this checkout (B) and on --base (A),
in alternating order, and the median CPU µs per call of each piece is printed side by side:

    .venv/bin/python benchmarks/hot_path.py --base /path/to/other/checkout [--rounds 5] [--n 2000]

The pieces use the code's public functions, so both checkouts run the same calls on the same data:
a recorded population answer (SOAP) parsed into its dict, a SOAP door request read and its answer
written, the metrics and log line of an exchange (prometheus multiprocess mode, as with several
workers), and durable audit commits on SQLite (synchronous=FULL) with 50 exchanges waiting at once and
with one (and on PostgreSQL, synchronous_commit=on, with --postgres URL).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import run as bench

ANSWER = {"citizen": {"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "gender": "male",
                      "birth_date": "1985-03-12",
                      "permanent_address": {"province": "01", "district": "001", "ward": "00001",
                                            "detail": "Số 12, tổ 3", "country": "VN"},
                      "current_address": {"province": "01", "district": "001", "ward": "00001",
                                          "detail": "Số 12, tổ 3", "country": "VN"}}}


def per_call(fn: Callable[[], Any], n: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) * 1e6 / n


def pieces(answer_file: Path, n: int, work: Path) -> dict[str, float]:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")
    (work / "metrics").mkdir()
    os.environ["LGSP_HOME"] = str(work / "home")
    from lgsp import soap, specs
    from lgsp.doors import soap as door
    from lgsp.pipeline.exchange import Exchange
    from lgsp.pipeline.run import observe

    out = {"REST fast path: match, check, build exchange": fast_path(n)}
    content = answer_file.read_bytes()
    out["population mapping: citizen.get to canonical"] = mapping(n)
    out["population answer: parse, body, to_dict"] = per_call(
        lambda: soap.to_dict(soap.body_of(soap.parse(content)).findall("{*}CongDan")[0]), n)
    contract = door.Contract(specs.wsdl_dir() / "lgsp" / "lgsp.wsdl")
    request = bench.DOOR_REQUEST.format(pid="001085012345", purpose=bench.PURPOSE).encode()
    out["SOAP door: read a request"] = per_call(
        lambda: door.read_request(contract, request, "text/xml; charset=utf-8"), n)
    req, _ = door.read_request(contract, request, "text/xml; charset=utf-8")
    ex = Exchange(door="soap", request_id="r1", service_name="population.citizen.get", params={})
    ex.answer = ANSWER["citizen"]
    req.operation = contract.operations["PopulationCitizenGet"]
    out["SOAP door: write an answer"] = per_call(lambda: door.renderer(req)(ex), n)
    ex.client, ex.service = SimpleNamespace(client_id="bench-client"), SimpleNamespace()  # type: ignore[assignment]
    out["metrics and log line of an exchange"] = per_call(lambda: observe(ex), n)
    sqlite = f"sqlite:///{work / 'audit.db'}"
    out["audit commit, 50 waiting (SQLite FULL)"] = audit_commit(sqlite, n, 50)
    out["audit commit, 1 waiting (SQLite FULL)"] = audit_commit(sqlite, n // 10, 1)
    postgres = os.environ.get("LGSP_BENCH_POSTGRES")
    if postgres:  # a fresh database per child, on the server --postgres names
        database = bench.fresh_postgres_database(postgres)
        out["audit commit, 50 waiting (PostgreSQL)"] = audit_commit(database, n, 50)
        out["audit commit, 1 waiting (PostgreSQL)"] = audit_commit(database, n // 10, 1)
    return out


def mapping(n: int) -> float:
    """The declarative mapping of one recorded citizen (the tests' legacy fixture) to canonical."""
    from lgsp.mapping.compile import load_mapping
    root = Path(__file__).resolve().parents[1]
    given = json.loads((root / "tests" / "fixtures" / "population_citizen_legacy.input.json")
                       .read_text(encoding="utf-8"))
    compiled = load_mapping(root / "adapters" / "population" / "mapping.yaml")
    return per_call(lambda: compiled.apply("citizen.get", given["CongDan"], given["meta"]), n)


def fast_path(n: int) -> float:
    from lgsp import specs
    from lgsp.doors import rest_exchange as rest
    from lgsp.doors import routes

    documents = [specs.document(api.path) for api in specs.shared_apis() if api.door == "rest"]
    fast = routes.FastPath(None, None, rest.exchange_of, documents)  # type: ignore[arg-type]
    token = "eyJ" + "x" * 700  # a bearer token's usual length
    scope = {"type": "http", "method": "GET", "path": "/api/population/v1/citizens/001085012345",
             "query_string": b"", "client": ("127.0.0.1", 50000),
             "headers": [(b"host", b"127.0.0.1:8080"), (b"authorization", f"Bearer {token}".encode()),
                         (b"x-purpose", bench.PURPOSE.encode()), (b"x-on-behalf-of", b"bench-officer")]}

    def one() -> Any:
        found = fast.match(scope)
        assert found is not None
        route, params, headers = found
        return rest.exchange_of(headers, scope, route.service, params)

    return per_call(one, n)


def audit_commit(url: str, n: int, waiting: int) -> float:
    """CPU of this process (the exchanges' loop and the writer thread) per durable commit of a record,
    `waiting` exchanges at once; a database server's own CPU is not counted."""
    from lgsp.audit.writer import AuditRecord, AuditWriter
    from lgsp.storage.db import engine_for, upgrade

    engine = engine_for(url)
    upgrade(url)
    writer = AuditWriter(engine, seal_every=100_000, seal_seconds=3600)
    record: AuditRecord = {"at": dt.datetime.now(dt.timezone.utc), "kind": "exchange", "request_id": "r1",
                           "door": "rest", "outcome": "ok", "status": 200, "latency_ms": 1.0, "fields": ["full_name"],
                           "response_bytes": 10, "response_sha256": "0" * 64}

    async def rounds(count: int) -> None:
        for _ in range(count):
            await asyncio.gather(*(writer.commit(record.copy()) for _ in range(waiting)))

    asyncio.run(rounds(2))
    count = max(n // waiting, 4)
    start = time.process_time()
    asyncio.run(rounds(count))
    cpu = (time.process_time() - start) * 1e6 / (count * waiting)
    writer.close()
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, help="directory of the checkout to compare against (A)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000, help="calls per piece per round")
    ap.add_argument("--postgres", metavar="URL", help="also time audit commits on this PostgreSQL server")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(pieces(args.child, args.n, Path(work))))
        return
    from machine import cpu_model, speed_probe
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; {speed_probe()}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        answer = Path(work) / "answer.xml"
        answer.write_bytes(bench.record_population(Path(work))[1])
        sides = {"B": None, **({"A": args.base.resolve()} if args.base else {})}
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
        for r in range(args.rounds):
            for side in sorted(sides, reverse=r % 2 == 1):
                env = dict(os.environ, **({"LGSP_BENCH_POSTGRES": args.postgres} if args.postgres else {}))
                if sides[side] is not None:
                    env["PYTHONPATH"] = str(sides[side])
                out = subprocess.run([sys.executable, __file__, "--child", str(answer), "--n", str(args.n)], env=env,
                                     capture_output=True, text=True, check=True).stdout
                runs[side].append(json.loads(out.strip().splitlines()[-1]))
                print(f"  round {r + 1}/{args.rounds}: {side} done", flush=True)
    names = list(runs["B"][0])
    print(f"\nCPU µs per call, median of {args.rounds} rounds of {args.n} calls"
          + (f"; A = {args.base.resolve()}, B = this checkout" if args.base else "") + "\n")
    print(f"{'piece':42} " + " ".join(f"{s:>8}" for s in sorted(sides)) + ("      B/A" if args.base else ""))
    for name in names:
        med = {s: statistics.median(x[name] for x in runs[s]) for s in sides}
        ratio = f"   {med['B'] / med['A']:6.2f}" if args.base else ""
        print(f"{name:42} " + " ".join(f"{med[s]:8.1f}" for s in sorted(sides)) + ratio)


if __name__ == "__main__":
    main()
