"""Who acts is checked before anything that tells the case's state: for every command, an actor
who may not act on the case is refused as such, even where the case's status (or its history's
time) would refuse the command too — else a 409 would tell anyone where any case stands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from services.cases.domain import (
    AcceptCase,
    AddNote,
    CloseCase,
    Command,
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
from shared.contracts.cases import Actor, Outcome
from shared.reference import Role
from tests.unit.cases.case_story import CAST, COUNTY, OTHER_COUNTY, Story, person
from tests.unit.cases.test_case_rejections import breached_at_community

pytestmark = pytest.mark.unit

APPROVE = {"outcome": Outcome.APPROVED, "basis": "eligible"}
COUNTY_SYSTEM = person("system:county", Role.SYSTEM, COUNTY)
OTHER_COUNTY_SYSTEM = person("system:other_county", Role.SYSTEM, OTHER_COUNTY)
EARLIER = -1  # hours: before the first event of every history


class Example(NamedTuple):
    given: Callable[[Story], list[Any]]
    when: Callable[[Story, Actor, float], Command]
    hours: float
    insider: Actor
    refused_as: type[errors.Rejection]  # what the state does to one who may act
    outsider: Actor
    forbidden_as: type[errors.Rejection]


def command(kind: Callable[..., Command], **fields: Any) -> Callable[[Story, Actor, float],
                                                                      Command]:
    return lambda s, actor, hours: s.cmd(kind, actor, hours, **fields)


def resubmit(s: Story, actor: Actor, hours: float) -> Command:
    return s.submit(actor=actor, hours=hours)


EXAMPLES = [
    Example(Story.submitted, resubmit, 1, CAST.clerk, errors.CaseAlreadyExists,
            CAST.other_station_clerk, errors.OnlyTheHoldingUnitMayAct),
    Example(Story.accepted, command(AcceptCase), 2, CAST.clerk, errors.CaseIsAlreadyAccepted,
            CAST.other_station_clerk, errors.OnlyTheHoldingUnitMayAct),
    Example(Story.decided, command(RequestDocuments, documents=("id_card",)), 7, CAST.county,
            errors.CaseIsAlreadyDecided, CAST.other_town_supervisor,
            errors.OnlyTheHoldingUnitMayAct),
    Example(Story.accepted, command(SupplyDocuments, documents=("id_card",)), 2, CAST.clerk,
            errors.NoDocumentsWereRequested, CAST.other_station_clerk,
            errors.OnlyTheHoldingUnitMayAct),
    Example(Story.decided, command(HandOffCase), 7, CAST.county, errors.CaseIsAlreadyDecided,
            CAST.other_town, errors.OnlyTheHoldingUnitMayAct),
    Example(Story.at_township, command(ReceiveHandoff), 4, CAST.town_b,
            errors.NoHandoffIsPending, CAST.other_town, errors.OnlyTheHoldingUnitMayAct),
    Example(Story.decided, command(ReturnCase, reasons=("x",)), 7, CAST.county,
            errors.CaseIsAlreadyDecided, CAST.other_town, errors.OnlyTheHoldingUnitMayAct),
    Example(Story.submitted, command(ReassignOwner, to_owner=CAST.clerk_b.user_id, reason="x"),
            1, CAST.clerk, errors.CaseIsNotYetAccepted, CAST.other_town_supervisor,
            errors.OnlyTheHoldingUnitMayAct),
    Example(Story.decided, command(DecideCase, **APPROVE), 7, CAST.county,
            errors.CaseIsAlreadyDecided, CAST.other_town, errors.OnlyTheHoldingUnitMayAct),
    Example(Story.decided, command(DecideCase, **APPROVE), 7, CAST.county,
            errors.CaseIsAlreadyDecided, CAST.county_supervisor,
            errors.RoleDoesNotFitTheHoldingLevel),
    Example(Story.at_county, command(CloseCase), 6, CAST.county,
            errors.OnlyADecidedCaseMayBeClosed, CAST.other_town, errors.OnlyTheHoldingUnitMayAct),
    Example(Story.closed, command(WithdrawCase, reason="x"), 8, CAST.county, errors.CaseIsClosed,
            CAST.other_town, errors.OnlyTheHoldingUnitMayAct),
    Example(Story.at_county, command(ReopenCase, reason="x"), 6, CAST.county,
            errors.OnlyAClosedCaseMayBeReopened, CAST.other_town_supervisor,
            errors.OnlyTheHoldingUnitMayAct),
    # no status refuses these: the history's time does
    Example(Story.at_county, command(AddNote, text="x"), EARLIER, CAST.county,
            errors.CommandPredatesTheCaseHistory, CAST.other_town,
            errors.OnlyTheHoldingUnitMayAct),
    Example(Story.at_county, command(RecordExternalResult, source_system="county",
                                     result_type="pension_record", reference="r"),
            EARLIER, COUNTY_SYSTEM, errors.CommandPredatesTheCaseHistory, OTHER_COUNTY_SYSTEM,
            errors.SystemsActOnlyWithinTheirUnit),
    Example(Story.at_county, command(RecordExternalResult, source_system="county",
                                     result_type="pension_record", reference="r"),
            EARLIER, COUNTY_SYSTEM, errors.CommandPredatesTheCaseHistory, CAST.county,
            errors.OnlyOtherSystemsRecordExternalResults),
    Example(Story.accepted, command(RaiseSlaWarning, timer_no=1), 2, CAST.clock,
            errors.SlaWarningIsNotYetDue, CAST.clerk, errors.OnlyTheSlaClockFiresTimers),
    Example(Story.accepted, command(RecordSlaBreach, timer_no=1), 2, CAST.clock,
            errors.SlaIsNotYetBreached, CAST.clerk, errors.OnlyTheSlaClockFiresTimers),
    Example(breached_at_community, command(EscalateOverdueCase, timer_no=1), 24 * 8, CAST.clock,
            errors.ServiceDoesNotEscalateAtThisLevel, CAST.clerk,
            errors.OnlyTheSlaClockFiresTimers),
]


def _id(example: Example) -> str:
    kind = type(example.when(Story(None), CAST.clerk, 0)).__name__
    return f"{kind}-{example.forbidden_as.__name__}"


@pytest.mark.parametrize("example", EXAMPLES, ids=_id)
def test_who_acts_is_checked_before_the_state(example: Example, given, story):
    case = given(example.given(story))
    case.when(example.when(story, example.insider, example.hours)).then(example.refused_as)
    for hours in (example.hours, EARLIER):  # also before the history: its time is state too
        rejection = case.when(example.when(story, example.outsider, hours)).then(
            example.forbidden_as)
        assert rejection.kind == "forbidden"


def test_every_command_has_an_example():
    # by name: a slotted dataclass leaves its first, unslotted class among the subclasses
    assert {kind.__name__ for kind in Command.__subclasses__()} == {
        type(x.when(Story(None), CAST.clerk, 0)).__name__ for x in EXAMPLES}


def test_a_refusal_of_who_acts_does_not_say_where_the_case_is(given, story):
    rejection = given(story.at_county()).when(
        story.cmd(DecideCase, CAST.other_town, 6, **APPROVE)
    ).then(errors.OnlyTheHoldingUnitMayAct)
    assert rejection.reason == "Only the holding unit may act: 530102002 does not hold the case"
    rejection = given(story.at_county()).when(story.cmd(
        RecordExternalResult, OTHER_COUNTY_SYSTEM, 6, source_system="other_county",
        result_type="pension_record", reference="r",
    )).then(errors.SystemsActOnlyWithinTheirUnit)
    assert rejection.reason == ("Systems act only within their unit: system:other_county acts "
                                "for 530103 and the units under it")
