"""Intake over HTTP on real PostgreSQL: one-stop visits, idempotency, validation naming the
field, duplicate applicants by keyed hash, and crypto-shredding that leaves the chain intact."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services.intake.bootstrap import IntakeService, bootstrap, build_app
from services.intake.privacy import SubjectErased
from shared.contracts.cases import CaseSubmitted
from shared.contracts.registry import registry
from shared.eventstore.verify import verify_log
from shared.reference import Reference
from tests.conftest import Db
from tests.integration.intake.support import SETTINGS, Clock, bearer, leaked
from tests.unit.intake.people import Person, synthetic_person, with_bad_check_character

STATION = "530102001001"
CLERK, BACKUP, OTHER_CLERK = (f"clerk.{STATION}.a", f"clerk.{STATION}.b",
                              "clerk.530102001002.a")


@pytest.fixture
async def service(database: Db, ref: Reference) -> AsyncIterator[IntakeService]:
    svc = await bootstrap(SETTINGS, database.service_dsn, ref=ref, clock=Clock())
    yield svc
    await svc.close()


@pytest.fixture
async def http(service: IntakeService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        yield client


def a_visit(person: Person, *services: tuple[str, list[str]]) -> dict[str, Any]:
    return {"station": STATION, "applicant": person.as_applicant(),
            "services": [{"service_code": code, "documents": docs} for code, docs in services]}


async def submitted(pool: asyncpg.Pool) -> list[CaseSubmitted]:
    rows = await pool.fetch("SELECT * FROM events WHERE type = 'CaseSubmitted' ORDER BY position")
    return [registry.decode(_recorded(r)) for r in rows]  # type: ignore[misc]


def _recorded(row: asyncpg.Record) -> Any:
    from shared.eventstore.postgres import row_to_event

    return row_to_event([row["position"], row["stream_id"], row["version"], row["event_id"],
                         row["type"], row["schema_version"], str(row["data"]),
                         str(row["metadata"]), row["occurred_at"], row["recorded_at"],
                         row["prev_hash"], row["hash"]])


async def test_one_visit_opens_linked_cases_once_per_key(
    http: httpx.AsyncClient, ref: Reference, pool: asyncpg.Pool,
) -> None:
    person = synthetic_person(random.Random(11))
    body = a_visit(person, ("minimum_living_guarantee", ["id_card", "household_register"]),
                   ("job_referral", ["id_card", "application_form"]))
    headers = {**bearer(CLERK, ref), "Idempotency-Key": "visit-0001"}
    first = await http.post("/v1/visits", json=body, headers=headers)
    again = await http.post("/v1/visits", json=body, headers=headers)
    assert first.status_code == again.status_code == 201, first.text
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    receipt = first.json()
    mlg, referral = receipt["cases"]
    assert mlg["owner"] == CLERK and mlg["sla"]["clock_paused"] is True
    assert [d["code"] for d in mlg["missing_documents"]] == [
        "application_form", "income_certificate", "property_declaration", "bank_account"]
    assert referral["missing_documents"] == [] and referral["sla"]["clock_paused"] is False
    assert referral["sla"]["due_at"] == "2026-03-04T01:00:01Z"  # 2 working days from 09:00:01
    cases = await submitted(pool)
    assert len(cases) == 2
    assert {str(c.visit_id) for c in cases} == {receipt["visit_id"]}  # linked by the visit

    changed = {**body, "services": body["services"][:1]}
    refused = await http.post("/v1/visits", json=changed, headers=headers)
    assert refused.status_code == 409 and refused.json()["errors"][0]["field"] == (
        "header:Idempotency-Key")
    assert len(await submitted(pool)) == 2


async def test_single_service_intake_by_a_backup_clerk(
    http: httpx.AsyncClient, ref: Reference,
) -> None:
    person = synthetic_person(random.Random(12))
    body = {"station": STATION, "applicant": person.as_applicant(),
            "service_code": "legal_information", "documents": [], "acting_for": CLERK}
    done = await http.post("/v1/intake", json=body, headers=bearer(BACKUP, ref))
    assert done.status_code == 201, done.text
    (case,) = done.json()["cases"]
    assert case["owner"] == CLERK and case["tracking_no"].startswith("530102-20260302-")


@pytest.mark.parametrize(("change", "status", "field"), [
    ("bad_id", 422, "applicant.id_number"),
    ("bad_phone", 422, "applicant.phone"),
    ("unknown_service", 422, "services[0].service_code"),
    ("unknown_station", 422, "station"),
    ("other_station", 403, "actor.unit"),
    ("nul_in_name", 422, "applicant.name"),
    ("escape_in_address", 422, "applicant.address"),
])
async def test_refusals_name_the_field_and_never_the_data(
    http: httpx.AsyncClient, ref: Reference, change: str, status: int, field: str,
) -> None:
    person = synthetic_person(random.Random(13))
    body = a_visit(person, ("job_referral", []))
    user = CLERK
    if change == "bad_id":
        body["applicant"]["id_number"] = with_bad_check_character(person.id_number)
    elif change == "bad_phone":
        body["applicant"]["phone"] = "12345"
    elif change == "unknown_service":
        body["services"][0]["service_code"] = "space_travel"
    elif change == "unknown_station":
        body["station"] = "530102999001"
    elif change == "nul_in_name":  # PostgreSQL's text refuses NUL: the read models would fail
        body["applicant"]["name"] = person.name[:1] + "\x00" + person.name[1:]
    elif change == "escape_in_address":
        body["applicant"]["address"] += "\x1b[2J"
    else:
        user = OTHER_CLERK
    answer = await http.post("/v1/visits", json=body, headers=bearer(user, ref))
    assert answer.status_code == status, answer.text
    assert field in [e["field"] for e in answer.json()["errors"]]
    assert not leaked([answer.text], [person])


async def test_officers_do_not_receive_residents(http: httpx.AsyncClient, ref: Reference) -> None:
    body = a_visit(synthetic_person(random.Random(14)), ("job_referral", []))
    answer = await http.post("/v1/visits", json=body, headers=bearer("officer.530102001.a", ref))
    assert answer.status_code == 403


async def test_same_person_same_subject_then_erased_and_the_chain_still_verifies(
    http: httpx.AsyncClient, ref: Reference, service: IntakeService, pool: asyncpg.Pool,
) -> None:
    person = synthetic_person(random.Random(15))
    receipts = [
        (await http.post("/v1/visits", json=a_visit(person, (code, [])),
                         headers=bearer(CLERK, ref))).json()
        for code in ("job_referral", "legal_information")]
    assert receipts[0]["subject_id"] == receipts[1]["subject_id"]  # found by keyed hash
    subject = receipts[0]["subject_id"]
    (first, second) = await submitted(pool)
    # the keyed hash that found them stays in intake_subjects, which erasure empties: in the
    # immutable log it would link the erased person to these cases for anyone with the key
    assert first.applicant.id_hash is None and second.applicant.id_hash is None
    keyed = service.privacy.sealer.id_hash(person.id_number)
    assert await pool.fetchval("SELECT count(*) FROM intake_subjects WHERE id_hash = $1",
                               keyed) == 1
    assert (await service.privacy.reveal(first.applicant))["id_number"] == person.id_number

    texts = [r["t"] for r in await pool.fetch("SELECT data::text || metadata::text AS t"
                                              " FROM events")]
    assert not leaked(texts, [person])
    assert await service.privacy.erase(subject, erased_by="auditor.530100.a", reason="test")
    with pytest.raises(SubjectErased):
        await service.privacy.reveal(first.applicant)
    assert not await service.privacy.erase(subject, erased_by="auditor.530100.a", reason="again")
    everywhere = await pool.fetchval(
        "SELECT count(*) FROM events WHERE strpos(data::text || metadata::text, $1) > 0", keyed)
    assert everywhere == 0 and not await pool.fetchval(
        "SELECT count(*) FROM intake_subjects WHERE id_hash = $1", keyed)
    report = await verify_log(pool, None)
    assert report.ok and report.events_checked == await pool.fetchval("SELECT count(*) FROM events")


async def test_a_single_service_intake_listing_a_document_twice_names_the_field(
    http: httpx.AsyncClient, ref: Reference,
) -> None:
    # /v1/visits refuses a document listed twice (422, services[0].documents); /v1/intake
    # only found out when turning its body into a visit, inside the route: a pydantic
    # ValidationError there was a 500 naming no field.
    person = synthetic_person(random.Random(14))
    body = {"station": STATION, "applicant": person.as_applicant(),
            "service_code": "job_referral", "documents": ["id_card", "id_card"]}
    answer = await http.post("/v1/intake", json=body, headers=bearer(CLERK, ref))
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in answer.json()["errors"]] == ["documents"]
    assert not leaked([answer.text], [person])



async def lose_the_key(http: httpx.AsyncClient, service: IntakeService,
                       monkeypatch: pytest.MonkeyPatch, body: dict[str, Any],
                       headers: dict[str, str]) -> None:
    """Send ``body``: its visit is appended, then the database fails before its key is
    remembered (a 503)."""
    idempotency = service.handler.idempotency
    real = idempotency.remember

    async def fails(*_: object) -> None:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(idempotency, "remember", fails)
    lost = await http.post("/v1/visits", json=body, headers=headers)
    assert lost.status_code == 503, lost.text
    monkeypatch.setattr(idempotency, "remember", real)


@pytest.mark.parametrize("change", ["documents", "address", "acting_for"])
async def test_another_payload_under_a_key_whose_visit_was_appended_is_refused(
    http: httpx.AsyncClient, ref: Reference, service: IntakeService,
    monkeypatch: pytest.MonkeyPatch, change: str,
) -> None:
    # After the 503 the clerk resent the key with the payload changed (the resident had
    # brought a document meanwhile, an address corrected). The store found the key's event
    # ids in the log and the answer was a 201 with the first payload's receipt (the document
    # still listed as missing, the old address kept), remembered for the new payload: what
    # was changed was silently dropped. Same key, other payload: a 409 naming the header.
    person = synthetic_person(random.Random(15))
    body = a_visit(person, ("job_referral", []))
    headers = {**bearer(CLERK, ref), "Idempotency-Key": "visit-0002"}
    await lose_the_key(http, service, monkeypatch, body, headers)
    changed = a_visit(person, ("job_referral", []))
    if change == "documents":
        changed["services"][0]["documents"] = ["id_card"]
    elif change == "address":
        changed["applicant"]["address"] += "（更正）"
    else:
        changed["acting_for"] = BACKUP
        headers = {**bearer(CLERK, ref), "Idempotency-Key": "visit-0002"}
    answer = await http.post("/v1/visits", json=changed, headers=headers)
    assert answer.status_code == 409, answer.text
    assert [e["field"] for e in answer.json()["errors"]] == ["header:Idempotency-Key"]
    assert not leaked([answer.text], [person])
    again = await http.post("/v1/visits", json=body, headers=headers)  # the first payload
    assert again.status_code == 201, again.text


async def test_the_same_payload_under_a_key_whose_visit_was_appended_gets_its_receipt(
    http: httpx.AsyncClient, ref: Reference, service: IntakeService, pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    person = synthetic_person(random.Random(16))
    body = a_visit(person, ("job_referral", ["id_card"]))
    headers = {**bearer(CLERK, ref), "Idempotency-Key": "visit-0003"}
    await lose_the_key(http, service, monkeypatch, body, headers)
    answer = await http.post("/v1/visits", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    assert [d["code"] for d in answer.json()["cases"][0]["missing_documents"]] == [
        "application_form"]
    assert len(await submitted(pool)) == 1


async def test_two_payloads_sent_at_once_under_one_key_open_one_visit(
    http: httpx.AsyncClient, ref: Reference, pool: asyncpg.Pool,
) -> None:
    # Two requests with one Idempotency-Key and different services, at the same moment (a
    # double submit of an edited form). Both found the key unused, both appended their cases
    # (other services: other case ids), then the second was answered 409 "key reused" while
    # its case stayed opened, owned by the clerk.
    import asyncio

    person = synthetic_person(random.Random(17))
    headers = {**bearer(CLERK, ref), "Idempotency-Key": "visit-0004"}
    answers = await asyncio.gather(*(
        http.post("/v1/visits", json=a_visit(person, (code, [])), headers=headers)
        for code in ("job_referral", "legal_information")))
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    (done,) = [a for a in answers if a.status_code == 201]
    opened = {str(c.case_id) for c in await submitted(pool)}
    assert opened == {c["case_id"] for c in done.json()["cases"]}


async def test_a_refused_visit_leaves_its_key_free_for_the_corrected_one(
    http: httpx.AsyncClient, ref: Reference,
) -> None:
    person = synthetic_person(random.Random(18))
    headers = {**bearer(CLERK, ref), "Idempotency-Key": "visit-0005"}
    wrong = a_visit(person, ("space_travel", []))
    assert (await http.post("/v1/visits", json=wrong, headers=headers)).status_code == 422
    right = a_visit(person, ("job_referral", []))
    answer = await http.post("/v1/visits", json=right, headers=headers)
    assert answer.status_code == 201, answer.text
