"""The case read's lean HTTP path (services/projections/fastpath.py) answers exactly as FastAPI
does: the same script of reads — in and out of jurisdiction, unknown cases, read-your-writes
reached and not, every kind of bad query and token — against an app with it and one without,
byte for byte, on read models built from a real journey."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.cases.bootstrap import CasesService
from services.projections.bootstrap import ProjectionsService, bootstrap, build_app
from services.projections.cli import rebuild
from services.projections.fastpath import CaseReadFastPath
from shared.reference import Reference
from tests.conftest import Db
from tests.integration.projections.helpers import SETTINGS
from tests.integration.projections.test_live_and_api import (
    CLERK,
    COUNTY_A,
    OTHER_CLERK,
    TOWN,
    cases,
    journey,
    token,
)

__all__ = ["cases"]  # the fixture, imported for its use here
AUDITOR = "auditor.530100.a"


@pytest.fixture
async def projections(database: Db, ref: Reference) -> AsyncIterator[ProjectionsService]:
    svc = await bootstrap(SETTINGS, database.service_dsn, ref=ref, max_wait_s=0.3)
    yield svc
    await svc.close()


async def test_the_fast_path_answers_byte_for_byte_as_fastapi(
    cases: CasesService, projections: ProjectionsService, database: Db, ref: Reference,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[bool] = []
    serve = CaseReadFastPath._served

    async def counting(self: CaseReadFastPath, *args: Any) -> bool:
        served.append(await serve(self, *args))
        return served[-1]

    monkeypatch.setattr(CaseReadFastPath, "_served", counting)
    a, b, last = await journey(cases, ref)
    await rebuild(SETTINGS, database.service_dsn, ref=ref, progress=None)
    unknown = uuid.UUID(int=7)
    bearer = {user: token(user, ref) for user in (CLERK, TOWN, COUNTY_A, OTHER_CLERK, AUDITOR)}
    script: list[tuple[str, dict[str, str]]] = [
        (f"{a}", bearer[COUNTY_A]),
        (f"{a}?min_position={last}", bearer[COUNTY_A]),
        (f"{a}?min_position=0", bearer[AUDITOR]),
        (f"{str(a).upper()}", bearer[CLERK]),
        (f"{b}", bearer[TOWN]),
        (f"{a}", bearer[OTHER_CLERK]),  # another station: 403
        (f"{unknown}", bearer[COUNTY_A]),  # 404
        (f"{a}?min_position={last + 1000}", bearer[COUNTY_A]),  # not reached: 504
        (f"{a}?min_position=-1", bearer[COUNTY_A]),  # FastAPI's 422s from here on
        (f"{a}?min_position=abc", bearer[COUNTY_A]),
        (f"{a}?min_position=01", bearer[COUNTY_A]),
        (f"{a}?min_position={last}&min_position=1", bearer[COUNTY_A]),
        (f"{a}?unit=530102", bearer[COUNTY_A]),
        (str(a)[:-1], bearer[COUNTY_A]),
        (f"{a}", {}),  # 401s
        (f"{a}", {"Authorization": "Bearer not-a-token"}),
        (f"{a}", {"Authorization": "Basic " + bearer[COUNTY_A]["Authorization"][7:]}),
        (f"{a}", {"Authorization": "bearer  " + bearer[COUNTY_A]["Authorization"][7:]}),
    ]

    async def run(fast: bool) -> list[tuple[int, list[tuple[str, str]], bytes]]:
        app = build_app(projections, fast_path=fast)
        answers = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://projections") as client:
            for i, (path, headers) in enumerate(script):
                r = await client.get(f"/v1/projections/cases/{path}",
                                     headers={**headers, "X-Correlation-ID": f"cid-{i}"})
                answers.append((r.status_code, list(r.headers.multi_items()), r.content))
        return answers

    slow = await run(fast=False)
    fast = await run(fast=True)
    assert [status for status, _, _ in slow] == [
        200, 200, 200, 200, 200, 403, 404, 504, 422, 422, 200, 200, 200, 422, 401, 401, 401,
        200]
    # it served the well-formed reads itself and handed on the rest
    assert served == [True] * 8 + [False] * 9 + [True]
    for i, (mine, theirs) in enumerate(zip(fast, slow, strict=True)):
        assert mine == theirs, f"step {i}: {script[i][0]}\n{mine[2]!r}\n{theirs[2]!r}"


async def test_the_case_read_follows_every_swap(
    cases: CasesService, projections: ProjectionsService, database: Db, ref: Reference,
) -> None:
    """The read after a command takes the case and the progress in one query on the set last
    seen active: after each swap it must find the set changed and read the new one."""
    a, _, last = await journey(cases, ref)
    reader = projections.reader
    answers = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(projections)),
                                 base_url="http://projections") as client:
        for _ in range(3):
            await rebuild(SETTINGS, database.service_dsn, ref=ref, progress=None)  # a swap
            for _ in range(2):  # the first after a swap finds it, the second knows it
                r = await client.get(f"/v1/projections/cases/{a}?min_position={last}",
                                     headers=token(COUNTY_A, ref))
                assert r.status_code == 200, r.text
                answers.append((r.json()["projection"]["table_set"], r.json()["case"]))
            assert reader._active_seen == answers[-1][0]
    sets = [table_set for table_set, _ in answers]
    assert sets[0] == sets[1] != sets[2] == sets[3] != sets[4] == sets[5]
    assert all(case == answers[0][1] for _, case in answers)
