"""Synthetic residents for tests and benchmarks: ID numbers with a valid GB 11643 check
character, generated here (never real people), and invented names, phones and addresses."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

from services.intake.domain.identity import check_character

_SURNAMES = "赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张"
_GIVEN = "试验样例虚构模拟演示假设测评编造"
_REGIONS = ("530102", "530103", "530111", "530112", "530181")


@dataclass(frozen=True)
class Person:
    name: str
    id_number: str
    phone: str
    address: str

    def as_applicant(self) -> dict[str, str]:
        return {"name": self.name, "id_number": self.id_number, "phone": self.phone,
                "address": self.address}


def synthetic_id_number(rng: random.Random) -> str:
    born = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 55))
    first_17 = f"{rng.choice(_REGIONS)}{born:%Y%m%d}{rng.randrange(1000):03d}"
    return first_17 + check_character(first_17)


def with_bad_check_character(number: str) -> str:
    wrong = "0" if number[17] != "0" else "1"
    return number[:17] + wrong


def synthetic_person(rng: random.Random) -> Person:
    name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(3))
    return Person(
        name=name, id_number=synthetic_id_number(rng),
        phone=f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}",
        address=f"虚构市合成区样例路{rng.randrange(1, 999)}号（合成数据）",
    )
