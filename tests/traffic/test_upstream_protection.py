"""Upstream protection end to end: a real gateway and a real population simulator on loopback,
failing on command (`POST /_sim/faults`). Each test has a connection of its own (a fresh circuit
and bulkhead) to the same simulator, called by name through the REST door (and the SOAP door)."""
from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
import time
import uuid
from typing import ClassVar

import httpx
import pytest
import requests
import yaml
import zeep
from helpers import (
    ROOT,
    Server,
    assert_problem,
    audit_of,
    free_port,
    get_token,
    lgsp_cli,
    start_server,
    wait_for,
    wait_for_config,
)
from zeep.transports import Transport

from lgsp.traffic import protection as protection_policy
from lgsp.traffic.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpen
from lgsp.traffic.retry import RESERVE, RetryBudget

PURPOSE = "administrative-procedure"
FIELDS = ["personal_id", "full_name", "gender", "birth_date"]
CODELIST_FIELDS = ["name", "version", "source", "note", "entries", "translations", "provinces", "communes",
                   "legacy_provinces", "legacy_districts", "legacy_communes"]
NS = {"lgsp": "urn:lgsp:soap:v1"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A population simulator of this module's own, so its faults touch no other test."""
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "population-sim.log"
    server = start_server(
        [sys.executable, "-m", "lgsp_adapters.population.simulator", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}", "/_sim/faults", log,
    )
    yield server
    server.stop()


@pytest.fixture
def faults(sim):
    yield lambda mode, **extra: httpx.post(f"{sim.url}/_sim/faults", json={"mode": mode, **extra}).raise_for_status()
    httpx.post(f"{sim.url}/_sim/faults", json={"mode": "normal"})


def sim_requests(sim, reset: bool = False) -> int:
    if reset:
        httpx.delete(f"{sim.url}/_sim/stats")
    return httpx.get(f"{sim.url}/_sim/stats").json()["requests"]


@pytest.fixture(scope="module")
def citizen() -> str:
    out = subprocess.run([sys.executable, "-m", "lgsp_adapters.population.simulator", "--list", "1"],
                         capture_output=True, text=True, check=True).stdout
    return re.findall(r"^(\d{12})\t", out, re.M)[0]


class Guarded:
    """A connection to the simulator with its own protection policy, a service on it, and a client."""

    def __init__(self, gateway, sim, protection: dict | None, timeout: float = 2):
        admin = gateway.extra["admin"]
        tag = uuid.uuid4().hex[:6]
        self.gateway = gateway
        self.connection = f"pop-{tag}"
        self.service = f"g{tag}.citizen.get"
        admin.set_connection(self.connection, "population", {
            "endpoint": f"{sim.url}/dancu", "timeout": timeout, "integration_code": "LGSP-TEST",
            "account": "lgsp-test", "agency_code": "000.00.00.H30"}, protection=protection)
        admin.set_service(self.service, version="v1", connection=self.connection, operation="citizen.get")
        client = f"guarded-{tag}"
        secret = admin.create_client(client, "One-stop shop", "000.00.31.H30")
        admin.add_grant(client, self.service, FIELDS, [PURPOSE])
        self.client = (client, secret)
        wait_for_config(gateway.url, gateway.extra["engine"])  # connection, service, client and grant, all loaded
        self.token = get_token(gateway, client, secret)
        self.http = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {self.token}", "X-Purpose": PURPOSE})

    def call(self, pid: str) -> httpx.Response:
        return self.http.post(f"{self.gateway.url}/api/services/v1/{self.service}", json={"personal_id": pid})

    def timed(self, pid: str) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        r = self.call(pid)
        return r, time.perf_counter() - started


def readyz(gateway) -> dict:
    return httpx.get(f"{gateway.url}/readyz").json()


def metric(gateway, name: str, connection: str) -> float | None:
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        if line.startswith(name + "{") and f'connection="{connection}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def soap_call(gateway, guarded: Guarded, pid: str):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {guarded.token}"
    client = zeep.Client(f"{gateway.url}/soap/v1?wsdl", transport=Transport(session=session))
    return client.service.CallService(service=guarded.service, param=[{"name": "personal_id", "value": pid}],
                                      purpose=PURPOSE)


# -- the breaker ------------------------------------------------------------------------------

def test_failing_upstream_opens_the_circuit_answers_at_once_and_closes_after_a_probe(
        gateway, sim, faults, citizen):
    open_seconds = 1.5
    g = Guarded(gateway, sim, {"retry": {"retries": 0}, "breaker": {"failures": 3, "open_seconds": open_seconds}},
                timeout=0.5)
    assert g.call(citizen).status_code == 200
    faults("slow", delay=5)  # hangs: each call waits out the connection's 0.5 s timeout
    for _ in range(3):
        r, took = g.timed(citizen)
        assert_problem(r, 504, "upstream.timeout")
        assert took >= 0.5
    before = sim_requests(sim)

    answers = [g.timed(citizen) for _ in range(20)]
    for r, _ in answers:
        body = assert_problem(r, 503, "upstream.unavailable")
        assert "circuit open" in body["detail"]
        assert 1 <= int(r.headers["retry-after"]) <= 2
    took = sorted(t for _, t in answers)
    # The gateway's own time to the answer (the audit record's latency, taken before its commit).
    inside = sorted(audit_of(gateway, r.headers["x-request-id"])["latency_ms"] for r, _ in answers)
    print(f"\nopen circuit: answers in median {statistics.median(took) * 1000:.2f} ms, max {took[-1] * 1000:.2f} ms "
          f"at the client; {statistics.median(inside):.2f} ms median in the gateway before the audit commit "
          f"(the timeout was 500 ms)")
    # The gateway decides at once; the client also waits for the audit commit (busy shared machine: generous).
    assert statistics.median(inside) < 10 and statistics.median(took) < 0.1 and took[-1] < 0.5
    assert sim_requests(sim) == before  # the upstream was not called
    record = audit_of(gateway, answers[0][0].headers["x-request-id"])
    assert record["error_code"] == "upstream.unavailable" and record["status"] == 503
    assert record["outcome"] == "failed" and record["service"] == g.service

    # the SOAP door goes through the same stage
    with pytest.raises(zeep.exceptions.Fault) as fault:
        soap_call(gateway, g, citizen)
    assert fault.value.detail.find(".//lgsp:code", NS).text == "upstream.unavailable"

    # visible: /metrics, /readyz, `lgsp connections list`
    assert metric(gateway, "lgsp_upstream_circuit_state", g.connection) == 2
    assert metric(gateway, "lgsp_upstream_rejected_total", g.connection) >= 20
    assert readyz(gateway)["upstreams"]["connections"][g.connection]["circuit"] == "open"
    listed = lgsp_cli({}, "connections", "list", "--gateway", gateway.url).stdout
    row = next(line for line in listed.splitlines() if line.startswith(g.connection + " "))
    assert row.split()[3] == "open", listed
    unknown = lgsp_cli({}, "connections", "list", "--gateway", f"http://127.0.0.1:{free_port()}")
    assert "circuit state unknown" in unknown.stderr
    assert next(line for line in unknown.stdout.splitlines() if line.startswith(g.connection + " ")).split()[3] == "?"

    # the upstream comes back: the first call after the open interval is a probe, and closes it
    faults("normal")
    back = time.monotonic()
    while (r := g.call(citizen)).status_code != 200:
        assert_problem(r, 503, "upstream.unavailable")
        assert time.monotonic() - back < open_seconds + 1, "the circuit did not close within the probe interval"
        time.sleep(0.05)
    print(f"closed again {time.monotonic() - back:.2f} s after the upstream came back (open interval {open_seconds} s)")
    assert metric(gateway, "lgsp_upstream_circuit_state", g.connection) == 0
    assert readyz(gateway)["upstreams"]["connections"][g.connection]["circuit"] == "closed"


def test_a_failed_probe_opens_the_circuit_again(gateway, sim, faults, citizen):
    g = Guarded(gateway, sim, {"retry": {"retries": 0}, "breaker": {"failures": 2, "open_seconds": 0.5}})
    faults("down")
    for _ in range(2):
        assert_problem(g.call(citizen), 502, "upstream.unavailable")
    assert_problem(g.call(citizen), 503, "upstream.unavailable")
    before = sim_requests(sim)
    deadline = time.monotonic() + 3
    while (r := g.call(citizen)).status_code == 503:  # until the probe goes through (and fails)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert_problem(r, 502, "upstream.unavailable")
    assert sim_requests(sim) == before + 1  # one probe, not retried
    assert_problem(g.call(citizen), 503, "upstream.unavailable")


def test_answers_that_the_record_does_not_exist_do_not_open_the_circuit(gateway, sim, citizen):
    g = Guarded(gateway, sim, {"breaker": {"failures": 2}})
    for _ in range(5):
        assert_problem(g.call("001099999999"), 404, "record.not_found")
    assert g.call(citizen).status_code == 200
    assert readyz(gateway)["upstreams"]["connections"][g.connection]["circuit"] == "closed"


# -- the bulkhead -----------------------------------------------------------------------------

def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 2 else samples[0]


async def _codelist_latencies(gateway, token: str, seconds: float) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            r = await http.get(f"{gateway.url}/api/codelists/v1/gender")
            out.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text
    return out


async def _hang(gateway, g: Guarded, pid: str, calls: int) -> list[tuple[int, str, float, str]]:
    async with httpx.AsyncClient(timeout=30, headers=dict(g.http.headers),
                                 limits=httpx.Limits(max_connections=calls)) as http:
        async def one():
            started = time.perf_counter()
            r = await http.post(f"{gateway.url}/api/services/v1/{g.service}", json={"personal_id": pid})
            return r.status_code, r.json().get("code", ""), time.perf_counter() - started, r.headers["x-request-id"]
        return await asyncio.gather(*(one() for _ in range(calls)))


def test_a_hanging_upstream_holds_at_most_its_bulkhead_and_other_services_keep_answering(
        gateway, sim, faults, citizen):
    admin = gateway.extra["admin"]
    admin.register_spec_services()
    cid = f"codes-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Health sector system", "000.00.37.H30")
    admin.add_grant(cid, "codelists.get", CODELIST_FIELDS, ["reference-data"])
    g = Guarded(gateway, sim, {"max_concurrent": 4, "queue_timeout": 0.3, "retry": {"retries": 0},
                               "breaker": {"failures": 1000, "min_calls": 100000}}, timeout=3)
    codes_token = get_token(gateway, cid, secret)
    calm = asyncio.run(_codelist_latencies(gateway, codes_token, 1.5))

    faults("slow", delay=10)  # population hangs (the connection gives up after 3 s)
    sim_requests(sim, reset=True)

    async def scene():
        hang = asyncio.create_task(_hang(gateway, g, citizen, 40))
        await asyncio.sleep(0.5)
        in_use = metric(gateway, "lgsp_upstream_in_use", g.connection)
        ready = readyz(gateway)["upstreams"]["connections"][g.connection]
        codes = await _codelist_latencies(gateway, codes_token, 2.0)
        return await hang, codes, in_use, ready

    population, codes, in_use, ready = asyncio.run(scene())
    busy = [p for p in population if p[1] == "upstream.busy"]
    timed_out = [p for p in population if p[1] == "upstream.timeout"]
    print(f"\ncode-list p99 {_p99(calm) * 1000:.1f} ms calm ({len(calm)} calls), "
          f"{_p99(codes) * 1000:.1f} ms while population hangs ({len(codes)} calls); "
          f"population: {len(timed_out)} held to the 3 s timeout, {len(busy)} refused busy "
          f"in at most {max(b[2] for b in busy) * 1000:.0f} ms")
    assert sim_requests(sim) == 4  # the bulkhead: no more than 4 calls reached the hanging upstream
    assert len(timed_out) == 4 and len(busy) == 36
    assert all(b[0] == 503 for b in busy)
    record = audit_of(gateway, busy[0][3])
    assert record["error_code"] == "upstream.busy" and record["status"] == 503 and record["upstream"] is None
    assert max(b[2] for b in busy) < 2.0  # waited its 0.3 s, not the upstream's timeout
    assert in_use == 4 and ready["in_use"] == 4 and ready["max_concurrent"] == 4
    assert _p99(codes) < 0.5  # generous: the figure itself is printed above
    assert metric(gateway, "lgsp_upstream_in_use", g.connection) == 0


