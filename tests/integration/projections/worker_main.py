"""A projections worker as its own process, for the kill test:
``python -m tests.integration.projections.worker_main DSN BOOTSTRAP TOPIC GROUP BATCH``."""

from __future__ import annotations

import asyncio
import sys

from services.projections.agents import build_worker, running
from services.projections.bootstrap import prepare_tables
from services.projections.projectors import UnitPaths
from shared.eventstore.postgres import create_pool
from shared.logging import configure_logging
from shared.reference import load_reference
from shared.settings import Settings


async def main(dsn: str, bootstrap: str, topic: str, group: str, batch: int) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=4)
    await prepare_tables(pool)
    worker = build_worker(Settings(), pool, UnitPaths(load_reference().org),
                          bootstrap_servers=bootstrap, topic=topic, group=group,
                          batch_size=batch, max_wait_s=0.05, partitions=3)
    async with running(worker, pool):
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    configure_logging("console", "warning")
    dsn, bootstrap, topic, group, batch = sys.argv[1:6]
    asyncio.run(main(dsn, bootstrap, topic, group, int(batch)))
