"""Synthetic enterprises for the business-registration simulator.

Deterministic for a given seed and administrative-units file. Enterprises are
limited liability companies (one member, or two and more), joint-stock
companies and sole proprietorships, some with branches (code of the parent +
``-001``). Head offices carry pre-2025 unit codes (province, district, commune)
except those registered since 1 July 2025, which carry current codes (province,
commune, no district). Business activities are VSIC 2018 codes (Decision
27/2018/QĐ-TTg) with their names; members and legal representatives carry
12-digit personal IDs consistent with their birth year and gender.

The registry's own writing is kept: names of enterprises and people in capitals,
dates as dd/MM/yyyy on the wire (see app.py), statuses as codes.
"""
from __future__ import annotations

import datetime as dt
import functools
import random
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from lgsp.sdk import codelists, personal_id

# ENTERPRISE_STATUS codes of the simulator; lgsp/codelists/data/enterprise-status.yaml
# holds the same table (assumed numbering: change both together).
STATUSES = {
    "1": "Đang hoạt động",
    "2": "Tạm ngừng kinh doanh",
    "3": "Đang làm thủ tục giải thể, phá sản, chấm dứt tồn tại",
    "4": "Đã giải thể, phá sản, chấm dứt tồn tại",
    "5": "Bị thu hồi Giấy chứng nhận đăng ký doanh nghiệp",
    "6": "Không còn hoạt động kinh doanh tại địa chỉ đã đăng ký",
}
ACTIVE, SUSPENDED, DISSOLVING, DISSOLVED, REVOKED, AWAY = "1", "2", "3", "4", "5", "6"
STATUS_WEIGHTS = ((ACTIVE, 80), (SUSPENDED, 6), (DISSOLVING, 3), (DISSOLVED, 6), (REVOKED, 2), (AWAY, 3))

ONE_MEMBER = "Công ty trách nhiệm hữu hạn một thành viên"
MULTI_MEMBER = "Công ty trách nhiệm hữu hạn hai thành viên trở lên"
JOINT_STOCK = "Công ty cổ phần"
SOLE = "Doanh nghiệp tư nhân"
BRANCH = "Chi nhánh"
FORM_WEIGHTS = ((ONE_MEMBER, 40), (MULTI_MEMBER, 25), (JOINT_STOCK, 25), (SOLE, 10))

# Roles as the registry words them (MEMBER_TYPE) and positions of legal representatives.
OWNER, CAPITAL_MEMBER, FOUNDER, SOLE_OWNER, BRANCH_HEAD, REPRESENTATIVE = (
    "Chủ sở hữu", "Thành viên góp vốn", "Cổ đông sáng lập", "Chủ doanh nghiệp tư nhân",
    "Người đứng đầu chi nhánh", "Người đại diện theo pháp luật")

REFORM_DAY = dt.date(2025, 7, 1)  # units reorganised; later registrations carry current codes
FIRST_DAY, LAST_DAY = dt.date(1995, 1, 1), dt.date(2025, 10, 31)

# First two digits of an enterprise code: the province's tax-office prefix,
# by pre-2025 province code. A sample covering the provinces of the shipped units file.
TAX_PREFIX = {"01": "01", "31": "02", "79": "03", "48": "04", "46": "33", "77": "35", "49": "40"}
CHECK_WEIGHTS = (31, 29, 23, 19, 17, 13, 7, 5, 3)

