"""The population-database simulator over real loopback sockets: zeep as the client
for the contract, raw httpx for hostile input and fault modes, and checks of the
synthetic data's internal consistency."""
from __future__ import annotations

import time
import unicodedata
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
import zeep
from helpers import FIXTURES, serve_in_thread
from lxml import etree

from lgsp.personal_id import parse as parse_id
from lgsp_adapters.population.simulator import FIXED_IDS, create_app, generate, wsdl_path
from lgsp_adapters.population.simulator.__main__ import main as simulator_main
from lgsp_adapters.population.simulator.data import default_admin_units_path

FIXTURE_UNITS = FIXTURES / "sim_admin_units.yaml"
# The real code list when it is there; the small fixture keeps the tests running without it.
ADMIN_UNITS = default_admin_units_path() if default_admin_units_path().is_file() else FIXTURE_UNITS
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
BCA = "http://dancuquocgia.bca"
HEADER = dict(MaYeuCau="REQ-1", MaDVC="037", MaTichHop="LGSP-TEST", MaDonVi="000.00.00.H30",
              MaCanBo="cb01", TaiKhoan="lgsp")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, object]]:
    app = create_app(3000, 1, admin_units=ADMIN_UNITS)
    with serve_in_thread(app) as url:
        yield url, app.state.simulator


@pytest.fixture(scope="module")
def base(server: tuple[str, object]) -> str:
    return server[0]


@pytest.fixture(scope="module")
def dataset(server: tuple[str, object]):
    return server[1].dataset


@pytest.fixture(scope="module")
def client(base: str) -> zeep.Client:
    return zeep.Client(f"{base}/dancu?wsdl")


@pytest.fixture(autouse=True)
def normal_mode(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "base" in request.fixturenames:  # leave the shared server healthy
        httpx.post(f"{request.getfixturevalue('base')}/_sim/faults", json={"mode": "normal"})


def envelope(op: str, body: str, header: dict[str, str] | None = None) -> bytes:
    fields = "".join(f"<b:{k}>{v}</b:{k}>" for k, v in (header or HEADER).items())
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}" xmlns:b="{BCA}">'
            f"<s:Body><b:{op}>{fields}{body}</b:{op}></s:Body></s:Envelope>").encode()


def post(base: str, data: bytes, action: str = "TraCuuThongTinCongDan", **headers: str) -> httpx.Response:
    h = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{BCA}/{action}"', **headers}
    return httpx.post(f"{base}/dancu", content=data, headers=h, timeout=10)


def fault_of(resp: httpx.Response) -> tuple[str, str]:
    """(faultcode, national error code) of a SOAP fault answer."""
    assert resp.status_code == 500
    doc = etree.fromstring(resp.content)
    fault = doc.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    return fault.findtext("faultcode"), fault.findtext(f"detail/{{{BCA}}}Loi/{{{BCA}}}MaLoi")


# --- the contract, through zeep ------------------------------------------------------

def test_wsdl_file_loads_in_zeep() -> None:
    c = zeep.Client(str(wsdl_path()))
    for op in ("TraCuuThongTinCongDan", "XacThucThongTinCongDan", "CungCapThongTinHoGiaDinh"):
        assert callable(getattr(c.service, op))
    assert c.wsdl.services["DanCuService"].ports["DanCuPort"].binding_options["address"] == (
        "http://127.0.0.1:8081/dancu")  # a placeholder: the real endpoint is configuration


def test_served_wsdl_points_at_the_simulator(base: str) -> None:
    doc = etree.fromstring(httpx.get(f"{base}/dancu?wsdl").content)
    address = doc.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address.get("location") == f"{base}/dancu"
    imp = doc.find(".//{http://www.w3.org/2001/XMLSchema}import")
    xsd = httpx.get(imp.get("schemaLocation"))
    assert xsd.status_code == 200 and b"CongdanCollection" in xsd.content
    assert httpx.get(f"{base}/dancu?xsd=../../etc/passwd").status_code == 404


