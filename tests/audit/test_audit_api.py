"""The audit API for security teams, end to end: exchanges through the REST door on a
real gateway, then searches and citizen access reports with an auditor's token."""
from __future__ import annotations

import re
import subprocess
import sys
import uuid

import httpx
import pytest
from helpers import get_token, wait_for_config

PURPOSE = "administrative-procedure"
FIELDS = ["personal_id", "full_name", "birth_date", "permanent_address"]


@pytest.fixture(scope="module")
def citizens() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "lgsp_adapters.population.simulator", "--list", "3"],
                         capture_output=True, text=True, check=True).stdout
    return re.findall(r"^(\d{12})\t", out, re.M)[:3]


@pytest.fixture(scope="module")
def world(gateway, citizens):
    """A clerk that looked up citizens for two officers, and an auditor. Returns what was done."""
    admin = gateway.extra["admin"]
    suffix = uuid.uuid4().hex[:6]
    clerk, auditor = f"clerk-{suffix}", f"auditor-{suffix}"
    secrets = {
        clerk: admin.create_client(clerk, "Một cửa <i>điện tử</i>", "000.00.31.H30", "UBND <b>tỉnh</b>"),
        auditor: admin.create_client(auditor, "Security team", "000.00.99.H30", roles=["auditor"]),
    }
    admin.add_grant(clerk, "population.citizen.get", FIELDS, [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    token = get_token(gateway, clerk, secrets[clerk])
    officers = {"a": f"officer-a-{suffix}", "b": f"officer-b-{suffix}"}
    done = []  # (request_id, personal_id, officer, outcome)
    plan = [(citizens[0], "a", PURPOSE), (citizens[1], "b", PURPOSE), (citizens[0], "a", PURPOSE),
            (citizens[0], "b", "marketing"), (citizens[1], "b", PURPOSE), (citizens[0], "a", PURPOSE)]
    for pid, officer, purpose in plan:
        r = httpx.get(f"{gateway.url}/api/population/v1/citizens/{pid}", timeout=15, headers={
            "Authorization": f"Bearer {token}", "X-Purpose": purpose, "X-On-Behalf-Of": officers[officer]})
        assert r.status_code in (200, 403), r.text
        done.append((r.headers["x-request-id"], pid, officers[officer], "ok" if r.status_code == 200 else "refused"))
    return {"clerk": (clerk, secrets[clerk]), "auditor": (auditor, secrets[auditor]), "officers": officers,
            "done": done, "suffix": suffix}


@pytest.fixture(scope="module")
def auditor_token(gateway, world) -> str:
    return get_token(gateway, *world["auditor"])


def api(gateway, path: str, token: str | None = None, **params) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{gateway.url}/audit/v1{path}", params=params, headers=headers, timeout=15)


def records(gateway, token, **params) -> list[dict]:
    r = api(gateway, "/records", token, **params)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    return r.json()["records"]


def assert_problem(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["title"] and len(body["detail"]) > 10
    if code:
        assert body["code"] == code
    assert "Traceback" not in resp.text
    return body


# -- search ------------------------------------------------------------------------

def test_search_by_client_newest_first_with_names(gateway, world, auditor_token):
    clerk = world["clerk"][0]
    found = records(gateway, auditor_token, client_id=clerk)
    assert [r["request_id"] for r in found] == [d[0] for d in reversed(world["done"])]
    assert all(r["client_id"] == clerk and r["client_name"] == "Một cửa <i>điện tử</i>" for r in found)
    assert all(r["hash_ok"] and r["kind"] == "exchange" and r["at"].endswith("Z") for r in found)
    ok = found[-1]
    assert ok["purpose"] == PURPOSE and ok["service"] == "population.citizen.get" and ok["status"] == 200
    assert set(ok["fields"]) <= set(FIELDS) and "full_name" in ok["fields"]
    assert ok["response_sha256"] and ok["upstream"] and ok["chain"] and ok["seq"] >= 1


def test_search_by_officer_purpose_and_outcome(gateway, world, auditor_token):
    officer_b = world["officers"]["b"]
    assert {r["request_id"] for r in records(gateway, auditor_token, officer=officer_b)} == \
        {d[0] for d in world["done"] if d[2] == officer_b}
    refused = records(gateway, auditor_token, client_id=world["clerk"][0], outcome="refused")
    assert [r["purpose"] for r in refused] == ["marketing"] and refused[0]["error_code"] == "purpose.not_allowed"
    assert records(gateway, auditor_token, officer=officer_b, purpose="marketing")[0]["outcome"] == "refused"


def test_search_by_personal_id_matches_the_keyed_hash_only(gateway, world, auditor_token, citizens):
    r = api(gateway, "/records", auditor_token, personal_id=citizens[0])
    assert r.status_code == 200
    found = r.json()["records"]
    assert {x["request_id"] for x in found} >= {d[0] for d in world["done"] if d[1] == citizens[0]}
    assert len({x["subject_hash"] for x in found}) == 1
    assert citizens[0] not in r.text  # the ID is matched, never stored or returned
    same = records(gateway, auditor_token, subject_hash=found[0]["subject_hash"], client_id=world["clerk"][0])
    assert {x["id"] for x in same} == {x["id"] for x in found if x["client_id"] == world["clerk"][0]}


def test_search_by_request_id_time_range_and_kind(gateway, world, auditor_token):
    first = records(gateway, auditor_token, request_id=world["done"][0][0])
    assert len(first) == 1
    later = records(gateway, auditor_token, client_id=world["clerk"][0], **{"from": first[0]["at"]}, order="asc")
    assert later[0]["id"] == first[0]["id"] and len(later) == len(world["done"])
    assert records(gateway, auditor_token, client_id=world["clerk"][0], to=first[0]["at"]) == []
    admin = records(gateway, auditor_token, kind="admin", limit=500)
    assert any(r["detail"]["action"] == "client.create" and r["detail"]["target"] == world["auditor"][0] for r in admin)
    assert all("secret_hash" not in str(r["detail"]) for r in admin)


def _walk(gateway, token, clerk: str, order: str, during) -> list[int]:
    seen, cursor = [], None
    while True:
        params = {"client_id": clerk, "limit": 2, "order": order, **({"cursor": cursor} if cursor else {})}
        page = api(gateway, "/records", token, **params).json()
        seen += [r["id"] for r in page["records"]]
        if len(seen) <= 2:
            during()
        cursor = page["next_cursor"]
        if not cursor:
            return seen


def test_pagination_is_stable_and_complete(gateway, world, auditor_token, citizens):
    clerk = world["clerk"][0]
    clerk_token = get_token(gateway, *world["clerk"])

    def another_exchange():  # written while paging: must neither shift nor repeat what follows
        httpx.get(f"{gateway.url}/api/population/v1/citizens/{citizens[2]}", timeout=15,
                  headers={"Authorization": f"Bearer {clerk_token}", "X-Purpose": PURPOSE})

    before = [r["id"] for r in records(gateway, auditor_token, client_id=clerk, limit=500)]
    assert _walk(gateway, auditor_token, clerk, "desc", another_exchange) == before  # the new one is newer
    before = [r["id"] for r in records(gateway, auditor_token, client_id=clerk, limit=500, order="asc")]
    seen = _walk(gateway, auditor_token, clerk, "asc", another_exchange)
    assert seen[:len(before)] == before and len(seen) == len(before) + 1  # the new one comes last
    assert len(seen) == len(set(seen))


def test_get_record_with_its_integrity(gateway, world, auditor_token):
    rid = records(gateway, auditor_token, request_id=world["done"][0][0])[0]["id"]
    r = api(gateway, f"/records/{rid}", auditor_token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == rid and body["hash_ok"] is True and body["body_stored"] is False
    integrity = body["integrity"]
    assert integrity["hash_ok"] and integrity["linked"] is True and integrity["findings"] == []
    assert integrity["status"] in ("sealed", "unsealed")
    if integrity["seal"]:
        assert integrity["seal"]["signature_ok"] is True and integrity["seal"]["seq"] >= body["seq"]
    assert_problem(api(gateway, "/records/987654321", auditor_token), 404, "record.not_found")


# -- integrity of one record ------------------------------------------------------------

@pytest.fixture
def own_chain(gateway):
    """A chain of 12 records sealed every 5, written for this test; restored afterwards."""
    import datetime as dt

    from sqlalchemy import delete, insert, select

    from lgsp.audit.writer import AuditWriter
    from lgsp.storage.schema import audit_records

    engine = gateway.extra["engine"]
    writer = AuditWriter(engine, chain=f"test-integrity-{uuid.uuid4().hex[:8]}", seal_every=5)
    for n in range(12):
        writer.commit_sync({"at": dt.datetime.now(dt.timezone.utc), "kind": "exchange", "outcome": "ok",
                            "client_id": "integrity-test", "purpose": PURPOSE, "request_id": f"integrity-{n}"})
    writer.close()
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            select(audit_records).where(audit_records.c.chain == writer.chain).order_by(audit_records.c.seq))]
    yield engine, {row["seq"]: row for row in rows}
    with engine.begin() as conn:  # the session's other tests verify the whole database
        conn.execute(delete(audit_records).where(audit_records.c.chain == writer.chain))
        conn.execute(insert(audit_records), rows)


def _status(engine, row) -> tuple[str, list[str]]:
    from lgsp.audit import search as audit_search

    integrity = audit_search.get_record(engine, row["id"])["integrity"]
    return integrity["status"], integrity["findings"]


def _rewrite(engine, row, **values) -> None:
    from sqlalchemy import update

    from lgsp.storage.schema import audit_records

    with engine.begin() as conn:
        conn.execute(update(audit_records).where(audit_records.c.id == row["id"]).values(**values))


def test_record_integrity_tells_the_edited_record_from_its_neighbours(own_chain, gateway, auditor_token):
    engine, by_seq = own_chain
    assert _status(engine, by_seq[3])[0] == "sealed" and _status(engine, by_seq[12])[0] == "sealed"
    _rewrite(engine, by_seq[7], purpose="x")
    status, findings = _status(engine, by_seq[7])
    assert status == "tampered" and "does not match its hash" in findings[0]
    status, findings = _status(engine, by_seq[6])  # intact, but its seal (seq 10) no longer proves it
    assert status == "unproven" and f"record {by_seq[7]['id']}" in findings[0]
    assert _status(engine, by_seq[8])[0] == "sealed"
    body = api(gateway, f"/records/{by_seq[7]['id']}", auditor_token).json()
    assert body["hash_ok"] is False and body["integrity"]["status"] == "tampered"


def test_record_integrity_catches_a_recomputed_hash_and_a_deletion(own_chain):
    from sqlalchemy import delete

    from lgsp.audit.writer import record_hash
    from lgsp.storage.schema import audit_records

    engine, by_seq = own_chain
    forged = dict(by_seq[7], purpose="x")
    _rewrite(engine, by_seq[7], purpose="x", hash=record_hash(forged))
    status, findings = _status(engine, by_seq[7])
    assert status == "tampered" and "does not link to this one" in findings[0]
    _rewrite(engine, by_seq[7], purpose=by_seq[7]["purpose"], hash=by_seq[7]["hash"])
    with engine.begin() as conn:
        conn.execute(delete(audit_records).where(audit_records.c.id == by_seq[9]["id"]))
    status, findings = _status(engine, by_seq[10])
    assert status == "tampered" and "seq 9" in findings[0] and "missing" in findings[0]
    assert _status(engine, by_seq[8])[0] == "unproven"


def test_record_integrity_catches_a_rewritten_tail(own_chain):
    from lgsp.audit.writer import record_hash

    engine, by_seq = own_chain
    head = by_seq[6]["hash"]
    for seq in range(7, 13):  # rewrite 7..12 and every hash after: only the seals can tell
        row = dict(by_seq[seq], prev_hash=head, officer="someone-else")
        row["hash"] = head = record_hash(row)
        _rewrite(engine, by_seq[seq], prev_hash=row["prev_hash"], officer=row["officer"], hash=row["hash"])
    status, findings = _status(engine, by_seq[8])
    assert status == "unproven" and "recomputed hashes" in findings[0]
    assert _status(engine, by_seq[3])[0] == "sealed"


# -- who may search --------------------------------------------------------------------

def test_no_token_is_401(gateway):
    body = assert_problem(api(gateway, "/records"), 401, "auth.token_missing")
    assert "Bearer" in body["detail"]
    assert_problem(api(gateway, "/records", "not-a-token"), 401, "auth.token_invalid")


def test_token_without_auditor_role_is_403(gateway, world, citizens):
    clerk_token = get_token(gateway, *world["clerk"])
    assert_problem(api(gateway, "/records", clerk_token), 403, "access.no_grant")
    assert_problem(api(gateway, f"/citizens/{citizens[0]}/accesses", clerk_token), 403, "access.no_grant")


def test_disabled_auditor_is_refused_at_once(gateway):
    admin = gateway.extra["admin"]
    cid = f"auditor-tmp-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Temporary auditor", roles=["auditor"])
    token = get_token(gateway, cid, secret)
    assert api(gateway, "/records", token, limit=1).status_code == 200
    admin.set_client_status(cid, "disabled")
    assert_problem(api(gateway, "/records", token, limit=1), 401, "auth.client_disabled")


@pytest.mark.parametrize("params", [
    {"limit": 0}, {"limit": 501}, {"outcome": "maybe"}, {"from": "yesterday"}, {"to": "2025-07-01"},
    {"personal_id": "12345"}, {"order": "sideways"}, {"kind": "other"},
])
def test_bad_parameters_are_400_problems(gateway, auditor_token, params):
    assert_problem(api(gateway, "/records", auditor_token, **params), 400)


def test_foreign_cursor_is_a_400_with_a_code(gateway, auditor_token):
    body = assert_problem(api(gateway, "/records", auditor_token, cursor="bm90LWEtY3Vyc29y"), 400, "request.invalid")
    assert "cursor" in body["detail"]
    page = api(gateway, "/records", auditor_token, limit=1).json()
    assert_problem(api(gateway, "/records", auditor_token, limit=1, order="asc", cursor=page["next_cursor"]),
                   400, "request.invalid")


@pytest.mark.parametrize("record_id", ["2**63", "1e300", '"7"', "-1"])
def test_a_forged_cursor_with_an_id_no_database_holds_is_a_400(gateway, auditor_token, record_id):
    import base64

    raw = f'["2026-12-02T08:00:00.000000Z",{record_id.replace("2**63", str(2**63))},"desc"]'.encode()
    cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    body = assert_problem(api(gateway, "/records", auditor_token, cursor=cursor), 400, "request.invalid")
    assert "cursor" in body["detail"]  # SQLite raised OverflowError on 2**63: a 500


# -- citizen access report -----------------------------------------------------------------

def test_access_report_lists_who_when_why_which_fields(gateway, world, auditor_token, citizens):
    r = api(gateway, f"/citizens/{citizens[0]}/accesses", auditor_token)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["personal_id"] == citizens[0]
    mine = [d for d in world["done"] if d[1] == citizens[0]]
    ours = [a for a in report["accesses"] if a["client_id"] == world["clerk"][0]]
    assert [a["request_id"] for a in ours] == [d[0] for d in mine]  # oldest first
    times = [a["at"] for a in report["accesses"]]
    assert times == sorted(times)
    for access, (_, _, officer, outcome) in zip(ours, mine):
        assert access["officer"] == officer and access["outcome"] == outcome
        assert access["client_name"] == "Một cửa <i>điện tử</i>" and access["agency_code"] == "000.00.31.H30"
        assert access["agency_name"] == "UBND <b>tỉnh</b>" and access["service"] == "population.citizen.get"
        if outcome == "ok":
            assert access["purpose"] == PURPOSE and "full_name" in access["fields"]
        else:
            assert access["purpose"] == "marketing" and access["fields"] == []
    summary = report["summary"]
    assert summary["count"] == len(report["accesses"]) and summary["first"] == times[0] and summary["last"] == times[-1]
    clerk_summary = next(c for c in summary["by_client"] if c["client_id"] == world["clerk"][0])
    assert clerk_summary["count"] == len(mine) and clerk_summary["answered"] == sum(d[3] == "ok" for d in mine)


def test_access_report_never_shows_other_citizens(gateway, world, auditor_token, citizens):
    others = {d[0] for d in world["done"] if d[1] != citizens[0]}
    report = api(gateway, f"/citizens/{citizens[0]}/accesses", auditor_token).json()
    assert not others & {a["request_id"] for a in report["accesses"]}
    second = api(gateway, f"/citizens/{citizens[1]}/accesses", auditor_token).json()
    assert {a["request_id"] for a in second["accesses"] if a["client_id"] == world["clerk"][0]} == others
    nobody = api(gateway, "/citizens/001099999998/accesses", auditor_token).json()
    assert nobody["accesses"] == [] and nobody["summary"]["count"] == 0 and nobody["summary"]["first"] is None


def test_access_report_time_window(gateway, world, auditor_token, citizens):
    first_at = records(gateway, auditor_token, request_id=world["done"][0][0])[0]["at"]
    report = api(gateway, f"/citizens/{citizens[0]}/accesses", auditor_token, to=first_at).json()
    assert world["done"][0][0] not in {a["request_id"] for a in report["accesses"]}
    assert report["to"] == first_at


def test_access_report_as_printable_html(gateway, world, auditor_token, citizens):
    r = api(gateway, f"/citizens/{citizens[0]}/accesses", auditor_token, format="html")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "Báo cáo truy cập dữ liệu công dân" in html and "Citizen data access report" in html
    assert citizens[0] in html and world["officers"]["a"] in html and "@media print" not in html
    assert "Một cửa &lt;i&gt;điện tử&lt;/i&gt;" in html and "<i>điện tử</i>" not in html  # escaped
    assert "<script" not in html and "default-src 'none'" in r.headers["content-security-policy"]
    assert_problem(api(gateway, "/citizens/12345/accesses", auditor_token, format="html"), 400)


def test_spec_is_served_with_its_token_endpoint(gateway):
    doc = httpx.get(f"{gateway.url}/audit/v1/openapi.json").json()
    flow = doc["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == f"{gateway.url}/oauth/token" and "audit.read" in flow["scopes"]
    assert doc["servers"][0]["url"].endswith("/audit/v1")
    assert {"/records", "/records/{id}", "/citizens/{personal_id}/accesses"} <= set(doc["paths"])


def test_reading_the_audit_trail_is_itself_audited(gateway, world, auditor_token, citizens):
    """Searches and access reports leave an admin record naming the auditor; IDs only as hashes."""
    from sqlalchemy import select as _select

    from lgsp.storage.schema import audit_records as _records

    token, auditor_id, citizen = auditor_token, world["auditor"][0], citizens[0]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{gateway.url}/audit/v1/records", params={"personal_id": citizen}, headers=headers).status_code == 200
    assert httpx.get(f"{gateway.url}/audit/v1/citizens/{citizen}/accesses", headers=headers).status_code == 200
    with gateway.extra["engine"].connect() as conn:
        notes = [r.detail for r in conn.execute(_select(_records.c.detail).where(_records.c.kind == "admin"))
                 if r.detail and r.detail.get("actor") == f"client:{auditor_id}"]
    assert {n["action"] for n in notes} >= {"audit.search", "audit.access_report"}
    assert citizen not in str(notes)
