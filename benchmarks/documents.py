"""Documents routed by a real gateway on loopback, beside the bare cost of reading and verifying them.

    .venv/bin/python benchmarks/documents.py [--count 40] [--big-count 6] [--concurrency 4] [--postgres URL]
                                             [--memory-only] [--before DIR]

A throw-away database (SQLite unless --postgres), a CA, two local agencies with their clients and grants,
and `lgsp serve` (one worker process, delivery and poller off) with the CA trusted. Figures:

  documents/s   signed packages of 100 KB and 10 MB POSTed to /api/documents/v1/outbox (read, schema,
                manifest, sender, recipients, signature, trace header, stored in chunks with the audit
                record), `concurrency` senders; CPU ms per document from /proc of the gateway process;
                reference: the same packages read and verified in this process (edxml.read +
                signature.verify), one at a time — the work the gateway cannot avoid
  latency       send → the item listed in the recipient's inbox (p50/p90/max)
  memory        the gateway's resident set (VmRSS, sampled every 20 ms) while one 100 KB, one 10 MB, one
                50 MB package, then two 50 MB packages at once stream in, against its idle size, and its
                peak (VmHWM); each in a fresh gateway. Bounded means: the growth does not follow the size.
                With --before DIR (a directory holding another version's `lgsp` package, e.g. made by
                `git archive main lgsp | tar -x -C DIR`), the same rows for a gateway running that code,
                side by side.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from machine import cpu_model, cpu_seconds, free_port, peak_rss_while, proc_status

ROOT = Path(__file__).resolve().parent.parent
SENDER, RECIPIENT = "000.00.31.H30", "000.00.32.H30"
SERVICES = ("documents.send", "documents.inbox.list", "documents.inbox.get", "documents.inbox.status",
            "documents.outbox.get")


def package(signer, size: int) -> bytes:
    from lgsp.documents import testkit

    per_file = min(size * 3 // 4, 5 * 1024 * 1024)
    count = max(1, round(size / (per_file * 4 / 3)))
    files = [(f"phu-luc-{n}.pdf", "application/pdf", os.urandom(per_file)) for n in range(count)]
    return testkit.signed_package(signer, SENDER, [RECIPIENT], files)


def setup(tmp: Path, db_url: str | None) -> tuple[dict, dict, object]:
    from lgsp import keys
    from lgsp.control.admin import Admin
    from lgsp.documents import testkit
    from lgsp.documents.agencies import Directory
    from lgsp.storage import engine_for, upgrade

    url = db_url or f"sqlite:///{tmp / 'documents.db'}"
    env = {"LGSP_DATABASE_URL": url, "LGSP_DOCUMENT_TRUSTED_CAS": str(tmp / "ca.pem"),
           "LGSP_DOCUMENT_MAX_BYTES": str(64 * 1024 * 1024), "LGSP_DELIVERY_WORKER": "0", "LGSP_DOCUMENT_POLL": "0",
           "LGSP_HOME": str(tmp), "LGSP_SECRET_KEY": os.environ.get("LGSP_SECRET_KEY") or secrets.token_urlsafe(32),
           "LGSP_LOG_LEVEL": "WARNING"}
    os.environ.update(env)
    from lgsp.config import settings

    settings.cache_clear()
    upgrade(url)
    engine = engine_for(url)
    admin = Admin(engine, "benchmark")
    admin.register_spec_services()
    keys.ensure_key(engine)
    clients = {}
    for code, client in ((SENDER, "bench-sender"), (RECIPIENT, "bench-recipient")):
        clients[code] = (client, admin.create_client(client, client))
        Directory(engine, "benchmark").set(code, name=client, client_id=client)
        for service in SERVICES:
            admin.add_grant(client, service, ["items" if service.endswith(".list") else "id"], ["bench"])
    ca = testkit.make_ca()
    (tmp / "ca.pem").write_bytes(ca.cert_pem)
    return env, clients, testkit.make_signer(ca, SENDER)


def start_gateway(env: dict, tmp: Path, code: str | None = None) -> tuple[subprocess.Popen, str]:
    """`lgsp serve`, of this checkout or, with ``code``, of the lgsp package in that directory (run from
    ``tmp``: `python -m` puts its working directory first on the path)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = {"PYTHONPATH": code} if code else {}
    proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port)], cwd=tmp,
                            env={**os.environ, **env, **extra, "LGSP_PUBLIC_URL": url},
                            stdout=open(tmp / "gw.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the gateway did not start: " + (tmp / "gw.log").read_text()[-2000:])


def token(url: str, client: tuple[str, str]) -> str:
    r = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials"}, auth=client)
    r.raise_for_status()
    return r.json()["access_token"]


