"""Gateway benchmark: one command, three paths measured side by side in one run.

    (a) upstream   — nginx answering a recorded simulator SOAP answer (the fixed, fast backend)
    (b) nginx hop  — an nginx reverse proxy in front of (a): the cost of one plain proxy hop
    (c) LGSP       — the full pipeline in front of (a): token validation, grant, purpose, SOAP call
                     through the adapter, mapping, minimisation, durable (group-committed) audit

Each is driven by wrk at 1 and 50 connections; every cell is run `--repeat`
times and the median reported, because the machine is shared and noisy.
Also reported: peak resident memory of each LGSP worker, and a check that
every answered request has its audit record.

    .venv/bin/python benchmarks/run.py [--duration 10] [--repeat 3] [--workers 2]

Needs nginx and wrk (Debian packages); installs them with apt-get if missing and root.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from lgsp.demo import stop

ROOT = Path(__file__).resolve().parent.parent
PURPOSE = "administrative-procedure"
SOAP_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:dc="http://dancuquocgia.bca">
<soap:Body><dc:TraCuuThongTinCongDan><dc:MaYeuCau>bench</dc:MaYeuCau><dc:MaDVC>037</dc:MaDVC>
<dc:MaTichHop>BENCH</dc:MaTichHop><dc:MaDonVi>000.00.31.H30</dc:MaDonVi><dc:MaCanBo>bench</dc:MaCanBo>
<dc:TaiKhoan>bench</dc:TaiKhoan><dc:SoDinhDanh>{pid}</dc:SoDinhDanh></dc:TraCuuThongTinCongDan></soap:Body>
</soap:Envelope>"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: install the Debian packages nginx-light and wrk")
    print(f"installing {' '.join(missing)} (Debian packages)…", flush=True)
    subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk",
                   shell=True, check=True, stdout=subprocess.DEVNULL)


def wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    sys.exit(f"{url} did not come up")


def record_answer(work: Path) -> tuple[str, bytes]:
    """Start the simulator once and record a real lookup answer for a known citizen."""
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
        proc.terminate()
        proc.wait()


def start_nginx(work: Path, answer: bytes, up_port: int, proxy_port: int) -> subprocess.Popen:
    (work / "answer.xml").write_bytes(answer)
    (work / "dancu").write_bytes(answer)
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
    location = /dancu {{
      # nginx refuses POST to a static file (405); answer the recorded file through that error page.
      root {work};
      error_page 405 =200 /answer.xml;
    }}
    location = /answer.xml {{ root {work}; default_type "text/xml; charset=utf-8"; }}
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


def start_lgsp(work: Path, up_port: int, port: int, workers: int, database_url: str | None) -> tuple[subprocess.Popen, dict, str, str]:
    env = dict(os.environ, LGSP_HOME=str(work / "lgsp"), LGSP_PUBLIC_URL=f"http://127.0.0.1:{port}",
               LGSP_SECRET_KEY=secrets.token_urlsafe(32), LGSP_LOG_LEVEL="WARNING",
               LGSP_EGRESS_ALLOW="127.0.0.0/8,::1")  # the upstream simulator is on loopback
    if database_url:
        env["LGSP_DATABASE_URL"] = database_url
    lgsp = [sys.executable, "-m", "lgsp.cli"]
    run = lambda *a: subprocess.run([*lgsp, *a], env=env, check=True, capture_output=True, text=True).stdout
    run("db", "upgrade")
    run("connections", "set", "population", "--adapter", "population", "--settings",
        json.dumps({"endpoint": f"http://127.0.0.1:{up_port}/dancu", "timeout": 10, "integration_code": "BENCH",
                    "account": "lgsp-bench", "agency_code": "000.00.00.H30"}))
    client = f"bench-{secrets.token_hex(3)}"
    out = run("clients", "create", client, "--name", "Benchmark client", "--agency-code", "000.00.31.H30")
    secret = re.search(r"client_secret:\s+(\S+)", out).group(1)
    run("grants", "add", client, "population.citizen.get", "--fields",
        "personal_id,full_name,gender,birth_date,permanent_address,current_address", "--purposes", PURPOSE)
    proc = subprocess.Popen([*lgsp, "serve", "--port", str(port), "--workers", str(workers)], env=env,
                            stdout=open(work / "lgsp.log", "wb"), stderr=subprocess.STDOUT)
    wait(f"http://127.0.0.1:{port}/readyz")
    time.sleep(1.0)  # let every worker finish its start-up
    return proc, env, client, secret


def wrk(url: str, connections: int, duration: int, script: Path) -> dict:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+([\d.]+\w+)", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": pct["50"], "p90": pct["90"], "p99": pct["99"],
            "non2xx": int(errors.group(1)) if errors else 0, "requests": int(re.search(r"(\d+) requests in", out).group(1))}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def lua(work: Path, name: str, method: str, headers: dict, body: str | None = None) -> Path:
    lines = [f'wrk.method = "{method}"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    path = work / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def worker_memory(parent_pid: int) -> list[float]:
    """Peak resident set (VmHWM, MiB) of every process under the serve command."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent_pid)], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    grandchildren = []
    for pid in pids:
        more = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        grandchildren += [int(p) for p in more.split()]
    mem = []
    for pid in [parent_pid, *pids, *grandchildren]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing" in cmd and b"resource_tracker" in cmd:
            continue
        m = re.search(r"VmHWM:\s+(\d+) kB", status)
        if m:
            mem.append(round(int(m.group(1)) / 1024, 1))
    return mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is reported")
    ap.add_argument("--workers", type=int, default=2, help="LGSP worker processes")
    ap.add_argument("--connections", default="1,50")
    ap.add_argument("--database-url", help="default: SQLite in a temporary directory")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="lgsp-bench-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user and read the recorded answer here
    procs = []
    try:
        print("recording a simulator answer…", flush=True)
        pid, answer = record_answer(work)
        up, hop, gw = free_port(), free_port(), free_port()
        procs.append(start_nginx(work, answer, up, hop))
        print(f"starting LGSP with {args.workers} workers…", flush=True)
        lgsp, env, client, secret = start_lgsp(work, up, gw, args.workers, args.database_url)
        procs.append(lgsp)
        token = httpx.post(f"http://127.0.0.1:{gw}/oauth/token", data={"grant_type": "client_credentials"},
                           auth=(client, secret)).json()["access_token"]
        soap = lua(work, "soap", "POST", {"Content-Type": "text/xml; charset=utf-8",
                                            "SOAPAction": "TraCuuThongTinCongDan"}, SOAP_REQUEST.format(pid=pid))
        rest = lua(work, "rest", "GET", {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE,
                                          "X-On-Behalf-Of": "bench-officer"})
        probe = httpx.get(f"http://127.0.0.1:{gw}/api/population/v1/citizens/{pid}",
                          headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE})
        if probe.status_code != 200:
            sys.exit(f"LGSP probe failed: {probe.status_code} {probe.text}")
        targets = [
            ("upstream (nginx, recorded answer)", f"http://127.0.0.1:{up}/dancu", soap),
            ("nginx proxy hop", f"http://127.0.0.1:{hop}/dancu", soap),
            ("LGSP full pipeline", f"http://127.0.0.1:{gw}/api/population/v1/citizens/{pid}", rest),
        ]
        conns = [int(c) for c in args.connections.split(",")]
        results = []
        total = len(targets) * len(conns) * args.repeat
        done = 0
        for name, url, script in targets:
            for c in conns:
                runs = []
                for _ in range(args.repeat):
                    done += 1
                    print(f"  [{done}/{total}] {name}, {c} connections…", flush=True)
                    runs.append(wrk(url, c, args.duration, script))
                med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p90", "p99")}
                med["non2xx"] = sum(r["non2xx"] for r in runs)
                med["requests"] = sum(r["requests"] for r in runs)
                results.append({"target": name, "connections": c, **med})
        memory = worker_memory(lgsp.pid)
        audited = audit_count(env)
        report(results, memory, audited, args)
        if args.json:
            args.json.write_text(json.dumps({"results": results, "worker_peak_rss_mib": memory,
                                             "audit": audited}, indent=2))
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


