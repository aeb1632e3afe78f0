"""SYNTHETIC residents for the demo: ID numbers with a valid GB 11643 check character, made up
here (never real people), and invented names, phones and addresses marked as synthetic."""

from __future__ import annotations

import random
from datetime import date, timedelta

from services.intake.domain.identity import check_character

_SURNAMES = "赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张"
_GIVEN = "演示样例虚构模拟合成假设"


def synthetic_id_number(rng: random.Random, region: str) -> str:
    """An 18-character number with a valid check character, born 1950–2005 in ``region``."""
    born = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 55))
    first_17 = f"{region}{born:%Y%m%d}{rng.randrange(1000):03d}"
    return first_17 + check_character(first_17)


def synthetic_applicant(rng: random.Random, station: str) -> dict[str, str]:
    """An applicant as intake expects it; every field invented and labelled synthetic."""
    return {
        "name": rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(2)),
        "id_number": synthetic_id_number(rng, station[:6]),
        "phone": f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}",
        "address": f"演示市合成区样例路{rng.randrange(1, 999)}号（合成数据）",
    }
