"""Policies of the SLA clock: which timer commands, and escalations, a case is owed.

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
from shared.contracts.cases import Actor
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


def escalations_owed(case: Case, now: datetime, actor: Actor, ref: Reference) -> list[Command]:
    """Auto-escalation: a level whose breach was recorded while it worked the case, where the
    catalogue asks, owes handing the case up until that is done (its timer then ends) or the
    case moves on. Owed from the case's state, not sent once in answer to the breach event: an
    escalation that failed (a crash after the breach, a conflict) is owed at the next tick as a
    due timer is. At ``now``, the clock's time: the breach's own may be older than what the
    case recorded since, which the domain refuses. Idempotent to fire: the timer is then stale.
    """
    timer = case.timer
    if timer is None or not timer.breached_at_work or case.status not in WORKABLE:
        return []
    service = ref.catalogue.service(case.service_code)
    if not service.escalates_on_breach_at(timer.level) or service.next_level(timer.level) is None:
        return []
    return [EscalateOverdueCase(case_id=case.case_id, at=now, actor=actor,
                                timer_no=timer.timer_no)]