def test_lookup_known_citizen(client: zeep.Client, dataset) -> None:
    pid = FIXED_IDS["an"]
    r = client.service.TraCuuThongTinCongDan(**HEADER, SoDinhDanh=pid)
    assert r.SoCongDan == "1" and r.ThoiDiemDuLieu and len(r.CongDan) == 1
    c = r.CongDan[0]
    assert c.SoDinhDanh == pid and c.SoCMND == "012345678"
    assert (c.HoVaTen.Ho, c.HoVaTen.ChuDem, c.HoVaTen.Ten) == ("Nguyễn", "Văn", "An")
    assert c.GioiTinh == "1" and c.NgayThangNamSinh.NgayThangNam == "19850312"
    assert c.NgayThangNamSinh.Nam == "1985" and c.QuocTich == "VN"
    assert c.ThuongTru.MaQuanHuyen and c.ThuongTru.MaPhuongXa and c.ThuongTru.ChiTiet
    assert c.Cha.SoDinhDanh == FIXED_IDS["hung"] and c.VoChong.SoDinhDanh == FIXED_IDS["binh"]
    assert c.ChuHo.QuanHe == "Chủ hộ" and c.ChuHo.SoDinhDanh == pid and c.SoSoHoKhau
    # Relatives who are citizens can be looked up in turn, and agree.
    father = client.service.TraCuuThongTinCongDan(**HEADER, SoDinhDanh=c.Cha.SoDinhDanh).CongDan[0]
    assert father.HoVaTen.Ho == c.HoVaTen.Ho and father.GioiTinh == "1"
    assert father.ChuHo.SoDinhDanh == pid and father.ChuHo.QuanHe == "Cha"
    wife = client.service.TraCuuThongTinCongDan(**HEADER, SoDinhDanh=c.VoChong.SoDinhDanh).CongDan[0]
    assert wife.VoChong.SoDinhDanh == pid and wife.ThuongTru.MaQuanHuyen is None  # current codes


def test_lookup_by_old_card_and_year_only_birth(client: zeep.Client) -> None:
    r = client.service.TraCuuThongTinCongDan(**HEADER, SoCMND="020123456")
    c = r.CongDan[0]
    assert c.SoDinhDanh == FIXED_IDS["sau"]
    assert c.NgayThangNamSinh.Nam == "1940" and c.NgayThangNamSinh.NgayThangNam is None


def test_lookup_unknown_citizen_is_an_empty_collection(client: zeep.Client, dataset) -> None:
    unknown = next(f"00108599{n:04d}" for n in range(10_000) if f"00108599{n:04d}" not in dataset.by_id)
    r = client.service.TraCuuThongTinCongDan(**HEADER, SoDinhDanh=unknown)
    assert r.SoCongDan == "0" and not r.CongDan and r.GhiChu == "Không tìm thấy công dân"


def test_verify(client: zeep.Client) -> None:
    def verify(name: str, **birth: str) -> bool:
        return client.service.XacThucThongTinCongDan(
            **HEADER, SoDinhDanh=FIXED_IDS["an"], HoVaTen=name,
            NgayThangNamSinh=birth or None).TonTai

    decomposed = unicodedata.normalize("NFD", "nguyễn  văn AN ")
    assert verify(decomposed, NgayThangNam="19850312") is True
    assert verify("Nguyễn Văn An", Nam="1985") is True
    assert verify("Nguyễn Văn An") is True
    assert verify("Nguyễn Văn Anh", NgayThangNam="19850312") is False
    assert verify("Nguyễn Văn An", NgayThangNam="19850313") is False
    assert verify("Nguyễn Văn An", Nam="1986") is False
    # A record that holds only the year is compared on the year.
    r = client.service.XacThucThongTinCongDan(
        **HEADER, SoCMND="020123456", HoVaTen="Phạm Văn Sáu",
        NgayThangNamSinh={"NgayThangNam": "19400101"})
    assert r.TonTai is True and r.MaYeuCau == "REQ-1"


def test_household(client: zeep.Client) -> None:
    h = client.service.CungCapThongTinHoGiaDinh(**HEADER, SoDinhDanh=FIXED_IDS["khoi"])
    members = {m.SoDinhDanh: m.QuanHe for m in h.ThanhVien}
    assert h.SoThanhVien == "5" and members[FIXED_IDS["an"]] == "Chủ hộ"
    assert members[FIXED_IDS["hung"]] == "Cha" and members[FIXED_IDS["ha"]] == "Con"


def test_answers_are_valid_against_the_schema(base: str, dataset) -> None:
    from lgsp_adapters.population.simulator.app import DC, citizen_element

    schema = etree.XMLSchema(etree.parse(str(wsdl_path().with_name("population.xsd"))))
    collection = etree.Element(f"{{{DC}}}CongdanCollection", SoCongDan=str(len(dataset.citizens)))
    for c in dataset.citizens:
        collection.append(citizen_element(c))
    schema.assertValid(collection)
    for op, extra in (("XacThucThongTinCongDan", "<b:HoVaTen>Nguyễn Văn An</b:HoVaTen>"),
                      ("CungCapThongTinHoGiaDinh", "")):
        data = envelope(op, f"<b:SoDinhDanh>{FIXED_IDS['an']}</b:SoDinhDanh>{extra}")
        schema.assertValid(etree.fromstring(post(base, data, op).content)[0][0])


