"""SOAP 1.1 simulator of the national population database (CSDL quốc gia về dân cư).

Speaks the contract in wsdl/population/ over real HTTP so the adapter, the demo
and the integration tests exercise the same bytes a real endpoint would send.
Faults can be switched on at run time through ``/_sim/faults`` to test the
gateway's timeouts, retries and error mapping.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from lgsp.sdk import Faults

from .data import MARITAL_CODES, VITAL_CODES, Address, Citizen, Dataset, PersonRef, generate

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
BCA = "http://dancuquocgia.bca"  # requests and fault details
DC = "http://www.mic.gov.vn/dancu/1.0"  # citizen data
WSDL_SOAP = "http://schemas.xmlsoap.org/wsdl/soap/"
XS = "http://www.w3.org/2001/XMLSchema"
XML_TYPE = "text/xml; charset=utf-8"
MAX_BODY = 1024 * 1024  # a citizen request is well under 2 KB; a list of 1,000 about 250 KB
ICT = dt.timezone(dt.timedelta(hours=7), "ICT")

# Error codes carried in the fault detail (Loi/MaLoi); stable, documented in README.md.
E_FORMAT, E_MISSING, E_ID, E_VALUE, E_OPERATION, E_SYSTEM = "01", "02", "03", "04", "05", "99"
HEADER_FIELDS = ("MaYeuCau", "MaDVC", "MaDichVu", "MaTichHop", "MaDonVi", "MaCanBo", "TaiKhoan")
REQUIRED_FIELDS = ("MaYeuCau", "MaTichHop", "MaDonVi", "TaiKhoan")
SERVICE_CODE_FIELDS = ("MaDVC", "MaDichVu")  # two spellings of the service code seen in the wild
_ID12 = re.compile(r"[0-9]{12}")
_ID9 = re.compile(r"[0-9]{9}")
_DATE8 = re.compile(r"[0-9]{8}")
_YEAR4 = re.compile(r"[0-9]{4}")

# Hardened: no entities, no DTD, no network, no huge trees; DOCTYPEs are refused outright.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                          huge_tree=False, remove_comments=True, remove_pis=True)

DOWN_PAGE = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class SoapFault(Exception):
    """A fault to answer with: SOAP faultcode, message, and the national error code."""

    def __init__(self, error: str, message: str, faultcode: str = "soap:Client"):
        super().__init__(message)
        self.error, self.message, self.faultcode = error, message, faultcode


# --- XML out ------------------------------------------------------------------------

def _q(name: str, ns: str = DC) -> str:
    return f"{{{ns}}}{name}"


def _leaf(parent: etree._Element, name: str, value: str | None) -> None:
    if value:
        etree.SubElement(parent, _q(name)).text = value


def _address(parent: etree._Element, name: str, a: Address | None) -> None:
    if a is None:
        return
    el = etree.SubElement(parent, _q(name))
    for tag, value in (("MaTinhThanh", a.province), ("MaQuanHuyen", a.district),
                       ("MaPhuongXa", a.commune), ("ChiTiet", a.detail), ("QuocGia", a.country)):
        _leaf(el, tag, value)


def _relative(parent: etree._Element, name: str, p: PersonRef | None) -> None:
    if p is None:
        return
    el = etree.SubElement(parent, _q(name))
    for tag, value in (("HoVaTen", p.full_name), ("QuocTich", p.nationality),
                       ("SoDinhDanh", p.personal_id), ("SoCMND", p.old_id)):
        _leaf(el, tag, value)


def _birth(parent: etree._Element, c: Citizen) -> None:
    el = etree.SubElement(parent, _q("NgayThangNamSinh"))
    _leaf(el, "Nam", str(c.birth_year))
    _leaf(el, "NgayThangNam", c.birth_date)


def citizen_element(c: Citizen) -> etree._Element:
    """One CongDan, children in the order of CongDanType."""
    el = etree.Element(_q("CongDan"))
    _leaf(el, "SoDinhDanh", c.personal_id)
    _leaf(el, "SoCMND", c.old_id)
    name = etree.SubElement(el, _q("HoVaTen"))
    _leaf(name, "Ho", c.family)
    _leaf(name, "ChuDem", c.middle)
    _leaf(name, "Ten", c.given)
    for tag, value in (("GioiTinh", c.gender), ("DanToc", c.ethnicity), ("TonGiao", c.religion),
                       ("TinhTrangHonNhan", c.marital), ("NhomMau", c.blood)):
        _leaf(el, tag, value)
    _birth(el, c)
    for tag, a in (("NoiDangKyKhaiSinh", c.birth_registration), ("QueQuan", c.hometown),
                   ("ThuongTru", c.permanent), ("NoiOHienTai", c.current)):
        _address(el, tag, a)
    _leaf(el, "QuocTich", c.nationality)
    for tag, p in (("Cha", c.father), ("Me", c.mother), ("VoChong", c.spouse),
                   ("NguoiDaiDien", c.representative)):
        _relative(el, tag, p)
    if c.head is not None:
        head = etree.SubElement(el, _q("ChuHo"))
        for tag, value in (("QuanHe", c.relation), ("SoDinhDanh", c.head.personal_id),
                           ("SoCMND", c.head.old_id), ("HoVaTen", c.head.full_name)):
            _leaf(head, tag, value)
    _leaf(el, "SoSoHoKhau", c.household)
    return el


def envelope(payload: etree._Element) -> bytes:
    env = etree.Element(_q("Envelope", SOAP_ENV), nsmap={"soap": SOAP_ENV})
    etree.SubElement(env, _q("Body", SOAP_ENV)).append(payload)
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def fault_envelope(f: SoapFault) -> bytes:
    env = etree.Element(_q("Envelope", SOAP_ENV), nsmap={"soap": SOAP_ENV})
    fault = etree.SubElement(etree.SubElement(env, _q("Body", SOAP_ENV)), _q("Fault", SOAP_ENV))
    etree.SubElement(fault, "faultcode").text = f.faultcode
    etree.SubElement(fault, "faultstring").text = f.message
    loi = etree.SubElement(etree.SubElement(fault, "detail"), _q("Loi", BCA), nsmap={None: BCA})
    etree.SubElement(loi, _q("MaLoi", BCA)).text = f.error
    etree.SubElement(loi, _q("MoTa", BCA)).text = f.message
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def _now() -> str:
    return dt.datetime.now(ICT).isoformat(timespec="seconds")


# --- XML in -------------------------------------------------------------------------

def parse_operation(body: bytes) -> etree._Element:
    """The single element inside soap:Body, from a SOAP 1.1 envelope; else a Client fault."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise SoapFault(E_FORMAT, "Yêu cầu chứa DOCTYPE/ENTITY: không được chấp nhận")
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError:
        raise SoapFault(E_FORMAT, "Yêu cầu không phải XML hợp lệ") from None
    if root.getroottree().docinfo.doctype:  # e.g. a UTF-16 document hiding its DOCTYPE
        raise SoapFault(E_FORMAT, "Yêu cầu chứa DOCTYPE: không được chấp nhận")
    if root.tag == _q("Envelope", SOAP12_ENV):
        raise SoapFault(E_FORMAT, "Chỉ hỗ trợ SOAP 1.1", "soap:VersionMismatch")
    if root.tag != _q("Envelope", SOAP_ENV):
        raise SoapFault(E_FORMAT, "Yêu cầu không phải SOAP 1.1 Envelope")
    header = root.find(_q("Header", SOAP_ENV))
    for block in header if header is not None else ():
        if block.get(_q("mustUnderstand", SOAP_ENV)) in ("1", "true"):
            raise SoapFault(E_FORMAT, f"Không hiểu SOAP header {block.tag}", "soap:MustUnderstand")
    body_el = root.find(_q("Body", SOAP_ENV))
    ops = list(body_el) if body_el is not None else []
    if len(ops) != 1:
        raise SoapFault(E_FORMAT, "soap:Body phải chứa đúng một phần tử yêu cầu")
    return ops[0]


