"""What the portal simulator knows before anyone writes to it: the procedure catalogue (read
from the shipped national-procedures code list, so the simulator and the LGSP's door check agree)
and a few fixed dossiers, so that look-ups answer something on a fresh start.

Wire rules the simulator checks on every dossier and step it receives (the portal's, as the
field notes give them; the exact error codes are the project's assumption, see README.md)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from lgsp.sdk import codelists

DATE_FIELDS_DOSSIER = ("NgayTiepNhan", "NgayHenTra", "NgayTra", "NgayKetThucXuLy")
DATE_FIELDS_STEP = ("ThoiDiemXuLy", "NgayBatDau", "NgayKetThucTheoQuyDinh")
LIST_FIELDS = ("TaiLieuNop", "DanhSachLePhi", "DanhSachTepDinhKemKhac", "DanhSachHoSoBoSung", "DanhSachGiayToKetQua")
# Portal status codes: the portal table of the dossier-status code list ("1".."10").
STATUS_CODES = frozenset(codelists.get("dossier-status").translations["portal"])

#: Dossiers on the portal at start; FIXED_DOSSIERS[0] is the contract kit's example.
FIXED_DOSSIERS = ("000.00.31.H30-261101-0001", "000.00.31.H30-261101-0002")


def catalogue() -> dict[str, dict[str, Any]]:
    """MATTHC -> the LayThuTuc entry, from the national-procedures code list."""
    out = {}
    for e in codelists.get("national-procedures").entries:
        out[e["code"]] = {"MATTHC": e["code"], "TENTTHC": e["name"],
                          "LINHVUCTHUCHIEN": [{"MALINHVUC": e.get("field_code", ""),
                                               "TENLINHVUC": e.get("field_name", "")}]}
    return out


def seed() -> dict[str, dict[str, Any]]:
    """The fixed dossiers, as the portal stores them (wire field names)."""
    first = {
        "MaHoSo": FIXED_DOSSIERS[0], "MaTTHC": "1.001193", "TenTTHC": "Đăng ký khai sinh",
        "MaLinhVuc": "HT", "TenLinhVuc": "Hộ tịch", "ChuHoSo": "Trần Thị Bình", "LoaiDoiTuong": "1",
        "SoDienThoai": "0912000111", "TrichYeuHoSo": "Đăng ký khai sinh cho con", "NgayTiepNhan": "20261101083000",
        "NgayHenTra": "20261103170000", "TrangThaiHoSo": "2", "DonViXuLy": "UBND phường Phúc Xá",
        "TaiLieuNop": [{"TepDinhKemId": "f1", "TenTepDinhKem": "to-khai-khai-sinh.pdf", "IsDeleted": False}],
        "DanhSachLePhi": [{"TenPhiLePhi": "Lệ phí đăng ký khai sinh", "MaPhiLePhi": "LP01", "HinhThucThu": "1",
                           "Gia": 0, "LoaiPhiLePhi": "1"}],
        "QuaTrinhXuLy": [{"MaHoSo": FIXED_DOSSIERS[0], "NguoiXuLy": "Lê Văn Cường", "ChucDanh": "Công chức tư pháp",
                          "ThoiDiemXuLy": "20261101083000", "PhongBanXuLy": "Bộ phận một cửa",
                          "NoiDungXuLy": "Tiếp nhận hồ sơ", "TrangThai": "1"}],
    }
    second = {
        "MaHoSo": FIXED_DOSSIERS[1], "MaTTHC": "1.001612", "TenTTHC": "Đăng ký thành lập hộ kinh doanh",
        "ChuHoSo": "Hộ kinh doanh Phạm Minh", "LoaiDoiTuong": "2", "NgayTiepNhan": "20261101091500",
        "TrangThaiHoSo": "8", "NgayTra": "20261104100000", "HinhThuc": "0", "QuaTrinhXuLy": [],
    }
    return {d["MaHoSo"]: d for d in (first, second)}


def bad_date(value: Any) -> bool:
    """True when a date field is not yyyyMMddHHmmss (a real moment)."""
    if not isinstance(value, str) or len(value) != 14 or not value.isdigit():
        return True
    try:
        dt.datetime.strptime(value, "%Y%m%d%H%M%S")
    except ValueError:
        return True
    return False


def dossier_problem(item: Any, known_procedures: dict[str, Any]) -> str | None:
    """Why the portal refuses this DongBoHoSoMC item, or None."""
    if not isinstance(item, dict):
        return "Dữ liệu hồ sơ không hợp lệ"
    for name in ("MaHoSo", "MaTTHC", "ChuHoSo", "LoaiDoiTuong", "NgayTiepNhan", "TrangThaiHoSo"):
        if not isinstance(item.get(name), str) or not item[name].strip():
            return f"Thiếu trường bắt buộc {name}"
    if item["MaTTHC"] not in known_procedures:
        return f"Mã thủ tục hành chính {item['MaTTHC']} không có trong CSDL thủ tục hành chính"
    if item["LoaiDoiTuong"] not in ("1", "2"):
        return "LoaiDoiTuong không hợp lệ"
    if item["TrangThaiHoSo"] not in STATUS_CODES:
        return "TrangThaiHoSo không hợp lệ"
    if item.get("HinhThuc") not in (None, "0", "1"):
        return "HinhThuc không hợp lệ"
    for name in DATE_FIELDS_DOSSIER:
        if name in item and bad_date(item[name]):
            return f"{name} không đúng định dạng yyyyMMddHHmmss"
    for name in LIST_FIELDS:
        if name in item and not (isinstance(item[name], list) and all(isinstance(x, dict) for x in item[name])):
            return f"{name} phải là danh sách"
    for fee in item.get("DanhSachLePhi", []):
        if isinstance(fee.get("Gia"), bool) or not isinstance(fee.get("Gia"), (int, float)):
            return "Gia của phí, lệ phí phải là số"
    return None


def step_problem(item: Any) -> str | None:
    """Why the portal refuses this CapNhatTienDoHoSoMC item, or None."""
    if not isinstance(item, dict):
        return "Dữ liệu tiến độ không hợp lệ"
    for name in ("MaHoSo", "ThoiDiemXuLy", "NoiDungXuLy", "TrangThai"):
        if not isinstance(item.get(name), str) or not item[name].strip():
            return f"Thiếu trường bắt buộc {name}"
    if item["TrangThai"] not in STATUS_CODES:
        return "TrangThai không hợp lệ"
    for name in DATE_FIELDS_STEP:
        if name in item and bad_date(item[name]):
            return f"{name} không đúng định dạng yyyyMMddHHmmss"
    return None
