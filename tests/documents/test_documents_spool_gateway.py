"""Large packages through a real gateway on loopback (the outbox spools the body to a file): a package over
the one-at-a-time size is stored and read back byte-identical apart from the trace header, and one whose
attachment was changed by a byte is refused by the streamed digest, nothing stored, the refusal audited."""
from __future__ import annotations

import base64
import hashlib
import os
import sys

import httpx
import pytest
from helpers import free_port, get_token, postgres_database, start_server
from sqlalchemy import func, select

from lgsp.documents import edxml, signature, testkit
from lgsp.documents.agencies import Directory
from lgsp.documents.door import LARGE
from lgsp.storage.schema import audit_records

A, B = "000.00.31.H30", "000.00.32.H30"
SERVICES = ("documents.send", "documents.inbox.list", "documents.inbox.get", "documents.inbox.status")
FILE = ("so-do.bin", "application/octet-stream", os.urandom(LARGE * 3 // 4 + 200_000))  # base64: over LARGE


@pytest.fixture(scope="module")
def world(lgsp_env, tmp_path_factory):
    from lgsp import keys
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for, upgrade

    tmp = tmp_path_factory.mktemp("documents-spool")
    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    url, drop = postgres_database(pg) if pg else (f"sqlite:///{tmp / 'documents.db'}", None)
    upgrade(url)
    engine = engine_for(url)
    admin = Admin(engine, "tests")
    admin.register_spec_services()
    keys.ensure_key(engine)
    clients = {}
    for code, client in ((A, "qlvb-spool-a"), (B, "qlvb-spool-b")):
        clients[code] = (client, admin.create_client(client, f"QLVB {code}"))
        Directory(engine, "tests").set(code, name=f"Agency {code}", client_id=client)
        for service in SERVICES:
            admin.add_grant(client, service, ["items" if service.endswith(".list") else "id"], ["document-exchange"])
    ca = testkit.make_ca()
    (tmp / "cas.pem").write_bytes(ca.cert_pem)
    port = free_port()
    env = {"LGSP_DATABASE_URL": url, "LGSP_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "LGSP_DOCUMENT_TRUSTED_CAS": str(tmp / "cas.pem"), "LGSP_DOCUMENT_MAX_BYTES": str(4 * LARGE),
           "LGSP_DELIVERY_WORKER": "0", "LGSP_DOCUMENT_ORGAN_ID": A, "LGSP_DOCUMENT_POLL": "0"}
    gateway = start_server([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port)],
                           f"http://127.0.0.1:{port}", "/readyz", tmp / "gateway.log", env=env)
    yield {"gw": gateway, "engine": engine, "signer": testkit.make_signer(ca, A),
           "tokens": {code: get_token(gateway, client, secret) for code, (client, secret) in clients.items()},
           "trust": signature.TrustStore.load(tmp / "cas.pem")}
    gateway.stop()
    engine.dispose()
    if drop:
        drop()


def api(world, method: str, path: str, agency: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {world['tokens'][agency]}", **kw.pop("headers", {})}
    return httpx.request(method, f"{world['gw'].url}/api/documents/v1{path}", headers=headers, timeout=60, **kw)


def stored_count(world) -> int:
    from lgsp.documents.store import packages

    with world["engine"].connect() as conn:
        return conn.execute(select(func.count()).select_from(packages)).scalar()


def test_a_large_package_is_stored_from_the_spool_and_read_back_as_sent_plus_the_trace(world):
    data = testkit.signed_package(world["signer"], A, [B], [FILE])
    assert len(data) > LARGE
    answer = api(world, "POST", "/outbox", A, content=data, headers={"Content-Type": "application/xml"})
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    read = api(world, "GET", f"/inbox/{accepted['id']}", B)
    assert read.status_code == 200 and len(read.content) == accepted["size"]
    marker = b"<edXML:TraceHeader><edXML:OrganId>" + A.encode()
    start = read.content.index(marker)
    end = read.content.index(b"</edXML:TraceHeader>", start) + len(b"</edXML:TraceHeader>")
    assert read.content[:start] + read.content[end:] == data  # byte-identical apart from this hop's header
    pkg, root = edxml.read(read.content)
    signature.verify(read.content, root, pkg, world["trust"])  # the sender's signature still verifies
    assert [a.sha256 for a in pkg.attachments] == [hashlib.sha256(FILE[2]).hexdigest()]


def test_a_large_package_with_one_byte_of_its_file_changed_is_refused_nothing_stored_and_audited(world):
    data = testkit.signed_package(world["signer"], A, [B], [FILE])
    changed = bytearray(FILE[2])
    changed[len(changed) // 2] ^= 0x80
    forged = data.replace(base64.b64encode(FILE[2]), base64.b64encode(bytes(changed)))
    before = stored_count(world)
    answer = api(world, "POST", "/outbox", A, content=forged,
                 headers={"Content-Type": "application/xml", "X-Request-ID": "doc-spool-forged"})
    assert answer.status_code == 400, answer.text
    problem = answer.json()
    assert problem["code"] == "document.signature_invalid" and "Digest mismatch" in problem["detail"]
    assert stored_count(world) == before
    with world["engine"].connect() as conn:
        record = conn.execute(select(audit_records).where(audit_records.c.request_id == "doc-spool-forged")).first()
    assert record is not None and record.error_code == "document.signature_invalid"
    assert record.request_bytes == len(forged)
