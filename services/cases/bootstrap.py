"""Composition root of the cases service: pool, store, reference data, clock, handler, app."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from fastapi import FastAPI

from services.cases.api import MAX_BODY_BYTES, operations, router
from services.cases.fastpath import CommandFastPath
from services.cases.handlers import CaseCommands
from services.cases.metrics import SlaTicks
from shared.eventstore.port import EventStore
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.reference import Reference, load_reference
from shared.service import ReadinessCheck, create_app, database_ready
from shared.settings import Settings
from shared.streaming import StreamStats

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
    sla_ticks: SlaTicks = field(default_factory=SlaTicks)
    sla_agent: StreamStats | None = None
    """The SLA agent's counters, once ``services.cases.agents.build_faust`` has made it."""

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


def build_app(service: CasesService, *, fast_path: bool = True,
              readiness: Sequence[ReadinessCheck] = ()) -> FastAPI:
    """The HTTP app; ``fast_path`` serves well-formed commands without FastAPI's per-request
    machinery (services/cases/fastpath.py; False: everything through FastAPI); ``readiness``:
    checks for ``/readyz`` beside the database's (the broker, the SLA agent's consumer)."""
    return create_app(
        "Yizhan cases", [router, operations],
        state={"settings": service.settings, "case_commands": service.commands,
               "clock": service.clock, "service": service},
        readiness=[*([database_ready(service.pool)] if service.pool is not None else []),
                   *readiness],
        middleware=[CommandFastPath] if fast_path else [], max_body=MAX_BODY_BYTES,
        description="Officers' commands on cases: accept, request documents, hand off, "
                    "return, decide, close. Every response carries the case's new version "
                    "(ETag) and the global log position.",
    )
