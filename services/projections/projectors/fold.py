"""Folding events into case rows with per-case version continuity (pure, in memory).

Each case row keeps the last stream version applied. An event at or below it is a duplicate
and is skipped; one above ``last + 1`` is a gap the caller must fill (read the missing events
from the store and offer them first); one the projectors cannot apply is parked — it still
advances the version, so the rest of the case is projected. Redelivery and out-of-order
delivery therefore never change a read model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from services.projections.projectors.case import project
from services.projections.projectors.events import (
    CASE_PREFIX,
    Unprojectable,
    case_id_of,
    prepare,
)
from services.projections.projectors.paths import UnitPaths
from services.projections.projectors.rows import CaseRow, Changes
from shared.contracts.envelope import RecordedEvent


class RawEvent(NamedTuple):
    """An event as read from the events table (or decoded from Kafka), before projection."""

    position: int
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: str | dict[str, Any]
    recorded_at: datetime


def raw(event: RecordedEvent) -> RawEvent:
    return RawEvent(event.position, event.stream_id, event.version, event.type,
                    event.schema_version, event.data_json, event.recorded_at)


@dataclass(frozen=True, slots=True)
class Gap:
    """Versions ``after + 1`` .. ``before - 1`` of ``stream_id`` are missing."""

    stream_id: str
    after: int
    before: int


APPLIED, DUPLICATE, PARKED = "applied", "duplicate", "parked"
NOT_A_CASE = "not a case"  # other streams on the log (e.g. the auditors' access log)


@dataclass
class CaseFolder:
    """Offers events one by one to the case rows it holds (loaded by the caller)."""

    paths: UnitPaths
    rows: dict[UUID, CaseRow] = field(default_factory=dict)
    changes: list[Changes] = field(default_factory=list)
    parked: list[tuple[RawEvent, Unprojectable]] = field(default_factory=list)
    touched: set[UUID] = field(default_factory=set)
    headless: dict[UUID, int] = field(default_factory=dict)  # parked before any row existed
    ids: dict[str, UUID] = field(default_factory=dict)  # stream id -> case id, parsed once
    duplicates: int = 0
    strict: bool = False  # a rebuild: raise instead of parking

    def offer(self, event: RawEvent) -> str | Gap:
        """Apply ``event`` if it is the case's next version; say what happened."""
        position, stream_id, version, type_, schema_version, data, recorded_at = event
        case_id = self.ids.get(stream_id)
        if case_id is None:
            if not stream_id.startswith(CASE_PREFIX):
                return NOT_A_CASE
            try:
                case_id = self.ids[stream_id] = case_id_of(stream_id)
            except ValueError:
                return self._park(event, None, Unprojectable(
                    position, stream_id, type_, "not a case stream"))
        row = self.rows.get(case_id)
        have = self.headless.get(case_id, 0) if row is None else row.version
        if version <= have:
            self.duplicates += 1
            return DUPLICATE
        if version > have + 1:
            return Gap(stream_id, have, version)
        try:
            changes = project(row, prepare(position, stream_id, version, type_, schema_version,
                                           data, recorded_at, case_id=case_id), self.paths)
        except Unprojectable as exc:
            return self._park(event, row, exc, case_id)
        self.rows[case_id] = changes.case
        self.touched.add(case_id)
        self.changes.append(changes)
        return APPLIED

    def _park(self, event: RawEvent, row: CaseRow | None, why: Unprojectable,
              case_id: UUID | None = None) -> str:
        if self.strict:
            raise why
        self.parked.append((event, why))
        if row is not None:  # the case goes on past it
            self.rows[row.case_id] = row._replace(version=event.version,
                                                  position=event.position)
            self.touched.add(row.case_id)
        elif case_id is not None:
            self.headless[case_id] = event.version
        return PARKED
