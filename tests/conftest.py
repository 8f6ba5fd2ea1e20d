"""Shared fixtures: real servers on loopback (the gateway and the simulators).

The database is SQLite unless LGSP_TEST_DATABASE_URL names a PostgreSQL server,
in which case a fresh database is created for the session and dropped after.
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
from typing import Iterator

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The simulators of the tests listen on loopback, which the egress policy refuses unless the
# operator allows it: this test process (and every server it starts) is that operator.
os.environ.setdefault("LGSP_EGRESS_ALLOW", "127.0.0.0/8,::1")


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


def _postgres_database(admin_url: str):
    import psycopg

    name = f"lgsp_test_{secrets.token_hex(4)}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = plain.rpartition("/")
    return f"{base}/{name}", lambda: _drop_postgres(plain, name)


def _drop_postgres(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def lgsp_env(tmp_path_factory) -> dict[str, str]:
    """Environment shared by the test process and every server it starts."""
    home = tmp_path_factory.mktemp("lgsp-home")
    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    drop = None
    if pg:
        url, drop = _postgres_database(pg)
    else:
        url = f"sqlite:///{home / 'lgsp.db'}"
    port = free_port()
    env = {
        "LGSP_HOME": str(home),
        "LGSP_DATABASE_URL": url,
        "LGSP_SECRET_KEY": secrets.token_urlsafe(32),
        "LGSP_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LGSP_CONFIG_POLL_SECONDS": "0.2",
        "LGSP_GATEWAY_PORT": str(port),
        # The simulators listen on loopback; the egress policy refuses it unless the operator allows it.
        "LGSP_EGRESS_ALLOW": "127.0.0.0/8,::1",
    }
    os.environ.update(env)
    from lgsp.config import settings

    settings.cache_clear()
    from lgsp.storage import upgrade

    upgrade(url)
    yield env
    from lgsp.audit.writer import close_writers

    close_writers()  # their shutdown seals go in before the database is dropped
    if drop:
        from lgsp.storage import engine_for

        engine_for(url).dispose()
        drop()


@pytest.fixture
def fresh_db_url(lgsp_env, tmp_path):
    """A new, migrated database of its own (SQLite file, or a new PostgreSQL database)."""
    from lgsp.storage import engine_for, upgrade

    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    drop = None
    if pg:
        url, drop = _postgres_database(pg)
    else:
        url = f"sqlite:///{tmp_path / 'own.db'}"
    upgrade(url)
    yield url
    from lgsp.audit.writer import close_writers

    close_writers()
    engine_for(url).dispose()
    if drop:
        drop()


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


@pytest.fixture(scope="session")
def population_sim(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "population-sim.log"
    server = start_server(
        [sys.executable, "-m", "lgsp_adapters.population.simulator", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}", "/_sim/faults", log,
    )
    yield server
    server.stop()


class Simulator:
    """Switches the simulator's fault modes for one test and restores them after."""

    def __init__(self, server: Server):
        self.server = server

    def set(self, mode: str, **extra) -> None:
        httpx.post(f"{self.server.url}/_sim/faults", json={"mode": mode, **extra}).raise_for_status()


@pytest.fixture
def faults(population_sim):
    sim = Simulator(population_sim)
    yield sim
    sim.set("normal")


@pytest.fixture(scope="session")
def gateway(lgsp_env, population_sim, tmp_path_factory):
    from lgsp import keys
    from lgsp.config import settings
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for

    engine = engine_for(settings().db_url)
    admin = Admin(engine, "tests")
    admin.register_spec_services()
    keys.ensure_key(engine)
    admin.set_connection("population", "population", {
        "endpoint": f"{population_sim.url}/dancu", "timeout": 2,
        "integration_code": "LGSP-TEST", "account": "lgsp-test", "agency_code": "000.00.00.H30",
    })
    port = lgsp_env["LGSP_GATEWAY_PORT"]
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    server = start_server(
        [sys.executable, "-m", "lgsp.cli", "serve", "--port", port],
        f"http://127.0.0.1:{port}", "/readyz", log,
    )
    server.extra["admin"] = admin
    server.extra["engine"] = engine
    yield server
    server.stop()


def get_token(gateway: Server, client_id: str, secret: str, scope: str | None = None) -> str:
    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    r = httpx.post(f"{gateway.url}/oauth/token", data=data, auth=(client_id, secret))
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


# -- the business registration simulator and its connection ------------------------------

BUSINESS_TOKEN_TTL = 2.0  # seconds: short, so the adapter's token refresh is exercised


@pytest.fixture(scope="session")
def business_sim(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "business-sim.log"
    client = ("lgsp-test", secrets.token_urlsafe(16))
    server = start_server(
        [sys.executable, "-m", "lgsp_adapters.business.simulator", "--host", "127.0.0.1", "--port", str(port),
         "--client-id", client[0], f"--client-secret={client[1]}", "--token-ttl", str(BUSINESS_TOKEN_TTL)],
        f"http://127.0.0.1:{port}", "/_sim/faults", log,
    )
    server.extra["client"] = client
    yield server
    server.stop()


def business_settings(sim: Server, **overrides) -> dict:
    client_id, secret = sim.extra["client"]
    return {"endpoint": f"{sim.url}/apiCSDLDKDN/1.0", "token_url": f"{sim.url}/token",
            "client_id": client_id, "client_secret": secret, "timeout": 1, **overrides}


@pytest.fixture(scope="session")
def business_gateway(gateway, business_sim):
    """The shared gateway with the `business` connection and the services of the specs."""
    admin = gateway.extra["admin"]
    admin.register_spec_services()
    admin.set_connection("business", "business", business_settings(business_sim))
    time.sleep(0.5)  # > config poll interval: the gateway has the connection and the service
    return gateway


PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


def audit_of(gateway: Server, request_id: str) -> dict:
    """The audit record of one exchange (there must be exactly one)."""
    from sqlalchemy import select

    from lgsp.storage.schema import audit_records

    with gateway.extra["engine"].connect() as conn:
        row = conn.execute(select(audit_records).where(audit_records.c.request_id == request_id)).first()
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
