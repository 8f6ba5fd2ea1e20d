"""Synthetic citizens for the population-database simulator.

Deterministic for a given seed and administrative-units file. People come in
households (head, spouse, children, sometimes a widowed parent); adult children
later move out to head households of their own, so fathers and mothers are often
citizens of the same dataset. Personal IDs agree with the birth-registration
province, the birth year and the gender. About 70% of records carry pre-2025
unit codes (province, district, commune), the rest current codes (province,
commune, no district), as records of the real database do after the 2025
reorganisation.

Codes follow the population database's own numbering (see README.md beside
this file): gender 1/2, ethnic group 1 Kinh ..., religion 0 none ..., marital
status 1-4, blood type 1-4.
"""
from __future__ import annotations

import datetime as dt
import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lgsp.sdk import codelists, personal_id

MALE, FEMALE = "1", "2"  # GioiTinh in the population database
SINGLE, MARRIED, DIVORCED, WIDOWED = "1", "2", "3", "4"  # TinhTrangHonNhan
MARITAL_CODES = frozenset((SINGLE, MARRIED, DIVORCED, WIDOWED))
ALIVE, DECEASED, MISSING = "1", "2", "3"  # TinhTrang of XacMinhTinhTrangChetMatTich
VITAL_CODES = frozenset((ALIVE, DECEASED, MISSING))
BLOOD_TYPES = {"1": "O", "2": "A", "3": "B", "4": "AB"}  # NhomMau, as lgsp/codelists assumes
ETHNIC_GROUPS = {"1": "Kinh", "2": "Tày", "3": "Thái", "4": "Hoa", "5": "Khơ-me",
                 "6": "Mường", "7": "Nùng", "8": "HMông", "9": "Dao"}
RELIGIONS = {"0": "Không", "1": "Phật giáo", "2": "Công giáo", "3": "Phật giáo Hòa Hảo",
             "4": "Hồi giáo", "5": "Cao Đài", "8": "Tin Lành"}
HEAD, WIFE, HUSBAND, CHILD, FATHER, MOTHER = "Chủ hộ", "Vợ", "Chồng", "Con", "Cha", "Mẹ"
LEGACY_SHARE = 0.7  # records still carrying pre-2025 unit codes
FIRST_YEAR, LAST_YEAR = 1930, 2024
REFERENCE_YEAR = 2025  # ages are reckoned in this year, so output never depends on the clock

# --- names -------------------------------------------------------------------
# Family names with approximate national frequencies (percent).
FAMILY_NAMES: tuple[tuple[str, float], ...] = (
    ("Nguyễn", 38.0), ("Trần", 11.0), ("Lê", 9.5), ("Phạm", 7.0), ("Hoàng", 3.0),
    ("Huỳnh", 2.1), ("Phan", 4.5), ("Vũ", 2.2), ("Võ", 1.7), ("Đặng", 2.1),
    ("Bùi", 2.0), ("Đỗ", 1.4), ("Hồ", 1.3), ("Ngô", 1.3), ("Dương", 1.0),
    ("Lý", 0.5), ("Đinh", 0.9), ("Trương", 0.8), ("Lâm", 0.5), ("Mai", 0.5),
    ("Cao", 0.4), ("Đoàn", 0.5), ("Lương", 0.4), ("Tạ", 0.3), ("Hà", 0.4),
    ("Lưu", 0.3), ("Trịnh", 0.4), ("Chu", 0.2), ("Kiều", 0.1), ("Tô", 0.2),
)
MIDDLE_OLD = {MALE: (("Văn", 70), ("Đức", 8), ("Hữu", 7), ("Đình", 6), ("Công", 5), ("Xuân", 4)),
              FEMALE: (("Thị", 82), ("Ngọc", 5), ("Thu", 4), ("Kim", 4), ("Thanh", 3), ("Hồng", 2))}
