"""HTTP entrypoint of the projections service: the read models for supervisors, officers and
auditors (scoped to the caller's unit and everything under it; auditors read all), the public
status of a case by tracking number (no login, nothing personal), and the metrics.

Every answer states the projection's position and lag (body ``projection`` and the
``X-Projection-Position`` / ``X-Projection-Lag`` headers). ``min_position`` asks to wait
(bounded) until the projection has applied that position: read-your-writes after a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse

from services.projections import queries as q
from services.projections.live import LiveStats
from services.projections.metrics import render
from services.projections.progress import (
    Progress,
    advance_watermark,
    progress_of,
    read_progress,
)
from services.projections.schema import SCHEMAS
from shared.auth import CurrentPrincipal, Principal, require_staff
from shared.contracts.cases import CaseStatus
from shared.eventstore.postgres import Conn
from shared.http import ProblemError
from shared.inputs import BIGINT_MAX, ChinaMoment, Month
from shared.logging import get_logger
from shared.ratelimit import ClientRateLimit
from shared.reference.catalogue import Catalogue
from shared.reference.org import Level, OrgTree
from shared.reference.staff import Role, StaffDirectory
from shared.service import PROMETHEUS_TEXT

log = get_logger(__name__)
MAX_BODY_BYTES = 1 << 20  # reads only: no route takes a body

router = APIRouter(prefix="/v1/projections", tags=["read models"])
public = APIRouter(prefix="/v1/public", tags=["public"])
operations = APIRouter(tags=["operations"])


@dataclass
class Reader:
    """What the routes need: the pool, the org tree, the staff directory (every read checks
    its caller against it), the service catalogue (filters name its services), and the live
    path's counters."""

    pool: asyncpg.Pool
    org: OrgTree
    staff: StaffDirectory
    catalogue: Catalogue
    max_wait_s: float = 5.0
    live: LiveStats | None = None
    envelopes_parked: Callable[[], int] = field(default=lambda: 0)
    tick_s: float = 0.05  # how often waiters refresh without word from the live path
    _reached: int = field(default=0, init=False, repr=False)  # the last watermark seen
    _waiters: list[tuple[int, int, asyncio.Future[None]]] = field(
        default_factory=list, init=False, repr=False)  # a heap by min_position
    _order: Iterator[int] = field(default_factory=itertools.count, init=False, repr=False)
    _kick: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _refresher: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _active_seen: str = field(default=SCHEMAS[0], init=False, repr=False)

    def scope(self, who: Principal, unit: str | None, *, field: str = "query:unit",
              ) -> q.Scope:
        """The jurisdiction to read: ``unit`` (default: the caller's own), which must lie
        within the caller's unit unless the caller is an auditor; ``field`` names where the
        unit was given (a query or a path parameter)."""
        self.check(who)
        target = unit or (self.org.root.code if who.role == Role.AUDITOR else who.unit)
        if target not in self.org:
            raise ProblemError(404, "Unknown unit", f"no unit {echoed(target)}",
                               errors=[{"field": field, "message": "unknown unit"}])
        if who.role != Role.AUDITOR and not self.org.is_within(target, who.unit):
            raise ProblemError(403, "Outside your jurisdiction",
                               f"{target} is not {who.unit} or under it",
                               errors=[{"field": field, "message": "outside jurisdiction"}])
        return q.Scope.of(self.org, target)

    def known(self, *, status: list[str] | None = None, service_code: str | None = None,
              level: str | None = None) -> None:
        """Each filter value given is one the domain has (a case status, a level, a service
        of the catalogue), else 422 naming each parameter at fault: a typo (``in-review``)
        matched no row and answered an empty list, which reads as "no such cases"."""
        given = (("status", status or (), _STATUSES),
                 ("service_code", [service_code] if service_code else (), self.catalogue),
                 ("level", [level] if level else (), _LEVELS))
        errors = []
        for name, values, allowed in given:
            if any(v not in allowed for v in values):
                errors.append({"field": f"query:{name}", "message":
                               f"unknown {name}; one of {', '.join(_values(allowed))}"})
        if errors:
            fields = ", ".join(e["field"].removeprefix("query:") for e in errors)
            raise ProblemError(422, "Invalid request", f"unknown {fields}", errors=errors)

    def owner(self, who: Principal, owner: str | None) -> str | None:
        """The ``owner`` filter: ``me`` is the caller; anyone else must be in the staff
        directory (422 naming ``query:owner``: an unknown id matched nothing and read as "owns
        no case")."""
        if owner is None:
            return None
        if owner == "me":
            return who.user_id
        if self.staff.get(owner) is None:
            raise ProblemError(422, "Invalid request", "owner is not in the staff directory",
                               errors=[{"field": "query:owner", "message": "unknown user; a "
                                        "user id of the staff directory, or me"}])
        return owner

    def check(self, who: Principal) -> None:
        """The caller is a person of the staff directory with the token's role and unit."""
        require_staff(who, self.staff)

    def may_see(self, who: Principal, *units: str | None) -> bool:
        if who.role == Role.AUDITOR:
            return True
        return any(u is not None and self.org.is_within(u, who.unit) for u in units)

    @contextlib.asynccontextmanager
    async def reading(self, min_position: int | None, *, snapshot: bool = True,
                      ) -> AsyncIterator[tuple[Conn, str, Progress]]:
        """A read of the active set, once it has reached ``min_position`` (or 504 after
        ``max_wait_s``). ``snapshot``: one repeatable-read snapshot for the progress and every
        query (answers of several queries); without, for an answer of one query, the progress
        is read just before it, so the position stated is one the data has at least reached
        (and two round trips, BEGIN and COMMIT, are saved)."""
        if min_position is not None:
            await self._wait(min_position)  # holding no connection while it waits
        async with self.pool.acquire() as conn:
            if not snapshot:
                progress = await read_progress(conn)
                yield conn, progress.schema, progress
                return
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                progress = await read_progress(conn)
                yield conn, progress.schema, progress

    async def read_case(self, min_position: int | None,
                        case_id: uuid.UUID) -> tuple[Progress, dict[str, Any] | None]:
        """One case of the active set and the progress, once it has reached ``min_position``:
        the read that follows every command, in one round trip (``reading`` takes two) on the
        set last seen active. After a swap, the first read finds the status naming another
        set (or the old one's tables gone) and reads the case again, from the active set."""
        if min_position is not None:
            await self._wait(min_position)
        async with self.pool.acquire() as conn:
            seen = self._active_seen
            with contextlib.suppress(asyncpg.UndefinedTableError):
                row = await conn.fetchrow(q.status_and_case(seen), case_id)
                assert row is not None  # the status row, with or without the case
                if row["active_schema"] == seen:
                    return progress_of(row), q.case_of(row)
            progress = await read_progress(conn)
            self._active_seen = progress.schema
            return progress, await q.get_case(conn, progress.schema, case_id)

    def applied(self) -> None:
        """The live path (same process) has committed a batch: refresh the waiters now rather
        than at the next tick."""
        self._kick.set()

    async def _wait(self, min_position: int) -> None:
        """Wait until the watermark reaches ``min_position``. One refresher serves every
        waiter: it advances the watermark when the live path commits a batch (``applied``)
        or every ``tick_s``, and wakes the waiters it has passed. A hundred waiters cost what
        one does, not a hundred queries every tick (which, under load, fed the very backlog
        they waited on)."""
        if min_position <= self._reached:
            return  # a watermark only moves on (a swap sets the new set's at the head)
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (min_position, next(self._order), waiter))
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_while_waited())
        try:
            await asyncio.wait_for(waiter, self.max_wait_s)
        except TimeoutError:
            raise ProblemError(
                504, "Projection behind", f"the read models have reached position "
                f"{self._reached}, not {min_position}, within {self.max_wait_s} s",
                errors=[{"field": "query:min_position", "message": "not reached yet"}],
                projection={"position": self._reached}) from None

    async def _refresh_while_waited(self) -> None:
        while self._waiters:
            self._kick.clear()
            try:
                async with self.pool.acquire() as conn:
                    self._reached = max(self._reached, await advance_watermark(conn))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                    TimeoutError) as exc:  # the waiters time out on their own, if need be
                log.warning("projections.watermark_failed", error=repr(exc))
            while self._waiters and (self._waiters[0][0] <= self._reached
                                     or self._waiters[0][2].done()):
                waiter = heapq.heappop(self._waiters)[2]
                if not waiter.done():
                    waiter.set_result(None)
            if any(w.done() for _, _, w in self._waiters):  # timed out, deeper in the heap
                self._waiters = [w for w in self._waiters if not w[2].done()]
                heapq.heapify(self._waiters)
            if self._waiters:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self.tick_s)


