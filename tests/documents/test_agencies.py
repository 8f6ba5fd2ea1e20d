"""The agency directory of the document exchange axis: Directory, CLI, `lgsp apply` section, admin API,
and the sync of national agencies from the national axis simulator (real loopback)."""
from __future__ import annotations

import json
import secrets
import uuid

import httpx
import pytest
from document_world import start_axis
from helpers import get_token, lgsp_cli
from sqlalchemy import select

from lgsp.control.admin import Admin, AdminError
from lgsp.documents.agencies import Directory
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records
from lgsp_adapters.national_axis.simulator import API_BASE, PROVINCE_SYSTEM


@pytest.fixture
def directory(fresh_db_url):
    return Directory(engine_for(fresh_db_url), "tests")


def _admin_records(engine, action: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(audit_records.c.detail).where(audit_records.c.kind == "admin")).scalars().all()
    return [r for r in rows if r["action"] == action]


def test_an_agency_is_created_changed_and_deleted_with_audit_records(directory):
    assert directory.set("000.00.31.H30", name="Sở Tư pháp", email="vanthu@stp.gov.vn")
    assert not directory.set("000.00.31.H30", name="Sở Tư pháp")      # nothing changed: no record
    assert directory.set("000.00.31.H30", phone="0269 3823 456")
    got = directory.get("000.00.31.H30")
    assert (got["name"], got["scope"], got["email"], got["phone"]) == ("Sở Tư pháp", "local", "vanthu@stp.gov.vn",
                                                                       "0269 3823 456")
    directory.delete("000.00.31.H30")
    assert directory.list() == []
    created = _admin_records(directory.engine, "agency.create")
    updated = _admin_records(directory.engine, "agency.update")
    deleted = _admin_records(directory.engine, "agency.delete")
    assert len(created) == 1 and len(updated) == 1 and len(deleted) == 1
    assert updated[0]["before"]["phone"] is None and updated[0]["after"]["phone"] == "0269 3823 456"
    assert created[0]["actor"] == "tests"


@pytest.mark.parametrize("code", ["000.00.31.h30", "00.00.31.H30", "000.00.31.H3", "000.00.31.H30 ", "../x",
                                  "000.00.31.HH0"])
def test_a_code_that_is_not_qcvn_102_is_refused(directory, code):
    with pytest.raises(AdminError, match="QCVN 102"):
        directory.set(code, name="X")


def test_the_document_system_client_must_exist_and_belong_to_a_local_agency(directory):
    with pytest.raises(AdminError, match="No client 'qlvb-stp'") as info:
        directory.set("000.00.31.H30", name="Sở Tư pháp", client_id="qlvb-stp")
    assert info.value.code == "admin.not_found"
    Admin(directory.engine, "tests").create_client("qlvb-stp", "Quản lý văn bản — Sở Tư pháp")
    directory.set("000.00.31.H30", name="Sở Tư pháp", client_id="qlvb-stp")
    assert directory.of_client("qlvb-stp") == ["000.00.31.H30"]
    with pytest.raises(AdminError, match="Only a local agency"):
        directory.set("000.00.00.G22", name="Văn phòng Chính phủ", scope="national", client_id="qlvb-stp")


def test_names_and_contacts_are_bounded_text(directory):
    with pytest.raises(AdminError):
        directory.set("000.00.31.H30", name="x\r\nInjected: 1")
    with pytest.raises(AdminError):
        directory.set("000.00.31.H30", name="x" * 301)
    with pytest.raises(AdminError, match="needs a name"):
        directory.set("000.00.31.H30", email="a@b.vn")


