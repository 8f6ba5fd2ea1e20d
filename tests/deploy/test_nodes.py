"""Several gateway nodes on one PostgreSQL database, behind nginx — as in a provincial data centre.

Three nodes run as separate processes, each with its own LGSP_HOME (no shared
disk) and the same master secret from the environment; nginx spreads the load
over them and retries a request on another node when one fails. Their
configuration poll is set to 30 s, so a change seen everywhere within 1 s was
pushed by PostgreSQL LISTEN/NOTIFY, not found by polling.

Each cross-node behaviour is one PROPAGATIONS case (a change made through one
node's admin API, and a probe that tells whether a node has it): a feature that
must hold across nodes (quotas, delivery queues, …) adds its case there.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
import httpx
import pytest
from helpers import free_port, lgsp_cli, postgres_database, start_server, wait_for
from sqlalchemy import Connection, func, select

from lgsp import keys
from lgsp.audit import seals
from lgsp.control.admin import Admin
from lgsp.storage import engine_for, upgrade
from lgsp.storage.schema import audit_records, audit_seals, config_state

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("LGSP_TEST_DATABASE_URL"),
                       reason="several nodes share one PostgreSQL database; SQLite is the one-machine set-up"),
]

PURPOSE = "administrative-procedure"
CITIZEN = "001085012345"
CITIZEN_PATH = f"/api/population/v1/citizens/{CITIZEN}"
NODES = 3
PROPAGATION_LIMIT = 1.0  # seconds for a change on one node to reach every node


@dataclass
class Node:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path

    def loaded_at(self, generation: int) -> dt.datetime | None:
        """When this node first served a configuration at least as new as `generation` (from its log)."""
        for line in self.log.read_text(errors="replace").splitlines():
            if '"configuration loaded"' in line:
                entry = json.loads(line)
                if entry["generation"] >= generation:
                    return dt.datetime.fromisoformat(entry["ts"])
        return None

    def kill(self) -> None:
        """SIGKILL the node's whole process group: no shutdown seal, nothing flushed."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Cluster:
    db_url: str
    env: dict[str, str]
    nodes: list[Node]
    url: str                                   # nginx, in front of every node
    admin: Admin
    sims: list[str]                            # population simulator base URLs
    extra: dict[str, Any] = field(default_factory=dict)

    def token(self, node: Node | str, client_id: str, secret: str, scope: str | None = None) -> str:
        base = node.url if isinstance(node, Node) else node
        data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        r = httpx.post(f"{base}/oauth/token", data=data, auth=(client_id, secret), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def client_with_grant(self, prefix: str) -> tuple[str, str, int]:
        client_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
        secret = self.admin.create_client(client_id, f"{prefix} system", "000.00.31.H30")
        grant_id = self.admin.add_grant(client_id, "population.citizen.get", ["full_name"], [PURPOSE])
        return client_id, secret, grant_id

    def admin_api(self, node: Node, method: str, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.extra['admin_token']}"}
        r = httpx.request(method, f"{node.url}/admin/v1{path}", headers=headers, timeout=10, **kw)
        assert r.status_code < 300, r.text
        return r


def citizen(base: str, token: str, request_id: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}
    if request_id:
        headers["X-Request-ID"] = request_id
    return httpx.get(base + CITIZEN_PATH, headers=headers, timeout=10)


# -- nginx ------------------------------------------------------------------------

def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def nginx_conf(prefix: Path, port: int, upstreams: list[str]) -> str:
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=5s;" for u in upstreams)
    user = "user root root;" if os.geteuid() == 0 else ""
    return f"""{user}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream lgsp {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://lgsp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # A node that dies under a request: try the next one (idempotent reads only).
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries {len(upstreams)};
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


# -- load -------------------------------------------------------------------------

class Load:
    """Concurrent GETs through nginx in a background thread; keeps every request's outcome."""

    def __init__(self, url: str, token: str, concurrency: int = 16, total: int | None = None):
        self.url, self.token, self.concurrency, self.total = url, token, concurrency, total
        self.outcomes: dict[str, int] = {}   # request id → HTTP status, or 0 for a transport error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def wait(self, timeout: float = 300) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "load did not finish"

    @property
    def answered_ok(self) -> list[str]:
        return [rid for rid, status in list(self.outcomes.items()) if 200 <= status < 300]

    @property
    def failed(self) -> list[str]:
        return [rid for rid, status in list(self.outcomes.items()) if not 200 <= status < 300]

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "X-Purpose": PURPOSE}
        counter = iter(range(10**9))
        prefix = f"load-{uuid.uuid4().hex[:6]}"

        async def worker(session: aiohttp.ClientSession) -> None:
            while not self._stop.is_set():
                i = next(counter)
                if self.total is not None and i >= self.total:
                    return
                rid = f"{prefix}-{i}"
                try:
                    async with session.get(self.url + CITIZEN_PATH, headers={**headers, "X-Request-ID": rid}) as r:
                        await r.read()
                        self.outcomes[rid] = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    self.outcomes[rid] = 0

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(worker(session) for _ in range(self.concurrency)))


