"""Gateway benchmark: one command, every door measured side by side in one run.

    (a) upstream   — nginx answering a recorded simulator SOAP answer (the fixed, fast backend)
    (b) nginx hop  — an nginx reverse proxy in front of (a): the cost of one plain proxy hop
    (c) LGSP REST  — the full pipeline in front of (a): token validation, grant, purpose, SOAP call
                     through the adapter, mapping, minimisation, durable (group-committed) audit
    (d) LGSP SOAP  — the same lookup through the SOAP door (CallService, bearer token)
    (e) LGSP business — a REST upstream (the business registry, recorded answer behind nginx)

Each is driven by wrk at 1 and 50 connections; every cell is run `--repeat` times and the
median reported, because the machine is shared and noisy. Printed beside wrk's own figures:
CPU time per answered request of the measured server's processes (all of them, from /proc),
so runs on machines of different speed compare by ratio; the CPU model and a one-line speed
probe; peak resident memory per LGSP worker; and a check that every answered request has its
audit record. Non-2xx answers are counted and fail the run.

    .venv/bin/python benchmarks/run.py [--duration 10] [--repeat 3] [--workers 2]
        [--scaling 1,2,4] [--postgres URL] [--json FILE]

--scaling re-runs the REST row at 50 connections with each worker count; --postgres adds the
REST row with the audit on that PostgreSQL server (a fresh database is created in it). Its runs
alternate with the SQLite REST row's (drift on a shared box hits both), each after a CHECKPOINT and
a pause (--pg-pause), and print the server's side per request (benchmarks/pg_side.py): commits,
rows written and read, CPU of the database's backends, WAL flushes. --only REGEX keeps the rows
whose name matches (e.g. --only REST to compare the two databases quickly).

Needs nginx and wrk (Debian packages); installs them with apt-get if missing and root.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from machine import cpu_model, cpu_seconds, free_port, metric_samples, peak_rss_mib, speed_probe, wait
from pg_side import PgSide

from lgsp.demo import stop

ROOT = Path(__file__).resolve().parent.parent
PURPOSE = "administrative-procedure"
LOOKUP_FIELDS = "personal_id,full_name,gender,birth_date,permanent_address,current_address"
BUSINESS_FIELDS = "enterprise_code,name,founding_date,status,head_office"
BUSINESS_ACCOUNT = ("lgsp-bench-province", "bench-upstream-secret")
SOAP_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:dc="http://dancuquocgia.bca">
<soap:Body><dc:TraCuuThongTinCongDan><dc:MaYeuCau>bench</dc:MaYeuCau><dc:MaDVC>037</dc:MaDVC>
<dc:MaTichHop>BENCH</dc:MaTichHop><dc:MaDonVi>000.00.31.H30</dc:MaDonVi><dc:MaCanBo>bench</dc:MaCanBo>
<dc:TaiKhoan>bench</dc:TaiKhoan><dc:SoDinhDanh>{pid}</dc:SoDinhDanh></dc:TraCuuThongTinCongDan></soap:Body>
</soap:Envelope>"""
# What a SOAP-only one-stop-shop sends to the LGSP's SOAP door (shape of the served WSDL).
DOOR_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:l="urn:lgsp:soap:v1">
<soap:Body><l:CallService><l:service>population.citizen.get</l:service>
<l:param><l:name>personal_id</l:name><l:value>{pid}</l:value></l:param>
<l:purpose>{purpose}</l:purpose><l:on_behalf_of>bench-officer</l:on_behalf_of></l:CallService></soap:Body>
</soap:Envelope>"""


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: install the Debian packages nginx-light and wrk")
    print(f"installing {' '.join(missing)} (Debian packages)…", flush=True)
    subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk",
                   shell=True, check=True, stdout=subprocess.DEVNULL)


# -- the recorded upstreams ------------------------------------------------------------------

def record_population(work: Path) -> tuple[str, bytes]:
    """Start the population simulator once and record a real lookup answer for a known citizen."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lgsp_adapters.population.simulator", "--port", str(port)],
                            stdout=open(work / "sim.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait(f"http://127.0.0.1:{port}/dancu?wsdl")
        listed = subprocess.run([sys.executable, "-m", "lgsp_adapters.population.simulator", "--list", "1"],
                                capture_output=True, text=True, check=True).stdout
        pid = re.findall(r"^(\d{12})\t", listed, re.M)[0]
        r = httpx.post(f"http://127.0.0.1:{port}/dancu", content=SOAP_REQUEST.format(pid=pid).encode(),
                       headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "TraCuuThongTinCongDan"})
        r.raise_for_status()
        return pid, r.content
    finally:
        stop([proc])