def _text(parent: etree._Element, name: str) -> str | None:
    el = parent.find(_q(name, BCA))
    return None if el is None else (el.text or "").strip()


@dataclass(frozen=True)
class Query:
    """The fields common to every request."""

    header: dict[str, str | None]
    personal_id: str | None
    old_id: str | None


def read_query(op: etree._Element) -> Query:
    header = {name: _text(op, name) for name in HEADER_FIELDS}
    for name in REQUIRED_FIELDS:
        if not header[name]:
            raise SoapFault(E_MISSING, f"Thiếu thông tin bắt buộc: {name}")
    if sum(bool(header[name]) for name in SERVICE_CODE_FIELDS) != 1:
        raise SoapFault(E_MISSING, "Cần đúng một trong MaDVC hoặc MaDichVu")
    pid, old = _text(op, "SoDinhDanh"), _text(op, "SoCMND")
    if (pid is None) == (old is None):
        raise SoapFault(E_MISSING, "Cần đúng một trong SoDinhDanh hoặc SoCMND")
    if pid is not None and not _ID12.fullmatch(pid):
        raise SoapFault(E_ID, "Số định danh cá nhân phải gồm 12 chữ số")
    if old is not None and not _ID9.fullmatch(old):
        raise SoapFault(E_ID, "Số CMND phải gồm 9 chữ số")
    return Query(header, pid, old)


