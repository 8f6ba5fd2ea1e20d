"""The REST door end to end: real gateway, real simulator, real HTTP and SOAP on loopback."""
from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid

import httpx
import jwt as pyjwt
import pytest
from helpers import assert_problem, audit_of, database_generation, get_token, serve_in_thread, wait_for_config
from sqlalchemy import select

PURPOSE = "administrative-procedure"
FIELDS = ["personal_id", "full_name", "gender", "birth_date", "permanent_address"]


@pytest.fixture(scope="module")
def citizens() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "lgsp_adapters.population.simulator", "--list", "5"],
                         capture_output=True, text=True, check=True).stdout
    ids = re.findall(r"^(\d{12})\t", out, re.M)
    assert len(ids) >= 3
    return ids


@pytest.fixture(scope="module")
def clients(gateway):
    """clerk: lookup (some fields) + verify; verifier: verify only."""
    admin = gateway.extra["admin"]
    suffix = uuid.uuid4().hex[:6]
    clerk, verifier = f"clerk-{suffix}", f"verifier-{suffix}"
    secrets = {
        clerk: admin.create_client(clerk, "One-stop shop", "000.00.31.H30"),
        verifier: admin.create_client(verifier, "Health insurance desk", "000.00.32.H30"),
    }
    admin.add_grant(clerk, "population.citizen.get", FIELDS, [PURPOSE])
    admin.add_grant(clerk, "population.citizen.verify", ["match"], [PURPOSE])
    admin.add_grant(verifier, "population.citizen.verify", ["match"], ["insurance-check"])
    wait_for_config(gateway.url, gateway.extra["engine"])
    return {"clerk": (clerk, secrets[clerk]), "verifier": (verifier, secrets[verifier])}


@pytest.fixture(scope="module")
def clerk_token(gateway, clients) -> str:
    return get_token(gateway, *clients["clerk"])


def lookup(gateway, pid: str, token: str | None, purpose: str | None = PURPOSE, **headers) -> httpx.Response:
    h = {"X-On-Behalf-Of": "officer-7", **headers}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if purpose:
        h["X-Purpose"] = purpose
    return httpx.get(f"{gateway.url}/api/population/v1/citizens/{pid}", headers=h, timeout=15)


