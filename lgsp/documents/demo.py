"""The document exchange part of `lgsp demo` (lgsp/demo.py): two demo agencies of the province with their
document systems' clients, a national agency, a test CA the gateway trusts, and two signed packages ready
to send — one to the other local agency, one to the Government Office through the national axis simulator.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx

SENDER = ("000.00.00.H30", "demo-qlvb-ubnd", "UBND tỉnh (demo)")          # known to the axis simulator
RECIPIENT = ("000.00.31.H30", "demo-qlvb-stp", "Sở Tư pháp (demo)")
NATIONAL = ("000.00.00.G22", "Văn phòng Chính phủ")
SERVICES = ("documents.send", "documents.outbox.get", "documents.inbox.list", "documents.inbox.get",
            "documents.inbox.status")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def trust(home: Path) -> dict[str, str]:
    """A demo CA (its bundle is what the gateway trusts) and two signed packages in ``home``; the
    settings the gateway needs."""
    from lgsp.documents import testkit

    ca = testkit.make_ca("LGSP Demo CA")
    (home / "document-ca.pem").write_bytes(ca.cert_pem)
    signer = testkit.make_signer(ca, SENDER[0], "Văn thư UBND tỉnh")
    pdf = ("cong-van.pdf", "application/pdf", b"%PDF-1.7 demo " * 200)
    (home / "document-local.xml").write_bytes(testkit.signed_package(signer, SENDER[0], [RECIPIENT[0]], [pdf],
                                                                     number="101"))
    (home / "document-national.xml").write_bytes(testkit.signed_package(signer, SENDER[0], [NATIONAL[0]], [pdf],
                                                                        number="102"))
    return {"LGSP_DOCUMENT_TRUSTED_CAS": str((home / "document-ca.pem").resolve()), "LGSP_DOCUMENT_POLL": "1"}


def prepare(admin: Any, engine: Any, axis_port: int) -> dict[str, str]:
    """The directory, the clients and their grants, the national-axis connection; the clients' secrets."""
    from lgsp.documents.agencies import Directory
    from lgsp_adapters.national_axis.simulator import API_BASE, PROVINCE_SYSTEM

    admin.set_connection("national-axis", "national-axis", {
        "endpoint": f"http://127.0.0.1:{axis_port}{API_BASE}", "system_id": PROVINCE_SYSTEM[0],
        "secret": PROVINCE_SYSTEM[1], "timeout": 10})
    directory = Directory(engine, "demo")
    secrets = {}
    for code, client, name in (SENDER, RECIPIENT):
        secrets[client] = admin.create_client(client, f"Quản lý văn bản — {name}", code, name)
        directory.set(code, name=name, client_id=client)
        for service in SERVICES:
            admin.add_grant(client, service, ["items" if service.endswith(".list") else "id"], ["document-exchange"])
    directory.set(NATIONAL[0], name=NATIONAL[1], scope="national")
    return secrets


def register_on_axis(axis_port: int) -> None:
    """The recipient agency is registered on the national axis too (as the province's agencies are)."""
    from lgsp_adapters.national_axis.simulator import API_BASE, PROVINCE_SYSTEM

    httpx.post(f"http://127.0.0.1:{axis_port}{API_BASE}/agencies", json={"pcode": "", "code": RECIPIENT[0],
                                                                         "name": RECIPIENT[2]},
               headers={"systemid": PROVINCE_SYSTEM[0], "secret": PROVINCE_SYSTEM[1]})


def commands(base: str, home: Path, secrets: dict[str, str]) -> list[str]:
    """Send both documents as the sender; read the recipient's inbox; follow the national one's delivery."""
    def token(var: str, client: str) -> str:
        return (f"{var}=$(curl -s -u {client}:{secrets[client]} -d grant_type=client_credentials {base}/oauth/token"
                " | python3 -c 'import sys, json; print(json.load(sys.stdin)[\"access_token\"])')")

    api = f"{base}/api/documents/v1"
    send = ("curl -s -H \"Authorization: Bearer $SENDER\" -H 'Content-Type: application/xml' "
            f"--data-binary @{home.resolve()}/document-%s.xml {api}/outbox")
    field = "python3 -c 'import sys, json; print(json.load(sys.stdin)[\"%s\"])'"
    local = f"DOC=$({send % 'local'} | {field % 'id'}) && echo \"sent: $DOC\""
    national = f"OUT=$({send % 'national'} | {field % 'status_url'}) && echo \"sent: $OUT\""
    inbox = f"curl -s -H \"Authorization: Bearer $RECIPIENT\" {api}/inbox"
    read = f"curl -s -H \"Authorization: Bearer $RECIPIENT\" {api}/inbox/$DOC | head -c 300"
    follow = ("for i in $(seq 100); do S=$(curl -s -H \"Authorization: Bearer $SENDER\" \"$OUT\"); "
              "case $S in *'\"delivered\"'*) break;; esac; sleep 0.2; done; echo \"$S\"")
    return [token("SENDER", SENDER[1]), token("RECIPIENT", RECIPIENT[1]), local, national, inbox, read, follow]
