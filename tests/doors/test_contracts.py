"""The contracts say what the code does (issue 7, §5 and the bad inputs of §3).

Each test is a finding made from outside, with clients nobody on the project wrote
(authlib, zeep, httpx not following redirects), against the real gateway on loopback.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import httpx
import pytest
import requests
import zeep
from authlib.integrations.httpx_client import OAuth2Client
from helpers import assert_problem, audit_of, get_token, lgsp_cli, wait_for_config
from sqlalchemy import func, select
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

from lgsp.storage.schema import audit_records

PURPOSE = "administrative-procedure"
NS = {"lgsp": "urn:lgsp:soap:v1"}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def callers(gateway):
    """A sector system granted the population services, an auditor and an administrator."""
    admin = gateway.extra["admin"]
    run = uuid.uuid4().hex[:6]
    ids = {"client": f"ct-client-{run}", "auditor": f"ct-auditor-{run}", "admin": f"ct-admin-{run}"}
    secrets = {
        "client": admin.create_client(ids["client"], "contracts client", "000.00.31.H30"),
        "auditor": admin.create_client(ids["auditor"], "contracts auditor", roles=["auditor"]),
        "admin": admin.create_client(ids["admin"], "contracts admin", roles=["admin"]),
    }
    admin.add_grant(ids["client"], "population.citizen.get", ["personal_id", "full_name"], [PURPOSE])
    admin.add_grant(ids["client"], "population.citizen.verify", ["match"], [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    out = {role: (ids[role], secrets[role]) for role in ids}
    out["tokens"] = {role: get_token(gateway, ids[role], secrets[role]) for role in ids}
    return out


def bearer(callers, role: str) -> dict:
    return {"Authorization": f"Bearer {callers['tokens'][role]}"}


def exchange_count(gateway) -> int:
    with gateway.extra["engine"].connect() as conn:
        return conn.execute(select(func.count()).select_from(audit_records)
                            .where(audit_records.c.kind == "exchange")).scalar()


# -- the token endpoint does what its metadata says ----------------------------------------

def test_metadata_is_true_to_the_token_endpoint(gateway, callers):
    meta = httpx.get(f"{gateway.url}/.well-known/oauth-authorization-server").json()
    assert meta["response_types_supported"] == []  # no authorization endpoint, so no response type
    assert "authorization_endpoint" not in meta
    cid, secret = callers["client"]
    for method in meta["token_endpoint_auth_methods_supported"]:
        with OAuth2Client(cid, secret, token_endpoint_auth_method=method) as client:
            token = client.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
        assert token["token_type"].lower() == "bearer", method
        r = httpx.get(f"{gateway.url}/api/population/v1/citizens/001090012345",
                      headers={"Authorization": f"Bearer {token['access_token']}"})
        assert r.status_code != 401, (method, r.text)
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}


def test_client_secret_post_with_a_wrong_secret_is_refused(gateway, callers):
    cid, _ = callers["client"]
    r = httpx.post(f"{gateway.url}/oauth/token",
                   data={"grant_type": "client_credentials", "client_id": cid, "client_secret": "wrong"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_basic_credentials_that_are_not_utf8_are_invalid_client_not_a_500(gateway):
    # base64 of the byte 0xff: decodable base64, not decodable text.
    r = httpx.post(f"{gateway.url}/oauth/token", data={"grant_type": "client_credentials"},
                   headers={"Authorization": "Basic /w=="})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    assert r.headers["WWW-Authenticate"].startswith("Basic")


# -- the served documents say what the door requires -----------------------------------------

@pytest.mark.parametrize("api", ["population", "business"])
def test_purpose_is_declared_required_where_it_is(gateway, api):
    doc = httpx.get(f"{gateway.url}/api/{api}/v1/openapi.json").json()
    for item in doc["paths"].values():
        for op in item.values():
            params = [p if "$ref" not in p else doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                      for p in op.get("parameters", [])]
            purpose = [p for p in params if p["name"] == "X-Purpose"]
            assert purpose and purpose[0]["required"] is True, op["operationId"]


def test_missing_purpose_is_purpose_missing_in_the_headers_terms(gateway, callers):
    r = httpx.get(f"{gateway.url}/api/population/v1/citizens/001090012345", headers=bearer(callers, "client"))
    body = assert_problem(r, 400, "purpose.missing")
    assert "X-Purpose header" in body["detail"]
    assert audit_of(gateway, body["request_id"])["error_code"] == "purpose.missing"


def test_enterprise_code_pattern_refusal_keeps_its_own_code(gateway, callers):
    r = httpx.get(f"{gateway.url}/api/business/v1/enterprises/12AB", headers={**bearer(callers, "client"),
                                                                            "X-Purpose": PURPOSE})
    assert_problem(r, 400, "enterprise_code.malformed")


# -- 405 names the methods, on every door ------------------------------------------------------

def test_405_carries_allow_on_the_rest_door(gateway, callers):
    r = httpx.request("TRACE", f"{gateway.url}/api/population/v1/citizens/001090012345",
                      headers=bearer(callers, "client"))
    assert_problem(r, 405, "request.method_not_allowed")
    assert r.headers["allow"] == "GET"
    # a literal resource beside a templated one: GET /citizens/verify is not a citizen called "verify"
    r = httpx.get(f"{gateway.url}/api/population/v1/citizens/verify", headers=bearer(callers, "client"))
    assert_problem(r, 405, "request.method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_405_carries_allow_on_the_control_plane(gateway, callers):
    r = httpx.request("OPTIONS", f"{gateway.url}/admin/v1/clients", headers=bearer(callers, "admin"))
    assert r.status_code == 405 and r.headers["content-type"].startswith(PROBLEM)
    assert r.headers["allow"] == "GET, POST" and r.json()["code"] == "request.method_not_allowed"


def test_405_on_the_soap_door_is_a_fault_with_allow(gateway, callers):
    r = httpx.put(f"{gateway.url}/soap/v1", content=b"x", headers={**bearer(callers, "client"),
                                                                    "X-Request-ID": "ct-soap-405"})
    assert r.headers["allow"] == "GET, POST" and r.headers["content-type"].startswith("text/xml")
    assert "<faultcode>" in r.text
    assert audit_of(gateway, "ct-soap-405")["door"] == "soap"


# -- every control-plane answer is problem+json ------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", "/admin/v1/clients"), ("POST", "/admin/v1/grants"), ("GET", "/admin/v1/connections/x1"),
    ("DELETE", "/admin/v1/grants/1"), ("GET", "/audit/v1/records/1"),
])
def test_anonymous_control_plane_callers_get_401_problem(gateway, method, path):
    r = httpx.request(method, gateway.url + path, json={} if method == "POST" else None)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith(PROBLEM) and r.json()["code"] == "auth.token_missing"


def test_unknown_control_plane_address_is_problem_json(gateway, callers):
    r = httpx.get(f"{gateway.url}/audit/v1/records/not-a-number", headers=bearer(callers, "auditor"))
    assert r.status_code in (400, 404) and r.headers["content-type"].startswith(PROBLEM), r.text
    r = httpx.get(f"{gateway.url}/oauth/nothing-here")
    assert r.status_code == 404 and r.json()["code"] == "request.not_found"


# -- SOAP callers are told in SOAP's terms -------------------------------------------------------

def test_soap_purpose_fault_speaks_of_the_purpose_element(gateway, callers):
    client = zeep.Client(f"{gateway.url}/soap/v1?wsdl",
                         wsse=UsernameToken(*callers["client"]))
    with pytest.raises(zeep.exceptions.Fault) as fault:
        client.service.PopulationCitizenGet(personal_id="001090012345", request_id="ct-soap-purpose")
    assert fault.value.detail.find(".//lgsp:code", NS).text == "purpose.missing"
    assert "<purpose>" in fault.value.message and "X-Purpose" not in fault.value.message


def test_soap_password_digest_is_refused_as_unsupported(gateway, callers):
    cid, secret = callers["client"]
    session = requests.Session()
    session.headers["X-Request-ID"] = "ct-digest"  # the body is not read once the credentials are refused
    client = zeep.Client(f"{gateway.url}/soap/v1?wsdl", transport=Transport(session=session),
                         wsse=UsernameToken(cid, secret, use_digest=True))
    with pytest.raises(zeep.exceptions.Fault) as fault:
        client.service.PopulationCitizenGet(personal_id="001090012345", purpose=PURPOSE, request_id="ct-digest")
    assert fault.value.detail.find(".//lgsp:code", NS).text == "auth.digest_unsupported"
    assert "PasswordDigest" in fault.value.message
    assert audit_of(gateway, "ct-digest")["error_code"] == "auth.digest_unsupported"


# -- redirects carry their Location; control paths never become refused exchanges -------------------

def test_console_link_redirects_with_a_location_and_no_exchange(gateway):
    before = exchange_count(gateway)
    r = httpx.get(f"{gateway.url}/console", follow_redirects=False)
    assert 300 <= r.status_code < 400 and r.headers["location"].startswith("/console/")
    r = httpx.get(gateway.url + r.headers["location"], follow_redirects=False)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert exchange_count(gateway) == before


def test_data_plane_alone_does_not_audit_control_addresses(gateway, lgsp_env, tmp_path):
    from helpers import free_port, start_server

    port = free_port()
    server = start_server([sys.executable, "-m", "lgsp.cli", "serve", "--plane", "data", "--port", str(port)],
                          f"http://127.0.0.1:{port}", "/readyz", tmp_path / "data.log")
    try:
        before = exchange_count(gateway)
        r = httpx.get(f"http://127.0.0.1:{port}/console", follow_redirects=False)
        assert r.status_code == 404 and r.json()["code"] == "request.not_found"
        assert "control plane" in r.json()["detail"]
        assert exchange_count(gateway) == before
    finally:
        server.stop()


# -- bad inputs: 400 with a stable code, before any backend, audited ---------------------------------

def test_deeply_nested_json_is_refused_and_audited(gateway, callers):
    body = b'{"a":' * 200 + b"1" + b"}" * 200
    r = httpx.post(f"{gateway.url}/api/population/v1/citizens/verify", content=body,
                   headers={**bearer(callers, "client"), "X-Purpose": PURPOSE, "Content-Type": "application/json",
                            "X-Request-ID": "ct-deep"})
    assert_problem(r, 400, "request.malformed")
    record = audit_of(gateway, "ct-deep")
    assert record["error_code"] == "request.malformed" and record["upstream"] is None


def test_non_utf8_bodies_are_refused_on_both_planes(gateway, callers):
    r = httpx.post(f"{gateway.url}/api/services/v1/population.citizen.get", content=b'{"personal_id": "\xff\xfe"}',
                   headers={**bearer(callers, "client"), "X-Purpose": PURPOSE, "Content-Type": "application/json",
                            "X-Request-ID": "ct-latin1"})
    assert_problem(r, 400, "request.malformed")
    assert audit_of(gateway, "ct-latin1")["error_code"] == "request.malformed"
    r = httpx.post(f"{gateway.url}/admin/v1/clients", content=b'{"client_id": "\xff"}',
                   headers={**bearer(callers, "admin"), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "request.malformed"


def test_integers_too_long_to_read_are_refused_on_both_planes(gateway, callers):
    # json.loads refuses an integer of more than 4300 digits with a plain ValueError (not a JSONDecodeError).
    huge = b"9" * 5000
    r = httpx.post(f"{gateway.url}/api/population/v1/citizens/verify",
                   content=b'{"personal_id": ' + huge + b', "full_name": "A"}',
                   headers={**bearer(callers, "client"), "X-Purpose": PURPOSE, "Content-Type": "application/json",
                            "X-Request-ID": "ct-long-int"})
    assert_problem(r, 400, "request.malformed")
    assert "digits" in r.json()["detail"]
    record = audit_of(gateway, "ct-long-int")
    assert record["error_code"] == "request.malformed" and record["upstream"] is None
    r = httpx.post(f"{gateway.url}/admin/v1/clients", content=b'{"client_id": "x", "n": ' + huge + b"}",
                   headers={**bearer(callers, "admin"), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "request.malformed"
    # The same digits inside a string are text, read as such: refused by the schema, not as unreadable.
    r = httpx.post(f"{gateway.url}/api/population/v1/citizens/verify",
                   content=b'{"personal_id": "' + huge + b'", "full_name": "A"}',
                   headers={**bearer(callers, "client"), "X-Purpose": PURPOSE, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] != "request.malformed"


@pytest.mark.parametrize("path", ["/admin/v1/clients/a%0D%0Ab", "/admin/v1/connections/x%0Ay"])
def test_crlf_in_admin_paths_is_refused(gateway, callers, path):
    r = httpx.get(gateway.url + path, headers=bearer(callers, "admin"))
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["code"] == "request.malformed" and "Traceback" not in r.text


def test_audit_record_ids_above_int64_are_refused(gateway, callers):
    r = httpx.get(f"{gateway.url}/audit/v1/records/{2**63}", headers=bearer(callers, "auditor"))
    assert r.status_code == 400 and r.json()["code"] == "request.invalid"
    r = httpx.get(f"{gateway.url}/audit/v1/records/{2**63 - 1}", headers=bearer(callers, "auditor"))
    assert r.status_code == 404 and r.json()["code"] == "record.not_found"


def test_grant_ids_beyond_the_column_are_refused(gateway, callers, lgsp_env):
    # The grant id is a 32-bit column on PostgreSQL; 2**63 was a 500 on SQLite (OverflowError).
    for too_large in (2**31, 2**63):
        r = httpx.delete(f"{gateway.url}/admin/v1/grants/{too_large}", headers=bearer(callers, "admin"))
        assert r.status_code == 400 and r.json()["code"] == "request.invalid", r.text
    r = httpx.delete(f"{gateway.url}/admin/v1/grants/{2**31 - 1}", headers=bearer(callers, "admin"))
    assert r.status_code == 404, r.text
    for args in (["grants", "revoke", str(2**31)], ["audit", "body", str(2**63)]):  # the CLI: a usage error
        result = lgsp_cli(lgsp_env, *args, check=False)
        assert result.returncode == 2 and "is not in the range" in result.stderr, result.stderr[-500:]
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["0999-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00"])
def test_audit_filters_before_year_1000_are_refused(gateway, callers, value):
    for path in ("/audit/v1/records", "/audit/v1/citizens/001090012345/accesses"):
        r = httpx.get(gateway.url + path, params={"from": value}, headers=bearer(callers, "auditor"))
        assert r.status_code == 400 and r.json()["code"] == "request.invalid", (path, r.text)


def test_impossible_dates_never_reach_the_national_side(gateway, callers):
    r = httpx.post(f"{gateway.url}/api/population/v1/citizens/verify",
                   json={"personal_id": "001090012345", "full_name": "Nguyễn Văn An", "birth_date": "1985-02-30"},
                   headers={**bearer(callers, "client"), "X-Purpose": PURPOSE, "X-Request-ID": "ct-feb30"})
    body = assert_problem(r, 400, "request.invalid")
    assert "1985-02-30" in body["detail"]
    assert audit_of(gateway, "ct-feb30")["upstream"] is None  # refused before the adapter was called


def test_control_characters_never_reach_the_national_side(gateway, callers):
    r = httpx.post(f"{gateway.url}/api/services/v1/population.citizen.verify",
                   json={"personal_id": "001090012345", "full_name": "An\x1b", "birth_date": "1985"},
                   headers={**bearer(callers, "client"), "X-Purpose": PURPOSE, "X-Request-ID": "ct-ctl"})
    assert_problem(r, 400, "request.invalid")
    assert audit_of(gateway, "ct-ctl")["upstream"] is None


# -- grants name fields that exist -------------------------------------------------------------------

def test_grant_fields_are_checked_with_suggestions(gateway, lgsp_env, callers):
    cid, _ = callers["auditor"]
    result = lgsp_cli(lgsp_env, "grants", "add", cid, "population.citizen.get",
                      "--fields", "full_name,permanent_adress.province,not_a_field", "--purposes", PURPOSE,
                      check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "'permanent_adress.province' is not a field" in result.stderr
    assert "Did you mean 'permanent_address.province'" in result.stderr and "'not_a_field'" in result.stderr
    ok = lgsp_cli(lgsp_env, "grants", "add", cid, "population.citizen.get",
                  "--fields", "full_name,permanent_address.province.code,father.full_name", "--purposes", PURPOSE)
    assert "grant" in ok.stdout
    r = httpx.post(f"{gateway.url}/admin/v1/grants", headers=bearer(callers, "admin"),
                   json={"client_id": cid, "service": "population.citizen.verify", "fields": ["mach"],
                         "purposes": [PURPOSE]})
    assert r.status_code == 422 and r.json()["code"] == "admin.invalid" and "'match'" in r.json()["detail"]


def test_apply_dry_run_checks_grant_fields(gateway, lgsp_env, callers, tmp_path):
    cid, _ = callers["auditor"]
    config = tmp_path / "province.yaml"
    config.write_text(f"grants:\n  - client: {cid}\n    service: population.citizen.verify\n"
                      f"    fields: [matsh]\n    purposes: [{PURPOSE}]\n")
    result = lgsp_cli(lgsp_env, "apply", "-f", str(config), "--dry-run", check=False)
    assert result.returncode != 0 and "Did you mean 'match'" in result.stderr


# -- the CLI on a home whose database is not migrated ---------------------------------------------

@pytest.fixture
def empty_db_url(lgsp_env, tmp_path):
    """A database with no LGSP schema: a new SQLite file, or a new PostgreSQL database."""
    from helpers import postgres_database

    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    if not pg:
        yield f"sqlite:///{tmp_path / 'new.db'}"
        return
    url, drop = postgres_database(pg)
    yield url
    drop()


@pytest.mark.parametrize("args", [
    ["audit", "verify"], ["grants", "add", "c1", "population.citizen.get", "--fields", "full_name", "--purposes", "p"],
    ["clients", "list"], ["audit", "export", "-o", "x.jsonl"], ["keys", "list"], ["serve", "--port", "1"],
])
def test_cli_on_an_unmigrated_database_says_what_to_run(empty_db_url, tmp_path, args):
    env = {**os.environ, "LGSP_HOME": str(tmp_path), "LGSP_DATABASE_URL": empty_db_url}
    result = subprocess.run([sys.executable, "-m", "lgsp.cli", *args], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "sqlalchemy" not in result.stderr.lower()
    assert re.search(r"run `lgsp db upgrade`", result.stderr), result.stderr


# -- found by schemathesis on PostgreSQL ----------------------------------------------------------

def test_an_oversize_officer_is_refused_and_the_refusal_still_recorded(gateway, callers):
    r = httpx.get(f"{gateway.url}/api/population/v1/citizens/001090012345",
                  headers={**bearer(callers, "client"), "X-Purpose": PURPOSE, "X-On-Behalf-Of": "0" * 129,
                           "X-Request-ID": "ct-officer"})
    assert_problem(r, 400, "request.context_invalid")
    record = audit_of(gateway, "ct-officer")  # PostgreSQL refused the whole record before
    assert record["officer"] is None and record["error_code"] == "request.context_invalid"


@pytest.mark.parametrize("fast_path", [True, False])
def test_an_officer_named_in_utf8_is_recorded_as_written(gateway, callers, fast_path):
    # "Trần" reads as latin-1 without a control character, "Nguyễn" with one (0x85): both were mangled or refused.
    name = "Trần Thị Nguyễn"
    rid = f"ct-officer-utf8-{fast_path}"
    query = "" if fast_path else "?unknown=1"  # an unknown parameter: connexion answers (and refuses it)
    r = httpx.get(f"{gateway.url}/api/population/v1/citizens/001085012345{query}",
                  headers={**bearer(callers, "client"), "X-Purpose": PURPOSE, "X-On-Behalf-Of": name.encode(),
                           "X-Request-ID": rid})
    assert r.json().get("code") == (None if fast_path else "request.invalid"), r.text  # not request.context_invalid
    assert audit_of(gateway, rid)["officer"] == name


def test_an_officer_that_is_not_utf8_is_read_as_iso_8859_1(gateway, callers):
    # What requests sends for a str header; accepted as before, read as it was meant.
    r = httpx.get(f"{gateway.url}/api/population/v1/citizens/001085012345",
                  headers={**bearer(callers, "client"), "X-Purpose": PURPOSE,
                           "X-On-Behalf-Of": "José".encode("latin-1"), "X-Request-ID": "ct-officer-latin1"})
    assert r.status_code == 200, r.text
    assert audit_of(gateway, "ct-officer-latin1")["officer"] == "José"


def test_concurrent_creation_of_the_same_object_is_a_conflict_not_a_500(gateway, callers):
    from concurrent.futures import ThreadPoolExecutor

    name = f"ct.race.s{uuid.uuid4().hex[:6]}"
    body = {"version": "v1", "connection": "codelists", "operation": "codelist.list"}

    def put(_):
        return httpx.put(f"{gateway.url}/admin/v1/services/{name}", json=body, headers=bearer(callers, "admin"),
                         timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put, range(8)))
    assert set(statuses) <= {200, 409} and 200 in statuses, statuses


def test_admin_values_longer_than_the_database_keeps_are_refused(gateway, callers):
    name = "a." + "b" * 140
    r = httpx.put(f"{gateway.url}/admin/v1/services/{name}", headers=bearer(callers, "admin"),
                  json={"version": "v1", "connection": "codelists", "operation": "codelist.list"})
    assert r.status_code == 400 and r.json()["code"] == "request.invalid", r.text
    r = httpx.put(f"{gateway.url}/admin/v1/services/ct.long.op", headers=bearer(callers, "admin"),
                  json={"version": "v1", "connection": "codelists", "operation": "o" * 65})
    assert r.status_code == 400 and r.json()["code"] == "request.invalid", r.text