def test_bad_id_is_a_client_fault_through_zeep(client: zeep.Client) -> None:
    with pytest.raises(zeep.exceptions.Fault) as err:
        client.service.TraCuuThongTinCongDan(**HEADER, SoDinhDanh="12345")
    assert err.value.code == "soap:Client"


# --- hostile and malformed requests, raw ---------------------------------------------------

@pytest.mark.parametrize("data, error", [
    (b"this is not xml", "01"),
    (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
     b'<s:Envelope xmlns:s="' + SOAP.encode() + b'"><s:Body><x>&b;</x></s:Body></s:Envelope>', "01"),
    (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>', "01"),
    ('<?xml version="1.0" encoding="utf-16"?><!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>'
     .encode("utf-16"), "01"),
    (b"<notsoap/>", "01"),
    (envelope("TraCuuThongTinCongDan", "<b:SoDinhDanh>00108501234X</b:SoDinhDanh>"), "03"),
    (envelope("TraCuuThongTinCongDan", "<b:SoCMND>12345</b:SoCMND>"), "03"),
    (envelope("TraCuuThongTinCongDan", ""), "02"),
    (envelope("TraCuuThongTinCongDan", "<b:SoDinhDanh>001085012345</b:SoDinhDanh>",
              {"MaYeuCau": "r", "MaDVC": "037"}), "02"),
    (envelope("XacMinhKhongTonTai", "<b:SoDinhDanh>001085012345</b:SoDinhDanh>"), "05"),
    (envelope("XacThucThongTinCongDan", "<b:SoDinhDanh>001085012345</b:SoDinhDanh>"
              "<b:HoVaTen>Nguyễn Văn An</b:HoVaTen><b:NgayThangNamSinh><b:NgayThangNam>1985-03-12"
              "</b:NgayThangNam></b:NgayThangNamSinh>"), "04"),
])
def test_malformed_requests_are_client_faults(base: str, data: bytes, error: str) -> None:
    action = "XacThucThongTinCongDan" if b"XacThuc" in data else "TraCuuThongTinCongDan"
    assert fault_of(post(base, data, action)) == ("soap:Client", error)


def test_wrong_soap_action_and_soap12_are_refused(base: str) -> None:
    data = envelope("TraCuuThongTinCongDan", "<b:SoDinhDanh>001085012345</b:SoDinhDanh>")
    assert fault_of(post(base, data, "XacThucThongTinCongDan")) == ("soap:Client", "05")
    assert post(base, data, SOAPAction="").status_code == 200  # empty SOAPAction tolerated
    soap12 = data.replace(SOAP.encode(), b"http://www.w3.org/2003/05/soap-envelope")
    assert fault_of(post(base, soap12))[0] == "soap:VersionMismatch"


# --- switchable faults -------------------------------------------------------------------------

GOOD = envelope("TraCuuThongTinCongDan", f"<b:SoDinhDanh>{FIXED_IDS['mai']}</b:SoDinhDanh>")


def set_faults(base: str, **spec: object) -> dict:
    resp = httpx.post(f"{base}/_sim/faults", json=spec)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_fault_modes(base: str) -> None:
    set_faults(base, mode="down")
    resp = post(base, GOOD)
    assert resp.status_code == 503 and resp.headers["content-type"].startswith("text/html")

    set_faults(base, mode="malformed")
    resp = post(base, GOOD)
    assert resp.status_code == 200 and resp.content.startswith(b"<?xml")
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(resp.content)

    set_faults(base, mode="fault")
    assert fault_of(post(base, GOOD)) == ("soap:Server", "99")

    set_faults(base, mode="slow", delay=0.3)
    start = time.monotonic()
    resp = post(base, GOOD)
    assert time.monotonic() - start >= 0.3 and resp.status_code == 200
    assert b'SoCongDan="1"' in resp.content


def test_count_limited_fault_reverts(base: str) -> None:
    assert set_faults(base, mode="down", count=2) == {"mode": "down", "delay": 0.0, "count": 2}
    assert [post(base, GOOD).status_code for _ in range(3)] == [503, 503, 200]
    assert httpx.get(f"{base}/_sim/faults").json()["mode"] == "normal"


def test_fault_control_rejects_nonsense(base: str) -> None:
    for spec in ({"mode": "explode"}, {"mode": "slow", "delay": -1}, {"mode": "down", "count": 0},
                 {"mode": "down", "count": "2"}, [1, 2]):
        assert httpx.post(f"{base}/_sim/faults", json=spec).status_code == 400
    assert httpx.get(f"{base}/_sim/faults").json()["mode"] == "normal"


def test_stats_count_requests(base: str) -> None:
    httpx.delete(f"{base}/_sim/stats")
    post(base, GOOD)
    post(base, b"junk")
    stats = httpx.get(f"{base}/_sim/stats").json()
    assert stats["requests"] == 2 and stats["operations"] == {"TraCuuThongTinCongDan": 1}
    assert stats["faults"] == {"soap:Client": 1}


# --- the synthetic data ------------------------------------------------------------------------------

def _units(path: Path) -> dict[str, set[str]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {key: {u["code"] for u in doc[key]} for key in
            ("provinces_current", "provinces_legacy", "districts_legacy",
             "communes_legacy", "communes_current")}


def test_personal_ids_agree_with_the_person(dataset) -> None:
    citizens = dataset.citizens
    assert len(citizens) == 3000 and len({c.personal_id for c in citizens}) == 3000
    olds = [c.old_id for c in citizens if c.old_id]
    assert len(olds) == len(set(olds)) and all(len(o) == 9 and o.isdigit() for o in olds)
    for c in citizens:
        pid = parse_id(c.personal_id)  # 12 digits, real province, not in the future
        assert pid.birth_year == c.birth_year
        assert pid.gender == ("male" if c.gender == "1" else "female")
        assert int(c.personal_id[3]) // 2 == (c.birth_year - 1900) // 100
        assert c.personal_id[4:6] == f"{c.birth_year % 100:02d}"
        assert 1930 <= c.birth_year <= 2024
        assert not c.birth_date or c.birth_date[:4] == str(c.birth_year)


def test_addresses_use_known_unit_codes(dataset) -> None:
    units = _units(ADMIN_UNITS)
    legacy_share = sum(c.legacy_codes for c in dataset.citizens) / len(dataset.citizens)
    assert 0.6 < legacy_share < 0.8
    for c in dataset.citizens:
        for a in (c.birth_registration, c.hometown, c.permanent, c.current):
            if c.legacy_codes:
                assert a.province in units["provinces_legacy"] and a.district in units["districts_legacy"]
                assert a.commune in units["communes_legacy"]
            else:
                assert a.province in units["provinces_current"] and a.district is None
                assert a.commune in units["communes_current"]
        if c.legacy_codes:  # the ID's province is the birth-registration province
            assert c.personal_id[1:3] == c.birth_registration.province


def test_families_hang_together(dataset) -> None:
    by_id = dataset.by_id
    for c in dataset.citizens:
        assert unicodedata.is_normalized("NFC", c.full_name)
        if c.father and c.father.personal_id:
            dad = by_id[c.father.personal_id]
            assert dad.gender == "1" and dad.family == c.family and dad.birth_year < c.birth_year - 14
        if c.mother and c.mother.personal_id:
            mom = by_id[c.mother.personal_id]
            assert mom.gender == "2" and mom.birth_year < c.birth_year - 14
        if c.spouse and c.spouse.personal_id:
            assert by_id[c.spouse.personal_id].spouse.personal_id == c.personal_id
            assert c.marital == "2"
        head = by_id[c.head.personal_id]
        assert head.household == c.household and head.relation == "Chủ hộ"
        assert c in dataset.households[c.household]
    linked = sum(1 for c in dataset.citizens if c.father and c.father.personal_id)
    assert linked > len(dataset.citizens) // 4
    nguyen = sum(c.family == "Nguyễn" for c in dataset.citizens) / len(dataset.citizens)
    assert 0.3 < nguyen < 0.46


def test_generation_is_deterministic_and_fixed_citizens_come_first() -> None:
    a = generate(500, 7, FIXTURE_UNITS)
    b = generate(500, 7, FIXTURE_UNITS)
    c = generate(500, 8, FIXTURE_UNITS)
    ids = [x.personal_id for x in a.citizens]
    assert ids == [x.personal_id for x in b.citizens] != [x.personal_id for x in c.citizens]
    assert ids[0] == FIXED_IDS["an"] and set(FIXED_IDS.values()) <= set(ids[:len(FIXED_IDS)])
    assert [x.personal_id for x in c.citizens][: len(FIXED_IDS)] == ids[: len(FIXED_IDS)]


def test_cli_lists_the_fixed_citizens(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulator_main(["--list", "2", "--citizens", "50", "--admin-units", str(FIXTURE_UNITS)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:3] for line in lines] == [
        [FIXED_IDS["an"], "012345678", "Nguyễn Văn An"], [FIXED_IDS["binh"], "-", "Trần Thị Bình"]]
