"""The state of one case: a frozen value rebuilt by folding its events (see ``evolve``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar
from uuid import UUID

from shared.contracts.cases import CaseStatus, EncryptedApplicant, Outcome
from shared.reference import Level

WORKABLE = frozenset({
    CaseStatus.ACCEPTED, CaseStatus.IN_REVIEW, CaseStatus.RETURNED, CaseStatus.REOPENED,
})
"""Statuses in which the holding unit works the case (and its SLA clock runs)."""

TIMED = WORKABLE | {CaseStatus.HANDED_OFF}
"""Statuses in which an SLA clock is running."""

TERMINAL = frozenset({CaseStatus.CLOSED, CaseStatus.WITHDRAWN})

K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V]) -> Mapping[K, V]:
    """A read-only copy of ``items``."""
    return MappingProxyType(dict(items))


@dataclass(frozen=True, slots=True)
class Timer:
    """The running SLA clock of the level that holds the case."""

    timer_no: int
    level: Level
    unit: str
    budget_days: int
    used_before: int
    starts_at: datetime
    warn_at: datetime
    due_at: datetime
    warned: bool = False
    breached: bool = False
    breached_at_work: bool = False
    """This timer's own breach was recorded while its level worked the case: not one inherited
    from an earlier timer of the level (after a pause or a return), nor one recorded while the
    case was still on its way there. The breach an auto-escalation answers (``policies``)."""


@dataclass(frozen=True)  # not slotted: ``replace`` copies its __dict__ in one step
class Case:
    """One case. ``unit``/``level`` is where it is held; ``owner`` who answers for it."""

    case_id: UUID
    tracking_no: str
    service_code: str
    visit_id: UUID
    station: str
    applicant: EncryptedApplicant
    status: CaseStatus
    unit: str
    level: Level
    submitted_at: datetime
    last_at: datetime
    version: int = 1
    owner: str | None = None
    owners_by_unit: Mapping[str, str] = field(default_factory=lambda: frozen_map({}))
    documents_provided: frozenset[str] = frozenset()
    documents_outstanding: frozenset[str] = frozenset()
    document_requests: int = 0
    resume_status: CaseStatus | None = None
    timer: Timer | None = None
    timers_scheduled: int = 0
    used_seconds: Mapping[Level, int] = field(default_factory=lambda: frozen_map({}))
    warned_levels: frozenset[Level] = frozenset()
    breached_levels: frozenset[Level] = frozenset()
    outcome: Outcome | None = None
    basis: str | None = None
    closed_at: datetime | None = None
    notes: int = 0
    external_results: int = 0

    @property
    def accepted(self) -> bool:
        """True once a clerk has accepted the case (from then on it always has an owner)."""
        return self.owner is not None


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
S = TypeVar("S")


def replace(state: S, **changes: Any) -> S:
    """``dataclasses.replace`` for the frozen state classes, without re-running ``__init__``
    (evolve calls it for every event of every fold)."""
    cls = type(state)
    if hasattr(state, "__dict__"):
        if not changes.keys() <= state.__dict__.keys():
            raise TypeError(f"{cls.__name__} has no field(s) "
                            f"{sorted(changes.keys() - state.__dict__.keys())}")
        new = object.__new__(cls)
        new.__dict__.update(state.__dict__, **changes)
        return new
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    unknown = changes.keys() - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    new = object.__new__(cls)
    for name in names:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(state, name))
    return new
