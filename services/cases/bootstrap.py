"""Composition root of the cases service: pool, store, reference data, clock, handler, app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from fastapi import FastAPI

from services.cases.api import router
from services.cases.fastpath import CommandFastPath
from services.cases.handlers import CaseCommands
from shared.eventstore.port import EventStore
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.reference import Reference, load_reference
from shared.service import create_app, database_ready
from shared.settings import Settings

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class CasesService:
    settings: Settings
    store: EventStore
    ref: Reference
    commands: CaseCommands
    clock: Clock
    pool: asyncpg.Pool | None = None

    async def close(self) -> None:
        if isinstance(self.store, PostgresEventStore):
            await self.store.close()
        if self.pool is not None:
            await self.pool.close()


async def bootstrap(
    settings: Settings, service_url: str, *, ref: Reference | None = None,
    clock: Clock = system_clock,
) -> CasesService:
    pool = await create_pool(service_url, min_size=settings.pool_min,
                             max_size=settings.db_pool_max)
    store = PostgresEventStore(pool, max_batch=settings.append_max_batch,
                               writers=settings.append_writers)
    reference = ref or load_reference()
    return CasesService(settings, store, reference, CaseCommands(store, reference), clock, pool)


def build_app(service: CasesService, *, fast_path: bool = True) -> FastAPI:
    """The HTTP app; ``fast_path`` serves well-formed commands without FastAPI's per-request
    machinery (services/cases/fastpath.py; False: everything through FastAPI)."""
    return create_app(
        "Yizhan cases", [router],
        state={"settings": service.settings, "case_commands": service.commands,
               "clock": service.clock},
        readiness=[database_ready(service.pool)] if service.pool is not None else [],
        middleware=[CommandFastPath] if fast_path else [],
        description="Officers' commands on cases: accept, request documents, hand off, "
                    "return, decide, close. Every response carries the case's new version "
                    "(ETag) and the global log position.",
    )