# -- the cluster ------------------------------------------------------------------

def start_node(name: str, db_url: str, home: Path, public_url: str, log: Path) -> Node:
    port = free_port()
    env = dict(os.environ, LGSP_HOME=str(home), LGSP_DATABASE_URL=db_url, LGSP_PUBLIC_URL=public_url,
               LGSP_CONFIG_POLL_SECONDS="30")
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", proc=proc)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"node {name} did not start; log:\n{log.read_text(errors='replace')[-3000:]}")
    return Node(name, f"http://127.0.0.1:{port}", proc, log)


@pytest.fixture(scope="module")
def cluster(lgsp_env, population_sim, tmp_path_factory):
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed: scripts/nginx installs Debian's package")
    work = tmp_path_factory.mktemp("cluster")
    db_url, drop = postgres_database(os.environ["LGSP_TEST_DATABASE_URL"])
    upgrade(db_url)
    engine = engine_for(db_url)
    admin = Admin(engine, "tests")
    admin.register_spec_services()
    keys.ensure_key(engine)
    seals.ensure_key(engine)
    # A second simulator, so that a connection change is visible in where each node sends its calls.
    sim2 = start_server([sys.executable, "-m", "lgsp_adapters.population.simulator", "--host", "127.0.0.1",
                         "--port", str(port2 := free_port())], f"http://127.0.0.1:{port2}", "/_sim/faults",
                        work / "sim2.log")
    sims = [population_sim.url, sim2.url]
    admin.set_connection("population", "population", population_settings(sims[0]))

    nginx_port = free_port()
    public_url = f"http://127.0.0.1:{nginx_port}"  # one issuer, whichever node signs the token
    nodes = []
    proxy = None
    try:
        for i in range(1, NODES + 1):
            home = work / f"node{i}"
            home.mkdir()
            nodes.append(start_node(f"node{i}", db_url, home, public_url, work / f"node{i}.log"))
        prefix = work / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(nginx_conf(prefix, nginx_port, [n.url[len("http://"):] for n in nodes]))
        proxy = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                                 stdout=open(work / "nginx.out", "wb"), stderr=subprocess.STDOUT)
        wait_for(public_url + "/healthz", proc=proxy)
        c = Cluster(db_url, {"LGSP_DATABASE_URL": db_url}, nodes, public_url, admin, sims)
        admin_id = f"admin-{uuid.uuid4().hex[:6]}"
        admin_secret = admin.create_client(admin_id, "Province IT desk", roles=["admin"])
        c.extra["admin_token"] = c.token(nodes[0], admin_id, admin_secret)
        load_id, load_secret, _ = c.client_with_grant("load")
        c.extra["load_token"] = c.token(public_url, load_id, load_secret)
        yield c
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        for node in nodes:
            if node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGTERM)
                try:
                    node.proc.wait(15)
                except subprocess.TimeoutExpired:
                    node.kill()
        sim2.stop()
        from lgsp.audit.writer import close_writers

        close_writers()
        engine.dispose()
        drop()


def population_settings(sim_url: str) -> dict:
    return {"endpoint": f"{sim_url}/dancu", "timeout": 5, "integration_code": "LGSP-TEST",
            "account": "lgsp-test", "agency_code": "000.00.00.H30"}


