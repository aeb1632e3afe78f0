"""The projections service on real PostgreSQL and the Kafka-protocol broker: the four-level
journey seen from each level, jurisdiction, the public status, read-your-writes, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services.cases.bootstrap import CasesService
from services.cases.bootstrap import bootstrap as cases_bootstrap
from services.cases.domain import (
    AcceptCase,
    CloseCase,
    DecideCase,
    HandOffCase,
    ReceiveHandoff,
    RequestDocuments,
    ReturnCase,
    SubmitCase,
    SupplyDocuments,
)
from services.projections.agents import build_worker, running
from services.projections.bootstrap import ProjectionsService, bootstrap, build_app
from shared.auth import Principal, mint_token
from shared.contracts.cases import Actor, EncryptedApplicant, Outcome
from shared.eventstore.postgres import PostgresEventStore
from shared.kafka import ensure_topics
from shared.reference import Reference
from shared.relay import Relay, RelayConfig
from tests.conftest import Db
from tests.integration.cases.test_cases_api import MLG_DOCUMENTS, Clock
from tests.integration.projections.helpers import PARTITIONS, SETTINGS, wait_caught_up

STATION, TOWNSHIP, COUNTY, CITY = "530102001001", "530102001", "530102", "530100"
OTHER_STATION = "530102001002"
CLERK, TOWN, COUNTY_A = f"clerk.{STATION}.a", f"officer.{TOWNSHIP}.a", f"officer.{COUNTY}.a"
OTHER_CLERK = f"clerk.{OTHER_STATION}.a"


@pytest.fixture
async def cases(database: Db, ref: Reference) -> AsyncIterator[CasesService]:
    svc = await cases_bootstrap(SETTINGS, database.service_dsn, ref=ref, clock=Clock())
    yield svc
    await svc.close()


@pytest.fixture
async def projections(database: Db, ref: Reference) -> AsyncIterator[ProjectionsService]:
    svc = await bootstrap(SETTINGS, database.service_dsn, ref=ref, max_wait_s=10)
    yield svc
    await svc.close()


@pytest.fixture
async def http(projections: ProjectionsService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(projections))
    async with httpx.AsyncClient(transport=transport, base_url="http://projections") as client:
        yield client


def token(user_id: str, ref: Reference) -> dict[str, str]:
    member = ref.staff.member(user_id)
    principal = Principal(user_id=user_id, role=str(member.role), unit=member.unit)
    return {"Authorization": f"Bearer {mint_token(principal, SETTINGS)}"}


def actor(user_id: str, ref: Reference) -> Actor:
    member = ref.staff.member(user_id)
    return Actor(user_id=user_id, role=member.role, unit=member.unit)


async def journey(svc: CasesService, ref: Reference) -> tuple[uuid.UUID, uuid.UUID, int]:
    """Case A: community → township → back (return) → township → county, decided, closed.
    Case B: received and accepted at another station of the same township."""
    a, b = uuid.uuid4(), uuid.uuid4()
    missing = "income_certificate"
    last = 0

    async def do(command: Any) -> None:
        nonlocal last
        last = (await svc.commands.handle(command, command_id=uuid.uuid4())).position

    for case_id, station, clerk, docs in (
        (a, STATION, CLERK, [d for d in MLG_DOCUMENTS if d != missing]),
        (b, OTHER_STATION, OTHER_CLERK, MLG_DOCUMENTS),
    ):
        await do(SubmitCase(
            case_id=case_id, at=svc.clock(), actor=actor(clerk, ref),
            tracking_no=f"KM-2026-{case_id.hex[:8]}", service_code="minimum_living_guarantee",
            visit_id=uuid.uuid4(), station=station,
            applicant=EncryptedApplicant(subject_id="subject-42", id_hash="hmac:secret",
                                         encrypted={"name": "ZW5jcnlwdGVk"}),
            documents=tuple(docs)))
        await do(AcceptCase(case_id=case_id, at=svc.clock(), actor=actor(clerk, ref)))
    steps = [
        HandOffCase(case_id=a, at=svc.clock(), actor=actor(CLERK, ref)),
        ReceiveHandoff(case_id=a, at=svc.clock(), actor=actor(TOWN, ref)),
        ReturnCase(case_id=a, at=svc.clock(), actor=actor(TOWN, ref), reasons=("缺少收入证明",),
                   documents=(missing,)),
        RequestDocuments(case_id=a, at=svc.clock(), actor=actor(CLERK, ref)),
        SupplyDocuments(case_id=a, at=svc.clock(), actor=actor(CLERK, ref),
                        documents=(missing,)),
        HandOffCase(case_id=a, at=svc.clock(), actor=actor(CLERK, ref)),
        ReceiveHandoff(case_id=a, at=svc.clock(), actor=actor(TOWN, ref)),
        HandOffCase(case_id=a, at=svc.clock(), actor=actor(TOWN, ref)),
        ReceiveHandoff(case_id=a, at=svc.clock(), actor=actor(COUNTY_A, ref)),
        DecideCase(case_id=a, at=svc.clock(), actor=actor(COUNTY_A, ref),
                   outcome=Outcome.APPROVED, basis="《最低生活保障审核确认办法》"),
        CloseCase(case_id=a, at=svc.clock(), actor=actor(COUNTY_A, ref)),
    ]
    for command in steps:
        await do(command)
    return a, b, last


@contextlib.asynccontextmanager
async def relay_and_worker(store: PostgresEventStore, pool: asyncpg.Pool, bootstrap_: str,
                           ref: Reference) -> AsyncIterator[None]:
    from services.projections.projectors import UnitPaths

    topic = f"case.events.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap_, {topic: PARTITIONS})
    relay = Relay(store, RelayConfig(bootstrap_servers=bootstrap_, topic=topic,
                                     partitions=PARTITIONS, poll_interval_s=0.05,
                                     probe_interval_s=1.0, request_timeout_ms=3000))
    stop = asyncio.Event()
    relaying = asyncio.create_task(relay.run(stop))
    worker = build_worker(SETTINGS, pool, UnitPaths(ref.org), bootstrap_servers=bootstrap_,
                          topic=topic, group=f"proj-{uuid.uuid4().hex[:8]}",
                          batch_size=200, max_wait_s=0.05, partitions=PARTITIONS)
    try:
        async with running(worker, pool):
            yield
    finally:
        stop.set()
        await asyncio.wait_for(relaying, 20)


async def get(http: httpx.AsyncClient, path: str, user: str | None, ref: Reference,
              status: int = 200, **params: Any) -> dict[str, Any]:
    headers = token(user, ref) if user else {}
    response = await http.get(path, params=params, headers=headers)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_journey_seen_from_every_level(
    cases: CasesService, projections: ProjectionsService, http: httpx.AsyncClient,
    kafka_bootstrap: str, ref: Reference,
) -> None:
    assert isinstance(cases.store, PostgresEventStore)
    a, b, last = await journey(cases, ref)
    async with relay_and_worker(cases.store, projections.pool, kafka_bootstrap, ref):
        # read-your-writes: the query waits until the last command's position is applied
        first = await get(http, "/v1/projections/cases", "supervisor.530100.a", ref,
                          min_position=last)
        assert first["projection"]["position"] >= last
        await wait_caught_up(projections.pool)

    views = {}
    for user, unit in (("clerk.530102001001.a", STATION), ("supervisor.530102001", TOWNSHIP),
                       ("supervisor.530102", COUNTY), ("supervisor.530100.a", CITY)):
        listed = await get(http, "/v1/projections/cases", user, ref, unit=unit)
        counted = await get(http, f"/v1/projections/units/{unit}/counts", user, ref)
        views[unit] = ({c["case_id"] for c in listed["items"]}, counted["subtree"],
                       counted["own"])
        assert listed["total"] == len(listed["items"])
        assert int(listed["projection"]["position"]) >= last
    a_s, b_s = str(a), str(b)
    mlg = "minimum_living_guarantee"
    # A is closed at the county; B waits, accepted, at the other station of the township
    assert views[STATION] == (set(), {}, {})
    assert views[TOWNSHIP] == ({b_s}, {"accepted": {mlg: 1}}, {})
    assert views[COUNTY] == ({a_s, b_s}, {"accepted": {mlg: 1}, "closed": {mlg: 1}},
                             {"closed": {mlg: 1}})
    assert views[CITY] == ({a_s, b_s}, {"accepted": {mlg: 1}, "closed": {mlg: 1}}, {})
    queue = await get(http, f"/v1/projections/units/{OTHER_STATION}/queue",
                      "supervisor.530102001", ref)
    assert [c["case_id"] for c in queue["items"]] == [b_s]
    assert queue["items"][0]["owner"] == OTHER_CLERK

    # where has case A been: every move names both units; the return is there
    timeline = await get(http, f"/v1/projections/cases/{a}/timeline", "supervisor.530102",
                         ref)
    moves = [(s["type"], s["from_unit"], s["to_unit"], s["actor_id"]) for s in
             timeline["steps"] if s["from_unit"]]
    assert moves == [("CaseHandedOff", STATION, TOWNSHIP, CLERK),
                     ("CaseReturned", TOWNSHIP, STATION, TOWN),
                     ("CaseHandedOff", STATION, TOWNSHIP, CLERK),
                     ("CaseHandedOff", TOWNSHIP, COUNTY, TOWN)]
    delays = await get(http, "/v1/projections/handoffs", "supervisor.530102", ref)
    assert {(d["from_level"], d["to_level"], d["moves"], d["waiting"])
            for d in delays["items"]} == {("community", "township", 2, 0),
                                          ("township", "county", 1, 0)}
    sla = await get(http, "/v1/projections/sla", "supervisor.530102", ref,
                    group_by=["level"])
    assert {s["level"]: s["handled"] for s in sla["items"]} == {
        "community": 1, "township": 1, "county": 1}
    assert all(s["on_time_rate"] == 1.0 for s in sla["items"])
    # a station's own view of the same statistics (its unit is the station itself)
    station_sla = await get(http, "/v1/projections/sla", "auditor.530100.a", ref,
                            unit=STATION, group_by=["level"])
    assert {s["level"]: s["handled"] for s in station_sla["items"]} == {"community": 1}
    station_moves = await get(http, "/v1/projections/handoffs", "auditor.530100.a", ref,
                              unit=STATION)
    assert {(d["from_level"], d["to_level"], d["moves"]) for d in station_moves["items"]} == {
        ("community", "township", 2)}

    # jurisdiction: another township is forbidden; the auditor reads everything
    await get(http, "/v1/projections/cases", "supervisor.530102002", ref, status=403,
              unit=TOWNSHIP)
    await get(http, f"/v1/projections/units/{TOWNSHIP}/counts", "supervisor.530102002", ref,
              status=403)
    await get(http, f"/v1/projections/cases/{b}/timeline", "supervisor.530102002", ref,
              status=403)
    refused = await get(http, f"/v1/projections/cases/{b}", "supervisor.530102002", ref,
                        status=403)
    assert TOWNSHIP not in json.dumps(refused)  # nor where it is held: that is case data too
    audited = await get(http, "/v1/projections/cases", "auditor.530100.a", ref)
    assert {c["case_id"] for c in audited["items"]} == {a_s, b_s}

    # the public status: no login, nothing personal
    response = await http.get(f"/v1/public/status/KM-2026-{a.hex[:8]}")
    assert response.status_code == 200
    text = response.text
    status = response.json()["case"]
    assert status["status"] == "closed" and status["outcome"] == "approved"
    assert [s["type"] for s in status["steps"]][:2] == ["CaseSubmitted", "CaseAccepted"]
    for secret in ("subject-42", "hmac:secret", "ZW5jcnlwdGVk", CLERK, TOWN, COUNTY_A,
                   "actor", "owner", "applicant", "case_id", "缺少收入证明"):
        assert secret not in text, secret
    assert (await http.get("/v1/public/status/nope")).status_code == 404

    metrics = (await http.get("/metrics")).text
    assert "yizhan_projection_lag_events 0" in metrics
    assert "yizhan_projection_parked_events 0" in metrics