# -- retries ----------------------------------------------------------------------------------

def test_a_read_is_retried_after_a_connection_failure(gateway, sim, faults, citizen):
    g = Guarded(gateway, sim, {"retry": {"retries": 2, "backoff": 0.01}})
    sim_requests(sim, reset=True)
    faults("down", count=1)  # the next request only
    assert g.call(citizen).status_code == 200
    assert sim_requests(sim) == 2
    assert metric(gateway, "lgsp_upstream_retries_total", g.connection) == 1


def test_retries_stay_within_the_budget(gateway, sim, faults, citizen):
    calls, retries = 100, 2
    g = Guarded(gateway, sim, {"retry": {"retries": retries, "backoff": 0.001, "budget": 0.1},
                               "breaker": {"failures": 1000, "min_calls": 100000}})
    faults("down")
    sim_requests(sim, reset=True)
    for _ in range(calls):
        assert_problem(g.call(citizen), 502, "upstream.unavailable")
    received = sim_requests(sim)
    print(f"\n{calls} failing reads reached the upstream {received} times "
          f"(without a budget: {calls * (1 + retries)})")
    assert calls < received <= calls + 0.1 * calls + RESERVE
    assert metric(gateway, "lgsp_upstream_retries_denied_total", g.connection) > 0


def test_a_write_is_never_retried(sim, faults, citizen, lgsp_env):
    """Through the invoke stage itself, with the population adapter declaring its operation a write
    (the built-in national adapters only read; the data store's publish, a write, has no simulator)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from lgsp.errors import ExchangeError
    from lgsp.pipeline.exchange import Exchange
    from lgsp.pipeline.invoke import invoke
    from lgsp.pipeline.stage import StageContext
    from lgsp.plugins import adapter_class
    from lgsp.registry import Client, ConnectionSpec, Registry, Service

    base = adapter_class("population")

    class WritingPopulation(base):
        operations: ClassVar = {**base.operations, "citizen.get": replace(base.operations["citizen.get"], writes=True)}

    settings = {"endpoint": f"{sim.url}/dancu", "timeout": 2, "integration_code": "LGSP-TEST",
                "account": "lgsp-test", "agency_code": "000.00.00.H30"}

    async def attempt(adapter_type, name: str) -> str:
        registry = Registry(None, 1)
        spec = ConnectionSpec(name, "population", settings, True, {"retry": {"retries": 3, "backoff": 0.001}})
        adapter = adapter_type(settings)
        registry.snapshot.connections[name] = spec
        registry._adapters[name] = (spec, adapter)
        ex = Exchange(door="rest", request_id=uuid.uuid4().hex, service_name="x.citizen.get",
                      params={"personal_id": citizen})
        ex.service = Service("x.citizen.get", "v1", name, "citizen.get", True, True)
        ex.client = Client("tests", "tests", None, True)
        ex.connection, ex.adapter = spec, adapter  # as resolve binds them
        try:
            with pytest.raises(ExchangeError) as err:
                await invoke(ex, StageContext(SimpleNamespace(registry=registry), registry.snapshot))
            return err.value.code
        finally:
            await adapter.aclose()

    faults("down")
    sim_requests(sim, reset=True)
    assert asyncio.run(attempt(WritingPopulation, f"w-{uuid.uuid4().hex[:6]}")) == "upstream.unavailable"
    assert sim_requests(sim) == 1
    assert asyncio.run(attempt(base, f"r-{uuid.uuid4().hex[:6]}")) == "upstream.unavailable"
    assert sim_requests(sim) == 1 + 4  # the read: first attempt and its 3 retries


# -- the policy: set, refused, applied --------------------------------------------------------

def test_admin_api_spec_declares_the_policy_schema_the_gateway_checks():
    spec = yaml.safe_load((ROOT / "openapi" / "admin.v1.yaml").read_text(encoding="utf-8"))
    assert spec["components"]["schemas"]["Protection"] == protection_policy.SCHEMA


@pytest.mark.parametrize("policy,words", [
    ({"max_concurrent": 0}, "protection/max_concurrent: 0 is less than the minimum of 1"),
    ({"retry": {"budget": 5}}, "protection/retry/budget: 5 is greater than the maximum of 1"),
    ({"breaker": {"failures": -3}}, "protection/breaker/failures"),
    ({"breaker": {"open_seconds": "soon"}}, "'soon' is not of type 'number'"),
    ({"retry": {"backoff": 5, "max_backoff": 1}}, "max_backoff must not be less than backoff"),
    ({"bulkhead": 3}, "'bulkhead' was unexpected"),
])
def test_bad_policies_are_refused_with_a_clear_sentence(gateway, sim, policy, words):
    admin = gateway.extra["admin"]
    name = f"bad-{uuid.uuid4().hex[:6]}"
    boss = f"adm-{uuid.uuid4().hex[:6]}"
    token = get_token(gateway, boss, admin.create_client(boss, "Administrator", roles=["admin"]))
    body = {"adapter": "population", "settings": {"endpoint": f"{sim.url}/dancu"}, "protection": policy}
    r = httpx.put(f"{gateway.url}/admin/v1/connections/{name}", json=body,
                  headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (400, 422) and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert "Traceback" not in r.text
    out = lgsp_cli({}, "connections", "set", name, "--adapter", "population",
                   "--settings", f'{{"endpoint": "{sim.url}/dancu"}}', "--protection", _json(policy), check=False)
    assert out.returncode != 0 and words in out.stderr, out.stderr
    assert name not in {c["name"] for c in admin.list_connections()}


def _json(value) -> str:
    import json

    return json.dumps(value)


def test_apply_sets_the_policy_idempotently_and_refuses_a_bad_one_before_changing_anything(gateway, sim, tmp_path):
    admin = gateway.extra["admin"]
    first, second = f"ap-{uuid.uuid4().hex[:6]}", f"ap-{uuid.uuid4().hex[:6]}"
    settings = {"endpoint": f"{sim.url}/dancu", "timeout": 3, "integration_code": "LGSP-TEST",
                "account": "lgsp-test", "agency_code": "000.00.00.H30"}
    good = {"max_concurrent": 8, "breaker": {"failures": 3}}
    path = tmp_path / "province.yaml"
    path.write_text(yaml.safe_dump({"connections": {
        first: {"adapter": "population", "settings": settings, "protection": good},
        second: {"adapter": "population", "settings": settings, "protection": {"retry": {"retries": 99}}},
    }}))
    out = lgsp_cli({}, "apply", "-f", str(path), check=False)
    assert out.returncode != 0 and f"Connection {second}: protection/retry/retries: 99" in out.stderr, out.stderr
    assert not {first, second} & {c["name"] for c in admin.list_connections()}  # nothing applied half-way

    path.write_text(yaml.safe_dump({"connections": {
        first: {"adapter": "population", "settings": settings, "protection": good}}}))
    done = lgsp_cli({}, "apply", "-f", str(path), check=False)
    assert done.returncode == 0, done.stderr
    assert admin.get_connection(first)["protection"] == good
    again = lgsp_cli({}, "apply", "-f", str(path), "--dry-run").stdout
    assert f"= connection {first}" in again, again
    deadline = time.monotonic() + 10
    while (seen := readyz(gateway)["upstreams"]["connections"].get(first)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert seen["max_concurrent"] == 8


def test_the_example_province_file_carries_a_valid_policy():
    doc = yaml.safe_load((ROOT / "docs" / "province.example.yaml").read_text(encoding="utf-8"))
    policy = doc["connections"]["population"]["protection"]
    assert protection_policy.check(policy) == policy


# -- the state machine and the budget on their own (a fake clock) -----------------------------

def test_breaker_opens_on_the_failure_ratio_of_its_window():
    now = [0.0]
    b = CircuitBreaker(protection_policy.parse({"breaker": {"failures": 100, "failure_ratio": 0.5, "min_calls": 10,
                                                            "window": 10}}).breaker, clock=lambda: now[0])
    for i in range(9):  # alternate: never 100 in a row, but half of the calls fail
        b.record(failed=i % 2 == 0, probe=b.admit())
    assert b.state == CLOSED  # 9 calls: under min_calls
    b.record(failed=True, probe=b.admit())
    assert b.state == OPEN
    with pytest.raises(CircuitOpen):
        b.admit()
    now[0] += 10
    assert b.admit() is True and b.state == HALF_OPEN
    with pytest.raises(CircuitOpen):  # one probe at a time
        b.admit()
    b.record(failed=False, probe=True)
    assert b.state == CLOSED


def test_old_failures_leave_the_window():
    now = [0.0]
    b = CircuitBreaker(protection_policy.parse({"breaker": {"failures": 100, "min_calls": 10, "window": 5}}).breaker,
                       clock=lambda: now[0])
    for _ in range(3):  # a third of the calls fail: under the ratio
        b.record(failed=True, probe=False)
        b.record(failed=False, probe=False)
        b.record(failed=False, probe=False)
    assert b.window.totals() == (9, 3)
    now[0] += 6
    b.record(failed=True, probe=False)
    assert b.state == CLOSED and b.window.totals() == (1, 1)


def test_the_retry_budget_bounds_retries_to_its_share_of_calls():
    budget = RetryBudget(0.1)
    spent = 0
    for _ in range(1000):
        budget.earn()
        spent += budget.spend()
    assert spent <= 0.1 * 1000 + RESERVE
    assert RetryBudget(0).spend() is False


def test_gateway_with_two_workers_reports_each_workers_circuit(lgsp_env, sim, faults, citizen, gateway, tmp_path):
    """`lgsp connections list` reads the circuit from /metrics, which merges every worker of the gateway."""
    g = Guarded(gateway, sim, {"retry": {"retries": 0}, "breaker": {"failures": 1, "open_seconds": 60}})
    port = free_port()
    log = open(tmp_path / "gateway-2.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port), "--workers", "2"],
                            stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, tmp_path / "gateway-2.log")
    try:
        url = server.url
        wait_for(url + "/readyz", timeout=120, proc=proc)  # two workers starting on a busy machine
        faults("down")
        with httpx.Client(timeout=10, headers=dict(g.http.headers)) as http:
            codes = set()
            for _ in range(40):  # each worker opens its own circuit after its first failure
                r = http.post(f"{url}/api/services/v1/{g.service}", json={"personal_id": citizen},
                              headers={"Connection": "close"})
                codes.add((r.status_code, r.json()["code"]))
        assert codes <= {(502, "upstream.unavailable"), (503, "upstream.unavailable")}
        text = httpx.get(f"{url}/metrics").text
        states = [line for line in text.splitlines()
                  if line.startswith("lgsp_upstream_circuit_state{") and g.connection in line]
        assert states and all('pid="' in s for s in states), states  # a series per worker that called it
        listed = lgsp_cli({}, "connections", "list", "--gateway", url).stdout
        row = next(line for line in listed.splitlines() if line.startswith(g.connection + " "))
        assert re.search(r"\bopen( \(\d/2 workers\))?", row), listed
    finally:
        server.stop()
        log.close()


def test_bulkhead_passes_a_freed_slot_to_the_oldest_waiter_and_refuses_after_the_wait():
    from lgsp.traffic.bulkhead import Bulkhead, BulkheadFull

    async def scene() -> tuple[list, int]:
        bulkhead, seen = Bulkhead(2, 0.2), []

        async def user(name: str, hold: float) -> None:
            try:
                await bulkhead.acquire()
            except BulkheadFull:
                seen.append(("busy", name))
                return
            seen.append(("in", name))
            await asyncio.sleep(hold)
            bulkhead.release()

        await asyncio.gather(user("a", 0.05), user("b", 1.0), user("c", 1.0), user("d", 0.0), user("e", 0.0))
        return seen, bulkhead.in_use

    seen, in_use = asyncio.run(scene())
    # a and b hold the two slots; c gets a's slot after 0.05 s; d and e wait 0.2 s for one and give up
    assert seen[:3] == [("in", "a"), ("in", "b"), ("in", "c")]
    assert sorted(seen[3:]) == [("busy", "d"), ("busy", "e")]
    assert in_use == 0
