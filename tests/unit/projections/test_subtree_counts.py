"""Property: for random event sequences over a random org tree, every unit's subtree counts
equal its own counts plus its children's subtree counts — whether kept incrementally from
batch deltas (the live path) or computed at once (the rebuild)."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.projections.projectors import (
    CaseFolder,
    CountKey,
    RawEvent,
    ReadModel,
    UnitPaths,
    own_deltas,
    subtree_deltas,
)
from shared.contracts.canonical import canonical_json
from shared.reference.org import Level, OrgTree, Unit, UnitKind

CITY = "530100"
T0 = datetime(2026, 1, 5, 1, 0, tzinfo=UTC)
SERVICES = ("legal_information", "minimum_living_guarantee")


@st.composite
def trees(draw: st.DrawFn) -> OrgTree:
    units = [Unit(code=CITY, name="市（合成）", level=Level.CITY, kind=UnitKind.BUREAU)]
    for c in range(draw(st.integers(1, 3))):
        county = f"5301{c + 2:02d}"
        units.append(Unit(code=county, name="县", level=Level.COUNTY, parent=CITY,
                          kind=UnitKind.BUREAU))
        for t in range(draw(st.integers(0, 3))):
            township = f"{county}{t + 1:03d}"
            units.append(Unit(code=township, name="乡", level=Level.TOWNSHIP, parent=county,
                              kind=UnitKind.OFFICE))
            for s in range(draw(st.integers(0, 3))):
                units.append(Unit(code=f"{township}{s + 1:03d}", name="站",
                                  level=Level.COMMUNITY, parent=township,
                                  kind=UnitKind.STATION))
    return OrgTree(units)


def actor(unit: str) -> dict[str, Any]:
    return {"user_id": f"u.{unit}", "role": "station_clerk", "unit": unit}


def data(kind: str, unit: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {"at": at.isoformat(), "actor": actor(unit), **extra}


@st.composite
def histories(draw: st.DrawFn, org: OrgTree) -> list[tuple[str, str, dict[str, Any]]]:
    """(stream, type, data) in log order: cases submitted at stations that move up and down
    the tree and change status."""
    stations = [u.code for u in org.at_level(Level.COMMUNITY)]
    if not stations:
        return []
    log: list[tuple[str, str, dict[str, Any]]] = []
    at = T0
    cases: dict[str, tuple[str, str]] = {}  # stream -> (station, unit)
    for _ in range(draw(st.integers(1, 40))):
        at += timedelta(minutes=1)
        choice = draw(st.integers(0, 5))
        if choice == 0 or not cases:
            station = draw(st.sampled_from(stations))
            stream = f"case-{uuid.UUID(int=len(log) + 1)}"
            cases[stream] = (station, station)
            log.append((stream, "CaseSubmitted", data("", station, at, tracking_no=stream,
                        service_code=draw(st.sampled_from(SERVICES)), station=station,
                        visit_id=str(uuid.UUID(int=7)))))
            continue
        stream = draw(st.sampled_from(sorted(cases)))
        station, unit = cases[stream]
        parent = org.unit(unit).parent
        if choice == 1:
            log.append((stream, "CaseAccepted", data("", unit, at, owner=f"u.{unit}")))
        elif choice == 2 and parent and parent != CITY:
            cases[stream] = (station, parent)
            log.append((stream, "CaseHandedOff", data(
                "", unit, at, from_unit=unit, to_unit=parent, owner="o",
                from_level=str(org.unit(unit).level), to_level=str(org.unit(parent).level))))
        elif choice == 3 and unit != station:
            chain = [station, *(u.code for u in org.parent_chain(station))]
            down = next(c for c in chain if org.unit(c).parent == unit)  # one level down
            cases[stream] = (station, down)
            log.append((stream, "CaseReturned", data(
                "", unit, at, from_unit=unit, to_unit=down, owner="o", previous_owner="p",
                reasons=["补正"], from_level=str(org.unit(unit).level),
                to_level=str(org.unit(down).level))))
        elif choice == 4:
            log.append((stream, "CaseDecided", data("", unit, at, outcome="approved",
                                                    basis="b")))
        else:
            log.append((stream, "CaseWithdrawn", data("", unit, at, reason="r")))
    return log


def raw_events(history: list[tuple[str, str, dict[str, Any]]]) -> list[RawEvent]:
    versions: Counter[str] = Counter()
    out = []
    for position, (stream, type_, payload) in enumerate(history, start=1):
        versions[stream] += 1
        out.append(RawEvent(position, stream, versions[stream], type_, 1,
                            canonical_json(payload), T0))
    return out


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_units_subtree_is_its_own_plus_its_childrens(data_: st.DataObject) -> None:
    org = data_.draw(trees())
    events = raw_events(data_.draw(histories(org)))
    paths = UnitPaths(org)
    cut = sorted(set(data_.draw(st.lists(st.integers(0, len(events)), max_size=5))))
    live_own: Counter[CountKey] = Counter()
    live_subtree: Counter[CountKey] = Counter()
    folder = CaseFolder(paths, strict=True)
    model = ReadModel()
    for start, end in zip([0, *cut], [*cut, len(events)], strict=True):  # random batches
        folder.changes.clear()
        for event in events[start:end]:
            folder.offer(event)
        own = own_deltas(folder.changes)
        live_own.update(own)
        live_subtree.update(subtree_deltas(own, paths))
        for change in folder.changes:
            model.apply(change)
    live_own = +live_own
    live_subtree = +live_subtree
    assert live_own == Counter(model.own_counts())
    assert live_subtree == Counter(model.subtree_counts(paths))
    for unit in org:
        for status in {k.status for k in live_subtree}:
            for service in SERVICES:
                mine = live_own[CountKey(unit.code, status, service)]
                below = sum(live_subtree[CountKey(c.code, status, service)]
                            for c in org.children(unit.code))
                assert live_subtree[CountKey(unit.code, status, service)] == mine + below
    assert sum(n for k, n in live_subtree.items() if k.unit == CITY) == len(folder.rows)