_STATUSES = frozenset(CaseStatus)
_LEVELS = frozenset(Level)


def _values(allowed: frozenset[str] | Catalogue) -> list[str]:
    return sorted(allowed) if isinstance(allowed, frozenset) else [s.code for s in allowed]


async def reader_of(request: Request) -> Reader:  # async: no thread hop per request
    reader = request.app.state.projections
    assert isinstance(reader, Reader)
    return reader


Read = Annotated[Reader, Depends(reader_of)]
MinPosition = Annotated[int | None, Query(
    ge=0, le=BIGINT_MAX,
    description="Wait (bounded) until the projection has applied this global position "
                "(the `position` a command returned): read-your-writes.")]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=BIGINT_MAX)]  # PostgreSQL's OFFSET is a bigint
After = Annotated[str | None, Query(
    max_length=512, description="The `next` of the page before: this page starts after its "
                                "last case, however many cases changed meanwhile.")]
TRACKING_NO = r"^[A-Za-z0-9][A-Za-z0-9-]*$"  # e.g. 530102-20260302-7K3M9Q2XPA
TRACKING_NO_MAX = 64


ECHOED = 64


def echoed(given: str) -> str:
    """What a problem's detail repeats of a caller's text: its first ``ECHOED`` characters,
    then "…". A unit code is a dozen digits; whatever else was sent (5,000 characters came
    back whole) is the caller's own and need not be sent back to be recognised."""
    return given if len(given) <= ECHOED else given[:ECHOED] + "…"


