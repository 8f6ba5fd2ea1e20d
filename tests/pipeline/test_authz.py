"""Authorisation that takes effect at once, everywhere (issue 7, section 4).

Each test tries the attack against the real gateway on loopback (or, for what only
an in-process view can show, against the module itself) and expects the refusal.
"""
from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import stat
import string
import subprocess
import sys
import time
import uuid

import httpx
import orjson
import pytest
from helpers import assert_problem, get_token, lgsp_cli, serve_in_thread, wait_for_config
from joserfc import jwt
from sqlalchemy import func, insert, select

from lgsp.storage.schema import audit_records, connections

PURPOSE = "administrative-procedure"
CITIZEN = "001085012345"
DATASET = "business-licences"
OWNER = "000.00.12.H30"
LIMITED = ["licence_number", "licence_type", "status", "address.province_code"]


def admin_call(gateway, method: str, path: str, token: str | None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    return httpx.request(method, f"{gateway.url}/admin/v1{path}", headers=headers, timeout=15, **kw)


def new_client(gateway, prefix: str, **kw) -> tuple[str, str]:
    cid = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return cid, gateway.extra["admin"].create_client(cid, f"{prefix} system", **kw)


def last_id(gateway) -> int:
    with gateway.extra["engine"].connect() as conn:
        return conn.execute(select(func.max(audit_records.c.id))).scalar() or 0


def admin_records_after(gateway, since: int) -> list[dict]:
    with gateway.extra["engine"].connect() as conn:
        rows = conn.execute(select(audit_records).where(audit_records.c.id > since, audit_records.c.kind == "admin")
                            .order_by(audit_records.c.id))
        return [dict(r._mapping) for r in rows]


# -- 1. roles come from the live client store ------------------------------------------------

def test_a_demoted_admin_cannot_use_its_old_token(gateway):
    cid, secret = new_client(gateway, "boss", roles=["admin"])
    token = get_token(gateway, cid, secret)
    assert admin_call(gateway, "GET", "/clients", token).status_code == 200
    gateway.extra["admin"].update_client(cid, roles=[])  # demoted; the token still says "admin"
    r = admin_call(gateway, "POST", "/clients", token,
                   json={"client_id": f"rogue-{uuid.uuid4().hex[:6]}", "name": "Rogue", "roles": ["admin"]})
    assert_problem_control(r, 403, "access.no_grant")
    assert admin_call(gateway, "GET", "/clients", token).status_code == 403


def test_an_auditor_whose_role_is_taken_away_cannot_search_the_trail(gateway):
    cid, secret = new_client(gateway, "inspector", roles=["auditor"])
    token = get_token(gateway, cid, secret)
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{gateway.url}/audit/v1/records", headers=headers).status_code == 200
    gateway.extra["admin"].update_client(cid, roles=["integrator"])
    assert_problem_control(httpx.get(f"{gateway.url}/audit/v1/records", headers=headers), 403, "access.no_grant")


def assert_problem_control(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == code, resp.text
    return resp.json()


# -- 2. the data store: filters only on granted fields, opaque and signed cursors --------------

@pytest.fixture(scope="module")
def store(gateway):
    admin = gateway.extra["admin"]
    admin.register_spec_services()
    admin.set_connection("datastore", "datastore", {})
    suffix = uuid.uuid4().hex[:6]
    dept, shop, other = f"authz-dept-{suffix}", f"authz-shop-{suffix}", f"authz-other-{suffix}"
    secrets_ = {dept: admin.create_client(dept, "Licensing", OWNER),
                shop: admin.create_client(shop, "One-stop shop", "000.00.31.H30"),
                other: admin.create_client(other, "Another shop", "000.00.32.H30")}
    purposes = ["public-records"]
    admin.add_grant(dept, "datastore.records.publish", ["dataset", "key", "outcome", "version"], purposes)
    for cid in (shop, other):
        admin.add_grant(cid, "datastore.records.query", LIMITED, purposes)
    wait_for_config(gateway.url, gateway.extra["engine"])
    tokens = {cid: {"Authorization": f"Bearer {get_token(gateway, cid, s)}"} for cid, s in secrets_.items()}
    run = "".join(random.choices(string.ascii_uppercase, k=4))
    for n in range(5):
        record = {"licence_number": f"SCT-{run}-2024-{n:05d}", "document_number": f"{n}/GP-SCT",
                  "enterprise_code": "0409999999", "holder_name": f"Hộ kinh doanh {run} {n}",
                  "licence_type": "tobacco-retail", "issued_on": "2024-05-15", "issuing_agency": OWNER,
                  "status": "valid", "address": {"detail": "1 Lê Lợi", "commune_code": "20236",
                                                 "province_code": "48"}}
        r = httpx.put(f"{gateway.url}/api/datastore/v1/datasets/{DATASET}/records/{record['licence_number']}",
                      json=record, headers=tokens[dept], timeout=15)
        assert r.status_code == 200, r.text
    return {"shop": tokens[shop], "other": tokens[other], "run": run}


def query(gateway, headers: dict, **params) -> httpx.Response:
    return httpx.get(f"{gateway.url}/api/datastore/v1/datasets/{DATASET}/records", params=params, headers=headers,
                     timeout=15)


def test_a_filter_on_a_field_the_grant_hides_is_refused(gateway, store):
    # holder_name is hidden from the shop, and enterprise_code too: filtering on them would
    # tell it which records have which hidden value.
    for params in ({"filter[enterprise_code]": "0409999999"}, {"filter[address.commune_code]": "20236"},
                   {"filter[issued_on.gte]": "2024-01-01"}):
        body = assert_problem(query(gateway, store["shop"], **params), 403, "access.filter_not_granted")
        assert "0409999999" not in body["detail"]
    # Call by name (the services API, as the SOAP door passes them): the same rule.
    r = httpx.post(f"{gateway.url}/api/services/v1/datastore.records.query", headers=store["shop"],
                   json={"dataset": DATASET, "filter.enterprise_code": "0409999999"}, timeout=15)
    assert_problem(r, 403, "access.filter_not_granted")
    # The SOAP door (CallService with name/value pairs): a SOAP Fault with the same code.
    body = ('<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:l="urn:lgsp:soap:v1"><soap:Body><l:CallService><l:service>datastore.records.query</l:service>'
            f'<l:param><l:name>dataset</l:name><l:value>{DATASET}</l:value></l:param>'
            '<l:param><l:name>filter.enterprise_code</l:name><l:value>0409999999</l:value></l:param>'
            '</l:CallService></soap:Body></soap:Envelope>').encode()
    r = httpx.post(f"{gateway.url}/soap/v1", content=body, timeout=15,
                   headers={**store["shop"], "Content-Type": "text/xml; charset=utf-8"})
    assert r.status_code == 500 and "access.filter_not_granted" in r.text and "0409999999" not in r.text, r.text
    # Granted fields still filter.
    r = query(gateway, store["shop"], **{"filter[licence_type]": "tobacco-retail", "filter[status]": "valid"})
    assert r.status_code == 200, r.text


def test_cursors_are_opaque_signed_and_bound_to_client_and_dataset(gateway, store):
    params = {"filter[licence_type]": "tobacco-retail", "limit": 2}
    page = query(gateway, store["shop"], **params).json()
    cursor = page["next_cursor"]
    assert cursor
    # The record key (hidden from no one here, but it could be) does not travel in clear.
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert b"SCT-" not in raw and b"business-licences" not in raw
    assert query(gateway, store["shop"], cursor=cursor, **params).status_code == 200

    # The old, forgeable shape: base64 of [dataset, key] lets a caller start anywhere.
    forged = base64.urlsafe_b64encode(orjson.dumps([DATASET, "SCT-"])).decode().rstrip("=")
    assert_problem(query(gateway, store["shop"], cursor=forged, **params), 400, "cursor.invalid")
    altered = cursor[:-6] + ("A" if cursor[-6] != "A" else "B") + cursor[-5:]
    assert_problem(query(gateway, store["shop"], cursor=altered, **params), 400, "cursor.invalid")
    # Another client's cursor is not this client's.
    assert_problem(query(gateway, store["other"], cursor=cursor, **params), 400, "cursor.invalid")


# -- 3. egress policy ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def integrator(gateway):
    return get_token(gateway, *new_client(gateway, "wiring", roles=["integrator"]))


POPULATION = {"integration_code": "X", "account": "x", "agency_code": "000.00.00.H30"}


def test_connections_to_refused_destinations_are_refused_at_create(gateway, integrator, tmp_path):
    own = gateway.url.replace("127.0.0.1", "localhost")
    cases = [
        ("population", {"endpoint": "http://169.254.169.254/latest/meta-data", **POPULATION}),  # cloud metadata
        ("population", {"endpoint": "http://10.20.30.40/dancu", **POPULATION}),                 # private network
        ("population", {"endpoint": f"{own}/admin/v1/clients", **POPULATION}),                  # the gateway itself
        ("population", {"endpoint": "http://[::ffff:192.168.1.1]/x", **POPULATION}),            # mapped private
        ("population", {"endpoint": "http://93.184.216.34/dancu", "wsdl": "/etc/passwd", **POPULATION}),
        ("population", {"endpoint": "http://93.184.216.34/dancu", "wsdl": "file:///etc/hostname", **POPULATION}),
        ("population", {"endpoint": "http://93.184.216.34/dancu", "wsdl": f"{gateway.url}/admin/v1/connections",
                        **POPULATION}),
        ("business", {"endpoint": "http://93.184.216.34/api", "token_url": "http://192.168.0.1/token",
                      "client_id": "a", "client_secret": "b"}),
        ("datastore", {"database_url": f"sqlite:///{tmp_path / 'planted.db'}"}),
        ("datastore", {"datasets": "/etc"}),
    ]
    for adapter, settings in cases:
        r = admin_call(gateway, "PUT", "/connections/authz-evil", integrator,
                       json={"adapter": adapter, "settings": settings})
        body = assert_problem_control(r, 400, "admin.egress_refused")
        assert body["detail"], body
    assert not (tmp_path / "planted.db").exists()
    assert admin_call(gateway, "GET", "/connections/authz-evil", integrator).status_code == 404


def test_apply_refuses_the_same_destinations(fresh_db_url, tmp_path, lgsp_env):
    config = tmp_path / "province.yaml"
    config.write_text("connections:\n  evil:\n    adapter: population\n    settings:\n"
                      "      endpoint: http://169.254.169.254/x\n      integration_code: X\n      account: x\n"
                      "      agency_code: '000.00.00.H30'\n", encoding="utf-8")
    result = lgsp_cli({**lgsp_env, "LGSP_DATABASE_URL": fresh_db_url}, "apply", "-f", str(config), check=False)
    assert result.returncode != 0
    assert "169.254.169.254" in result.stdout + result.stderr and "egress" in (result.stdout + result.stderr)


def test_names_are_checked_by_the_addresses_they_resolve_to():
    import ipaddress

    from lgsp.egress import EgressRefused, Policy

    closed = Policy()
    for url in ("http://localhost:8080/", "http://127.0.0.1/", "http://0.0.0.0/", "http://[::1]/", "gopher://x/",
                "file:///etc/passwd", "http://169.254.169.254/"):
        with pytest.raises(EgressRefused):
            closed.check_url(url)
    loopback = Policy((ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1")), "127.0.0.1", 8080)
    loopback.check_url("http://localhost:9000/")
    with pytest.raises(EgressRefused, match="the LGSP itself"):
        loopback.check_url("http://localhost:8080/admin/v1/clients")


def test_calls_are_checked_on_the_wire_too(population_sim, monkeypatch):
    """At call time the resolved address is checked again (a name may resolve elsewhere by then)."""
    from lgsp import egress
    from lgsp.adapter import CallContext
    from lgsp_adapters.population import PopulationAdapter

    adapter = PopulationAdapter({"endpoint": population_sim.url.replace("127.0.0.1", "localhost") + "/dancu",
                                 **POPULATION})
    context = CallContext(request_id="egress-wire", client_id="x")
    monkeypatch.setattr(egress, "policy", lambda: egress.Policy())  # the operator allows no loopback
    with pytest.raises(egress.EgressRefused):
        asyncio.run(_call_once(adapter, "citizen.get", {"personal_id": CITIZEN}, context))


async def _call_once(adapter, operation, params, context):
    try:
        return await adapter.call(operation, params, context)
    finally:
        await adapter.aclose()


def test_a_connection_planted_in_the_database_never_reaches_the_gateway_itself(gateway):
    """Settings written straight into the database (past the admin API) are checked when the
    adapter is built: a connection aimed at the gateway's own admin API is never called."""
    import datetime as dt

    from lgsp.config_notify import bump_generation

    engine, admin = gateway.extra["engine"], gateway.extra["admin"]
    name = f"planted-{uuid.uuid4().hex[:4]}"
    with engine.begin() as conn:
        conn.execute(insert(connections).values(
            name=name, adapter="population", enabled=True, updated_at=dt.datetime.now(dt.timezone.utc),
            settings={"endpoint": f"{gateway.url}/admin/v1/clients", **POPULATION}))
        bump_generation(conn)
    service = f"authz.planted{uuid.uuid4().hex[:4]}.get"
    admin.set_service(service, version="v1", connection=name, operation="citizen.get", personal_data=False)
    cid, secret = new_client(gateway, "planted")
    admin.add_grant(cid, service, ["full_name"], [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    since = last_id(gateway)
    r = httpx.post(f"{gateway.url}/api/services/v1/{service}", json={"personal_id": CITIZEN},
                   headers={"Authorization": f"Bearer {get_token(gateway, cid, secret)}"}, timeout=15)
    assert_problem(r, 503, "service.unavailable")
    assert not [r for r in admin_records_after(gateway, since) if r["detail"]["action"] == "api.refused"]


def test_redirects_are_not_followed(gateway, business_sim):
    hits = []

    async def target(scope, receive, send):
        if scope["type"] == "http":
            hits.append(scope["path"])
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"{}"})

    with serve_in_thread(target) as target_url:
        async def redirector(scope, receive, send):
            if scope["type"] == "http":
                await send({"type": "http.response.start", "status": 307,
                            "headers": [(b"location", f"{target_url}/stolen".encode())]})
                await send({"type": "http.response.body", "body": b""})

        with serve_in_thread(redirector) as redirect_url:
            admin = gateway.extra["admin"]
            conn = f"redirecting-{uuid.uuid4().hex[:4]}"
            client_id, secret = business_sim.extra["client"]
            admin.set_connection(conn, "business", {"endpoint": f"{business_sim.url}/apiCSDLDKDN/1.0",
                                                    "token_url": f"{redirect_url}/token", "client_id": client_id,
                                                    "client_secret": secret, "timeout": 2})
            service = f"authz.redirect{uuid.uuid4().hex[:4]}.get"
            admin.set_service(service, version="v1", connection=conn, operation="enterprise.get", personal_data=False)
            cid, csecret = new_client(gateway, "redirected")
            admin.add_grant(cid, service, ["enterprise_code", "name"], [PURPOSE])
            wait_for_config(gateway.url, gateway.extra["engine"])
            token = get_token(gateway, cid, csecret)
            r = httpx.post(f"{gateway.url}/api/services/v1/{service}", json={"enterprise_code": "0101234565"},
                           headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}, timeout=15)
    assert_problem(r, 502, "upstream.egress_refused")
    assert "redirect" in r.json()["detail"]
    assert hits == []  # the redirect's target was never asked


# -- 4. connection headers are secrets --------------------------------------------------------

def test_connection_headers_are_encrypted_at_rest_and_masked(gateway, integrator, population_sim):
    name = f"keyed-{uuid.uuid4().hex[:4]}"
    key = f"api-key-{uuid.uuid4().hex}"
    settings = {"endpoint": f"{population_sim.url}/dancu", **POPULATION, "headers": {"X-API-Key": key}}
    since = last_id(gateway)
    r = admin_call(gateway, "PUT", f"/connections/{name}", integrator, json={"adapter": "population",
                                                                            "settings": settings})
    assert r.status_code == 200, r.text
    assert r.json()["settings"]["headers"] == {"X-API-Key": "********"}
    assert admin_call(gateway, "GET", f"/connections/{name}", integrator).json()["settings"]["headers"] == \
        {"X-API-Key": "********"}
    with gateway.extra["engine"].connect() as conn:
        stored = conn.execute(select(connections.c.settings).where(connections.c.name == name)).scalar_one()
    assert key not in orjson.dumps(stored).decode() and set(stored["headers"]["X-API-Key"]) == {"$secret"}
    assert all(key not in orjson.dumps(r["detail"]).decode() for r in admin_records_after(gateway, since))
    # Sending the mask back (as a form would) keeps the stored key; the adapter gets it in clear.
    r = admin_call(gateway, "PUT", f"/connections/{name}", integrator,
                   json={"adapter": "population", "settings": {**settings, "timeout": 3,
                                                               "headers": {"X-API-Key": "********"}}})
    assert r.status_code == 200, r.text
    from lgsp.registry import load_snapshot

    assert load_snapshot(gateway.extra["engine"]).connections[name].settings["headers"] == {"X-API-Key": key}


# -- 5. console sign-out ends the session; token times -----------------------------------------

def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_console_sign_out_ends_the_session_on_the_server(gateway):
    cid, secret = new_client(gateway, "reviewer", roles=["auditor"])
    since = last_id(gateway)
    with httpx.Client(base_url=gateway.url, follow_redirects=False, timeout=15) as browser:
        csrf = _csrf(browser.get("/console/login").text)
        r = browser.post("/console/login", data={"csrf": csrf, "client_id": cid, "client_secret": secret})
        assert r.status_code == 303 and r.headers["location"].endswith("/console/records")
        page = browser.get("/console/records")
        assert page.status_code == 200
        stolen = browser.cookies.get("lgsp_console")
        r = browser.post("/console/logout", data={"csrf": _csrf(page.text)})
        assert r.status_code == 303
    # The cookie from before sign-out (kept by an attacker, or a shared computer) opens nothing.
    r = httpx.get(f"{gateway.url}/console/records", cookies={"lgsp_console": stolen}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("/console/login")
    actions = [(r["detail"]["action"], r["detail"]["actor"]) for r in admin_records_after(gateway, since)]
    assert ("console.sign_in", f"console:{cid}") in actions and ("console.sign_out", f"console:{cid}") in actions


def _forged(gateway, sub: str, scope: str, **times) -> str:
    from lgsp import keys
    from lgsp.config import settings

    key = keys.active_private_key(gateway.extra["engine"])
    now = int(time.time())
    claims = {"iss": settings().issuer, "aud": settings().audience, "sub": sub, "client_id": sub, "scope": scope,
              "jti": uuid.uuid4().hex, "iat": now, "exp": now + 300, **times}
    return jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": key.kid}, claims, key)


def test_tokens_from_the_future_or_living_too_long_are_refused(gateway):
    admin = gateway.extra["admin"]
    cid, _ = new_client(gateway, "clock")
    admin.add_grant(cid, "population.citizen.get", ["full_name"], [PURPOSE])
    auditor, _ = new_client(gateway, "clock-auditor", roles=["auditor"])
    wait_for_config(gateway.url, gateway.extra["engine"])
    now = int(time.time())
    url = f"{gateway.url}/api/population/v1/citizens/{CITIZEN}"

    def data(token: str) -> httpx.Response:
        return httpx.get(url, headers={"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}, timeout=15)

    def control(token: str) -> httpx.Response:
        return httpx.get(f"{gateway.url}/audit/v1/records", headers={"Authorization": f"Bearer {token}"}, timeout=15)

    assert data(_forged(gateway, cid, "population.citizen.get")).status_code == 200  # the forge itself is sound
    assert control(_forged(gateway, auditor, "audit.read")).status_code == 200
    future = {"iat": now + 3600, "exp": now + 3900}
    assert_problem(data(_forged(gateway, cid, "population.citizen.get", **future)), 401, "auth.token_not_yet_valid")
    assert_problem(data(_forged(gateway, cid, "population.citizen.get", nbf=now + 600)), 401,
                   "auth.token_not_yet_valid")
    year = {"exp": now + 365 * 86400}
    assert_problem(data(_forged(gateway, cid, "population.citizen.get", **year)), 401, "auth.token_lifetime")
    assert_problem_control(control(_forged(gateway, auditor, "audit.read", **year)), 401, "auth.token_lifetime")
    assert_problem_control(control(_forged(gateway, auditor, "audit.read", **future)), 401,
                           "auth.token_not_yet_valid")
    no_iat = _forged(gateway, cid, "population.citizen.get", iat=None)
    assert_problem(data(no_iat), 401, "auth.token_invalid")


# -- 6. files under LGSP_HOME are the owner's only ---------------------------------------------

def test_home_database_and_secret_are_owner_only(tmp_path):
    home = tmp_path / "new-home"
    env = {k: v for k, v in os.environ.items() if k not in ("LGSP_DATABASE_URL", "LGSP_SECRET_KEY")}
    env["LGSP_HOME"] = str(home)  # SQLite in the home, the master secret generated into it
    subprocess.run([sys.executable, "-m", "lgsp.cli", "db", "upgrade"], env=env, check=True, capture_output=True,
                   timeout=120)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    made = [p for p in home.iterdir() if p.is_file()]
    assert {p.name for p in made} >= {"lgsp.db", "secret.key"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {p.name: "0o600" for p in made}


# -- 7. refusals, reads and token issuance of the control plane are audited ---------------------

def test_control_plane_refusals_reads_and_tokens_are_audited(gateway, integrator):
    since = last_id(gateway)
    assert admin_call(gateway, "GET", "/clients", None).status_code == 401
    assert admin_call(gateway, "GET", "/clients", integrator).status_code == 403
    assert admin_call(gateway, "PUT", "/services/x.y", integrator, json={"nonsense": 1}).status_code == 400
    pid_path = f"/audit/v1/citizens/{CITIZEN}/accesses"
    assert httpx.get(gateway.url + pid_path, headers={"Authorization": f"Bearer {integrator}"}).status_code == 403
    boss_id, boss_secret = new_client(gateway, "reader", roles=["admin"])
    boss = get_token(gateway, boss_id, boss_secret)
    assert admin_call(gateway, "GET", "/clients", boss).status_code == 200
    assert admin_call(gateway, "GET", "/connections", integrator).status_code == 200

    records = admin_records_after(gateway, since)
    refused = [r for r in records if r["detail"]["action"] == "api.refused"]
    codes = {(r["detail"]["target"], r["error_code"], r["status"]) for r in refused}
    assert ("GET /admin/v1/clients", "auth.token_missing", 401) in codes
    assert ("GET /admin/v1/clients", "access.no_grant", 403) in codes
    assert any(t == "PUT /admin/v1/services/x.y" and s == 400 for t, _, s in codes), codes
    assert any(r["detail"]["actor"] == "anonymous" for r in refused)
    assert any(r["detail"]["actor"].startswith("client:wiring-") for r in refused)
    reads = {(r["detail"]["action"], r["detail"]["actor"]) for r in records}
    assert ("client.list", f"client:{boss_id}") in reads
    assert any(action == "connection.list" and actor.startswith("client:wiring-") for action, actor in reads)
    issued = [r for r in records if r["detail"]["action"] == "token.issue"]
    assert any(r["detail"]["actor"] == f"client:{boss_id}" for r in issued)
    text = str(records)
    assert CITIZEN not in text  # the personal ID of the path only as its keyed hash
    assert boss not in text and boss_secret not in text and integrator not in text


def test_migration_encrypts_headers_stored_in_clear_before_it(tmp_path, lgsp_env):
    import datetime as dt

    from helpers import postgres_database

    from lgsp.control.admin import open_secrets
    from lgsp.storage import engine_for, upgrade

    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    url, drop = postgres_database(pg) if pg else (f"sqlite:///{tmp_path / 'old.db'}", None)
    engine = engine_for(url)
    try:
        upgrade(url, "0003")  # a database from before: headers in clear
        with engine.begin() as conn:
            conn.execute(insert(connections).values(
                name="old", adapter="population", enabled=True, updated_at=dt.datetime.now(dt.timezone.utc),
                settings={"endpoint": "https://dancu.example.gov.vn/x", "headers": {"X-API-Key": "plain-key-1"}}))
        upgrade(url, "head")
        with engine.connect() as conn:
            stored = conn.execute(select(connections.c.settings).where(connections.c.name == "old")).scalar_one()
        assert "plain-key-1" not in orjson.dumps(stored).decode()
        assert open_secrets(stored)["headers"] == {"X-API-Key": "plain-key-1"}
    finally:
        engine.dispose()
        if drop:
            drop()