def _norm(name: str) -> str:
    return " ".join(unicodedata.normalize("NFC", name).casefold().split())


def _read_birth(op: etree._Element) -> tuple[str | None, str | None]:
    """(yyyyMMdd, yyyy) from the request's NgayThangNamSinh; (None, None) if absent."""
    el = op.find(_q("NgayThangNamSinh", BCA))
    if el is None:
        return None, None
    full, year = _text(el, "NgayThangNam"), _text(el, "Nam")
    if full:
        try:
            if not _DATE8.fullmatch(full):
                raise ValueError(full)
            dt.datetime.strptime(full, "%Y%m%d")
        except ValueError:
            raise SoapFault(E_VALUE, "NgayThangNam phải có dạng yyyyMMdd") from None
        return full, full[:4]
    if year and _YEAR4.fullmatch(year):
        return None, year
    raise SoapFault(E_VALUE, "NgayThangNamSinh cần NgayThangNam (yyyyMMdd) hoặc Nam (yyyy)")


def verify_matches(c: Citizen | None, name: str, full: str | None, year: str | None) -> bool:
    """ID found, same name (NFC, case and spacing ignored), same birth date or year."""
    if c is None or _norm(name) != _norm(c.full_name):
        return False
    if full and c.birth_date:
        return full == c.birth_date
    if year:  # a year-only request, or a record that only holds the year
        return year == str(c.birth_year)
    return True


# --- operations ----------------------------------------------------------------------

def op_lookup(ds: Dataset, op: etree._Element) -> etree._Element:
    q = read_query(op)
    c = ds.find(q.personal_id, q.old_id)
    out = etree.Element(_q("CongdanCollection"), nsmap={None: DC})
    out.set("SoCongDan", "1" if c else "0")
    out.set("GhiChu", "Thành công" if c else "Không tìm thấy công dân")
    out.set("ThoiDiemDuLieu", _now())
    if c is not None:
        out.append(citizen_element(c))
    return out


def op_verify(ds: Dataset, op: etree._Element) -> etree._Element:
    q = read_query(op)
    name = _text(op, "HoVaTen")
    if not name:
        raise SoapFault(E_MISSING, "Thiếu thông tin bắt buộc: HoVaTen")
    full, year = _read_birth(op)
    ok = verify_matches(ds.find(q.personal_id, q.old_id), name, full, year)
    out = etree.Element(_q("KetQuaXacThucResponse"), nsmap={None: DC})
    _leaf(out, "MaYeuCau", q.header["MaYeuCau"])
    etree.SubElement(out, _q("TonTai")).text = "true" if ok else "false"
    # Never say which part failed: that would let callers probe the database.
    _leaf(out, "GhiChu", "Thông tin khớp" if ok else "Thông tin không khớp")
    _leaf(out, "ThoiDiemDuLieu", _now())
    return out