def test_standard_oauth2_client_finds_token_endpoint_and_token_verifies_with_jwks(gateway, clients):
    from authlib.integrations.httpx_client import OAuth2Client

    catalog = httpx.get(f"{gateway.url}/api").json()
    population = next(a for a in catalog["apis"] if a["name"] == "population")
    doc = httpx.get(population["openapi"]).json()
    token_url = doc["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]["tokenUrl"]
    assert token_url == f"{gateway.url}/oauth/token"

    client_id, secret = clients["clerk"]
    with OAuth2Client(client_id, secret, token_endpoint=token_url) as oauth:
        token = oauth.fetch_token(grant_type="client_credentials")
    assert token["token_type"].lower() == "bearer" and token["expires_in"] > 0

    jwks = pyjwt.PyJWKClient(catalog["jwks_uri"])
    key = jwks.get_signing_key_from_jwt(token["access_token"])
    claims = pyjwt.decode(token["access_token"], key.key, algorithms=["RS256"], audience=f"{gateway.url}/api",
                          issuer=gateway.url)
    assert claims["sub"] == client_id and claims["client_id"] == client_id
    assert set(claims["scope"].split()) == {"population.citizen.get", "population.citizen.verify"}
    assert {"iat", "exp", "jti"} <= set(claims)
    assert pyjwt.get_unverified_header(token["access_token"])["typ"] == "at+jwt"


def test_token_refused_for_wrong_secret_and_unknown_scope(gateway, clients):
    client_id, _ = clients["clerk"]
    r = httpx.post(f"{gateway.url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, "nope"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = httpx.post(f"{gateway.url}/oauth/token", data={"grant_type": "client_credentials", "scope": "land.parcel.get"},
                   auth=clients["clerk"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"


# -- the happy paths -----------------------------------------------------------------

def test_lookup_returns_canonical_citizen_limited_to_grant(gateway, clerk_token, citizens):
    r = lookup(gateway, citizens[0], clerk_token, **{"X-Request-ID": "req-abc-1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-abc-1"
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert set(body) <= set(FIELDS) and {"personal_id", "full_name"} <= set(body)
    assert body["personal_id"] == citizens[0]
    assert body["gender"] in ("male", "female")
    assert "religion" not in body and "father" not in body and "ethnicity" not in body
    record = audit_of(gateway, "req-abc-1")
    assert record["outcome"] == "ok" and record["status"] == 200
    assert record["officer"] == "officer-7" and record["purpose"] == PURPOSE
    assert set(record["fields"]) == set(k for k, v in body.items() if v is not None)
    assert record["subject_hash"] and citizens[0] not in str(record)


def test_request_id_generated_when_absent(gateway, clerk_token, citizens):
    r = lookup(gateway, citizens[1], clerk_token)
    assert r.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_verify_match_and_mismatch(gateway, clerk_token, citizens):
    full = httpx.get(f"{gateway.url}/api/population/v1/citizens/{citizens[2]}",
                     headers={"Authorization": f"Bearer {clerk_token}", "X-Purpose": PURPOSE}).json()
    url = f"{gateway.url}/api/population/v1/citizens/verify"
    headers = {"Authorization": f"Bearer {clerk_token}", "X-Purpose": PURPOSE}
    body = {"personal_id": citizens[2], "full_name": full["full_name"], "birth_date": full["birth_date"]}
    r = httpx.post(url, json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"match": True}
    r = httpx.post(url, json=dict(body, full_name="Nguyễn Không Khớp"), headers=headers)
    assert r.json() == {"match": False}


# -- refusals: personal ID, body -------------------------------------------------------

@pytest.mark.parametrize("pid", ["12345", "00109001234X", "0010900123456", "abcdefghijkl"])
def test_malformed_personal_id(gateway, clerk_token, pid):
    r = lookup(gateway, pid, clerk_token)
    assert_problem(r, 400, "personal_id.malformed")
    assert audit_of(gateway, r.headers["x-request-id"])["error_code"] == "personal_id.malformed"


@pytest.mark.parametrize("pid", ["003090012345", "001990012345"])
def test_impossible_personal_id(gateway, clerk_token, pid):
    # 003: no such province code; 0,99 → born 1999 male is fine, but 9 → century 2400s.
    r = lookup(gateway, pid, clerk_token)
    assert_problem(r, 400, "personal_id.impossible")


def test_body_over_limit_is_refused_and_audited(gateway, clerk_token):
    r = httpx.post(f"{gateway.url}/api/population/v1/citizens/verify",
                   content=b'{"personal_id": "' + b"1" * 200_000 + b'"}',
                   headers={"Authorization": f"Bearer {clerk_token}", "X-Purpose": PURPOSE,
                            "Content-Type": "application/json"})
    assert_problem(r, 413, "request.too_large")
    assert audit_of(gateway, r.headers["x-request-id"])["outcome"] == "refused"


def test_invalid_body_is_a_clear_400(gateway, clerk_token):
    r = httpx.post(f"{gateway.url}/api/population/v1/citizens/verify", json={"personal_id": "001090012345"},
                   headers={"Authorization": f"Bearer {clerk_token}", "X-Purpose": PURPOSE})
    body = assert_problem(r, 400, "request.invalid")
    assert "full_name" in body["detail"]


# -- refusals: authentication ------------------------------------------------------------

def test_no_token(gateway, citizens):
    r = lookup(gateway, citizens[0], None)
    assert_problem(r, 401, "auth.token_missing")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert audit_of(gateway, r.headers["x-request-id"])["client_id"] is None


def test_token_auth_before_shape_checks(gateway):
    # An anonymous caller learns nothing about validation: the token is checked first.
    assert_problem(lookup(gateway, "12", None), 401, "auth.token_missing")


@pytest.mark.parametrize("token", ["not-a-jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."])
def test_invalid_token(gateway, citizens, token):
    assert_problem(lookup(gateway, citizens[0], token), 401, "auth.token_invalid")


def test_token_signed_by_someone_else(gateway, citizens, clients):
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    forged = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": "forged"},
                        {"iss": gateway.url, "aud": f"{gateway.url}/api", "sub": clients["clerk"][0],
                         "exp": int(time.time()) + 600, "scope": "population.citizen.get"},
                        RSAKey.generate_key(2048))
    assert_problem(lookup(gateway, citizens[0], forged), 401, "auth.token_invalid")


def test_expired_token(gateway, citizens, clients):
    from joserfc import jwt

    from lgsp import keys

    key = keys.active_private_key(gateway.extra["engine"])
    now = int(time.time())
    expired = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": key.kid},
                         {"iss": gateway.url, "aud": f"{gateway.url}/api", "sub": clients["clerk"][0],
                          "client_id": clients["clerk"][0], "iat": now - 1000, "exp": now - 10, "jti": "x",
                          "scope": "population.citizen.get"}, key)
    assert_problem(lookup(gateway, citizens[0], expired), 401, "auth.token_expired")


def test_disabled_client_refused_at_once_and_gets_no_token(gateway, citizens):
    admin = gateway.extra["admin"]
    cid = f"temp-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Temporary", "000.00.33.H30")
    admin.add_grant(cid, "population.citizen.get", FIELDS, [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    token = get_token(gateway, cid, secret)
    assert lookup(gateway, citizens[0], token).status_code == 200
    admin.set_client_status(cid, "disabled")
    wait_for_config(gateway.url, gateway.extra["engine"])
    r = lookup(gateway, citizens[0], token)
    assert_problem(r, 401, "auth.client_disabled")
    assert audit_of(gateway, r.headers["x-request-id"])["client_id"] == cid
    r = httpx.post(f"{gateway.url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, secret))
    assert r.status_code == 401


# -- refusals: authorization ----------------------------------------------------------------

def test_client_without_grant_for_service(gateway, citizens, clients):
    token = get_token(gateway, *clients["verifier"])
    r = lookup(gateway, citizens[0], token, purpose="insurance-check")
    assert_problem(r, 403, "access.no_grant")
    record = audit_of(gateway, r.headers["x-request-id"])
    assert record["client_id"] == clients["verifier"][0] and record["outcome"] == "refused"
    assert record["subject_hash"] is not None  # even a refused attempt says whom it was about


def test_token_without_the_service_scope(gateway, citizens, clients):
    token = get_token(gateway, *clients["clerk"], scope="population.citizen.verify")
    assert_problem(lookup(gateway, citizens[0], token), 403, "access.no_grant")


def test_revoked_grant_refused_before_token_expires(gateway, citizens):
    admin = gateway.extra["admin"]
    cid = f"rev-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Revocation test", "000.00.34.H30")
    grant_id = admin.add_grant(cid, "population.citizen.get", FIELDS, [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    token = get_token(gateway, cid, secret)
    assert lookup(gateway, citizens[0], token).status_code == 200
    admin.revoke_grant(grant_id)
    wait_for_config(gateway.url, gateway.extra["engine"])
    assert_problem(lookup(gateway, citizens[0], token), 403, "access.no_grant")


def test_purpose_missing(gateway, clerk_token, citizens):
    assert_problem(lookup(gateway, citizens[0], clerk_token, purpose=None), 400, "purpose.missing")


def test_purpose_not_allowed(gateway, clerk_token, citizens):
    r = lookup(gateway, citizens[0], clerk_token, purpose="marketing")
    body = assert_problem(r, 403, "purpose.not_allowed")
    assert PURPOSE in body["detail"]
    assert audit_of(gateway, r.headers["x-request-id"])["purpose"] == "marketing"


# -- upstream trouble ------------------------------------------------------------------------

def test_unknown_citizen_is_404(gateway, clerk_token):
    assert_problem(lookup(gateway, "001099999999", clerk_token), 404, "record.not_found")


@pytest.mark.parametrize("mode,status,code", [
    ("down", 502, "upstream.unavailable"),
    ("malformed", 502, "upstream.malformed"),
    ("fault", 502, "upstream.fault"),
])
def test_upstream_failures(gateway, clerk_token, citizens, faults, mode, status, code):
    faults.set(mode)
    r = lookup(gateway, citizens[0], clerk_token)
    assert_problem(r, status, code)
    record = audit_of(gateway, r.headers["x-request-id"])
    assert record["outcome"] == "failed" and record["error_code"] == code
    assert record["upstream"] and record["trace_id"] == r.headers["x-request-id"]


def test_upstream_timeout(gateway, clerk_token, citizens, faults):
    faults.set("slow", delay=3)  # the connection's timeout is 2 s
    assert_problem(lookup(gateway, citizens[0], clerk_token), 504, "upstream.timeout")


def test_upstream_refusing_connections(gateway, clerk_token, citizens):
    from helpers import free_port

    admin = gateway.extra["admin"]
    original = next(c for c in admin.list_connections() if c["name"] == "population")["settings"]
    admin.set_connection("population", "population", dict(original, endpoint=f"http://127.0.0.1:{free_port()}/dancu"))
    try:
        wait_for_config(gateway.url, gateway.extra["engine"])
        assert_problem(lookup(gateway, citizens[0], clerk_token), 502, "upstream.unavailable")
    finally:
        admin.set_connection("population", "population", original)
        wait_for_config(gateway.url, gateway.extra["engine"])
    assert lookup(gateway, citizens[0], clerk_token).status_code == 200


# -- routes, operations, audit integrity -------------------------------------------------------

def test_unknown_route_is_a_problem(gateway, clerk_token):
    r = httpx.get(f"{gateway.url}/api/population/v1/nothing-here", headers={"Authorization": f"Bearer {clerk_token}"})
    assert_problem(r, 404, "request.not_found")


def test_healthz_says_which_configuration_generation_the_worker_serves(gateway):
    engine = gateway.extra["engine"]
    before = database_generation(engine)
    gateway.extra["admin"].create_client(f"gen-{uuid.uuid4().hex[:6]}", "Generation check", "000.00.31.H30")
    assert database_generation(engine) == before + 1  # an admin change bumps it
    assert wait_for_config(gateway.url, engine) >= before + 1
    body = httpx.get(f"{gateway.url}/healthz").json()
    assert body == {"status": "ok", "config_generation": body["config_generation"]}  # a counter, nothing else


def test_wait_for_config_fails_on_a_gateway_that_stays_behind(gateway):
    async def stale(scope, receive, send):  # a worker that never loads the new configuration
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status": "ok", "config_generation": 0}'})

    assert database_generation(gateway.extra["engine"]) > 0
    with serve_in_thread(stale) as url, pytest.raises(AssertionError, match="serves configuration generation 0"):
        wait_for_config(url, gateway.extra["engine"], timeout=0.5)


def test_health_ready_and_metrics_without_personal_ids(gateway, clerk_token, citizens):
    assert httpx.get(f"{gateway.url}/healthz").json()["status"] == "ok"
    assert httpx.get(f"{gateway.url}/readyz").json()["status"] == "ready"
    lookup(gateway, citizens[0], clerk_token)
    text = httpx.get(f"{gateway.url}/metrics").text
    assert re.search(r'lgsp_exchanges_total\{.*outcome="ok".*\} \d', text)
    assert "lgsp_upstream_duration_seconds_bucket" in text
    for pid in citizens:
        assert pid not in text
        assert pid not in gateway.log.read_text(errors="replace")


def test_audit_chain_verifies(gateway, lgsp_env):
    from helpers import lgsp_cli

    result = lgsp_cli(lgsp_env, "audit", "verify", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 findings" in result.stdout


def test_audit_unavailable_fails_closed(gateway, clerk_token, citizens):
    from sqlalchemy import text

    engine = gateway.extra["engine"]
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_records RENAME TO audit_records_away"))
    try:
        r = lookup(gateway, citizens[0], clerk_token)
        assert_problem(r, 503, "audit.unavailable")
        assert "full_name" not in r.text
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_records_away RENAME TO audit_records"))
    assert lookup(gateway, citizens[0], clerk_token).status_code == 200


def test_key_rotation_keeps_live_tokens_valid(gateway, clients, citizens):
    from lgsp import keys

    old = get_token(gateway, *clients["clerk"])
    new_kid = keys.rotate(gateway.extra["engine"])
    wait_for_config(gateway.url, gateway.extra["engine"])
    jwks = httpx.get(f"{gateway.url}/.well-known/jwks.json").json()["keys"]
    assert new_kid in {k["kid"] for k in jwks} and len(jwks) >= 2
    assert lookup(gateway, citizens[0], old).status_code == 200
    fresh = get_token(gateway, *clients["clerk"])
    assert pyjwt.get_unverified_header(fresh)["kid"] == new_kid
    assert lookup(gateway, citizens[0], fresh).status_code == 200


def test_body_logging_full_keeps_the_payload_encrypted(gateway, clerk_token, citizens):
    from sqlalchemy import text

    from lgsp.crypto import fernet
    from lgsp.storage.schema import audit_bodies

    admin = gateway.extra["admin"]
    admin.set_body_logging("population.citizen.verify", "full")
    wait_for_config(gateway.url, gateway.extra["engine"])
    try:
        r = httpx.post(f"{gateway.url}/api/population/v1/citizens/verify",
                       json={"personal_id": citizens[0], "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"},
                       headers={"Authorization": f"Bearer {clerk_token}", "X-Purpose": PURPOSE})
        assert r.status_code == 200
        record = audit_of(gateway, r.headers["x-request-id"])
        with gateway.extra["engine"].connect() as conn:
            cipher = conn.execute(select(audit_bodies.c.ciphertext).where(
                audit_bodies.c.chain == record["chain"], audit_bodies.c.seq == record["seq"])).scalar_one()
            raw = " ".join(str(v) for row in conn.execute(text("SELECT * FROM audit_bodies")) for v in row)
        assert citizens[0] not in raw  # encrypted at rest
        payload = fernet().decrypt(cipher.encode()).decode()
        assert citizens[0] in payload and '"match":true' in payload
    finally:
        admin.set_body_logging("population.citizen.verify", "off")
        wait_for_config(gateway.url, gateway.extra["engine"])


def test_call_by_name_checks_params_against_the_adapter_schema(gateway, clerk_token, citizens):
    url = f"{gateway.url}/api/services/v1"
    headers = {"Authorization": f"Bearer {clerk_token}", "X-Purpose": PURPOSE}
    r = httpx.post(f"{url}/population.citizen.get", json={"personal_id": citizens[0]}, headers=headers)
    assert r.status_code == 200 and r.json()["personal_id"] == citizens[0]
    assert set(r.json()) <= set(FIELDS)
    body = assert_problem(httpx.post(f"{url}/population.citizen.get", json={"pid": "x"}, headers=headers),
                          400, "request.invalid")
    assert "personal_id" in body["detail"]
    assert_problem(httpx.post(f"{url}/land.parcel.get", json={}, headers=headers), 404, "service.unknown")
