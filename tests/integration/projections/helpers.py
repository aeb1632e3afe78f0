"""Shared pieces of the projections integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from bench.projections import chained, generate
from services.projections.progress import advance_watermark, read_progress
from services.projections.schema import digest
from shared.settings import Settings

SETTINGS = Settings()
PARTITIONS = 3


async def wait_for(condition: Callable[[], object], timeout: float = 30.0,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.05)


async def wait_caught_up(pool: asyncpg.Pool, timeout: float = 30.0) -> int:
    """Until the watermark reaches the head of the log."""
    deadline = time.monotonic() + timeout
    while True:
        async with pool.acquire() as conn:
            await advance_watermark(conn)
            progress = await read_progress(conn)
        if progress.position == progress.head:
            return progress.position
        if time.monotonic() > deadline:
            raise AssertionError(f"projection at {progress.position} of {progress.head}")
        await asyncio.sleep(0.1)


async def load_simulated(admin_pool: asyncpg.Pool, cases: int, seed: int = 5) -> int:
    """Bulk-load simulated cases (real domain events, hash chain and all); return the head."""
    rows = list(chained(generate(cases, seed, 1), datetime(2026, 1, 5, tzinfo=UTC)))
    async with admin_pool.acquire() as conn:
        await conn.copy_records_to_table(
            "events", records=rows,
            columns=("position", "stream_id", "version", "event_id", "type", "schema_version",
                     "data", "metadata", "occurred_at", "recorded_at", "prev_hash", "hash"))
    return len(rows)


async def digests(pool: asyncpg.Pool, schema: str) -> dict[str, str]:
    async with pool.acquire() as conn:
        return await digest(conn, schema)