def op_household(ds: Dataset, op: etree._Element) -> etree._Element:
    q = read_query(op)
    c = ds.find(q.personal_id, q.old_id)
    members = ds.households.get(c.household or "", []) if c else []
    out = etree.Element(_q("ThongTinHoGiaDinh"), nsmap={None: DC})
    out.set("SoThanhVien", str(len(members)))
    out.set("GhiChu", "Thành công" if members else "Không tìm thấy hộ gia đình")
    out.set("ThoiDiemDuLieu", _now())
    if members:
        head = next((m for m in members if m.relation == "Chủ hộ"), members[0])
        _leaf(out, "SoSoHoKhau", head.household)
        _address(out, "DiaChi", head.permanent)
        chu_ho = etree.SubElement(out, _q("ChuHo"))
        for tag, value in (("QuanHe", head.relation), ("SoDinhDanh", head.personal_id),
                           ("SoCMND", head.old_id), ("HoVaTen", head.full_name)):
            _leaf(chu_ho, tag, value)
    for m in members:
        el = etree.SubElement(out, _q("ThanhVien"))
        for tag, value in (("QuanHe", m.relation), ("SoDinhDanh", m.personal_id),
                           ("SoCMND", m.old_id), ("HoVaTen", m.full_name), ("GioiTinh", m.gender)):
            _leaf(el, tag, value)
        _birth(el, m)
    return out


def _result(tag: str, q: Query, fields: list[tuple[str, str | None]]) -> etree._Element:
    """A verification answer: MaYeuCau, the given fields in order, GhiChu and ThoiDiemDuLieu."""
    out = etree.Element(_q(tag), nsmap={None: DC})
    _leaf(out, "MaYeuCau", q.header["MaYeuCau"])
    for name, value in fields:
        _leaf(out, name, value)
    _leaf(out, "ThoiDiemDuLieu", _now())
    return out


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _required_id(op: etree._Element, name: str) -> str:
    value = _text(op, name)
    if not value:
        raise SoapFault(E_MISSING, f"Thiếu thông tin bắt buộc: {name}")
    if not _ID12.fullmatch(value):
        raise SoapFault(E_ID, f"{name} phải gồm 12 chữ số")
    return value


def op_verify_head(ds: Dataset, op: etree._Element) -> etree._Element:
    q = read_query(op)
    head_id = _required_id(op, "SoDinhDanhChuHo")
    c = ds.find(q.personal_id, q.old_id)
    ok = bool(c and c.head and c.head.personal_id == head_id)
    # The relation only when the claim holds: a "no" says nothing else about the record.
    return _result("KetQuaXacMinhChuHo", q, [
        ("KetQua", _bool(ok)), ("QuanHe", c.relation if ok and c else None),
        ("GhiChu", "Thông tin khớp" if ok else "Thông tin không khớp")])


RELATIVE_KINDS = ("Cha", "Me", "VoChong", "Con")


def is_relative(ds: Dataset, c: Citizen | None, kind: str, other_id: str) -> bool:
    """Whether other_id is c's father, mother, spouse or child on record."""
    if c is None:
        return False
    if kind == "Con":
        child = ds.by_id.get(other_id)
        return bool(child and c.personal_id in (getattr(child.father, "personal_id", None),
                                                 getattr(child.mother, "personal_id", None)))
    ref = {"Cha": c.father, "Me": c.mother, "VoChong": c.spouse}[kind]
    return bool(ref and ref.personal_id == other_id)


def op_verify_relative(ds: Dataset, op: etree._Element) -> etree._Element:
    q = read_query(op)
    kind = _text(op, "QuanHe")
    if kind not in RELATIVE_KINDS:
        raise SoapFault(E_VALUE, "QuanHe phải là Cha, Me, VoChong hoặc Con")
    other = _required_id(op, "SoDinhDanhNguoiThan")
    ok = is_relative(ds, ds.find(q.personal_id, q.old_id), kind, other)
    return _result("KetQuaXacMinhNhanThan", q, [
        ("KetQua", _bool(ok)), ("GhiChu", "Thông tin khớp" if ok else "Thông tin không khớp")])


def _status_answer(tag: str, q: Query, found: bool, field_name: str, actual: str | None,
                   claimed: str | None, extra: list[tuple[str, str | None]]) -> etree._Element:
    if not found:
        return _result(tag, q, [("TonTai", "false"), ("GhiChu", "Không tìm thấy công dân")])
    fields = [("TonTai", "true")]
    if claimed:
        fields.append(("KetQua", _bool(claimed == actual)))
    return _result(tag, q, fields + [(field_name, actual), *extra, ("GhiChu", "Thành công")])


