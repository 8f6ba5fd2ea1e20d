"""Store-and-forward delivery end to end: a one-stop-shop hands dossiers to the LGSP (REST and SOAP),
gets 202 at once, and a real receiver gets each exactly once, in order per dossier."""
from __future__ import annotations

import contextlib

import httpx
import pytest
from delivery_rig import dossier, headers, running_rig, step, wait_until
from helpers import assert_problem, wait_for_config
from sqlalchemy import func, select

from lgsp.storage import engine_for
from lgsp.storage.schema import audit_records, delivery_attempts, delivery_messages


@pytest.fixture(scope="module")
def rig(tmp_path_factory, lgsp_env):
    with running_rig(tmp_path_factory.mktemp("delivery"), "delivery") as rig:
        yield rig


@pytest.fixture(scope="module")
def token(rig):
    return rig.token()


def _messages(rig, **where) -> list:
    with engine_for(rig.db_url).connect() as conn:
        query = select(delivery_messages)
        for name, value in where.items():
            query = query.where(delivery_messages.c[name] == value)
        return conn.execute(query.order_by(delivery_messages.c.seq)).all()


def _status(rig, token, url: str) -> dict:
    r = httpx.get(url, headers=headers(token))
    assert r.status_code == 200, r.text
    return r.json()


def test_a_dossier_is_accepted_202_and_delivered_once(rig, token):
    r = httpx.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier("HS-0001"), headers=headers(token))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] in ("accepted", "delivering", "delivered")
    assert r.headers["location"] == body["status_url"]
    # The message and the record of its acceptance were committed together.
    rec = [x for x in _records(rig, r.headers["x-request-id"])]
    assert len(rec) == 1 and rec[0].status == 202 and rec[0].service == "portal.dossier.sync"
    done = wait_until(lambda: (s := _status(rig, token, body["status_url"]))["status"] == "delivered" and s)
    assert done["answer"]["error_code"] == "00"
    applied = [a for a in rig.record()["applied"] if a["dossier_no"] == "HS-0001"]
    assert applied == [{"operation": "dossier.sync", "dossier_no": "HS-0001", "version": 1,
                        "idempotency_key": body["message_id"]}]
    # Every attempt is in the delivery log and the audit trail.
    with engine_for(rig.db_url).connect() as conn:
        attempts = conn.execute(select(delivery_attempts).where(
            delivery_attempts.c.message_id == body["message_id"])).all()
        audited = conn.execute(select(audit_records).where(audit_records.c.kind == "delivery",
                                                           audit_records.c.request_id == f"{body['message_id']}:1")).all()
    assert [a.outcome for a in attempts] == ["delivered"]
    assert len(audited) == 1 and audited[0].outcome == "ok" and audited[0].detail["message_id"] == body["message_id"]


def _records(rig, request_id: str) -> list:
    with engine_for(rig.db_url).connect() as conn:
        return conn.execute(select(audit_records).where(audit_records.c.request_id == request_id)).all()


def test_the_same_idempotency_key_or_version_answers_the_first_acceptance(rig, token):
    url = f"{rig.url}/api/portal/v1/dossiers"
    first = httpx.post(url, json=dossier("HS-0002"), headers=headers(token, **{"Idempotency-Key": "k-0002"}))
    again = httpx.post(url, json=dossier("HS-0002", summary="changed"),
                       headers=headers(token, **{"Idempotency-Key": "k-0002"}))
    same_version = httpx.post(url, json=dossier("HS-0002"), headers=headers(token))
    assert first.status_code == again.status_code == same_version.status_code == 202
    ids = {first.json()["message_id"], again.json()["message_id"], same_version.json()["message_id"]}
    assert len(ids) == 1 and again.json()["replayed"] is True
    assert len(_messages(rig, msg_key="HS-0002")) == 1
    # Each repeat is still an exchange with its own audit record.
    assert len(_records(rig, again.headers["x-request-id"])) == 1


