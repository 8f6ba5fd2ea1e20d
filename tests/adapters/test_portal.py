"""The national public-service portal adapter against its simulator, over real HTTP on loopback:
sessions and their renewal, the isUpdating decision, every mapped field (lists, dates, zones,
codes), refusals (permanent) against outages (transient), the fault modes, and exactly-once
on redelivery as the simulator's own record of what it received shows it."""
from __future__ import annotations

import asyncio
import copy
import json
import re
import secrets
import time

import httpx
import jsonschema
import pytest
from conftest import PORTAL_ACCOUNT as ACCOUNT
from helpers import ROOT, free_port, lgsp_cli

from lgsp import codelists, plugins
from lgsp.adapter import (
    CallContext,
    RecordNotFound,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from lgsp.mapping.compile import MappingError, MappingSpecError, compile_mapping, load_mapping
from lgsp_adapters.portal import DOSSIER_SCHEMA, EXAMPLE_DOSSIER, PROGRESS_SCHEMA, PortalAdapter
from lgsp_adapters.portal.simulator import API_PATH, FIXED_DOSSIERS

MAPPING = ROOT / "adapters" / "portal" / "mapping.yaml"

FULL = {
    "version": 3, "dossier_no": "000.00.31.H30-261130-0042", "procedure_code": "1.005047",
    "procedure_name": "Cấp giấy phép xây dựng mới đối với nhà ở riêng lẻ", "field_code": "XD",
    "field_name": "Hoạt động xây dựng",
    "applicant": {"name": "Nguyễn Văn An", "type": "business", "portal_id": "DN-0101234565",
                  "email": "an@example.vn", "fax": "024 3825 0000", "phone": "+84 912 345 678",
                  "other_info": "Ủy quyền cho ông Bình"},
    "summary": "Xin cấp phép xây dựng nhà ở 4 tầng", "received_at": "2026-11-30T01:15:00Z",
    "due_at": "2026-12-14T17:00:00+07:00", "status": "awaiting_supplement",
    "returned_at": "2026-12-31T23:30:00-05:00", "return_info": "Trả qua bưu điện", "result_delivery": "by_post",
    "finished_at": "2026-12-31T10:00:00+07:00", "handling_agency": "Sở Xây dựng", "note": "Hồ sơ ưu tiên",
    "submitted_files": [
        {"file_id": "f-1", "name": "don-de-nghi.pdf", "url": "https://mc.example.vn/f/1",
         "component_code": "TP01", "deleted": False},
        {"file_id": "f-2", "name": "ban-ve.dwg", "deleted": True},
    ],
    "fees": [
        {"name": "Lệ phí cấp giấy phép xây dựng", "code": "LP-XD", "collection_method": "2", "amount": 75000,
         "kind": "1"},
        {"name": "Phí thẩm định", "amount": 1250000.5},
    ],
    "other_files": [{"name": "anh-hien-trang.jpg", "url": "https://mc.example.vn/f/9"}],
    "supplement_requests": [
        {"request_id": "bs-1", "requested_by": "Trần Văn Cường", "content": "Bổ sung bản vẽ mặt cắt",
         "requested_at": "2026-12-02T09:00:00+07:00", "received_at": "2026-12-05T14:20:00+07:00",
         "previous_due_at": "2026-12-14T17:00:00+07:00", "new_due_at": "2026-12-18T17:00:00+07:00",
         "files": [{"file_id": "f-3", "name": "mat-cat.pdf", "component_code": "TP02"}]},
    ],
    "result_documents": [{"document_id": "kq-1", "name": "Giấy phép xây dựng", "code": "KQ01",
                          "url": "https://mc.example.vn/kq/1"}],
}
FULL_ON_THE_WIRE = {
    "MaHoSo": "000.00.31.H30-261130-0042", "MaTTHC": "1.005047",
    "TenTTHC": "Cấp giấy phép xây dựng mới đối với nhà ở riêng lẻ", "MaLinhVuc": "XD",
    "TenLinhVuc": "Hoạt động xây dựng", "ChuHoSo": "Nguyễn Văn An", "LoaiDoiTuong": "2",
    "MaDoiTuong": "DN-0101234565", "ThongTinKhac": "Ủy quyền cho ông Bình", "Email": "an@example.vn",
    "Fax": "024 3825 0000", "SoDienThoai": "+84 912 345 678", "TrichYeuHoSo": "Xin cấp phép xây dựng nhà ở 4 tầng",
    "NgayTiepNhan": "20261130081500",      # 01:15 UTC is 08:15 in Hanoi
    "NgayHenTra": "20261214170000",
    "TrangThaiHoSo": "3",
    "NgayTra": "20270101113000",           # 23:30 at -05:00 is 11:30 the next day (and year) in Hanoi
    "ThongTinTra": "Trả qua bưu điện", "HinhThuc": "1", "NgayKetThucXuLy": "20261231100000",
    "DonViXuLy": "Sở Xây dựng", "GhiChu": "Hồ sơ ưu tiên",
    "TaiLieuNop": [
        {"TepDinhKemId": "f-1", "TenTepDinhKem": "don-de-nghi.pdf", "DuongDanTaiTepTin": "https://mc.example.vn/f/1",
         "MaThanhPhanHoSo": "TP01", "IsDeleted": False},
        {"TepDinhKemId": "f-2", "TenTepDinhKem": "ban-ve.dwg", "IsDeleted": True},
    ],
    "DanhSachLePhi": [
        {"TenPhiLePhi": "Lệ phí cấp giấy phép xây dựng", "MaPhiLePhi": "LP-XD", "HinhThucThu": "2", "Gia": 75000,
         "LoaiPhiLePhi": "1"},
        {"TenPhiLePhi": "Phí thẩm định", "Gia": 1250000.5},
    ],
    "DanhSachTepDinhKemKhac": [{"TenTepDinhKem": "anh-hien-trang.jpg", "DuongDanTaiTepTin": "https://mc.example.vn/f/9",
                                "IsDeleted": False}],
    "DanhSachHoSoBoSung": [
        {"HoSoBoSungId": "bs-1", "NguoiYeuCauBoSung": "Trần Văn Cường", "NoiDungBoSung": "Bổ sung bản vẽ mặt cắt",
         "NgayBoSung": "20261202090000", "NgayTiepNhanBoSung": "20261205142000", "NgayHenTraTruoc": "20261214170000",
         "NgayHenTraMoi": "20261218170000",
         "DanhSachGiayToBoSung": [{"TepDinhKemId": "f-3", "TenTepDinhKem": "mat-cat.pdf", "MaThanhPhanHoSo": "TP02",
                                   "IsDeleted": False}]},
    ],
    "DanhSachGiayToKetQua": [{"GiayToId": "kq-1", "TenGiayTo": "Giấy phép xây dựng", "MaThanhPhanHoSo": "KQ01",
                              "DuongDanTepTinKetQua": "https://mc.example.vn/kq/1"}],
}
STEP = {"step_id": "s-1", "officer": "Lê Thị Dung", "officer_title": "Chuyên viên",
        "handled_at": "2026-12-01T02:00:00Z", "department": "Phòng Quản lý xây dựng", "content": "Thẩm định hồ sơ",
        "status": "processing",
        "started_at": "2026-12-01T08:00:00+07:00", "due_at": "2026-12-10T17:00:00+07:00"}


# -- the simulator and the adapter ---------------------------------------------------------

@pytest.fixture
def sim(portal_sim):
    """The module's simulator, back to normal and with an empty record around each test."""
    httpx.delete(f"{portal_sim.url}/_sim/received")
    httpx.post(f"{portal_sim.url}/_sim/config", json={"session_ttl": 1800, "duplicates": "apply"})
    yield portal_sim
    httpx.post(f"{portal_sim.url}/_sim/faults", json={"mode": "normal"})


def received(sim) -> dict:
    return httpx.get(f"{sim.url}/_sim/received", params={"keys": "1"}).json()


def fault(sim, mode: str, **extra) -> None:
    httpx.post(f"{sim.url}/_sim/faults", json={"mode": mode, **extra}).raise_for_status()


def run(sim, *calls, **settings):
    """Run (operation, params[, request id]) calls on one fresh adapter; results or exceptions in order."""
    async def go():
        adapter = PortalAdapter({**sim.extra["settings"], **settings})
        out = []
        try:
            for call in calls:
                op, params, key = (*call, None)[:3]
                ctx = CallContext(request_id=key or f"msg-{secrets.token_hex(6)}", client_id="tests")
                try:
                    out.append(await adapter.call(op, params, ctx))
                except Exception as exc:  # noqa: BLE001 - the test looks at which one
                    out.append(exc)
        finally:
            await adapter.aclose()
        return out
    return asyncio.run(go())


def mapped(op: str, result):
    assert not isinstance(result, Exception), result
    return load_mapping(MAPPING).apply(op, result.data)


def new_dossier(**changes) -> dict:
    d = copy.deepcopy(EXAMPLE_DOSSIER)
    d["dossier_no"] = f"000.00.31.H30-261130-{secrets.randbelow(10**6):06d}"
    d.update(changes)
    return d


# -- schemas and code lists ---------------------------------------------------------------

def test_schemas_are_valid_and_hold_the_examples():
    jsonschema.Draft202012Validator.check_schema(DOSSIER_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(PROGRESS_SCHEMA)
    fmt = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.Draft202012Validator(DOSSIER_SCHEMA, format_checker=fmt).validate(FULL)
    jsonschema.Draft202012Validator(PROGRESS_SCHEMA, format_checker=fmt).validate(STEP)
    for params in (PortalAdapter.examples, PortalAdapter.not_found_examples):
        for op, p in params.items():
            jsonschema.Draft202012Validator(PortalAdapter.operations[op].params_schema).validate(p)
    bad = dict(FULL, received_at="2026-11-30T08:15:00")   # no offset
    assert not jsonschema.Draft202012Validator(DOSSIER_SCHEMA).is_valid(bad)
    assert not jsonschema.Draft202012Validator(DOSSIER_SCHEMA).is_valid({k: v for k, v in FULL.items()
                                                                         if k != "dossier_no"})


def test_schema_enums_are_the_code_lists():
    def codes(name):
        return [e["code"] for e in codelists.get(name).entries]
    assert DOSSIER_SCHEMA["$defs"]["status"]["enum"] == codes("dossier-status")
    assert PROGRESS_SCHEMA["$defs"]["status"]["enum"] == codes("dossier-status")
    assert DOSSIER_SCHEMA["properties"]["applicant"]["properties"]["type"]["enum"] == codes("applicant-type")
    assert DOSSIER_SCHEMA["properties"]["result_delivery"]["enum"] == codes("result-delivery")
    status = codelists.get("dossier-status")
    assert sorted(status.translations["portal"], key=int) == [str(n) for n in range(1, 11)]
    assert "ASSUMPTION" in status.note and status.translation_info["portal"]["status"] == "configurable"
    assert "SAMPLE" in codelists.get("national-procedures").source


def test_settings_schema_and_plugin():
    assert plugins.adapter_class("portal") is PortalAdapter
    props = PortalAdapter.settings_schema["properties"]
    assert props["password"]["writeOnly"] is True
    assert {op for op, o in PortalAdapter.operations.items() if o.writes} == {"dossier.sync", "dossier.progress"}
    with pytest.raises(plugins.InvalidSettings):
        plugins.validate_settings("portal", {"endpoint": "ftp://x", **ACCOUNT, "password": "p"})


# -- the outbound mapping (no network) -----------------------------------------------------

def test_every_field_is_rendered_including_lists_dates_and_codes():
    assert load_mapping(MAPPING).to_national("dossier.sync", FULL) == FULL_ON_THE_WIRE


def test_progress_step_is_rendered():
    assert load_mapping(MAPPING).to_national("dossier.progress", STEP) == {
        "NguoiXuLy": "Lê Thị Dung", "ChucDanh": "Chuyên viên", "ThoiDiemXuLy": "20261201090000",
        "PhongBanXuLy": "Phòng Quản lý xây dựng", "NoiDungXuLy": "Thẩm định hồ sơ", "TrangThai": "2",
        "NgayBatDau": "20261201080000", "NgayKetThucTheoQuyDinh": "20261210170000"}


@pytest.mark.parametrize("value, wire", [
    ("2026-11-30T08:15:00+07:00", "20261130081500"),
    ("2026-11-30T01:15:00Z", "20261130081500"),
    ("2026-11-30T01:15:00+00:00", "20261130081500"),
    ("2026-12-31T17:00:00Z", "20270101000000"),      # midnight of New Year in Hanoi
    ("2026-02-28T20:59:59.999-05:00", "20260301085959"),
    # The zone database, not a fixed +07:00: Saigon kept UTC+8 until 13 June 1975.
    ("1975-04-30T11:30:00+07:00", "19750430123000"),
])
def test_dates_are_rendered_in_hanoi_time(value, wire):
    assert load_mapping(MAPPING).to_national("dossier.sync", dict(FULL, received_at=value))["NgayTiepNhan"] == wire


@pytest.mark.parametrize("changes, field", [
    ({"received_at": "2026-11-30T08:15:00"}, "received_at"),        # no offset: refused, never guessed
    ({"received_at": "2026-02-30T08:15:00+07:00"}, "received_at"),   # impossible date
    ({"status": "approved"}, "status"),                             # not a code of the list
    ({"applicant": {"name": "A", "type": "robot"}}, "applicant.type"),
    ({"fees": [{"name": "x"}]}, "fees[].amount"),
    ({"fees": {"name": "x", "amount": 1}}, "fees"),
])
def test_unrenderable_values_are_mapping_errors_that_do_not_echo_them(changes, field):
    with pytest.raises(MappingError) as err:
        load_mapping(MAPPING).to_national("dossier.sync", {**FULL, **changes})
    assert err.value.field == field
    for v in changes.values():
        if isinstance(v, str):
            assert v not in str(err.value)


def test_inbound_reads_the_portal_back_to_the_canonical_dossier():
    canonical = load_mapping(MAPPING).apply("dossier.get", FULL_ON_THE_WIRE)
    expected = {k: v for k, v in FULL.items() if k != "version"}
    # Times come back in Hanoi time, the same instants.
    expected.update(received_at="2026-11-30T08:15:00+07:00", returned_at="2027-01-01T11:30:00+07:00")
    for key, value in expected.items():
        got = canonical[key]
        if isinstance(value, list):
            got = [{k: v for k, v in item.items() if v is not None} for item in got]
            value = [{k: v for k, v in item.items() if k != "deleted" or v} for item in value]
            got = [{k: v for k, v in item.items() if k != "deleted" or v} for item in got]
            if key == "supplement_requests":
                for item in got:
                    item["files"] = [{k: v for k, v in f.items() if v is not None and (k != "deleted" or v)}
                                     for f in item["files"]]
        elif isinstance(value, dict):
            got = {k: v for k, v in got.items() if v is not None}
        assert got == value, key


def test_inbound_named_zone_gives_the_offset():
    m = compile_mapping({"name": "t", "source": "portal", "operations": {"op": {"fields": {
        "at": {"path": "T", "datetime": "yyyyMMddHHmmss", "tz": "Asia/Ho_Chi_Minh"}}}}})
    assert m.apply("op", {"T": "20261130081500"}) == {"at": "2026-11-30T08:15:00+07:00"}
    with pytest.raises(MappingSpecError):
        compile_mapping({"name": "t", "source": "x", "operations": {"op": {"fields": {
            "at": {"path": "T", "datetime": "yyyyMMddHHmmss", "tz": "Mars/Olympus"}}}}})


@pytest.mark.parametrize("outbound, message", [
    ({"operations": {"op": {"fields": {"A": {"path": "a", "colour": "red"}}}}}, "unknown keys"),
    ({"operations": {"op": {"fields": {"A": {"path": "a", "datetime": "yyyyMMdd"}}}}}, "needs 'tz'"),
    ({"operations": {"op": {"fields": {"A": {"path": "a", "datetime": "yyyyMMdd", "tz": "Nowhere/City"}}}}},
     "unknown time zone"),
    ({"operations": {"op": {"fields": {"A": {"path": "a", "codelist": "no-such-list"}}}}}, "no code list"),
    ({"operations": {"op": {"fields": {"A": {"path": "a", "template": "t"}}}}}, "unknown template"),
    ({"operations": {"op": {"fields": {"A": {"path": "a", "many": True}}}}}, "only goes with"),
    ({"operations": {"op": {"fields": {"A": {"path": "a..b"}}}}}, "dotted names"),
])
def test_outbound_spec_errors_are_found_at_load(outbound, message):
    with pytest.raises(MappingSpecError, match=message):
        compile_mapping({"name": "t", "source": "portal", "operations": {"op": {"fields": {"a": "A"}}},
                         "outbound": outbound})


# -- sessions -------------------------------------------------------------------------------

def test_session_is_renewed_when_the_portal_says_it_expired_and_the_call_retried_once(sim):
    first = run(sim, ("dossier.get", {"dossier_no": FIXED_DOSSIERS[0]}))
    assert not isinstance(first[0], Exception)
    issued = httpx.get(f"{sim.url}/_sim/config").json()["sessions_issued"]

    async def go():
        adapter = PortalAdapter(sim.extra["settings"])
        ctx = CallContext(request_id="renewal-1", client_id="tests")
        try:
            await adapter.call("dossier.get", {"dossier_no": FIXED_DOSSIERS[0]}, ctx)
            assert httpx.delete(f"{sim.url}/_sim/sessions").json()["revoked"] >= 1  # the portal drops it early
            return await adapter.call("dossier.get", {"dossier_no": FIXED_DOSSIERS[0]}, ctx)
        finally:
            await adapter.aclose()

    result = asyncio.run(go())
    assert mapped("dossier.get", result)["dossier_no"] == FIXED_DOSSIERS[0]
    assert httpx.get(f"{sim.url}/_sim/config").json()["sessions_issued"] == issued + 2
    mine = [r for r in received(sim)["items"] if r["key"] == "renewal-1"]
    assert [r["error_code"] for r in mine] == ["00", "401", "00"]  # refused once, then renewed and answered


def test_session_past_its_lifetime_is_renewed_before_use(sim):
    httpx.post(f"{sim.url}/_sim/config", json={"session_ttl": 0.4})

    async def go():
        adapter = PortalAdapter(sim.extra["settings"])
        ctx = CallContext(request_id="lifetime-1", client_id="tests")
        try:
            await adapter.call("procedure.get", {"procedure_code": "1.001193"}, ctx)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # the session's lifetime passes
                await asyncio.sleep(0.05)
            return await adapter.call("procedure.get", {"procedure_code": "1.001193"}, ctx)
        finally:
            await adapter.aclose()

    before = httpx.get(f"{sim.url}/_sim/config").json()["sessions_issued"]
    assert mapped("procedure.get", asyncio.run(go()))["name"] == "Đăng ký khai sinh"
    assert httpx.get(f"{sim.url}/_sim/config").json()["sessions_issued"] == before + 2
    assert "401" not in received(sim)["outcomes"]  # renewed ahead of time, never refused


def test_wrong_credentials_or_destination_are_permanent_refusals(sim):
    (bad_password,) = run(sim, ("procedure.get", {"procedure_code": "1.001193"}), password="wrong")
    assert isinstance(bad_password, UpstreamFault) and bad_password.fault_code == "05"
    (bad_dst,) = run(sim, ("procedure.get", {"procedure_code": "1.001193"}), dstcode="DVCQG-OTHER")
    assert isinstance(bad_dst, UpstreamFault) and bad_dst.fault_code == "05"


# -- isUpdating, every field on the wire, reading back ----------------------------------------

def test_is_updating_is_decided_by_looking_the_dossier_up(sim):
    d = new_dossier()
    changed = dict(d, status="resolved", version=2)
    created, replaced, again = run(sim, ("dossier.sync", d, "m-1"), ("dossier.sync", changed, "m-2"),
                                   ("dossier.sync", changed, "m-3"))
    assert mapped("dossier.sync", created) == {"dossier_no": d["dossier_no"], "replaced": False, "portal_code": "00",
                                               "portal_message": "Đồng bộ hồ sơ thành công",
                                               "already_on_portal": False}
    assert mapped("dossier.sync", replaced)["replaced"] is True
    assert mapped("dossier.sync", again)["already_on_portal"] is True   # the portal holds exactly this
    writes = [r for r in received(sim)["items"] if r["service"] == "DongBoHoSoMC"]
    assert [(r["key"], r["isUpdating"], r["error_code"]) for r in writes] == [("m-1", "False", "00"),
                                                                            ("m-2", "True", "00")]
    lookups = [r["key"] for r in received(sim)["items"] if r["service"] == "TraCuuHoSo"]
    assert lookups == ["m-1", "m-2", "m-3"]
    stored = httpx.get(f"{sim.url}/_sim/dossiers/{d['dossier_no']}").json()
    assert stored["TrangThaiHoSo"] == "7"


def test_every_field_reaches_the_portal_and_reads_back(sim):
    sync, got = run(sim, ("dossier.sync", FULL), ("dossier.get", {"dossier_no": FULL["dossier_no"]}))
    assert not isinstance(sync, Exception), sync
    (write,) = [r for r in received(sim)["items"] if r["service"] == "DongBoHoSoMC"]
    assert write["data"] == [FULL_ON_THE_WIRE] and write["dstcode"] == ACCOUNT["dstcode"]
    canonical = mapped("dossier.get", got)
    assert canonical["fees"][1] == {"name": "Phí thẩm định", "code": None, "collection_method": None,
                                    "amount": 1250000.5, "kind": None}
    assert canonical["returned_at"] == "2027-01-01T11:30:00+07:00"
    assert canonical["supplement_requests"][0]["files"][0]["name"] == "mat-cat.pdf"
    assert canonical["status"] == "awaiting_supplement" and canonical["applicant"]["type"] == "business"


def test_progress_is_appended_and_read_back(sim):
    d = new_dossier()
    _, step, got = run(sim, ("dossier.sync", d), ("dossier.progress", {"dossier_no": d["dossier_no"], "step": STEP}),
                       ("dossier.get", {"dossier_no": d["dossier_no"]}))
    assert mapped("dossier.progress", step)["portal_code"] == "00"
    assert mapped("dossier.get", got)["progress"] == [{k: v for k, v in STEP.items() if k != "step_id"}
                                                      | {"handled_at": "2026-12-01T09:00:00+07:00"}]


def test_unknown_dossiers_and_procedures_are_not_found(sim):
    dossier, procedure = run(sim, *[(op, p) for op, p in PortalAdapter.not_found_examples.items()])
    assert isinstance(dossier, RecordNotFound) and isinstance(procedure, RecordNotFound)


# -- refusals (permanent) and outages (transient) -----------------------------------------------

def test_update_for_a_missing_dossier_is_refused_with_the_portals_code(sim):
    (result,) = run(sim, ("dossier.progress", {"dossier_no": "000.00.31.H30-000000-0009", "step": STEP}))
    assert isinstance(result, UpstreamFault) and result.fault_code == "03"
    assert "không tồn tại" in result.detail


def test_the_simulator_refuses_create_for_existing_and_update_for_missing(sim):
    """The portal's own rule, as a one-stop-shop calling it directly would meet it."""
    async def raw():
        adapter = PortalAdapter(sim.extra["settings"])
        ctx = CallContext(request_id="raw-1", client_id="tests")
        item = load_mapping(MAPPING).to_national("dossier.sync", new_dossier())
        try:
            outcomes = []
            for updating, data in (("True", item), ("False", item), ("False", item)):
                try:
                    outcomes.append(await adapter._post("DongBoHoSoMC", {"isUpdating": updating, "data": [data]},
                                                        ctx, {}))
                except UpstreamFault as exc:
                    outcomes.append(exc)
            return outcomes
        finally:
            await adapter.aclose()

    missing, created, exists = asyncio.run(raw())
    assert isinstance(missing, UpstreamFault) and missing.fault_code == "03"
    assert created["error_code"] == "00"
    assert isinstance(exists, UpstreamFault) and exists.fault_code == "02"


def test_a_dossier_the_portal_finds_invalid_is_a_permanent_refusal(sim):
    (result,) = run(sim, ("dossier.sync", new_dossier(procedure_code="9.999999")))
    assert isinstance(result, UpstreamFault) and result.fault_code == "04"
    assert "9.999999" in result.detail


def test_an_unrenderable_dossier_is_refused_before_anything_is_sent(sim):
    (result,) = run(sim, ("dossier.sync", new_dossier(received_at="2026-11-30T08:15:00")))
    assert isinstance(result, UpstreamFault) and result.fault_code == "lgsp.unmappable"
    assert received(sim)["requests"] == 0


@pytest.mark.parametrize("mode, error", [("down", UpstreamUnavailable), ("5xx", UpstreamUnavailable),
                                         ("fault", UpstreamFault), ("malformed", UpstreamMalformed)])
def test_fault_modes_are_classified(sim, mode, error):
    fault(sim, mode)
    (result,) = run(sim, ("dossier.sync", new_dossier()))
    assert type(result) is error, result
    if mode == "fault":
        assert result.fault_code == "99"


def test_slow_portal_is_a_timeout(sim):
    fault(sim, "slow", delay=2)
    (result,) = run(sim, ("procedure.get", {"procedure_code": "1.001193"}), timeout=0.3)
    assert isinstance(result, UpstreamTimeout)


def test_closed_port_is_unavailable(sim):
    (result,) = run(sim, ("procedure.get", {"procedure_code": "1.001193"}),
                    endpoint=f"http://127.0.0.1:{free_port()}{API_PATH}")
    assert isinstance(result, UpstreamUnavailable)


def test_error_codes_declared_transient_are_retried_not_dead_lettered(sim):
    fault(sim, "fault")
    (result,) = run(sim, ("dossier.sync", new_dossier()), transient_error_codes=["99"])
    assert isinstance(result, UpstreamUnavailable)


def test_refuse_n_then_accept(sim):
    d = new_dossier()
    fault(sim, "5xx", count=2)
    first, second, third = run(sim, ("dossier.sync", d, "k"), ("dossier.sync", d, "k"), ("dossier.sync", d, "k"))
    assert isinstance(first, UpstreamUnavailable) and isinstance(second, UpstreamUnavailable)
    assert mapped("dossier.sync", third)["replaced"] is False
    assert received(sim)["applied_by_key"] == {"DongBoHoSoMC k": 1}


# -- exactly once ---------------------------------------------------------------------------

def _wait_applied(sim, service: str, n: int) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = received(sim)
        if state["applied"].get(service, 0) >= n:
            return state
        time.sleep(0.05)
    raise AssertionError(f"the portal did not apply {n} {service}")


@pytest.mark.parametrize("check", [True, False])
def test_a_step_applied_after_a_timeout_is_not_appended_again_on_redelivery(sim, check):
    d = new_dossier()
    run(sim, ("dossier.sync", d))
    params = {"dossier_no": d["dossier_no"], "step": STEP}
    fault(sim, "slow", delay=1.0, count=1)
    # The first delivery writes straight away and gives up before the portal answers; the portal
    # still applies the step. Then the message is delivered again with the same token.
    (timed_out,) = run(sim, ("dossier.progress", params, "step-msg-1"), timeout=0.3, check_before_write=False)
    assert isinstance(timed_out, UpstreamTimeout)
    _wait_applied(sim, "CapNhatTienDoHoSoMC", 1)
    (redelivered,) = run(sim, ("dossier.progress", params, "step-msg-1"), check_before_write=check)
    state = received(sim)
    stored = httpx.get(f"{sim.url}/_sim/dossiers/{d['dossier_no']}").json()
    if check:  # the adapter's look-up finds the step: exactly once
        assert mapped("dossier.progress", redelivered)["already_on_portal"] is True
        assert state["applied"]["CapNhatTienDoHoSoMC"] == 1 and state["duplicates"] == 0
        assert len(stored["QuaTrinhXuLy"]) == 1
    else:  # without it the simulator catches the duplicate it was sent
        assert state["duplicates"] == 1 and state["duplicate_keys"] == ["CapNhatTienDoHoSoMC step-msg-1"]
        assert state["identical_steps"] == 1 and len(stored["QuaTrinhXuLy"]) == 2


def test_duplicate_detection_modes_of_the_simulator(sim):
    d = new_dossier()
    run(sim, ("dossier.sync", d))
    params = {"dossier_no": d["dossier_no"], "step": STEP}
    httpx.post(f"{sim.url}/_sim/config", json={"duplicates": "refuse"})
    first, second = run(sim, ("dossier.progress", params, "dup-1"), ("dossier.progress", params, "dup-1"),
                        check_before_write=False)
    assert mapped("dossier.progress", first)["portal_code"] == "00"
    assert isinstance(second, UpstreamFault) and second.fault_code == "06"
    httpx.post(f"{sim.url}/_sim/config", json={"duplicates": "acknowledge"})
    (third,) = run(sim, ("dossier.progress", params, "dup-1"), check_before_write=False)
    assert mapped("dossier.progress", third)["portal_code"] == "00"
    stored = httpx.get(f"{sim.url}/_sim/dossiers/{d['dossier_no']}").json()
    assert len(stored["QuaTrinhXuLy"]) == 1 and received(sim)["duplicates"] == 0
    r = httpx.post(f"{sim.url}/_sim/config", json={"duplicates": "sometimes"})
    assert r.status_code == 400


def test_many_messages_in_parallel_each_applied_once(sim):
    """Concurrent deliveries over one adapter (one session shared) all land, each exactly once."""
    dossiers = [new_dossier() for _ in range(40)]

    def issued() -> int:
        return httpx.get(f"{sim.url}/_sim/config").json()["sessions_issued"]

    async def go():
        adapter = PortalAdapter(sim.extra["settings"])
        try:
            first = await asyncio.gather(*[
                adapter.call("dossier.sync", d, CallContext(request_id=f"par-{i}", client_id="tests"))
                for i, d in enumerate(dossiers[:20])])
            httpx.delete(f"{sim.url}/_sim/sessions")  # every waiting call meets an expired session at once
            return first + await asyncio.gather(*[
                adapter.call("dossier.sync", d, CallContext(request_id=f"par-{i}", client_id="tests"))
                for i, d in enumerate(dossiers[20:], start=20)])
        finally:
            await adapter.aclose()

    before = issued()
    results = asyncio.run(go())
    assert issued() == before + 2  # one session, then one renewal shared by all twenty refused calls
    assert all(load_mapping(MAPPING).apply("dossier.sync", r.data)["portal_code"] == "00" for r in results)
    state = received(sim)
    assert state["applied"]["DongBoHoSoMC"] == 40 and state["duplicates"] == 0
    assert set(state["applied_by_key"]) == {f"DongBoHoSoMC par-{i}" for i in range(40)}


# -- the contract kit ------------------------------------------------------------------------

def _status(table: str, subject: str, check: str) -> str | None:
    """The STATUS column of the kit's row (subject, check); columns are 2+ spaces apart."""
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line, maxsplit=3)
        if cells[:2] == [subject, check]:
            return cells[2]
    return None


def test_contract_kit_passes_on_the_portal_simulator(portal_sim, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"LGSP_HOME": str(home), "LGSP_DATABASE_URL": f"sqlite:///{home / 'lgsp.db'}",
           "LGSP_SECRET_KEY": secrets.token_urlsafe(32), "LGSP_EGRESS_ALLOW": "127.0.0.0/8,::1"}
    lgsp_cli(env, "db", "upgrade")
    lgsp_cli(env, "connections", "set", "portal", "--adapter", "portal", "--settings",
             json.dumps(portal_sim.extra["settings"]))
    result = lgsp_cli(env, "adapters", "test", "portal", "--connection", "portal", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for op in ("dossier.sync", "dossier.get", "procedure.get"):
        for check in ("example", "call", "mapping", "fault slow", "fault down", "fault malformed", "fault fault"):
            assert _status(out, op, check) == "PASS", (op, check, out)
    for op in ("dossier.get", "procedure.get"):
        assert _status(out, op, "not found") == "PASS", out
    assert _status(out, "dossier.progress", "example") == "SKIP"  # appends: not safe to repeat
    assert "the contract holds" in out and "0 failed" in out
    assert httpx.get(f"{portal_sim.url}/_sim/faults").json()["mode"] == "normal"


# -- the demo's registration -----------------------------------------------------------------

def test_demo_registers_the_portal_connection_behind_the_portal_services(fresh_db_url):
    from lgsp.control.admin import Admin
    from lgsp.demo import PORTAL_UPSTREAM, _prepare_portal
    from lgsp.storage import engine_for

    admin = Admin(engine_for(fresh_db_url), "tests")
    admin.register_spec_services()  # as the demo does: the services of openapi/portal.v1.yaml
    _prepare_portal(admin, 18083)
    services = {s["name"]: s for s in admin.list_services()}
    assert (services["portal.dossier.sync"]["connection"], services["portal.dossier.sync"]["operation"]) == \
        ("portal", "dossier.sync")
    assert (services["portal.dossier.progress"]["connection"], services["portal.dossier.progress"]["operation"]) == \
        ("portal", "dossier.progress")
    assert services["portal.dossier.sync"]["personal_data"] is True   # applicants are people
    conn = admin.get_connection("portal")
    assert conn["adapter"] == "portal" and conn["settings"]["dstcode"] == PORTAL_UPSTREAM["dstcode"]
    assert PORTAL_UPSTREAM["password"] not in json.dumps(conn)  # the secret is sealed, never shown


def test_docs_name_every_canonical_field():
    text = (ROOT / "docs" / "portal.md").read_text(encoding="utf-8")
    names = set(DOSSIER_SCHEMA["properties"]) | set(PROGRESS_SCHEMA["properties"])
    names |= set(DOSSIER_SCHEMA["properties"]["applicant"]["properties"])
    for definition in ("file", "fee", "supplement_request", "result_document"):
        names |= set(DOSSIER_SCHEMA["$defs"][definition]["properties"])
    for name in names:
        assert re.search(rf"[`.]{name}(\[\])?[`.]", text), name
    for field in PortalAdapter.settings_schema["properties"]:
        assert f"`{field}`" in text, field


@pytest.mark.parametrize("number", ["../../etc", "a b", "", "x" * 65])
def test_a_malformed_dossier_number_is_never_sent(sim, number):
    # Counted by this test's own request ids: a late request of an earlier test (slow mode) may still land.
    keys = (f"bad-{secrets.token_hex(6)}", f"bad-{secrets.token_hex(6)}")
    sync, progress = run(sim, ("dossier.sync", new_dossier(dossier_no=number), keys[0]),
                         ("dossier.progress", {"dossier_no": number, "step": STEP}, keys[1]))
    for result in (sync, progress):
        assert isinstance(result, UpstreamFault) and result.fault_code == "lgsp.unmappable", result
    assert [r for r in received(sim)["items"] if r["key"] in keys] == []


def test_a_zero_error_code_as_a_number_is_success():
    assert PortalAdapter._code({"error_code": 0}) == "00" and PortalAdapter._code({"error_code": "0"}) == "00"
    assert PortalAdapter._code({"error_code": "01"}) == "01" and PortalAdapter._code({"error_code": None}) == ""


def test_a_step_may_come_nested_or_flat_beside_the_dossier_number(sim):
    schema = jsonschema.Draft202012Validator(PortalAdapter.operations["dossier.progress"].params_schema)
    nested = {"dossier_no": "HS-1", "step": STEP}
    flat = {"dossier_no": "HS-1", **STEP}
    assert schema.is_valid(nested) and schema.is_valid(flat)
    assert not schema.is_valid({"dossier_no": "HS-1", **STEP, "colour": "red"})
    assert not schema.is_valid({"dossier_no": "HS-1", "step": dict(STEP, handled_at="2026-12-01 09:00")})
    d = new_dossier()
    other = dict(STEP, content="Trình ký")
    results = run(sim, ("dossier.sync", d), ("dossier.progress", {"dossier_no": d["dossier_no"], "step": STEP}),
                  ("dossier.progress", {"dossier_no": d["dossier_no"], **other}))
    assert all(mapped(op, r)["portal_code"] == "00" for op, r in zip(("dossier.sync", "dossier.progress",
                                                                       "dossier.progress"), results))
    steps = httpx.get(f"{sim.url}/_sim/dossiers/{d['dossier_no']}").json()["QuaTrinhXuLy"]
    assert [s["NoiDungXuLy"] for s in steps] == ["Thẩm định hồ sơ", "Trình ký"]


def test_every_procedure_of_the_catalogue_is_read_from_the_portal(sim):
    entries = codelists.get("national-procedures").entries
    results = run(sim, *[("procedure.get", {"procedure_code": e["code"]}) for e in entries])
    assert [mapped("procedure.get", r) for r in results] == [
        {"procedure_code": e["code"], "name": e["name"], "field_code": e["field_code"], "field_name": e["field_name"]}
        for e in entries]