def answer(response: Response, progress: Progress, body: dict[str, Any]) -> dict[str, Any]:
    response.headers["X-Projection-Position"] = str(progress.position)
    response.headers["X-Projection-Lag"] = str(progress.lag_events)
    return {**body, "projection": progress.as_dict()}


def _filter(status: list[str] | None, service_code: str | None, level: str | None,
            overdue: bool | None, tracking_no: str | None, submitted_from: datetime | None,
            submitted_to: datetime | None, sort: str, order: str, limit: int, offset: int,
            after: str | None, **extra: Any) -> q.CaseFilter:
    if sort not in q.SORTS:
        raise ProblemError(422, "Invalid request", f"sort must be one of {sorted(q.SORTS)}",
                           errors=[{"field": "query:sort", "message": "unknown sort key"}])
    return q.CaseFilter(status=status or (), service_code=service_code, level=level,
                        overdue=overdue, tracking_no=tracking_no, submitted_from=submitted_from,
                        submitted_to=submitted_to, sort=sort, descending=order == "desc",
                        limit=limit, offset=offset, after=_cursor(sort, after), **extra)


def _cursor(sort: str, after: str | None) -> tuple[Any, uuid.UUID] | None:
    if after is None:
        return None
    try:
        return q.read_cursor(sort, after)
    except q.BadCursor as exc:
        raise ProblemError(422, "Invalid request", str(exc),
                           errors=[{"field": "query:after", "message": str(exc)}]) from exc


