"""Every event of a case's stream (``case-<uuid>``), as versioned pydantic models.

Each transition names who acted (``actor``: user, role, unit and — when a designated backup acts
— ``acting_for``, the owner on whose behalf), when (``at``, timezone-aware, stored in UTC) and,
for moves between units, where from and where to. Applicant personal data never appears in plain
form: ``EncryptedApplicant`` carries ciphertexts produced by the intake service, a subject id
(whose key can be shredded) and a keyed hash of the ID number for look-ups.

SLA timers are events too (scheduled, paused, stopped, warning raised, breached), so replaying a
stream reproduces every deadline and every breach.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from shared.contracts.registry import DomainEvent, event
from shared.reference.org import Level
from shared.reference.staff import Role


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]
"""A timezone-aware timestamp, normalised to UTC (naive timestamps are refused)."""

NonEmpty = Annotated[str, Field(min_length=1)]


class Actor(BaseModel):
    """Who acted: the person's own id, role and unit; ``acting_for`` is the owner (or post
    holder) on whose behalf a designated backup acted (A/B roles), else ``None``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: NonEmpty
    role: Role
    unit: NonEmpty
    acting_for: str | None = None

    @property
    def on_behalf_of(self) -> str:
        """The person whose post this action belongs to."""
        return self.acting_for or self.user_id


class EncryptedApplicant(BaseModel):
    """The applicant as the log holds them: opaque ciphertexts per field (name, id number, phone,
    address …) and the data subject whose key decrypts them. ``id_hash`` (a keyed hash of the
    ID number) is only in events recorded before 2026-12-01: it is kept in intake's subject
    table now, which erasure empties, and no longer in the immutable log."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject_id: NonEmpty
    id_hash: NonEmpty | None = None
    encrypted: dict[str, str] = Field(default_factory=dict)


class Outcome(StrEnum):
    """A decision on a case."""

    APPROVED = "approved"
    REFUSED = "refused"


class CaseStatus(StrEnum):
    """Where a case stands. ``handed_off`` = on its way up, not yet received by the next unit;
    ``returned`` = sent back down and being worked again at the lower unit."""

    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    IN_REVIEW = "in_review"
    DOCUMENTS_REQUESTED = "documents_requested"
    HANDED_OFF = "handed_off"
    RETURNED = "returned"
    DECIDED = "decided"
    CLOSED = "closed"
    WITHDRAWN = "withdrawn"
    REOPENED = "reopened"


class CaseEvent(DomainEvent):
    """Fields every case event carries."""

    case_id: UUID
    at: UtcDatetime
    actor: Actor


# ------------------------------------------------------------------ lifecycle


@event("CaseSubmitted", version=1)
class CaseSubmitted(CaseEvent):
    """A case was opened at a community station (at the counter or by another system)."""

    tracking_no: NonEmpty
    service_code: NonEmpty
    visit_id: UUID
    station: NonEmpty
    applicant: EncryptedApplicant
    documents_provided: tuple[str, ...] = ()
    source_system: str | None = None


@event("CaseAccepted", version=1)
class CaseAccepted(CaseEvent):
    """The receiving clerk accepted the case and owns it (first-inquiry responsibility)."""

    unit: NonEmpty
    level: Level
    owner: NonEmpty


@event("DocumentsRequested", version=1)
class DocumentsRequested(CaseEvent):
    """The applicant was told every missing document at once (one-time notification). A second
    request is ``exceptional`` and names the supervisor who approved it."""

    unit: NonEmpty
    level: Level
    documents: tuple[str, ...] = Field(min_length=1)
    request_no: int = Field(ge=1)
    exceptional: bool = False
    approved_by: str | None = None
    note: str = ""


@event("DocumentsSupplied", version=1)
class DocumentsSupplied(CaseEvent):
    """The applicant supplied requested documents; ``outstanding`` empty = the clock resumes."""

    unit: NonEmpty
    documents: tuple[str, ...] = Field(min_length=1)
    outstanding: tuple[str, ...] = ()


@event("CaseHandedOff", version=1)
class CaseHandedOff(CaseEvent):
    """The case was sent up to the next unit of its service's chain. ``owner`` stays
    responsible until that unit receives it."""

    from_unit: NonEmpty
    from_level: Level
    to_unit: NonEmpty
    to_level: Level
    owner: NonEmpty
    note: str = ""


@event("HandoffReceived", version=1)
class HandoffReceived(CaseEvent):
    """The unit a case was handed (or escalated) to received it; ``owner`` is its new owner."""

    unit: NonEmpty
    level: Level
    owner: NonEmpty
    previous_owner: NonEmpty


@event("CaseReturned", version=1)
class CaseReturned(CaseEvent):
    """The case was sent back down with reasons; ``owner`` is who owns it again down there."""

    from_unit: NonEmpty
    from_level: Level
    to_unit: NonEmpty
    to_level: Level
    reasons: tuple[NonEmpty, ...] = Field(min_length=1)
    documents: tuple[str, ...] = ()
    owner: NonEmpty
    previous_owner: NonEmpty


@event("OwnerReassigned", version=1)
class OwnerReassigned(CaseEvent):
    """A supervisor (or the owner) gave the case to another person of the holding unit."""

    unit: NonEmpty
    from_owner: NonEmpty
    to_owner: NonEmpty
    reason: NonEmpty


@event("CaseDecided", version=1)
class CaseDecided(CaseEvent):
    """The deciding level approved or refused the case, on the stated basis."""

    unit: NonEmpty
    level: Level
    outcome: Outcome
    basis: NonEmpty


@event("CaseClosed", version=1)
class CaseClosed(CaseEvent):
    """A decided case was closed (the applicant was told the outcome)."""

    unit: NonEmpty
    level: Level


@event("CaseWithdrawn", version=1)
class CaseWithdrawn(CaseEvent):
    """The applicant withdrew the case."""

    unit: NonEmpty
    level: Level
    reason: NonEmpty


@event("CaseReopened", version=1)
class CaseReopened(CaseEvent):
    """A closed case was reopened within its service's reopen window; ``owner`` owns it again
    and every level's SLA budget starts afresh."""

    unit: NonEmpty
    level: Level
    owner: NonEmpty
    reason: NonEmpty


