"""What a projector reads: the few fields of a recorded event it needs, with its data upcast to
the newest schema version. Reading the events table yields these directly (no hash, no
metadata: the read models use the actor inside the data)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from shared.contracts import cases as _cases  # noqa: F401  (registers the case events)
from shared.contracts.canonical import loads
from shared.contracts.envelope import RecordedEvent
from shared.contracts.registry import UnknownEventType, registry

CASE_PREFIX = "case-"


class Unprojectable(ValueError):
    """An event the projectors cannot apply: unknown type or version, not a case stream,
    or data that does not fit. The live path parks it; a rebuild stops on it."""

    def __init__(self, position: int, stream_id: str, type_: str, reason: str) -> None:
        super().__init__(f"event at position {position} ({type_} on {stream_id}): {reason}")
        self.position = position
        self.stream_id = stream_id
        self.type = type_
        self.reason = reason


class ProjectedEvent(NamedTuple):
    position: int
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    recorded_at: datetime

    @property
    def case_id(self) -> UUID:
        return case_id_of(self.stream_id)


def case_id_of(stream_id: str) -> UUID:
    return UUID(stream_id[len(CASE_PREFIX):])


def prepare(
    position: int, stream_id: str, version: int, type_: str, schema_version: int,
    data: dict[str, Any] | str, recorded_at: datetime, *, case_id: UUID | None = None,
) -> ProjectedEvent:
    """The event as projectors read it: a case stream's event, data upcast to the newest
    version. Raises ``Unprojectable`` for anything else."""
    if not stream_id.startswith(CASE_PREFIX):
        raise Unprojectable(position, stream_id, type_, "not a case stream")
    try:
        if case_id is None:
            case_id_of(stream_id)
        raw = loads(data) if isinstance(data, str) else data
        upcast = registry.upcast(type_, schema_version, raw)
    except UnknownEventType as exc:
        raise Unprojectable(position, stream_id, type_, str(exc)) from exc
    except ValueError as exc:
        raise Unprojectable(position, stream_id, type_, f"unreadable: {exc}") from exc
    return ProjectedEvent(position, stream_id, version, type_, schema_version, upcast,
                          recorded_at)


def from_recorded(event: RecordedEvent) -> ProjectedEvent:
    return prepare(event.position, event.stream_id, event.version, event.type,
                   event.schema_version, event.data, event.recorded_at)