# --- business lines: (Vietnamese word in names, English word, main VSIC codes, other codes) --
VSIC = {
    "0321": "Nuôi trồng thuỷ sản biển",
    "1020": "Chế biến, bảo quản thuỷ sản và các sản phẩm từ thuỷ sản",
    "1079": "Sản xuất thực phẩm khác chưa được phân vào đâu",
    "1410": "May trang phục (trừ trang phục từ da lông thú)",
    "1610": "Cưa, xẻ, bào gỗ và bảo quản gỗ",
    "3100": "Sản xuất giường, tủ, bàn, ghế",
    "4101": "Xây dựng nhà để ở",
    "4102": "Xây dựng nhà không để ở",
    "4212": "Xây dựng công trình đường bộ",
    "4290": "Xây dựng công trình kỹ thuật dân dụng khác",
    "4321": "Lắp đặt hệ thống điện",
    "4322": "Lắp đặt hệ thống cấp, thoát nước, lò sưởi và điều hoà không khí",
    "4330": "Hoàn thiện công trình xây dựng",
    "4520": "Bảo dưỡng, sửa chữa ô tô và xe có động cơ khác",
    "4610": "Đại lý, môi giới, đấu giá hàng hóa",
    "4632": "Bán buôn thực phẩm",
    "46321": "Bán buôn thịt và các sản phẩm từ thịt",
    "46322": "Bán buôn thủy sản",
    "46323": "Bán buôn rau, quả",
    "4633": "Bán buôn đồ uống",
    "4641": "Bán buôn vải, hàng may mặc, giày dép",
    "4649": "Bán buôn đồ dùng khác cho gia đình",
    "46492": "Bán buôn dược phẩm và dụng cụ y tế",
    "4651": "Bán buôn máy vi tính, thiết bị ngoại vi và phần mềm",
    "4652": "Bán buôn thiết bị và linh kiện điện tử, viễn thông",
    "4659": "Bán buôn máy móc, thiết bị và phụ tùng máy khác",
    "4663": "Bán buôn vật liệu, thiết bị lắp đặt khác trong xây dựng",
    "4669": "Bán buôn chuyên doanh khác chưa được phân vào đâu",
    "4690": "Bán buôn tổng hợp",
    "4722": "Bán lẻ thực phẩm trong các cửa hàng chuyên doanh",
    "4741": "Bán lẻ máy vi tính, thiết bị ngoại vi, phần mềm và thiết bị viễn thông trong các cửa hàng chuyên doanh",
    "47711": "Bán lẻ hàng may mặc trong các cửa hàng chuyên doanh",
    "4772": "Bán lẻ thuốc, dụng cụ y tế, mỹ phẩm và vật phẩm vệ sinh trong các cửa hàng chuyên doanh",
    "47721": "Bán lẻ thuốc, dụng cụ y tế trong các cửa hàng chuyên doanh",
    "4932": "Vận tải hành khách đường bộ khác",
    "4933": "Vận tải hàng hóa bằng đường bộ",
    "49332": "Vận tải hàng hóa bằng ô tô loại khác (trừ ô tô chuyên dụng)",
    "5210": "Kho bãi và lưu giữ hàng hóa",
    "5229": "Hoạt động dịch vụ hỗ trợ khác liên quan đến vận tải",
    "5510": "Dịch vụ lưu trú ngắn ngày",
    "55101": "Khách sạn",
    "5610": "Nhà hàng và các dịch vụ ăn uống phục vụ lưu động",
    "56101": "Nhà hàng, quán ăn, hàng ăn uống (trừ cửa hàng ăn uống thuộc chuỗi cửa hàng ăn nhanh)",
    "5630": "Dịch vụ phục vụ đồ uống",
    "5820": "Xuất bản phần mềm",
    "6201": "Lập trình máy vi tính",
    "6202": "Tư vấn máy vi tính và quản trị hệ thống máy vi tính",
    "6209": "Hoạt động dịch vụ công nghệ thông tin và dịch vụ khác liên quan đến máy vi tính",
    "6311": "Xử lý dữ liệu, cho thuê và các hoạt động liên quan",
    "6312": "Cổng thông tin",
    "6810": "Kinh doanh bất động sản, quyền sử dụng đất thuộc chủ sở hữu, chủ sử dụng hoặc đi thuê",
    "6820": "Tư vấn, môi giới, đấu giá bất động sản, đấu giá quyền sử dụng đất",
    "6920": "Hoạt động liên quan đến kế toán, kiểm toán và tư vấn về thuế",
    "7020": "Hoạt động tư vấn quản lý",
    "7110": "Hoạt động kiến trúc và tư vấn kỹ thuật có liên quan",
    "7310": "Quảng cáo",
    "7320": "Nghiên cứu thị trường và thăm dò dư luận",
    "7490": "Hoạt động chuyên môn, khoa học và công nghệ khác chưa được phân vào đâu",
    "7911": "Đại lý du lịch",
    "7912": "Điều hành tua du lịch",
    "8299": "Hoạt động dịch vụ hỗ trợ kinh doanh khác còn lại chưa được phân vào đâu",
    "8559": "Giáo dục khác chưa được phân vào đâu",
    "8560": "Dịch vụ hỗ trợ giáo dục",
}

