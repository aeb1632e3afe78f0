"""The projections service refuses bad input with a problem naming the field, never a 500:
control characters, numbers beyond PostgreSQL's bigint, dates without a UTC form, malformed
tracking numbers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from services.cases.domain import AcceptCase, HandOffCase, SubmitCase, decide, evolve
from services.projections.bootstrap import ProjectionsService, build_app
from services.projections.live import LiveProjection
from services.projections.projectors import UnitPaths
from shared.auth import Principal, mint_token
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.contracts.envelope import NewEvent
from shared.eventstore.postgres import PostgresEventStore
from shared.reference import CHINA_TZ, Reference
from tests.integration.projections.helpers import SETTINGS

SUPERVISOR, AUDITOR = "supervisor.530102", "auditor.530100.a"
HUGE = "99999999999999999999"  # beyond a bigint




def token(user_id: str, ref: Reference) -> dict[str, str]:
    member = ref.staff.member(user_id)
    principal = Principal(user_id=user_id, role=str(member.role), unit=member.unit)
    return {"Authorization": f"Bearer {mint_token(principal, SETTINGS)}"}


async def problem(http: httpx.AsyncClient, url: str, headers: dict[str, str],
                  status: int) -> dict[str, Any]:
    response = await http.get(url, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


async def test_a_nul_in_a_tracking_number_is_refused_not_sent_to_postgresql(
    http: httpx.AsyncClient,
) -> None:
    refused = await problem(http, "/v1/public/status/%00", {}, 422)
    assert [e["field"] for e in refused["errors"]] == ["path:tracking_no"]


@pytest.mark.parametrize(("query", "field"), [
    ("service_code=%00", "query:service_code"),
    ("status=accepted&status=a%01b", "query:status"),
    ("tracking_no=%00", "query:tracking_no"),
    ("tracking_no=KM%202026", "query:tracking_no"),
    (f"offset={HUGE}", "query:offset"),
    (f"min_position={HUGE}", "query:min_position"),
    ("submitted_from=0001-01-01T00:00:00%2B14:00", "query:submitted_from"),
    ("submitted_to=0001-01-01", "query:submitted_to"),  # China time: no UTC form either
])
async def test_bad_list_filters_are_a_problem_naming_the_parameter(
    http: httpx.AsyncClient, ref: Reference, query: str, field: str,
) -> None:
    refused = await problem(http, f"/v1/projections/cases?{query}", token(SUPERVISOR, ref), 422)
    assert [e["field"] for e in refused["errors"]] == [field]


async def test_the_largest_offset_postgresql_takes_is_answered(
    http: httpx.AsyncClient, ref: Reference,
) -> None:
    response = await http.get("/v1/projections/cases", headers=token(SUPERVISOR, ref),
                              params={"offset": 2**63 - 1})
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


async def test_line_breaks_and_tabs_in_a_query_are_text(
    http: httpx.AsyncClient, ref: Reference,
) -> None:
    response = await http.get("/v1/projections/cases", headers=token(SUPERVISOR, ref),
                              params={"service_code": "a\tb\r\n", "level": "%00"})
    # a literal "%00" is no control character: both are read as values, unknown ones
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == ["query:service_code", "query:level"]
    assert all(e["message"].startswith("unknown ") for e in errors), errors


@pytest.mark.parametrize(("url", "user", "status", "field"), [
    ("/v1/public/status/KM-2026-000001", None, 404, "path:tracking_no"),
    (f"/v1/projections/cases/{uuid.UUID(int=7)}", SUPERVISOR, 404, "path:case_id"),
    (f"/v1/projections/cases/{uuid.UUID(int=7)}/timeline", SUPERVISOR, 404, "path:case_id"),
    ("/v1/projections/units/999999/queue", SUPERVISOR, 404, "path:unit"),
    ("/v1/projections/units/530102002/counts", "supervisor.530102001", 403, "path:unit"),
    ("/v1/projections/cases?unit=999999", SUPERVISOR, 404, "query:unit"),
    ("/v1/projections/overdue?unit=530100", SUPERVISOR, 403, "query:unit"),
    ("/v1/projections/cases", None, 401, "header:Authorization"),
])
async def test_not_found_and_forbidden_name_what_to_change(
    http: httpx.AsyncClient, ref: Reference, url: str, user: str | None, status: int,
    field: str,
) -> None:
    refused = await problem(http, url, token(user, ref) if user else {}, status)
    assert [e["field"] for e in refused["errors"]] == [field]


async def test_the_public_status_takes_no_min_position(http: httpx.AsyncClient) -> None:
    """No login, so no waiting: anyone could hold requests open up to ``max_wait_s``."""
    for value in ("999999", "0"):
        refused = await problem(
            http, f"/v1/public/status/KM-2026-000001?min_position={value}", {}, 422)
        assert [e["field"] for e in refused["errors"]] == ["query:min_position"]


@pytest.mark.parametrize(("url", "field"), [
    ("/v1/projections/cases?unit={unit}", "query:unit"),
    ("/v1/projections/units/{unit}/queue", "path:unit"),
    ("/v1/projections/units/{unit}/counts", "path:unit"),
])
async def test_an_unknown_unit_is_echoed_in_part_however_long(
    http: httpx.AsyncClient, ref: Reference, url: str, field: str,
) -> None:
    """5,000 characters given as a unit came back whole in the problem's detail."""
    unit = "5301" * 1250
    refused = await problem(http, url.format(unit=unit), token(SUPERVISOR, ref), 404)
    assert [e["field"] for e in refused["errors"]] == [field]
    assert refused["detail"] == f"no unit {unit[:64]}…"


