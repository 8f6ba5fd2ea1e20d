"""The documents tests' shared "world": a database of its own, local agencies with their clients, grants and
certificates from a test CA, and, as a module asks, the national axis simulator and a gateway on loopback.

A module builds its own world in a module-scoped fixture, with its options:

    @pytest.fixture(scope="module")
    def world(lgsp_env, tmp_path_factory):
        with build_world(tmp_path_factory.mktemp("documents"), {A: "qlvb-a", B: "qlvb-b"}, axis=True) as world:
            yield world

and talks to it through the World's helpers (REST calls, stored packages, audit records, the axis, a worker).
A plain module rather than a conftest.py: mypy checks tests/ as top-level modules, where a second conftest
would clash with tests/conftest.py.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from delivery_rig import wait_until
from helpers import Server, free_port, get_token, postgres_database, start_server
from sqlalchemy import func, select

from lgsp.documents import signature, testkit
from lgsp.storage.schema import audit_records
from lgsp_adapters.national_axis.simulator import API_BASE, OTHER_SYSTEMS, PROVINCE_SYSTEM

PROVINCE_ORGAN = "000.00.00.H30"   # this LGSP's own organ on the national axis (LGSP_DOCUMENT_ORGAN_ID)
NATIONAL = "000.00.00.G22"         # the Government Office, another centre on the national axis
SERVICES = ("documents.send", "documents.outbox.get", "documents.inbox.list", "documents.inbox.get",
            "documents.inbox.status")
PROVINCE = {"systemid": PROVINCE_SYSTEM[0], "secret": PROVINCE_SYSTEM[1]}   # this province's axis credentials
VPCP = {"systemid": NATIONAL, "secret": OTHER_SYSTEMS[NATIONAL]}     # the Government Office's
PDF = ("cong-van.pdf", "application/pdf", b"%PDF-1.7 " + bytes(range(256)) * 40)   # an attachment


@dataclass
class World:
    tmp: Path
    engine: Any
    env: dict[str, str]                      # what this world's gateway and workers run with
    ca: testkit.Identity
    trust: signature.TrustStore              # the CA as the only trusted one; its bundle at trust.path
    signers: dict[str, testkit.Identity]     # agency code → its document signer (NATIONAL's too, with an axis)
    clients: dict[str, tuple[str, str]]      # agency code → (client id, secret)
    axis: Server | None = None
    gw: Server | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    def api(self, method: str, path: str, agency: str | None, **kw: Any) -> httpx.Response:
        """A call to the documents REST API as `agency`'s system (None: without a token)."""
        headers = {"Authorization": f"Bearer {self.tokens[agency]}"} if agency else {}
        headers.update(kw.pop("headers", {}))
        return httpx.request(method, f"{_url(self.gw)}/api/documents/v1{path}", headers=headers, timeout=60, **kw)

    def stored_count(self) -> int:
        from lgsp.documents.store import packages

        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(packages)).scalar()

    def record_of(self, request_id: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(select(audit_records).where(audit_records.c.request_id == request_id)).first()
        assert row is not None, f"no audit record for {request_id}"
        return row._asdict()

    def axis_send(self, package: bytes, sender: str = NATIONAL, messagetype: str = "edoc") -> str:
        """A document sent on the national axis by another centre (by default the Government Office)."""
        answer = httpx.post(f"{_url(self.axis)}{API_BASE}/edocs", content=package,
                            headers={**VPCP, "from": sender, "messagetype": messagetype, "servicetype": "eDoc"})
        assert answer.json()["status"] == "OK", answer.text
        return answer.json()["DocID"]

    def axis_statuses(self) -> dict[str, list[str]]:
        """DocID → statuses of the recipients not yet "done", of everything the axis still lists for the province."""
        answer = httpx.get(f"{_url(self.axis)}{API_BASE}/edocs/received", headers=PROVINCE).json()
        return {item["DocID"]: item["status"] for item in answer["data"]}

    def start_worker(self, name: str, **env: str) -> Server:
        """A worker-plane process of this world (it runs the inbound poller), logging to <tmp>/<name>.log."""
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--plane", "worker"],
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                env={**os.environ, **self.env, **env})
        return Server("", proc, log)

    wait_until = staticmethod(wait_until)