LINES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("THƯƠNG MẠI VÀ DỊCH VỤ", "TRADING AND SERVICES", ("4690", "4649", "4669"),
     ("4610", "4632", "4652", "4659", "4933", "5210")),
    ("XÂY DỰNG", "CONSTRUCTION", ("4101", "4102", "4290"),
     ("4212", "4321", "4322", "4330", "4663", "7110")),
    ("CÔNG NGHỆ", "TECHNOLOGY", ("6201", "6202"), ("6209", "6311", "6312", "5820", "4651", "4741", "7310")),
    ("VẬN TẢI", "TRANSPORT", ("4933", "49332"), ("5210", "5229", "4932", "4520")),
    ("DU LỊCH", "TRAVEL", ("7912", "7911"), ("5510", "55101", "5610", "4932")),
    ("THỰC PHẨM", "FOOD", ("1079", "4632"), ("46321", "46322", "46323", "4722", "5610", "4633")),
    ("DƯỢC PHẨM", "PHARMACEUTICAL", ("46492",), ("4772", "47721", "4659")),
    ("ĐẦU TƯ BẤT ĐỘNG SẢN", "REAL ESTATE INVESTMENT", ("6810",), ("6820", "4101", "4102", "7110")),
    ("TƯ VẤN", "CONSULTING", ("7020", "6920"), ("7320", "7490", "8299", "7310")),
    ("GIÁO DỤC", "EDUCATION", ("8559",), ("8560", "7020", "5820")),
    ("NỘI THẤT", "FURNITURE", ("3100",), ("1610", "4649", "4663", "4330")),
    ("MAY MẶC", "GARMENT", ("1410",), ("4641", "47711", "4669")),
    ("THỦY SẢN", "SEAFOOD", ("1020",), ("0321", "46322", "5210")),
    ("DỊCH VỤ ĂN UỐNG", "FOOD AND BEVERAGE SERVICES", ("56101",), ("5630", "5610", "4633")),
)
BRANDS = ("AN PHÁT", "HOÀNG LONG", "MINH KHANG", "THÀNH ĐẠT", "PHÚC THỊNH", "ĐẠI PHONG", "TÂN VIỆT",
          "SAO MAI", "BÌNH MINH", "HƯNG THỊNH", "VIỆT TIẾN", "NAM Á", "ĐÔNG DƯƠNG", "HẢI ĐĂNG",
          "TRƯỜNG SƠN", "KIM NGÂN", "PHƯƠNG NAM", "THIÊN LONG", "GIA BẢO", "NHẬT MINH", "QUANG HUY",
          "TRÍ ĐỨC", "HÒA BÌNH", "SÔNG HÀN", "HỒNG HÀ", "MỸ AN", "ĐỨC TÍN", "VẠN XUÂN", "ÁNH DƯƠNG",
          "LẠC HỒNG", "PHÚ QUÝ", "TÂM ĐỨC", "KHÁNH AN", "THỊNH VƯỢNG", "HÀ THÀNH", "BẢO CHÂU")
STREETS = ("Lê Lợi", "Trần Hưng Đạo", "Nguyễn Trãi", "Hai Bà Trưng", "Lý Thường Kiệt", "Quang Trung",
           "Nguyễn Huệ", "Phan Đình Phùng", "Hùng Vương", "Lê Duẩn", "Điện Biên Phủ", "Trần Phú",
           "Nguyễn Văn Linh", "Võ Văn Kiệt", "Phạm Văn Đồng")

# --- people ---------------------------------------------------------------------
FAMILY = (("Nguyễn", 38), ("Trần", 11), ("Lê", 9.5), ("Phạm", 7), ("Phan", 4.5), ("Hoàng", 3),
          ("Vũ", 2.2), ("Huỳnh", 2.1), ("Đặng", 2.1), ("Bùi", 2), ("Võ", 1.7), ("Đỗ", 1.4),
          ("Hồ", 1.3), ("Ngô", 1.3), ("Dương", 1), ("Đinh", 0.9), ("Trương", 0.8), ("Lý", 0.5))
