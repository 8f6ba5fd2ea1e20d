"""Rate limits and quotas (lgsp.traffic) end to end: real gateways on loopback, real simulator,
real HTTP and SOAP, counters in the embedded store and in a real Redis."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import ROOT, Server, assert_problem, audit_of, free_port, get_token, lgsp_cli, wait_for
from lxml import etree
from sqlalchemy import select

from lgsp.storage.schema import audit_records

PURPOSE = "administrative-procedure"
CITIZEN = "001085012345"
CITIZEN_GET = "population.citizen.get"
CITIZEN_VERIFY = "population.citizen.verify"
NS = {"lgsp": "urn:lgsp:soap:v1"}
RATELIMIT_ITEM = re.compile(r'^"([a-z-]+)";r=(\d+);t=(\d+)$')
POLICY_ITEM = re.compile(r'^"([a-z-]+)";q=(\d+)(?:;w=(\d+))?$')


# -- servers ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_url() -> str:
    """The throw-away Redis of scripts/redis (started if need be). Skipped only if it cannot start,
    and then only where Redis is not required (scripts/test, and so CI, requires it)."""
    give_up = pytest.fail if os.environ.get("LGSP_TEST_REQUIRE_REDIS") == "1" else pytest.skip
    try:
        out = subprocess.run([str(ROOT / "scripts" / "redis")], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        give_up(f"Redis could not be started: {exc}")
    if out.returncode != 0:
        give_up(f"Redis could not be started: {out.stderr.strip()[-300:]}")
    return out.stdout.strip().splitlines()[-1]


def flush(url: str) -> None:
    """Forget the national quota's counters of earlier runs (every run's connection is 'population'); the
    other counters are keyed by each run's own client ids. Not FLUSHDB: runs going on beside this one
    (the other database's, another worktree's) share this Redis, and would see their counters vanish."""
    import redis

    with redis.Redis.from_url(url) as r:
        stale = list(r.scan_iter(match="lgsp:{rl}:n*", count=1000))
        if stale:
            r.delete(*stale)


def serve(tmp_path_factory, name: str, *, workers: int = 1, redis: str | None = None) -> Server:
    """A gateway of its own (own LGSP_HOME, so its own embedded counter file), on the shared database."""
    home = tmp_path_factory.mktemp(name)
    port = free_port()
    env = {"LGSP_HOME": str(home), "LGSP_PUBLIC_URL": f"http://127.0.0.1:{port}", "LGSP_REDIS_URL": redis or ""}
    cmd = [sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port), "--workers", str(workers)]
    log = home / "gateway.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:  # longer than conftest's 30 s: several workers start slowly on a loaded machine
        wait_for(f"http://127.0.0.1:{port}/readyz", timeout=120, proc=proc)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"gateway did not start; log:\n{log.read_text(errors='replace')[-3000:]}") from None
    return Server(f"http://127.0.0.1:{port}", proc, log)


@pytest.fixture(scope="module", params=["embedded", "redis"])
def limited(request, gateway, tmp_path_factory):
    """A gateway with each counter store: the same tests run against both."""
    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        flush(url)
    server = serve(tmp_path_factory, f"limited-{request.param}", redis=url)
    server.extra.update(admin=gateway.extra["admin"], engine=gateway.extra["engine"], backend=request.param, redis=url)
    yield server
    server.stop()


def new_client(gateway_or_admin, label: str, services=(CITIZEN_GET, CITIZEN_VERIFY)) -> tuple[str, str]:
    admin = gateway_or_admin.extra["admin"] if isinstance(gateway_or_admin, Server) else gateway_or_admin
    cid = f"{label}-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, f"{label} desk", "000.00.31.H30")
    for service in services:
        admin.add_grant(cid, service, ["personal_id", "full_name"] if service == CITIZEN_GET else ["match"], [PURPOSE])
    return cid, secret


def settle() -> None:
    time.sleep(0.6)  # > LGSP_CONFIG_POLL_SECONDS (0.2): every worker has the new configuration


def lookup(server: Server, token: str, client: httpx.Client | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}
    url = f"{server.url}/api/population/v1/citizens/{CITIZEN}"
    return (client or httpx).get(url, headers=headers, timeout=15)


def verify(server: Server, token: str) -> httpx.Response:
    return httpx.post(f"{server.url}/api/population/v1/citizens/verify",
                      json={"personal_id": CITIZEN, "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"},
                      headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}, timeout=15)


def ratelimit(resp: httpx.Response) -> dict[str, tuple[int, int]]:
    """The RateLimit field (draft-ietf-httpapi-ratelimit-headers-11) as {policy: (remaining, seconds)}."""
    out = {}
    for item in resp.headers["ratelimit"].split(", "):
        m = RATELIMIT_ITEM.match(item)
        assert m, f"not a service limit item: {item!r}"
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def policy(resp: httpx.Response) -> dict[str, tuple[int, int | None]]:
    out = {}
    for item in resp.headers["ratelimit-policy"].split(", "):
        m = POLICY_ITEM.match(item)
        assert m, f"not a quota policy item: {item!r}"
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)) if m.group(3) else None)
    return out


def backend_calls(population_sim) -> int:
    return sum(httpx.get(f"{population_sim.url}/_sim/stats").json()["operations"].values())


# -- the tests -------------------------------------------------------------------------------

def test_burst_then_429_with_headers(limited, population_sim):
    admin = limited.extra["admin"]
    cid, secret = new_client(limited, "burst")
    admin.set_policy(f"client:{cid}", {"rate_per_second": 0.05, "burst": 3})  # 3 at once, then one per 20 s
    settle()
    token = get_token(limited, cid, secret)
    remaining = []
    for _ in range(3):
        r = lookup(limited, token)
        assert r.status_code == 200, r.text
        assert policy(r) == {"client-rate": (3, 60)}
        remaining.append(ratelimit(r)["client-rate"][0])
    assert remaining == [2, 1, 0]

    before = backend_calls(population_sim)
    r = lookup(limited, token)
    body = assert_problem(r, 429, "rate.limited")
    assert "rate of 0.05 calls per second (burst 3)" in body["detail"]
    wait = int(r.headers["retry-after"])
    assert 1 <= wait <= 20
    assert ratelimit(r)["client-rate"] == (0, wait) and "ratelimit-policy" in r.headers
    assert backend_calls(population_sim) == before, "a refused call reached the backend"
    record = audit_of(limited, r.headers["x-request-id"])
    assert (record["error_code"], record["outcome"], record["status"], record["client_id"]) == (
        "rate.limited", "refused", 429, cid)


def test_malformed_requests_count_against_the_rate_like_any_other(limited, population_sim):
    """limit comes before validate: a refused request of a known service is counted, so a flood of bad
    requests is no way around the policy (nor a way to spend the gateway's CPU on validation unbounded)."""
    admin = limited.extra["admin"]
    cid, secret = new_client(limited, "malformed")
    admin.set_policy(f"client:{cid}", {"rate_per_second": 0.05, "burst": 3})
    settle()
    token = get_token(limited, cid, secret)
    headers = {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}
    bad = f"{limited.url}/api/population/v1/citizens/not-an-id"
    answers = [httpx.get(bad, headers=headers, timeout=15) for _ in range(3)]
    assert [r.status_code for r in answers] == [400, 400, 400], [r.text for r in answers]
    assert [ratelimit(r)["client-rate"][0] for r in answers] == [2, 1, 0]
    assert_problem(httpx.get(bad, headers=headers, timeout=15), 429, "rate.limited")
    r = lookup(limited, token)                         # the well-formed call finds the budget spent too
    assert_problem(r, 429, "rate.limited")
    assert audit_of(limited, r.headers["x-request-id"])["error_code"] == "rate.limited"


def test_retry_after_honoured(limited):
    admin = limited.extra["admin"]
    cid, secret = new_client(limited, "retry")
    admin.set_policy(f"client:{cid}", {"rate_per_second": 0.5, "burst": 1})
    settle()
    token = get_token(limited, cid, secret)
    answers = [lookup(limited, token) for _ in range(3)]  # one call per 2 s: some of these are refused
    refused = [r for r in answers if r.status_code == 429]
    assert refused and answers[0].status_code == 200, [r.status_code for r in answers]
    time.sleep(int(refused[-1].headers["retry-after"]))  # what the answer asked for: then the call passes
    assert lookup(limited, token).status_code == 200


def test_daily_quota_per_service(limited):
    admin = limited.extra["admin"]
    cid, secret = new_client(limited, "daily")
    admin.set_policy(f"client:{cid}/service:{CITIZEN_GET}", {"per_day": 2})
    settle()
    token = get_token(limited, cid, secret)
    assert [ratelimit(lookup(limited, token))["service-day"][0] for _ in range(2)] == [1, 0]
    r = lookup(limited, token)
    body = assert_problem(r, 429, "rate.limited")
    assert "quota of 2 calls per day for service 'population.citizen.get'" in body["detail"]
    wait = int(r.headers["retry-after"])
    assert 0 < wait <= 86_400  # until local midnight, when the day's quota starts again
    assert policy(r) == {"service-day": (2, 86_400)} and ratelimit(r)["service-day"] == (0, wait)
    # The quota is the service's: the client's other service is not limited, and says so by carrying no fields.
    other = verify(limited, token)
    assert other.status_code == 200, other.text
    assert "ratelimit" not in other.headers and "ratelimit-policy" not in other.headers


def test_national_quota_shared_by_all_clients_with_a_share_each(limited, population_sim):
    admin = limited.extra["admin"]
    first, second = new_client(limited, "share-a"), new_client(limited, "share-b")
    admin.set_policy("connection:population", {"per_day": 3, "shares": {first[0]: 2}, "on_store_failure": "closed"})
    try:
        settle()
        a, b = get_token(limited, *first), get_token(limited, *second)
        assert lookup(limited, a).status_code == 200
        r = lookup(limited, a)
        assert r.status_code == 200
        assert ratelimit(r) == {"national-day": (1, ratelimit(r)["national-day"][1]),
                                "national-share-day": (0, ratelimit(r)["national-share-day"][1])}
        body = assert_problem(lookup(limited, a), 429, "rate.limited")
        assert "daily share of 2 calls to 'population'" in body["detail"]
        r = lookup(limited, b)  # the share capped the first client; the national quota has one call left
        assert r.status_code == 200 and ratelimit(r)["national-day"][0] == 0
        before = backend_calls(population_sim)
        r = verify(limited, b)  # another service on the same connection: the same national quota
        body = assert_problem(r, 429, "rate.limited")
        assert "daily quota of 3 calls to 'population' is used up" in body["detail"]
        assert backend_calls(population_sim) == before
    finally:
        admin.delete_policy("connection:population")


def test_soap_door_answers_a_fault_with_the_same_code(limited, population_sim):
    admin = limited.extra["admin"]
    cid, secret = new_client(limited, "soap")
    admin.set_policy(f"client:{cid}", {"rate_per_second": 0.05, "burst": 1})
    settle()
    token = get_token(limited, cid, secret)
    body = (f'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:l="urn:lgsp:soap:v1"><soap:Body><l:PopulationCitizenGet><l:personal_id>{CITIZEN}</l:personal_id>'
            f'<l:purpose>{PURPOSE}</l:purpose></l:PopulationCitizenGet></soap:Body></soap:Envelope>').encode()

    def post() -> httpx.Response:
        return httpx.post(f"{limited.url}/soap/v1", content=body, timeout=15,
                          headers={"Content-Type": "text/xml; charset=utf-8", "Authorization": f"Bearer {token}"})

    ok = post()
    assert ok.status_code == 200, ok.text
    assert ratelimit(ok) == {"client-rate": (0, 20)}
    before = backend_calls(population_sim)
    refused = post()
    assert refused.status_code == 429
    assert etree.fromstring(refused.content).find(".//lgsp:Error/lgsp:code", NS).text == "rate.limited"
    assert 19 <= int(refused.headers["retry-after"]) <= 20 and "ratelimit" in refused.headers
    assert backend_calls(population_sim) == before
    record = audit_of(limited, refused.headers["x-request-id"])
    assert (record["door"], record["error_code"], record["outcome"]) == ("soap", "rate.limited", "refused")


def test_counters_are_shared_by_worker_processes_and_nodes(limited, gateway, tmp_path_factory, population_sim):
    """Embedded: one `lgsp serve --workers 2`. Redis: two gateways (nodes) on the same Redis.
    A quota of 10 admits exactly 10 of 40 concurrent calls, whichever process serves them."""
    admin = limited.extra["admin"]
    if limited.extra["backend"] == "embedded":
        servers = [serve(tmp_path_factory, "two-workers", workers=2)]
    else:
        servers = [limited, serve(tmp_path_factory, "second-node", redis=limited.extra["redis"])]
    try:
        cid, secret = new_client(limited, "shared")
        admin.set_policy(f"client:{cid}", {"per_day": 10})
        settle()
        tokens = [get_token(s, cid, secret) for s in servers]

        def one(i: int) -> httpx.Response:
            with httpx.Client() as fresh:  # a new connection each time: spread over the workers
                return lookup(servers[i % len(servers)], tokens[i % len(servers)], fresh)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(40)))
        # Admitted calls count whatever the backend then does (on a loaded machine some time out).
        admitted = [r for r in answers if r.status_code != 429]
        assert len(admitted) == 10, [(r.status_code, r.text[:120]) for r in answers]
        assert all(r.status_code == 200 or r.json()["code"].startswith("upstream.") for r in admitted)
        assert all(r.json()["code"] == "rate.limited" for r in answers if r.status_code == 429)
        with gateway.extra["engine"].connect() as conn:
            chains = {r.chain for r in conn.execute(select(audit_records.c.chain).where(
                audit_records.c.client_id == cid, audit_records.c.status != 429))}
        assert len(chains) >= 2, "the calls were not served by more than one process"
    finally:
        for s in servers:
            if s is not limited:
                s.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server of this test alone, so that it can be stopped."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/redis installs it)")
    port = free_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def test_redis_down_fails_open_or_closed_as_the_policy_says(gateway, tmp_path_factory, own_redis, population_sim):
    url, redis_proc = own_redis
    server = serve(tmp_path_factory, "redis-down", redis=url)
    try:
        admin = gateway.extra["admin"]
        lenient, strict = new_client(admin, "open"), new_client(admin, "closed")
        admin.set_policy(f"client:{lenient[0]}", {"rate_per_second": 100, "on_store_failure": "open"})
        admin.set_policy(f"client:{strict[0]}", {"rate_per_second": 100, "on_store_failure": "closed"})
        settle()
        tokens = get_token(server, *lenient), get_token(server, *strict)
        assert [lookup(server, t).status_code for t in tokens] == [200, 200]
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["limiter"]["backend"] == "redis" and ready["limiter"]["state"] == "up"

        redis_proc.terminate()
        redis_proc.wait(10)
        r = lookup(server, tokens[0])
        assert r.status_code == 200 and "ratelimit" not in r.headers  # served, uncounted
        before = backend_calls(population_sim)
        r = lookup(server, tokens[1])
        assert_problem(r, 503, "rate.store_unavailable")
        assert r.headers["retry-after"] == "1"
        assert backend_calls(population_sim) == before
        assert audit_of(gateway, r.headers["x-request-id"])["error_code"] == "rate.store_unavailable"
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200  # the node still serves: each policy decides for its calls
        assert ready.json()["limiter"]["state"] == "down"
    finally:
        server.stop()


