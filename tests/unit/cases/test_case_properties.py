"""Random command sequences (Hypothesis stateful testing): whatever people and the clock do, a
case is never in an invalid state, has exactly one owner once accepted, and its state is the
fold of its (serialised and re-read) events."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.cases.domain import (
    TIMED,
    WORKABLE,
    AcceptCase,
    AddNote,
    CloseCase,
    DecideCase,
    HandOffCase,
    ReassignOwner,
    ReceiveHandoff,
    RecordExternalResult,
    Rejection,
    ReopenCase,
    RequestDocuments,
    ReturnCase,
    SubmitCase,
    SupplyDocuments,
    WithdrawCase,
    decide,
    escalations_owed,
    evolve,
    fold,
    sla_clock_actor,
    timer_commands_due,
)
from shared.contracts.canonical import canonical_json
from shared.contracts.cases import (
    Actor,
    CaseAccepted,
    CaseEscalated,
    CaseEvent,
    CaseStatus,
    EncryptedApplicant,
    Outcome,
    SlaBreached,
    SlaWarningRaised,
)
from shared.contracts.registry import registry, to_new_event
from shared.reference import CHINA_TZ, Role, StaffMember, load_reference

pytestmark = pytest.mark.unit

REF = load_reference()
CASE_ID = UUID("00000000-0000-4000-8000-0000000000c5")
STATION = "530102001001"
START = datetime(2026, 1, 5, 9, 0, tzinfo=CHINA_TZ)
LATEST = datetime(2026, 9, 1, tzinfo=CHINA_TZ)
SERVICES = ("minimum_living_guarantee", "labour_inspection_complaint", "job_referral",
            "labour_dispute_mediation")
CLOCK = sla_clock_actor(REF)
KINDS = (AcceptCase, RequestDocuments, SupplyDocuments, HandOffCase, ReceiveHandoff, ReturnCase,
         ReassignOwner, DecideCase, CloseCase, WithdrawCase, ReopenCase, AddNote,
         RecordExternalResult)
NEXT_STEPS = {
    CaseStatus.SUBMITTED: (AcceptCase,),
    CaseStatus.ACCEPTED: (HandOffCase, RequestDocuments, DecideCase, ReturnCase),
    CaseStatus.IN_REVIEW: (HandOffCase, RequestDocuments, DecideCase, ReturnCase),
    CaseStatus.RETURNED: (HandOffCase, RequestDocuments, ReassignOwner),
    CaseStatus.REOPENED: (DecideCase, ReturnCase),
    CaseStatus.HANDED_OFF: (ReceiveHandoff,),
    CaseStatus.DOCUMENTS_REQUESTED: (SupplyDocuments,),
    CaseStatus.DECIDED: (CloseCase, ReassignOwner),
    CaseStatus.CLOSED: (ReopenCase, AddNote),
}
BYSTANDER_IDS = (
    "clerk.530102001002.a", "officer.530102002.a", "officer.530103.a", "supervisor.530102001",
    "supervisor.530102002", "supervisor.530100.a", "auditor.530100.a",
)
BYSTANDERS = (
    *(Actor(user_id=m.user_id, role=m.role, unit=m.unit)
      for m in map(REF.staff.member, BYSTANDER_IDS)),
    Actor(user_id="system.pension", role=Role.SYSTEM, unit="530100"),
)


def as_actor(member: StaffMember, acting_for: str | None = None) -> Actor:
    return Actor(user_id=member.user_id, role=member.role, unit=member.unit,
                 acting_for=acting_for)


def reread(event: CaseEvent) -> CaseEvent:
    """The event as a consumer gets it back: canonical JSON, upcast, validated."""
    new = to_new_event(event)
    canonical_json(new.data)
    data = registry.upcast(new.type, new.schema_version, new.data)
    model = registry.models[new.type].model_validate(data)
    assert isinstance(model, CaseEvent)
    return model


class CaseLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[CaseEvent] = []
        self.state = None
        self.now = START

    # ------------------------------------------------------------------ plumbing
    def apply(self, command) -> None:
        try:
            new = decide(self.state, command, REF)
        except Rejection:
            return
        for event in new:
            self.state = evolve(self.state, event)
            self.events.append(event)

    def tick(self, data: st.DataObject) -> datetime:
        step = data.draw(st.integers(0, 2 * 24 * 60), label="minutes")
        self.now = min(self.now + timedelta(minutes=step), LATEST)
        return self.now

    def responsible(self) -> list[Actor]:
        """People of the holding unit, the owner and the owner's backup acting for them."""
        state = self.state
        people = [as_actor(m) for m in REF.staff.at_unit(state.unit)]
        if state.owner is not None:
            owner = REF.staff.member(state.owner)
            people.append(as_actor(owner))
            if owner.backup:
                people.append(as_actor(REF.staff.member(owner.backup), acting_for=owner.user_id))
        return people

    def act(self, kind, actor: Actor, data: st.DataObject) -> None:
        at = self.tick(data)
        self.apply(kind(case_id=CASE_ID, at=at, actor=actor, **self.fields(kind, data)))

    # ------------------------------------------------------------------ rules
    @initialize(service=st.sampled_from(SERVICES), data=st.data())
    def submit(self, service: str, data: st.DataObject) -> None:
        checklist = REF.catalogue.service(service).required_documents
        provided = data.draw(st.lists(st.sampled_from(checklist), unique=True)
                             if checklist else st.just([]), label="provided")
        clerk = as_actor(REF.staff.duty_clerk(STATION))
        self.apply(SubmitCase(
            case_id=CASE_ID, at=self.now, actor=clerk, tracking_no="KM-P-1",
            service_code=service, visit_id=CASE_ID, station=STATION,
            applicant=EncryptedApplicant(subject_id="s", id_hash="h"), documents=tuple(provided),
        ))
        assert self.state is not None

    @rule(data=st.data())
    def anyone_tries_anything(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(KINDS), label="command")
        actor = data.draw(st.sampled_from([*self.responsible(), *BYSTANDERS]), label="actor")
        self.act(kind, actor, data)

    @rule(data=st.data(), steps=st.integers(1, 4))
    def the_case_moves_on(self, data: st.DataObject, steps: int) -> None:
        for _ in range(steps):
            kind = data.draw(st.sampled_from(NEXT_STEPS.get(self.state.status, KINDS)))
            actor = data.draw(st.sampled_from(self.responsible()), label="actor")
            self.act(kind, actor, data)

    @rule(data=st.data())
    def a_supervisor_steps_in(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from([ReassignOwner, RequestDocuments, ReopenCase, AddNote]))
        supervisors = [a for a in BYSTANDERS if a.role == Role.SUPERVISOR]
        self.act(kind, data.draw(st.sampled_from(supervisors), label="supervisor"), data)

    @rule()
    def weeks_pass(self) -> None:
        self.now = min(self.now + timedelta(days=40), LATEST)

    @rule(data=st.data())
    def the_clock_fires(self, data: st.DataObject) -> None:
        timer = self.state.timer
        if timer is None:
            return
        target = data.draw(st.sampled_from([timer.warn_at, timer.due_at]), label="fire at")
        self.now = max(self.now, target)
        for command in timer_commands_due(self.state, self.now, CLOCK) * 2:  # fired twice
            self.apply(command)
        for command in escalations_owed(self.state, self.now, CLOCK, REF) * 2:
            self.apply(command)
        assert escalations_owed(self.state, self.now, CLOCK, REF) == []  # none left owed

    def fields(self, kind, data: st.DataObject) -> dict:
        service = REF.catalogue.service(self.state.service_code)
        some_documents = st.lists(st.sampled_from(service.required_documents), unique=True,
                                  max_size=3) if service.required_documents else st.just([])
        text = st.sampled_from(["income proof missing", "applicant called", "checked", ""])
        if kind is RequestDocuments:
            approver = st.sampled_from([None, "supervisor.530102001", "supervisor.530102002"])
            return {"documents": tuple(data.draw(some_documents)),
                    "approved_by": data.draw(approver)}
        if kind is SupplyDocuments:
            outstanding = sorted(self.state.documents_outstanding)
            pick = st.lists(st.sampled_from(outstanding), unique=True) if outstanding else (
                some_documents)
            return {"documents": tuple(data.draw(pick))}
        if kind is ReturnCase:
            return {"reasons": (data.draw(text),), "documents": tuple(data.draw(some_documents))}
        if kind is ReassignOwner:
            people = [m.user_id for m in REF.staff.at_unit(self.state.unit)] or ["nobody"]
            return {"to_owner": data.draw(st.sampled_from(people)), "reason": data.draw(text)}
        if kind is DecideCase:
            return {"outcome": data.draw(st.sampled_from(Outcome)), "basis": data.draw(text)}
        if kind in (WithdrawCase, ReopenCase):
            return {"reason": data.draw(text)}
        if kind is AddNote:
            return {"text": data.draw(text)}
        if kind is RecordExternalResult:
            return {"source_system": "pension", "result_type": "check", "reference": "R-1"}
        return {}

    # ------------------------------------------------------------------ invariants
    @invariant()
    def state_is_the_fold_of_its_reread_events(self) -> None:
        assert fold([reread(e) for e in self.events]) == self.state
        assert self.state.version == len(self.events)

    @invariant()
    def exactly_one_owner_once_accepted(self) -> None:
        state = self.state
        accepted = any(isinstance(e, CaseAccepted) for e in self.events)
        assert (state.owner is not None) == accepted
        if state.owner is None:
            return
        owner = REF.staff.member(state.owner)
        if state.status == CaseStatus.HANDED_OFF:
            assert owner.unit != state.unit and REF.org.is_within(owner.unit, state.unit)
        elif state.status != CaseStatus.WITHDRAWN:
            assert owner.unit == state.unit

    @invariant()
    def the_case_is_somewhere_valid(self) -> None:
        state = self.state
        service = REF.catalogue.service(state.service_code)
        unit = REF.org.unit(state.unit)
        assert unit.level == state.level and state.level in service.chain
        assert REF.org.is_within(state.station, state.unit)
        assert state.documents_provided <= set(service.required_documents)
        assert (state.status == CaseStatus.DOCUMENTS_REQUESTED) == bool(
            state.documents_outstanding
        )
        if state.status in (CaseStatus.DECIDED, CaseStatus.CLOSED):
            assert state.outcome is not None and state.level == service.deciding_level
        if state.status == CaseStatus.SUBMITTED:
            assert state.unit == state.station

    @invariant()
    def a_clock_runs_exactly_while_a_level_works_the_case(self) -> None:
        state = self.state
        assert (state.timer is not None) == (state.status in TIMED)
        if state.timer is not None:
            assert (state.timer.level, state.timer.unit) == (state.level, state.unit)
            assert state.timer.warn_at <= state.timer.due_at
        if state.status in WORKABLE:
            assert state.owner is not None

    @invariant()
    def timers_fire_at_most_once(self) -> None:
        fired = Counter((type(e).__name__, e.timer_no) for e in self.events
                        if isinstance(e, SlaBreached | SlaWarningRaised | CaseEscalated))
        assert all(count == 1 for count in fired.values())


CaseLifecycle.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_case_lifecycle = CaseLifecycle.TestCase
