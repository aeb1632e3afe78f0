"""Routing a visit and opening its cases with the case domain, pure (no I/O)."""

from __future__ import annotations

import random
import uuid
from datetime import datetime

import pytest

from services.cases.domain import decide_all
from services.intake.domain import Applicant, Refused, ServiceRequest, Visit, route
from services.intake.domain.ids import case_id, fingerprint, tracking_no, visit_id
from services.intake.domain.opening import Reception, visit_commands
from services.intake.domain.receipts import visit_receipt
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.reference import CHINA_TZ, Reference, Role, load_reference
from tests.unit.intake.people import synthetic_person

STATION, ENTERPRISE_STATION, TOWNSHIP = "530102001001", "530102006901", "530102001"
CLERK = Actor(user_id=f"clerk.{STATION}.a", role=Role.STATION_CLERK, unit=STATION)
AT = datetime(2026, 3, 2, 9, 30, tzinfo=CHINA_TZ)  # a Monday
SEALED = EncryptedApplicant(subject_id="subj-1", id_hash="hmac-sha256:00",
                            encrypted={"name": "v1.xx"})


@pytest.fixture(scope="module")
def ref() -> Reference:
    return load_reference()


def visit(station: str = STATION, *services: ServiceRequest) -> Visit:
    applicant = Applicant(**synthetic_person(random.Random(7)).as_applicant())
    wanted = services or (ServiceRequest(service_code="job_referral", documents=("id_card",)),)
    return Visit(station=station, applicant=applicant, services=wanted)


def test_a_visit_routes_one_case_per_service_with_what_is_missing(ref: Reference) -> None:
    found = route(visit(STATION,
                        ServiceRequest(service_code="job_referral", documents=("id_card",)),
                        ServiceRequest(service_code="legal_information")), ref)
    assert [p.service.code for p in found.cases] == ["job_referral", "legal_information"]
    assert found.cases[0].missing == ("application_form",)


def test_enterprise_stations_receive_too(ref: Reference) -> None:
    assert route(visit(ENTERPRISE_STATION), ref).station.code == ENTERPRISE_STATION


def test_every_problem_is_named_at_once(ref: Reference) -> None:
    with pytest.raises(Refused) as refused:
        route(visit("530102001000",
                    ServiceRequest(service_code="space_travel"),
                    ServiceRequest(service_code="job_referral", documents=("photo",))), ref)
    assert [(r.code, r.field) for r in refused.value.reasons] == [
        ("unknown_station", "station"),
        ("unknown_service", "services[0].service_code"),
        ("document_not_in_checklist", "services[1].documents"),
    ]


def test_a_township_office_does_not_receive_residents(ref: Reference) -> None:
    unit = next(u for u in ref.org if u.code == TOWNSHIP)  # exists, but is no station
    with pytest.raises(Refused) as refused:
        route(visit().model_copy(update={"station": unit.code}), ref)
    assert refused.value.reasons[0].code == "not_a_station"


def test_opening_submits_accepts_and_notifies_once(ref: Reference) -> None:
    found = route(visit(), ref)
    vid = visit_id("user:x", "key-1")
    commands = visit_commands(found, visit=vid, applicant=SEALED,
                              reception=Reception(submitter=CLERK, receiver=CLERK, at=AT))
    events = {cid: decide_all(None, cmds, ref) for cid, cmds in commands.items()}
    (cid, opened), = events.items()
    assert cid == case_id(vid, "job_referral")
    assert [e.event_type for e in opened] == [
        "CaseSubmitted", "CaseAccepted", "SlaTimerScheduled", "DocumentsRequested",
        "SlaClockPaused"]
    receipt = visit_receipt(vid, events, ref.catalogue, position=5)
    (case,) = receipt.cases
    assert case.owner == CLERK.user_id
    assert [d.code for d in case.missing_documents] == ["application_form"]
    assert case.sla.clock_paused and case.sla.due_at > AT
    assert case.tracking_no == tracking_no(cid, STATION, AT)


def test_ids_are_deterministic_per_scope_and_key() -> None:
    assert visit_id("user:a", "k") == visit_id("user:a", "k") != visit_id("user:b", "k")
    one = uuid.UUID(int=1)
    assert tracking_no(one, STATION, AT).startswith("530102-20260302-")
    assert fingerprint({"a": 1, "b": [2]}) == fingerprint({"b": [2], "a": 1})


def test_validation_messages_never_repeat_personal_data() -> None:
    person = synthetic_person(random.Random(3))
    bad = {**person.as_applicant(), "id_number": person.id_number[:17] + "Y"}
    with pytest.raises(ValueError) as failed:
        Applicant(**bad)
    errors = failed.value.errors(include_input=False)  # type: ignore[attr-defined]
    assert person.id_number[:17] not in str(errors)
