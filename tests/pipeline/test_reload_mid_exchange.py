"""A configuration reload in the middle of an exchange: the exchange keeps the adapter it was
resolved with (bound once from its snapshot), so it completes normally."""
from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import get_token

SERVICE = "population.citizen.get"
PURPOSE = "civil-status"


@pytest.fixture
def clerk(gateway):
    admin = gateway.extra["admin"]
    client_id = f"reload-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(client_id, "Reload desk", "000.00.41.H30")
    admin.add_grant(client_id, SERVICE, ["full_name", "birth_date"], [PURPOSE])
    deadline = time.monotonic() + 10
    while True:  # the gateway has the new client once it issues it a token
        r = httpx.post(f"{gateway.url}/oauth/token", data={"grant_type": "client_credentials"},
                       auth=(client_id, secret))
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return get_token(gateway, client_id, secret)


@pytest.fixture(scope="module")
def pid() -> str:
    out = subprocess.run([sys.executable, "-m", "lgsp_adapters.population.simulator", "--list", "1"],
                         capture_output=True, text=True, check=True).stdout
    return re.findall(r"^(\d{12})\t", out, re.M)[0]


def _lookup(gateway, token: str, pid: str) -> httpx.Response:
    return httpx.get(f"{gateway.url}/api/population/v1/citizens/{pid}", timeout=15,
                     headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE})


def _until(condition, what: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_exchange_in_flight_completes_when_its_connection_is_changed(gateway, population_sim, faults, clerk, pid):
    admin = gateway.extra["admin"]
    settings = {"endpoint": f"{population_sim.url}/dancu", "timeout": 2,
                "integration_code": "LGSP-TEST", "account": "lgsp-test", "agency_code": "000.00.00.H30"}
    faults.set("slow", delay=1.8, count=1)  # the connection's timeout is 2 s
    with ThreadPoolExecutor(1) as pool:
        try:
            in_flight = pool.submit(_lookup, gateway, clerk, pid)
            # The simulator took the slow request (its one-shot fault is spent): the exchange is at the adapter.
            _until(lambda: httpx.get(f"{population_sim.url}/_sim/faults").json()["mode"] == "normal",
                   "the slow request to reach the simulator")
            admin.set_connection("population", "population", settings, enabled=False)
            # The gateway has reloaded once a new exchange finds the connection gone.
            _until(lambda: _lookup(gateway, clerk, pid).status_code == 503, "the gateway to reload", timeout=5)
            assert not in_flight.done()  # the reload happened while the first exchange was in flight
            r = in_flight.result(timeout=15)
        finally:
            admin.set_connection("population", "population", settings)
    assert r.status_code == 200, r.text
    assert r.json()["full_name"]
    _until(lambda: _lookup(gateway, clerk, pid).status_code == 200, "the connection to be back")