def record_business(work: Path) -> tuple[str, bytes, bytes]:
    """Record the business registry simulator's token answer and one enterprise's details."""
    port = free_port()
    sim = [sys.executable, "-m", "lgsp_adapters.business.simulator"]
    account = ["--client-id", BUSINESS_ACCOUNT[0], "--client-secret", BUSINESS_ACCOUNT[1]]
    proc = subprocess.Popen([*sim, "--port", str(port), *account],
                            stdout=open(work / "business-sim.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait(f"http://127.0.0.1:{port}/")
        listed = subprocess.run([*sim, "--list", "1"], capture_output=True, text=True, check=True).stdout
        code = re.findall(r"^(\d{10}(?:-\d{3})?)\t", listed, re.M)[0]
        token = httpx.post(f"http://127.0.0.1:{port}/token", data={"grant_type": "client_credentials"},
                           auth=BUSINESS_ACCOUNT)
        token.raise_for_status()
        details = httpx.get(f"http://127.0.0.1:{port}/apiCSDLDKDN/1.0/chiTietDoanhNghiep", params={"msdn": code},
                            headers={"Authorization": f"Bearer {token.json()['access_token']}"})
        details.raise_for_status()
        return code, token.content, details.content
    finally:
        stop([proc])


def start_nginx(work: Path, answer: bytes, token: bytes, enterprise: bytes, up_port: int,
                proxy_port: int) -> subprocess.Popen:
    (work / "answer.xml").write_bytes(answer)
    (work / "dancu").write_bytes(answer)  # a POST to an existing static file is what nginx answers with 405
    (work / "token").write_bytes(token)
    (work / "token.json").write_bytes(token)
    (work / "enterprise.json").write_bytes(enterprise)
    conf = f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  keepalive_requests 1000000;
  upstream recorded {{ server 127.0.0.1:{up_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{up_port};
    root {work};
    # nginx refuses POST to a static file (405); answer the recorded files through that error page.
    location = /dancu {{ error_page 405 =200 /answer.xml; }}
    location = /token {{ error_page 405 =200 /token.json; }}
    location = /apiCSDLDKDN/1.0/chiTietDoanhNghiep {{
      default_type "application/json"; try_files /enterprise.json =404;
    }}
    location = /answer.xml {{ default_type "text/xml; charset=utf-8"; }}
    location = /token.json {{ default_type "application/json"; }}
  }}
  server {{
    listen 127.0.0.1:{proxy_port};
    location / {{
      proxy_pass http://recorded;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
    (work / "nginx.conf").write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(work / "nginx.conf"), "-p", str(work)],
                            stdout=subprocess.DEVNULL, stderr=open(work / "nginx.log", "wb"))
    wait(f"http://127.0.0.1:{up_port}/answer.xml")
    return proc


# -- the gateway -----------------------------------------------------------------------------

@dataclass
class Gateway:
    proc: subprocess.Popen
    env: dict
    url: str
    token: str
    database: str
    answered: int = 0  # requests answered and counted by wrk or a probe: each must have its audit record
    credentials: tuple[str, str] = ("", "")  # the benchmark client's id and secret

    def issue_token(self) -> None:
        # A worker's first token costs seconds on a loaded box (scrypt, first request): httpx's 5 s is short.
        self.token = httpx.post(f"{self.url}/oauth/token", data={"grant_type": "client_credentials"},
                                auth=self.credentials, timeout=60).json()["access_token"]

    def durability(self) -> str:
        code = ("from lgsp.config import settings; from lgsp.storage import engine_for; "
                "from sqlalchemy import text; e = engine_for(settings().db_url); c = e.connect(); "
                "print(c.execute(text('PRAGMA synchronous' if e.dialect.name == 'sqlite' "
                "else 'SHOW synchronous_commit')).scalar())")
        level = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                               check=True).stdout.strip()
        if self.database == "SQLite":
            names = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}
            return f"SQLite WAL, synchronous={names.get(level, level)}"
        return f"PostgreSQL, synchronous_commit={level}"

    def audited(self) -> int:
        code = ("from lgsp.config import settings; from lgsp.storage import engine_for; "
                "from sqlalchemy import text; e = engine_for(settings().db_url); "
                "print(e.connect().execute(text(\"select count(*) from audit_records \"\n"
                "\"where kind='exchange'\")).scalar())")
        return int(subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                                  check=True).stdout)

    def commit_buckets(self) -> dict[float, float]:
        """The audit writers' durable commits so far, all workers: {bucket upper bound in s: commits at most that
        long} (the gateway's lgsp_audit_commit_seconds histogram)."""
        return {float(s.labels["le"]): s.value for s in metric_samples(self.url, "lgsp_audit_commit_seconds")
                if s.name.endswith("_bucket")}


def start_lgsp(work: Path, up_port: int, workers: int, database_url: str | None, token: bool = True) -> Gateway:
    """A gateway with the benchmark's client and connections; its token issued unless token=False
    (benchmarks/memory.py reads the workers' memory before and after the first token)."""
    port = free_port()
    home = work / f"lgsp-{port}"
    env = dict(os.environ, LGSP_HOME=str(home), LGSP_PUBLIC_URL=f"http://127.0.0.1:{port}",
               LGSP_SECRET_KEY=secrets.token_urlsafe(32), LGSP_LOG_LEVEL="WARNING",
               LGSP_EGRESS_ALLOW="127.0.0.0/8,::1")  # the recorded upstream is on loopback
    if database_url:
        env["LGSP_DATABASE_URL"] = database_url
    lgsp = [sys.executable, "-m", "lgsp.cli"]

    def run(*a: str) -> str:
        return subprocess.run([*lgsp, *a], env=env, check=True, capture_output=True, text=True).stdout

    run("db", "upgrade")
    run("connections", "set", "population", "--adapter", "population", "--settings",
        json.dumps({"endpoint": f"http://127.0.0.1:{up_port}/dancu", "timeout": 10, "integration_code": "BENCH",
                    "account": "lgsp-bench", "agency_code": "000.00.00.H30"}))
    run("connections", "set", "business", "--adapter", "business", "--settings",
        json.dumps({"endpoint": f"http://127.0.0.1:{up_port}/apiCSDLDKDN/1.0", "token_url":
                    f"http://127.0.0.1:{up_port}/token", "client_id": BUSINESS_ACCOUNT[0],
                    "client_secret": BUSINESS_ACCOUNT[1], "timeout": 10}))
    client = f"bench-{secrets.token_hex(3)}"
    out = run("clients", "create", client, "--name", "Benchmark client", "--agency-code", "000.00.31.H30")
    secret = found(r"client_secret:\s+(\S+)", out)
    run("grants", "add", client, "population.citizen.get", "--fields", LOOKUP_FIELDS, "--purposes", PURPOSE)
    run("grants", "add", client, "business.enterprise.get", "--fields", BUSINESS_FIELDS, "--purposes", PURPOSE)
    proc = subprocess.Popen([*lgsp, "serve", "--port", str(port), "--workers", str(workers)], env=env,
                            stdout=open(home.with_suffix(".log"), "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait(f"{url}/readyz")
    except BaseException:  # say why (wait() exits): the gateway's own last lines
        print(home.with_suffix(".log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    time.sleep(1.0)  # let every worker finish its start-up
    gw = Gateway(proc, env, url, "", "PostgreSQL" if database_url else "SQLite", credentials=(client, secret))
    if token:
        gw.issue_token()
    return gw


def fresh_postgres_database(server_url: str) -> str:
    """A new, empty database on the given server, so runs never share an audit trail."""
    from sqlalchemy import create_engine, make_url, text

    name = f"lgsp_bench_{secrets.token_hex(4)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


# -- wrk -------------------------------------------------------------------------------------

def wrk(url: str, connections: int, duration: int, script: Path) -> dict:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(found(r"Requests/sec:\s+([\d.]+)", out))
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+([\d.]+\w+)", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": pct["50"], "p90": pct["90"], "p99": pct["99"],
            "non2xx": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors
            else "", "requests": int(found(r"(\d+) requests in", out))}


def found(pattern: str, text: str) -> str:
    """The first group of pattern in text; a tool whose output changed shape stops the run."""
    m = re.search(pattern, text, re.M)
    if m is None:
        sys.exit(f"expected {pattern!r} in:\n{text}")
    return m.group(1)


def _ms(text: str) -> float:
    value, unit = found(r"([\d.]+)", text), found(r"[\d.]+(\w+)", text)
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def lua(work: Path, name: str, method: str, headers: dict, body: str | None = None) -> Path:
    lines = [f'wrk.method = "{method}"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    path = work / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Target:
    name: str
    url: str
    script: Path
    server_pid: int  # root of the processes whose CPU is counted
    gateway: Gateway | None = None  # set when the LGSP answers, so each answer must have its audit record


def measure(target: Target, connections: int, args, progress: list[int]) -> dict:
    return summarise(target, connections, [one_run(target, connections, args, progress)
                                           for _ in range(args.repeat)])


def measure_pair(sqlite: Target, pg: Target, side: PgSide, connections: int, args,
                 progress: list[int]) -> list[dict]:
    """The same row on SQLite and PostgreSQL, their runs alternating; each PostgreSQL run after a
    CHECKPOINT and a pause (so no run inherits the previous one's WAL and dirty pages), with the
    server's side of the bill."""
    runs: dict[str, list[dict]] = {sqlite.name: [], pg.name: []}
    for _ in range(args.repeat):
        runs[sqlite.name].append(one_run(sqlite, connections, args, progress))
        side.checkpoint()
        time.sleep(args.pg_pause)
        before = side.read()
        run = one_run(pg, connections, args, progress)
        time.sleep(1.5)  # backends flush their statistics at most once a second
        run.update(side.per_request(before, side.read(), run["requests"]))
        runs[pg.name].append(run)
    pg_row = summarise(pg, connections, runs[pg.name])
    # Each pair ran back to back: their ratios show how far the box's drift moves the comparison.
    pg_row["pair_ratios"] = [p["rps"] / max(s["rps"], 1e-9)
                             for s, p in zip(runs[sqlite.name], runs[pg.name], strict=True)]
    return [summarise(sqlite, connections, runs[sqlite.name]), pg_row]


def one_run(target: Target, connections: int, args, progress: list[int]) -> dict:
    progress[0] += 1
    print(f"  [{progress[0]}/{progress[1]}] {target.name}, {connections} connections…", flush=True)
    before = cpu_seconds(target.server_pid)
    commits = target.gateway.commit_buckets() if target.gateway else {}
    run = wrk(target.url, connections, args.duration, target.script)
    run["cpu_ms"] = (cpu_seconds(target.server_pid) - before) * 1000 / max(run["requests"], 1)
    if target.gateway:
        target.gateway.answered += run["requests"]
        after = target.gateway.commit_buckets()
        run.update(commit_quantiles({le: n - commits.get(le, 0.0) for le, n in after.items()}))
    return run


def commit_quantiles(buckets: dict[float, float]) -> dict[str, float]:
    """Commits in a run, and the bucket bounds (ms) under which half and 99 % of them became durable."""
    total = buckets.get(math.inf, 0.0)
    out = {"commits": total}
    for name, q in (("commit_p50", 0.5), ("commit_p99", 0.99)):
        out[name] = next((le * 1000 for le, n in sorted(buckets.items()) if total and n >= q * total), math.nan)
    return out


COMMITS = ("commits", "commit_p50", "commit_p99")
PG_SIDE = ("pg_commits", "pg_rollbacks", "pg_rows_in", "pg_rows_read", "pg_cpu_ms", "pg_wal_syncs")


def summarise(target: Target, connections: int, runs: list[dict]) -> dict:
    keys = ("rps", "p50", "p90", "p99", "cpu_ms", *(k for k in (*PG_SIDE, *COMMITS) if k in runs[0]))
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    return {"target": target.name, "connections": connections, **med,
            "database": target.gateway.database if target.gateway else None,
            "non2xx": sum(r["non2xx"] for r in runs), "requests": sum(r["requests"] for r in runs),
            "socket_errors": "; ".join(r["socket_errors"] for r in runs if r["socket_errors"])}


def lgsp_targets(work: Path, gw: Gateway, label: str, pid: str, enterprise: str) -> list[Target]:
    bearer = {"Authorization": f"Bearer {gw.token}"}
    rest = lua(work, f"rest-{label}", "GET", {**bearer, "X-Purpose": PURPOSE, "X-On-Behalf-Of": "bench-officer"})
    door = lua(work, f"door-{label}", "POST", {**bearer, "Content-Type": "text/xml; charset=utf-8",
                                                "SOAPAction": "CallService"},
               DOOR_REQUEST.format(pid=pid, purpose=PURPOSE))
    root = gw.proc.pid
    return [
        Target(f"LGSP REST{label}", f"{gw.url}/api/population/v1/citizens/{pid}", rest, root, gw),
        Target(f"LGSP SOAP door{label}", f"{gw.url}/soap/v1", door, root, gw),
        Target(f"LGSP business REST{label}", f"{gw.url}/api/business/v1/enterprises/{enterprise}", rest, root, gw),
    ]


def probe(target: Target) -> None:
    """One request through each LGSP row before timing, so a broken set-up fails loudly, not as non-2xx."""
    text = target.script.read_text()
    method = found(r'wrk.method = "(\w+)"', text)
    headers = dict(re.findall(r'wrk.headers\["([^"]+)"\] = "([^"]*)"', text))
    body = re.search(r"wrk.body = (.*)", text)
    r = httpx.request(method, target.url, headers=headers, content=json.loads(body.group(1)) if body else None)
    if r.status_code != 200:
        sys.exit(f"{target.name} probe failed: {r.status_code} {r.text[:500]}")
    if target.gateway:
        target.gateway.answered += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is reported")
    ap.add_argument("--workers", type=int, default=2, help="LGSP worker processes")
    ap.add_argument("--connections", default="1,50")
    ap.add_argument("--scaling", default="", help="worker counts for the scaling curve, e.g. 1,2,4")
    ap.add_argument("--postgres", metavar="URL", 
                    help="PostgreSQL server for the PostgreSQL row (e.g. the URL scripts/postgres prints)")
    ap.add_argument("--pg-pause", type=float, default=11.0,
                    help="seconds of quiet after the CHECKPOINT before each PostgreSQL run")
    ap.add_argument("--only", default="", help="measure only the rows whose name matches this regex")
    ap.add_argument("--database-url", help="run every LGSP row on this database instead of SQLite")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    ensure_tools()
    machine = {"cpu": cpu_model(), "cpus": os.cpu_count(), "probe": speed_probe()}
    print(f"CPU: {machine['cpu']}, {machine['cpus']} CPUs; {machine['probe']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lgsp-bench-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user and read the recorded answers here
    procs: list[subprocess.Popen] = []
    try:
        print("recording simulator answers…", flush=True)
        pid, answer = record_population(work)
        enterprise, token_answer, details = record_business(work)
        up, hop = free_port(), free_port()
        nginx = start_nginx(work, answer, token_answer, details, up, hop)
        procs.append(nginx)
        soap = lua(work, "soap", "POST", {"Content-Type": "text/xml; charset=utf-8",
                                          "SOAPAction": "TraCuuThongTinCongDan"}, SOAP_REQUEST.format(pid=pid))
        print(f"starting LGSP with {args.workers} workers…", flush=True)
        gw = start_lgsp(work, up, args.workers, args.database_url)
        procs.append(gw.proc)
        gateways = [gw]
        conns = [int(c) for c in args.connections.split(",")]
        pg_rest: Target | None = None
        side: PgSide | None = None
        if args.postgres:
            pg_url = fresh_postgres_database(args.postgres)
            pg = start_lgsp(work, up, args.workers, pg_url)
            procs.append(pg.proc)
            gateways.append(pg)
            pg_rest, side = lgsp_targets(work, pg, " (PostgreSQL)", pid, enterprise)[0], PgSide(pg_url)
        plan: list[tuple[Target, int]] = []
        for t in (Target("upstream (nginx, recorded answer)", f"http://127.0.0.1:{up}/dancu", soap, nginx.pid),
                  Target("nginx proxy hop", f"http://127.0.0.1:{hop}/dancu", soap, nginx.pid),
                  *lgsp_targets(work, gw, "", pid, enterprise)):
            if re.search(args.only, t.name):
                plan += [(t, c) for c in conns]
        scaling = [int(w) for w in args.scaling.split(",") if w]
        progress = [0, (len(plan) + len(scaling) + (len(conns) if pg_rest else 0)) * args.repeat]
        results = run_plan(plan, args, progress, pg_rest, side)
        memory = {g.database: peak_rss_mib(g.proc.pid) for g in gateways}
        time.sleep(1.0)  # the audit writer's last group commit
        audit: list[dict[str, Any]] = [{"database": g.database, "durability": g.durability(), "audited": g.audited(),
                  "answered": g.answered} for g in gateways]
        stop([g.proc for g in gateways[1:]])
        curve = scaling_curve(work, up, scaling, args, pid, enterprise, progress, procs)
        report(machine, results, memory, audit, curve, args)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine, "results": results, "worker_peak_rss_mib": memory,
                                             "audit": audit, "scaling": curve}, indent=2))
        if any(r["non2xx"] or not r["requests"] for r in results) or any(a["audited"] < a["answered"] for a in audit):
            sys.exit("FAILED: non-2xx answers, a row without answers, or answered requests without their audit record")
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


def run_plan(plan: list[tuple[Target, int]], args, progress: list[int], pg_rest: Target | None = None,
             side: PgSide | None = None) -> list[dict]:
    """Each row measured in turn; the SQLite REST row with the PostgreSQL one, alternating, when given."""
    results = []
    for target, c in plan:
        if target.gateway:
            probe(target)
        if pg_rest and side and target.name == "LGSP REST":
            probe(pg_rest)
            results += measure_pair(target, pg_rest, side, c, args, progress)
        else:
            results.append(measure(target, c, args, progress))
    return results


def scaling_curve(work: Path, up: int, workers: list[int], args, pid: str, enterprise: str,
                  progress: list[int], procs: list) -> list[dict]:
    curve = []
    for n in workers:
        print(f"starting LGSP with {n} workers for the scaling curve…", flush=True)
        gw = start_lgsp(work, up, n, args.database_url)
        procs.append(gw.proc)
        rest = lgsp_targets(work, gw, f" ({n} workers)", pid, enterprise)[0]
        probe(rest)
        row = measure(rest, 50, args, progress)
        curve.append({"workers": n, **row, "per_worker": row["rps"] / n})
        stop([gw.proc])
    return curve


def report(machine: dict, results: list[dict], memory: dict, audit: list[dict], curve: list[dict], args) -> None:
    print(f"\nCPU: {machine['cpu']}, {machine['cpus']} CPUs shared by the servers and wrk; {machine['probe']}")
    print(f"median of {args.repeat} runs of {args.duration} s each; {args.workers} LGSP workers; "
          "CPU ms/req = CPU time of all the measured server's processes per answered request\n")
    print(f"{'target':36} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10} "
          f"{'non-2xx':>8}")
    for r in results:
        print(f"{r['target']:36} {r['connections']:>5} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p90']:>8.2f} "
              f"{r['p99']:>8.2f} {r['cpu_ms']:>10.3f} {r['non2xx']:>8}" +
              (f"  socket errors: {r['socket_errors']}" if r["socket_errors"] else ""))
    by = {(r["target"], r["connections"]): r for r in results}
    hop1 = by.get(("nginx proxy hop", 1))
    lgsp1 = by.get(("LGSP REST", 1))
    if hop1 and lgsp1:
        print(f"\ngateway's added latency at 1 connection (LGSP REST p50 - nginx hop p50): "
              f"{lgsp1['p50'] - hop1['p50']:.2f} ms")
    for c in sorted({r["connections"] for r in results}):
        lg, hop = by.get(("LGSP REST", c)), by.get(("nginx proxy hop", c))
        if lg and hop:
            print(f"LGSP REST / nginx hop at {c} connections: {lg['rps'] / hop['rps']:.3f}x throughput")
        pg = by.get(("LGSP REST (PostgreSQL)", c))
        if lg and pg:
            print(f"PostgreSQL / SQLite at {c} connections: {pg['rps'] / lg['rps']:.2f}x throughput, "
                  f"p50 {pg['p50']:.2f} vs {lg['p50']:.2f} ms, CPU/req {pg['cpu_ms']:.3f} vs {lg['cpu_ms']:.3f} ms"
                  + (f"; each alternating pair: {', '.join(f'{r:.2f}' for r in pg['pair_ratios'])}"
                     if "pair_ratios" in pg else ""))
    pg_rows = [r for r in results if "pg_commits" in r]
    if pg_rows:
        print("\nPostgreSQL server's side per answered request (this database only; WAL flushes server-wide):")
        print(f"{'conns':>5} {'commits':>8} {'rollbacks':>9} {'rows in':>8} {'rows read':>9} "
              f"{'backend CPU ms':>14} {'WAL flushes':>11}")
        for r in pg_rows:
            print(f"{r['connections']:>5} {r['pg_commits']:>8.2f} {r['pg_rollbacks']:>9.2f} {r['pg_rows_in']:>8.2f} "
                  f"{r['pg_rows_read']:>9.2f} {r['pg_cpu_ms']:>14.3f} {r['pg_wal_syncs']:>11.3f}")
    commit_rows = [r for r in results if "commit_p99" in r]
    if commit_rows:
        print("\naudit commits during each LGSP run (what every answer waits for; lgsp_audit_commit_seconds, "
              "the SQLite write lock's wait included; bucket bounds, medians of the runs):")
        print(f"{'target':36} {'conns':>5} {'commits/s':>9} {'per commit':>10} {'p50 ms ≤':>9} {'p99 ms ≤':>9}")
        for r in commit_rows:
            print(f"{r['target']:36} {r['connections']:>5} {r['commits'] / args.duration:>9.0f} "
                  f"{r['rps'] * args.duration / max(r['commits'], 1):>10.1f} {r['commit_p50']:>9g} "
                  f"{r['commit_p99']:>9g}")
    if curve:
        print("\nscaling curve (LGSP REST, 50 connections):")
        print(f"{'workers':>7} {'req/s':>9} {'req/s per worker':>17} {'p99 ms':>8} {'CPU ms/req':>10}")
        for row in curve:
            print(f"{row['workers']:>7} {row['rps']:>9.0f} {row['per_worker']:>17.0f} {row['p99']:>8.2f} "
                  f"{row['cpu_ms']:>10.3f}")
    print()
    for database, mem in memory.items():
        print(f"LGSP processes' peak RSS on {database} (MiB): {mem}")
    for a in audit:
        verdict = "ok" if a["audited"] >= a["answered"] else "MISSING RECORDS"
        print(f"audit ({a['durability']}): {a['audited']} exchange records for {a['answered']} answers counted "
              f"by wrk and the probes (in-flight answers at each run's end are recorded but not counted) — {verdict}")


if __name__ == "__main__":
    main()
