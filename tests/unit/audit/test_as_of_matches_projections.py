"""Property: for random case histories (made by the real ``decide``), the as-of state at each
event equals what the projections showed right after that event was applied (the pure
projectors, folding the same prefix)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.cases.domain import Case, evolve
from services.projections.projectors import CaseFolder, CaseRow, UnitPaths, raw
from shared.audit import case_as_of
from shared.contracts.envelope import RecordedEvent
from shared.eventstore.memory import InMemoryEventStore
from tests.unit.audit.histories import REF, logged

pytestmark = pytest.mark.unit
PATHS = UnitPaths(REF.org)


def seen_by_projections(row: CaseRow) -> dict[str, Any]:
    return {"status": row.status, "unit": row.unit, "level": row.level, "owner": row.owner,
            "outcome": row.outcome, "version": row.version, "tracking_no": row.tracking_no,
            "service_code": row.service_code, "station": row.station,
            "visit_id": row.visit_id, "submitted_at": row.submitted_at,
            "last_change_at": row.last_change_at, "resume_status": row.resume_status,
            "due_at": row.due_at}


def replayed(state: Case) -> dict[str, Any]:
    return {"status": state.status.value, "unit": state.unit, "level": state.level.value,
            "owner": state.owner, "outcome": None if state.outcome is None
            else state.outcome.value, "version": state.version,
            "tracking_no": state.tracking_no, "service_code": state.service_code,
            "station": state.station, "visit_id": state.visit_id,
            "submitted_at": state.submitted_at, "last_change_at": state.last_at,
            "resume_status": None if state.resume_status is None
            else state.resume_status.value,
            "due_at": None if state.timer is None else state.timer.due_at}


async def check(store: InMemoryEventStore) -> int:
    folder = CaseFolder(PATHS, strict=True)
    checked = 0
    events: list[RecordedEvent] = list(store.events)
    for event in events:
        folder.offer(raw(event))
        case_id = folder.ids[event.stream_id]
        shown = seen_by_projections(folder.rows[case_id])
        as_of = await case_as_of(store, case_id, event.position, evolve)
        assert replayed(as_of.state) == shown, (event.position, event.type)
        assert as_of.last_event_position == event.position
        checked += 1
    return checked


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32), cases=st.integers(1, 3))
def test_as_of_state_equals_the_projection_after_each_event(seed: int, cases: int) -> None:
    async def run() -> int:
        store, _ = await logged(seed, cases)
        return await check(store)

    assert asyncio.run(run()) >= cases