def test_concurrent_repeats_store_one_message(rig, token):
    import concurrent.futures

    url = f"{rig.url}/api/portal/v1/dossiers"

    def send(_):
        return httpx.post(url, json=dossier("HS-RACE"), headers=headers(token, **{"Idempotency-Key": "race-1"}))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["message_id"] for a in answers}) == 1
    assert len(_messages(rig, msg_key="HS-RACE")) == 1


def test_steps_of_one_dossier_arrive_in_order_after_an_outage(rig, token):
    rig.faults("down")
    base = f"{rig.url}/api/portal/v1/dossiers"
    assert httpx.post(base, json=dossier("HS-0003"), headers=headers(token)).status_code == 202
    for i in range(1, 6):
        r = httpx.post(f"{base}/HS-0003/progress", json=step(f"s{i}"), headers=headers(token))
        assert r.status_code == 202, r.text
    wait_until(lambda: any(m.status == "failed" for m in _messages(rig, msg_key="HS-0003")))
    failed = next(m for m in _messages(rig, msg_key="HS-0003") if m.status == "failed")
    assert failed.seq == min(m.seq for m in _messages(rig, msg_key="HS-0003"))  # only the head was tried
    status = _status(rig, token, f"{rig.url}/api/portal/v1/messages/{failed.id}")
    assert status["status"] in ("failed", "delivering") and status.get("error", {}).get("code") in (
        "upstream.unavailable", None)
    rig.faults("normal")
    wait_until(lambda: all(m.status == "delivered" for m in _messages(rig, msg_key="HS-0003")))
    applied = [(a["operation"], a["version"]) for a in rig.record()["applied"] if a["dossier_no"] == "HS-0003"]
    assert applied == [("dossier.sync", 1)] + [("dossier.progress", f"s{i}") for i in range(1, 6)]


def test_a_refusal_by_the_destination_is_dead_at_once_with_its_reason(rig, token):
    rig.faults("refuse")
    try:
        r = httpx.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier("HS-0004"), headers=headers(token))
        assert r.status_code == 202
        dead = wait_until(lambda: (s := _status(rig, token, r.json()["status_url"]))["status"] == "dead" and s)
    finally:
        rig.faults("normal")
    assert dead["attempts"] == 1
    assert dead["error"]["code"] == "upstream.fault" and "refused by the receiver" in dead["error"]["reason"]


def test_bad_dossiers_are_refused_400_and_nothing_is_queued(rig, token):
    url = f"{rig.url}/api/portal/v1/dossiers"
    before = len(_messages(rig))
    no_number = dossier("X")
    del no_number["dossier_no"]
    assert_problem(httpx.post(url, json=no_number, headers=headers(token)), 400, "request.invalid")
    impossible = dossier("HS-BAD-1", received_at="2026-02-30T08:00:00+07:00")
    assert_problem(httpx.post(url, json=impossible, headers=headers(token)), 400, "request.invalid")
    backwards = dossier("HS-BAD-2", due_at="2026-11-01T08:00:00+07:00")
    body = assert_problem(httpx.post(url, json=backwards, headers=headers(token)), 400, "request.invalid")
    assert "due_at" in body["detail"]
    callback = httpx.post(url, json=dossier("HS-BAD-3"),
                          headers=headers(token, **{"X-Callback-URL": "http://10.1.2.3/hook"}))
    assert_problem(callback, 400, "delivery.callback_refused")
    no_purpose = httpx.post(url, json=dossier("HS-BAD-4"), headers={"Authorization": f"Bearer {token}"})
    assert_problem(no_purpose, 400, "purpose.missing")
    assert len(_messages(rig)) == before
    assert len(_records(rig, callback.headers["x-request-id"])) == 1  # refused, still audited


