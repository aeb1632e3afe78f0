"""Policies of the SLA clock: which timer commands are due for a case (``when_x_do_y``).

Pure. The clock's entrypoint keeps due times in PostgreSQL and turns what these return into
commands through the same handler as people's commands.
"""

from __future__ import annotations

from datetime import datetime

from services.cases.domain.commands import (
    Command,
    EscalateOverdueCase,
    RaiseSlaWarning,
    RecordSlaBreach,
)
from services.cases.domain.state import TIMED, WORKABLE, Case
from shared.contracts.cases import Actor, SlaBreached
from shared.reference import Reference, Role

SLA_CLOCK_USER = "system.sla-clock"


def sla_clock_actor(ref: Reference) -> Actor:
    """The automated actor the SLA clock's commands carry (posted at the city)."""
    return Actor(user_id=SLA_CLOCK_USER, role=Role.SYSTEM, unit=ref.org.root.code)


def timer_commands_due(case: Case, now: datetime, actor: Actor) -> list[Command]:
    """The warning and/or breach commands a running clock owes at ``now`` (idempotent to fire:
    deciding one that already fired records nothing)."""
    timer = case.timer
    if timer is None or case.status not in TIMED:
        return []
    due: list[Command] = []
    if not timer.warned and now >= timer.warn_at:
        due.append(RaiseSlaWarning(case_id=case.case_id, at=now, actor=actor,
                                   timer_no=timer.timer_no))
    if not timer.breached and now >= timer.due_at:
        due.append(RecordSlaBreach(case_id=case.case_id, at=now, actor=actor,
                                   timer_no=timer.timer_no))
    return due


def when_sla_breached_escalate(case: Case, event: SlaBreached, ref: Reference) -> list[Command]:
    """Auto-escalation: after a breach at a level the catalogue names, hand the case up."""
    service = ref.catalogue.service(case.service_code)
    if not service.escalates_on_breach_at(event.level) or service.next_level(event.level) is None:
        return []
    if case.status not in WORKABLE or case.timer is None or case.timer.timer_no != event.timer_no:
        return []
    return [EscalateOverdueCase(case_id=case.case_id, at=event.at, actor=event.actor,
                                timer_no=event.timer_no)]