def op_marital(ds: Dataset, op: etree._Element) -> etree._Element:
    q = read_query(op)
    claimed = _text(op, "TinhTrangHonNhan")
    if claimed and claimed not in MARITAL_CODES:
        raise SoapFault(E_VALUE, "TinhTrangHonNhan phải là 1, 2, 3 hoặc 4")
    c = ds.find(q.personal_id, q.old_id)
    return _status_answer("KetQuaTinhTrangHonNhan", q, c is not None, "TinhTrangHonNhan",
                          c.marital if c else None, claimed, [])


def op_vital(ds: Dataset, op: etree._Element) -> etree._Element:
    q = read_query(op)
    claimed = _text(op, "TinhTrang")
    if claimed and claimed not in VITAL_CODES:
        raise SoapFault(E_VALUE, "TinhTrang phải là 1 (còn sống), 2 (đã chết) hoặc 3 (mất tích)")
    c = ds.find(q.personal_id, q.old_id)
    return _status_answer("KetQuaTinhTrangChetMatTich", q, c is not None, "TinhTrang",
                          c.vital if c else None, claimed, [("NgaySuKien", c.vital_date if c else None)])


# --- the asynchronous family (lists) -----------------------------------------------------

LIST_LIMIT = 1000          # persons per XacThucDanhSachCongDan, as the national side's list limit
SECONDS_PER_PERSON = 0.0005  # simulated processing time (1,000 persons: 0.5 s), at least MIN_SECONDS
MIN_SECONDS = 0.2
EXAMPLE_HANDLE = "VIDU-000001"  # a finished list, always there: docs and the contract kit use it


@dataclass
class ListRequest:
    items: list[tuple[str | None, str | None, bool]]  # (SoDinhDanh, SoCMND, TonTai)
    ready_at: float


def read_list(ds: Dataset, op: etree._Element) -> ListRequest:
    rows = op.findall(f"{_q('DanhSach', BCA)}/{_q('CongDan', BCA)}")
    if not rows:
        raise SoapFault(E_MISSING, "DanhSach phải có ít nhất một CongDan")
    if len(rows) > LIST_LIMIT:
        raise SoapFault(E_VALUE, f"DanhSach tối đa {LIST_LIMIT} công dân")
    items = []
    for row in rows:
        pid, old = _text(row, "SoDinhDanh"), _text(row, "SoCMND")
        if (pid is None) == (old is None) or (pid and not _ID12.fullmatch(pid)) or (old and not _ID9.fullmatch(old)):
            raise SoapFault(E_ID, "Mỗi CongDan cần SoDinhDanh 12 chữ số hoặc SoCMND 9 chữ số")
        name = _text(row, "HoVaTen")
        if not name:
            raise SoapFault(E_MISSING, "Thiếu thông tin bắt buộc: HoVaTen")
        full, year = _read_birth(row)
        items.append((pid, old, verify_matches(ds.find(pid, old), name, full, year)))
    return ListRequest(items, time.monotonic() + max(MIN_SECONDS, SECONDS_PER_PERSON * len(items)))


class ListRequests:
    """Lists in progress or done, by handle (MaTraCuu); kept for the simulator's lifetime."""

    def __init__(self, ds: Dataset):
        self.ds = ds
        self.requests: dict[str, ListRequest] = {}
        self.count = 0
        first = [c for c in ds.citizens[:3]]
        self.requests[EXAMPLE_HANDLE] = ListRequest([(c.personal_id, None, True) for c in first], 0.0)

    def submit(self, ds: Dataset, op: etree._Element) -> etree._Element:
        q = _request_header(op)
        request = read_list(ds, op)
        self.count += 1
        handle = f"DS-{self.count:06d}-{uuid.uuid4().hex[:8]}"
        self.requests[handle] = request
        return _result("KetQuaTiepNhan", q, [("MaTraCuu", handle), ("SoLuong", str(len(request.items)))])

    def _find(self, op: etree._Element) -> tuple[str, ListRequest | None]:
        _request_header(op)
        handle = _text(op, "MaTraCuu")
        if not handle:
            raise SoapFault(E_MISSING, "Thiếu thông tin bắt buộc: MaTraCuu")
        return handle, self.requests.get(handle)

    def status(self, ds: Dataset, op: etree._Element) -> etree._Element:
        handle, request = self._find(op)
        out = etree.Element(_q("TrangThaiYeuCau"), nsmap={None: DC})
        _leaf(out, "MaTraCuu", handle)
        _leaf(out, "TrangThai", _state(request))
        if request is not None:
            done = len(request.items) if _state(request) == "HoanThanh" else 0
            _leaf(out, "SoLuong", str(len(request.items)))
            _leaf(out, "SoDaXuLy", str(done))
        return out

    def result(self, ds: Dataset, op: etree._Element) -> etree._Element:
        handle, request = self._find(op)
        out = etree.Element(_q("KetQuaDanhSach"), nsmap={None: DC})
        _leaf(out, "MaTraCuu", handle)
        state = _state(request)
        _leaf(out, "TrangThai", state)
        if request is not None and state == "HoanThanh":
            for pid, old, ok in request.items:
                row = etree.SubElement(out, _q("KetQua"))
                _leaf(row, "SoDinhDanh", pid)
                _leaf(row, "SoCMND", old)
                _leaf(row, "TonTai", _bool(ok))
        _leaf(out, "ThoiDiemDuLieu", _now())
        return out