def upstream_of(cluster: Cluster, request_id: str) -> str | None:
    with engine_for(cluster.db_url).connect() as conn:
        return conn.execute(select(audit_records.c.upstream)
                            .where(audit_records.c.request_id == request_id)).scalar()


# -- changes on one node, seen by every node --------------------------------------

@dataclass(frozen=True)
class Propagation:
    """A change made through one node, and how to tell that another node has it."""
    name: str
    arrange: Callable[[Cluster], dict]                   # the state before the change
    change: Callable[[Cluster, Node, dict], None]        # made through the given node
    took_effect: Callable[[Cluster, Node, dict], bool]   # asked of one node directly
    # When the change was made: by default its admin record (written right after the commit).
    made_at: Callable[[Connection, dict], dt.datetime] = lambda conn, ctx: conn.execute(
        select(func.max(audit_records.c.at)).where(audit_records.c.kind == "admin")).scalar_one()


def _arrange_client(c: Cluster) -> dict:
    client_id, secret, grant_id = c.client_with_grant("victim")
    return {"client_id": client_id, "grant_id": grant_id, "token": c.token(c.nodes[0], client_id, secret)}


def _refused(c: Cluster, node: Node, ctx: dict) -> bool:
    status = citizen(node.url, ctx["token"]).status_code
    assert status in (200, 401, 403), status
    return status != 200


def _arrange_connection(c: Cluster) -> dict:
    c.admin.set_connection("population", "population", population_settings(c.sims[0]))
    back = {"token": c.extra["load_token"], "to": f"{c.sims[0]}/dancu"}
    deadline = time.monotonic() + 5
    while not all(_calls_new_endpoint(c, n, back) for n in c.nodes):  # every node is on the first simulator
        assert time.monotonic() < deadline, "the nodes did not return to the first simulator"
    return {"token": c.extra["load_token"], "to": f"{c.sims[1]}/dancu"}


def _calls_new_endpoint(c: Cluster, node: Node, ctx: dict) -> bool:
    rid = f"probe-{uuid.uuid4().hex[:8]}"
    assert citizen(node.url, ctx["token"], rid).status_code == 200
    return upstream_of(c, rid) == ctx["to"]


def _arrange_key(c: Cluster) -> dict:
    client_id, secret, _ = c.client_with_grant("rotation")
    return {"client_id": client_id, "secret": secret}


def _rotate_then_sign(c: Cluster, node: Node, ctx: dict) -> None:
    keys.rotate(engine_for(c.db_url))  # what `lgsp keys rotate` does, on any machine with the database
    ctx["made_at"] = dt.datetime.now(dt.timezone.utc)  # committed
    ctx["token"] = c.token(node, ctx["client_id"], ctx["secret"])  # signed with the new key


def _accepts_new_key(c: Cluster, node: Node, ctx: dict) -> bool:
    return citizen(node.url, ctx["token"]).status_code == 200


PROPAGATIONS = [
    Propagation("grant-revoked", _arrange_client,
                lambda c, n, ctx: c.admin_api(n, "DELETE", f"/grants/{ctx['grant_id']}"), _refused),
    Propagation("client-disabled", _arrange_client,
                lambda c, n, ctx: c.admin_api(n, "PATCH", f"/clients/{ctx['client_id']}", json={"status": "disabled"}),
                _refused),
    Propagation("connection-changed", _arrange_connection,
                lambda c, n, ctx: c.admin_api(n, "PUT", "/connections/population",
                                              json={"adapter": "population",
                                                    "settings": population_settings(c.sims[1])}),
                _calls_new_endpoint),
    Propagation("signing-key-rotated", _arrange_key, _rotate_then_sign, _accepts_new_key,
                made_at=lambda conn, ctx: ctx["made_at"]),
]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def change_made(c: Cluster, case: Propagation, ctx: dict) -> tuple[int, dt.datetime]:
    """The configuration generation after the change, and when the change was made."""
    with engine_for(c.db_url).connect() as conn:
        generation = conn.execute(select(config_state.c.generation)).scalar_one()
        at = case.made_at(conn, ctx)
    return generation, at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("case", PROPAGATIONS, ids=[p.name for p in PROPAGATIONS])