Order = Annotated[str, Query(pattern="^(asc|desc)$")]
Owner = Annotated[str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                    description="a user id of the staff directory, or me")]


@router.get("/cases", summary="Case summaries in your jurisdiction, filtered and paginated")
async def list_cases(
    who: CurrentPrincipal, reader: Read, response: Response, unit: str | None = None,
    status: Annotated[list[str] | None, Query()] = None, service_code: str | None = None,
    level: str | None = None, overdue: bool | None = None,
    tracking_no: Annotated[str | None, Query(pattern=TRACKING_NO,
                                             max_length=TRACKING_NO_MAX)] = None,
    submitted_from: ChinaMoment | None = None, submitted_to: ChinaMoment | None = None,
    sort: str = "last_change_at", order: Order = "desc", limit: Limit = 50,
    offset: Offset = 0, after: After = None, min_position: MinPosition = None,
    owner: Owner = None,
) -> dict[str, Any]:
    """Cases held by ``unit`` (default: yours) or any unit under it: status, service, holding
    unit and level, owner, acting person, due date, overdue flag, last change. ``warned`` and
    ``breached`` are those of the SLA clock of the level holding the case (each level has its
    own: a case breached at the station and handed up is not breached in the township's
    queue); ``breached_levels`` lists every level breached since the submission or the last
    reopen. Submitted from ``submitted_from`` up to (not including) ``submitted_to``; a date
    or time without a zone is China Standard Time. ``owner``: only the cases this person owns
    (``me``: the caller's own, first-inquiry responsibility; a colleague's: what their backup
    covers while they are away)."""
    scope = reader.scope(who, unit)
    reader.known(status=status, service_code=service_code, level=level)
    f = _filter(status, service_code, level, overdue, tracking_no, submitted_from,
                submitted_to, sort, order, limit, offset, after,
                owner=reader.owner(who, owner))
    async with reader.reading(min_position) as (conn, schema, progress):
        body = await q.list_cases(conn, schema, scope, f)
    return answer(response, progress, body)


@router.get("/overdue", summary="Overdue cases in your jurisdiction, most overdue first")
async def overdue(who: CurrentPrincipal, reader: Read, response: Response,
                  unit: str | None = None, service_code: str | None = None,
                  limit: Limit = 50, offset: Offset = 0, after: After = None,
                  min_position: MinPosition = None) -> dict[str, Any]:
    """Open cases whose running SLA clock is past its due time."""
    scope = reader.scope(who, unit)
    reader.known(service_code=service_code)
    f = q.CaseFilter(service_code=service_code, overdue=True, sort="due_at", descending=False,
                     limit=limit, offset=offset, after=_cursor("due_at", after))
    async with reader.reading(min_position) as (conn, schema, progress):
        body = await q.list_cases(conn, schema, scope, f)
    return answer(response, progress, body)


@router.get("/units/{unit}/queue", summary="The queue of one unit: open cases it holds")
async def queue(unit: str, who: CurrentPrincipal, reader: Read, response: Response,
                status: Annotated[list[str] | None, Query()] = None,
                service_code: str | None = None, sort: str = "last_change_at",
                order: Order = "asc", limit: Limit = 50, offset: Offset = 0,
                after: After = None, min_position: MinPosition = None,
                owner: Owner = None) -> dict[str, Any]:
    """Open cases held by exactly this unit (not the units under it); ``warned`` and
    ``breached`` say whether the case is late at this unit's level (see ``/cases``);
    ``owner`` as there."""
    scope = reader.scope(who, unit, field="path:unit")
    reader.known(status=status, service_code=service_code)
    f = _filter(status, service_code, None, None, None, None, None, sort, order, limit,
                offset, after, unit=unit, open_only=not status, owner=reader.owner(who, owner))
    async with reader.reading(min_position) as (conn, schema, progress):
        body = await q.list_cases(conn, schema, scope, f)
    return answer(response, progress, {"unit": unit, **body})