MIDDLE_NEW = {MALE: (("Văn", 22), ("Minh", 14), ("Đức", 10), ("Quang", 8), ("Hoàng", 8), ("Gia", 8),
                     ("Anh", 6), ("Tuấn", 5), ("Hữu", 5), ("Thành", 5), ("Bảo", 5), ("Đình", 4)),
              FEMALE: (("Thị", 25), ("Ngọc", 14), ("Thu", 9), ("Thanh", 8), ("Phương", 7),
                       ("Minh", 7), ("Thùy", 7), ("Bảo", 6), ("Khánh", 6), ("Hồng", 5), ("Mai", 6))}
GIVEN = {
    MALE: ("An", "Bình", "Cường", "Dũng", "Duy", "Đạt", "Hải", "Hiếu", "Hoàng", "Hùng", "Huy",
           "Khang", "Khoa", "Khôi", "Kiên", "Lâm", "Long", "Minh", "Nam", "Nghĩa", "Phong", "Phúc",
           "Quân", "Sơn", "Tài", "Thắng", "Thành", "Toàn", "Trung", "Tuấn", "Tùng", "Việt",
           "Vinh", "Bảo", "Đông", "Hưng", "Lộc", "Thịnh", "Trí", "Quang"),
    FEMALE: ("An", "Anh", "Châu", "Chi", "Dung", "Giang", "Hà", "Hạnh", "Hằng", "Hiền", "Hoa",
             "Hồng", "Hương", "Huyền", "Lan", "Linh", "Loan", "Mai", "My", "Nga", "Ngân", "Ngọc",
             "Nhung", "Oanh", "Phương", "Quỳnh", "Tâm", "Thảo", "Thủy", "Trang", "Trinh", "Uyên",
             "Vân", "Vy", "Yến", "Liên", "Lệ", "Diệp", "Xuân", "Nhi"),
}
# A few mothers of foreign nationality (name as written in their papers).
FOREIGN_MOTHERS = (("KR", "Kim Ji Yeon"), ("CN", "Lý Tú Mai"), ("LA", "Keo Manivanh"),
                   ("KH", "Sok Chanthy"), ("TW", "Trần Mỹ Linh"))

# --- places ------------------------------------------------------------------
# Pre-2025 province codes, used to give regions their ethnic and religious mix.
MOUNTAIN = frozenset("02 04 06 08 10 11 12 14 15 17 19 20 24".split())
KHMER = frozenset("84 91 94 95".split())
SOUTH = frozenset("70 72 74 75 77 79 80 82 83 84 86 87 89 91 92 93 94 95 96".split())
CITIES = ("01", "79", "48", "31", "92")  # where people often live away from home
STREETS = ("Lê Lợi", "Trần Hưng Đạo", "Nguyễn Trãi", "Hai Bà Trưng", "Lý Thường Kiệt",
           "Quang Trung", "Nguyễn Huệ", "Phan Đình Phùng", "Hùng Vương", "Lê Duẩn",
           "Điện Biên Phủ", "Võ Thị Sáu", "Nguyễn Thị Minh Khai", "Trần Phú", "Bà Triệu")
HAMLETS = ("Đông", "Đoài", "Thượng", "Hạ", "Trung", "An Phú", "Tân Lập", "Phú Mỹ",
           "Bình An", "Hòa Bình", "Tân Thành", "Thắng Lợi", "Đồng Tâm", "Phú Thọ")


@dataclass(frozen=True)
class Commune:
    """A pre-2025 commune with the current unit it now belongs to."""

    code: str
    name: str
    district: str
    province: str
    current: str
    current_province: str


@dataclass(frozen=True)
class AdminUnits:
    communes: tuple[Commune, ...]
    weights: tuple[float, ...]  # cumulative, for rng.choices
    by_province: dict[str, tuple[Commune, ...]]


@dataclass(frozen=True)
class Address:
    """One address as the population database sends it."""

    province: str
    district: str | None
    commune: str
    detail: str | None = None
    country: str = "VN"


