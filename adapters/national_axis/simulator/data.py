"""The national axis's synthetic starting state: exchange centres (system id + secret) and their agencies.

Agency codes follow QCVN 102 (NNN.NN.NN.XNN; level-1 letter G = ministry-level body, H = province).
Names are real kinds of bodies; which code belongs to which body is synthetic (*assumption*), except
000.00.00.G22 (the Government Office) and 000.00.00.H41 (Nghệ An), seen in public integration examples.
"""
from __future__ import annotations

from dataclasses import dataclass

# The province this simulator serves (the LGSP's own exchange centre) and two other centres whose
# agencies send to and receive from the province in tests and the demo.
PROVINCE_SYSTEM = ("000.00.00.H30", "lgsp-demo-secret")
OTHER_SYSTEMS = {"000.00.00.G22": "vpcp-demo-secret", "000.00.00.H41": "nghean-demo-secret"}


@dataclass
class Agency:
    code: str
    name: str
    pcode: str = ""          # parent agency code ("" for a level-1 body)
    mail: str = ""
    mobile: str = ""
    fax: str = ""
    system: str = ""         # the exchange centre that registered it (its documents are pending there)

    def wire(self) -> dict[str, str]:
        return {"pcode": self.pcode, "code": self.code, "name": self.name, "mail": self.mail,
                "mobile": self.mobile, "fax": self.fax}


SEED = [
    Agency("000.00.00.G22", "Văn phòng Chính phủ", mail="vanthu@chinhphu.vn", system="000.00.00.G22"),
    Agency("000.00.00.G12", "Bộ Nội vụ", mail="vanthu@moha.gov.vn", system="000.00.00.G22"),
    Agency("000.00.00.G17", "Bộ Khoa học và Công nghệ", mail="vanthu@mst.gov.vn", system="000.00.00.G22"),
    Agency("000.00.00.H41", "UBND Tỉnh Nghệ An", mail="nghean@gov.vn", mobile="0383840418", fax="0383843049",
           system="000.00.00.H41"),
    Agency("000.00.01.H41", "Sở Nội vụ tỉnh Nghệ An", pcode="000.00.00.H41", mail="snv@nghean.gov.vn",
           system="000.00.00.H41"),
    Agency("000.00.00.H30", "UBND tỉnh (LGSP demo)", mail="vanthu@tinh.gov.vn", system=PROVINCE_SYSTEM[0]),
]


def seed() -> dict[str, Agency]:
    return {a.code: Agency(**a.__dict__) for a in SEED}
