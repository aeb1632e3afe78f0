"""Given / when / then for every transition of a case."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.cases.domain import (
    AcceptCase,
    AddNote,
    CloseCase,
    DecideCase,
    HandOffCase,
    ReassignOwner,
    ReceiveHandoff,
    RecordExternalResult,
    ReopenCase,
    RequestDocuments,
    ReturnCase,
    SupplyDocuments,
    WithdrawCase,
    fold,
)
from shared.contracts.cases import (
    CaseAccepted,
    CaseClosed,
    CaseDecided,
    CaseHandedOff,
    CaseReopened,
    CaseReturned,
    CaseStatus,
    CaseSubmitted,
    CaseWithdrawn,
    DocumentsRequested,
    DocumentsSupplied,
    ExternalResultRecorded,
    HandoffReceived,
    NoteAdded,
    Outcome,
    OwnerReassigned,
    SlaClockPaused,
    SlaClockStopped,
    SlaTimerScheduled,
)
from shared.reference import CHINA_TZ, Level
from tests.unit.cases.case_story import (
    CITY,
    COUNTY,
    MLG,
    MLG_DOCUMENTS,
    STATION,
    TOWNSHIP,
)

pytestmark = pytest.mark.unit


def cst(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHINA_TZ)


def test_a_clerk_submits_a_case_at_their_station(given, story, cast):
    given([]).when(story.submit()).then(CaseSubmitted(
        case_id=story.case_id, at=story.at(0), actor=cast.clerk, tracking_no="KM-2026-000001",
        service_code=MLG, visit_id=story.visit_id, station=STATION, applicant=story.applicant,
        documents_provided=MLG_DOCUMENTS,
    ))


def test_another_system_submits_a_case_to_a_station(given, story, cast):
    [event] = given([]).when(story.submit(actor=cast.other_system)).then(CaseSubmitted)
    assert event.actor.role == "system"


def test_the_receiving_clerk_accepts_and_owns_the_case(given, story, cast):
    _, timer = given(story.submitted()).when(
        story.cmd(AcceptCase, cast.clerk, 1)
    ).then(CaseAccepted(case_id=story.case_id, at=story.at(1), actor=cast.clerk,
                        unit=STATION, level=Level.COMMUNITY, owner=cast.clerk.user_id),
           SlaTimerScheduled)
    assert (timer.level, timer.unit, timer.budget_days) == (Level.COMMUNITY, STATION, 5)
    assert timer.due_at == cst(2026, 3, 9, 10)  # Mon 10:00 + 5 working days


def test_a_backup_accepting_for_the_clerk_records_both(given, story, cast):
    accepted, _ = given(story.submitted()).when(
        story.cmd(AcceptCase, cast.backup_for_clerk, 1)
    ).then(CaseAccepted, SlaTimerScheduled)
    assert accepted.owner == cast.clerk.user_id
    assert accepted.actor.user_id == cast.clerk_b.user_id
    assert accepted.actor.acting_for == cast.clerk.user_id


def test_requesting_documents_names_every_missing_one_at_once_and_pauses_the_clock(
    given, story, cast
):
    history = story.accepted(documents=("id_card", "bank_account"))
    requested, paused = given(history).when(
        story.cmd(RequestDocuments, cast.clerk, 3, note="bring originals")
    ).then(DocumentsRequested, SlaClockPaused)
    assert requested.documents == (
        "household_register", "application_form", "income_certificate", "property_declaration",
    )
    assert (requested.request_no, requested.exceptional, requested.approved_by) == (1, False, None)
    assert paused.used_seconds == 2 * 3600


def test_a_request_may_add_a_provided_but_inadequate_document(given, story, cast):
    history = story.accepted(documents=MLG_DOCUMENTS[:-1])
    requested, _ = given(history).when(
        story.cmd(RequestDocuments, cast.clerk, 3, documents=("id_card",))
    ).then(DocumentsRequested, SlaClockPaused)
    assert requested.documents == ("id_card", "bank_account")


def _after_one_request_and_supply(story, cast):
    return story.history(
        story.submit(documents=MLG_DOCUMENTS[:-1]), story.cmd(AcceptCase, cast.clerk, 1),
        story.cmd(RequestDocuments, cast.clerk, 2),
        story.cmd(SupplyDocuments, cast.clerk, 3, documents=("bank_account",)),
    )


def test_a_second_request_approved_by_a_supervisor_is_marked_exceptional(given, story, cast):
    requested, _ = given(_after_one_request_and_supply(story, cast)).when(story.cmd(
        RequestDocuments, cast.clerk, 4, documents=("id_card",),
        approved_by=cast.town_supervisor.user_id,
    )).then(DocumentsRequested, SlaClockPaused)
    assert (requested.request_no, requested.exceptional) == (2, True)
    assert requested.approved_by == cast.town_supervisor.user_id


def test_a_supervisor_may_make_the_second_request_themself(given, story, cast):
    requested, _ = given(_after_one_request_and_supply(story, cast)).when(story.cmd(
        RequestDocuments, cast.county_supervisor, 4, documents=("id_card",),
    )).then(DocumentsRequested, SlaClockPaused)
    assert requested.approved_by == cast.county_supervisor.user_id


def test_supplying_some_documents_keeps_the_clock_paused(given, story, cast):
    history = story.history(
        story.submit(documents=("id_card",)), story.cmd(AcceptCase, cast.clerk, 1),
        story.cmd(RequestDocuments, cast.clerk, 2),
    )
    [supplied] = given(history).when(
        story.cmd(SupplyDocuments, cast.clerk_b, 5,
                  documents=("bank_account", "household_register"))
    ).then(DocumentsSupplied)
    assert supplied.outstanding == ("application_form", "income_certificate",
                                    "property_declaration")


def test_supplying_the_last_document_resumes_the_clock_where_it_stopped(given, story, cast):
    history = story.history(
        story.submit(documents=MLG_DOCUMENTS[:-1]), story.cmd(AcceptCase, cast.clerk, 1),
        story.cmd(RequestDocuments, cast.clerk, 3),
    )
    supplied, resumed = given(history).when(
        story.cmd(SupplyDocuments, cast.clerk, 3 + 24 * 7, documents=("bank_account",))
    ).then(DocumentsSupplied(
        case_id=story.case_id, at=story.at(171), actor=cast.clerk, unit=STATION,
        documents=("bank_account",), outstanding=(),
    ), SlaTimerScheduled)
    assert (resumed.reason, resumed.used_seconds) == ("resumed", 2 * 3600)
    assert fold([*history, supplied, resumed]).status == CaseStatus.ACCEPTED


def test_the_owner_hands_the_case_up_to_the_next_unit_of_the_chain(given, story, cast):
    handed, stopped, started = given(story.accepted()).when(
        story.cmd(HandOffCase, cast.clerk, 2, note="complete file")
    ).then(CaseHandedOff(
        case_id=story.case_id, at=story.at(2), actor=cast.clerk, from_unit=STATION,
        from_level=Level.COMMUNITY, to_unit=TOWNSHIP, to_level=Level.TOWNSHIP,
        owner=cast.clerk.user_id, note="complete file",
    ), SlaClockStopped, SlaTimerScheduled)
    assert (stopped.level, stopped.used_seconds, stopped.on_time) == (Level.COMMUNITY, 3600, True)
    assert (started.level, started.unit, started.budget_days) == (Level.TOWNSHIP, TOWNSHIP, 10)
    state = fold([*story.accepted(), handed, stopped, started])
    assert (state.status, state.unit, state.owner) == (
        CaseStatus.HANDED_OFF, TOWNSHIP, cast.clerk.user_id
    )


def test_an_officer_of_the_receiving_unit_receives_and_owns_the_case(given, story, cast):
    given(story.handed_to_township()).when(story.cmd(ReceiveHandoff, cast.town_b, 3)).then(
        HandoffReceived(case_id=story.case_id, at=story.at(3), actor=cast.town_b,
                        unit=TOWNSHIP, level=Level.TOWNSHIP, owner=cast.town_b.user_id,
                        previous_owner=cast.clerk.user_id)
    )


def test_a_return_goes_down_with_reasons_to_the_previous_owner(given, story, cast):
    returned, stopped, started = given(story.at_township()).when(story.cmd(
        ReturnCase, cast.town, 5, reasons=("income certificate is out of date",),
        documents=("income_certificate",),
    )).then(CaseReturned(
        case_id=story.case_id, at=story.at(5), actor=cast.town, from_unit=TOWNSHIP,
        from_level=Level.TOWNSHIP, to_unit=STATION, to_level=Level.COMMUNITY,
        reasons=("income certificate is out of date",), documents=("income_certificate",),
        owner=cast.clerk.user_id, previous_owner=cast.town.user_id,
    ), SlaClockStopped, SlaTimerScheduled)
    assert started.used_seconds == 3600  # the station's earlier hour still counts
    state = fold([*story.at_township(), returned, stopped, started])
    assert state.status == CaseStatus.RETURNED
    assert "income_certificate" not in state.documents_provided


def test_after_a_return_the_station_requests_the_returned_document(given, story, cast):
    history = story.history(
        *[story.submit(), story.cmd(AcceptCase, cast.clerk, 1),
          story.cmd(HandOffCase, cast.clerk, 2), story.cmd(ReceiveHandoff, cast.town, 3),
          story.cmd(ReturnCase, cast.town, 4, reasons=("expired",),
                    documents=("income_certificate",))]
    )
    requested, _ = given(history).when(story.cmd(RequestDocuments, cast.clerk, 5)).then(
        DocumentsRequested, SlaClockPaused
    )
    assert requested.documents == ("income_certificate",)


def test_a_supervisor_reassigns_the_owner_within_the_unit(given, story, cast):
    given(story.at_township()).when(story.cmd(
        ReassignOwner, cast.county_supervisor, 5, to_owner=cast.town_b.user_id,
        reason="officer A on leave",
    )).then(OwnerReassigned(
        case_id=story.case_id, at=story.at(5), actor=cast.county_supervisor, unit=TOWNSHIP,
        from_owner=cast.town.user_id, to_owner=cast.town_b.user_id, reason="officer A on leave",
    ))


def test_the_owner_may_hand_the_case_to_a_colleague(given, story, cast):
    given(story.accepted()).when(story.cmd(
        ReassignOwner, cast.clerk, 2, to_owner=cast.clerk_b.user_id, reason="shift change",
    )).then(OwnerReassigned)


def test_a_backup_acts_for_the_absent_owner_and_both_are_recorded(given, story, cast):
    decided, _ = given(story.at_county()).when(story.cmd(
        DecideCase, cast.backup_for_county, 6, outcome=Outcome.APPROVED, basis="eligible",
    )).then(CaseDecided, SlaClockStopped)
    assert decided.actor.user_id == cast.county_b.user_id
    assert decided.actor.acting_for == cast.county.user_id
    assert fold([*story.at_county(), decided]).owner == cast.county.user_id


def test_the_deciding_level_approves_with_a_basis(given, story, cast):
    given(story.at_county()).when(story.cmd(
        DecideCase, cast.county, 6, outcome=Outcome.APPROVED, basis="income below the line",
    )).then(CaseDecided(
        case_id=story.case_id, at=story.at(6), actor=cast.county, unit=COUNTY,
        level=Level.COUNTY, outcome=Outcome.APPROVED, basis="income below the line",
    ), SlaClockStopped)


def test_the_deciding_level_may_refuse_even_with_documents_missing(given, story, cast):
    history = story.history(
        story.submit(service="legal_information", documents=()),
        story.cmd(AcceptCase, cast.clerk, 1),
    )
    given(history).when(story.cmd(
        DecideCase, cast.clerk, 2, outcome=Outcome.REFUSED, basis="not a labour matter",
    )).then(CaseDecided, SlaClockStopped)


def test_the_owner_closes_a_decided_case(given, story, cast):
    given(story.decided()).when(story.cmd(CloseCase, cast.county, 7)).then(
        CaseClosed(case_id=story.case_id, at=story.at(7), actor=cast.county, unit=COUNTY,
                   level=Level.COUNTY)
    )


def test_withdrawing_a_case_in_review_stops_its_clock(given, story, cast):
    given(story.at_township()).when(story.cmd(
        WithdrawCase, cast.town_b, 5, reason="applicant moved away",
    )).then(CaseWithdrawn(
        case_id=story.case_id, at=story.at(5), actor=cast.town_b, unit=TOWNSHIP,
        level=Level.TOWNSHIP, reason="applicant moved away",
    ), SlaClockStopped)


def test_withdrawing_a_case_not_yet_accepted_has_no_clock_to_stop(given, story, cast):
    given(story.submitted()).when(
        story.cmd(WithdrawCase, cast.clerk, 1, reason="came for another service")
    ).then(CaseWithdrawn)


def test_a_closed_case_reopens_within_its_window_with_fresh_budgets(given, story, cast):
    reopened, timer = given(story.closed()).when(story.cmd(
        ReopenCase, cast.county_b, 24 * 30, reason="new income evidence",
    )).then(CaseReopened(
        case_id=story.case_id, at=story.at(720), actor=cast.county_b, unit=COUNTY,
        level=Level.COUNTY, owner=cast.county.user_id, reason="new income evidence",
    ), SlaTimerScheduled)
    assert (timer.reason, timer.used_seconds, timer.level) == ("restarted", 0, Level.COUNTY)
    state = fold([*story.closed(), reopened, timer])
    assert state.status == CaseStatus.REOPENED and state.outcome is None


def test_a_supervisor_above_may_reopen(given, story, cast):
    given(story.closed()).when(
        story.cmd(ReopenCase, cast.city_supervisor, 30, reason="complaint upheld")
    ).then(CaseReopened, SlaTimerScheduled)


def test_notes_come_from_the_holding_unit_or_a_supervisor_above(given, story, cast):
    given(story.at_township()).when(
        story.cmd(AddNote, cast.town_b, 5, text="called the applicant")
    ).then(NoteAdded(case_id=story.case_id, at=story.at(5), actor=cast.town_b,
                     text="called the applicant"))
    given(story.at_township()).when(
        story.cmd(AddNote, cast.city_supervisor, 5, text="watch this one")
    ).then(NoteAdded)


def test_another_system_records_its_result(given, story, cast):
    [event] = given(story.at_county()).when(story.cmd(
        RecordExternalResult, cast.other_system, 6, source_system="pension",
        result_type="contribution_history", reference="PEN-77", summary="12 years paid",
        details={"years": "12"},
    )).then(ExternalResultRecorded)
    assert event.details == {"years": "12"} and event.actor.unit == CITY


def test_the_whole_minimum_living_guarantee_journey(story, cast, ref):
    """Received at a station, handed to the township, returned for a missing document,
    resupplied, handed to township then county, approved, closed."""
    events = story.history(
        story.submit(), story.cmd(AcceptCase, cast.clerk, 1),
        story.cmd(HandOffCase, cast.clerk, 2), story.cmd(ReceiveHandoff, cast.town, 3),
        story.cmd(ReturnCase, cast.town, 4, reasons=("income certificate missing",),
                  documents=("income_certificate",)),
        story.cmd(RequestDocuments, cast.clerk, 5),
        story.cmd(SupplyDocuments, cast.clerk, 30, documents=("income_certificate",)),
        story.cmd(HandOffCase, cast.clerk, 31), story.cmd(ReceiveHandoff, cast.town, 32),
        story.cmd(HandOffCase, cast.town, 33), story.cmd(ReceiveHandoff, cast.county, 34),
        story.cmd(DecideCase, cast.county, 35, outcome=Outcome.APPROVED, basis="eligible"),
        story.cmd(CloseCase, cast.county, 36),
    )
    moves = [(type(e).__name__, e.from_unit, e.to_unit, e.actor.user_id, e.actor.role)
             for e in events if isinstance(e, CaseHandedOff | CaseReturned)]
    assert moves == [
        ("CaseHandedOff", STATION, TOWNSHIP, cast.clerk.user_id, "station_clerk"),
        ("CaseReturned", TOWNSHIP, STATION, cast.town.user_id, "township_officer"),
        ("CaseHandedOff", STATION, TOWNSHIP, cast.clerk.user_id, "station_clerk"),
        ("CaseHandedOff", TOWNSHIP, COUNTY, cast.town.user_id, "township_officer"),
    ]
    state = fold(events)
    assert (state.status, state.outcome, state.owner) == (
        CaseStatus.CLOSED, Outcome.APPROVED, cast.county.user_id
    )
    assert state.version == len(events)