MIDDLE = {"male": ("Văn", "Minh", "Đức", "Quang", "Hữu", "Thanh", "Xuân", "Quốc", "Công", "Anh"),
          "female": ("Thị", "Ngọc", "Thu", "Thanh", "Phương", "Minh", "Thùy", "Kim", "Hồng", "Mai")}
GIVEN = {"male": ("An", "Bình", "Cường", "Dũng", "Đạt", "Hải", "Hiếu", "Hùng", "Huy", "Khang", "Khoa",
                  "Long", "Minh", "Nam", "Phong", "Phúc", "Quân", "Sơn", "Tài", "Thắng", "Thành", "Trung",
                  "Tuấn", "Tùng", "Việt", "Vinh", "Lộc", "Thịnh"),
         "female": ("Anh", "Châu", "Chi", "Dung", "Giang", "Hà", "Hạnh", "Hằng", "Hiền", "Hoa", "Hương",
                    "Lan", "Linh", "Loan", "Mai", "My", "Nga", "Ngân", "Nhung", "Oanh", "Phương", "Quỳnh",
                    "Tâm", "Thảo", "Thủy", "Trang", "Vân", "Yến")}


@dataclass(frozen=True)
class Unit:
    """A pre-2025 commune with its district, province and the current units it belongs to."""

    code: str
    name: str
    district: str
    district_name: str
    province: str
    province_name: str
    current: str
    current_name: str
    current_province: str
    current_province_name: str


@dataclass(frozen=True)
class HeadOffice:
    """HOAdress as the registry sends it; ``district`` is None with current codes."""

    city: str
    district: str | None
    ward: str
    full_text: str


@dataclass(frozen=True)
class Activity:
    code: str
    name: str
    main: bool


@dataclass(frozen=True)
class Member:
    full_name: str
    member_type: str
    position: str | None = None
    legal_representative: bool = False
    id_number: str | None = None


@dataclass
class Enterprise:
    code: str
    name: str
    short_name: str
    foreign_name: str
    legal_form: str
    founding_date: dt.date
    status: str
    capital: int | None  # VND; None for a branch
    head_office: HeadOffice
    activities: tuple[Activity, ...]
    members: tuple[Member, ...]
    legacy_codes: bool
    parent: str | None = None
    branches: list[str] = field(default_factory=list)

    @property
    def legal_names(self) -> str:
        return ", ".join(m.full_name for m in self.members if m.legal_representative)


@dataclass
class Dataset:
    enterprises: list[Enterprise]
    by_code: dict[str, Enterprise]
    seed: int

    def find(self, code: str) -> Enterprise | None:
        return self.by_code.get(code)


def check_digit(first9: str) -> int:
    """The tenth digit of a tax/enterprise code as commonly computed (10 means: not issued)."""
    return 10 - sum(int(d) * w for d, w in zip(first9, CHECK_WEIGHTS)) % 11


# --- administrative units ---------------------------------------------------------------

def default_admin_units_path() -> Path:
    return codelists.file_of("admin-units")


@functools.lru_cache(maxsize=4)
def load_units(path: str | None = None) -> dict[str, tuple[Unit, ...]]:
    """Old communes by old province, for provinces with a tax prefix and a known current unit."""
    doc = codelists.load_file(Path(path) if path else default_admin_units_path())
    names = {p["code"]: p["name"] for p in doc.get("provinces_current") or ()}
    old_provinces = {p["code"]: p["name"] for p in doc.get("provinces_legacy") or ()}
    districts = {d["code"]: d["name"] for d in doc.get("districts_legacy") or ()}
    current = {c["code"]: (c["name"], c["province"]) for c in doc.get("communes_current") or ()}
    out: dict[str, list[Unit]] = {}
    for c in doc.get("communes_legacy") or ():
        cur = current.get(c.get("current"))
        if c["province"] not in TAX_PREFIX or c["province"] not in personal_id.PROVINCE_CODES or cur is None:
            continue
        out.setdefault(c["province"], []).append(Unit(
            c["code"], c.get("name") or "", c["district"], districts.get(c["district"], ""), c["province"],
            old_provinces.get(c["province"], ""), c["current"], cur[0], cur[1], names.get(cur[1], "")))
    if not out:
        raise ValueError("admin units: no old communes in a province with a tax prefix")
    return {k: tuple(v) for k, v in out.items()}


