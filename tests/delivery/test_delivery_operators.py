"""Operators: list, show, replay and cancel messages through the CLI, the admin API and the console;
each action in the audit trail; a replay or cancel only where it makes sense."""
from __future__ import annotations

import re

import httpx
import pytest
from delivery_rig import dossier, headers, running_rig, wait_until
from helpers import get_token, lgsp_cli, wait_for_config
from sqlalchemy import select

from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records


@pytest.fixture(scope="module")
def rig(tmp_path_factory, lgsp_env):
    with running_rig(tmp_path_factory.mktemp("delivery-ops"), "ops") as rig:
        yield rig


def _send(rig, token, no: str) -> dict:
    r = httpx.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier(no), headers=headers(token))
    assert r.status_code == 202, r.text
    return r.json()


def _status(rig, token, message: dict) -> str:
    return httpx.get(message["status_url"], headers=headers(token)).json()["status"]


def _sent_while(rig, token, fault: str, no: str, status: str) -> dict:
    """A message sent while the portal simulator has `fault` on, once it has reached `status`."""
    rig.faults(fault)
    try:
        message = _send(rig, token, no)
        wait_until(lambda: _status(rig, token, message) == status)
    finally:
        rig.faults("normal")
    return message


def _admin_records(rig, action: str) -> list:
    with engine_for(rig.db_url).connect() as conn:
        rows = conn.execute(select(audit_records).where(audit_records.c.kind == "admin")).all()
    return [r for r in rows if (r.detail or {}).get("action") == action]


def test_cli_replays_a_dead_message_and_cancels_a_waiting_one(rig):
    token = rig.token()
    dead = _sent_while(rig, token, "refuse", "OP-0001", "dead")
    env = {"LGSP_DATABASE_URL": rig.db_url}
    listed = lgsp_cli(env, "deliveries", "list", "--status", "dead").stdout
    assert dead["message_id"] in listed and "upstream.fault" in listed
    shown = lgsp_cli(env, "deliveries", "show", dead["message_id"]).stdout
    assert '"attempt_log"' in shown and '"dead"' in shown and "Nguyễn" not in shown  # no payload unless asked
    assert "Nguyễn Văn An" in lgsp_cli(env, "deliveries", "show", dead["message_id"], "--payload").stdout
    out = lgsp_cli(env, "deliveries", "replay", dead["message_id"], "--reason", "portal fixed the procedure")
    assert "queued again" in out.stdout
    wait_until(lambda: _status(rig, token, dead) == "delivered")
    # A delivered message is never sent again by an operator's slip.
    again = lgsp_cli(env, "deliveries", "replay", dead["message_id"], check=False)
    assert again.returncode != 0 and "only a dead or cancelled message" in again.stderr
    records = _admin_records(rig, "delivery.replay")
    assert records and records[-1].detail["target"] == dead["message_id"]
    assert records[-1].detail["before"]["status"] == "dead" and records[-1].detail["actor"].startswith("cli:")
    assert _admin_records(rig, "delivery.show_payload")  # reading what a message carries is recorded

    rig.faults("down")
    try:
        waiting = _send(rig, token, "OP-0002")
        wait_until(lambda: _status(rig, token, waiting) == "failed")
        wait_until(lambda: lgsp_cli(env, "deliveries", "cancel", waiting["message_id"], "--reason", "sent by mistake",
                                    check=False).returncode == 0)  # refused only while an attempt is under way
        body = httpx.get(waiting["status_url"], headers=headers(token)).json()
        assert body["status"] == "cancelled" and body["error"]["reason"] == "sent by mistake"
    finally:
        rig.faults("normal")
    assert _admin_records(rig, "delivery.cancel")


def test_a_replay_the_worker_delivers_before_it_is_read_back_is_still_applied(rig, monkeypatch):
    """The woken worker may claim and deliver the message between the replay's commit and its read-back:
    the replay happened, so the operator gets its summary, not a refusal and a 'not applied' record."""
    from lgsp.audit.writer import writer_for
    from lgsp.delivery import operators

    token = rig.token()
    dead = _sent_while(rig, token, "refuse", "OP-0006", "dead")
    engine = engine_for(rig.db_url)

    class DeliveredBeforeReadBack:
        def __init__(self, writer):
            self.writer = writer

        def commit_sync(self, record, timeout=30, statements=()):
            self.writer.commit_sync(record, timeout, statements)
            wait_until(lambda: _status(rig, token, dead) == "delivered")  # the real worker, on its own

    monkeypatch.setattr(operators, "writer_for", lambda e: DeliveredBeforeReadBack(writer_for(e)))
    summary = operators.replay(engine, "cli:tests", dead["message_id"], "portal fixed the procedure")
    assert summary["status"] == "delivered"
    mine = [r for r in _admin_records(rig, "delivery.replay") if r.detail["target"] == dead["message_id"]]
    assert [r.outcome for r in mine] == ["ok"] and "not_applied" not in mine[0].detail