@router.get("/units/{unit}/counts", summary="Counts by status and service, own and subtree")
async def counts(unit: str, who: CurrentPrincipal, reader: Read, response: Response,
                 min_position: MinPosition = None) -> dict[str, Any]:
    """Cases held by the unit itself and by the unit with everything under it, by status and
    service, and each child unit's subtree totals."""
    reader.scope(who, unit, field="path:unit")
    async with reader.reading(min_position) as (conn, schema, progress):
        body = await q.counts(conn, schema, reader.org, unit)
    return answer(response, progress, body)


@router.get("/sla", summary="On-time rate, median and p90 handling time, breaches")
async def sla(who: CurrentPrincipal, reader: Read, response: Response,
              unit: str | None = None,
              group_by: Annotated[list[str] | None, Query()] = None,
              service_code: str | None = None, level: str | None = None,
              month_from: Month | None = None, month_to: Month | None = None,
              min_position: MinPosition = None) -> dict[str, Any]:
    """Per group (any of service_code, unit, level, month): cases handled, on-time rate,
    median and p90 working seconds used, and breaches charged to the level that used the
    time. A reopened case is handled again: each round of a level's clock (a reopen restarts
    it from zero) counts on its own, in the month it stopped."""
    scope = reader.scope(who, unit)
    reader.known(service_code=service_code, level=level)
    groups = group_by or ["level"]
    try:
        async with reader.reading(min_position) as (conn, schema, progress):
            rows = await q.sla_stats(conn, schema, scope, groups, service_code=service_code,
                                     level=level, month_from=month_from, month_to=month_to)
    except ValueError as exc:
        raise ProblemError(422, "Invalid request", str(exc),
                           errors=[{"field": "query:group_by", "message": str(exc)}]) from exc
    return answer(response, progress, {"group_by": groups, "items": rows})


@router.get("/handoffs", summary="Delays of hand-offs between levels")
async def handoffs(who: CurrentPrincipal, reader: Read, response: Response,
                   unit: str | None = None,
                   group_by: Annotated[list[str] | None, Query()] = None,
                   since: ChinaMoment | None = None,
                   min_position: MinPosition = None) -> dict[str, Any]:
    """Per from-level → to-level: moves, still waiting, mean / median / p90 seconds until
    the upper unit received the case."""
    scope = reader.scope(who, unit)
    try:
        async with reader.reading(min_position) as (conn, schema, progress):
            rows = await q.handoff_delays(conn, schema, scope, group_by or (), since=since)
    except ValueError as exc:
        raise ProblemError(422, "Invalid request", str(exc),
                           errors=[{"field": "query:group_by", "message": str(exc)}]) from exc
    return answer(response, progress, {"items": rows})


async def _visible_case(reader: Reader, conn: Conn, schema: str, who: Principal,
                        case_id: uuid.UUID) -> dict[str, Any]:
    return _visible(reader, who, case_id, await q.get_case(conn, schema, case_id))


def _visible(reader: Reader, who: Principal, case_id: uuid.UUID,
             case: dict[str, Any] | None) -> dict[str, Any]:
    """``case``, if there is one and the caller may see it (else 404 or 403)."""
    if case is None:
        raise ProblemError(404, "Not found", f"no case {case_id} in the read models",
                           errors=[{"field": "path:case_id", "message": "no such case"}])
    if not reader.may_see(who, case["unit"], case["station"]):
        raise ProblemError(403, "Outside your jurisdiction",
                           f"case {case_id} is outside the jurisdiction of {who.unit}",
                           errors=[{"field": "token:unit",
                                    "message": f"{who.unit} does not hold this case"}])
    return case