def test_sync_mirrors_the_national_list_and_keeps_local_agencies(directory):
    directory.set("000.00.00.H30", name="UBND tỉnh")                  # local, also listed by the axis
    first = directory.sync_national([
        {"code": "000.00.00.G22", "name": "Văn phòng Chính phủ", "pcode": "", "mail": "vt@chinhphu.vn"},
        {"code": "000.00.00.H41", "name": "UBND Tỉnh Nghệ An", "mobile": "0383840418"},
        {"code": "000.00.00.H30", "name": "Renamed by the axis"},
        {"code": "bad code", "name": "x"},
    ])
    assert first == {"created": ["000.00.00.G22", "000.00.00.H41"], "updated": [], "removed": [],
                     "skipped": ["bad code"]}
    assert directory.get("000.00.00.H30")["name"] == "UBND tỉnh" and directory.get("000.00.00.H30")["scope"] == "local"
    second = directory.sync_national([{"code": "000.00.00.G22", "name": "Văn phòng Chính phủ (VPCP)"}])
    assert second["updated"] == ["000.00.00.G22"] and second["removed"] == ["000.00.00.H41"]
    assert [a["code"] for a in directory.list("national")] == ["000.00.00.G22"]
    assert directory.get("000.00.00.G22")["source"] == "national-axis"
    assert _admin_records(directory.engine, "agency.sync")[-1]["after"]["removed"] == ["000.00.00.H41"]


# -- CLI and the national axis simulator ----------------------------------------------------------------

@pytest.fixture(scope="module")
def axis(tmp_path_factory):
    server = start_axis(tmp_path_factory.mktemp("sim") / "national-axis-sim.log")
    yield server
    server.stop()


@pytest.fixture
def cli_env(fresh_db_url, tmp_path):
    env = {"LGSP_HOME": str(tmp_path), "LGSP_DATABASE_URL": fresh_db_url, "LGSP_SECRET_KEY": secrets.token_urlsafe(32),
           "LGSP_EGRESS_ALLOW": "127.0.0.0/8,::1"}
    return env


def test_cli_sets_lists_syncs_and_deletes(cli_env, axis):
    out = lgsp_cli(cli_env, "agencies", "set", "000.00.31.H30", "--name", "Sở Tư pháp").stdout
    assert "saved" in out
    bad = lgsp_cli(cli_env, "agencies", "set", "31.H30", "--name", "x", check=False)
    assert bad.returncode != 0 and "QCVN 102" in bad.stderr and "Traceback" not in bad.stderr
    missing = lgsp_cli(cli_env, "agencies", "sync", check=False)
    assert missing.returncode != 0 and "No connection 'national-axis'" in missing.stderr
    settings = {"endpoint": f"{axis.url}{API_BASE}", "system_id": PROVINCE_SYSTEM[0], "secret": PROVINCE_SYSTEM[1],
                "timeout": 5}
    lgsp_cli(cli_env, "connections", "set", "national-axis", "--adapter", "national-axis",
             "--settings", json.dumps(settings))
    synced = lgsp_cli(cli_env, "agencies", "sync").stdout
    assert "created" in synced and "0 removed" in synced
    listing = lgsp_cli(cli_env, "agencies", "list", "--scope", "national").stdout
    assert "000.00.00.G22" in listing and "Văn phòng Chính phủ" in listing and "000.00.31.H30" not in listing
    again = lgsp_cli(cli_env, "agencies", "sync").stdout
    assert again.startswith("national agencies: 0 created, 0 updated, 0 removed")
    httpx.post(f"{axis.url}/_sim/faults", json={"mode": "down", "count": 1})
    down = lgsp_cli(cli_env, "agencies", "sync", check=False)
    assert down.returncode != 0 and "could not list its agencies" in down.stderr
    lgsp_cli(cli_env, "agencies", "delete", "000.00.31.H30")
    assert "000.00.31.H30" not in lgsp_cli(cli_env, "agencies", "list").stdout


