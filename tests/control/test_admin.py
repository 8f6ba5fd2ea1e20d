"""The administration API and `lgsp apply -f`: changes reach the running gateway, no restart, audited."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
import pytest
from helpers import ROOT, get_token, wait_for_config
from sqlalchemy import select

from lgsp.storage.schema import audit_records

PURPOSE = "administrative-procedure"
CITIZEN = "001085012345"


@pytest.fixture(scope="module")
def tokens(gateway):
    admin = gateway.extra["admin"]
    suffix = uuid.uuid4().hex[:6]
    made = {}
    for role in ("admin", "integrator", "auditor"):
        cid = f"{role}-{suffix}"
        made[role] = (cid, get_token(gateway, cid, admin.create_client(cid, f"{role} desk", roles=[role])))
    return made


def call(gateway, method: str, path: str, token: str | None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{gateway.url}/admin/v1{path}", headers=headers, timeout=15, **kw)


def test_roles_decide_who_may_do_what(gateway, tokens):
    assert call(gateway, "GET", "/connections", tokens["integrator"][1]).status_code == 200
    assert call(gateway, "GET", "/clients", tokens["admin"][1]).status_code == 200
    r = call(gateway, "GET", "/clients", tokens["integrator"][1])
    assert r.status_code == 403 and r.json()["code"] == "access.no_grant"
    assert call(gateway, "GET", "/connections", tokens["auditor"][1]).status_code == 403
    r = call(gateway, "GET", "/connections", None)
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")


def test_bad_settings_are_refused_with_a_sentence(gateway, tokens):
    r = call(gateway, "PUT", "/connections/broken", tokens["integrator"][1],
             json={"adapter": "population", "settings": {"endpoint": "ftp://nowhere"}})
    assert r.status_code == 422 and r.json()["code"] == "admin.invalid"
    assert "endpoint" in r.json()["detail"]
    r = call(gateway, "PUT", "/connections/broken", tokens["integrator"][1],
             json={"adapter": "no-such-adapter", "settings": {}})
    assert r.status_code == 422 and "no-such-adapter" in r.json()["detail"]


def test_client_and_grant_made_through_the_api_work_at_once_and_are_audited(gateway, tokens):
    admin_id, admin_token = tokens["admin"]
    cid = f"api-made-{uuid.uuid4().hex[:6]}"
    r = call(gateway, "POST", "/clients", admin_token,
             json={"client_id": cid, "name": "Made through the API", "agency_code": "000.00.36.H30"})
    assert r.status_code == 201, r.text
    secret = r.json()["client_secret"]
    assert "secret_hash" not in r.json()
    r = call(gateway, "POST", "/grants", admin_token,
             json={"client_id": cid, "service": "population.citizen.get", "fields": ["full_name"], "purposes": [PURPOSE]})
    assert r.status_code == 201
    grant_id = r.json()["id"]
    wait_for_config(gateway.url, gateway.extra["engine"])
    token = get_token(gateway, cid, secret)
    headers = {"Authorization": f"Bearer {token}", "X-Purpose": PURPOSE}
    r = httpx.get(f"{gateway.url}/api/population/v1/citizens/{CITIZEN}", headers=headers)
    assert r.status_code == 200 and set(r.json()) == {"full_name"}

    assert call(gateway, "DELETE", f"/grants/{grant_id}", admin_token).status_code == 204
    wait_for_config(gateway.url, gateway.extra["engine"])
    r = httpx.get(f"{gateway.url}/api/population/v1/citizens/{CITIZEN}", headers=headers)
    assert r.status_code == 403

    with gateway.extra["engine"].connect() as conn:
        actions = [r.detail for r in conn.execute(select(audit_records.c.detail).where(audit_records.c.kind == "admin"))]
    mine = [a for a in actions if a and (a.get("target", "").startswith(cid) or a.get("target") == str(grant_id))]
    assert {a["action"] for a in mine} >= {"client.create", "grant.add", "grant.revoke"}
    assert all(a["actor"] == f"client:{admin_id}" for a in mine)
    assert all("secret" not in str(a.get("after")) for a in mine)


def test_unknown_and_duplicate_objects(gateway, tokens):
    token = tokens["admin"][1]
    assert call(gateway, "GET", "/clients/nobody-here", token).json()["code"] == "admin.not_found"
    cid = tokens["auditor"][0]
    r = call(gateway, "POST", "/clients", token, json={"client_id": cid, "name": "again"})
    assert r.status_code == 409 and r.json()["code"] == "admin.conflict"


def test_apply_is_idempotent_with_a_dry_run_diff(fresh_db_url, tmp_path):
    env = dict(os.environ, LGSP_DATABASE_URL=fresh_db_url, POPULATION_ENDPOINT="http://127.0.0.1:8081/dancu",
               MOT_CUA_SECRET="one-secret", THANH_TRA_SECRET="two-secret")
    lgsp = [sys.executable, "-m", "lgsp.cli"]
    subprocess.run([*lgsp, "db", "upgrade"], env=env, check=True, capture_output=True)
    example = str(ROOT / "docs" / "province.example.yaml")
    dry = subprocess.run([*lgsp, "apply", "-f", example, "--dry-run"], env=env, capture_output=True, text=True)
    assert dry.returncode == 0 and "+ client mot-cua-so-tu-phap" in dry.stdout and "dry run:" in dry.stdout
    first = subprocess.run([*lgsp, "apply", "-f", example], env=env, capture_output=True, text=True)
    assert first.returncode == 0 and "applied:" in first.stdout, first.stderr
    second = subprocess.run([*lgsp, "apply", "-f", example], env=env, capture_output=True, text=True)
    assert second.returncode == 0 and second.stdout.strip().endswith("no changes")
    env["POPULATION_ENDPOINT"] = "http://127.0.0.1:9/dancu"
    third = subprocess.run([*lgsp, "apply", "-f", example, "--dry-run"], env=env, capture_output=True, text=True)
    assert "~ connection population: settings.endpoint" in third.stdout
    del env["MOT_CUA_SECRET"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("clients:\n  x1:\n    name: X\n    secret_env: NOT_SET_ANYWHERE\nwidgets: {}\n")
    bad = subprocess.run([*lgsp, "apply", "-f", str(broken)], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "widgets" in bad.stderr and "Traceback" not in bad.stderr
