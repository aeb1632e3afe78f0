"""Functions for the `yizhan` command (wired in services/cli.py):

    await serve(settings, service_url, bootstrap_servers, stop)   API + live agent + watermark
    await rebuild(settings, service_url)                           blue/green rebuild, progress
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from services.projections.agents import build_worker, running
from services.projections.bootstrap import bootstrap, build_app, prepare_tables
from services.projections.projectors import UnitPaths
from services.projections.rebuild import RebuildProgress, RebuildReport
from services.projections.rebuild import rebuild as rebuild_tables
from shared.eventstore.postgres import create_pool
from shared.kafka import ensure_topics, topic_specs
from shared.logging import get_logger
from shared.reference import Reference, load_reference
from shared.service import serve_http, tuned_gc
from shared.settings import Settings
from shared.streaming import agent_readiness, stop_on_crash

log = get_logger("yizhan.projections")


async def serve(
    settings: Settings, service_url: str, bootstrap_servers: str, stop: asyncio.Event, *,
    host: str = "127.0.0.1", port: int = 8003, ref: Reference | None = None,
) -> None:
    """Run the projections service until ``stop`` is set: the query API (uvicorn), the Faust
    agent applying ``case.events`` to the read models, and the watermark task."""
    await ensure_topics(bootstrap_servers, topic_specs(settings),
                        replication_factor=settings.topic_replication_factor)
    service = await bootstrap(settings, service_url, ref=ref)
    worker = build_worker(settings, service.pool, service.paths,
                          bootstrap_servers=bootstrap_servers)
    service.reader.live = worker.live.stats
    service.reader.envelopes_parked = lambda: worker.agent.stats.parked
    worker.agent.on_applied = service.reader.applied  # read-your-writes waiters wake at once
    try:
        with tuned_gc():  # after start-up: what is loaded now is frozen
            async with running(worker, service.pool), stop_on_crash(worker.app, stop):
                readiness = agent_readiness(
                    worker.app, "projections agent", lambda: worker.agent.stats.retrying_since,
                    bootstrap=bootstrap_servers, topics=[settings.topic_case_events])
                await serve_http(build_app(service, readiness=readiness), host, port, stop,
                                 name="projections")
    finally:
        await service.close()


def print_progress(p: RebuildProgress) -> None:
    """A one-line progress bar on stderr: done/total, events/s, ETA."""
    width = 30
    share = p.done / p.total if p.total else 1.0
    bar = "#" * int(share * width)
    sys.stderr.write(f"\r{p.phase} [{bar:<{width}}] {p.done:,}/{p.total:,} events "
                     f"{p.events_per_s:,.0f}/s ETA {p.eta_s:,.0f} s")
    sys.stderr.flush()


async def rebuild(
    settings: Settings, service_url: str, *, ref: Reference | None = None,
    progress: Callable[[RebuildProgress], None] | None = print_progress,
    batch_size: int = 5000, swap: bool = True, processes: int | None = None,
) -> RebuildReport:
    """Rebuild every read model from the event store into the inactive table set and swap it
    in, folding in ``processes`` processes (default: ``settings.rebuild_processes``). Fails
    (nothing swapped) on an event the projectors do not know."""
    pool = await create_pool(service_url, min_size=2, max_size=8)
    try:
        await prepare_tables(pool)
        paths = UnitPaths((ref or load_reference()).org)
        report = await rebuild_tables(
            pool, paths, batch_size=batch_size, progress=progress, swap=swap,
            processes=processes or settings.rebuild_processes, dsn=service_url)
    finally:
        await pool.close()
    if progress is print_progress:
        sys.stderr.write("\n")
    return report
