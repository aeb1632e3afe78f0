"""Commands: what a person or system asks of a case. Each carries the time, the case id and the
actor, so the domain never reads a clock or makes an id."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from uuid import UUID

from shared.contracts.cases import Actor, EncryptedApplicant, Outcome


@dataclass(frozen=True, kw_only=True, slots=True)
class Command:
    case_id: UUID
    at: datetime
    actor: Actor


@dataclass(frozen=True, kw_only=True, slots=True)
class SubmitCase(Command):
    tracking_no: str
    service_code: str
    visit_id: UUID
    station: str
    applicant: EncryptedApplicant
    documents: tuple[str, ...] = ()
    source_system: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AcceptCase(Command):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestDocuments(Command):
    """Ask for every missing document at once; ``documents`` may add ones that were provided but
    are inadequate. A second request needs ``approved_by`` (a supervisor over the case)."""

    documents: tuple[str, ...] = ()
    note: str = ""
    approved_by: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SupplyDocuments(Command):
    documents: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class HandOffCase(Command):
    note: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReceiveHandoff(Command):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class ReturnCase(Command):
    """Send the case one level down; ``documents`` names checklist documents found missing or
    inadequate (they count as not provided again)."""

    reasons: tuple[str, ...]
    documents: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ReassignOwner(Command):
    to_owner: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DecideCase(Command):
    outcome: Outcome
    basis: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseCase(Command):
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class WithdrawCase(Command):
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ReopenCase(Command):
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AddNote(Command):
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordExternalResult(Command):
    source_system: str
    result_type: str
    reference: str
    summary: str = ""
    details: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, kw_only=True, slots=True)
class RaiseSlaWarning(Command):
    """Fired by the SLA clock; firing twice (or a stale timer) records nothing."""

    timer_no: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordSlaBreach(Command):
    """Fired by the SLA clock; firing twice (or a stale timer) records nothing."""

    timer_no: int


@dataclass(frozen=True, kw_only=True, slots=True)
class EscalateOverdueCase(Command):
    """Issued by the SLA clock while a breach owes one (``escalations_owed``); firing twice
    (or a stale timer) records nothing."""

    timer_no: int
