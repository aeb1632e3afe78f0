"""Test harness: real PostgreSQL and a real Kafka-protocol broker.

When ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` are unset, the session starts the embedded
servers itself (under a temporary folder) and stops them at the end, also when interrupted: the
children die with this process. Each test that needs a database gets its own, cloned from a
migrated template, so tests never see each other's events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.eventstore.migrate import ensure_service_role, migrate
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.logging import configure_logging
from shared.reference import Reference, load_reference
from shared.runtime import EmbeddedKafka, EmbeddedPostgres

SERVICE_ROLE = "yizhan_test_service"
configure_logging("console", os.environ.get("YIZHAN_TEST_LOG_LEVEL", "warning"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tier markers follow the folder: tests/unit → unit, tests/integration → integration, …"""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in ("unit", "contract", "integration", "e2e"):
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


def _with_db(url: str, database: str, user: str | None = None) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{user}@{netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, parts.fragment))


def run_sync(coro_fn: Any) -> Any:
    """Run a coroutine function to completion from sync code, even inside a running loop
    (session fixtures are first requested from inside async tests)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro_fn()).result()


@dataclass
class PgCluster:
    admin_url: str  # a superuser (or owner with CREATEDB) on the maintenance database
    template: str = ""

    def url(self, database: str, user: str | None = None) -> str:
        return _with_db(self.admin_url, database, user)


@dataclass
class Db:
    name: str
    admin_dsn: str
    service_dsn: str


@pytest.fixture(scope="session")
def ref() -> Reference:
    """The reference data shipped with the repository (data/kunming), loaded once."""
    return load_reference()


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="yizhan-test-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def pg_cluster(tmp_root: Path) -> Iterator[PgCluster]:
    given = os.environ.get("DATABASE_ADMIN_URL") or os.environ.get("DATABASE_URL")
    if given:
        cluster = PgCluster(given)
        server = None
    else:
        server = EmbeddedPostgres(tmp_root / "postgres", durable=False).start()
        cluster = PgCluster(server.admin_url)
    cluster.template = f"yizhan_template_{os.getpid()}"

    async def prepare() -> None:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{cluster.template}"')
            await conn.execute(f'CREATE DATABASE "{cluster.template}"')
        finally:
            await conn.close()
        await migrate(cluster.url(cluster.template))
        await ensure_service_role(cluster.url(cluster.template), SERVICE_ROLE)

    run_sync(prepare)
    yield cluster

    async def drop_template() -> None:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{cluster.template}" WITH (FORCE)')
        finally:
            await conn.close()

    if server is None:
        run_sync(drop_template)
    else:
        server.stop()


@contextlib.asynccontextmanager
async def fresh_database(cluster: PgCluster) -> AsyncIterator[Db]:
    """Clone the migrated template into a new database; drop it afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(cluster.admin_url)
    try:
        await conn.execute(
            f'CREATE DATABASE "{name}" TEMPLATE "{cluster.template}" STRATEGY FILE_COPY'
        )
    finally:
        await conn.close()
    try:
        yield Db(name, cluster.url(name), cluster.url(name, SERVICE_ROLE))
    finally:
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def postgres_store(
    cluster: PgCluster, *, optimistic: bool = True, writers: int = 1
) -> AsyncIterator[PostgresEventStore]:
    """A PostgreSQL event store on a fresh database, as the service role."""
    async with fresh_database(cluster) as db:
        p = await create_pool(db.service_dsn, min_size=1, max_size=20)
        store = PostgresEventStore(p, optimistic=optimistic, writers=writers)
        try:
            yield store
        finally:
            await store.close()
            await p.close()


@pytest.fixture
async def database(pg_cluster: PgCluster) -> AsyncIterator[Db]:
    """A fresh, migrated database for this test (admin and service-role DSNs)."""
    async with fresh_database(pg_cluster) as db:
        yield db


@pytest.fixture
async def pool(database: Db) -> AsyncIterator[asyncpg.Pool]:
    """A pool connected as the service role (INSERT/SELECT only on events)."""
    p = await create_pool(database.service_dsn, min_size=1, max_size=20)
    yield p
    await p.close()


@pytest.fixture
async def admin_pool(database: Db) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database.admin_dsn, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
async def pg_store(pool: asyncpg.Pool) -> AsyncIterator[PostgresEventStore]:
    store = PostgresEventStore(pool)
    yield store
    await store.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_root: Path) -> Iterator[str]:
    """A shared broker for tests that do not restart it (use unique topic names)."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    broker = EmbeddedKafka(tmp_root / "kafka").start()
    yield broker.bootstrap_servers
    broker.stop()


@pytest.fixture
def own_broker(tmp_root: Path) -> Iterator[EmbeddedKafka]:
    """A broker of this test's own, which the test may kill and restart (embedded only)."""
    broker = EmbeddedKafka(tmp_root / f"kafka-{uuid.uuid4().hex[:8]}").start()
    yield broker
    broker.stop()
