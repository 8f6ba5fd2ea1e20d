"""The 12-digit personal ID (số định danh cá nhân) and the old 9-digit ID card.

Digits 1-3: province (or country) of birth registration; digit 4: century and
gender (0/1 born 1900s male/female, 2/3 2000s, 4/5 2100s, ...); digits 5-6: the
last two digits of the birth year; digits 7-12: random.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from lgsp.errors import ErrorCode

# Pre-2025 two-digit province codes (Decision 124/2004/QĐ-TTg). Personal IDs
# issued before and after the 2025 reorganisation carry these as "0" + code.
PROVINCE_CODES = frozenset(
    "01 02 04 06 08 10 11 12 14 15 17 19 20 22 24 25 26 27 30 31 33 34 35 36 37 38 40 "
    "42 44 45 46 48 49 51 52 54 56 58 60 62 64 66 67 68 70 72 74 75 77 79 80 82 83 84 "
    "86 87 89 91 92 93 94 95 96".split()
)


class PersonalIdError(ValueError):
    """Why a personal ID is refused; ``code`` is the stable error code."""

    def __init__(self, code: ErrorCode, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class PersonalId:
    value: str
    province_code: str | None  # two-digit code, None for the old 9-digit card
    birth_year: int | None
    gender: str | None  # "male" / "female"

    @property
    def is_old_card(self) -> bool:
        return len(self.value) == 9


def parse(value: str, *, today: _dt.date | None = None) -> PersonalId:
    """Parse and check a personal ID; raise PersonalIdError if malformed or impossible."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) not in (9, 12):
        raise PersonalIdError(
            "personal_id.malformed",
            "A personal ID is 12 digits (or 9 digits for the old identity card).",
        )
    if len(value) == 9:
        return PersonalId(value, None, None, None)
    if value[0] != "0" or value[1:3] not in PROVINCE_CODES:
        raise PersonalIdError(
            "personal_id.impossible",
            f"Digits 1-3 ({value[:3]}) are not a province code of birth registration.",
        )
    century_gender = int(value[3])
    year = 1900 + 100 * (century_gender // 2) + int(value[4:6])
    if year > (today or _dt.date.today()).year:
        raise PersonalIdError(
            "personal_id.impossible",
            "Digits 4-6 give a birth year in the future.",
        )
    return PersonalId(value, value[1:3], year, "female" if century_gender % 2 else "male")


def make(province_code: str, birth_year: int, gender: str, serial: int) -> str:
    """Build a personal ID consistent with its birth year and gender (for simulators)."""
    century = (birth_year - 1900) // 100
    digit = 2 * century + (1 if gender == "female" else 0)
    return f"0{province_code}{digit}{birth_year % 100:02d}{serial % 1_000_000:06d}"
