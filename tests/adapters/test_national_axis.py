"""The national document exchange axis: its simulator on loopback, the `national-axis` adapter against it,
and the contract kit (`lgsp adapters test national-axis`)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import sys

import httpx
import pytest
from helpers import free_port, lgsp_cli, start_server

from lgsp.adapter import (
    CallContext,
    RecordNotFound,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from lgsp.documents import testkit
from lgsp_adapters.national_axis import NationalAxisAdapter
from lgsp_adapters.national_axis.simulator import API_BASE, OTHER_SYSTEMS, PROVINCE_SYSTEM

PROVINCE, MINISTRY = PROVINCE_SYSTEM[0], "000.00.00.G22"
LOCAL = "000.00.31.H30"


@pytest.fixture(scope="module")
def axis(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "national-axis-sim.log"
    server = start_server([sys.executable, "-m", "lgsp_adapters.national_axis.simulator", "--host", "127.0.0.1",
                           "--port", str(port)], f"http://127.0.0.1:{port}", "/_sim/faults", log)
    yield server
    server.stop()


@pytest.fixture
def sim(axis):
    yield axis
    httpx.post(f"{axis.url}/_sim/faults", json={"mode": "normal"})


def settings(axis, system=PROVINCE_SYSTEM, **extra) -> dict:
    return {"endpoint": f"{axis.url}{API_BASE}", "system_id": system[0], "secret": system[1], "timeout": 2, **extra}


def run(adapter: NationalAxisAdapter, coro_factory):
    async def go():
        try:
            return await coro_factory(adapter)
        finally:
            await adapter.aclose()
    return asyncio.run(go())


def ctx() -> CallContext:
    return CallContext(request_id="test-national-axis", client_id="tests")


@pytest.fixture(scope="module")
def signer():
    return testkit.make_signer(testkit.make_ca(), MINISTRY)


def _ensure_local_agency(axis) -> None:
    adapter = NationalAxisAdapter(settings(axis))
    try:
        run(adapter, lambda a: a.call("agencies.register", {"code": LOCAL, "name": "Sở Thông tin và Truyền thông"},
                                      ctx()))
    except UpstreamFault as exc:
        assert "đã tồn tại" in exc.detail


def test_a_document_from_a_ministry_is_pending_for_the_province_until_done(sim, signer):
    _ensure_local_agency(sim)
    package = testkit.signed_package(signer, MINISTRY, [LOCAL, "000.00.00.H41"])
    ministry = NationalAxisAdapter(settings(sim, (MINISTRY, OTHER_SYSTEMS[MINISTRY])))
    doc_id = run(ministry, lambda a: a.send_package(MINISTRY, package, ctx()))

    province = NationalAxisAdapter(settings(sim))

    async def receive(a: NationalAxisAdapter):
        pending = (await a.call("edoc.received", {"messagetype": "edoc"}, ctx())).data["data"]
        assert doc_id in [p["DocID"] for p in pending]
        item = next(p for p in pending if p["DocID"] == doc_id)
        assert item["from"] == MINISTRY and item["to"] == [LOCAL]   # only this centre's agencies
        got = (await a.call("edoc.get", {"doc_id": doc_id}, ctx())).data
        assert base64.b64decode(got["package"]) == package and got["sha256"] == hashlib.sha256(package).hexdigest()
        assert await a.fetch_package(doc_id, ctx()) == package
        await a.call("edoc.status.update", {"doc_id": doc_id, "status": "processing"}, ctx())
        still = (await a.call("edoc.received", {}, ctx())).data["data"]
        assert doc_id in [p["DocID"] for p in still]              # processing is not an acknowledgement
        await a.call("edoc.status.update", {"doc_id": doc_id, "status": "done"}, ctx())
        return [p["DocID"] for p in (await a.call("edoc.received", {}, ctx())).data["data"]]

    assert doc_id not in run(province, receive)                     # done: no longer pending
    sent = run(NationalAxisAdapter(settings(sim, (MINISTRY, OTHER_SYSTEMS[MINISTRY]))),
               lambda a: a.call("edoc.sent", {"doc_id": doc_id}, ctx()))
    assert {d["to"]: d["status"] for d in sent.data["data"]} == {LOCAL: "done", "000.00.00.H41": "pending"}


def test_the_province_may_not_read_the_sent_list_of_someone_elses_document(sim, signer):
    _ensure_local_agency(sim)
    package = testkit.signed_package(signer, MINISTRY, [LOCAL])
    doc_id = run(NationalAxisAdapter(settings(sim, (MINISTRY, OTHER_SYSTEMS[MINISTRY]))),
                 lambda a: a.send_package(MINISTRY, package, ctx()))
    with pytest.raises(RecordNotFound):
        run(NationalAxisAdapter(settings(sim)), lambda a: a.call("edoc.sent", {"doc_id": doc_id}, ctx()))


def test_sending_for_an_agency_of_another_centre_or_to_an_unknown_one_is_refused(sim, signer):
    package = testkit.signed_package(signer, MINISTRY, [LOCAL])
    with pytest.raises(UpstreamFault, match="không thuộc"):
        run(NationalAxisAdapter(settings(sim)), lambda a: a.send_package(MINISTRY, package, ctx()))
    stranger = testkit.signed_package(signer, MINISTRY, ["999.99.99.Z99"])
    with pytest.raises(UpstreamFault, match="999.99.99.Z99"):
        run(NationalAxisAdapter(settings(sim, (MINISTRY, OTHER_SYSTEMS[MINISTRY]))),
            lambda a: a.send_package(MINISTRY, stranger, ctx()))


def test_the_simulator_refuses_a_dtd_in_a_package(sim):
    r = httpx.post(f"{sim.url}{API_BASE}/edocs", content=b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
                   headers={"systemid": MINISTRY, "secret": OTHER_SYSTEMS[MINISTRY], "from": MINISTRY})
    assert r.status_code == 400 and r.json()["status"] == "FAIL"


def test_wrong_credentials_are_a_fault_naming_them(sim):
    with pytest.raises(UpstreamFault, match="system id or secret"):
        run(NationalAxisAdapter(settings(sim, (PROVINCE, "wrong"))), lambda a: a.call("agencies.list", {}, ctx()))


def test_agencies_register_list_and_delete(sim):
    code = "000.00.77.H30"

    async def go(a: NationalAxisAdapter):
        await a.call("agencies.register", {"code": code, "name": "Sở Y tế", "pcode": PROVINCE,
                                           "mail": "syt@tinh.gov.vn"}, ctx())
        listed = {x["code"]: x for x in (await a.call("agencies.list", {}, ctx())).data["data"]}
        assert listed[code] == {"pcode": PROVINCE, "code": code, "name": "Sở Y tế", "mail": "syt@tinh.gov.vn",
                                "mobile": "", "fax": ""}
        with pytest.raises(UpstreamFault, match="đã tồn tại"):
            await a.call("agencies.register", {"code": code, "name": "again"}, ctx())
        with pytest.raises(RecordNotFound):   # not this centre's agency
            await a.call("agencies.delete", {"code": "000.00.00.G22"}, ctx())
        await a.call("agencies.delete", {"code": code}, ctx())
        return [x["code"] for x in (await a.call("agencies.list", {}, ctx())).data["data"]]

    assert code not in run(NationalAxisAdapter(settings(sim)), go)


def test_ids_that_would_change_the_url_path_are_never_sent(sim):
    with pytest.raises(ValueError):
        run(NationalAxisAdapter(settings(sim)), lambda a: a.call("edoc.get", {"doc_id": "../agencies"}, ctx()))


@pytest.mark.parametrize("mode, error", [("down", UpstreamUnavailable), ("fault", UpstreamFault),
                                         ("malformed", UpstreamMalformed), ("slow", UpstreamTimeout)])
def test_each_fault_mode_becomes_its_upstream_error(sim, mode, error):
    httpx.post(f"{sim.url}/_sim/faults", json={"mode": mode, "delay": 3}).raise_for_status()
    with pytest.raises(error):
        run(NationalAxisAdapter(settings(sim, timeout=1)), lambda a: a.call("edoc.received", {}, ctx()))


def test_a_fault_for_the_next_request_only(sim):
    httpx.post(f"{sim.url}/_sim/faults", json={"mode": "down", "count": 1}).raise_for_status()

    async def twice(a):
        with pytest.raises(UpstreamUnavailable):
            await a.call("agencies.list", {}, ctx())
        return await a.call("agencies.list", {}, ctx())
    assert run(NationalAxisAdapter(settings(sim)), twice).data["data"]


def _status(table: str, subject: str, check: str) -> str | None:
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line, maxsplit=3)
        if cells[:2] == [subject, check]:
            return cells[2]
    return None


def test_contract_kit_holds_for_the_national_axis_simulator(sim, tmp_path):
    import secrets

    env = {"LGSP_HOME": str(tmp_path), "LGSP_DATABASE_URL": f"sqlite:///{tmp_path / 'lgsp.db'}",
           "LGSP_SECRET_KEY": secrets.token_urlsafe(32), "LGSP_EGRESS_ALLOW": "127.0.0.0/8,::1"}
    lgsp_cli(env, "db", "upgrade")
    lgsp_cli(env, "connections", "set", "national-axis", "--adapter", "national-axis",
             "--settings", json.dumps(settings(sim)))
    result = lgsp_cli(env, "adapters", "test", "national-axis", "--connection", "national-axis", check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for op in NationalAxisAdapter.examples:
        for check in ("example", "call", "mapping", "fault slow", "fault down", "fault malformed", "fault fault"):
            assert _status(out, op, check) == "PASS", (op, check, out)
    for op in NationalAxisAdapter.not_found_examples:
        assert _status(out, op, "not found") == "PASS", (op, out)
    assert "the contract holds" in out