@router.get("/cases/{case_id}", summary="One case's summary")
async def case_summary(case_id: uuid.UUID, who: CurrentPrincipal, reader: Read,
                       response: Response, min_position: MinPosition = None) -> dict[str, Any]:
    reader.check(who)  # here, not in a dependency: the fast path calls this very function
    progress, case = await reader.read_case(min_position, case_id)
    return answer(response, progress, {"case": _visible(reader, who, case_id, case)})


@router.get("/cases/{case_id}/timeline", summary="Where has the case been: every step")
async def case_timeline(case_id: uuid.UUID, who: CurrentPrincipal, reader: Read,
                        response: Response, min_position: MinPosition = None) -> dict[str, Any]:
    """Each step with when, who (and on whose behalf), which unit and level, and the moves'
    from-unit and to-unit."""
    reader.check(who)
    async with reader.reading(min_position) as (conn, schema, progress):
        case = await _visible_case(reader, conn, schema, who, case_id)
        steps = await q.timeline(conn, schema, case_id)
    return answer(response, progress, {"case_id": case_id, "tracking_no": case["tracking_no"],
                                       "steps": steps})


@router.get("/status", summary="The projection's position, head and lag")
async def status(who: CurrentPrincipal, reader: Read, response: Response) -> dict[str, Any]:
    reader.check(who)
    async with reader.reading(None, snapshot=False) as (_, _schema, progress):
        return answer(response, progress, {"parked": progress.parked})


def within_public_limit(request: Request) -> None:
    """Refuse (429, Retry-After) a client over the public status's rate (``ClientRateLimit``,
    settings ``public_status_per_minute`` / ``public_status_burst``): the endpoint needs no
    login, so nothing else stops one client from taking the service's database time."""
    limit: ClientRateLimit | None = getattr(request.app.state, "public_limit", None)
    if limit is None:
        return
    client = request.client.host if request.client is not None else "unknown"
    wait = limit.take(client)
    if wait is not None:
        after = limit.retry_after(wait)
        raise ProblemError(429, "Too many requests",
                           f"this address asked for the public status too often; try again in "
                           f"{after} s", headers={"Retry-After": after},
                           errors=[{"field": "client", "message": "over the public status's "
                                    "rate for one address"}])


@public.get("/status/{tracking_no}", summary="A case's status by tracking number (no login)",
            dependencies=[Depends(within_public_limit)],
            responses={429: {"description": "Too many requests from this address (Retry-After "
                                            "says when to try again)"}})
async def public_status(tracking_no: Annotated[str, Path(pattern=TRACKING_NO,
                                                       max_length=TRACKING_NO_MAX)],
                        reader: Read, response: Response,
                        min_position: Annotated[str | None, Query(
                            include_in_schema=False)] = None) -> dict[str, Any]:
    """Status, service, the level and office holding the case, and the dated steps. No name,
    no ID number, no officer, no free text.

    ``min_position`` is refused here (422 naming it): it would let anyone, with no login, hold
    a request open up to ``max_wait_s`` and keep the watermark's refresher querying meanwhile;
    read-your-writes is for those who wrote, and they read the authenticated endpoints."""
    if min_position is not None:
        raise ProblemError(422, "Invalid request", "min_position is not taken without a login",
                           errors=[{"field": "query:min_position",
                                    "message": "not taken on the public status"}])
    async with reader.reading(None) as (conn, schema, progress):
        found = await q.public_status(conn, schema, tracking_no)
    if found is None:
        raise ProblemError(404, "Not found", "no case has this tracking number",
                           errors=[{"field": "path:tracking_no", "message": "no such case"}])
    unit = reader.org.get(found.pop("unit"))
    found["office"] = unit.name if unit is not None else None
    return answer(response, progress, {"case": found})


@operations.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(reader: Read) -> PlainTextResponse:
    async with reader.pool.acquire() as conn:
        progress = await read_progress(conn)
    return PlainTextResponse(render(progress, reader.live, reader.envelopes_parked()),
                             media_type=PROMETHEUS_TEXT)