def test_another_client_cannot_read_a_message(rig, token):
    from lgsp.control.admin import Admin

    r = httpx.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier("HS-0005"), headers=headers(token))
    admin = Admin(engine_for(rig.db_url), "tests")
    secret = admin.create_client("other-shop", "Other one-stop-shop", "000.00.32.H30")
    admin.add_grant("other-shop", "portal.message.get", ["message_id", "status"], ["administrative-procedure"])
    wait_for_config(rig.url, rig.db_url)
    from helpers import get_token

    other = get_token(rig.gateway, "other-shop", secret, scope="portal.message.get")
    assert_problem(httpx.get(r.json()["status_url"], headers=headers(other)), 404, "record.not_found")
    # Ids are a per-process prefix and a counter (guessable from one's own): the next one is someone
    # else's message too, and the SOAP door checks the owner as the REST one does.
    mine = httpx.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier("HS-0005b"), headers=headers(token)).json()
    first, second = r.json()["message_id"], mine["message_id"]
    assert first[:24] == second[:24] and int(second[24:], 16) > int(first[24:], 16)
    assert_problem(httpx.get(mine["status_url"], headers=headers(other)), 404, "record.not_found")
    soap = _call_service(rig, other, "portal.message.get", {"message_id": second})
    assert soap.status_code == 500 and "record.not_found" in soap.text and "HS-0005b" not in soap.text
    assert httpx.get(mine["status_url"], headers=headers(token)).status_code == 200


def _call_service(rig, token, service: str, params: dict) -> httpx.Response:
    pairs = "".join(f"<lgsp:param><lgsp:name>{k}</lgsp:name><lgsp:value>{v}</lgsp:value></lgsp:param>"
                    for k, v in params.items())
    envelope = (
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:lgsp="urn:lgsp:soap:v1">'
        f"<soap:Body><lgsp:CallService><lgsp:service>{service}</lgsp:service>{pairs}"
        "<lgsp:purpose>administrative-procedure</lgsp:purpose></lgsp:CallService></soap:Body></soap:Envelope>")
    return httpx.post(f"{rig.url}/soap/v1", content=envelope.encode(),
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "text/xml; charset=utf-8"})


def test_through_the_soap_door_call_service(rig, token):
    """One-stop-shops that speak only SOAP: name/value pairs, dotted names for the dossier's objects."""
    params = {"dossier_no": "HS-SOAP-1", "version": "1", "procedure_code": "1.001193",
              "received_at": "2026-11-30T08:15:00+07:00", "status": "received", "idempotency_key": "soap-1"}
    refused = _call_service(rig, token, "portal.dossier.sync", params)  # no applicant: the schema refuses it
    assert refused.status_code == 500 and "request.invalid" in refused.text and "applicant" in refused.text
    assert not _messages(rig, msg_key="HS-SOAP-1")
    params.update({"applicant.name": "Trần Thị Bình", "applicant.type": "citizen",
                   "fees.0.name": "Lệ phí", "fees.0.amount": "50000"})
    accepted = _call_service(rig, token, "portal.dossier.sync", params)
    assert accepted.status_code == 200, accepted.text
    from lxml import etree

    doc = etree.fromstring(accepted.content)
    message_id = doc.findtext(".//{urn:lgsp:soap:v1}message_id")
    assert message_id and doc.findtext(".//{urn:lgsp:soap:v1}status_url").endswith(message_id)
    again = _call_service(rig, token, "portal.dossier.sync", params)  # the same Idempotency-Key: the first
    assert etree.fromstring(again.content).findtext(".//{urn:lgsp:soap:v1}message_id") == message_id
    stepped = _call_service(rig, token, "portal.dossier.progress", {
        "dossier_no": "HS-SOAP-1", "step_id": "p1", "handled_at": "2026-11-30T09:00:00+07:00",
        "status": "processing", "content": "Thụ lý"})
    assert stepped.status_code == 200, stepped.text
    wait_until(lambda: [m.status for m in _messages(rig, msg_key="HS-SOAP-1")] == ["delivered", "delivered"])
    applied = [(a["operation"], a["version"]) for a in rig.record()["applied"] if a["dossier_no"] == "HS-SOAP-1"]
    assert applied == [("dossier.sync", 1), ("dossier.progress", "p1")]


