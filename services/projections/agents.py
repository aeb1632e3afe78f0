"""Faust entrypoint of the projections service: one idempotent agent on ``case.events``
(``shared.streaming``) whose apply is ``LiveProjection.apply``. Nothing else imports Faust."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import faust

from services.projections.live import CONSUMER, LiveProjection, keep_watermark_moving
from services.projections.projectors import UnitPaths
from shared.consumer import IdempotentConsumer
from shared.settings import Settings
from shared.streaming import EventAgent, idempotent_agent, make_app, running_app

GROUP = "yizhan-projections"


@dataclass
class Worker:
    app: faust.App
    agent: EventAgent
    live: LiveProjection


def build_worker(
    settings: Settings, pool: asyncpg.Pool, paths: UnitPaths, *, bootstrap_servers: str,
    topic: str | None = None, group: str = GROUP, batch_size: int = 500,
    max_wait_s: float = 0.01, partitions: int | None = None,
) -> Worker:
    """A Faust app with the projections agent (not started)."""
    app = make_app(group, settings=settings, bootstrap_servers=bootstrap_servers,
                   partitions=partitions)
    live = LiveProjection(paths)
    agent = idempotent_agent(
        app, topic=topic or settings.topic_case_events,
        consumer=IdempotentConsumer(pool, CONSUMER), apply=live.apply,
        batch_size=batch_size, max_wait_s=max_wait_s, name="projections",
    )
    return Worker(app, agent, live)


@contextlib.asynccontextmanager
async def running(worker: Worker, pool: asyncpg.Pool) -> AsyncIterator[Worker]:
    """Run the agent and the watermark task until the block ends."""
    stop = asyncio.Event()
    async with running_app(worker.app):
        ticker = asyncio.create_task(keep_watermark_moving(pool, stop), name="watermark")
        try:
            yield worker
        finally:
            stop.set()
            await ticker