def head_office(unit: Unit, street: str, legacy: bool) -> HeadOffice:
    """The head office in pre-2025 codes, or in current codes (no district)."""
    if legacy:
        parts = (street, unit.name, unit.district_name, unit.province_name, "Việt Nam")
        return HeadOffice(unit.province, unit.district, unit.code, ", ".join(p for p in parts if p))
    parts = (street, unit.current_name, unit.current_province_name, "Việt Nam")
    return HeadOffice(unit.current_province, None, unit.current, ", ".join(p for p in parts if p))


# --- names ------------------------------------------------------------------------------

def ascii_upper(text: str) -> str:
    """AN PHÁT -> AN PHAT, for foreign names."""
    text = text.replace("Đ", "D").replace("đ", "d")
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if not unicodedata.combining(ch)).upper()


def company_names(form: str, line: str, line_en: str, brand: str) -> tuple[str, str, str]:
    """(NAME, NAME_F, SHORT_NAME) in the registry's capitals."""
    en = ascii_upper(brand)
    if form == JOINT_STOCK:
        return (f"CÔNG TY CỔ PHẦN {line} {brand}", f"{en} {line_en} JOINT STOCK COMPANY", f"{en} JSC")
    if form == SOLE:
        return (f"DOANH NGHIỆP TƯ NHÂN {line} {brand}", "", "")
    kind = "CÔNG TY TNHH MỘT THÀNH VIÊN" if form == ONE_MEMBER else "CÔNG TY TNHH"
    return (f"{kind} {line} {brand}", f"{en} {line_en} COMPANY LIMITED", f"{en} CO., LTD")


def place_name(province_name: str) -> str:
    """The place a branch name ends with: ĐÀ NẴNG, but THÀNH PHỐ HỒ CHÍ MINH in full."""
    if province_name.endswith("Hồ Chí Minh"):
        return province_name.upper()
    for prefix in ("Thành phố ", "Tỉnh "):
        if province_name.startswith(prefix):
            return province_name[len(prefix):].upper()
    return province_name.upper()


# --- generation ---------------------------------------------------------------------------

def _cumulative(pairs) -> tuple[tuple, list[float]]:
    values, cum, total = [], [], 0.0
    for value, weight in pairs:
        total += weight
        values.append(value)
        cum.append(total)
    return tuple(values), cum


_FAMILY, _FORMS, _STATUSES = _cumulative(FAMILY), _cumulative(FORM_WEIGHTS), _cumulative(STATUS_WEIGHTS)


