"""A case's history: every event of its stream with who acted (user, role, unit, acting-for),
where the case moved (from-unit, to-unit), when (the act and its recording) and the reasons
given. Personal data stays out: the applicant appears only as a subject id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from shared.contracts import cases as _cases  # noqa: F401  (registers the case events)
from shared.contracts.cases import case_stream
from shared.contracts.envelope import RecordedEvent, chain_hash, iso
from shared.contracts.registry import EventDataInvalid, UnknownEventType, registry
from shared.eventstore.port import EventStore

REASON_FIELDS = ("reasons", "reason", "basis", "note")
"""Fields holding the reasons a person gave, in the order they are shown."""
_LEFT_OUT = frozenset({"case_id", "at", "actor", "applicant", "from_unit", "to_unit",
                       *REASON_FIELDS})


class CaseNotFound(LookupError):
    """The log holds no event of this case (as of the position asked for)."""


@dataclass(frozen=True)
class HistoryEntry:
    """One step of a case."""

    position: int
    version: int
    type: str
    at: datetime
    recorded_at: datetime
    actor_id: str
    role: str
    unit: str
    acting_for: str | None
    from_unit: str | None
    to_unit: str | None
    reasons: tuple[str, ...]
    details: dict[str, Any]
    hash: str
    hash_ok: bool = True
    """The event's content still gives its recorded hash (else it was altered in the store)."""

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON data (times in canonical UTC text)."""
        return {
            "position": self.position, "version": self.version, "type": self.type,
            "at": iso(self.at), "recorded_at": iso(self.recorded_at),
            "actor": {"user_id": self.actor_id, "role": self.role, "unit": self.unit,
                      "acting_for": self.acting_for},
            "from_unit": self.from_unit, "to_unit": self.to_unit,
            "reasons": list(self.reasons), "details": self.details, "hash": self.hash,
            "hash_ok": self.hash_ok,
        }


@dataclass(frozen=True)
class CaseHistory:
    """Every step of one case, in stream order, with what identifies it publicly."""

    case_id: UUID
    tracking_no: str | None
    service_code: str | None
    subject_id: str | None
    entries: tuple[HistoryEntry, ...] = field(default_factory=tuple)

    @property
    def altered(self) -> list[int]:
        """Positions of events whose content no longer gives their hash."""
        return [e.position for e in self.entries if not e.hash_ok]

    @property
    def missing_versions(self) -> list[int]:
        """Versions of the case below its last one that the store no longer holds."""
        held = {e.version for e in self.entries}
        last = self.entries[-1].version if self.entries else 0
        return [v for v in range(1, last) if v not in held]

    def as_dict(self) -> dict[str, Any]:
        """The history as JSON data."""
        last = self.entries[-1] if self.entries else None
        return {
            "case_id": str(self.case_id), "tracking_no": self.tracking_no,
            "service_code": self.service_code, "subject_id": self.subject_id,
            "events": len(self.entries), "last_position": last.position if last else None,
            "last_hash": last.hash if last else None,
            "altered_positions": self.altered, "missing_versions": self.missing_versions,
            "entries": [e.as_dict() for e in self.entries],
        }


def _reasons(data: dict[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    for name in REASON_FIELDS:
        value = data.get(name)
        if isinstance(value, list | tuple):
            found.extend(str(v) for v in value if v)
        elif value:
            found.append(str(value))
    return tuple(found)


def _unreadable(event: RecordedEvent, why: str) -> HistoryEntry:
    """The entry of an event the registry cannot decode (an edit in the store need not fit
    the model): its envelope, who the metadata names, and why, but none of its data."""
    try:
        meta = event.metadata if isinstance(event.metadata, dict) else {}
    except ValueError:
        meta = {}
    return HistoryEntry(
        position=event.position, version=event.version, type=event.type,
        at=event.occurred_at, recorded_at=event.recorded_at,
        actor_id=str(meta.get("actor_id", "?")), role=str(meta.get("role", "?")),
        unit=str(meta.get("unit", "?")), acting_for=None, from_unit=None, to_unit=None,
        reasons=(), details={"unreadable": f"the event cannot be read: {why}"},
        hash=event.hash,
        hash_ok=chain_hash(event.prev_hash, event.canonical_bytes()) == event.hash,
    )


def entry_of(event: RecordedEvent) -> HistoryEntry:
    """The history entry of one recorded case event (decoded and upcast by the registry; one
    that cannot be, shown as such, see ``_unreadable``)."""
    try:
        data = registry.decode(event).model_dump(mode="json")
    except UnknownEventType:
        return _unreadable(event, f"no model for {event.type} version {event.schema_version}")
    except EventDataInvalid:
        return _unreadable(event, f"its data does not fit the {event.type} model")
    actor = data["actor"]
    details = {k: v for k, v in data.items() if k not in _LEFT_OUT}
    if "applicant" in data:
        details["subject_id"] = data["applicant"]["subject_id"]
    return HistoryEntry(
        position=event.position, version=event.version, type=event.type,
        at=datetime.fromisoformat(data["at"]), recorded_at=event.recorded_at,
        actor_id=actor["user_id"], role=actor["role"], unit=actor["unit"],
        acting_for=actor.get("acting_for"), from_unit=data.get("from_unit"),
        to_unit=data.get("to_unit"), reasons=_reasons(data), details=details, hash=event.hash,
        hash_ok=chain_hash(event.prev_hash, event.canonical_bytes()) == event.hash,
    )


def history_of(case_id: UUID, events: Sequence[RecordedEvent]) -> CaseHistory:
    """The history of a case from its recorded events (pure)."""
    if not events:
        raise CaseNotFound(f"no events of case {case_id}")
    entries = tuple(entry_of(e) for e in events)
    first = entries[0].details if entries[0].type == "CaseSubmitted" else {}
    return CaseHistory(case_id, first.get("tracking_no"), first.get("service_code"),
                       first.get("subject_id"), entries)


async def load_history(store: EventStore, case_id: UUID,
                       to_position: int | None = None) -> CaseHistory:
    """A case's history read from the event store (up to ``to_position`` if given)."""
    events = await store.read_stream(case_stream(case_id), to_position=to_position)
    return history_of(case_id, events)