@dataclass(frozen=True)
class PersonRef:
    """A relative or household head as referenced from a citizen record."""

    full_name: str
    nationality: str = "VN"
    personal_id: str | None = None
    old_id: str | None = None


@dataclass(eq=False)  # identity: households hold and remove citizens
class Citizen:
    personal_id: str
    old_id: str | None
    family: str
    middle: str
    given: str
    gender: str
    birth_year: int
    birth_date: str | None  # yyyyMMdd; None when only the year is on record
    ethnicity: str
    religion: str
    marital: str
    blood: str | None
    legacy_codes: bool
    birth_registration: Address
    hometown: Address
    permanent: Address | None = None
    current: Address | None = None
    nationality: str = "VN"
    father: PersonRef | None = None
    mother: PersonRef | None = None
    spouse: PersonRef | None = None
    representative: PersonRef | None = None
    household: str | None = None  # SoSoHoKhau
    relation: str | None = None  # QuanHe to the household head
    head: PersonRef | None = None
    vital: str = ALIVE  # alive, deceased or missing (only the fixed citizens "tu" and "nam" are not alive)
    vital_date: str | None = None  # yyyyMMdd of the death or of the missing-person declaration
    # Units behind the addresses, kept to re-render them when a citizen moves.
    hometown_unit: Commune | None = field(default=None, repr=False)

    @property
    def full_name(self) -> str:
        return " ".join(p for p in (self.family, self.middle, self.given) if p)

    @property
    def ref(self) -> PersonRef:
        return PersonRef(self.full_name, self.nationality, self.personal_id, self.old_id)


@dataclass
class Dataset:
    citizens: list[Citizen]
    by_id: dict[str, Citizen]
    by_old_id: dict[str, Citizen]
    households: dict[str, list[Citizen]]
    seed: int

    def find(self, personal_id: str | None = None, old_id: str | None = None) -> Citizen | None:
        if personal_id is not None:
            return self.by_id.get(personal_id)
        return self.by_old_id.get(old_id or "")


# --- administrative units -------------------------------------------------------

def default_admin_units_path() -> Path:
    return codelists.file_of("admin-units")


@functools.lru_cache(maxsize=4)
def load_admin_units(path: str | Path | None = None) -> AdminUnits:
    """Read the units file once; keep old communes whose province and new unit are known."""
    path = Path(path) if path else default_admin_units_path()
    doc = codelists.load_file(path)
    current_province = {c["code"]: c["province"] for c in doc.get("communes_current") or ()}
    province_now = {p["code"]: p.get("current") for p in doc.get("provinces_legacy") or ()}
    communes = []
    for c in doc.get("communes_legacy") or ():
        cur = c.get("current")
        now = current_province.get(cur) or province_now.get(c["province"])
        # The ID prefix comes from the old province, so it must be a real one.
        if c["province"] in personal_id.PROVINCE_CODES and cur in current_province and now:
            communes.append(Commune(c["code"], c.get("name") or "", c.get("district") or "",
                                    c["province"], cur, now))
    if not communes:
        raise ValueError(f"{path}: no usable communes_legacy entries")
    by_province: dict[str, list[Commune]] = {}
    for c in communes:
        by_province.setdefault(c.province, []).append(c)
    weights, total = [], 0.0
    for c in communes:
        total += _commune_weight(c)
        weights.append(total)
    return AdminUnits(tuple(communes), tuple(weights),
                      {k: tuple(v) for k, v in by_province.items()})


def _commune_weight(c: Commune) -> float:
    # Urban wards hold far more people than rural communes.
    if c.name.startswith("Phường"):
        return 3.0
    if c.name.startswith("Thị trấn"):
        return 1.5
    return 1.0


def render(unit: Commune, detail: str | None, legacy: bool) -> Address:
    """An address in pre-2025 codes, or in current codes (no district)."""
    if legacy:
        return Address(unit.province, unit.district, unit.code, detail)
    return Address(unit.current_province, None, unit.current, detail)


