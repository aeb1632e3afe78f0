"""Who looked: every audit read is appended to the log as an ``AuditRecordRead`` event in the
stream of its month (``audit-access-<yyyy-mm>``), and auditors of auditors query them here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.contracts.audit import (
    CHINA,
    AuditAction,
    AuditReader,
    AuditRecordRead,
    access_stream,
)
from shared.contracts.envelope import RecordedEvent, iso
from shared.contracts.registry import registry, to_new_event
from shared.eventstore.port import ANY, AppendResult, EventStore
from shared.logging import current_correlation_id, get_logger

log = get_logger(__name__)


class ReasonRequired(ValueError):
    """An audit read must say why (at least three characters)."""


@dataclass(frozen=True)
class Requester:
    """Who asks for an audit read, why, and through which channel (``api`` or ``cli``)."""

    user_id: str
    role: str
    unit: str
    reason: str
    channel: str = "api"

    def __post_init__(self) -> None:
        if len(self.reason.strip()) < 3:
            raise ReasonRequired("an audit read needs a reason (at least 3 characters)")


def month_of(at: datetime) -> str:
    """The month of ``at`` in China Standard Time, ``YYYY-MM``."""
    return at.astimezone(CHINA).strftime("%Y-%m")


async def record_read(
    store: EventStore, who: Requester, action: AuditAction, *, case_id: uuid.UUID | None = None,
    unit: str | None = None, position: int | None = None, detail: str = "",
    at: datetime | None = None,
) -> AppendResult:
    """Append one ``AuditRecordRead`` to its month's stream (no version check: readers never
    conflict) and return where it landed."""
    when = at or datetime.now(UTC)
    payload = AuditRecordRead(
        at=when, reader=AuditReader(user_id=who.user_id, role=who.role, unit=who.unit),
        action=action, reason=who.reason.strip(), channel=who.channel,
        case_id=None if case_id is None else str(case_id), unit=unit, detail=detail,
        position=position)
    meta = {"actor_id": who.user_id, "role": who.role, "unit": who.unit,
            "correlation_id": current_correlation_id() or uuid.uuid4().hex}
    result = await store.append(access_stream(month_of(when)), ANY,
                                [to_new_event(payload, metadata=meta, occurred_at=when)])
    log.info("audit.read_recorded", action=str(action), user_id=who.user_id,
             case_id=payload.case_id, unit=unit, position=result.position)
    return result


@dataclass(frozen=True)
class AccessEntry:
    """One recorded audit read, with where it sits in the log."""

    position: int
    event: AuditRecordRead

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, **self.event.model_dump(mode="json"),
                "at": iso(self.event.at)}


def _entry(recorded: RecordedEvent) -> AccessEntry:
    decoded = registry.decode(recorded)
    assert isinstance(decoded, AuditRecordRead)
    return AccessEntry(recorded.position, decoded)


async def read_access_log(
    store: EventStore, months: Sequence[str], *, user_id: str | None = None,
    case_id: str | None = None,
) -> list[AccessEntry]:
    """The audit reads of the given months (``YYYY-MM``), oldest first, optionally only one
    reader's or only those of one case."""
    found: list[AccessEntry] = []
    for month in sorted(set(months)):
        for recorded in await store.read_stream(access_stream(month)):
            entry = _entry(recorded)
            if user_id is not None and entry.event.reader.user_id != user_id:
                continue
            if case_id is not None and entry.event.case_id != case_id:
                continue
            found.append(entry)
    return found
