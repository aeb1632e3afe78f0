"""The audit endpoints of the projections service: auditors only, a reason required, every
read recorded in the access log (which auditors of auditors query), history in three forms,
as-of for a case and a unit's queue."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from services.projections.bootstrap import ProjectionsService, bootstrap, build_app
from shared.audit import month_of
from shared.auth import Principal, mint_token
from shared.eventstore.postgres import PostgresEventStore
from tests.conftest import Db
from tests.integration.audit.support import seed
from tests.integration.projections.helpers import SETTINGS
from tests.unit.audit.histories import REF

AUDITOR, OTHER_AUDITOR = "auditor.530100.a", "auditor.530100.b"
SUPERVISOR = "supervisor.530100.a"
WHY = {"reason": "complaint 2026-17 from the applicant"}


@pytest.fixture
async def service(database: Db, pg_store: PostgresEventStore,
                  admin_pool: asyncpg.Pool) -> AsyncIterator[tuple[ProjectionsService, list[Any]]]:
    ids = await seed(pg_store, admin_pool, cases=3)
    svc = await bootstrap(SETTINGS, database.service_dsn, ref=REF)
    yield svc, ids
    await svc.close()


@pytest.fixture
async def http(service: tuple[ProjectionsService, list[Any]]) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(service[0])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://projections") as client:
        yield client
    audit = getattr(app.state, "audit", None)
    if audit is not None:
        await audit.close()


def as_user(user_id: str) -> dict[str, str]:
    member = REF.staff.member(user_id)
    principal = Principal(user_id=user_id, role=str(member.role), unit=member.unit)
    return {"Authorization": f"Bearer {mint_token(principal, SETTINGS)}"}


async def test_only_auditors_with_a_reason_read(
    http: httpx.AsyncClient, service: tuple[ProjectionsService, list[Any]]
) -> None:
    case = service[1][0]
    url = f"/v1/audit/cases/{case}/history"
    assert (await http.get(url, params=WHY)).status_code == 401
    assert (await http.get(url, params=WHY, headers=as_user(SUPERVISOR))).status_code == 403
    missing = await http.get(url, headers=as_user(AUDITOR))
    assert missing.status_code == 422 and "reason" in missing.text


async def test_history_in_three_forms_and_every_read_is_in_the_access_log(
    http: httpx.AsyncClient, service: tuple[ProjectionsService, list[Any]]
) -> None:
    case = service[1][0]
    url = f"/v1/audit/cases/{case}/history"
    body = (await http.get(url, params=WHY, headers=as_user(AUDITOR))).json()
    assert body["case_id"] == str(case) and body["events"] == len(body["entries"]) > 3
    assert {"user_id", "role", "unit", "acting_for"} <= set(body["entries"][0]["actor"])
    text = await http.get(url, params={**WHY, "format": "text"}, headers=as_user(AUDITOR))
    assert text.headers["content-type"].startswith("text/plain") and body["tracking_no"] in \
        text.text
    page = await http.get(url, params={**WHY, "format": "html"}, headers=as_user(AUDITOR))
    assert page.headers["content-type"].startswith("text/html") and "<table>" in page.text
    unknown = await http.get(f"/v1/audit/cases/{uuid.uuid4()}/history", params=WHY,
                             headers=as_user(AUDITOR))
    assert unknown.status_code == 404

    month = month_of(datetime.now(UTC))
    log = await http.get("/v1/audit/access-log", headers=as_user(OTHER_AUDITOR),
                         params={"month": month, "user_id": AUDITOR, **WHY})
    items = log.json()["items"]
    assert [i["detail"] for i in items] == ["json", "text", "html", "json"]
    assert {i["reader"]["user_id"] for i in items} == {AUDITOR}
    assert items[0]["case_id"] == str(case) and items[0]["reason"] == WHY["reason"]
    again = await http.get("/v1/audit/access-log", headers=as_user(OTHER_AUDITOR),
                           params={"month": month, "user_id": OTHER_AUDITOR, **WHY})
    assert [i["action"] for i in again.json()["items"]] == ["access_log", "access_log"]


async def test_as_of_a_case_and_a_queue(
    http: httpx.AsyncClient, service: tuple[ProjectionsService, list[Any]], pool: asyncpg.Pool
) -> None:
    case = service[1][0]
    history = (await http.get(f"/v1/audit/cases/{case}/history", params=WHY,
                              headers=as_user(AUDITOR))).json()["entries"]
    first, second = history[0], history[1]
    early = await http.get(f"/v1/audit/cases/{case}/as-of", headers=as_user(AUDITOR),
                           params={**WHY, "position": first["position"]})
    state = early.json()
    assert (state["version"], state["state"]["status"]) == (1, "submitted")
    assert state["state"]["applicant"] == {"subject_id": history[0]["details"]["subject_id"]}
    by_time = await http.get(f"/v1/audit/cases/{case}/as-of", headers=as_user(AUDITOR),
                             params={**WHY, "at": second["recorded_at"]})
    assert by_time.json()["version"] >= second["version"]
    station = first["details"]["station"]
    queue = await http.get(f"/v1/audit/units/{station}/queue/as-of", headers=as_user(AUDITOR),
                           params={**WHY, "position": first["position"]})
    assert str(case) in [c["case_id"] for c in queue.json()["cases"]]
    before = await http.get(f"/v1/audit/cases/{case}/as-of", headers=as_user(AUDITOR),
                            params={**WHY, "position": first["position"] - 1})
    assert before.status_code == 404  # the first case's first event is position 1
    both = await http.get(f"/v1/audit/cases/{case}/as-of", headers=as_user(AUDITOR),
                          params={**WHY, "position": 1, "at": second["recorded_at"]})
    assert both.status_code == 422


async def access_log_of(http: httpx.AsyncClient, user_id: str) -> list[dict[str, Any]]:
    log = await http.get("/v1/audit/access-log", headers=as_user(OTHER_AUDITOR),
                         params={"month": month_of(datetime.now(UTC)), "user_id": user_id,
                                 **WHY})
    assert log.status_code == 200, log.text
    items: list[dict[str, Any]] = log.json()["items"]
    return items


@pytest.mark.parametrize(("params", "field"), [
    ({"position": "99999999999999999999"}, "query:position"),
    ({"at": "0001-01-01T00:00:00+14:00"}, "query:at"),
])
async def test_an_as_of_beyond_what_postgresql_holds_is_refused_before_it_is_logged(
    http: httpx.AsyncClient, service: tuple[ProjectionsService, list[Any]],
    params: dict[str, str], field: str,
) -> None:
    case = service[1][0]
    refused = await http.get(f"/v1/audit/cases/{case}/as-of", headers=as_user(AUDITOR),
                             params={**WHY, **params})
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == [field]
    assert await access_log_of(http, AUDITOR) == []


async def test_audit_refusals_name_what_to_change(
    http: httpx.AsyncClient, service: tuple[ProjectionsService, list[Any]]
) -> None:
    unknown = uuid.uuid4()
    for url, user, status, field in [
        (f"/v1/audit/cases/{unknown}/history", AUDITOR, 404, "path:case_id"),
        (f"/v1/audit/cases/{unknown}/as-of", AUDITOR, 404, "path:case_id"),
        ("/v1/audit/units/999999/queue/as-of", AUDITOR, 404, "path:unit"),
        (f"/v1/audit/cases/{service[1][0]}/history", SUPERVISOR, 403, "token:role"),
    ]:
        refused = await http.get(url, params=WHY, headers=as_user(user))
        assert refused.status_code == status, (url, refused.text)
        assert [e["field"] for e in refused.json()["errors"]] == [field], url
    unit = "5301" * 1250  # an unknown unit is echoed in part, however long
    refused = await http.get(f"/v1/audit/units/{unit}/queue/as-of", params=WHY,
                             headers=as_user(AUDITOR))
    assert refused.json()["detail"] == f"no unit {unit[:64]}…"


async def test_the_access_log_takes_real_months_and_a_case_id_that_is_one(
    http: httpx.AsyncClient, service: tuple[ProjectionsService, list[Any]]
) -> None:
    month = month_of(datetime.now(UTC))
    for params, field in [({"month": "2026-99"}, "query:month[0]"),
                          ({"month": [month, "2026-13"]}, "query:month[1]"),
                          ({"month": month, "case_id": "notuuid"}, "query:case_id")]:
        refused = await http.get("/v1/audit/access-log", headers=as_user(OTHER_AUDITOR),
                                 params={**params, **WHY})
        assert refused.status_code == 422, refused.text
        assert [e["field"] for e in refused.json()["errors"]] == [field]
    case = service[1][0]
    await http.get(f"/v1/audit/cases/{case}/history", params=WHY, headers=as_user(AUDITOR))
    found = await http.get("/v1/audit/access-log", headers=as_user(OTHER_AUDITOR),
                           params={"month": month, "case_id": str(case).upper(), **WHY})
    assert [i["case_id"] for i in found.json()["items"]] == [str(case)]


async def test_a_token_for_no_one_in_the_staff_directory_reads_nothing_and_is_not_logged(
    http: httpx.AsyncClient, service: tuple[ProjectionsService, list[Any]]
) -> None:
    case = service[1][0]
    ghost = {"Authorization": "Bearer " + mint_token(
        Principal(user_id="ghost.1", role="auditor", unit="530100"), SETTINGS)}
    month = month_of(datetime.now(UTC))
    for url, params in [(f"/v1/audit/cases/{case}/history", {}),
                        (f"/v1/audit/cases/{case}/as-of", {}),
                        ("/v1/audit/units/530102/queue/as-of", {}),
                        ("/v1/audit/access-log", {"month": month})]:
        refused = await http.get(url, params={**params, **WHY}, headers=ghost)
        assert refused.status_code == 403, (url, refused.text)
        assert [e["field"] for e in refused.json()["errors"]] == ["token:sub"]
    assert await access_log_of(http, "ghost.1") == []


async def test_an_as_of_position_the_log_has_not_reached_is_refused_before_it_is_logged(
    http: httpx.AsyncClient, service: tuple[ProjectionsService, list[Any]], pool: asyncpg.Pool
) -> None:
    """A state "as of" a position the log does not hold yet is not known: answering with
    today's state would show, under that position, one it may never have had there."""
    case = service[1][0]
    head = int(await pool.fetchval("SELECT max(position) FROM events"))
    for url in (f"/v1/audit/cases/{case}/as-of", "/v1/audit/units/530102/queue/as-of"):
        refused = await http.get(url, headers=as_user(AUDITOR),
                                 params={**WHY, "position": head + 1000})
        assert refused.status_code == 422, (url, refused.text)
        assert [e["field"] for e in refused.json()["errors"]] == ["query:position"]
        assert f"position {head}" in refused.json()["detail"]
    assert await access_log_of(http, AUDITOR) == []
    reached = await http.get(f"/v1/audit/cases/{case}/as-of", headers=as_user(AUDITOR),
                             params={**WHY, "position": head})
    assert reached.status_code == 200, reached.text


