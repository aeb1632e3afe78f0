"""Regenerate the synthetic parts of the Kunming (530100) fixture: ``units.csv`` and ``staff.csv``.

Deterministic (fixed seed): running it twice writes identical files. County-level codes and names
are real; every township, station and person is synthetic and marked ``synthetic=true``.
``services.toml`` and ``calendar_overrides.csv`` are hand-maintained configuration.

    .venv/bin/python data/kunming/generate.py
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 530100
CITY = ("530100", "昆明市人力资源和社会保障局")

# (code, name, townships in the fixture, urban district?)  — 133 townships in all
COUNTIES = (
    ("530102", "五华区", 10, True),
    ("530103", "盘龙区", 12, True),
    ("530111", "官渡区", 10, True),
    ("530112", "西山区", 11, True),
    ("530113", "东川区", 8, False),
    ("530114", "呈贡区", 7, True),
    ("530115", "晋宁区", 9, False),
    ("530124", "富民县", 7, False),
    ("530125", "宜良县", 9, False),
    ("530126", "石林彝族自治县", 8, False),
    ("530127", "嵩明县", 8, False),
    ("530128", "禄劝彝族苗族自治县", 13, False),
    ("530129", "寻甸回族彝族自治县", 13, False),
    ("530181", "安宁市", 8, False),
)
COMMUNITY_STATIONS = 449
ENTERPRISE_STATIONS = 22

SYLLABLES = (
    "青云金马碧鸡翠湖松华龙泉安宁福康兴和新明光春东南西北山水林花园桥河田石岭溪塘"
    "峰竹梅兰月星阳秀丰盛平乐永顺德昌荣祥瑞清源"
)
SURNAMES = (
    "王李张刘陈杨赵黄周吴徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡"
    "余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯"
    "龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
GIVEN = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏飞丹玲建国文辉斌宇浩凯"
    "琳雪梅欣怡子轩晨阳佳俊"
)
TRADES = (
    "机械厂", "冶炼厂", "卷烟厂", "水泥厂", "制药厂",
    "纺织厂", "电力公司", "建材公司", "物流园", "食品厂",
)


def _names(rng: random.Random, count: int, suffix: str) -> list[str]:
    chosen: set[str] = set()
    while len(chosen) < count:
        chosen.add(rng.choice(SYLLABLES) + rng.choice(SYLLABLES) + suffix)
    names = sorted(chosen)
    rng.shuffle(names)
    return names


def _person(rng: random.Random) -> str:
    given = rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")
    return rng.choice(SURNAMES) + given


def units(rng: random.Random) -> list[dict[str, str]]:
    rows = [_unit(CITY[0], CITY[1], "city", "", "bureau", False)]
    townships: list[tuple[str, bool]] = []
    for code, name, count, urban in COUNTIES:
        rows.append(_unit(code, f"{name}人力资源和社会保障局", "county", CITY[0], "bureau", False))
        suffixes = ["街道"] if urban else ["镇", "乡"]
        for index, town in enumerate(_names(rng, count, ""), start=1):
            town_code = f"{code}{index:03d}"
            office = f"{town}{suffixes[index % len(suffixes)]}社会保障事务所"
            rows.append(_unit(town_code, office, "township", code, "office", True))
            townships.append((town_code, urban))
    per_township = _spread(rng, len(townships), COMMUNITY_STATIONS)
    enterprise = set(rng.sample(range(len(townships)), ENTERPRISE_STATIONS))
    for position, ((town_code, urban), stations) in enumerate(
        zip(townships, per_township, strict=True)
    ):
        kind = "社区" if urban else "村"
        for index, name in enumerate(_names(rng, stations, f"{kind}服务站"), start=1):
            rows.append(_unit(f"{town_code}{index:03d}", name, "community", town_code, "station",
                              True))
        if position in enterprise:
            name = rng.choice(SYLLABLES) + rng.choice(SYLLABLES) + rng.choice(TRADES) + "企业服务站"
            rows.append(_unit(f"{town_code}901", name, "community", town_code,
                              "enterprise_station", True))
    return rows


def _spread(rng: random.Random, buckets: int, total: int) -> list[int]:
    base, extra = divmod(total, buckets)
    lucky = set(rng.sample(range(buckets), extra))
    return [base + (1 if i in lucky else 0) for i in range(buckets)]


def _unit(code: str, name: str, level: str, parent: str, kind: str, synthetic: bool) -> (
    dict[str, str]
):
    return {"code": code, "name": name, "level": level, "parent": parent, "kind": kind,
            "synthetic": str(synthetic).lower()}


def staff(rng: random.Random, unit_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for unit in unit_rows:
        code, level = unit["code"], unit["level"]
        if level == "city":
            rows += _pair(rng, "supervisor", "supervisor", code)
            rows += _pair(rng, "auditor", "auditor", code)
        elif level == "county":
            rows += _pair(rng, "officer", "county_officer", code)
            rows.append(_member(rng, f"supervisor.{code}", "supervisor", code, "A",
                                f"officer.{code}.a"))
        elif level == "township":
            rows += _pair(rng, "officer", "township_officer", code)
            rows.append(_member(rng, f"supervisor.{code}", "supervisor", code, "A",
                                f"officer.{code}.a"))
        else:
            rows += _pair(rng, "clerk", "station_clerk", code)
    return rows


def _pair(rng: random.Random, prefix: str, role: str, unit: str) -> list[dict[str, str]]:
    a, b = f"{prefix}.{unit}.a", f"{prefix}.{unit}.b"
    return [_member(rng, a, role, unit, "A", b), _member(rng, b, role, unit, "B", a)]


def _member(rng: random.Random, user_id: str, role: str, unit: str, post: str, backup: str) -> (
    dict[str, str]
):
    return {"user_id": user_id, "name": _person(rng), "role": role, "unit": unit, "post": post,
            "backup": backup, "synthetic": "true"}


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    rng = random.Random(SEED)
    unit_rows = units(rng)
    write(HERE / "units.csv", unit_rows)
    write(HERE / "staff.csv", staff(rng, unit_rows))


if __name__ == "__main__":
    main()
