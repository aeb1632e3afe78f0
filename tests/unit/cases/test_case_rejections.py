"""Given / when / then for every rejection: each rule, once, by the class that names it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from services.cases.domain import (
    AcceptCase,
    AddNote,
    CloseCase,
    DecideCase,
    EscalateOverdueCase,
    HandOffCase,
    RaiseSlaWarning,
    ReassignOwner,
    ReceiveHandoff,
    RecordExternalResult,
    RecordSlaBreach,
    ReopenCase,
    RequestDocuments,
    ReturnCase,
    SupplyDocuments,
    WithdrawCase,
    errors,
)
from shared.contracts.cases import Actor, CaseSubmitted, ExternalResultRecorded, Outcome
from shared.reference import Role
from tests.unit.cases.case_story import (
    CAST,
    COUNTY,
    MLG_DOCUMENTS,
    OTHER_COUNTY,
    STATION,
    Story,
    person,
)

pytestmark = pytest.mark.unit

APPROVE = {"outcome": Outcome.APPROVED, "basis": "eligible"}
# another government system registered for county 530103 (its source's ``unit``)
OTHER_COUNTY_SYSTEM = person("system:other_county", Role.SYSTEM, OTHER_COUNTY)


class Example(NamedTuple):
    rejection: type[errors.Rejection]
    given: Callable[[Story], list[Any]]
    when: Callable[[Story], Any]


def nothing(story: Story) -> list[Any]:
    return []


def requested_once(story: Story) -> list[Any]:
    return story.history(
        story.submit(documents=MLG_DOCUMENTS[:-1]), story.cmd(AcceptCase, CAST.clerk, 1),
        story.cmd(RequestDocuments, CAST.clerk, 2),
        story.cmd(SupplyDocuments, CAST.clerk, 3, documents=("bank_account",)),
    )


def waiting_for_documents(story: Story) -> list[Any]:
    return story.history(
        story.submit(documents=MLG_DOCUMENTS[:-1]), story.cmd(AcceptCase, CAST.clerk, 1),
        story.cmd(RequestDocuments, CAST.clerk, 2),
    )


def withdrawn(story: Story) -> list[Any]:
    return story.history(story.submit(), story.cmd(WithdrawCase, CAST.clerk, 1, reason="moved"))


def escalating_at_community(story: Story) -> list[Any]:
    return story.history(
        story.submit(service="labour_inspection_complaint", documents=()),
        story.cmd(AcceptCase, CAST.clerk, 1),
    )


def one_level_service(story: Story) -> list[Any]:
    return story.history(
        story.submit(service="job_referral", documents=("id_card",)),
        story.cmd(AcceptCase, CAST.clerk, 1),
    )


def breached_at_community(story: Story) -> list[Any]:
    events = story.accepted()
    return [*events, *story.history_after(events, story.cmd(
        RecordSlaBreach, CAST.clock, 24 * 8, timer_no=1))]


def stranger(role: Role = Role.STATION_CLERK) -> Actor:
    return Actor(user_id="nobody.here", role=role, unit="530102001001")


EXAMPLES = [
    # who may act ---------------------------------------------------------------------
    Example(errors.ActorIsNotInTheStaffDirectory, Story.accepted,
            lambda s: s.cmd(HandOffCase, stranger(), 2)),
    Example(errors.ActorDoesNotMatchTheStaffDirectory, Story.accepted,
            lambda s: s.cmd(HandOffCase, CAST.clerk.model_copy(update={"unit": "530102001"}), 2)),
    Example(errors.AuditorsOnlyRead, Story.accepted,
            lambda s: s.cmd(AddNote, CAST.auditor, 2, text="looked at it")),
    Example(errors.OnlyTheDesignatedBackupMayActForAnother, Story.at_township,
            lambda s: s.cmd(HandOffCase, CAST.clerk_b.model_copy(
                update={"acting_for": CAST.town.user_id}), 4)),
    Example(errors.OnlyStaffMayDoThis, Story.accepted,
            lambda s: s.cmd(HandOffCase, CAST.other_system, 2)),
    Example(errors.OnlyTheSlaClockFiresTimers, Story.accepted,
            lambda s: s.cmd(RaiseSlaWarning, CAST.clerk, 2, timer_no=1)),
    Example(errors.OnlyOtherSystemsRecordExternalResults, Story.accepted,
            lambda s: s.cmd(RecordExternalResult, CAST.clerk, 2, source_system="pension",
                            result_type="x", reference="y")),
    Example(errors.OnlyTheHoldingUnitMayAct, Story.at_township,
            lambda s: s.cmd(ReturnCase, CAST.other_town, 4, reasons=("not ours",))),
    Example(errors.SystemsActOnlyWithinTheirUnit, nothing,
            lambda s: s.submit(actor=OTHER_COUNTY_SYSTEM)),
    Example(errors.RoleDoesNotFitTheHoldingLevel, Story.handed_to_township,
            lambda s: s.cmd(ReceiveHandoff, CAST.town_supervisor, 3)),
    Example(errors.OnlyTheOwnerMayAct, Story.at_township,
            lambda s: s.cmd(HandOffCase, CAST.town_b, 4)),
    Example(errors.OnlyTheDecidingLevelMayDecide, Story.at_township,
            lambda s: s.cmd(DecideCase, CAST.town, 4, **APPROVE)),
    Example(errors.OverrideMustComeFromASupervisorOverTheCase, requested_once,
            lambda s: s.cmd(RequestDocuments, CAST.clerk, 4, documents=("id_card",),
                            approved_by=CAST.other_town_supervisor.user_id)),
    # not in this state ----------------------------------------------------------------
    Example(errors.CaseDoesNotExist, nothing, lambda s: s.cmd(AcceptCase, CAST.clerk, 1)),
    Example(errors.CaseAlreadyExists, Story.submitted, lambda s: s.submit(hours=1)),
    Example(errors.CommandPredatesTheCaseHistory, Story.at_township,
            lambda s: s.cmd(HandOffCase, CAST.town, 2.5)),
    Example(errors.CaseIsNotYetAccepted, Story.submitted,
            lambda s: s.cmd(HandOffCase, CAST.clerk, 1)),
    Example(errors.CaseIsAlreadyAccepted, Story.accepted,
            lambda s: s.cmd(AcceptCase, CAST.clerk, 2)),
    Example(errors.CaseIsWaitingForDocuments, waiting_for_documents,
            lambda s: s.cmd(HandOffCase, CAST.clerk, 3)),
    Example(errors.NoDocumentsWereRequested, Story.accepted,
            lambda s: s.cmd(SupplyDocuments, CAST.clerk, 2, documents=("id_card",))),
    Example(errors.DocumentsAlreadyRequestedOnce, requested_once,
            lambda s: s.cmd(RequestDocuments, CAST.clerk, 4, documents=("id_card",))),
    Example(errors.HandoffIsNotYetReceived, Story.handed_to_township,
            lambda s: s.cmd(ReturnCase, CAST.town, 3, reasons=("x",))),
    Example(errors.NoHandoffIsPending, Story.at_township,
            lambda s: s.cmd(ReceiveHandoff, CAST.town_b, 4)),
    Example(errors.CaseIsAlreadyDecided, Story.decided,
            lambda s: s.cmd(DecideCase, CAST.county, 7, **APPROVE)),
    Example(errors.OnlyADecidedCaseMayBeClosed, Story.at_county,
            lambda s: s.cmd(CloseCase, CAST.county, 6)),
    Example(errors.CaseIsClosed, Story.closed,
            lambda s: s.cmd(WithdrawCase, CAST.county, 8, reason="too late")),
    Example(errors.CaseIsWithdrawn, withdrawn, lambda s: s.cmd(AcceptCase, CAST.clerk, 2)),
    Example(errors.OnlyAClosedCaseMayBeReopened, Story.at_county,
            lambda s: s.cmd(ReopenCase, CAST.county, 6, reason="again")),
    Example(errors.ReopenWindowHasPassed, Story.closed,
            lambda s: s.cmd(ReopenCase, CAST.county, 7 + 24 * 61, reason="again")),
    Example(errors.ThereIsNoHigherLevelInTheChain, Story.at_county,
            lambda s: s.cmd(HandOffCase, CAST.county, 6)),
    Example(errors.ThereIsNoLowerLevelToReturnTo, Story.accepted,
            lambda s: s.cmd(ReturnCase, CAST.clerk, 2, reasons=("nowhere",))),
    Example(errors.ApprovalNeedsEveryRequiredDocument, one_level_service,
            lambda s: s.cmd(DecideCase, CAST.clerk, 2, **APPROVE)),
    Example(errors.SlaWarningIsNotYetDue, Story.accepted,
            lambda s: s.cmd(RaiseSlaWarning, CAST.clock, 2, timer_no=1)),
    Example(errors.SlaIsNotYetBreached, Story.accepted,
            lambda s: s.cmd(RecordSlaBreach, CAST.clock, 2, timer_no=1)),
    Example(errors.ServiceDoesNotEscalateAtThisLevel, breached_at_community,
            lambda s: s.cmd(EscalateOverdueCase, CAST.clock, 24 * 8, timer_no=1)),
    # malformed commands ---------------------------------------------------------------
    Example(errors.UnknownService, nothing, lambda s: s.submit(service="fortune_telling")),
    Example(errors.CasesAreReceivedOnlyAtStations, nothing,
            lambda s: s.submit(actor=CAST.other_system, station=OTHER_COUNTY)),
    Example(errors.DocumentIsNotInTheChecklist, nothing,
            lambda s: s.submit(documents=("id_card", "horoscope"))),
    Example(errors.NoDocumentsAreMissing, Story.accepted,
            lambda s: s.cmd(RequestDocuments, CAST.clerk, 2)),
    Example(errors.NothingWasSupplied, waiting_for_documents,
            lambda s: s.cmd(SupplyDocuments, CAST.clerk, 3, documents=())),
    Example(errors.DocumentWasNotRequested, waiting_for_documents,
            lambda s: s.cmd(SupplyDocuments, CAST.clerk, 3, documents=("id_card",))),
    Example(errors.ReturnNeedsAReason, Story.at_township,
            lambda s: s.cmd(ReturnCase, CAST.town, 4, reasons=(" ",))),
    Example(errors.DecisionNeedsABasis, Story.at_county,
            lambda s: s.cmd(DecideCase, CAST.county, 6, outcome=Outcome.REFUSED, basis="")),
    Example(errors.ReasonMustBeGiven, Story.accepted,
            lambda s: s.cmd(WithdrawCase, CAST.clerk, 2, reason="  ")),
    Example(errors.NoteMustNotBeEmpty, Story.accepted,
            lambda s: s.cmd(AddNote, CAST.clerk, 2, text="")),
    Example(errors.NewOwnerMustWorkTheCaseAtTheHoldingUnit, Story.at_township,
            lambda s: s.cmd(ReassignOwner, CAST.town_supervisor, 4,
                            to_owner=CAST.clerk.user_id, reason="x")),
    Example(errors.AlreadyTheOwner, Story.at_township,
            lambda s: s.cmd(ReassignOwner, CAST.town_supervisor, 4,
                            to_owner=CAST.town.user_id, reason="x")),
]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda x: x.rejection.__name__)
def test_rejection(example: Example, given, story):
    rejection = given(example.given(story)).when(example.when(story)).then(example.rejection)
    assert rejection.reason.startswith(errors.sentence(example.rejection.__name__))
    assert rejection.kind in {"forbidden", "conflict", "invalid", "not_found"}


def test_every_rejection_has_an_example():
    groups = {errors.Rejection, errors.NotAllowed, errors.NotNow, errors.NotValid,
              errors.NotFound}
    defined = {cls for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, errors.Rejection) and cls not in groups}
    assert defined == {example.rejection for example in EXAMPLES}


def test_a_rejection_reads_as_a_sentence_and_names_its_field():
    rejection = errors.OnlyTheHoldingUnitMayAct("the case is held by 530102001")
    assert rejection.reason == "Only the holding unit may act: the case is held by 530102001"
    assert (rejection.field, rejection.kind) == ("actor.unit", "forbidden")


def test_an_officer_of_another_township_may_not_receive_its_handoff(given, story):
    given(story.handed_to_township()).when(
        story.cmd(ReceiveHandoff, CAST.other_town, 3)
    ).then(errors.OnlyTheHoldingUnitMayAct)


def test_a_supervisor_of_another_township_may_not_reassign(given, story):
    given(story.at_township()).when(story.cmd(
        ReassignOwner, CAST.other_town_supervisor, 4, to_owner=CAST.town_b.user_id, reason="x",
    )).then(errors.OnlyTheHoldingUnitMayAct)


def test_a_backup_acting_for_nobody_in_particular_is_only_themself(given, story):
    given(story.at_township()).when(
        story.cmd(HandOffCase, CAST.clerk_b, 4)
    ).then(errors.OnlyTheHoldingUnitMayAct)


def test_a_community_clerk_may_not_escalate_a_timer(given, story):
    given(escalating_at_community(story)).when(
        story.cmd(EscalateOverdueCase, CAST.clerk, 2, timer_no=1)
    ).then(errors.OnlyTheSlaClockFiresTimers)


def test_a_system_of_another_county_may_not_attach_a_result(given, story):
    given(story.accepted()).when(story.cmd(
        RecordExternalResult, OTHER_COUNTY_SYSTEM, 2, source_system="other_county",
        result_type="pension_record", reference="ref-1",
    )).then(errors.SystemsActOnlyWithinTheirUnit)


def test_a_system_of_the_county_submits_and_attaches_within_it(given, story):
    county_system = person("system:county", Role.SYSTEM, COUNTY)
    given([]).when(story.submit(actor=county_system, station=STATION)).then(CaseSubmitted)
    given(story.at_county()).when(story.cmd(
        RecordExternalResult, county_system, 6, source_system="county",
        result_type="pension_record", reference="ref-1",
    )).then(ExternalResultRecorded)
