"""Plain helpers the tests import (`from helpers import …`); the fixtures live in conftest.py.

Servers on loopback (start, wait, serve an ASGI app in a thread), a PostgreSQL database
of a test's own, the CLI in a subprocess, tokens, audit records, problem+json checks, and
waiting for a running gateway to serve the configuration the database holds.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import httpx

if TYPE_CHECKING:
    import zeep

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
FIXTURES = TESTS / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def postgres_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A new, empty PostgreSQL database on the server of `admin_url`: its URL and a function that drops it."""
    import psycopg

    name = f"lgsp_test_{secrets.token_hex(4)}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = plain.rpartition("/")
    return f"{base}/{name}", lambda: drop_postgres(plain, name)


def drop_postgres(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def lgsp_cli(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lgsp.cli", *args], env={**os.environ, **env}, capture_output=True, text=True,
        check=check, timeout=120,
    )


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_server(cmd: list[str], url: str, ready_path: str, log: Path, env: dict | None = None) -> Server:
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        wait_for(url + ready_path, proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError(f"{cmd[:4]} did not start; log:\n{log.read_text(errors='replace')[-3000:]}")
    return Server(url, proc, log)


class Simulator:
    """Switches the simulator's fault modes for one test and restores them after."""

    def __init__(self, server: Server):
        self.server = server

    def set(self, mode: str, **extra) -> None:
        httpx.post(f"{self.server.url}/_sim/faults", json={"mode": mode, **extra}).raise_for_status()


def get_token(gateway: Server, client_id: str, secret: str, scope: str | None = None) -> str:
    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    r = httpx.post(f"{gateway.url}/oauth/token", data=data, auth=(client_id, secret))
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


# -- the business registration simulator's connection ------------------------------------

BUSINESS_TOKEN_TTL = 2.0  # seconds: short, so the adapter's token refresh is exercised


def business_settings(sim: Server, **overrides) -> dict:
    client_id, secret = sim.extra["client"]
    return {"endpoint": f"{sim.url}/apiCSDLDKDN/1.0", "token_url": f"{sim.url}/token",
            "client_id": client_id, "client_secret": secret, "timeout": 1, **overrides}


# -- answers and records -----------------------------------------------------------------

PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


def audit_of(gateway: Server, request_id: str) -> dict:
    """The audit record of one exchange (the first: other persons its answer carried follow it)."""
    from sqlalchemy import select

    from lgsp.storage.schema import audit_records

    with gateway.extra["engine"].connect() as conn:
        row = conn.execute(select(audit_records).where(audit_records.c.request_id == request_id)
                           .order_by(audit_records.c.id)).first()
    assert row is not None, f"no audit record for {request_id}"
    return dict(row._mapping)


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict:
    """An RFC 9457 answer with our members, the request id echoed, and no stack trace."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert set(body) == PROBLEM_KEYS, body
    assert body["code"] == code and body["status"] == status, body
    assert body["request_id"] == resp.headers["x-request-id"]
    assert "Traceback" not in resp.text
    return body


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(5)


# -- configuration reaching a running gateway --------------------------------------------

def database_generation(engine_or_db_url) -> int:
    """The configuration generation the database holds (every admin change bumps it)."""
    from lgsp.registry import read_generation
    from lgsp.storage import engine_for

    engine = engine_for(engine_or_db_url) if isinstance(engine_or_db_url, str) else engine_or_db_url
    return read_generation(engine)


def wait_for_config(base_url: str | Server, engine_or_db_url, timeout: float = 10, confirmations: int = 1) -> int:
    """Wait until the gateway at `base_url` serves the configuration the database holds now.

    Each worker says on /healthz which generation it serves. With several worker processes
    a request reaches any one of them: pass `confirmations` (say, three per worker) and the
    answer must be current that many times in a row, each on a new connection. Returns the
    generation reached."""
    if hasattr(base_url, "url"):  # a Server
        base_url = base_url.url
    wanted = database_generation(engine_or_db_url)
    deadline = time.monotonic() + timeout
    current, seen = 0, None
    while True:
        try:
            seen = httpx.get(f"{base_url}/healthz", timeout=2).json()["config_generation"]
        except httpx.TransportError:
            seen = None
        current = current + 1 if seen is not None and seen >= wanted else 0
        if current >= confirmations:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{base_url} serves configuration generation {seen}, the database has {wanted}")
        time.sleep(0.02)


# -- the SOAP door, as a zeep client sees it ---------------------------------------------

NS = {"lgsp": "urn:lgsp:soap:v1"}


def zeep_client(gateway: Server, *, token: str | None = None, wsse=None) -> zeep.Client:
    """A zeep client from the WSDL the gateway serves, with a bearer token when given."""
    import requests
    import zeep
    from zeep.transports import Transport

    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return zeep.Client(f"{gateway.url}/soap/v1?wsdl", transport=Transport(session=session), wsse=wsse)


def fault_code(fault: zeep.exceptions.Fault) -> str:
    return fault.detail.find(".//lgsp:code", NS).text


# -- the shared data store's sample dataset -----------------------------------------------

DATASET = "business-licences"
OWNER = "000.00.12.H30"  # the Department of Industry and Trade, owner of the dataset
ALL_FIELDS = ["licence_number", "document_number", "enterprise_code", "holder_name", "licence_type", "issued_on",
              "expires_on", "issuing_agency", "status", "status_reason", "address"]


def licence(run_id: str, n: int, **changes) -> dict:
    """A business licence record of the dataset, numbered `n` within one run."""
    record = {
        "licence_number": f"SCT-{run_id}-2024-{n:05d}",
        "document_number": f"{n}/GP-SCT",
        "enterprise_code": "0401234567",
        "holder_name": f"Công ty TNHH Thương mại Sông Hàn {n}",
        "licence_type": "alcohol-retail",
        "issued_on": f"2024-{(n % 12) + 1:02d}-15",
        "expires_on": f"2029-{(n % 12) + 1:02d}-15",
        "issuing_agency": OWNER,
        "status": "valid",
        "address": {"detail": f"{n} Bạch Đằng", "commune_code": "20236", "province_code": "48"},
    }
    record.update(changes)
    return record
