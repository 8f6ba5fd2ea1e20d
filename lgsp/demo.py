"""`lgsp demo`: the whole product on one machine with no set-up.

Starts the population database simulator and the gateway on loopback with
SQLite in ./.lgsp-demo, creates a one-stop-shop client with a grant limited to
some fields, and prints the exact curl commands to get a token and read a citizen.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEMO_HOME = Path(".lgsp-demo")
CLIENT_ID = "demo-one-stop-shop"
PURPOSE = "administrative-procedure"
# The demo province's own account at the (simulated) national business registry.
BUSINESS_UPSTREAM = ("lgsp-demo-province", "demo-upstream-secret")
# A one-stop-shop processing a dossier needs identity and addresses, not religion or relatives.
LOOKUP_FIELDS = [
    "personal_id", "full_name", "gender", "birth_date", "nationality", "permanent_address", "current_address",
    "data_as_of",
]
# A pension desk asks whether a person is still alive: yes or no and the status on record, nothing else.
VITAL_FIELDS = ["match", "vital_status", "event_date"]
DECEASED_CITIZEN = "079048067891"  # a documented deceased person of the simulator (its README)
# The demo province's account at the (simulated) national public-service portal.
PORTAL_UPSTREAM = {"dstcode": "DVCQG-H30", "madonvi": "000.00.00.H30", "username": "lgsp-demo-province",
                   "password": "demo-portal-secret"}


def _private_log(path: Path):
    """A log file only the owner can read: logs name clients and services."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _wait(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a demo server exited early (code {proc.returncode}); see {DEMO_HOME}/*.log")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:g} s")


def _demo_citizens(sim_port: int) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "lgsp_adapters.population.simulator", "--list", "3"],
        capture_output=True, text=True, check=True,
    ).stdout
    return re.findall(r"^(\d{12})\t", out, re.M)


BUSINESS_FIELDS = ["enterprise_code", "name", "founding_date", "status", "head_office", "business_activities"]


