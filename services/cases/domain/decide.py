"""``decide(state, command, ref)``: the events a command produces, or a ``Rejection``.

Pure: no clock, no ids, no I/O. ``ref`` is the reference data (org tree, staff, catalogue,
calendar). One small function per command.

Who may act comes first: each command is registered with a guard (the actor's unit and role
against the case's, or the kind of system) that ``decide`` runs before anything that tells the
case's state — its status, its history's time, a document request's count. Otherwise an
officer anywhere could learn a case's status from a 409 where a 403 is due. Whoever the guard
lets through may read the case anyway, so the checks after it (status, then which of the
unit's people owns the case) tell them nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar, cast

from services.cases.domain import commands as c
from services.cases.domain import errors
from services.cases.domain.clocks import pause_clock, start_clock, stop_clock
from services.cases.domain.evolve import evolve
from services.cases.domain.rules import (
    check_actor,
    in_checklist_order,
    is_supervisor_over,
    post_of,
    require_at_or_over_holding_unit,
    require_in_checklist,
    require_owner,
    require_status,
    require_supervisor_or_worker,
    require_system,
    require_system_over,
    require_worker_at_holding_unit,
    required_text,
    service_of,
)
from services.cases.domain.state import TIMED, WORKABLE, Case, Timer
from shared.contracts import cases as e
from shared.contracts.cases import Actor, CaseEvent, CaseStatus, Outcome
from shared.reference import CASE_ROLE_AT_LEVEL, Level, Reference, Role

Events = list[CaseEvent]
C = TypeVar("C", bound=c.Command)
Handler = Callable[[Case, Any, Reference], Events]
Guard = Callable[[Case, Actor, Reference], object]
_HANDLERS: dict[type[c.Command], tuple[Guard, Handler]] = {}


def decide(state: Case | None, command: c.Command, ref: Reference) -> Events:
    """The events ``command`` produces against ``state`` (``None`` = no such case yet)."""
    authorise(state, command, ref)
    if isinstance(command, c.SubmitCase):
        return submit(state, command, ref)
    if state is None:
        raise errors.CaseDoesNotExist(str(command.case_id))
    if command.at < state.last_at:
        raise errors.CommandPredatesTheCaseHistory(f"the case's last event is at {state.last_at}")
    return _HANDLERS[type(command)][1](state, command, ref)


def authorise(state: Case | None, command: c.Command, ref: Reference) -> None:
    """The actor may act on the case at all (a new case's station is ``submit``'s to check).
    ``decide`` runs it first; the command handler too, before telling a caller that the case
    is not at the version they named."""
    check_actor(command.actor, ref)
    if state is not None and not isinstance(command, c.SubmitCase):
        _HANDLERS[type(command)][0](state, command.actor, ref)


def handles(
    kind: type[C], *, may_act: Guard
) -> Callable[[Callable[[Case, C, Reference], Events]], Handler]:
    """Register the handler of ``kind``; ``may_act`` says who may act on the case at all."""
    def register(fn: Callable[[Case, C, Reference], Events]) -> Handler:
        _HANDLERS[kind] = (may_act, cast(Handler, fn))
        return cast(Handler, fn)

    return register


def _the_sla_clock(case: Case, actor: Actor, ref: Reference) -> None:
    require_system(actor, errors.OnlyTheSlaClockFiresTimers)


def _a_system_over(case: Case, actor: Actor, ref: Reference) -> None:
    require_system(actor, errors.OnlyOtherSystemsRecordExternalResults)
    require_system_over(actor, ref, case.station, case.unit)


def submit(state: Case | None, cmd: c.SubmitCase, ref: Reference) -> Events:
    service = service_of(cmd.service_code, ref)
    station = ref.org.get(cmd.station)
    if station is None or station.level != Level.COMMUNITY:
        raise errors.CasesAreReceivedOnlyAtStations(cmd.station)
    if cmd.actor.role == Role.SYSTEM:
        require_system_over(cmd.actor, ref, station.code)
    else:
        post = post_of(cmd.actor, ref)
        if post.unit != station.code:
            raise errors.OnlyTheHoldingUnitMayAct(f"{post.user_id} works at {post.unit}")
        if post.role != Role.STATION_CLERK:
            raise errors.RoleDoesNotFitTheHoldingLevel("only station clerks receive cases")
    if state is not None:
        raise errors.CaseAlreadyExists(str(cmd.case_id))
    require_in_checklist(service, cmd.documents)
    return [e.CaseSubmitted(
        case_id=cmd.case_id, at=cmd.at, actor=cmd.actor, tracking_no=cmd.tracking_no,
        service_code=service.code, visit_id=cmd.visit_id, station=station.code,
        applicant=cmd.applicant, documents_provided=in_checklist_order(service, cmd.documents),
        source_system=cmd.source_system,
    )]


@handles(c.AcceptCase, may_act=require_worker_at_holding_unit)
def accept(case: Case, cmd: c.AcceptCase, ref: Reference) -> Events:
    require_status(case, {CaseStatus.SUBMITTED}, errors.CaseIsAlreadyAccepted)
    owner = post_of(cmd.actor, ref)
    return [
        e.CaseAccepted(case_id=case.case_id, at=cmd.at, actor=cmd.actor, unit=case.unit,
                       level=case.level, owner=owner.user_id),
        start_clock(case, level=case.level, unit=case.unit, at=cmd.at, actor=cmd.actor, ref=ref),
    ]


@handles(c.RequestDocuments, may_act=require_supervisor_or_worker)
def request_documents(case: Case, cmd: c.RequestDocuments, ref: Reference) -> Events:
    require_status(case, WORKABLE, errors.CaseIsAlreadyDecided)
    approved_by = _override_for_another_request(case, cmd, ref)
    service = service_of(case.service_code, ref)
    require_in_checklist(service, cmd.documents)
    missing = set(service.required_documents) - case.documents_provided
    wanted = in_checklist_order(service, missing | set(cmd.documents))
    if not wanted:
        raise errors.NoDocumentsAreMissing()
    return [
        e.DocumentsRequested(
            case_id=case.case_id, at=cmd.at, actor=cmd.actor, unit=case.unit, level=case.level,
            documents=wanted, request_no=case.document_requests + 1,
            exceptional=approved_by is not None, approved_by=approved_by, note=cmd.note,
        ),
        pause_clock(case, _running(case), cmd.at, cmd.actor, ref),
    ]


def _override_for_another_request(
    case: Case, cmd: c.RequestDocuments, ref: Reference
) -> str | None:
    """One-time notification: the first request is the owner's; any later one is an exception
    a supervisor over the case must approve (or make)."""
    post = post_of(cmd.actor, ref)
    if case.document_requests == 0:
        require_owner(case, cmd.actor, ref)
        return None
    if is_supervisor_over(post, case, ref):
        return post.user_id
    require_owner(case, cmd.actor, ref)
    if cmd.approved_by is None:
        raise errors.DocumentsAlreadyRequestedOnce(f"{case.document_requests} request(s) so far")
    approver = ref.staff.get(cmd.approved_by)
    if approver is None or not is_supervisor_over(approver, case, ref):
        raise errors.OverrideMustComeFromASupervisorOverTheCase(cmd.approved_by)
    return approver.user_id


@handles(c.SupplyDocuments, may_act=require_worker_at_holding_unit)
def supply_documents(case: Case, cmd: c.SupplyDocuments, ref: Reference) -> Events:
    require_status(case, {CaseStatus.DOCUMENTS_REQUESTED}, errors.NoDocumentsWereRequested)
    if not cmd.documents:
        raise errors.NothingWasSupplied()
    unrequested = [d for d in cmd.documents if d not in case.documents_outstanding]
    if unrequested:
        raise errors.DocumentWasNotRequested(", ".join(unrequested))
    service = service_of(case.service_code, ref)
    outstanding = case.documents_outstanding - set(cmd.documents)
    supplied = e.DocumentsSupplied(
        case_id=case.case_id, at=cmd.at, actor=cmd.actor, unit=case.unit,
        documents=in_checklist_order(service, set(cmd.documents)),
        outstanding=in_checklist_order(service, outstanding),
    )
    if outstanding:
        return [supplied]
    resumed = start_clock(case, level=case.level, unit=case.unit, at=cmd.at, actor=cmd.actor,
                          ref=ref, reason="resumed")
    return [supplied, resumed]


@handles(c.HandOffCase, may_act=require_worker_at_holding_unit)
def hand_off(case: Case, cmd: c.HandOffCase, ref: Reference) -> Events:
    require_status(case, WORKABLE, errors.CaseIsAlreadyDecided)
    require_owner(case, cmd.actor, ref)
    return _move_up(case, cmd, ref, lambda up, to: e.CaseHandedOff(
        case_id=case.case_id, at=cmd.at, actor=cmd.actor, from_unit=case.unit,
        from_level=case.level, to_unit=to, to_level=up, owner=_owner(case), note=cmd.note,
    ))


def _move_up(
    case: Case, cmd: c.Command, ref: Reference, move: Callable[[Level, str], CaseEvent]
) -> Events:
    """Hand the case to the next unit of its chain: the move, then the clocks."""
    up = service_of(case.service_code, ref).next_level(case.level)
    if up is None:
        raise errors.ThereIsNoHigherLevelInTheChain(f"{case.level} decides this service")
    to_unit = _unit_at(case, up, ref)
    return [
        move(up, to_unit),
        stop_clock(case, _running(case), cmd.at, cmd.actor, ref),
        start_clock(case, level=up, unit=to_unit, at=cmd.at, actor=cmd.actor, ref=ref),
    ]


@handles(c.ReceiveHandoff, may_act=require_worker_at_holding_unit)
def receive_handoff(case: Case, cmd: c.ReceiveHandoff, ref: Reference) -> Events:
    require_status(case, {CaseStatus.HANDED_OFF}, errors.NoHandoffIsPending)
    owner = post_of(cmd.actor, ref)
    return [e.HandoffReceived(
        case_id=case.case_id, at=cmd.at, actor=cmd.actor, unit=case.unit, level=case.level,
        owner=owner.user_id, previous_owner=_owner(case),
    )]


@handles(c.ReturnCase, may_act=require_worker_at_holding_unit)
def return_case(case: Case, cmd: c.ReturnCase, ref: Reference) -> Events:
    require_status(case, WORKABLE, errors.CaseIsAlreadyDecided)
    require_owner(case, cmd.actor, ref)
    reasons = tuple(r.strip() for r in cmd.reasons if r.strip())
    if not reasons:
        raise errors.ReturnNeedsAReason()
    service = service_of(case.service_code, ref)
    require_in_checklist(service, cmd.documents)
    down = service.previous_level(case.level)
    if down is None:
        raise errors.ThereIsNoLowerLevelToReturnTo(f"{case.level} received the case")
    to_unit = _unit_at(case, down, ref)
    return [
        e.CaseReturned(
            case_id=case.case_id, at=cmd.at, actor=cmd.actor, from_unit=case.unit,
            from_level=case.level, to_unit=to_unit, to_level=down, reasons=reasons,
            documents=in_checklist_order(service, set(cmd.documents)),
            owner=_owner_at(case, to_unit, down, ref), previous_owner=_owner(case),
        ),
        stop_clock(case, _running(case), cmd.at, cmd.actor, ref),
        start_clock(case, level=down, unit=to_unit, at=cmd.at, actor=cmd.actor, ref=ref),
    ]


@handles(c.ReassignOwner, may_act=require_supervisor_or_worker)
def reassign_owner(case: Case, cmd: c.ReassignOwner, ref: Reference) -> Events:
    allowed = WORKABLE | {CaseStatus.DOCUMENTS_REQUESTED, CaseStatus.DECIDED}
    require_status(case, allowed, errors.CaseIsNotYetAccepted)
    if not is_supervisor_over(post_of(cmd.actor, ref), case, ref):
        require_owner(case, cmd.actor, ref)
    reason = required_text(cmd.reason, errors.ReasonMustBeGiven)
    new_owner = ref.staff.get(cmd.to_owner)
    if new_owner is None or new_owner.unit != case.unit or (
        new_owner.role != CASE_ROLE_AT_LEVEL.get(case.level)
    ):
        raise errors.NewOwnerMustWorkTheCaseAtTheHoldingUnit(cmd.to_owner)
    if new_owner.user_id == case.owner:
        raise errors.AlreadyTheOwner(cmd.to_owner)
    return [e.OwnerReassigned(
        case_id=case.case_id, at=cmd.at, actor=cmd.actor, unit=case.unit,
        from_owner=_owner(case), to_owner=new_owner.user_id, reason=reason,
    )]


@handles(c.DecideCase, may_act=require_worker_at_holding_unit)
def decide_case(case: Case, cmd: c.DecideCase, ref: Reference) -> Events:
    require_status(case, WORKABLE, errors.CaseIsAlreadyDecided)
    require_owner(case, cmd.actor, ref)
    service = service_of(case.service_code, ref)
    if case.level != service.deciding_level:
        raise errors.OnlyTheDecidingLevelMayDecide(f"{service.deciding_level} decides")
    basis = required_text(cmd.basis, errors.DecisionNeedsABasis)
    missing = set(service.required_documents) - case.documents_provided
    if cmd.outcome == Outcome.APPROVED and missing:
        raise errors.ApprovalNeedsEveryRequiredDocument(", ".join(sorted(missing)))
    return [
        e.CaseDecided(case_id=case.case_id, at=cmd.at, actor=cmd.actor, unit=case.unit,
                      level=case.level, outcome=cmd.outcome, basis=basis),
        stop_clock(case, _running(case), cmd.at, cmd.actor, ref),
    ]


@handles(c.CloseCase, may_act=require_worker_at_holding_unit)
def close(case: Case, cmd: c.CloseCase, ref: Reference) -> Events:
    require_status(case, {CaseStatus.DECIDED}, errors.OnlyADecidedCaseMayBeClosed)
    require_owner(case, cmd.actor, ref)
    return [e.CaseClosed(case_id=case.case_id, at=cmd.at, actor=cmd.actor, unit=case.unit,
                         level=case.level)]


@handles(c.WithdrawCase, may_act=require_worker_at_holding_unit)
def withdraw(case: Case, cmd: c.WithdrawCase, ref: Reference) -> Events:
    allowed = WORKABLE | {CaseStatus.SUBMITTED, CaseStatus.DOCUMENTS_REQUESTED}
    require_status(case, allowed, errors.CaseIsAlreadyDecided)
    reason = required_text(cmd.reason, errors.ReasonMustBeGiven)
    withdrawn: Events = [e.CaseWithdrawn(case_id=case.case_id, at=cmd.at, actor=cmd.actor,
                                         unit=case.unit, level=case.level, reason=reason)]
    if case.timer is None:
        return withdrawn
    return [*withdrawn, stop_clock(case, case.timer, cmd.at, cmd.actor, ref)]


@handles(c.ReopenCase, may_act=require_supervisor_or_worker)
def reopen(case: Case, cmd: c.ReopenCase, ref: Reference) -> Events:
    require_status(case, {CaseStatus.CLOSED}, errors.OnlyAClosedCaseMayBeReopened)
    reason = required_text(cmd.reason, errors.ReasonMustBeGiven)
    window = timedelta(days=service_of(case.service_code, ref).reopen_window_days)
    if case.closed_at is None or cmd.at > case.closed_at + window:
        raise errors.ReopenWindowHasPassed(f"closed at {case.closed_at}, window {window.days} d")
    return [
        e.CaseReopened(case_id=case.case_id, at=cmd.at, actor=cmd.actor, unit=case.unit,
                       level=case.level, owner=_owner(case), reason=reason),
        start_clock(case, level=case.level, unit=case.unit, at=cmd.at, actor=cmd.actor,
                    ref=ref, reason="restarted", used=0),
    ]


@handles(c.AddNote, may_act=require_at_or_over_holding_unit)
def add_note(case: Case, cmd: c.AddNote, ref: Reference) -> Events:
    text = required_text(cmd.text, errors.NoteMustNotBeEmpty)
    return [e.NoteAdded(case_id=case.case_id, at=cmd.at, actor=cmd.actor, text=text)]


@handles(c.RecordExternalResult, may_act=_a_system_over)
def record_external_result(case: Case, cmd: c.RecordExternalResult, ref: Reference) -> Events:
    return [e.ExternalResultRecorded(
        case_id=case.case_id, at=cmd.at, actor=cmd.actor, source_system=cmd.source_system,
        result_type=cmd.result_type, reference=cmd.reference, summary=cmd.summary,
        details=dict(cmd.details),
    )]


# ------------------------------------------------------------ the SLA clock's commands


@handles(c.RaiseSlaWarning, may_act=_the_sla_clock)
def raise_sla_warning(case: Case, cmd: c.RaiseSlaWarning, ref: Reference) -> Events:
    timer = _current(case, cmd.timer_no)
    if timer is None or timer.warned:
        return []
    if cmd.at < timer.warn_at:
        raise errors.SlaWarningIsNotYetDue(f"warns at {timer.warn_at}")
    return [e.SlaWarningRaised(
        case_id=case.case_id, at=cmd.at, actor=cmd.actor, timer_no=timer.timer_no,
        level=timer.level, unit=timer.unit, owner=_owner(case), due_at=timer.due_at,
    )]


@handles(c.RecordSlaBreach, may_act=_the_sla_clock)
def record_sla_breach(case: Case, cmd: c.RecordSlaBreach, ref: Reference) -> Events:
    timer = _current(case, cmd.timer_no)
    if timer is None or timer.breached:
        return []
    if cmd.at < timer.due_at:
        raise errors.SlaIsNotYetBreached(f"due at {timer.due_at}")
    return [e.SlaBreached(
        case_id=case.case_id, at=cmd.at, actor=cmd.actor, timer_no=timer.timer_no,
        level=timer.level, unit=timer.unit, owner=_owner(case), due_at=timer.due_at,
    )]


@handles(c.EscalateOverdueCase, may_act=_the_sla_clock)
def escalate_overdue_case(case: Case, cmd: c.EscalateOverdueCase, ref: Reference) -> Events:
    timer = _current(case, cmd.timer_no)
    if timer is None:
        return []
    if not timer.breached:
        raise errors.SlaIsNotYetBreached(f"due at {timer.due_at}")
    if not service_of(case.service_code, ref).escalates_on_breach_at(timer.level):
        raise errors.ServiceDoesNotEscalateAtThisLevel(f"{case.service_code} at {timer.level}")
    require_status(case, WORKABLE, errors.CaseIsAlreadyDecided)
    return _move_up(case, cmd, ref, lambda up, to: e.CaseEscalated(
        case_id=case.case_id, at=cmd.at, actor=cmd.actor, from_unit=case.unit,
        from_level=case.level, to_unit=to, to_level=up, owner=_owner(case),
        timer_no=timer.timer_no,
    ))


# ------------------------------------------------------------ helpers


def _current(case: Case, timer_no: int) -> Timer | None:
    """The running timer if ``timer_no`` is it; a stale or finished timer gives ``None``."""
    timer = case.timer
    if timer is None or timer.timer_no != timer_no or case.status not in TIMED:
        return None
    return timer


def _running(case: Case) -> Timer:
    if case.timer is None:
        raise RuntimeError(f"case {case.case_id} is {case.status} without a running SLA clock")
    return case.timer


def _owner(case: Case) -> str:
    if case.owner is None:
        raise RuntimeError(f"case {case.case_id} is {case.status} without an owner")
    return case.owner


def _unit_at(case: Case, level: Level, ref: Reference) -> str:
    unit = ref.org.ancestor_at(case.station, level)
    if unit is None:
        raise RuntimeError(f"station {case.station} has no {level} above it")
    return unit.code


def _owner_at(case: Case, unit: str, level: Level, ref: Reference) -> str:
    """Who owns the case again when it comes back to ``unit``: whoever owned it there last, else
    the first person of that unit in the role that works the level."""
    previous = case.owners_by_unit.get(unit)
    if previous is not None:
        return previous
    people = ref.staff.at_unit(unit, CASE_ROLE_AT_LEVEL[level])
    if not people:
        raise RuntimeError(f"nobody at {unit} works {level} cases")
    return people[0].user_id


def decide_all(state: Case | None, commands: Sequence[c.Command], ref: Reference) -> Events:
    """Decide several commands in a row (a test and batch convenience)."""
    events: Events = []
    for command in commands:
        new = decide(state, command, ref)
        for event in new:
            state = evolve(state, event)
        events += new
    return events