# --- generation ------------------------------------------------------------------

def _cumulative(pairs: Sequence[tuple[str, float]]) -> tuple[tuple[str, ...], list[float]]:
    values, cum, total = [], [], 0.0
    for value, weight in pairs:
        total += weight
        values.append(value)
        cum.append(total)
    return tuple(values), cum


_FAMILY = _cumulative(FAMILY_NAMES)
_MIDDLE_OLD = {g: _cumulative(v) for g, v in MIDDLE_OLD.items()}
_MIDDLE_NEW = {g: _cumulative(v) for g, v in MIDDLE_NEW.items()}
_BLOOD = _cumulative((("1", 42), ("3", 30), ("2", 22), ("4", 6)))  # O, B, A, AB
_ETHNIC_MOUNTAIN = _cumulative((("1", 45), ("2", 15), ("3", 12), ("6", 6), ("7", 8), ("8", 9), ("9", 5)))
_ETHNIC_KHMER = _cumulative((("1", 70), ("5", 27), ("4", 3)))
_ETHNIC_SOUTH = _cumulative((("1", 93), ("4", 6), ("5", 1)))
_ETHNIC_OTHER = _cumulative((("1", 97), ("6", 1), ("3", 1), ("2", 1)))
_RELIGION_SOUTH = _cumulative((("0", 70), ("1", 12), ("2", 7), ("3", 5), ("5", 4), ("8", 1), ("4", 1)))
_RELIGION_OTHER = _cumulative((("0", 85), ("1", 7), ("2", 7), ("8", 1)))