def test_a_change_on_one_node_reaches_every_node_within_a_second(cluster, case):
    ctx = case.arrange(cluster)
    if case.name != "signing-key-rotated":  # before the change, no node has it (the probe can tell)
        wait_until(lambda: not any(case.took_effect(cluster, n, ctx) for n in cluster.nodes), 5,
                   f"{case.name}: the state before the change did not reach every node")
    with Load(cluster.url, cluster.extra["load_token"], concurrency=8) as load, \
            concurrent.futures.ThreadPoolExecutor(len(cluster.nodes)) as pool:
        while len(load.outcomes) < 50:
            time.sleep(0.02)
        case.change(cluster, cluster.nodes[1], ctx)
        generation, made_at = change_made(cluster, case, ctx)

        def behaves_changed(node: Node) -> bool:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if case.took_effect(cluster, node, ctx):
                    return True
            return False

        behaving = dict(zip([n.name for n in cluster.nodes], pool.map(behaves_changed, cluster.nodes)))
    assert all(behaving.values()), f"{case.name}: {behaving}"
    # When each node loaded the change, by its own log: what the probes add (their round trips
    # through a busy node) is not propagation.
    delays = {n.name: (n.loaded_at(generation) - made_at).total_seconds() for n in cluster.nodes}
    assert max(delays.values()) < PROPAGATION_LIMIT, f"{case.name}: {delays}"
    print(f"{case.name}: loaded by every node {max(delays.values()):.3f} s after the change "
          f"({len(load.outcomes)} requests meanwhile)")
    assert not load.failed, f"load through nginx failed meanwhile: {len(load.failed)} of {len(load.outcomes)}"


def test_a_token_from_one_node_is_accepted_by_every_node(cluster):
    client_id, secret, _ = cluster.client_with_grant("roaming")
    for signer in cluster.nodes:
        token = cluster.token(signer, client_id, secret)
        for node in cluster.nodes:
            r = citizen(node.url, token)
            assert r.status_code == 200, f"token from {signer.name} refused by {node.name}: {r.text}"


# -- a node dies under load (last: it leaves the cluster one node short) --------------

def test_a_node_killed_under_load_loses_no_answered_exchange(cluster):
    victim = cluster.nodes[-1]
    with Load(cluster.url, cluster.extra["load_token"], concurrency=24, total=2400) as load:
        while len(load.answered_ok) < 600:
            time.sleep(0.01)
        victim.kill()
        load.wait()
    total, failed = len(load.outcomes), load.failed
    assert total == 2400
    assert len(failed) / total < 0.01, f"{len(failed)} of {total} failed through nginx: {failed[:5]}"
    print(f"node killed under load: {len(failed)} of {total} requests failed through nginx")

    answered = load.answered_ok
    with engine_for(cluster.db_url).connect() as conn:
        recorded = set(conn.execute(select(audit_records.c.request_id)
                                    .where(audit_records.c.request_id.in_(answered))).scalars())
        chains = set(conn.execute(select(audit_records.c.chain).where(audit_records.c.kind == "exchange")
                                  .distinct()).scalars())
        sealed = set(conn.execute(select(audit_seals.c.chain).distinct()).scalars())
        seal_keys = set(conn.execute(select(audit_seals.c.kid).distinct()).scalars())
    missing = [rid for rid in answered if rid not in recorded]
    assert not missing, f"{len(missing)} answered exchanges have no audit record, e.g. {missing[:5]}"
    assert len(chains) >= NODES, f"every node writes its own chain: {chains}"
    assert chains <= sealed and len(seal_keys) == 1, "every node seals its chain with the one shared seal key"

    run = lgsp_cli(cluster.env, "audit", "verify", "--json", check=False)
    report = json.loads(run.stdout)
    assert run.returncode == 0 and report["ok"], report["findings"][:5]
    assert report["chains"] >= len(chains) and report["records"] >= len(answered)
    # The dead node's chain ends after its last seal: information, not a finding.
    assert report["unsealed"], report
