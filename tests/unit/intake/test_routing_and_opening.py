"""Routing a visit and opening its cases with the case domain, pure (no I/O)."""

from __future__ import annotations

import random
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from services.cases.domain import decide_all
from services.intake.domain import Applicant, Refused, ServiceRequest, Visit, route
from services.intake.domain.ids import case_id, fingerprint, tracking_no, visit_id
from services.intake.domain.opening import Reception, visit_commands
from services.intake.domain.receipts import visit_receipt
from services.intake.settings import DEV_ID_HASH_KEY, IntakeSettings
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.reference import CHINA_TZ, Reference, Role, load_reference
from tests.unit.intake.people import synthetic_person

STATION, ENTERPRISE_STATION, TOWNSHIP = "530102001001", "530102006901", "530102001"
CLERK = Actor(user_id=f"clerk.{STATION}.a", role=Role.STATION_CLERK, unit=STATION)
AT = datetime(2026, 3, 2, 9, 30, tzinfo=CHINA_TZ)  # a Monday
KEY = bytes(range(32))  # the tracking numbers' key (the ID-hash key)
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
                              reception=Reception(submitter=CLERK, receiver=CLERK, at=AT),
                              tracking_key=KEY)
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
    assert case.tracking_no == tracking_no(cid, STATION, AT, KEY)


def test_ids_are_deterministic_per_scope_and_key() -> None:
    assert visit_id("user:a", "k") == visit_id("user:a", "k") != visit_id("user:b", "k")
    one = uuid.UUID(int=1)
    assert tracking_no(one, STATION, AT, KEY).startswith("530102-20260302-")
    assert fingerprint({"a": 1, "b": [2]}) == fingerprint({"b": [2], "a": 1})


def test_a_tracking_number_is_not_computed_from_the_case_id_alone() -> None:
    """The case id follows from the caller and its Idempotency-Key (a source's application
    number, say): the tracking number's random part needs the server's key too."""
    case = case_id(visit_id("source:pension", "APP-2026-000123"), "job_referral")
    mine = tracking_no(case, STATION, AT, KEY)
    assert mine == tracking_no(case, STATION, AT, KEY)  # a retry answers the same number
    assert mine != tracking_no(case, STATION, AT, bytes(32))
    unkeyed = int.from_bytes(case.bytes[:7], "big") >> 6  # what the id alone used to give
    assert mine[-10:] != "".join("0123456789ABCDEFGHJKMNPQRSTVWXYZ"[(unkeyed >> s) & 31]
                                 for s in range(45, -1, -5))


def test_the_readme_tour_shows_the_tracking_number_the_development_key_gives() -> None:
    tour_case = uuid.UUID("7088368b-ebb8-5171-a36a-0d129d31769f")  # README's, for tour-1
    number = tracking_no(tour_case, STATION, datetime(2026, 12, 1, 10, tzinfo=CHINA_TZ),
                         IntakeSettings.key_bytes(DEV_ID_HASH_KEY))
    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    assert readme.count(number) == 3


def test_validation_messages_never_repeat_personal_data() -> None:
    person = synthetic_person(random.Random(3))
    bad = {**person.as_applicant(), "id_number": person.id_number[:17] + "Y"}
    with pytest.raises(ValueError) as failed:
        Applicant(**bad)
    errors = failed.value.errors(include_input=False)  # type: ignore[attr-defined]
    assert person.id_number[:17] not in str(errors)
