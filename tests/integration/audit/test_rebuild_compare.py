"""rebuild-compare: the live read models (built by the live path's own writer, batch by
batch) match a rebuild from the log; a row edited by hand is reported."""

from __future__ import annotations

import random

import asyncpg

from services.audit_cli import ProjectionReadModels, describe_compare
from services.projections.bootstrap import prepare_tables
from services.projections.progress import advance_watermark
from services.projections.projectors import RawEvent, UnitPaths
from services.projections.writer import RAW_COLUMNS, apply_batch
from shared.audit import Requester, rebuild_compare
from shared.audit.access import record_read
from shared.contracts.audit import AuditAction
from shared.eventstore.postgres import PostgresEventStore
from tests.conftest import Db
from tests.integration.projections.helpers import load_simulated
from tests.unit.audit.histories import REF

PATHS = UnitPaths(REF.org)
AUDITOR = Requester("auditor.530100.a", "auditor", "530100", "quarterly review")


async def apply_live(pool: asyncpg.Pool, head: int) -> None:
    """What the live path does, without Kafka: batches of various sizes into the active set,
    then the watermark."""
    schema = await prepare_tables(pool)
    rng, after = random.Random(3), 0
    async with pool.acquire() as conn:
        while after < head:
            upto = min(head, after + rng.randint(1, 200))
            rows = [RawEvent(*r) for r in await conn.fetch(
                f"SELECT {RAW_COLUMNS} FROM events WHERE position > $1 AND position <= $2 "
                "ORDER BY position", after, upto)]
            async with conn.transaction():
                await apply_batch(conn, schema, rows, PATHS)
            after = upto
        await advance_watermark(conn)


async def test_rebuild_compare_finds_no_difference_then_the_edited_row(
    database: Db, admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    head = await load_simulated(admin_pool, 300)
    store = PostgresEventStore(pool)
    await record_read(store, AUDITOR, AuditAction.HISTORY, unit="530102")  # a non-case stream
    await store.close()
    await apply_live(pool, head + 1)
    models = ProjectionReadModels(database.admin_dsn, PATHS)

    report = await rebuild_compare(admin_pool, models)
    assert report.ok, describe_compare(report)
    assert report.position == head + 1
    assert all(t.live_rows > 0 for t in report.tables if t.table != "sla_breaches")

    schema = report.live_schema
    case_id = await admin_pool.fetchval(f"SELECT case_id FROM {schema}.case_summary LIMIT 1")
    await admin_pool.execute(f"UPDATE {schema}.case_summary SET owner = 'edited.by.hand' "
                             "WHERE case_id = $1", case_id)
    report = await rebuild_compare(admin_pool, models)
    assert [t.table for t in report.differences] == ["case_summary"]
    (diff,) = report.differences
    assert len(diff.only_live) == len(diff.only_rebuilt) == 1
    assert "edited.by.hand" in diff.only_live[0] and str(case_id) in diff.only_rebuilt[0]
    assert "DIFFERENT: case_summary" in describe_compare(report)
    leftovers = await admin_pool.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'audit_scratch_%'")
    assert leftovers == 0
