"""Paging through case lists: a page starts where the last one ended (``next``), however the
cases before it changed meanwhile, in every sort order, NULL due dates and ties included."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.cases.domain import AcceptCase, AddNote, SubmitCase, decide, evolve
from services.cases.domain.commands import Command
from services.cases.domain.state import Case
from services.projections.live import LiveProjection
from services.projections.projectors import UnitPaths
from services.projections.queries import SORTS
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.contracts.envelope import NewEvent
from shared.eventstore.postgres import PostgresEventStore
from shared.reference import CHINA_TZ, Reference
from tests.integration.projections.test_api_input import token

STATION, CLERK, SUPERVISOR = "530102001001", "clerk.530102001001.a", "supervisor.530102001"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=CHINA_TZ)




class Cases:
    """Cases made by the real domain, appended to the store and applied by the live path."""

    def __init__(self, store: PostgresEventStore, pool: asyncpg.Pool, ref: Reference) -> None:
        self.store, self.pool, self.ref = store, pool, ref
        self.states: dict[uuid.UUID, Case | None] = {}
        self.live = LiveProjection(UnitPaths(ref.org))
        member = ref.staff.member(CLERK)
        self.clerk = Actor(user_id=CLERK, role=member.role, unit=member.unit)

    async def do(self, command: Command) -> None:
        state = self.states.get(command.case_id)
        events = decide(state, command, self.ref)
        for event in events:
            state = evolve(state, event)
        assert state is not None
        self.states[command.case_id] = state
        head = await self.pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
        await self.store.append(f"case-{command.case_id}", state.version - len(events), [
            NewEvent(e.event_type, e.model_dump(mode="json")) for e in events])
        async with self.pool.acquire() as conn, conn.transaction():
            await self.live.apply(conn, await self.store.read_batch(head, 100))

    async def submit(self, at: datetime, *, accept_at: datetime | None = None) -> uuid.UUID:
        case_id = uuid.uuid4()
        await self.do(SubmitCase(
            case_id=case_id, at=at, actor=self.clerk, tracking_no=f"KM-{case_id.hex[:10]}",
            service_code="legal_information", visit_id=uuid.uuid4(), station=STATION,
            applicant=EncryptedApplicant(subject_id="s", id_hash="h")))
        if accept_at is not None:
            await self.do(AcceptCase(case_id=case_id, at=accept_at, actor=self.clerk))
        return case_id


@pytest.fixture
def cases(pg_store: PostgresEventStore, pool: asyncpg.Pool, ref: Reference) -> Cases:
    return Cases(pg_store, pool, ref)


async def page(http: httpx.AsyncClient, url: str, ref: Reference, **params: Any,
               ) -> dict[str, Any]:
    response = await http.get(url, params=params, headers=token(SUPERVISOR, ref))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_queue_read_page_by_page_skips_no_case_worked_meanwhile(
    http: httpx.AsyncClient, cases: Cases, ref: Reference,
) -> None:
    """The queue lists the case untouched longest first: the one a clerk works moves to the
    end. Paged by offset, every case after it moved one place up and one was never shown."""
    queued = [await cases.submit(T0 + timedelta(minutes=n)) for n in range(5)]
    url = f"/v1/projections/units/{STATION}/queue"
    first = await page(http, url, ref, limit=2)
    assert [c["case_id"] for c in first["items"]] == [str(c) for c in queued[:2]]
    await cases.do(AcceptCase(case_id=queued[0], at=T0 + timedelta(hours=1),
                              actor=cases.clerk))

    by_offset = await page(http, url, ref, limit=2, offset=2)
    assert str(queued[2]) not in [c["case_id"] for c in by_offset["items"]]  # skipped

    seen, after = [c["case_id"] for c in first["items"]], first["next"]
    while after is not None:
        more = await page(http, url, ref, limit=2, after=after)
        seen += [c["case_id"] for c in more["items"]]
        after = more["next"]
        assert more["total"] == 5
    assert seen == [str(c) for c in (*queued, queued[0])]  # the one worked: again, at the end


async def test_every_order_paged_one_by_one_is_the_whole_list(
    http: httpx.AsyncClient, cases: Cases, ref: Reference,
) -> None:
    """Ties (one visit, one instant), cases with and without a due date, both directions."""
    for n in range(3):
        await cases.submit(T0, accept_at=T0 + timedelta(minutes=n % 2))
        await cases.submit(T0)
    case = await cases.submit(T0 + timedelta(minutes=5), accept_at=T0 + timedelta(minutes=6))
    await cases.do(AddNote(case_id=case, at=T0 + timedelta(minutes=7), actor=cases.clerk,
                           text="来电询问"))
    for sort in sorted(SORTS):
        for order in ("asc", "desc"):
            whole = await page(http, "/v1/projections/cases", ref, sort=sort, order=order,
                               limit=500)
            assert whole["next"] is None
            seen, after = [], None
            for _ in range(len(whole["items"]) + 1):
                params = {"sort": sort, "order": order, "limit": 1}
                one = await page(http, "/v1/projections/cases", ref,
                                 **params | ({"after": after} if after else {}))
                seen += one["items"]
                after = one["next"]
                if after is None:
                    break
            assert [c["case_id"] for c in seen] == [c["case_id"] for c in whole["items"]], (
                sort, order)
    overdue = await page(http, "/v1/projections/overdue", ref, limit=2)
    rest = await page(http, "/v1/projections/overdue", ref, limit=2, after=overdue["next"])
    assert len(overdue["items"]) == 2 and len(rest["items"]) == 2 and rest["next"] is None
    assert {c["case_id"] for c in overdue["items"]}.isdisjoint(
        c["case_id"] for c in rest["items"])


@pytest.mark.parametrize("after", ["nonsense", "W10", "WyJzdGF0dXMiLCJ4IiwieSJd"])
async def test_a_cursor_that_is_not_one_of_this_list_is_a_problem_naming_it(
    http: httpx.AsyncClient, cases: Cases, ref: Reference, after: str,
) -> None:
    await cases.submit(T0)
    first = await page(http, "/v1/projections/cases", ref, sort="tracking_no", limit=1)
    for url, params in (("/v1/projections/cases", {"after": after}),
                        ("/v1/projections/cases", {"after": first["next"]}),  # another sort
                        ("/v1/projections/overdue", {"after": first["next"]})):
        response = await http.get(url, params=params, headers=token(SUPERVISOR, ref))
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in response.json()["errors"]] == ["query:after"]


async def test_the_owner_filter_lists_a_persons_cases_and_me_is_the_caller(
    http: httpx.AsyncClient, cases: Cases, ref: Reference,
) -> None:
    """``owner``: the cases one person owns (``me``: the caller), in a list or a queue; an id
    that is not in the staff directory is a problem naming the parameter, not an empty list."""
    mine = [await cases.submit(T0 + timedelta(minutes=i), accept_at=T0 + timedelta(hours=1))
            for i in range(2)]
    theirs = await cases.submit(T0 + timedelta(minutes=5))
    backup = "clerk.530102001001.b"
    member = ref.staff.member(backup)
    await cases.do(AcceptCase(case_id=theirs, at=T0 + timedelta(hours=2),
                              actor=Actor(user_id=backup, role=member.role, unit=member.unit)))

    def ids(body: dict[str, Any]) -> set[str]:
        return {item["case_id"] for item in body["items"]}

    assert ids(await page(http, "/v1/projections/cases", ref, owner=CLERK)) == {
        str(c) for c in mine}
    assert ids(await page(http, f"/v1/projections/units/{STATION}/queue", ref,
                          owner=backup)) == {str(theirs)}
    as_clerk = await http.get("/v1/projections/cases", params={"owner": "me"},
                              headers=token(CLERK, ref))
    assert as_clerk.status_code == 200, as_clerk.text
    assert ids(as_clerk.json()) == {str(c) for c in mine}
    unknown = await http.get("/v1/projections/cases", params={"owner": "clerk.nobody"},
                             headers=token(SUPERVISOR, ref))
    assert unknown.status_code == 422
    assert [e["field"] for e in unknown.json()["errors"]] == ["query:owner"]