@event("NoteAdded", version=1)
class NoteAdded(CaseEvent):
    """A remark on the case's file."""

    text: NonEmpty


@event("CaseEscalated", version=1)
class CaseEscalated(CaseEvent):
    """The SLA clock handed the case up automatically after a breach, as the catalogue asks.
    Like a handoff, ``owner`` stays responsible until the upper unit receives it."""

    from_unit: NonEmpty
    from_level: Level
    to_unit: NonEmpty
    to_level: Level
    owner: NonEmpty
    timer_no: int = Field(ge=1)
    reason: Literal["sla_breach"] = "sla_breach"


@event("ExternalResultRecorded", version=1)
class ExternalResultRecorded(CaseEvent):
    """Another government system (pension, employment, insurance …) attached a result."""

    source_system: NonEmpty
    result_type: NonEmpty
    reference: NonEmpty
    summary: str = ""
    details: dict[str, str] = Field(default_factory=dict)


# ------------------------------------------------------------------ SLA timers


@event("SlaTimerScheduled", version=1)
class SlaTimerScheduled(CaseEvent):
    """A level's SLA clock (re)started: it warns at ``warn_at`` and is breached at ``due_at``.
    ``used_seconds`` is working time this level had already used before ``starts_at``."""

    timer_no: int = Field(ge=1)
    level: Level
    unit: NonEmpty
    budget_days: int = Field(ge=1)
    used_seconds: int = Field(ge=0)
    starts_at: UtcDatetime
    warn_at: UtcDatetime
    due_at: UtcDatetime
    reason: Literal["started", "resumed", "restarted"]


@event("SlaClockPaused", version=1)
class SlaClockPaused(CaseEvent):
    """The clock stopped while the case waits for the applicant's documents."""

    timer_no: int = Field(ge=1)
    level: Level
    unit: NonEmpty
    used_seconds: int = Field(ge=0)


@event("SlaClockStopped", version=1)
class SlaClockStopped(CaseEvent):
    """The level finished with the case (handed off, returned, decided, withdrawn)."""

    timer_no: int = Field(ge=1)
    level: Level
    unit: NonEmpty
    used_seconds: int = Field(ge=0)
    budget_seconds: int = Field(ge=1)
    on_time: bool


@event("SlaWarningRaised", version=1)
class SlaWarningRaised(CaseEvent):
    """The level has used its warning share of the budget."""

    timer_no: int = Field(ge=1)
    level: Level
    unit: NonEmpty
    owner: NonEmpty
    due_at: UtcDatetime


@event("SlaBreached", version=1)
class SlaBreached(CaseEvent):
    """The level used its whole budget: the breach is charged to ``level`` / ``unit``."""

    timer_no: int = Field(ge=1)
    level: Level
    unit: NonEmpty
    owner: NonEmpty
    due_at: UtcDatetime


CASE_EVENTS: tuple[type[CaseEvent], ...] = (
    CaseSubmitted, CaseAccepted, DocumentsRequested, DocumentsSupplied, CaseHandedOff,
    HandoffReceived, CaseReturned, OwnerReassigned, CaseDecided, CaseClosed, CaseWithdrawn,
    CaseReopened, NoteAdded, CaseEscalated, ExternalResultRecorded, SlaTimerScheduled,
    SlaClockPaused, SlaClockStopped, SlaWarningRaised, SlaBreached,
)
"""Every event type a case stream may hold."""

MOVES = (CaseHandedOff, CaseReturned, CaseEscalated)
"""Events that move a case between units (each names from_unit and to_unit)."""

CASE_STREAM_PREFIX = "case-"
"""Every case's events are one stream, named this and the case id."""


def case_stream(case_id: UUID) -> str:
    """The stream id of a case."""
    return f"{CASE_STREAM_PREFIX}{case_id}"


def case_of_stream(stream_id: str) -> UUID | None:
    """The case whose stream ``stream_id`` is; None for any other stream (or a malformed id)."""
    if not stream_id.startswith(CASE_STREAM_PREFIX):
        return None
    try:
        return UUID(stream_id[len(CASE_STREAM_PREFIX):])
    except ValueError:
        return None