@pytest.mark.parametrize(("query", "status", "field"), [
    ("month_from=2026-13", 422, "query:month_from"),
    ("month_to=2026-00", 422, "query:month_to"),
    ("month_from=2026-1", 422, "query:month_from"),
    ("month_from=2026-01&month_to=2026-12", 200, None),
])
async def test_sla_months_are_real_months(
    http: httpx.AsyncClient, ref: Reference, query: str, status: int, field: str | None,
) -> None:
    response = await http.get(f"/v1/projections/sla?{query}", headers=token(SUPERVISOR, ref))
    assert response.status_code == status, response.text
    if field is not None:
        assert [e["field"] for e in response.json()["errors"]] == [field]


@pytest.mark.parametrize(("url", "field"), [
    ("/v1/projections/cases?status=in-review", "query:status"),
    ("/v1/projections/cases?status=accepted&status=Accepted", "query:status"),
    ("/v1/projections/cases?level=nope", "query:level"),
    ("/v1/projections/cases?service_code=minimum_living_guarantee_", "query:service_code"),
    ("/v1/projections/overdue?service_code=pension", "query:service_code"),
    ("/v1/projections/units/530102/queue?status=open", "query:status"),
    ("/v1/projections/units/530102/queue?service_code=nope", "query:service_code"),
    ("/v1/projections/sla?level=nope", "query:level"),
    ("/v1/projections/sla?service_code=nope", "query:service_code"),
    ("/v1/projections/sla?group_by=county", "query:group_by"),
    ("/v1/projections/handoffs?group_by=level", "query:group_by"),
])
async def test_a_filter_value_the_domain_does_not_know_is_refused_not_an_empty_answer(
    http: httpx.AsyncClient, ref: Reference, url: str, field: str,
) -> None:
    """A typo in a filter (``in-review`` for ``in_review``) matched nothing and answered an
    empty list, which a supervisor reads as "no such cases"."""
    refused = await problem(http, url, token(SUPERVISOR, ref), 422)
    assert [e["field"] for e in refused["errors"]] == [field]


@pytest.mark.parametrize("url", [
    "/v1/projections/cases?status=in_review&status=reopened&level=township"
    "&service_code=minimum_living_guarantee",
    "/v1/projections/overdue?service_code=minimum_living_guarantee",
    "/v1/projections/units/530102/queue?status=handed_off&service_code=minimum_living_guarantee",
    "/v1/projections/sla?level=county&service_code=minimum_living_guarantee&group_by=unit",
])
async def test_every_known_filter_value_is_taken(
    http: httpx.AsyncClient, ref: Reference, url: str,
) -> None:
    response = await http.get(url, headers=token(SUPERVISOR, ref))
    assert response.status_code == 200, response.text


def claims(user_id: str, role: str, unit: str) -> dict[str, str]:
    principal = Principal(user_id=user_id, role=role, unit=unit)
    return {"Authorization": f"Bearer {mint_token(principal, SETTINGS)}"}


IMPOSTORS = [
    (claims("ghost.1", "auditor", "530100"), "token:sub"),
    (claims("sla-clock", "system", "530100"), "token:role"),
    (claims(SUPERVISOR, "auditor", "530102"), "token:role"),
    (claims(SUPERVISOR, "supervisor", "530100"), "token:unit"),
]