def test_apply_section_creates_then_reports_no_changes(cli_env, tmp_path):
    env = dict(cli_env, QLVB_SECRET="s3cret-for-tests")
    path = tmp_path / "province.yaml"
    path.write_text("clients:\n  qlvb-stp:\n    name: QLVB Sở Tư pháp\n    secret_env: QLVB_SECRET\n"
                    "agencies:\n  000.00.31.H30:\n    name: Sở Tư pháp\n    client: qlvb-stp\n"
                    "  000.00.40.H30: {name: Thanh tra tỉnh, email: tt@tinh.gov.vn}\n")
    dry = lgsp_cli(env, "apply", "-f", str(path), "--dry-run").stdout
    assert "+ agency 000.00.31.H30" in dry and "+ agency 000.00.40.H30" in dry
    lgsp_cli(env, "apply", "-f", str(path))
    assert lgsp_cli(env, "apply", "-f", str(path)).stdout.strip().endswith("no changes")
    directory = Directory(engine_for(env["LGSP_DATABASE_URL"]), "tests")
    assert directory.get("000.00.31.H30")["client_id"] == "qlvb-stp"
    assert directory.get("000.00.31.H30")["source"] == "apply"
    path.write_text("agencies:\n  000.00.40.H30: {name: Thanh tra tỉnh, email: thanhtra@tinh.gov.vn}\n")
    assert "~ agency 000.00.40.H30: email" in lgsp_cli(env, "apply", "-f", str(path), "--dry-run").stdout
    path.write_text("agencies:\n  000.00.40.H30: {name: Thanh tra, colour: blue}\n")
    bad = lgsp_cli(env, "apply", "-f", str(path), check=False)
    assert bad.returncode != 0 and "colour" not in bad.stdout and "only name" in bad.stderr


# -- admin API ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokens(gateway):
    admin = gateway.extra["admin"]
    suffix = uuid.uuid4().hex[:6]
    return {role: get_token(gateway, f"ag-{role}-{suffix}",
                            admin.create_client(f"ag-{role}-{suffix}", f"{role} desk", roles=[role]))
            for role in ("admin", "integrator")}


def call(gateway, method: str, path: str, token: str | None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{gateway.url}/admin/v1{path}", headers=headers, timeout=15, **kw)


def test_admin_api_manages_agencies_with_roles_and_audit(gateway, tokens):
    code = "000.00.77.H30"
    r = call(gateway, "PUT", f"/agencies/{code}", tokens["integrator"], json={"name": "Sở Y tế"})
    assert r.status_code == 403 and r.json()["code"] == "access.no_grant"
    r = call(gateway, "PUT", f"/agencies/{code}", tokens["admin"], json={"name": "Sở Y tế", "email": "syt@tinh.gov.vn"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Sở Y tế" and r.json()["scope"] == "local"
    listed = call(gateway, "GET", "/agencies?scope=local", tokens["integrator"])
    assert listed.status_code == 200 and code in [a["code"] for a in listed.json()]
    r = call(gateway, "PUT", "/agencies/000.00.77.h30", tokens["admin"], json={"name": "x"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
    r = call(gateway, "PUT", f"/agencies/{code}", tokens["admin"], json={"client_id": "no-such-client"})
    assert r.status_code == 404 and r.json()["code"] == "admin.not_found"
    assert call(gateway, "DELETE", f"/agencies/{code}", tokens["admin"]).status_code == 204
    assert call(gateway, "GET", f"/agencies/{code}", tokens["admin"]).json()["code"] == "admin.not_found"
    r = call(gateway, "POST", "/agencies-sync?connection=nowhere", tokens["admin"])
    assert r.status_code == 404 and "No connection 'nowhere'" in r.json()["detail"]
    with gateway.extra["engine"].connect() as conn:
        details = conn.execute(select(audit_records.c.detail).where(audit_records.c.kind == "admin")).scalars().all()
    actions = [(d["action"], d["target"]) for d in details]
    assert ("agency.create", code) in actions and ("agency.delete", code) in actions
    assert ("agency.list", "local") in actions


def test_admin_api_syncs_from_the_national_axis(gateway, tokens, axis):
    gateway.extra["admin"].set_connection("national-axis", "national-axis", {
        "endpoint": f"{axis.url}{API_BASE}", "system_id": PROVINCE_SYSTEM[0], "secret": PROVINCE_SYSTEM[1],
        "timeout": 5})
    r = call(gateway, "POST", "/agencies-sync", tokens["admin"])
    assert r.status_code == 200, r.text
    national = [a["code"] for a in call(gateway, "GET", "/agencies?scope=national", tokens["admin"]).json()]
    assert "000.00.00.G22" in national and "000.00.01.H41" in national
    # The simulator stops with this module: leave the shared gateway a disabled connection, never a dead one.
    assert call(gateway, "DELETE", "/connections/national-axis", tokens["admin"]).status_code == 204
    r = call(gateway, "POST", "/agencies-sync", tokens["admin"])
    assert r.status_code == 422 and "disabled" in r.json()["detail"]
