"""The population simulator's household, relatives, marital and vital-status operations
(zeep from the served WSDL, over loopback), and the consistency of the data behind them."""
from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import zeep
from helpers import serve_in_thread
from test_population_simulator import ADMIN_UNITS, HEADER, envelope, fault_of, post

from lgsp_adapters.population.simulator import FIXED_IDS, create_app
from lgsp_adapters.population.simulator.app import is_relative


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, object]]:
    app = create_app(2000, 3, admin_units=ADMIN_UNITS)
    with serve_in_thread(app) as url:
        yield url, app.state.simulator.dataset


@pytest.fixture(scope="module")
def client(server) -> zeep.Client:
    return zeep.Client(f"{server[0]}/dancu?wsdl")


def test_verify_household_head(client: zeep.Client) -> None:
    yes = client.service.XacMinhThongTinChuHo(**HEADER, SoDinhDanh=FIXED_IDS["khoi"],
                                              SoDinhDanhChuHo=FIXED_IDS["an"])
    assert yes.KetQua is True and yes.QuanHe == "Con" and yes.MaYeuCau == "REQ-1"
    no = client.service.XacMinhThongTinChuHo(**HEADER, SoDinhDanh=FIXED_IDS["khoi"],
                                             SoDinhDanhChuHo=FIXED_IDS["binh"])
    assert no.KetQua is False and no.QuanHe is None  # a "no" says nothing else


@pytest.mark.parametrize("who,kind,other,expected", [
    ("an", "Cha", "hung", True), ("khoi", "Me", "binh", True), ("an", "VoChong", "binh", True),
    ("binh", "VoChong", "an", True), ("an", "Con", "khoi", True), ("hung", "Con", "an", True),
    ("an", "Cha", "khoi", False), ("binh", "Con", "hung", False), ("mai", "VoChong", "an", False),
])
def test_verify_relatives(client: zeep.Client, who, kind, other, expected) -> None:
    answer = client.service.XacMinhThongTinNhanThan(**HEADER, SoDinhDanh=FIXED_IDS[who], QuanHe=kind,
                                                   SoDinhDanhNguoiThan=FIXED_IDS[other])
    assert answer.KetQua is expected


def test_marital_status_with_and_without_a_claim(client: zeep.Client) -> None:
    plain = client.service.XacMinhTinhTrangHonNhan(**HEADER, SoDinhDanh=FIXED_IDS["an"])
    assert plain.TonTai is True and plain.TinhTrangHonNhan == "2" and plain.KetQua is None
    claim = client.service.XacMinhTinhTrangHonNhan(**HEADER, SoDinhDanh=FIXED_IDS["mai"], TinhTrangHonNhan="2")
    assert claim.KetQua is False and claim.TinhTrangHonNhan == "1"
    unknown = client.service.XacMinhTinhTrangHonNhan(**HEADER, SoDinhDanh="001099999999")
    assert unknown.TonTai is False and unknown.TinhTrangHonNhan is None


@pytest.mark.parametrize("who,status,date", [("an", "1", None), ("tu", "2", "20240210"), ("nam", "3", "20190815")])
def test_vital_status_of_the_documented_persons(client: zeep.Client, who, status, date) -> None:
    answer = client.service.XacMinhTinhTrangChetMatTich(**HEADER, SoDinhDanh=FIXED_IDS[who], TinhTrang="1")
    assert answer.TonTai is True and answer.TinhTrang == status and answer.NgaySuKien == date
    assert answer.KetQua is (status == "1")


def test_service_code_may_be_named_ma_dich_vu(client: zeep.Client, server) -> None:
    header = {k: v for k, v in HEADER.items() if k != "MaDVC"}
    found = client.service.TraCuuThongTinCongDan(**header, MaDichVu="037", SoDinhDanh=FIXED_IDS["an"])
    assert found["CongDan"][0]["SoDinhDanh"] == FIXED_IDS["an"]
    both = envelope("TraCuuThongTinCongDan", f"<b:SoDinhDanh>{FIXED_IDS['an']}</b:SoDinhDanh>",
                    {**HEADER, "MaDichVu": "037"})
    assert fault_of(post(server[0], both)) == ("soap:Client", "02")
    neither = envelope("TraCuuThongTinCongDan", f"<b:SoDinhDanh>{FIXED_IDS['an']}</b:SoDinhDanh>", header)
    assert fault_of(post(server[0], neither)) == ("soap:Client", "02")


@pytest.mark.parametrize("op,body,error", [
    ("XacMinhThongTinChuHo", "<b:SoDinhDanh>001085012345</b:SoDinhDanh><b:SoDinhDanhChuHo>123</b:SoDinhDanhChuHo>", "03"),
    ("XacMinhThongTinChuHo", "<b:SoDinhDanh>001085012345</b:SoDinhDanh>", "02"),
    ("XacMinhThongTinNhanThan", ("<b:SoDinhDanh>001085012345</b:SoDinhDanh><b:QuanHe>Ban</b:QuanHe>"
                                 "<b:SoDinhDanhNguoiThan>001188012346</b:SoDinhDanhNguoiThan>"), "04"),
    ("XacMinhTinhTrangHonNhan", "<b:SoDinhDanh>001085012345</b:SoDinhDanh><b:TinhTrangHonNhan>9</b:TinhTrangHonNhan>", "04"),
    ("XacMinhTinhTrangChetMatTich", "<b:SoDinhDanh>001085012345</b:SoDinhDanh><b:TinhTrang>x</b:TinhTrang>", "04"),
])
def test_bad_verification_requests_are_client_faults(server, op, body, error) -> None:
    assert fault_of(post(server[0], envelope(op, body), action=op)) == ("soap:Client", error)


def test_marital_status_agrees_on_both_sides_and_relatives_are_symmetric(server) -> None:
    ds = server[1]
    for c in ds.citizens:
        if c.spouse and c.spouse.personal_id:
            spouse = ds.by_id[c.spouse.personal_id]
            assert c.marital == spouse.marital == "2" and spouse.spouse.personal_id == c.personal_id
            assert is_relative(ds, c, "VoChong", spouse.personal_id)
        elif c.marital == "2":
            assert c.spouse is not None  # married to someone outside the dataset, named on record
        for kind, ref in (("Cha", c.father), ("Me", c.mother)):
            if ref and ref.personal_id:
                assert is_relative(ds, ds.by_id[ref.personal_id], "Con", c.personal_id)
        head = ds.by_id[c.head.personal_id]
        assert head in ds.households[c.household] and head.head.personal_id == head.personal_id


def test_only_the_documented_persons_are_deceased_or_missing(server) -> None:
    ds = server[1]
    not_alive = {c.personal_id: c.vital for c in ds.citizens if c.vital != "1"}
    assert not_alive == {FIXED_IDS["tu"]: "2", FIXED_IDS["nam"]: "3"}


def test_stats_count_the_new_operations(server, client) -> None:
    client.service.XacMinhTinhTrangHonNhan(**HEADER, SoDinhDanh=FIXED_IDS["an"])
    stats = httpx.get(f"{server[0]}/_sim/stats").json()
    assert stats["operations"]["XacMinhTinhTrangHonNhan"] >= 1