class _Generator:
    def __init__(self, count: int, seed: int, units: AdminUnits):
        self.r = random.Random(seed)
        self.count = count
        self.units = units
        self.citizens: list[Citizen] = []
        self.households: dict[str, list[Citizen]] = {}
        self.ids: set[str] = set()
        self.old_ids: set[str] = set()
        self.movers: list[Citizen] = []  # adult children who may found a household
        self.books = 0

    def pick(self, table: tuple[tuple[str, ...], list[float]]) -> str:
        return self.r.choices(table[0], cum_weights=table[1])[0]

    # -- units and addresses
    def commune(self, province: str | None = None) -> Commune:
        pool = self.units.by_province.get(province or "")
        if pool:
            return self.r.choice(pool)
        return self.r.choices(self.units.communes, cum_weights=self.units.weights)[0]

    def near(self, unit: Commune, same_province: float) -> Commune:
        return self.commune(unit.province) if self.r.random() < same_province else self.commune()

    def detail(self, unit: Commune) -> str:
        r = self.r
        if unit.name.startswith("Phường"):
            if r.random() < 0.5:
                return f"Số {r.randint(1, 300)} {r.choice(STREETS)}"
            return f"Số {r.randint(1, 80)}, ngõ {r.randint(1, 200)}, phố {r.choice(STREETS)}"
        if unit.province in MOUNTAIN and r.random() < 0.5:
            return f"Bản {r.choice(HAMLETS)}"
        if unit.province in SOUTH:
            return f"Ấp {r.choice(HAMLETS)}"
        return f"Thôn {r.choice(HAMLETS)}" if r.random() < 0.7 else f"Xóm {r.randint(1, 15)}"

    def culture(self, unit: Commune) -> tuple[str, str]:
        """Ethnic group and religion of a household, by region."""
        p = unit.province
        table = (_ETHNIC_MOUNTAIN if p in MOUNTAIN else _ETHNIC_KHMER if p in KHMER
                 else _ETHNIC_SOUTH if p in SOUTH else _ETHNIC_OTHER)
        ethnic = self.pick(table)
        if ethnic == "5":  # Khmer communities are overwhelmingly Theravada Buddhist
            return ethnic, "1" if self.r.random() < 0.9 else "0"
        return ethnic, self.pick(_RELIGION_SOUTH if p in SOUTH else _RELIGION_OTHER)

    # -- people
    def name(self, gender: str, year: int) -> tuple[str, str]:
        r = self.r
        table = _MIDDLE_OLD[gender] if year < 1975 else _MIDDLE_NEW[gender]
        middle = self.pick(table)
        roll = r.random()
        if year >= 1990 and roll < 0.06:  # two-word middle names
            middle = f"{middle} {self.pick(_MIDDLE_NEW[gender])}"
        elif roll > 0.985:
            middle = ""
        given = r.choice(GIVEN[gender])
        while given == middle:
            given = r.choice(GIVEN[gender])
        return middle, given

    def new_id(self, unit: Commune, year: int, gender: str) -> str:
        word = "female" if gender == FEMALE else "male"
        while True:
            pid = personal_id.make(unit.province, year, word, self.r.randrange(1_000_000))
            if pid not in self.ids:
                self.ids.add(pid)
                return pid

    def new_old_id(self) -> str:
        while True:
            value = f"{self.r.randrange(10_000_000, 400_000_000):09d}"
            if value not in self.old_ids:
                self.old_ids.add(value)
                return value

    def birth_date(self, year: int) -> str | None:
        if year < 1960 and self.r.random() < 0.08:
            return None  # old records often hold the year only
        day = dt.date(year, 1, 1) + dt.timedelta(days=self.r.randrange(365))
        return day.strftime("%Y%m%d")

    def person(self, gender: str, year: int, family: str, born: Commune, hometown: Commune,
               culture: tuple[str, str]) -> Citizen:
        r = self.r
        legacy = r.random() < LEGACY_SHARE
        middle, given = self.name(gender, year)
        old_id = self.new_old_id() if year <= 2005 and r.random() < 0.45 else None
        blood = self.pick(_BLOOD) if r.random() < 0.7 else None
        return Citizen(
            personal_id=self.new_id(born, year, gender), old_id=old_id, family=family,
            middle=middle, given=given, gender=gender, birth_year=year,
            birth_date=self.birth_date(year), ethnicity=culture[0], religion=culture[1],
            marital=SINGLE, blood=blood, legacy_codes=legacy,
            birth_registration=render(born, None, legacy),
            hometown=render(hometown, None, legacy), hometown_unit=hometown,
        )

    def outsider_parent(self, gender: str, year: int, family: str | None) -> PersonRef:
        """A parent who is not in the dataset: name and nationality only."""
        if gender == FEMALE and self.r.random() < 0.01:
            nationality, name = self.r.choice(FOREIGN_MOTHERS)
            return PersonRef(name, nationality)
        middle, given = self.name(gender, year)
        fam = family or self.pick(_FAMILY)
        return PersonRef(" ".join(p for p in (fam, middle, given) if p))

    def fresh_adult(self, gender: str, year: int, home: Commune, culture: tuple[str, str],
                    family: str | None = None) -> Citizen:
        family = family or self.pick(_FAMILY)
        hometown = self.near(home, 0.7)
        born = hometown if self.r.random() < 0.7 else home
        c = self.person(gender, year, family, born, hometown, culture)
        c.father = self.outsider_parent(MALE, year - 28, family)
        c.mother = self.outsider_parent(FEMALE, year - 25, None)
        return c

    # -- households
    def join(self, c: Citizen, book: str, head: Citizen, relation: str, home: Commune,
             detail: str) -> None:
        """Register c in a household: book, head, and home as permanent address."""
        if c.household:
            self.households[c.household].remove(c)
        c.household, c.relation, c.head = book, relation, head.ref
        c.permanent = render(home, detail, c.legacy_codes)
        c.current = c.permanent
        age = REFERENCE_YEAR - c.birth_year
        if 18 <= age <= 40 and self.r.random() < 0.12:  # working away from home
            away = self.commune(self.r.choice(CITIES))
            c.current = render(away, self.detail(away), c.legacy_codes)
        self.households.setdefault(book, []).append(c)

    def add(self, c: Citizen) -> Citizen:
        self.citizens.append(c)
        return c

    def new_book(self, unit: Commune) -> str:
        self.books += 1
        return f"{unit.province}{self.r.randrange(100_000):05d}{self.books:05d}"  # 12 digits

    def household(self) -> None:
        r = self.r
        room = self.count - len(self.citizens)
        home = self.commune()
        detail, book = self.detail(home), self.new_book(home)
        culture = self.culture(home)
        mover = self.movers.pop(r.randrange(len(self.movers))) if (
            self.movers and r.random() < 0.4) else None
        # Couples most of the time; otherwise one adult, possibly with children.
        couple = mover is not None or r.random() < 0.85
        if mover is not None:
            year = mover.birth_year
        else:
            year = int(r.triangular(1945, 1998, 1978)) if couple else int(r.triangular(1955, 2003, 1992))
        elder = mover is None and couple and r.random() < 0.2 and year - 35 >= FIRST_YEAR
        kids = r.choices((0, 1, 2, 3, 4), weights=(10, 25, 40, 18, 7))[0] if (
            couple or r.random() < 0.4) else 0
        # Fit the plan into the room left: drop children, then the elder, then the spouse.
        def need() -> int:
            adults = (2 if couple else 1) - (mover is not None)
            return adults + elder + kids

        while kids and need() > room:
            kids -= 1
        if elder and need() > room:
            elder = False
        if couple and mover is None and need() > room:
            couple = False

        if couple:
            husband, wife = self.couple(mover, year, home, culture)
            head = husband
        else:
            gender = MALE if r.random() < 0.55 else FEMALE
            head = self.add(self.fresh_adult(gender, year, home, culture))
            head.marital = (SINGLE if year > 1990 or r.random() < 0.4
                            else DIVORCED if r.random() < 0.6 else WIDOWED)
            husband, wife = (head, None) if gender == MALE else (None, head)
        self.join(head, book, head, HEAD, home, detail)
        if couple:
            self.join(wife, book, head, WIFE, home, detail)
        if elder:
            self.elder(head, book, home, detail, culture)
        if kids:
            self.children(kids, husband, wife, book, head, home, detail, culture)

    def couple(self, mover: Citizen | None, year: int, home: Commune,
               culture: tuple[str, str]) -> tuple[Citizen, Citizen]:
        r = self.r
        gap = r.randint(-2, 7)  # husbands are usually a few years older
        if mover is not None and mover.gender == MALE:
            husband = mover
            wife = self.add(self.fresh_adult(FEMALE, min(year + gap, 2004), home, culture))
        elif mover is not None:
            wife = mover
            husband = self.add(self.fresh_adult(MALE, max(year - gap, FIRST_YEAR), home, culture))
        else:
            husband = self.add(self.fresh_adult(MALE, year, home, culture))
            wife = self.add(self.fresh_adult(FEMALE, min(year + gap, 2004), home, culture))
        husband.marital = wife.marital = MARRIED
        husband.spouse, wife.spouse = wife.ref, husband.ref
        return husband, wife

    def elder(self, head: Citizen, book: str, home: Commune, detail: str,
              culture: tuple[str, str]) -> None:
        """A widowed parent of the head living with the family."""
        r = self.r
        gender = MALE if r.random() < 0.35 else FEMALE
        year = head.birth_year - r.randint(22, 35)
        family = head.family if gender == MALE else self.pick(_FAMILY)
        hometown = head.hometown_unit or home
        parent = self.add(self.person(gender, year, family, hometown, hometown, culture))
        parent.marital = WIDOWED
        parent.father = self.outsider_parent(MALE, year - 28, family)
        parent.mother = self.outsider_parent(FEMALE, year - 25, None)
        deceased = self.outsider_parent(FEMALE if gender == MALE else MALE, year,
                                        None if gender == MALE else head.family)
        if gender == MALE:
            head.father, head.mother = parent.ref, deceased
        else:
            head.mother, head.father = parent.ref, deceased
        self.join(parent, book, head, FATHER if gender == MALE else MOTHER, home, detail)

    def children(self, n: int, father: Citizen | None, mother: Citizen | None, book: str,
                 head: Citizen, home: Commune, detail: str, culture: tuple[str, str]) -> None:
        r = self.r
        parent = mother or father
        assert parent is not None
        base = mother.birth_year if mother else parent.birth_year + 2  # mother's year
        years = sorted({min(base + r.randint(20, 38), LAST_YEAR) for _ in range(n)})
        family = father.family if father else self.pick(_FAMILY)
        dad = father.ref if father else self.outsider_parent(MALE, base - 2, family)
        mom = mother.ref if mother else self.outsider_parent(FEMALE, base, None)
        for year in years:
            gender = MALE if r.random() < 0.51 else FEMALE
            hometown = (father or parent).hometown_unit or home
            born = home if r.random() < 0.85 else hometown
            child = self.add(self.person(gender, year, family, born, hometown, culture))
            child.father, child.mother = dad, mom
            if REFERENCE_YEAR - year < 18:
                child.representative = dad if father else mom
            self.join(child, book, head, CHILD, home, detail)
            if year <= 1997 and r.random() < 0.6:
                self.movers.append(child)

    def run(self) -> None:
        while len(self.citizens) < self.count:
            self.household()