def _state(request: ListRequest | None) -> str:
    if request is None:
        return "KhongTonTai"
    return "HoanThanh" if time.monotonic() >= request.ready_at else "DangXuLy"


def _request_header(op: etree._Element) -> Query:
    """The common header of a request that names no citizen (lists, handles)."""
    header = {name: _text(op, name) for name in HEADER_FIELDS}
    for name in REQUIRED_FIELDS:
        if not header[name]:
            raise SoapFault(E_MISSING, f"Thiếu thông tin bắt buộc: {name}")
    if sum(bool(header[name]) for name in SERVICE_CODE_FIELDS) != 1:
        raise SoapFault(E_MISSING, "Cần đúng một trong MaDVC hoặc MaDichVu")
    return Query(header, None, None)


OPERATIONS: dict[str, Callable[[Dataset, etree._Element], etree._Element]] = {
    "TraCuuThongTinCongDan": op_lookup,
    "XacThucThongTinCongDan": op_verify,
    "CungCapThongTinHoGiaDinh": op_household,
    "XacMinhThongTinChuHo": op_verify_head,
    "XacMinhThongTinNhanThan": op_verify_relative,
    "XacMinhTinhTrangHonNhan": op_marital,
    "XacMinhTinhTrangChetMatTich": op_vital,
}


# --- fault injection and stats ------------------------------------------------------------

@dataclass
class Stats:
    requests: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)  # SOAP faults answered, by faultcode
    injected: dict[str, int] = field(default_factory=dict)  # requests hit by a fault mode

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "operations": dict(self.operations),
                "faults": dict(self.faults), "injected": dict(self.injected)}


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


# --- the HTTP service ---------------------------------------------------------------------

