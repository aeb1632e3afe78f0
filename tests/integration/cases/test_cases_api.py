"""The cases service over HTTP on real PostgreSQL: the four-level journey, concurrency,
jurisdiction and A/B backups."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from services.cases.api import MAX_BODY_BYTES
from services.cases.bootstrap import CasesService, bootstrap, build_app
from services.cases.domain import SubmitCase
from shared.auth import Principal, mint_token
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.eventstore.postgres import PostgresEventStore
from shared.reference import CHINA_TZ, Reference
from shared.settings import Settings
from tests.conftest import Db

SETTINGS = Settings()
STATION, TOWNSHIP, COUNTY, OTHER_TOWNSHIP = "530102001001", "530102001", "530102", "530102002"
CLERK, CLERK_B = f"clerk.{STATION}.a", f"clerk.{STATION}.b"
TOWN, OTHER_TOWN = f"officer.{TOWNSHIP}.a", f"officer.{OTHER_TOWNSHIP}.a"
COUNTY_A, COUNTY_B = f"officer.{COUNTY}.a", f"officer.{COUNTY}.b"
MLG_DOCUMENTS = ["id_card", "household_register", "application_form", "income_certificate",
                 "property_declaration", "bank_account"]


class Clock:
    """A controlled clock: Monday 2 March 2026, 09:00 in Kunming, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=CHINA_TZ)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
async def service(database: Db, ref: Reference) -> AsyncIterator[CasesService]:
    svc = await bootstrap(SETTINGS, database.service_dsn, ref=ref, clock=Clock())
    yield svc
    await svc.close()