@contextlib.contextmanager
def build_world(tmp: Path, agencies: Mapping[str, str], *, services: Sequence[str] = SERVICES, axis: bool = False,
                on_axis: Sequence[str] = (), gateway: bool = True, env: Mapping[str, str] | None = None,
                ca: testkit.Identity | None = None) -> Iterator[World]:
    """A world in `tmp`: `agencies` (code → client id) in the directory, each granted `services`; with `axis`,
    the national axis simulator as the axis connection, NATIONAL in the directory and `on_axis` registered on the
    axis as this province's agencies; with `gateway`, a gateway started with the world's env plus `env`."""
    from lgsp import keys
    from lgsp.control.admin import Admin
    from lgsp.documents.agencies import Directory
    from lgsp.storage import engine_for, upgrade

    with contextlib.ExitStack() as stack:   # torn down in reverse: gateway, axis, engine, database
        pg = os.environ.get("LGSP_TEST_DATABASE_URL")
        url, drop = postgres_database(pg) if pg else (f"sqlite:///{tmp / 'documents.db'}", None)
        if drop:
            stack.callback(drop)
        upgrade(url)
        engine = engine_for(url)
        stack.callback(engine.dispose)
        admin = Admin(engine, "tests")
        admin.register_spec_services()
        keys.ensure_key(engine)
        directory = Directory(engine, "tests")
        clients = {code: _register(admin, directory, code, client, services) for code, client in agencies.items()}
        ca = ca or testkit.make_ca()
        trust = trust_store(ca, tmp)
        signed_by = [*agencies, NATIONAL] if axis else list(agencies)
        world = World(tmp, engine, {"LGSP_DATABASE_URL": url, "LGSP_DOCUMENT_TRUSTED_CAS": str(trust.path),
                                    "LGSP_DOCUMENT_ORGAN_ID": PROVINCE_ORGAN, "LGSP_DOCUMENT_POLL": "0", **(env or {})},
                      ca, trust, {code: testkit.make_signer(ca, code) for code in signed_by}, clients)
        if axis:
            world.axis = start_axis(tmp / "axis.log")
            stack.callback(world.axis.stop)
            _connect_axis(admin, world.axis, on_axis)
            directory.set(NATIONAL, name="Văn phòng Chính phủ", scope="national")
        if gateway:
            port = free_port()
            world.env["LGSP_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
            world.gw = start_server([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port)],
                                    f"http://127.0.0.1:{port}", "/readyz", tmp / "gateway.log", env=world.env)
            stack.callback(world.gw.stop)
            world.tokens = {code: get_token(world.gw, client, secret) for code, (client, secret) in clients.items()}
        yield world


def _register(admin: Any, directory: Any, code: str, client: str, services: Sequence[str]) -> tuple[str, str]:
    """Agency `code` in the directory with its document system's client, granted `services`: (client id, secret)."""
    secret = admin.create_client(client, f"QLVB {code}")
    directory.set(code, name=f"Agency {code}", client_id=client)
    for service in services:
        admin.add_grant(client, service, ["items" if service.endswith(".list") else "id"], ["document-exchange"])
    return client, secret


def start_axis(log: Path) -> Server:
    """The national axis simulator on loopback, logging to `log`."""
    port = free_port()
    return start_server([sys.executable, "-m", "lgsp_adapters.national_axis.simulator", "--host", "127.0.0.1",
                         "--port", str(port)], f"http://127.0.0.1:{port}", "/_sim/faults", log)


def _connect_axis(admin: Any, axis: Server, on_axis: Sequence[str]) -> None:
    """The axis simulator as the axis connection, with `on_axis` registered on it as this province's agencies."""
    admin.set_connection("national-axis", "national-axis", {
        "endpoint": f"{axis.url}{API_BASE}", "system_id": PROVINCE_SYSTEM[0], "secret": PROVINCE_SYSTEM[1],
        "timeout": 5})
    for code in on_axis:  # registerAgency: an agency of this province's centre
        httpx.post(f"{axis.url}{API_BASE}/agencies", json={"pcode": "", "code": code, "name": f"Agency {code}"},
                   headers=PROVINCE).raise_for_status()


def _url(server: Server | None) -> str:
    assert server is not None, "this world was built without that server"
    return server.url


def trust_store(ca: testkit.Identity, folder: Path) -> signature.TrustStore:
    """`ca` as the only trusted CA (its bundle written to <folder>/cas.pem)."""
    path = folder / "cas.pem"
    path.write_bytes(ca.cert_pem)
    return signature.TrustStore.load(path)