async def test_a_case_with_an_event_altered_beyond_its_model_is_answered_not_a_500(
    http: httpx.AsyncClient, service: tuple[ProjectionsService, list[Any]],
    admin_pool: asyncpg.Pool
) -> None:
    """A forger's edit that no longer fits the event's model: the history still shows the
    case, the altered step flagged; the as-of says which event stops the replay."""
    from tests import tamper

    case = service[1][0]
    position = int(await admin_pool.fetchval(
        "SELECT position FROM events WHERE stream_id = $1 AND version = 2", f"case-{case}"))
    await tamper.alter_data(admin_pool, position, '{"forged":true}')
    history = await http.get(f"/v1/audit/cases/{case}/history", params=WHY,
                             headers=as_user(AUDITOR))
    assert history.status_code == 200, history.text
    assert history.json()["altered_positions"] == [position]
    state = await http.get(f"/v1/audit/cases/{case}/as-of", params=WHY,
                           headers=as_user(AUDITOR))
    assert state.status_code == 409, state.text
    assert f"position {position}" in state.json()["detail"]
    assert [e["field"] for e in state.json()["errors"]] == ["path:case_id"]
    queue = await http.get("/v1/audit/units/530102/queue/as-of", params=WHY,
                           headers=as_user(AUDITOR))
    assert queue.status_code == 409, queue.text
    assert f"position {position}" in queue.json()["detail"]