def audit_count(env: dict) -> int:
    code = ("from lgsp.config import settings; from lgsp.storage import engine_for; "
            "from sqlalchemy import text; e = engine_for(settings().db_url); "
            "print(e.connect().execute(text(\"select count(*) from audit_records where kind='exchange'\")).scalar())")
    return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)


def report(results: list[dict], memory: list[float], audited: int, args) -> None:
    print(f"\nmedian of {args.repeat} runs of {args.duration} s each; {args.workers} LGSP workers; "
          f"{os.cpu_count()} CPUs shared with the load generator\n")
    print(f"{'target':36} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for r in results:
        print(f"{r['target']:36} {r['connections']:>5} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p90']:>8.2f} "
              f"{r['p99']:>8.2f} {r['non2xx']:>8}")
    by = {(r["target"], r["connections"]): r for r in results}
    for c in sorted({r["connections"] for r in results}):
        lg = by.get(("LGSP full pipeline", c))
        hop = by.get(("nginx proxy hop", c))
        if lg and hop:
            print(f"LGSP / nginx hop at {c} connections: {lg['rps'] / hop['rps']:.2f}× throughput")
    print(f"LGSP processes' peak RSS (MiB): {memory}")
    lgsp_requests = sum(r["requests"] for r in results if r["target"] == "LGSP full pipeline")
    print(f"audit records: {audited} for {lgsp_requests} LGSP requests answered by wrk (+1 probe)")


if __name__ == "__main__":
    main()
