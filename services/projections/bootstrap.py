"""Composition root of the projections service: pool, org tree, table sets, reader, app."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from fastapi import FastAPI

from services.projections.api import MAX_BODY_BYTES, Reader, operations, public, router
from services.projections.audit_api import audit_router
from services.projections.fastpath import CaseReadFastPath
from services.projections.live import LiveStats
from services.projections.projectors import UnitPaths
from services.projections.rebuild import REBUILD_LOCK, RebuildReport, rebuild
from services.projections.schema import LAYOUT, active_schema, ensure_tables, outdated
from shared.eventstore.postgres import create_pool
from shared.logging import get_logger
from shared.ratelimit import ClientRateLimit
from shared.reference import Reference, load_reference
from shared.service import ReadinessCheck, create_app, database_ready
from shared.settings import Settings

log = get_logger(__name__)


@dataclass
class ProjectionsService:
    settings: Settings
    pool: asyncpg.Pool
    ref: Reference
    paths: UnitPaths
    reader: Reader

    async def close(self) -> None:
        await self.pool.close()


async def upgrade_tables(pool: asyncpg.Pool, service_url: str, paths: UnitPaths, *,
                         processes: int = 1) -> RebuildReport | None:
    """Rebuild the read models from the log and swap them in if the active set was made by
    code of another table layout (``schema.LAYOUT``): its tables lack a column or key this code
    writes, and its rows what only the log holds. The service serves once it is done. Under
    the rebuild's lock (``REBUILD_LOCK``), on a pool of its own (pool connections keep their
    session, and with it an advisory lock; the rebuild needs several connections): another
    process starting meanwhile waits, then finds the set current; a ``yizhan projections
    rebuild`` started meanwhile waits, then rebuilds. An event the projectors do not know
    stops it, and the start, as it stops any rebuild: the old set cannot take this code's
    writes. ``processes``: the rebuild's (``Settings.rebuild_processes``)."""
    async with pool.acquire() as conn:
        if not await outdated(conn):
            return None
    own = await create_pool(service_url, min_size=1, max_size=8)
    try:
        async with own.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", REBUILD_LOCK)
            try:
                if not await outdated(conn):
                    return None
                log.warning("projections.layout_outdated", layout=LAYOUT, action="rebuild")
                return await rebuild(own, paths, lock_held=True, processes=processes,
                                     dsn=service_url)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", REBUILD_LOCK)
    finally:
        await own.close()


async def prepare_tables(pool: asyncpg.Pool) -> str:
    """Make sure the active table set exists (first start after the migration)."""
    async with pool.acquire() as conn:
        schema = await active_schema(conn)
        await ensure_tables(conn, schema)
    return schema


async def bootstrap(settings: Settings, service_url: str, *, ref: Reference | None = None,
                    max_wait_s: float = 5.0, live: LiveStats | None = None,
                    ) -> ProjectionsService:
    pool = await create_pool(service_url, min_size=settings.pool_min,
                             max_size=settings.db_pool_max)
    reference = ref or load_reference()
    paths = UnitPaths(reference.org)
    await upgrade_tables(pool, service_url, paths, processes=settings.rebuild_processes)
    await prepare_tables(pool)
    reader = Reader(pool, reference.org, reference.staff, reference.catalogue,
                    max_wait_s=max_wait_s, live=live)
    return ProjectionsService(settings, pool, reference, paths, reader)


def public_limit(settings: Settings) -> ClientRateLimit | None:
    """The public status's limit per client, or None where it is off."""
    if settings.public_status_per_minute == 0:
        return None
    return ClientRateLimit(settings.public_status_per_minute, settings.public_status_burst)


def build_app(service: ProjectionsService, *, fast_path: bool = True,
              readiness: Sequence[ReadinessCheck] = ()) -> FastAPI:
    """``fast_path``: the lean path for the case read (``services.projections.fastpath``);
    ``readiness``: checks for ``/readyz`` beside the database's (the broker, the agent)."""
    return create_app(
        "Yizhan projections", [router, public, operations, audit_router],
        state={"settings": service.settings, "projections": service.reader,
               "public_limit": public_limit(service.settings)},
        readiness=[database_ready(service.pool), *readiness],
        middleware=[CaseReadFastPath] if fast_path else [], max_body=MAX_BODY_BYTES,
        description="Read models for every level: queues, counts by status and service for "
                    "each unit and its subtree, overdue cases, SLA statistics, hand-off "
                    "delays, timelines, and the public status by tracking number. Every answer "
                    "states the projection's position and lag; `min_position` waits for it.",
    )