# -- policies: admin API, CLI, apply ---------------------------------------------------------

@pytest.fixture(scope="module")
def policy_admin(gateway) -> tuple[str, str]:
    admin = gateway.extra["admin"]
    cid = f"policy-admin-{uuid.uuid4().hex[:6]}"
    return cid, get_token(gateway, cid, admin.create_client(cid, "Policy desk", roles=["admin"]))


def api(gateway, method: str, path: str, token: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{gateway.url}/admin/v1/policies{path}", timeout=15,
                         headers={"Authorization": f"Bearer {token}"}, **kw)


def test_admin_api_sets_policies_audited_and_refuses_bad_ones(gateway, policy_admin):
    admin_id, admin_token = policy_admin
    cid, _ = new_client(gateway, "api-policy")
    r = api(gateway, "PUT", f"/clients/{cid}", admin_token, json={"rate_per_second": 2.5, "per_day": 1000})
    assert r.status_code == 200, r.text
    assert r.json()["target"] == f"client:{cid}" and r.json()["burst"] == 3  # one second's worth by default
    r = api(gateway, "PUT", f"/clients/{cid}/services/{CITIZEN_GET}", admin_token, json={"per_month": 10})
    assert r.status_code == 200
    r = api(gateway, "PUT", "/connections/population", admin_token, json={"per_day": 10, "shares": {cid: 11}})
    assert r.status_code == 422 and "above the connection's daily quota" in r.json()["detail"]
    listed = {p["target"] for p in api(gateway, "GET", "", admin_token).json()}
    assert {f"client:{cid}", f"client:{cid}/service:{CITIZEN_GET}"} <= listed

    bad = [
        (f"/clients/{cid}", {"rate_per_second": -1}, 400, "request.invalid"),
        (f"/clients/{cid}", {"rate_per_second": 0}, 400, "request.invalid"),
        (f"/clients/{cid}", {"per_day": 10**12}, 400, "request.invalid"),
        (f"/clients/{cid}", {"burst": 5}, 422, "admin.invalid"),
        (f"/clients/{cid}", {}, 422, "admin.invalid"),
        (f"/clients/{cid}", {"per_day": 100, "per_month": 10}, 422, "admin.invalid"),
        ("/clients/nobody-here", {"per_day": 5}, 404, "admin.not_found"),
        (f"/clients/{cid}/services/no.such_service", {"per_day": 5}, 404, "admin.not_found"),
        ("/connections/no-such-connection", {"per_day": 5}, 404, "admin.not_found"),
        ("/connections/population", {"per_day": 5, "shares": {"nobody-here": 1}}, 404, "admin.not_found"),
        ("/connections/population", {"per_day": 5, "rate_per_second": 1}, 400, "request.invalid"),
    ]
    for path, body, status, code in bad:
        r = api(gateway, "PUT", path, admin_token, json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), (path, body, r.text)
        assert r.json()["detail"] and "Traceback" not in r.text
    assert api(gateway, "GET", f"/clients/{cid}", admin_token).json()["per_day"] == 1000  # unchanged by refusals

    assert api(gateway, "DELETE", f"/clients/{cid}/services/{CITIZEN_GET}", admin_token).status_code == 204
    assert api(gateway, "DELETE", f"/clients/{cid}/services/{CITIZEN_GET}", admin_token).status_code == 404
    with gateway.extra["engine"].connect() as conn:
        details = [d for (d,) in conn.execute(select(audit_records.c.detail).where(audit_records.c.kind == "admin")
                                                .order_by(audit_records.c.id))]
    mine = [d for d in details if d and str(d.get("target", "")).startswith(f"client:{cid}")]
    changes = [d for d in mine if d["action"] in ("policy.set", "policy.delete")]  # reads are recorded too
    assert [d["action"] for d in changes] == ["policy.set", "policy.set", "policy.delete"]
    assert changes[0]["after"]["rate_per_second"] == 2.5 and changes[-1]["after"] is None
    assert {d["actor"] for d in changes} == {f"client:{admin_id}"}
    assert any(d["action"] == "policy.get" for d in mine)