def _demo_enterprise() -> str:
    out = subprocess.run([sys.executable, "-m", "lgsp_adapters.business.simulator", "--list", "1"],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\t", 1)[0]


def _prepare_portal(admin, portal_port: int) -> None:
    """The portal connection behind the store-and-forward services of openapi/portal.v1.yaml."""
    admin.set_connection("portal", "portal", {"endpoint": f"http://127.0.0.1:{portal_port}/dvcqg/api",
                                              "timeout": 5, **PORTAL_UPSTREAM})


def _prepare(port: int, sim_port: int, biz_port: int, portal_port: int = 8083) -> str:
    """Fresh demo database with the connection, a client and its grants; returns the secret."""
    from lgsp import keys
    from lgsp.config import settings
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for, upgrade

    cfg = settings()
    upgrade(cfg.db_url)
    engine = engine_for(cfg.db_url)
    admin = Admin(engine, "demo")
    admin.register_spec_services()
    keys.ensure_key(engine)
    admin.set_connection("population", "population", {
        "endpoint": f"http://127.0.0.1:{sim_port}/dancu", "timeout": 5, "integration_code": "LGSP-DEMO", "account": "lgsp-demo",
        "agency_code": "000.00.00.H30",
    })
    secret = admin.create_client(CLIENT_ID, "Demo one-stop-shop (Một cửa điện tử)", "000.00.31.H30",
                                 "Demo provincial department")
    admin.set_connection("business", "business", {
        "endpoint": f"http://127.0.0.1:{biz_port}/apiCSDLDKDN/1.0", "token_url": f"http://127.0.0.1:{biz_port}/token",
        "client_id": BUSINESS_UPSTREAM[0], "client_secret": BUSINESS_UPSTREAM[1], "timeout": 5,
    })
    _prepare_portal(admin, portal_port)
    admin.add_grant(CLIENT_ID, "population.citizen.get", LOOKUP_FIELDS, [PURPOSE])
    admin.add_grant(CLIENT_ID, "population.citizen.verify", ["match"], [PURPOSE])
    admin.add_grant(CLIENT_ID, "business.enterprise.get", BUSINESS_FIELDS, [PURPOSE])
    admin.add_grant(CLIENT_ID, "codelists.admin_unit.translate", ["province", "commune", "legacy", "split"], [PURPOSE])
    admin.add_grant(CLIENT_ID, "population.vital_status.verify", VITAL_FIELDS, [PURPOSE])
    for service in ("portal.dossier.sync", "portal.dossier.progress", "portal.message.get"):
        admin.add_grant(CLIENT_ID, service, ["message_id", "status"], [PURPOSE])
    return secret


def _commands(base: str, secret: str, citizen: str, enterprise: str) -> list[str]:
    token = (
        f"TOKEN=$(curl -s -u {CLIENT_ID}:{secret} -d grant_type=client_credentials {base}/oauth/token"
        " | python3 -c 'import sys, json; print(json.load(sys.stdin)[\"access_token\"])')"
    )
    read = (
        f"curl -s -H \"Authorization: Bearer $TOKEN\" -H 'X-Purpose: {PURPOSE}' -H 'X-On-Behalf-Of: officer-042' "
        f"{base}/api/population/v1/citizens/{citizen}"
    )
    auth = f"-H \"Authorization: Bearer $TOKEN\" -H 'X-Purpose: {PURPOSE}'"
    business = f"curl -s {auth} {base}/api/business/v1/enterprises/{enterprise}"
    codes = f"curl -s {auth} '{base}/api/codelists/v1/admin-units/translate?province=77&district=747'"
    vital = (f"curl -s {auth} -H 'Content-Type: application/json' "
             f"-d '{{\"personal_id\": \"{DECEASED_CITIZEN}\", \"vital_status\": \"alive\"}}' "
             f"{base}/api/population/v1/citizens/verify-vital-status")
    return [token, read, business, codes, vital, *_dossier_commands(base, auth)]


DEMO_DOSSIER = {"version": 1, "dossier_no": "000.00.31.H30-261130-0001", "procedure_code": "1.001193",
                "applicant": {"name": "Nguyễn Văn An", "type": "citizen"},
                "received_at": "2026-11-30T08:15:00+07:00", "due_at": "2026-12-05T17:00:00+07:00",
                "status": "received", "summary": "Đăng ký khai sinh"}


def _dossier_commands(base: str, auth: str) -> list[str]:
    """Sync a dossier to the portal through the LGSP, then follow its message until it is delivered."""
    body = json.dumps(DEMO_DOSSIER, ensure_ascii=False)
    send = (f"MSG=$(curl -s {auth} -H 'Content-Type: application/json' -d '{body}' "
            f"{base}/api/portal/v1/dossiers | python3 -c 'import sys, json; print(json.load(sys.stdin)[\"status_url\"])')"
            " && echo \"accepted: $MSG\"")
    follow = (f"for i in $(seq 100); do S=$(curl -s {auth} \"$MSG\"); case $S in *'\"delivered\"'*) break;; esac; "
              "sleep 0.2; done; echo \"$S\"")
    return [send, follow]


def run(port: int, sim_port: int, check: bool, biz_port: int = 8082, *, portal_port: int = 8083) -> int:
    if DEMO_HOME.exists():
        shutil.rmtree(DEMO_HOME)
    DEMO_HOME.mkdir(mode=0o700)
    base = f"http://127.0.0.1:{port}"
    os.environ.update(LGSP_HOME=str(DEMO_HOME.resolve()), LGSP_PUBLIC_URL=base)
    # The simulators listen on loopback: the demo's operator allows it (nothing private is allowed by default).
    os.environ.setdefault("LGSP_EGRESS_ALLOW", "127.0.0.0/8,::1")
    os.environ.pop("LGSP_DATABASE_URL", None)
    from lgsp.config import settings

    settings.cache_clear()
    procs: list[subprocess.Popen] = []
    from lgsp.documents import demo as documents_demo

    axis_port = documents_demo.free_port()
    os.environ.update(documents_demo.trust(DEMO_HOME))  # the demo CA the gateway trusts for document signatures
    try:
        sim_log = _private_log(DEMO_HOME / "simulator.log")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "lgsp_adapters.population.simulator", "--port", str(sim_port)],
            stdout=sim_log, stderr=subprocess.STDOUT,
        ))
        secret = _prepare(port, sim_port, biz_port, portal_port)
        doc_secrets = _prepare_documents(axis_port)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "lgsp_adapters.national_axis.simulator", "--port", str(axis_port)],
            stdout=sim_log, stderr=subprocess.STDOUT,
        ))
        gw_log = _private_log(DEMO_HOME / "gateway.log")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port)], stdout=gw_log, stderr=subprocess.STDOUT,
        ))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "lgsp_adapters.business.simulator", "--port", str(biz_port),
             "--client-id", BUSINESS_UPSTREAM[0], "--client-secret", BUSINESS_UPSTREAM[1]],
            stdout=sim_log, stderr=subprocess.STDOUT,
        ))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "lgsp_adapters.portal.simulator", "--port", str(portal_port),
             *[f"--{k}={v}" for k, v in PORTAL_UPSTREAM.items()]],
            stdout=sim_log, stderr=subprocess.STDOUT,
        ))
        _wait(f"http://127.0.0.1:{portal_port}/_sim/faults", procs[3])
        _wait(f"http://127.0.0.1:{sim_port}/dancu?wsdl", procs[0])
        _wait(f"http://127.0.0.1:{biz_port}/_sim/faults", procs[2])
        _wait(f"{base}/readyz", procs[1])
        _wait(f"http://127.0.0.1:{axis_port}/_sim/faults", procs[4])
        documents_demo.register_on_axis(axis_port)
        doc_commands = documents_demo.commands(base, DEMO_HOME, doc_secrets)
        citizens = _demo_citizens(sim_port)
        commands = _commands(base, secret, citizens[0], _demo_enterprise())
        doc_lines = "\n  ".join(doc_commands)
        switch = f"curl -s -X POST http://127.0.0.1:{portal_port}/_sim/faults -H 'Content-Type: application/json'"
        print(f"""
LGSP demo is running (SQLite in {DEMO_HOME}/, logs there too).
  gateway:    {base}        (APIs: {base}/api, docs: {base}/api/population/v1/ui/)
  simulators: http://127.0.0.1:{sim_port}/dancu   (national population database, SOAP)
              http://127.0.0.1:{biz_port}/apiCSDLDKDN/1.0   (national business registry, REST)
              http://127.0.0.1:{portal_port}/dvcqg/api   (national public-service portal, dossier sync)
              http://127.0.0.1:{axis_port}/vdxp/api/v1   (national document exchange axis)
  client:     {CLIENT_ID}, grant limited to: {', '.join(LOOKUP_FIELDS)}
  citizens:   {', '.join(citizens)}

Get a token, then read a citizen (fields limited by the grant):

  {commands[0]}
  {commands[1]}

Also: an enterprise from the business registry, and an old administrative unit code translated:

  {commands[2]}
  {commands[3]}

Is this person alive? (grant: {', '.join(VITAL_FIELDS)}; the answer says no, and what the record says):

  {commands[4]}

Sync a dossier to the national public-service portal: 202 as soon as it is stored, then the LGSP
delivers it (retrying while the portal is down) and its status says "delivered":

  {commands[5]}
  {commands[6]}

Switch the portal simulator off, send the next version, see it wait, switch it on, see it delivered:

  {switch} -d '{{"mode": "down"}}'
  (send it again with "version": 2, then run the status command: "failed", with its next attempt)
  {switch} -d '{{"mode": "normal"}}'

Documents: agency {documents_demo.SENDER[0]} sends a signed edXML document to {documents_demo.RECIPIENT[0]}
(its inbox) and one to {documents_demo.NATIONAL[0]} (through the national axis); the recipient reads its
inbox and the package (signature intact, one TraceHeader added); the sender follows the delivery:

  {doc_lines}

SOAP door: http://127.0.0.1:{port}/soap/v1?wsdl    audit console: http://127.0.0.1:{port}/console
""", flush=True)
        if check:
            return _check([*commands, *doc_commands])
        print("Press Ctrl-C to stop.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        print(f"a demo server stopped; see {DEMO_HOME}/*.log", file=sys.stderr)
        return 1
    finally:
        stop(procs)


def _prepare_documents(axis_port: int) -> dict[str, str]:
    """The document exchange axis's demo agencies, clients and grants (lgsp.documents.demo)."""
    from lgsp.config import settings
    from lgsp.control.admin import Admin
    from lgsp.documents import demo as documents_demo
    from lgsp.storage import engine_for

    engine = engine_for(settings().db_url)
    return documents_demo.prepare(Admin(engine, "demo"), engine, axis_port)


def stop(procs: list[subprocess.Popen], timeout: float = 10) -> None:
    """Terminate child servers, and kill the ones that do not stop in time."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def _check(commands: list[str]) -> int:
    script = "set -e\n" + "".join(f"{c}\necho\n" for c in commands)  # one answer per line
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    print(result.stdout)
    expected = ("full_name", "enterprise_code", "match", "delivered", "items", "national-axis")
    if result.returncode != 0 or any(f'"{key}"' not in result.stdout for key in expected):
        print(result.stderr, file=sys.stderr)
        return 1
    return 0