def test_a_message_by_name_through_the_rest_door(rig, token):
    r = httpx.post(f"{rig.url}/api/services/v1/portal.dossier.sync", json=dossier("HS-NAME-1"),
                   headers=headers(token))
    assert r.status_code == 202, r.text
    wait_until(lambda: _status(rig, token, r.json()["status_url"])["status"] == "delivered")


def test_queue_metrics_have_no_personal_data(rig, token):
    text = httpx.get(f"{rig.url}/metrics").text
    assert "lgsp_delivery_attempts_total" in text and "lgsp_delivery_queue_depth" in text
    assert "HS-0001" not in text and "Nguyễn" not in text


def test_nothing_pending_is_left(rig, token):
    wait_until(lambda: not [m for m in _messages(rig) if m.status in ("accepted", "failed", "delivering")])
    with engine_for(rig.db_url).connect() as conn:
        total = conn.execute(select(func.count()).select_from(delivery_messages)).scalar()
    assert total >= 8


def _documented_check(key: bytes, body: bytes, header: str) -> bool:
    """The receiver's check as docs/delivery.md describes it, written out here (not lgsp's own verify)."""
    import hashlib
    import hmac
    import time

    fields = dict(part.split("=", 1) for part in header.split(","))
    mac = hmac.new(key, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, fields["v1"]) and abs(time.time() - int(fields["t"])) <= 300


@contextlib.contextmanager
def _hook(answers: list[int]):
    """A receiving HTTP server on loopback: answers each POST with the next status of `answers` (the
    last one from then on); yields (its URL, the requests it got as (headers, raw body))."""
    import threading

    from helpers import serve_in_thread
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    got, lock = [], threading.Lock()

    async def hook(request):
        body = await request.body()
        with lock:
            got.append((dict(request.headers), body))
            status = answers[min(len(got), len(answers)) - 1]
        return Response(status_code=status)

    with serve_in_thread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        yield f"{url}/hook", got


def _callback_key(rig) -> bytes:
    from helpers import lgsp_cli

    out = lgsp_cli({"LGSP_DATABASE_URL": rig.db_url}, "deliveries", "callback-key", rig.client[0]).stdout
    return bytes.fromhex(out.strip().splitlines()[-1])


def test_the_sender_is_called_back_signed_and_again_after_a_500(rig, token):
    import orjson

    with _hook([500, 204]) as (url, got):
        r = httpx.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier("HS-CB-1"),
                       headers=headers(token, **{"X-Callback-URL": url}))
        assert r.status_code == 202
        wait_until(lambda: len(got) >= 2 and _messages(rig, msg_key="HS-CB-1")[0].callback_state == "sent")
    message_id = r.json()["message_id"]
    status = orjson.loads(got[1][1])
    assert status["message_id"] == message_id and status["status"] == "delivered"
    assert status["answer"]["error_code"] == "00"
    key = _callback_key(rig)
    for sent_headers, body in got:
        assert sent_headers["lgsp-message-id"] == message_id
        assert _documented_check(key, body, sent_headers["lgsp-signature"])
    assert [h["lgsp-callback-attempt"] for h, _ in got] == ["1", "2"]
    # A body changed on the way (or a signature made with another key) fails the documented check.
    tampered = got[1][1].replace(b'"delivered"', b'"dead"')
    assert tampered != got[1][1] and not _documented_check(key, tampered, got[1][0]["lgsp-signature"])
    assert not _documented_check(bytes(32), got[1][1], got[1][0]["lgsp-signature"])
    row = _messages(rig, msg_key="HS-CB-1")[0]
    assert row.callback_attempts == 2
    first, second = _records(rig, f"{message_id}:cb1"), _records(rig, f"{message_id}:cb2")
    assert first[0].outcome == "failed" and first[0].status == 500
    assert second[0].outcome == "ok" and second[0].status == 204


