"""The projections service on the test database and an HTTP client of its app (in process),
for the tests of its API; a module needing another wait bound defines its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.projections.bootstrap import ProjectionsService, bootstrap, build_app
from shared.reference import Reference
from tests.conftest import Db
from tests.integration.projections.helpers import SETTINGS


@pytest.fixture
async def projections(database: Db, ref: Reference) -> AsyncIterator[ProjectionsService]:
    svc = await bootstrap(SETTINGS, database.service_dsn, ref=ref, max_wait_s=1)
    yield svc
    await svc.close()


@pytest.fixture
async def http(projections: ProjectionsService) -> AsyncIterator[httpx.AsyncClient]:
    # server errors as answers (a 500 is what some tests look for), not raised
    transport = httpx.ASGITransport(app=build_app(projections), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://projections") as client:
        yield client