class _Generator:
    def __init__(self, count: int, seed: int, units: dict[str, tuple[Unit, ...]]):
        self.r = random.Random(seed)
        self.count = count
        self.units = units
        self.provinces = tuple(sorted(units))
        self.enterprises: list[Enterprise] = []
        self.codes: set[str] = set()
        self.names: set[str] = set()
        self.ids: set[str] = set()

    def pick(self, table: tuple[tuple, list[float]]):
        return self.r.choices(table[0], cum_weights=table[1])[0]

    def add(self, e: Enterprise) -> Enterprise:
        self.codes.add(e.code)
        self.names.add(e.name)
        self.enterprises.append(e)
        return e

    def new_code(self, province: str) -> str:
        while True:
            first9 = f"{TAX_PREFIX[province]}{self.r.randrange(10_000_000):07d}"
            check = check_digit(first9)
            code = f"{first9}{check}"
            if check < 10 and code not in self.codes:
                return code

    def person_id(self, province: str, year: int, gender: str) -> str:
        while True:
            pid = personal_id.make(province, year, gender, self.r.randrange(1_000_000))
            if pid not in self.ids:
                self.ids.add(pid)
                return pid

    def person(self, province: str, founded: dt.date, role: str, position: str | None = None,
               legal: bool = False) -> Member:
        r = self.r
        gender = "male" if r.random() < 0.62 else "female"
        year = r.randint(max(1945, founded.year - 62), founded.year - 22)
        name = f"{self.pick(_FAMILY)} {r.choice(MIDDLE[gender])} {r.choice(GIVEN[gender])}".upper()
        # Older files sometimes lack the member's ID number.
        pid = None if founded.year < 2010 and r.random() < 0.1 else self.person_id(province, year, gender)
        return Member(name, role, position, legal, pid)

    def members(self, form: str, province: str, founded: dt.date) -> tuple[Member, ...]:
        r = self.r
        if form == SOLE:
            return (self.person(province, founded, SOLE_OWNER, "Chủ doanh nghiệp", True),)
        if form == ONE_MEMBER:
            owner = self.person(province, founded, OWNER, "Chủ tịch công ty kiêm Giám đốc", True)
            if r.random() < 0.6:
                return (owner,)
            return (Member(owner.full_name, OWNER, None, False, owner.id_number),
                    self.person(province, founded, REPRESENTATIVE, "Giám đốc", True))
        role = FOUNDER if form == JOINT_STOCK else CAPITAL_MEMBER
        people = [self.person(province, founded, role) for _ in range(r.randint(3, 5) if form == JOINT_STOCK
                                                                        else r.randint(2, 4))]
        position = r.choice(("Tổng giám đốc", "Chủ tịch Hội đồng quản trị") if form == JOINT_STOCK
                            else ("Giám đốc", "Chủ tịch Hội đồng thành viên"))
        if r.random() < 0.7:  # usually a member is also the legal representative
            m = people[0]
            people[0] = Member(m.full_name, role, position, True, m.id_number)
        else:
            people.append(self.person(province, founded, REPRESENTATIVE, position, True))
        if founded.year >= 2021 and r.random() < 0.1:  # the 2020 law allows several representatives
            people.append(self.person(province, founded, REPRESENTATIVE, "Phó Giám đốc", True))
        return tuple(people)

    def activities(self, main_codes: tuple[str, ...], others: tuple[str, ...]) -> tuple[Activity, ...]:
        main = self.r.choice(main_codes)
        pool = [c for c in (*main_codes, *others) if c != main]
        picked = self.r.sample(pool, k=min(len(pool), self.r.randint(2, 6)))
        # The registry lists activities by code; the main one is flagged, not first.
        return tuple(Activity(c, VSIC[c], c == main) for c in sorted([main, *picked]))

    def founded(self) -> dt.date:
        span = (LAST_DAY - FIRST_DAY).days
        return FIRST_DAY + dt.timedelta(days=int(self.r.triangular(0, span, span * 0.8)))

    def street(self) -> str:
        r = self.r
        if r.random() < 0.6:
            return f"Số {r.randint(1, 300)} {r.choice(STREETS)}"
        return f"Số {r.randint(1, 80)}, ngõ {r.randint(1, 200)}, phố {r.choice(STREETS)}"

    def capital(self, form: str) -> int:
        r = self.r
        if form == JOINT_STOCK:
            return r.choice((1, 2, 5, 10, 15, 20, 50, 100, 200)) * 1_000_000_000
        return r.randint(1, 100) * 100_000_000 if form != SOLE else r.randint(2, 30) * 100_000_000

    def enterprise(self) -> Enterprise:
        r = self.r
        form = self.pick(_FORMS)
        line, line_en, mains, others = r.choice(LINES)
        name, foreign, short = company_names(form, line, line_en, r.choice(BRANDS))
        while name in self.names:  # names are unique nationally
            name, foreign, short = company_names(form, line, line_en,
                                                 f"{r.choice(BRANDS)} {r.choice(BRANDS).split()[0]}")
        if r.random() < 0.3:  # many register neither a foreign nor a short name
            foreign, short = "", ""
        province = r.choice(self.provinces)
        unit = r.choice(self.units[province])
        founded = self.founded()
        legacy = founded < REFORM_DAY
        return self.add(Enterprise(
            code=self.new_code(province), name=name, short_name=short, foreign_name=foreign, legal_form=form,
            founding_date=founded, status=self.pick(_STATUSES), capital=self.capital(form),
            head_office=head_office(unit, self.street(), legacy), activities=self.activities(mains, others),
            members=self.members(form, province, founded), legacy_codes=legacy))

    def branch(self, parent: Enterprise) -> Enterprise:
        r = self.r
        province = r.choice(self.provinces)
        unit = r.choice(self.units[province])
        span = max(1, (LAST_DAY - parent.founding_date).days)
        founded = parent.founding_date + dt.timedelta(days=r.randrange(span))
        legacy = founded < REFORM_DAY
        where = place_name(unit.province_name if legacy else unit.current_province_name)
        main = next(a for a in parent.activities if a.main)
        others = [a for a in parent.activities if not a.main]
        acts = sorted([main, *r.sample(others, k=min(len(others), 2))], key=lambda a: a.code)
        head = self.person(province, founded, BRANCH_HEAD, "Giám đốc chi nhánh")
        number = len(parent.branches) + 1
        code = f"{parent.code}-{number:03d}"
        parent.branches.append(code)
        name = f"CHI NHÁNH {parent.name} TẠI {where}"
        if name in self.names:  # a second branch in the same province is numbered
            name = f"CHI NHÁNH SỐ {number} {parent.name} TẠI {where}"
        status = parent.status if parent.status != ACTIVE else (ACTIVE if r.random() < 0.9 else SUSPENDED)
        return self.add(Enterprise(
            code=code, name=name, short_name="",
            foreign_name=f"{parent.foreign_name} - {ascii_upper(where)} BRANCH" if parent.foreign_name else "",
            legal_form=BRANCH, founding_date=founded, status=status, capital=None,
            head_office=head_office(unit, self.street(), legacy), activities=tuple(acts), members=(head,),
            legacy_codes=legacy, parent=parent.code))

    def run(self) -> None:
        while len(self.enterprises) < self.count:
            e = self.enterprise()
            if e.legal_form != SOLE and self.r.random() < 0.15:
                for _ in range(self.r.choice((1, 1, 2))):
                    if len(self.enterprises) < self.count:
                        self.branch(e)