def test_a_callback_is_tried_a_bounded_number_of_times_then_failed(rig, token):
    from lgsp.delivery.callbacks import TRIES

    with _hook([503]) as (url, got):
        r = httpx.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier("HS-CB-2"),
                       headers=headers(token, **{"X-Callback-URL": url}))
        assert r.status_code == 202
        wait_until(lambda: _messages(rig, msg_key="HS-CB-2")[0].callback_state == "failed", timeout=60)
        assert len(got) == TRIES
    message_id = r.json()["message_id"]
    assert [len(_records(rig, f"{message_id}:cb{n}")) for n in range(1, TRIES + 2)] == [1] * TRIES + [0]
    assert _status(rig, token, r.json()["status_url"])["status"] == "delivered"  # the status URL still answers


def test_backoff_grows_with_jitter_and_the_maximum_age_ends_in_dead():
    import datetime as dt

    from lgsp.adapter import UpstreamFault, UpstreamUnavailable
    from lgsp.delivery.policy import Policy
    from lgsp.delivery.store import Claim, now
    from lgsp.delivery.worker import Worker

    policy = Policy(backoff_base=1, backoff_cap=60)
    for attempt, step_ in ((1, 1), (2, 2), (3, 4), (7, 60), (20, 60)):
        waits = [policy.backoff(attempt) for _ in range(200)]
        assert all(step_ / 2 <= w <= step_ for w in waits) and len(set(waits)) > 100  # jittered, bounded
    worker = Worker.__new__(Worker)
    worker.policy = policy

    def claim(expires_in: float) -> Claim:
        at = now()
        return Claim(id="m", seq=1, client_id="c", service="s", destination="portal", operation="dossier.sync",
                     msg_key="k", request_id="r", purpose=None, officer=None, agency_code=None, payload="",
                     attempt=3, accepted_at=at, expires_at=at + dt.timedelta(seconds=expires_in), callback_url=None,
                     claimed_at=at)

    status, next_at, _ = worker._outcome(claim(3600), UpstreamUnavailable("down"))
    assert status == "failed" and next_at > now()
    status, _, reason = worker._outcome(claim(0.5), UpstreamUnavailable("down"))
    assert status == "dead" and "maximum age" in reason and "down" in reason
    status, _, reason = worker._outcome(claim(3600), UpstreamFault("Mã thủ tục không tồn tại"))
    assert status == "dead" and "Mã thủ tục không tồn tại" in reason


def test_a_destination_in_an_outage_is_paused_and_retried_at_once_when_back():
    import asyncio
    import time

    from lgsp.delivery.policy import Policy
    from lgsp.delivery.worker import PAUSE_AFTER, Worker

    class Queue:
        retried: list[str] = []

        def retry_now(self, destination: str) -> None:
            self.retried.append(destination)

    worker = Worker.__new__(Worker)
    worker.policy, worker.queue, worker._streak, worker._paused = Policy(backoff_base=5), Queue(), {}, {}
    worker._pauses = {}

    async def run():
        for _ in range(PAUSE_AFTER - 1):
            await worker._note("portal", transient=True)
        assert worker._excluded() == []  # a blip is not an outage
        await worker._note("portal", transient=True)
        assert worker._excluded() == ["portal"] and worker._paused["portal"] > time.monotonic() + 2
        for _ in range(500):  # the failures of messages already in flight do not lengthen the pause
            await worker._note("portal", transient=True)
        assert worker._pauses["portal"] == 1 and worker._paused["portal"] < time.monotonic() + 30
        await worker._note("portal", transient=False)
        assert worker._excluded() == [] and Queue.retried == ["portal"]

    asyncio.run(run())