async def route(url: str, tokens: dict, data: bytes, count: int, concurrency: int, pid: int) -> dict:
    """`count` sends of `data` by `concurrency` senders; each send's latency until listed in the inbox."""
    sender = {"Authorization": f"Bearer {tokens[SENDER]}", "Content-Type": "application/xml"}
    reader = {"Authorization": f"Bearer {tokens[RECIPIENT]}"}
    latencies: list[float] = []
    queue = list(range(count))
    async with httpx.AsyncClient(timeout=300) as client:
        async def one_sender() -> None:
            while queue:
                queue.pop()
                started = time.perf_counter()
                r = await client.post(f"{url}/api/documents/v1/outbox", content=data, headers=sender)
                assert r.status_code == 202, r.text
                doc_id = r.json()["id"]
                while True:
                    items = (await client.get(f"{url}/api/documents/v1/inbox", headers=reader)).json()["items"]
                    if doc_id in [i["id"] for i in items]:
                        break
                latencies.append(time.perf_counter() - started)
                ack = await client.post(f"{url}/api/documents/v1/inbox/{doc_id}/status", json={"status": "done"},
                                        headers=reader)
                assert ack.status_code == 200, ack.text

        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(one_sender() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall0, cpu_seconds(pid) - cpu0
    latencies.sort()
    return {"docs_s": count / wall, "cpu_ms": cpu * 1000 / count, "p50": statistics.median(latencies),
            "p90": latencies[int(0.9 * (len(latencies) - 1))], "max": latencies[-1]}


def reference(data: bytes, count: int, trust_path: Path) -> dict:
    from lgsp.documents import edxml, signature

    trust = signature.TrustStore.load(trust_path)
    started = time.process_time()
    for _ in range(count):
        pkg, root = edxml.read(data)
        signature.verify(data, root, pkg, trust)
    cpu = time.process_time() - started
    return {"docs_s": count / cpu, "cpu_ms": cpu * 1000 / count}


def memory_while(url: str, tokens: dict, data: bytes, pid: int, senders: int = 1) -> int:
    """The gateway's largest VmRSS while ``data`` is sent by ``senders`` clients at once (sampled every 20 ms)."""
    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*(client.post(
                f"{url}/api/documents/v1/outbox", content=data,
                headers={"Authorization": f"Bearer {tokens[SENDER]}", "Content-Type": "application/xml"})
                for _ in range(senders)))

    answers, peak = peak_rss_while(pid, lambda: asyncio.run(send()))
    assert all(r.status_code == 202 for r in answers), [r.text for r in answers]
    return peak


def measure_memory(env: dict, tmp: Path, clients: dict, sizes: dict, code: str | None) -> list[tuple]:
    rows = []
    for label, senders in (("100 KB", 1), ("10 MB", 1), ("50 MB", 1), ("50 MB", 2)):  # each in a fresh gateway:
        proc, url = start_gateway(env, tmp, code)                                     # its own peak
        try:
            tokens = {c: token(url, client) for c, client in clients.items()}
            asyncio.run(route(url, tokens, sizes["100 KB"], 4, 2, proc.pid))  # warm-up
            idle = proc_status(proc.pid, "VmRSS")
            peak = memory_while(url, tokens, sizes[label], proc.pid, senders)
            rows.append((f"{senders} × {label}" if senders > 1 else label, len(sizes[label]), idle, peak,
                         proc_status(proc.pid, "VmHWM")))
        finally:
            proc.terminate()
            proc.wait(15)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=40, help="100 KB documents")
    parser.add_argument("--big-count", type=int, default=6, help="10 MB documents")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a database is created and dropped)")
    parser.add_argument("--memory-only", action="store_true", help="only the memory figures")
    parser.add_argument("--before", help="a directory with another version's lgsp package: its memory rows beside")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        db_url, drop = None, None
        if args.postgres:
            sys.path.insert(0, str(ROOT / "tests"))
            from helpers import postgres_database

            db_url, drop = postgres_database(args.postgres)
        env, clients, signer = setup(tmp, db_url)
        sizes = {"100 KB": package(signer, 100 * 1024), "10 MB": package(signer, 10 * 1024 * 1024),
                 "50 MB": package(signer, 50 * 1024 * 1024)}
        proc, url = start_gateway(env, tmp)
        try:
            tokens = {code: token(url, client) for code, client in clients.items()}
            asyncio.run(route(url, tokens, sizes["100 KB"], 4, 2, proc.pid))  # warm-up
            rows = []
            for label, count in () if args.memory_only else (("100 KB", args.count), ("10 MB", args.big_count)):
                got = asyncio.run(route(url, tokens, sizes[label], count, args.concurrency, proc.pid))
                ref = reference(sizes[label], max(2, count // 4), tmp / "ca.pem")
                rows.append((label, len(sizes[label]), count, got, ref))
        finally:
            proc.terminate()
            proc.wait(15)
        memory = [(args.before, row) for row in measure_memory(env, tmp, clients, sizes, args.before)] \
            if args.before else []
        memory += [(None, row) for row in measure_memory(env, tmp, clients, sizes, None)]
        if drop:
            from lgsp.storage import engine_for

            engine_for(db_url).dispose()
            drop()
    mib = 1024 * 1024
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cpus); database: {'PostgreSQL' if args.postgres else 'SQLite'}; "
          f"concurrency {args.concurrency}; one gateway worker")
    print(f"{'package':>8} {'bytes':>10} {'n':>4} | {'gateway docs/s':>14} {'CPU ms/doc':>10} "
          f"{'send→inbox p50':>14} {'p90':>7} {'max':>7} | {'reference docs/s':>16} {'CPU ms/doc':>10}")
    for label, size, count, got, ref in rows:
        print(f"{label:>8} {size:>10,} {count:>4} | {got['docs_s']:>14.1f} {got['cpu_ms']:>10.1f} "
              f"{got['p50'] * 1000:>12.0f}ms {got['p90'] * 1000:>5.0f}ms {got['max'] * 1000:>5.0f}ms | "
              f"{ref['docs_s']:>16.1f} {ref['cpu_ms']:>10.1f}")
    print("memory, a fresh gateway per size (idle after a warm-up, then the package(s) sent):")
    for code, (label, size, idle, peak, hwm) in memory:
        if label == "100 KB":
            print(f" code: {code or 'this checkout'}")
        print(f"  {label:>10} package ({size / mib:5.1f} MiB): idle {idle / mib:.0f} MiB, "
              f"peak RSS {peak / mib:.0f} MiB "
              f"(VmHWM {hwm / mib:.0f}), +{(hwm - idle) / mib:.0f} MiB = {(hwm - idle) / size:.2f} × the package")


if __name__ == "__main__":
    main()