# --- fixed enterprises ------------------------------------------------------------------
# Always generated first, whatever the seed, so docs, demos and tests can name them.

FIXED_CODES = {
    "anphat": "0101234565",          # TNHH 2 members, Hà Nội, pre-2025 codes, active
    "anphat_danang": "0101234565-001",  # its branch in Đà Nẵng
    "saigonxanh": "0307654323",      # joint-stock, Hồ Chí Minh City, pre-2025 codes
    "bienxanh": "0401987658",        # one-member TNHH, Đà Nẵng, registered 08/2025: current codes
    "vungtau": "3500123453",         # sole proprietorship, Bà Rịa - Vũng Tàu (77, merged), dissolved
    "songhuong": "3300567892",       # TNHH 2 members, Huế, suspended
    "hoian": "4001239870",           # joint-stock, Quảng Nam (49, merged), not at its registered address
}


def _acts(main: str, *others: str) -> tuple[Activity, ...]:
    return tuple(Activity(c, VSIC[c], c == main) for c in sorted((main, *others)))


def _fixed(g: _Generator) -> None:
    first = {p: g.units[p][0] for p in ("01", "79", "48", "77", "46", "49") if p in g.units}
    if len(first) < 6:
        raise ValueError("admin units lack one of the provinces 01, 79, 48, 77, 46, 49")
    for code in FIXED_CODES.values():
        g.codes.add(code)
    d = dt.date
    m = Member
    anphat = g.add(Enterprise(
        FIXED_CODES["anphat"], "CÔNG TY TNHH THƯƠNG MẠI VÀ DỊCH VỤ AN PHÁT", "AN PHAT CO., LTD",
        "AN PHAT TRADING AND SERVICES COMPANY LIMITED", MULTI_MEMBER, d(2012, 3, 15), ACTIVE, 5_000_000_000,
        head_office(first["01"], "Số 12 Lê Lợi", True), _acts("4690", "4632", "4649", "4933", "5210"),
        (m("NGUYỄN VĂN AN", CAPITAL_MEMBER, "Giám đốc", True, "001085012345"),
         m("TRẦN THỊ BÌNH", CAPITAL_MEMBER, None, False, "001188012346")), True))
    anphat.branches.append(FIXED_CODES["anphat_danang"])
    g.add(Enterprise(
        FIXED_CODES["anphat_danang"], "CHI NHÁNH CÔNG TY TNHH THƯƠNG MẠI VÀ DỊCH VỤ AN PHÁT TẠI ĐÀ NẴNG", "",
        "AN PHAT TRADING AND SERVICES COMPANY LIMITED - DA NANG BRANCH", BRANCH, d(2019, 6, 2), ACTIVE, None,
        head_office(first["48"], "Số 45 Nguyễn Văn Linh", True), _acts("4690", "4632"),
        (m("LÊ THỊ MAI", BRANCH_HEAD, "Giám đốc chi nhánh", False, "048192054321"),), True,
        parent=anphat.code))
    g.add(Enterprise(
        FIXED_CODES["saigonxanh"], "CÔNG TY CỔ PHẦN CÔNG NGHỆ PHẦN MỀM SÀI GÒN XANH", "SAIGON XANH JSC",
        "SAIGON XANH SOFTWARE TECHNOLOGY JOINT STOCK COMPANY", JOINT_STOCK, d(2008, 8, 20), ACTIVE,
        20_000_000_000, head_office(first["79"], "Số 88 Nguyễn Huệ", True),
        _acts("6201", "6202", "6209", "6311", "4651"),
        (m("LÊ MINH TUẤN", FOUNDER, "Tổng giám đốc", True, "079078001234"),
         m("VÕ THỊ THU HÀ", FOUNDER, None, False, "079181002345"),
         m("ĐẶNG QUỐC BẢO", FOUNDER, None, False, None)), True))
    g.add(Enterprise(
        FIXED_CODES["bienxanh"], "CÔNG TY TNHH MỘT THÀNH VIÊN DU LỊCH BIỂN XANH", "", "", ONE_MEMBER,
        d(2025, 8, 12), ACTIVE, 1_500_000_000, head_office(first["48"], "Số 210 Võ Văn Kiệt", False),
        _acts("7912", "7911", "5510"),
        (m("HỒ NGỌC LAN", OWNER, "Chủ tịch công ty kiêm Giám đốc", True, "048190003456"),), False))
    g.add(Enterprise(
        FIXED_CODES["vungtau"], "DOANH NGHIỆP TƯ NHÂN THỦY SẢN LỘC PHÁT", "", "", SOLE, d(2003, 11, 10),
        DISSOLVED, 800_000_000, head_office(first["77"], "Số 5 Trần Phú", True), _acts("1020", "46322", "0321"),
        (m("TRƯƠNG VĂN LỘC", SOLE_OWNER, "Chủ doanh nghiệp", True, "077065004567"),), True))
    g.add(Enterprise(
        FIXED_CODES["songhuong"], "CÔNG TY TNHH DU LỊCH SÔNG HƯƠNG", "SONG HUONG TRAVEL CO., LTD",
        "SONG HUONG TRAVEL COMPANY LIMITED", MULTI_MEMBER, d(2016, 4, 1), SUSPENDED, 2_000_000_000,
        head_office(first["46"], "Số 3 Lê Lợi", True), _acts("7912", "5510", "55101"),
        (m("PHAN VĂN HÙNG", CAPITAL_MEMBER, "Chủ tịch Hội đồng thành viên", True, "046080005678"),
         m("NGÔ THỊ HẠNH", CAPITAL_MEMBER, None, False, "046185006789")), True))
    g.add(Enterprise(
        FIXED_CODES["hoian"], "CÔNG TY CỔ PHẦN NỘI THẤT PHỐ HỘI", "PHO HOI FURNITURE JSC",
        "PHO HOI FURNITURE JOINT STOCK COMPANY", JOINT_STOCK, d(2010, 9, 9), AWAY, 10_000_000_000,
        head_office(first["49"], "Số 21 Hùng Vương", True), _acts("3100", "1610", "4649"),
        (m("HUỲNH VĂN THÀNH", FOUNDER, "Chủ tịch Hội đồng quản trị", True, "049072007890"),
         m("ĐỖ THỊ KIM NGÂN", FOUNDER, None, False, "049183008901"),
         m("BÙI QUANG HUY", FOUNDER, None, False, "049075009012")), True))
    for e in g.enterprises:
        g.ids.update(x.id_number for x in e.members if x.id_number)


def generate(count: int = 300, seed: int = 1, admin_units: str | Path | None = None) -> Dataset:
    """Build ``count`` enterprises and branches (the fixed ones first), deterministic for a seed."""
    if count < len(FIXED_CODES):
        raise ValueError(f"count must be at least {len(FIXED_CODES)}")
    g = _Generator(count, seed, load_units(str(admin_units) if admin_units else None))
    _fixed(g)
    g.run()
    return Dataset(g.enterprises, {e.code: e for e in g.enterprises}, seed)
