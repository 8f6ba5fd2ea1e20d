"""An integrator's whole path, with no restart of the running gateway:

scaffold an adapter with `lgsp adapters new`, pip-install it into the gateway's
environment, register a connection and a service through the admin API, grant
a client, and call the service through both doors (REST by name, SOAP CallService).
"""
from __future__ import annotations

import secrets
import subprocess
import sys

import httpx
import pytest
import requests
import zeep
from helpers import free_port, get_token, start_server, wait_for_config
from lxml import etree
from zeep.transports import Transport

PURPOSE = "case-handling"


@pytest.fixture(scope="module")
def installed_adapter(tmp_path_factory):
    name = f"acme{secrets.token_hex(3)}"
    where = tmp_path_factory.mktemp("adapter") / f"lgsp-adapter-{name}"
    subprocess.run([sys.executable, "-m", "lgsp.cli", "adapters", "new", name, "--directory", str(where)],
                   check=True, capture_output=True, text=True, timeout=60)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(where)],
                   check=True, capture_output=True, text=True, timeout=300)
    yield name
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", f"lgsp-adapter-{name}"],
                   capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def adapter_sim(installed_adapter, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("acme-sim") / "sim.log"
    server = start_server([sys.executable, "-m", f"lgsp_adapter_{installed_adapter}.simulator", "--port", str(port)],
                          f"http://127.0.0.1:{port}", "/_sim/faults", log)
    yield server
    server.stop()


def test_new_adapter_is_registered_and_called_through_both_doors_without_restart(
        gateway, installed_adapter, adapter_sim):
    name = installed_adapter
    admin = gateway.extra["admin"]
    suffix = secrets.token_hex(3)
    integrator = get_token(gateway, f"int-{suffix}", admin.create_client(f"int-{suffix}", "Integrator", roles=["integrator"]))
    boss = get_token(gateway, f"adm-{suffix}", admin.create_client(f"adm-{suffix}", "Administrator", roles=["admin"]))

    def admin_call(method: str, path: str, token: str, body: dict) -> httpx.Response:
        r = httpx.request(method, f"{gateway.url}/admin/v1{path}", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 201), r.text
        return r

    admin_call("PUT", f"/connections/{name}-records", integrator,
               {"adapter": name, "settings": {"endpoint": adapter_sim.url, "timeout": 5, "api_key": "k-123"}})
    shown = httpx.get(f"{gateway.url}/admin/v1/connections/{name}-records",
                      headers={"Authorization": f"Bearer {integrator}"}).json()
    assert shown["settings"]["api_key"] == "********"  # write-only, encrypted at rest
    service = f"{name}.record.get"
    admin_call("PUT", f"/services/{service}", integrator,
               {"version": "v1", "connection": f"{name}-records", "operation": "record.get", "personal_data": False})
    client = admin_call("POST", "/clients", boss, {"client_id": f"caller-{suffix}", "name": "A sector system"}).json()
    admin_call("POST", "/grants", boss, {"client_id": client["client_id"], "service": service,
                                         "fields": ["record_id", "title", "status"], "purposes": [PURPOSE]})
    wait_for_config(gateway.url, gateway.extra["engine"])
    token = get_token(gateway, client["client_id"], client["client_secret"])

    r = httpx.post(f"{gateway.url}/api/services/v1/{service}", json={"record_id": "R-0001"},
                   headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE})
    assert r.status_code == 200, r.text
    assert r.json()["record_id"] == "R-0001" and set(r.json()) <= {"record_id", "title", "status"}

    r = httpx.post(f"{gateway.url}/api/services/v1/{service}", json={"record_id": "R-9999"},
                   headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE})
    assert r.status_code == 404 and r.json()["code"] == "record.not_found"

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    soap = zeep.Client(f"{gateway.url}/soap/v1?wsdl", transport=Transport(session=session))
    result = soap.service.CallService(service=service, param=[{"name": "record_id", "value": "R-0001"}],
                                      purpose=PURPOSE)
    values = {etree.QName(el).localname: el.text for el in result}
    assert values["record_id"] == "R-0001" and "title" in values