# --- fixed citizens -----------------------------------------------------------------
# Always generated first, whatever the seed, so docs, demos and tests can name them.

FIXED_IDS = {
    "an": "001085012345",      # Nguyễn Văn An, head of a Hà Nội household, pre-2025 codes
    "binh": "001188012346",    # Trần Thị Bình, his wife, current codes
    "khoi": "001212012347",    # Nguyễn Minh Khôi, their son (minor)
    "ha": "001316012348",      # Nguyễn Ngọc Hà, their daughter (minor), current codes
    "hung": "001055012349",    # Nguyễn Văn Hùng, An's widowed father, living with them
    "mai": "048192054321",     # Lê Thị Mai, single, Đà Nẵng, current codes
    "sau": "079040067890",     # Phạm Văn Sáu, born 1940 (year only on record), HCM City
    "tu": "079048067891",      # Đặng Văn Tư, widower, HCM City: deceased on 2024-02-10
    "nam": "048079054322",     # Võ Văn Nam, single, Đà Nẵng: declared missing on 2019-08-15
}


def _fixed(g: _Generator) -> None:
    """The documented demo citizens (IDs in FIXED_IDS)."""
    hanoi, danang, hcm = (g.units.by_province.get(p, (None,))[0] for p in ("01", "48", "79"))
    if not (hanoi and danang and hcm):
        raise ValueError("admin units lack Hà Nội (01), Đà Nẵng (48) or Hồ Chí Minh (79)")

    def citizen(key: str, family: str, middle: str, given: str, gender: str, date: str | None,
                year: int, unit: Commune, legacy: bool, **extra: Any) -> Citizen:
        pid = FIXED_IDS[key]
        g.ids.add(pid)
        if extra.get("old_id"):
            g.old_ids.add(extra["old_id"])
        c = Citizen(personal_id=pid, old_id=extra.pop("old_id", None), family=family,
                    middle=middle, given=given, gender=gender, birth_year=year, birth_date=date,
                    ethnicity="1", religion=extra.pop("religion", "0"),
                    marital=extra.pop("marital", SINGLE), blood=extra.pop("blood", None),
                    legacy_codes=legacy, birth_registration=render(unit, None, legacy),
                    hometown=render(unit, None, legacy), hometown_unit=unit, **extra)
        return g.add(c)

    an = citizen("an", "Nguyễn", "Văn", "An", MALE, "19850312", 1985, hanoi, True,
                 old_id="012345678", marital=MARRIED, blood="1", mother=PersonRef("Lê Thị Hoa"))
    binh = citizen("binh", "Trần", "Thị", "Bình", FEMALE, "19880721", 1988, hanoi, False,
                   marital=MARRIED, blood="3",
                   father=PersonRef("Trần Văn Minh"), mother=PersonRef("Phạm Thị Thu"))
    an.spouse, binh.spouse = binh.ref, an.ref
    khoi = citizen("khoi", "Nguyễn", "Minh", "Khôi", MALE, "20120905", 2012, hanoi, True,
                   blood="1", father=an.ref, mother=binh.ref, representative=an.ref)
    ha = citizen("ha", "Nguyễn", "Ngọc", "Hà", FEMALE, "20160130", 2016, hanoi, False,
                 father=an.ref, mother=binh.ref, representative=an.ref)
    hung = citizen("hung", "Nguyễn", "Văn", "Hùng", MALE, "19550604", 1955, hanoi, True,
                   old_id="011223344", religion="1", marital=WIDOWED, blood="1",
                   father=PersonRef("Nguyễn Văn Thắng"), mother=PersonRef("Đỗ Thị Lan"))
    an.father = hung.ref
    detail = "Số 12, tổ 3"
    book = "010000000001"
    g.join(an, book, an, HEAD, hanoi, detail)
    for member, relation in ((binh, WIFE), (khoi, CHILD), (ha, CHILD), (hung, FATHER)):
        g.join(member, book, an, relation, hanoi, detail)
        member.current = render(hanoi, detail, member.legacy_codes)  # all live at home
    an.current = an.permanent

    mai = citizen("mai", "Lê", "Thị", "Mai", FEMALE, "19921102", 1992, danang, False, blood="2",
                  father=PersonRef("Lê Văn Tâm"), mother=PersonRef("Hồ Thị Nga"))
    g.join(mai, "480000000002", mai, HEAD, danang, "Số 45 Nguyễn Tất Thành")
    mai.current = mai.permanent
    sau = citizen("sau", "Phạm", "Văn", "Sáu", MALE, None, 1940, hcm, True, old_id="020123456",
                  religion="2", marital=WIDOWED,
                  father=PersonRef("Phạm Văn Bảy"), mother=PersonRef("Ngô Thị Tư"))
    g.join(sau, "790000000003", sau, HEAD, hcm, "Số 7 Hai Bà Trưng")
    sau.current = sau.permanent

    # The documented deceased and missing persons (no one else is): their records stay
    # in the register, as they do nationally, with the status and the date of the event.
    tu = citizen("tu", "Đặng", "Văn", "Tư", MALE, "19480417", 1948, hcm, True, old_id="020987654",
                 religion="1", marital=WIDOWED, vital=DECEASED, vital_date="20240210",
                 father=PersonRef("Đặng Văn Hai"), mother=PersonRef("Lý Thị Ba"))
    g.join(tu, "790000000004", tu, HEAD, hcm, "Số 21 Lê Duẩn")
    tu.current = tu.permanent
    nam = citizen("nam", "Võ", "Văn", "Nam", MALE, "19790923", 1979, danang, False, blood="1",
                  vital=MISSING, vital_date="20190815",
                  father=PersonRef("Võ Văn Quý"), mother=PersonRef("Trương Thị Hạnh"))
    g.join(nam, "480000000005", nam, HEAD, danang, "Số 3 Bạch Đằng")
    nam.current = nam.permanent


def generate(count: int = 3000, seed: int = 1, admin_units: str | Path | None = None) -> Dataset:
    """Build ``count`` citizens (the fixed demo citizens first), deterministic for a seed."""
    if count < len(FIXED_IDS):
        raise ValueError(f"count must be at least {len(FIXED_IDS)}")
    g = _Generator(count, seed, load_admin_units(str(admin_units) if admin_units else None))
    _fixed(g)
    g.run()
    by_old = {c.old_id: c for c in g.citizens if c.old_id}
    return Dataset(g.citizens, {c.personal_id: c for c in g.citizens}, by_old, g.households, seed)