def test_admin_api_needs_a_role_and_audits_each_action(rig):
    from lgsp.control.admin import Admin

    token = rig.token()
    admin = Admin(engine_for(rig.db_url), "tests")
    secret = admin.create_client("ops-integrator", "Operations", roles=("integrator",))
    ops = get_token(rig.gateway, "ops-integrator", secret, scope="integrator")
    base = f"{rig.url}/admin/v1/deliveries"
    # The sector system's own token is not an operator's.
    assert_problem_like(httpx.get(base, headers={"Authorization": f"Bearer {token}"}), 403, "access.no_grant")
    rig.faults("down")
    try:
        message = _send(rig, token, "OP-0003")
        wait_until(lambda: _status(rig, token, message) == "failed")
        auth = {"Authorization": f"Bearer {ops}"}
        listed = httpx.get(base, params={"key": "OP-0003"}, headers=auth)
        assert listed.status_code == 200 and [m["message_id"] for m in listed.json()] == [message["message_id"]]
        shown = httpx.get(f"{base}/{message['message_id']}", headers=auth).json()
        assert shown["attempt_log"][0]["error_code"] == "upstream.unavailable" and "payload" not in shown
        refused = httpx.post(f"{base}/{message['message_id']}/replay", headers=auth)
        assert_problem_like(refused, 409, "delivery.not_replayable")
        # 409 while an attempt is under way (not cancellable mid-delivery); it waits again within a second.
        cancelled = wait_until(lambda: (r := httpx.post(f"{base}/{message['message_id']}/cancel", headers=auth,
                                                        params={"reason": "duplicate"})).status_code == 200 and r)
        assert cancelled.json()["status"] == "cancelled"
        replayed = httpx.post(f"{base}/{message['message_id']}/replay", headers=auth, params={"reason": "not a dup"})
        assert replayed.status_code == 200 and replayed.json()["status"] in ("accepted", "delivering", "delivered")
    finally:
        rig.faults("normal")
    wait_until(lambda: _status(rig, token, message) == "delivered")
    actors = {r.detail["actor"] for r in _admin_records(rig, "delivery.cancel") + _admin_records(rig, "delivery.list")}
    assert "client:ops-integrator" in actors