@pytest.mark.parametrize("fast_path", [True, False])
async def test_every_read_checks_the_token_against_the_staff_directory(
    projections: ProjectionsService, fast_path: bool,
) -> None:
    case = uuid.UUID(int=7)
    transport = httpx.ASGITransport(app=build_app(projections, fast_path=fast_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://projections") as client:
        for url in [f"/v1/projections/cases/{case}", f"/v1/projections/cases/{case}?min_position=1",
                    f"/v1/projections/cases/{case}/timeline", "/v1/projections/cases",
                    "/v1/projections/overdue", "/v1/projections/units/530102/queue",
                    "/v1/projections/units/530102/counts", "/v1/projections/sla",
                    "/v1/projections/handoffs", "/v1/projections/status"]:
            for headers, field in IMPOSTORS:
                refused = await problem(client, url, headers, 403)
                assert [e["field"] for e in refused["errors"]] == [field], (url, field)


async def test_a_moment_without_a_zone_is_china_time(
    http: httpx.AsyncClient, pool: asyncpg.Pool, pg_store: PostgresEventStore, ref: Reference,
) -> None:
    """A supervisor in Kunming who asks for what happened from 1 March means from midnight
    there (16:00 UTC the day before), as the SLA months are counted: a case submitted and
    handed up at 07:00 on 1 March is in that range and not before it, whatever the time zone
    of the server."""
    clerk = ref.staff.member("clerk.530102001001.a")
    who = Actor(user_id=clerk.user_id, role=clerk.role, unit=clerk.unit)
    at = datetime(2026, 3, 1, 7, 0, tzinfo=CHINA_TZ)
    case_id, state, events = uuid.uuid4(), None, []
    for command in (
        SubmitCase(case_id=case_id, at=at, actor=who, tracking_no="KM-CST-1",
                   service_code="minimum_living_guarantee", visit_id=uuid.uuid4(),
                   station=clerk.unit, applicant=EncryptedApplicant(subject_id="s", id_hash="h")),
        AcceptCase(case_id=case_id, at=at, actor=who),
        HandOffCase(case_id=case_id, at=at, actor=who),
    ):
        for event in decide(state, command, ref):
            state = evolve(state, event)
            events.append(event)
    await pg_store.append(f"case-{case_id}", 0, [
        NewEvent(e.event_type, e.model_dump(mode="json")) for e in events])
    async with pool.acquire() as conn, conn.transaction():
        await LiveProjection(UnitPaths(ref.org)).apply(conn, await pg_store.read_batch(0, 10))
    headers = token(SUPERVISOR, ref)
    for query, found in (("submitted_from=2026-03-01", 1),
                         ("submitted_from=2026-03-01T00:00:00", 1),
                         ("submitted_to=2026-03-01", 0),
                         ("submitted_from=2026-03-01T00:00:00%2B08:00", 1),
                         ("submitted_from=2026-03-01T00:00:00Z", 0)):
        response = await http.get(f"/v1/projections/cases?{query}", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["total"] == found, query
    for since, moves in (("2026-03-01", 1), ("2026-03-01T07:00:01", 0)):
        response = await http.get(f"/v1/projections/handoffs?since={since}", headers=headers)
        assert response.status_code == 200, response.text
        assert sum(d["moves"] for d in response.json()["items"]) == moves, since


async def test_one_address_asking_the_public_status_too_often_gets_429_with_retry_after(
    projections: ProjectionsService,
) -> None:
    """The public status needs no login: past its burst, one address is refused (429, naming
    the client, Retry-After) while another address and the authenticated endpoints go on."""
    settings = SETTINGS.model_copy(update={"public_status_per_minute": 6,
                                           "public_status_burst": 2})
    app = build_app(ProjectionsService(settings, projections.pool, projections.ref,
                                       projections.paths, projections.reader))

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url="http://projections")

    url = "/v1/public/status/KM-2026-000001"
    async with client("203.0.113.7") as one, client("203.0.113.8") as other:
        assert [(await one.get(url)).status_code for _ in range(2)] == [404, 404]
        refused = await one.get(url)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "10"  # 6 a minute: one every 10 s
        assert [e["field"] for e in refused.json()["errors"]] == ["client"]
        assert (await one.get("/v1/public/status/%00")).status_code == 429  # counted as well
        assert (await other.get(url)).status_code == 404
        assert (await one.get("/healthz")).status_code == 200