class Simulator:
    def __init__(self, dataset: Dataset, wsdl: Path, faults: Faults | None = None):
        self.dataset = dataset
        self.wsdl_file, self.xsd_file = wsdl, wsdl.with_name("population.xsd")
        self.faults = faults or Faults()
        self.stats = Stats()
        self._served: dict[str, bytes] = {}  # WSDL rewritten per endpoint URL
        self.lists = ListRequests(dataset)
        self.handlers = {**OPERATIONS, "XacThucDanhSachCongDan": self.lists.submit,
                         "GetRequestStatus": self.lists.status, "GetRequestResult": self.lists.result}

    # POST /dancu
    async def soap(self, request: Request) -> Response:
        self.stats.requests += 1
        mode, delay = self.faults.take()
        if mode != "normal":
            _bump(self.stats.injected, mode)
        if mode == "down":
            return HTMLResponse(DOWN_PAGE, status_code=503)
        if mode == "fault":
            return self._fault(SoapFault(
                E_SYSTEM, "Hệ thống CSDL quốc gia về dân cư đang bận, vui lòng thử lại sau",
                "soap:Server"))
        if mode == "slow":
            await asyncio.sleep(delay)
        response = await self._answer(request)
        if mode == "malformed":  # a reply cut off mid-stream
            return Response(response.body[: len(response.body) // 2], media_type=XML_TYPE)
        return response

    async def _answer(self, request: Request) -> Response:
        try:
            body = await self._read(request)
            op = parse_operation(body)
            name = etree.QName(op).localname
            handler = self.handlers.get(name) if etree.QName(op).namespace == BCA else None
            if handler is None:
                raise SoapFault(E_OPERATION, f"Không hỗ trợ thao tác {name}")
            self._check_action(request, name)
            _bump(self.stats.operations, name)
            return Response(envelope(handler(self.dataset, op)), media_type=XML_TYPE)
        except SoapFault as f:
            return self._fault(f)
        except Exception:  # never a stack trace to the caller
            return self._fault(SoapFault(E_SYSTEM, "Lỗi hệ thống", "soap:Server"))

    async def _read(self, request: Request) -> bytes:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/soap+xml":
            raise SoapFault(E_FORMAT, "Chỉ hỗ trợ SOAP 1.1 (text/xml)", "soap:VersionMismatch")
        if ctype and ctype not in ("text/xml", "application/xml"):
            raise SoapFault(E_FORMAT, f"Content-Type không được hỗ trợ: {ctype}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise SoapFault(E_FORMAT, "Yêu cầu quá lớn")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _check_action(request: Request, operation: str) -> None:
        # SOAP 1.1 routes on SOAPAction; an empty one is tolerated, a wrong one is not.
        action = request.headers.get("soapaction", "").strip().strip('"')
        if action and action not in (f"{BCA}/{operation}", operation):
            raise SoapFault(E_OPERATION, f"SOAPAction {action} không khớp thao tác {operation}")

    def _fault(self, f: SoapFault) -> Response:
        _bump(self.stats.faults, f.faultcode)
        return Response(fault_envelope(f), status_code=500, media_type=XML_TYPE)

    # GET /dancu?wsdl, /dancu?xsd=population.xsd
    async def describe(self, request: Request) -> Response:
        endpoint = str(request.url.replace(query="", fragment="")).rstrip("?")
        params = {k.lower(): v for k, v in request.query_params.items()}
        if "wsdl" in params:
            if endpoint not in self._served:
                if len(self._served) > 16:  # the Host header is the caller's: bound the cache
                    self._served.clear()
                self._served[endpoint] = self._rewrite_wsdl(endpoint)
            return Response(self._served[endpoint], media_type=XML_TYPE)
        if params.get("xsd") == self.xsd_file.name:
            return Response(self.xsd_file.read_bytes(), media_type=XML_TYPE)
        if "xsd" in params:
            return PlainTextResponse("Not found", status_code=404)
        return PlainTextResponse(
            f"DanCuService (simulator of the national population database).\n"
            f"WSDL: {endpoint}?wsdl\n")

    def _rewrite_wsdl(self, endpoint: str) -> bytes:
        doc = etree.fromstring(self.wsdl_file.read_bytes(), _PARSER)
        for address in doc.iter(_q("address", WSDL_SOAP)):
            address.set("location", endpoint)
        for imp in doc.iter(_q("import", XS)):
            location = imp.get("schemaLocation")
            if location and "/" not in location:
                imp.set("schemaLocation", f"{endpoint}?xsd={location}")
        return etree.tostring(doc, xml_declaration=True, encoding="utf-8")

    async def endpoint(self, request: Request) -> Response:
        return await (self.soap(request) if request.method == "POST" else self.describe(request))

    # /_sim/faults, /_sim/stats
    async def control_faults(self, request: Request) -> Response:
        return await self.faults.endpoint(request, default_delay=0.0)

    async def control_stats(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.stats = Stats()
        return JSONResponse(self.stats.as_dict())


def create_app(citizens: int = 3000, seed: int = 1, *, admin_units: str | Path | None = None,
               faults: Faults | None = None) -> Starlette:
    """The simulator as an ASGI app; its Simulator is ``app.state.simulator``."""
    from . import wsdl_path  # the package helper; imported late to avoid a cycle

    sim = Simulator(generate(citizens, seed, admin_units), wsdl_path(), faults)
    app = Starlette(routes=[
        Route("/dancu", sim.endpoint, methods=["GET", "POST"]),
        Route("/_sim/faults", sim.control_faults, methods=["GET", "POST"]),
        Route("/_sim/stats", sim.control_stats, methods=["GET", "DELETE"]),
    ])
    app.state.simulator = sim
    return app
