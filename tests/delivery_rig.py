"""A gateway, delivery workers and a receiver on loopback, on a database of their own (for the
delivery tests and the benchmark): every process real, so any of them can be killed."""
from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from helpers import Server, free_port, get_token, postgres_database, start_server, wait_for

RELAY = Path(__file__).resolve().parent / "delivery_relay"
PURPOSE = "administrative-procedure"
SERVICES = ("portal.dossier.sync", "portal.dossier.progress", "portal.message.get")


def relay_env(extra: dict | None = None) -> dict:
    path = os.pathsep.join(p for p in (str(RELAY), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **(extra or {})}


def start_receiver(log_dir: Path) -> Server:
    port = free_port()
    return start_server([sys.executable, str(RELAY / "lgsp_test_relay.py"), "--port", str(port)],
                        f"http://127.0.0.1:{port}", "/_sim/record", log_dir / f"receiver-{port}.log", env=relay_env())


def portal_installed() -> bool:
    """The national portal's adapter and simulator (adapters/portal) are installed."""
    from importlib.metadata import entry_points

    return any(ep.name == "portal" for ep in entry_points(group="lgsp.adapters"))


PORTAL_ACCOUNT = {"dstcode": "DVCQG-H30-DELIVERY", "madonvi": "000.00.00.H30", "username": "lgsp-delivery"}


def start_portal(log_dir: Path) -> Server:
    port = free_port()
    password = secrets.token_urlsafe(16)
    server = start_server(
        [sys.executable, "-m", "lgsp_adapters.portal.simulator", "--host", "127.0.0.1", "--port", str(port),
         *[f"--{k}={v}" for k, v in PORTAL_ACCOUNT.items()], f"--password={password}"],
        f"http://127.0.0.1:{port}", "/_sim/faults", log_dir / f"portal-{port}.log")
    server.extra["settings"] = {"endpoint": f"{server.url}/dvcqg/api", **PORTAL_ACCOUNT, "password": password,
                                "timeout": 2}
    return server


@dataclass
class Rig:
    db_url: str
    log_dir: Path
    receiver: Server
    env: dict
    port: int
    client: tuple[str, str] = ("", "")
    gateway: Server | None = None
    workers: list[Server] = field(default_factory=list)
    destination: str = "relay"   # the adapter behind the `portal` connection: the test relay, or the portal's own

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_gateway(self, *extra: str, worker_in_process: bool = True) -> Server:
        env = {**self.env, "LGSP_DELIVERY_WORKER": "1" if worker_in_process else "0"}
        log = self.log_dir / f"gateway-{time.monotonic_ns()}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(self.port), *extra],
                                    stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
        try:
            wait_for(self.url + "/readyz", timeout=120, proc=proc)  # a busy shared machine starts slowly
        except Exception:
            proc.kill()
            raise RuntimeError(f"the gateway did not start; log:\n{log.read_text(errors='replace')[-3000:]}") from None
        self.gateway = Server(self.url, proc, log)
        return self.gateway

    def start_worker(self, metrics_port: int | None = None, **env: str) -> Server:
        """A `lgsp serve --plane worker` process (its /metrics on `metrics_port`, the Server's url)."""
        log = self.log_dir / f"worker-{time.monotonic_ns()}.log"
        out = open(log, "wb")
        extra = ["--metrics-port", str(metrics_port)] if metrics_port else []
        proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--plane", "worker", *extra],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env, **env})
        server = Server(f"http://127.0.0.1:{metrics_port}" if metrics_port else "", proc, log)
        self.workers.append(server)
        return server

    def token(self) -> str:
        return get_token(self.gateway, *self.client, scope=" ".join(SERVICES))

    def faults(self, mode: str = "normal", **extra) -> None:
        if self.destination == "portal":  # the portal simulator's modes: down, slow (then does the work) …
            if extra.get("delay_after"):
                mode, extra = "slow", {"delay": extra["delay_after"]}
            elif mode == "refuse":
                mode = "fault"
        httpx.post(f"{self.receiver.url}/_sim/faults", json={"mode": mode, **extra}).raise_for_status()

    def record(self) -> dict:
        """What took effect at the destination by its own record: {"applied": [{operation, dossier_no,
        idempotency_key (the message id)}] in order of arrival, "duplicates": repeats it recognised}."""
        if self.destination != "portal":
            return httpx.get(f"{self.receiver.url}/_sim/record").json()
        got = httpx.get(f"{self.receiver.url}/_sim/received", params={"limit": 1000000}).json()
        operations = {"DongBoHoSoMC": "dossier.sync", "CapNhatTienDoHoSoMC": "dossier.progress"}
        applied = [{"operation": operations[r["service"]], "dossier_no": r["data"][0]["MaHoSo"],
                    "idempotency_key": r["key"]} for r in got["items"] if r.get("applied")]
        return {"applied": applied, "duplicates": got["duplicates"]}

    def stop(self) -> None:
        for server in [*self.workers, self.gateway, self.receiver]:
            if server is not None:
                server.stop()


def make_rig(db_url: str, log_dir: Path, destination: str = "relay", **env: str) -> Rig:
    from lgsp import keys
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for

    receiver = start_portal(log_dir) if destination == "portal" else start_receiver(log_dir)
    port = free_port()
    rig_env = relay_env({"LGSP_DATABASE_URL": db_url, "LGSP_PUBLIC_URL": f"http://127.0.0.1:{port}",
                         "LGSP_DELIVERY_BACKOFF": "0.2", "LGSP_DELIVERY_BACKOFF_CAP": "1",
                         "LGSP_DELIVERY_LEASE": "3", "LGSP_DELIVERY_POLL": "0.05", **env})
    sys.path.insert(0, str(RELAY))  # the test process validates the connection's settings too
    import importlib

    importlib.invalidate_caches()
    from lgsp import plugins

    plugins.adapter_class.cache_clear()
    engine = engine_for(db_url)
    admin = Admin(engine, "tests")
    admin.register_spec_services()
    keys.ensure_key(engine)
    if destination == "portal":
        admin.set_connection("portal", "portal", receiver.extra["settings"])
    else:
        admin.set_connection("portal", "relay", {"endpoint": receiver.url, "timeout": 2})
    client_id = f"mot-cua-{secrets.token_hex(3)}"
    secret = admin.create_client(client_id, "One-stop-shop (test)", "000.00.31.H30")
    for service in SERVICES:
        admin.add_grant(client_id, service, ["message_id", "status"], [PURPOSE])
    return Rig(db_url, log_dir, receiver, rig_env, port, (client_id, secret), destination=destination)


def dossier(no: str, version: int = 1, **over) -> dict:
    return {"version": version, "dossier_no": no, "procedure_code": "1.001193",
            "applicant": {"name": "Nguyễn Văn An", "type": "citizen"},
            "received_at": "2026-11-30T08:15:00+07:00", "due_at": "2026-12-05T17:00:00+07:00",
            "status": "received", "summary": "Đăng ký khai sinh", **over}


def step(step_id: str, **over) -> dict:
    return {"step_id": step_id, "handled_at": "2026-11-30T09:00:00+07:00", "status": "processing",
            "content": "Chuyển phòng chuyên môn", **over}


def headers(token: str, **extra: str) -> dict:
    return {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE, **extra}


def wait_until(predicate, timeout: float = 30, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


__all__ = ["PURPOSE", "Rig", "dossier", "headers", "make_rig", "step", "wait_for", "wait_until"]


@contextlib.contextmanager
def running_rig(log_dir: Path, name: str, worker_in_process: bool = True) -> Iterator[Rig]:
    """A gateway (with its delivery worker unless told otherwise) over a fresh database (PostgreSQL when
    the suite runs on it)."""
    from lgsp.audit.writer import close_writers
    from lgsp.storage import engine_for, upgrade

    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    url, drop = postgres_database(pg) if pg else (f"sqlite:///{log_dir / f'{name}.db'}", None)
    upgrade(url)
    rig = make_rig(url, log_dir)
    rig.start_gateway(worker_in_process=worker_in_process)
    try:
        yield rig
    finally:
        rig.stop()
        close_writers()
        engine_for(url).dispose()
        if drop:
            drop()