def test_cli_sets_lists_and_deletes_policies(gateway, lgsp_env):
    cid, _ = new_client(gateway, "cli-policy")
    ok = lgsp_cli(lgsp_env, "policies", "set", "--client", cid, "--rate", "5", "--burst", "10", "--per-day", "100")
    assert f"policy client:{cid} saved" in ok.stdout
    ok = lgsp_cli(lgsp_env, "policies", "set", "--connection", "population", "--per-day", "1000",
                  "--share", f"{cid}=400", "--on-store-failure", "closed")
    try:
        listed = lgsp_cli(lgsp_env, "policies", "list").stdout
        assert re.search(rf"client:{re.escape(cid)}\s+5\.0\s+10\s+100\s+-", listed), listed
        assert re.search(rf"connection:population\s+-\s+-\s+1000\s+-\s+{re.escape(cid)}=400\s+closed", listed), listed
        for args, words in [
            (["--client", cid, "--rate", "-3"], "rate_per_second must be at least"),
            (["--client", cid, "--per-day", "0"], "per_day must be at least"),
            (["--client", cid, "--rate", "1e9"], "absurd"),
            (["--client", "nobody-here", "--per-day", "5"], "No client 'nobody-here'"),
            (["--client", cid, "--service", "no.such", "--per-day", "5"], "No service 'no.such'"),
            (["--connection", "population", "--per-day", "5", "--share", "x"], "CLIENT=CALLS_PER_DAY"),
            (["--per-day", "5"], "for a client"),
        ]:
            bad = lgsp_cli(lgsp_env, "policies", "set", *args, check=False)
            assert bad.returncode != 0 and words in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)
        assert "rate_per_second" not in lgsp_cli(lgsp_env, "policies", "list").stdout.split(cid)[0][-5:]
    finally:
        lgsp_cli(lgsp_env, "policies", "delete", "--connection", "population")
    lgsp_cli(lgsp_env, "policies", "delete", "--client", cid)
    assert cid not in lgsp_cli(lgsp_env, "policies", "list").stdout
    gone = lgsp_cli(lgsp_env, "policies", "delete", "--client", cid, check=False)
    assert gone.returncode != 0 and "No policy" in gone.stderr


