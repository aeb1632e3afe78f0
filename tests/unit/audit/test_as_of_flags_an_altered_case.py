"""A case's state as of a position is replayed from its events as the store holds them now:
when one of them no longer gives its recorded hash, or a version of the case is missing, the
state shown is one the case may never have had. As the history does, the as-of answer says so
(``altered_positions``, ``missing_versions``) instead of passing it off as the record."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from services.cases.domain import evolve
from shared.audit import case_as_of
from shared.audit.jsonable import to_jsonable
from shared.contracts.envelope import RecordedEvent
from tests.unit.audit.test_history_and_render import CASE, story

pytestmark = pytest.mark.unit


class Held:
    """A store holding exactly ``events`` (as a forger left them)."""

    def __init__(self, events: list[RecordedEvent]) -> None:
        self.events = events

    async def read_stream(self, stream_id: str, *, to_position: int | None = None,
                          **_: Any) -> list[RecordedEvent]:
        return [e for e in self.events if to_position is None or e.position <= to_position]


def as_of(events: list[RecordedEvent]) -> dict[str, Any]:
    found = asyncio.run(case_as_of(Held(events), CASE, 10_000, evolve))  # type: ignore[arg-type]
    body: dict[str, Any] = to_jsonable(found)
    return body


def recorded() -> list[RecordedEvent]:
    return asyncio.run(story().read_stream(f"case-{CASE}"))


def test_an_untouched_case_is_not_flagged() -> None:
    body = as_of(recorded())
    assert (body["altered_positions"], body["missing_versions"]) == ([], [])


def test_an_event_altered_in_the_store_is_flagged() -> None:
    events = recorded()
    i = next(i for i, e in enumerate(events) if e.type == "CaseReturned")
    events[i] = dataclasses.replace(
        events[i], data_json=events[i].data_json.replace("收入证明需补正", "材料齐全"))
    body = as_of(events)
    assert body["altered_positions"] == [events[i].position]


def test_an_event_removed_from_the_store_is_flagged() -> None:
    events = recorded()
    i = next(i for i, e in enumerate(events) if e.type == "CaseHandedOff")
    version = events[i].version
    del events[i]
    body = as_of(events)
    assert body["missing_versions"] == [version]


def test_an_event_altered_beyond_its_model_stops_the_replay_with_its_position() -> None:
    """No state can be replayed past an event that cannot be read: the answer says which
    event and why, not a bare validation error (a 500 in the API)."""
    from shared.audit import ReplayFailed

    events = recorded()
    i = next(i for i, e in enumerate(events) if e.type == "CaseHandedOff")
    events[i] = dataclasses.replace(events[i], data_json='{"forged":true}')
    with pytest.raises(ReplayFailed) as failed:
        as_of(events)
    assert f"position {events[i].position}" in str(failed.value)
    assert "CaseHandedOff" in str(failed.value) and "verify" in str(failed.value)