@pytest.fixture
async def http(service: CasesService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://cases") as client:
        yield client


def as_(user_id: str, ref: Reference) -> dict[str, str]:
    member = ref.staff.member(user_id)
    token = mint_token(Principal(user_id=user_id, role=str(member.role), unit=member.unit),
                       SETTINGS)
    return {"Authorization": f"Bearer {token}"}


async def submitted_case(service: CasesService, documents: list[str]) -> uuid.UUID:
    case_id = uuid.uuid4()
    member = service.ref.staff.member(CLERK)
    await service.commands.handle(SubmitCase(
        case_id=case_id, at=service.clock(),
        actor=Actor(user_id=CLERK, role=member.role, unit=STATION),
        tracking_no=f"KM-2026-{case_id.hex[:6]}", service_code="minimum_living_guarantee",
        visit_id=uuid.uuid4(), station=STATION,
        applicant=EncryptedApplicant(subject_id="s-1", id_hash="hmac:00", encrypted={}),
        documents=tuple(documents)), command_id=uuid.uuid4())
    return case_id


async def act(http: httpx.AsyncClient, ref: Reference, case_id: uuid.UUID, verb: str,
              user: str, body: dict[str, Any] | None = None, status: int = 200,
              **headers: str) -> dict[str, Any]:
    response = await http.post(f"/v1/cases/{case_id}/{verb}", json=body or {},
                               headers={**as_(user, ref), **headers})
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_minimum_living_guarantee_goes_up_comes_back_and_is_approved(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    missing = "income_certificate"
    case_id = await submitted_case(service, [d for d in MLG_DOCUMENTS if d != missing])
    await act(http, ref, case_id, "accept", CLERK)
    await act(http, ref, case_id, "hand-off", CLERK, {"note": "转乡镇审核"})
    await act(http, ref, case_id, "receive", TOWN)
    await act(http, ref, case_id, "return", TOWN,
              {"reasons": ["缺少收入证明"], "documents": [missing]})
    notified = await act(http, ref, case_id, "request-documents", CLERK)
    assert notified["events"][0] == "DocumentsRequested"
    await act(http, ref, case_id, "supply-documents", CLERK, {"documents": [missing]})
    await act(http, ref, case_id, "hand-off", CLERK)
    await act(http, ref, case_id, "receive", TOWN)
    await act(http, ref, case_id, "hand-off", TOWN)
    await act(http, ref, case_id, "receive", COUNTY_A)
    await act(http, ref, case_id, "decide", COUNTY_A,
              {"outcome": "approved", "basis": "《最低生活保障审核确认办法》第十条"})
    closed = await act(http, ref, case_id, "close", COUNTY_A)

    view = (await http.get(f"/v1/cases/{case_id}", headers=as_(COUNTY_A, ref))).json()
    assert (view["status"], view["outcome"], view["unit"]) == ("closed", "approved", COUNTY)
    assert view["version"] == closed["version"]

    assert isinstance(service.store, PostgresEventStore)
    recorded = await service.store.read_stream(f"case-{case_id}")
    moves = [(e.type, e.data.get("from_unit"), e.data.get("to_unit"), e.data["actor"]["user_id"],
              e.data["actor"]["role"]) for e in recorded
             if e.type in ("CaseHandedOff", "CaseReturned")]
    assert moves == [
        ("CaseHandedOff", STATION, TOWNSHIP, CLERK, "station_clerk"),
        ("CaseReturned", TOWNSHIP, STATION, TOWN, "township_officer"),
        ("CaseHandedOff", STATION, TOWNSHIP, CLERK, "station_clerk"),
        ("CaseHandedOff", TOWNSHIP, COUNTY, TOWN, "township_officer"),
    ]
    assert all(e.metadata["actor_id"] == e.data["actor"]["user_id"] for e in recorded)
    assert [e.position for e in recorded] == sorted(e.position for e in recorded)


async def at_county(service: CasesService, http: httpx.AsyncClient, ref: Reference) -> uuid.UUID:
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    await act(http, ref, case_id, "accept", CLERK)
    await act(http, ref, case_id, "hand-off", CLERK)
    await act(http, ref, case_id, "receive", TOWN)
    await act(http, ref, case_id, "hand-off", TOWN)
    await act(http, ref, case_id, "receive", COUNTY_A)
    return case_id


async def test_two_deciders_at_once_with_if_match_one_wins_the_other_gets_412(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    case_id = await at_county(service, http, ref)
    version = (await http.get(f"/v1/cases/{case_id}", headers=as_(COUNTY_A, ref))).json()[
        "version"]
    decisions = [
        http.post(f"/v1/cases/{case_id}/decide", headers={**as_(COUNTY_A, ref),
                  "If-Match": f'"{version}"'}, json={"outcome": "approved", "basis": "符合条件"}),
        http.post(f"/v1/cases/{case_id}/decide", headers={**as_(COUNTY_B, ref),
                  "If-Match": f'"{version}"'},
                  json={"outcome": "refused", "basis": "不符合条件", "acting_for": COUNTY_A}),
    ]
    responses = await asyncio.gather(*decisions)
    assert sorted(r.status_code for r in responses) == [200, 412]
    loser = next(r for r in responses if r.status_code == 412)
    assert loser.headers["content-type"] == "application/problem+json"
    winner = next(r for r in responses if r.status_code == 200)
    assert loser.json()["current_version"] == winner.json()["version"] > version
    events = await service.store.read_stream(f"case-{case_id}")
    assert [e.type for e in events].count("CaseDecided") == 1


async def test_two_deciders_without_if_match_the_loser_is_refused_409(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    case_id = await at_county(service, http, ref)
    responses = await asyncio.gather(
        http.post(f"/v1/cases/{case_id}/decide", headers=as_(COUNTY_A, ref),
                  json={"outcome": "approved", "basis": "符合条件"}),
        http.post(f"/v1/cases/{case_id}/decide", headers=as_(COUNTY_B, ref),
                  json={"outcome": "refused", "basis": "不符合", "acting_for": COUNTY_A}),
    )
    assert sorted(r.status_code for r in responses) == [200, 409]
    assert next(r for r in responses if r.status_code == 409).json()["title"] == \
        "CaseIsAlreadyDecided"
    events = await service.store.read_stream(f"case-{case_id}")
    assert [e.type for e in events].count("CaseDecided") == 1


async def test_an_officer_of_another_township_is_forbidden(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    await act(http, ref, case_id, "accept", CLERK)
    await act(http, ref, case_id, "hand-off", CLERK)
    refused = await act(http, ref, case_id, "receive", OTHER_TOWN, status=403)
    assert refused["type"].startswith("/problems/") and refused["errors"][0]["field"]
    response = await http.get(f"/v1/cases/{case_id}", headers=as_(OTHER_TOWN, ref))
    assert response.status_code == 403
    assert response.json()["errors"][0]["field"] == "token:unit"
    assert TOWNSHIP not in response.text  # nor where it is held: that is case data too
    unknown = await http.get(f"/v1/cases/{uuid.uuid4()}", headers=as_(OTHER_TOWN, ref))
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["field"] == "path:case_id"


async def test_a_backup_acting_for_the_absent_owner_is_recorded_as_acting_for(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    await act(http, ref, case_id, "accept", CLERK)
    await act(http, ref, case_id, "notes", CLERK_B, {"text": "申请人来电询问进度",
                                                     "acting_for": CLERK})
    await act(http, ref, case_id, "hand-off", CLERK_B, {"acting_for": CLERK})
    events = await service.store.read_stream(f"case-{case_id}")
    handed = next(e for e in events if e.type == "CaseHandedOff")
    assert handed.data["actor"] == {"user_id": CLERK_B, "role": "station_clerk",
                                    "unit": STATION, "acting_for": CLERK}
    assert (handed.metadata["actor_id"], handed.metadata["acting_for"]) == (CLERK_B, CLERK)
    assert handed.data["owner"] == CLERK  # ownership stays with the owner


async def test_bad_input_is_a_problem_naming_the_field(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    case_id = await at_county(service, http, ref)
    bad = await act(http, ref, case_id, "decide", COUNTY_A, {"outcome": "maybe"}, status=422)
    assert {e["field"] for e in bad["errors"]} == {"outcome", "basis"}
    stale = await act(http, ref, case_id, "notes", COUNTY_A, {"text": "x"}, status=400,
                      **{"If-Match": "abc"})
    assert stale["errors"][0]["field"] == "header:If-Match"


async def test_a_retried_command_with_the_same_idempotency_key_applies_once(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    first = await act(http, ref, case_id, "accept", CLERK, **{"Idempotency-Key": "k-1"})
    again = await act(http, ref, case_id, "accept", CLERK, **{"Idempotency-Key": "k-1"})
    assert (again["already_applied"], again["version"]) == (True, first["version"])


async def test_an_idempotency_key_is_the_callers_own(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    """Another caller's key is no way round the rules (an outsider sending it was answered
    200 ``already_applied`` with the case's version and position, before any check), and
    reusing it never swallows another person's command as a retry."""
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    await act(http, ref, case_id, "accept", CLERK, **{"Idempotency-Key": "k-1"})
    refused = await act(http, ref, case_id, "notes", OTHER_TOWN, {"text": "x"}, status=403,
                        **{"Idempotency-Key": "k-1"})
    assert "version" not in refused and "position" not in refused
    noted = await act(http, ref, case_id, "notes", CLERK_B, {"text": "申请人来电"},
                      **{"Idempotency-Key": "k-1"})
    assert (noted["events"], noted["already_applied"]) == (["NoteAdded"], False)


async def test_control_characters_in_free_text_are_refused_before_anything_is_stored(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    await act(http, ref, case_id, "accept", CLERK)
    await act(http, ref, case_id, "hand-off", CLERK)
    await act(http, ref, case_id, "receive", TOWN)
    stored = len(await service.store.read_stream(f"case-{case_id}"))
    # a NUL stored in an event could never be written to the read models (PostgreSQL text)
    nul = await act(http, ref, case_id, "notes", TOWN, {"text": "a\u0000b"}, status=422)
    assert [e["field"] for e in nul["errors"]] == ["text"]
    assert "U+0000" in nul["errors"][0]["message"]
    bell = await act(http, ref, case_id, "return", TOWN, {"reasons": ["缺少收入证明", "x\x07"]},
                     status=422)
    assert [e["field"] for e in bell["errors"]] == ["reasons[1]"]
    assert len(await service.store.read_stream(f"case-{case_id}")) == stored
    # line breaks and tabs are text
    await act(http, ref, case_id, "notes", TOWN, {"text": "第一行\r\n\t第二行\n"})


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_signed_token_with_a_role_we_do_not_know_is_refused_naming_it(
    service: CasesService, ref: Reference, fast_path: bool
) -> None:
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    token = mint_token(Principal(user_id=CLERK, role="superadmin", unit=STATION), SETTINGS)
    transport = httpx.ASGITransport(app=build_app(service, fast_path=fast_path),
                                    raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://cases") as client:
        refused = await client.post(f"/v1/cases/{case_id}/notes", json={"text": "x"},
                                    headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401, refused.text
    assert refused.json()["errors"][0]["field"] == "token:role"


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_body_over_the_limit_is_413_declared_or_streamed(
    service: CasesService, ref: Reference, fast_path: bool
) -> None:
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    oversized = b'{"text": "' + b"x" * MAX_BODY_BYTES + b'"}'

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for start in range(0, len(oversized), 64 << 10):
            yield oversized[start:start + (64 << 10)]

    transport = httpx.ASGITransport(app=build_app(service, fast_path=fast_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://cases") as client:
        for content in (oversized, streamed()):
            refused = await client.post(
                f"/v1/cases/{case_id}/notes", content=content,
                headers={**as_(CLERK, ref), "Content-Type": "application/json"})
            assert refused.status_code == 413, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["errors"][0]["field"] == "body"
    assert len(await service.store.read_stream(f"case-{case_id}")) == 1


async def test_a_case_is_read_only_by_people_the_staff_directory_knows_as_such(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    assert (await http.get(f"/v1/cases/{case_id}", headers=as_(CLERK, ref))).status_code == 200
    for user_id, role, unit, field in [("sla-clock", "system", STATION, "token:role"),
                                       ("ghost.1", "auditor", "530100", "token:sub"),
                                       (CLERK, "auditor", STATION, "token:role"),
                                       (CLERK, "station_clerk", "530100", "token:unit")]:
        token = mint_token(Principal(user_id=user_id, role=role, unit=unit), SETTINGS)
        refused = await http.get(f"/v1/cases/{case_id}",
                                 headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403, refused.text
        assert [e["field"] for e in refused.json()["errors"]] == [field]


async def test_a_refusal_names_the_part_of_the_request_at_fault(
    service: CasesService, http: httpx.AsyncClient, ref: Reference
) -> None:
    """Over HTTP the actor is the bearer token and the case the path: a refusal names those
    (as the reads do), not the domain's ``actor.unit`` or ``case_id``, which no request has."""
    case_id = await submitted_case(service, MLG_DOCUMENTS)
    await act(http, ref, case_id, "accept", CLERK)
    await act(http, ref, case_id, "hand-off", CLERK)
    elsewhere = await act(http, ref, case_id, "receive", OTHER_TOWN, status=403)
    assert [e["field"] for e in elsewhere["errors"]] == ["token:unit"]
    await act(http, ref, case_id, "receive", TOWN)
    not_owner = await act(http, ref, case_id, "hand-off", f"officer.{TOWNSHIP}.b", status=403)
    assert [e["field"] for e in not_owner["errors"]] == ["token:sub"]
    not_backup = await act(http, ref, case_id, "notes", CLERK_B,
                           {"text": "x", "acting_for": TOWN}, status=403)
    assert [e["field"] for e in not_backup["errors"]] == ["acting_for"]
    unknown = await act(http, ref, uuid.uuid4(), "accept", CLERK, status=404)
    assert [e["field"] for e in unknown["errors"]] == ["path:case_id"]