def test_apply_creates_policies_with_the_clients_of_the_file_and_refuses_bad_ones_whole(fresh_db_url, tmp_path):
    env = {"LGSP_DATABASE_URL": fresh_db_url, "DESK_SECRET": "a-secret-of-the-desk"}
    good = tmp_path / "province.yaml"
    good.write_text(f"""
clients:
  desk-one:
    name: Desk one
    secret_env: DESK_SECRET
grants:
  - client: desk-one
    service: {CITIZEN_GET}
    fields: [full_name]
    purposes: [{PURPOSE}]
policies:
  - client: desk-one
    rate_per_second: 4
    per_day: 500
  - client: desk-one
    service: {CITIZEN_GET}
    per_month: 9000
""")
    lgsp_cli(env, "services", "list")  # the database exists and is migrated
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for

    Admin(engine_for(fresh_db_url), "tests").register_spec_services()
    first = lgsp_cli(env, "apply", "-f", str(good))
    assert "+ policy client:desk-one" in first.stdout and "applied:" in first.stdout, first.stdout
    assert lgsp_cli(env, "apply", "-f", str(good)).stdout.strip().endswith("no changes")
    changed = good.read_text().replace("per_day: 500", "per_day: 600")
    good.write_text(changed)
    dry = lgsp_cli(env, "apply", "-f", str(good), "--dry-run").stdout
    assert "~ policy client:desk-one: per_day 500 → 600" in dry

    for policies, words in [
        ("  - client: desk-two\n    per_day: -5\n", "per_day must be at least"),
        ("  - client: desk-two\n    service: no.such_service\n    per_day: 5\n", "No service 'no.such_service'"),
        ("  - connection: nowhere\n    per_day: 5\n", "No connection 'nowhere'"),
        ("  - client: desk-two\n    rate_per_second: 1\n  - client: desk-two\n    per_day: 2\n", "declared twice"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text("clients:\n  desk-two:\n    name: Desk two\n    secret_env: DESK_SECRET\npolicies:\n" + policies)
        out = lgsp_cli(env, "apply", "-f", str(bad), check=False)
        assert out.returncode != 0 and words in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert "desk-two" not in lgsp_cli(env, "clients", "list").stdout, "a refused file was applied half-way"


# -- refusals learned by a worker (no store round trip until the counter could admit again) -----

class Asked:
    """A real counter store that counts how often it is asked."""

    def __init__(self, store):
        self.store, self.asked, self.name = store, 0, store.name

    async def take(self, counters):
        self.asked += 1
        return await self.store.take(counters)

    async def state(self) -> dict:
        return await self.store.state()

    async def close(self) -> None:
        await self.store.close()


@pytest.fixture(params=["embedded", "redis"])
def store(request, tmp_path):
    from lgsp.traffic.counters import EmbeddedStore, RedisStore

    if request.param == "embedded":
        return EmbeddedStore(tmp_path / "limits.sqlite")
    return RedisStore(request.getfixturevalue("redis_url"))  # the test's keys are its own: no flush


def test_a_worker_refuses_from_what_the_store_told_it_until_the_counter_could_admit(store):
    import asyncio

    from lgsp.traffic.counters import Quota, Rate
    from lgsp.traffic.limit import Limiter

    asked = Asked(store)
    limiter, other_worker = Limiter(asked), Limiter(store)  # two processes' limiters on one store
    rate = Rate(f"learn-{uuid.uuid4().hex[:6]}", 0.6, 2)
    day = Quota(f"learn-{uuid.uuid4().hex[:6]}", 100, time.time() + 3600)
    counters = (rate, day)

    async def scenario():
        got = [await limiter.take(counters) for _ in range(3)]
        assert [c[0].allowed for c in got] == [True, True, False] and asked.asked == 3
        refused_at = time.monotonic()
        again = await limiter.take(counters)  # certain to be refused: answered without the store
        assert asked.asked == 3 and not again[0].allowed and again[1].allowed
        truth = await other_worker.take(counters)  # what the store itself says now (a refusal counts nothing)
        assert not truth[0].allowed and truth[0].remaining == again[0].remaining == 0
        assert truth[0].retry_after <= again[0].retry_after <= truth[0].retry_after + 0.1  # never too soon
        assert (truth[1].remaining, round(truth[1].reset)) == (again[1].remaining, round(again[1].reset)) == (98, 3600)
        await limiter.take((Rate(rate.key, 0.001, 2), day))  # a new policy on the same counter: asked afresh
        assert asked.asked == 4
        await asyncio.sleep(max(0.0, refused_at + again[0].retry_after + 0.6 - time.monotonic()))
        passed = await limiter.take(counters)  # the counter could admit again: the store is asked, and admits
        assert passed[0].allowed and asked.asked == 5
        await store.close()

    asyncio.run(scenario())


def local_refusals(server: Server) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("lgsp_rate_local_refusals_total "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_refusals_answered_by_the_worker_keep_their_headers_and_are_each_audited(limited, population_sim):
    admin = limited.extra["admin"]
    cid, secret = new_client(limited, "learned")
    admin.set_policy(f"client:{cid}", {"rate_per_second": 0.1, "burst": 2, "per_day": 1000})
    settle()
    token = get_token(limited, cid, secret)
    before_local, before_backend = local_refusals(limited), backend_calls(population_sim)
    with httpx.Client() as client:
        answers = [lookup(limited, token, client) for _ in range(12)]
    assert [r.status_code for r in answers] == [200, 200] + [429] * 10
    assert backend_calls(population_sim) == before_backend + 2, "a refused call reached the backend"
    assert local_refusals(limited) - before_local >= 9  # the first refusal asked the store, the rest did not
    waits = []
    for r in answers[2:]:
        assert_problem(r, 429, "rate.limited")
        wait = int(r.headers["retry-after"])
        items = ratelimit(r)
        assert items["client-rate"] == (0, wait) and items["client-day"][0] == 998
        assert policy(r) == {"client-rate": (2, 20), "client-day": (1000, 86_400)}
        waits.append(wait)
    assert waits == sorted(waits, reverse=True) and 1 <= waits[-1] <= waits[0] <= 10
    with limited.extra["engine"].connect() as conn:
        refused = conn.execute(select(audit_records.c.request_id).where(
            audit_records.c.client_id == cid, audit_records.c.error_code == "rate.limited")).scalars().all()
    assert sorted(refused) == sorted(r.headers["x-request-id"] for r in answers[2:])  # one record each


def test_a_concurrent_flood_of_refusals_has_each_record_committed_before_its_answer(limited, population_sim):
    """Refusals' records are committed in groups (lgsp.traffic.grouped_audit): still one record each, in the
    database by the time its 429 arrives, and the flood never reaches the backend."""
    admin = limited.extra["admin"]
    cid, secret = new_client(limited, "flood")
    # One call in 100 s: the flood (all refusals, each waiting up to the linger for its group) stays refused
    # however slow a loaded box makes it.
    admin.set_policy(f"client:{cid}", {"rate_per_second": 0.01, "burst": 1})
    settle()
    token = get_token(limited, cid, secret)
    assert lookup(limited, token).status_code == 200
    before_backend = backend_calls(population_sim)
    began = time.perf_counter()

    def refused_and_recorded(_: int) -> tuple[str, bool]:
        r = lookup(limited, token)
        assert_problem(r, 429, "rate.limited")
        assert r.headers["ratelimit"] and r.headers["retry-after"]
        rid = r.headers["x-request-id"]
        return rid, audit_of(limited, rid)["error_code"] == "rate.limited"  # asked the moment the answer came

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(refused_and_recorded, range(40)))
    print(f"flood of 40 refusals took {time.perf_counter() - began:.1f} s")
    assert all(recorded for _, recorded in results)
    assert backend_calls(population_sim) == before_backend, "a refused call reached the backend"
    with limited.extra["engine"].connect() as conn:
        refused = conn.execute(select(audit_records.c.request_id).where(
            audit_records.c.client_id == cid, audit_records.c.error_code == "rate.limited")).scalars().all()
    assert sorted(refused) == sorted(rid for rid, _ in results)  # one record each


def test_a_burst_of_exchanges_waits_for_a_redis_connection_rather_than_going_uncounted(redis_url):
    """More exchanges at once than the client keeps connections (redis-py's default pool refuses the 101st)
    must queue for a connection: a refused connection would count the store as down and, with a fail-open
    policy, serve the calls uncounted."""
    import asyncio

    from lgsp.traffic.counters import Quota, RedisStore, StoreUnavailable

    store = RedisStore(redis_url)
    quota = (Quota(f"burst-{uuid.uuid4().hex[:6]}", 10, time.time() + 3600),)

    async def scenario() -> list:
        try:
            return await asyncio.gather(*(store.take(quota) for _ in range(400)), return_exceptions=True)
        finally:
            await store.close()

    results = asyncio.run(scenario())
    failed = [r for r in results if isinstance(r, StoreUnavailable)]
    assert not failed, f"{len(failed)} of 400 exchanges found the store 'unavailable': {failed[0]}"
    assert sum(r[0].allowed for r in results) == 10


def test_a_worker_makes_the_checks_of_a_client_and_service_once_per_policy_set_and_day(tmp_path):
    from lgsp.traffic.counters import EmbeddedStore
    from lgsp.traffic.limit import Limiter
    from lgsp.traffic.policies import Policies, Policy

    limiter = Limiter(EmbeddedStore(tmp_path / "limits.sqlite"), "Asia/Ho_Chi_Minh")
    policies = Policies.of([Policy("client:a", client_id="a", rate_per_second=5, burst=5, per_day=100)])
    now = time.time()
    plan = limiter.plan(policies, "a", CITIZEN_GET, "population", now)
    assert [c.name for c in plan.checks] == ["client-rate", "client-day"]
    assert plan.policy == '"client-rate";q=5;w=1, "client-day";q=100;w=86400'
    assert limiter.plan(policies, "a", CITIZEN_GET, "population", now + 1) is plan  # made once, not per call
    assert limiter.plan(policies, "b", CITIZEN_GET, "population", now).checks == ()  # another client: its own
    # A new snapshot's policies (an admin changed the rate): the plan is made afresh from them.
    changed = Policies.of([Policy("client:a", client_id="a", rate_per_second=9, burst=9, per_day=100)])
    again = limiter.plan(changed, "a", CITIZEN_GET, "population", now + 2)
    assert again.policy == '"client-rate";q=9;w=1, "client-day";q=100;w=86400'
    # After local midnight the day's counter has a new key: the plan is made afresh too.
    tomorrow = limiter.plan(changed, "a", CITIZEN_GET, "population", again.until + 1)
    assert tomorrow.counters[1].key != again.counters[1].key and tomorrow.counters[0] == again.counters[0]


def test_redis_down_a_fail_open_client_is_still_held_to_its_policy_by_each_worker(gateway, tmp_path_factory,
                                                                                  own_redis, population_sim):
    """Fail open serves calls the store cannot count, but a flood is not served unlimited: each worker counts them."""
    url, redis_proc = own_redis
    server = serve(tmp_path_factory, "redis-down-flood", redis=url)
    try:
        admin = gateway.extra["admin"]
        cid, secret = new_client(admin, "flood")
        admin.set_policy(f"client:{cid}", {"rate_per_second": 0.2, "burst": 2, "on_store_failure": "open"})
        settle()
        token = get_token(server, cid, secret)
        assert lookup(server, token).status_code == 200
        redis_proc.terminate()
        redis_proc.wait(10)
        before = backend_calls(population_sim)
        with httpx.Client() as http:
            answers = [lookup(server, token, http) for _ in range(6)]
        served = [r for r in answers if r.status_code == 200]
        assert len(served) == 2 and all("ratelimit" not in r.headers for r in served)  # the burst, uncounted
        refused = [r for r in answers if r.status_code != 200]
        assert len(refused) == 4
        for r in refused:
            assert_problem(r, 429, "rate.limited")
            assert 1 <= int(r.headers["retry-after"]) <= 5
        assert backend_calls(population_sim) == before + 2  # refused calls never reach the backend
        assert audit_of(gateway, refused[0].headers["x-request-id"])["error_code"] == "rate.limited"
    finally:
        server.stop()


def test_a_burst_of_refusals_beside_admitted_calls_is_audited_whole_each_before_its_answer(limited):
    """Refusals ride in the admitted exchanges' audit transactions (lgsp.traffic.grouped_audit): still
    every refused call has its record, durable when its answer arrives."""
    admin = limited.extra["admin"]
    greedy, calm = new_client(limited, "flood"), new_client(limited, "calm")
    admin.set_policy(f"client:{greedy[0]}", {"rate_per_second": 0.01, "burst": 2})  # none refilled on a slow box
    settle()
    tokens = {"flood": get_token(limited, *greedy), "calm": get_token(limited, *calm)}
    engine = limited.extra["engine"]

    def one(i: int) -> tuple[str, int, bool]:
        name = "calm" if i % 6 == 0 else "flood"
        r = lookup(limited, tokens[name])
        with engine.connect() as conn:  # looked up as soon as the answer is in: durable before it left
            found = conn.execute(select(audit_records.c.status).where(
                audit_records.c.request_id == r.headers["x-request-id"])).scalar_one_or_none()
        return name, r.status_code, found == r.status_code

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(72)))
    assert all(recorded for _, _, recorded in answers), "an answer left before its audit record was durable"
    statuses = [status for name, status, _ in answers if name == "flood"]
    assert statuses.count(429) == 58 and len(statuses) == 60
    with engine.connect() as conn:
        records = conn.execute(select(audit_records.c.status).where(audit_records.c.client_id == greedy[0])).all()
    assert sorted(r.status for r in records) == sorted(statuses)  # one record each, refusals included