def assert_problem_like(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == code


def test_console_page_lists_and_replays(rig):
    from lgsp.control.admin import Admin

    token = rig.token()
    dead = _sent_while(rig, token, "refuse", "OP-0004", "dead")
    admin = Admin(engine_for(rig.db_url), "tests")
    secret = admin.create_client("ops-console", "Operations console", roles=("auditor", "integrator"))
    reader = admin.create_client("auditor-only", "Security team", roles=("auditor",))
    wait_for_config(rig.url, rig.db_url)

    def login(cid, sec):
        http = httpx.Client(base_url=rig.url, follow_redirects=False)
        csrf = re.search(r'name="csrf" value="([^"]+)"', http.get("/console/login").text).group(1)
        r = http.post("/console/login", data={"csrf": csrf, "client_id": cid, "client_secret": sec})
        assert r.status_code == 303, r.text
        return http

    http = login("ops-console", secret)
    page = http.get("/console/deliveries", params={"status": "dead"})
    assert page.status_code == 200 and dead["message_id"][:8] in page.text
    detail = http.get(f"/console/deliveries/{dead['message_id']}")
    assert 'id="replay"' in detail.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', detail.text).group(1)
    assert http.post(f"/console/deliveries/{dead['message_id']}/replay", data={"reason": "x"}).status_code == 403
    done = http.post(f"/console/deliveries/{dead['message_id']}/replay", data={"csrf": csrf, "reason": "fixed"})
    assert done.status_code == 303
    wait_until(lambda: _status(rig, token, dead) == "delivered")
    # An auditor reads, but cannot act.
    other = login("auditor-only", reader)
    page = other.get(f"/console/deliveries/{dead['message_id']}")
    assert page.status_code == 200 and 'id="replay"' not in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert other.post(f"/console/deliveries/{dead['message_id']}/cancel", data={"csrf": csrf}).status_code == 403
    assert any(r.detail["actor"] == "console:ops-console" for r in _admin_records(rig, "delivery.replay"))


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def _console_login(rig, cid: str, secret: str) -> httpx.Client:
    http = httpx.Client(base_url=rig.url, follow_redirects=False)
    csrf = _csrf(http.get("/console/login").text)
    r = http.post("/console/login", data={"csrf": csrf, "client_id": cid, "client_secret": secret})
    assert r.status_code == 303, r.text
    return http


def test_admin_api_hands_out_a_callback_key_to_an_admin_only(rig):
    from lgsp.control.admin import Admin

    admin = Admin(engine_for(rig.db_url), "tests")
    boss = get_token(rig.gateway, "keys-admin", admin.create_client("keys-admin", "Keys", roles=("admin",)),
                     scope="admin")
    ops = get_token(rig.gateway, "keys-integrator", admin.create_client("keys-integrator", "Ops",
                                                                        roles=("integrator",)), scope="integrator")
    sender = rig.client[0]
    url = f"{rig.url}/admin/v1/clients/{sender}/callback-key"
    # Neither the sender itself nor an integrator may read a key (with it, callbacks could be forged).
    assert_problem_like(httpx.get(url, headers={"Authorization": f"Bearer {rig.token()}"}), 403, "access.no_grant")
    assert_problem_like(httpx.get(url, headers={"Authorization": f"Bearer {ops}"}), 403, "access.no_grant")
    got = httpx.get(url, headers={"Authorization": f"Bearer {boss}"})
    assert got.status_code == 200, got.text
    assert got.headers["cache-control"] == "no-store"
    body = got.json()
    cli = lgsp_cli({"LGSP_DATABASE_URL": rig.db_url}, "deliveries", "callback-key", sender).stdout.strip()
    assert body["client_id"] == sender and body["key"] == cli.splitlines()[-1] and len(body["key"]) == 64
    assert body["algorithm"] == "HMAC-SHA256" and body["header"] == "LGSP-Signature"
    assert_problem_like(httpx.get(f"{rig.url}/admin/v1/clients/no-such-client/callback-key",
                                  headers={"Authorization": f"Bearer {boss}"}), 404, "admin.not_found")
    reads = [r for r in _admin_records(rig, "delivery.callback_key") if r.detail["actor"] == "client:keys-admin"]
    assert [r.detail["target"] for r in reads][:1] == [sender]


def test_console_shows_a_callback_key_to_an_admin_only(rig):
    from lgsp.control.admin import Admin

    admin = Admin(engine_for(rig.db_url), "tests")
    boss_secret = admin.create_client("console-admin", "Console admin", roles=("auditor", "admin"))
    ops_secret = admin.create_client("console-ops", "Console ops", roles=("auditor", "integrator"))
    wait_for_config(rig.url, rig.db_url)
    sender = rig.client[0]
    expected = lgsp_cli({"LGSP_DATABASE_URL": rig.db_url}, "deliveries", "callback-key", sender).stdout.split()[-1]

    ops = _console_login(rig, "console-ops", ops_secret)
    page = ops.get("/console/deliveries")
    assert page.status_code == 200 and 'id="callback-key"' not in page.text
    csrf = _csrf(page.text)
    refused = ops.post("/console/deliveries/callback-key", data={"csrf": csrf, "client_id": sender})
    assert refused.status_code == 403 and expected not in refused.text

    boss = _console_login(rig, "console-admin", boss_secret)
    page = boss.get("/console/deliveries")
    assert 'id="callback-key"' in page.text and 'id="callback-key"' not in page.text.split("</title>")[0]
    csrf = _csrf(page.text)
    # Without the session's CSRF token (a forged cross-site form), no key.
    forged = boss.post("/console/deliveries/callback-key", data={"client_id": sender})
    assert forged.status_code == 403 and expected not in forged.text
    shown = boss.post("/console/deliveries/callback-key", data={"csrf": csrf, "client_id": sender})
    assert shown.status_code == 200 and expected in shown.text
    assert shown.headers["cache-control"] == "no-store"
    missing = boss.post("/console/deliveries/callback-key", data={"csrf": csrf, "client_id": "nobody-here"})
    assert missing.status_code == 404
    assert any(r.detail["actor"] == "console:console-admin" and r.detail["target"] == sender
               for r in _admin_records(rig, "delivery.callback_key"))


def test_a_cancel_that_a_worker_overtakes_is_refused_and_recorded_as_not_applied(rig, monkeypatch):
    """The operator's read saw a waiting message; a worker claimed it before the guarded UPDATE ran.
    The answer is a 409-kind refusal, and the trail holds a second record saying nothing changed."""
    from sqlalchemy import update

    from lgsp.delivery import operators, store
    from lgsp.storage.schema import delivery_messages

    token = rig.token()
    message = _sent_while(rig, token, "down", "OP-0005", "failed")
    engine = engine_for(rig.db_url)
    stale = store.read(engine, message["message_id"])
    with engine.begin() as conn:  # what a claim does, with a lease no worker will take over during the test
        conn.execute(update(delivery_messages).where(delivery_messages.c.id == message["message_id"]).values(
            status="delivering", lease_owner="test:overtaking", lease_until=store.now().replace(year=2099)))
    reads = iter([stale])
    real_read = store.read
    monkeypatch.setattr(store, "read", lambda e, mid: next(reads, None) or real_read(e, mid))
    with pytest.raises(operators.OperatorError) as refused:
        operators.cancel(engine, "test:operator", message["message_id"], "too late")
    assert refused.value.code == "delivery.not_cancellable" and "delivering" in str(refused.value)
    monkeypatch.undo()
    now = store.read(engine, message["message_id"])
    assert now is not None and now.status == "delivering"
    records = [r for r in _admin_records(rig, "delivery.cancel") if r.detail["target"] == message["message_id"]]
    assert [r.outcome for r in records] == ["ok", "refused"]
    assert records[-1].detail["not_applied"] is True and records[-1].detail["after"]["status"] == "delivering"
    with engine.begin() as conn:  # hand the message back to the workers
        conn.execute(update(delivery_messages).where(delivery_messages.c.id == message["message_id"]).values(
            status="failed", lease_owner=None, lease_until=None, next_attempt_at=store.now()))
    wait_until(lambda: _status(rig, token, message) == "delivered")
