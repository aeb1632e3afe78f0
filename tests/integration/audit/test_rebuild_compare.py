"""rebuild-compare: the live read models (built by the live path's own writer, batch by
batch) match a rebuild from the log; a row edited by hand is reported."""

from __future__ import annotations

import random

import asyncpg
import pytest

from services.audit_cli import ProjectionReadModels, describe_compare
from services.projections.bootstrap import prepare_tables
from services.projections.progress import advance_watermark
from services.projections.projectors import RawEvent, UnitPaths
from services.projections.writer import RAW_COLUMNS, apply_batch
from shared.audit import LiveMoving, Requester, rebuild_compare
from shared.audit.access import record_read
from shared.contracts.audit import AuditAction
from shared.eventstore.postgres import PostgresEventStore
from shared.settings import get_settings
from tests.conftest import Db
from tests.integration.audit.test_cli_mistakes import configured, yizhan  # noqa: F401
from tests.integration.projections.helpers import load_simulated
from tests.unit.audit.histories import REF

PATHS = UnitPaths(REF.org)
AUDITOR = Requester("auditor.530100.a", "auditor", "530100", "quarterly review")


async def apply_live(pool: asyncpg.Pool, head: int, *, advance: bool = True) -> None:
    """What the live path does, without Kafka: batches of various sizes into the active set,
    then (``advance``) the watermark."""
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
        if advance:
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


async def test_rebuild_compare_settles_a_watermark_left_behind(
    database: Db, admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    # The live path's watermark task moves only every 0.2 s: under load the tables almost
    # always hold events past it. The comparison advances it itself before each look; before,
    # it looked 25 times and gave up with a traceback.
    head = await load_simulated(admin_pool, 100)
    await apply_live(pool, head, advance=False)
    schema = await prepare_tables(pool)
    assert int(await admin_pool.fetchval(
        f"SELECT position FROM {schema}.progress WHERE name = 'watermark'")) < head
    report = await rebuild_compare(admin_pool, ProjectionReadModels(database.admin_dsn, PATHS))
    assert report.ok and report.position == head, describe_compare(report)


async def test_tables_never_exact_are_not_compared_and_say_why(
    database: Db, admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    head = await load_simulated(admin_pool, 20)
    await apply_live(pool, head)
    schema = await prepare_tables(pool)
    # a row past the log's head: no watermark can cover it, so no look finds the set exact
    await admin_pool.execute(f"UPDATE {schema}.case_summary SET position = $1 WHERE case_id ="
                             f" (SELECT case_id FROM {schema}.case_summary LIMIT 1)", head + 50)
    with pytest.raises(LiveMoving, match=r"past their watermark \(position \d+\) at each of "
                                         r"\d+ looks over 0.3 s"):
        await rebuild_compare(admin_pool, ProjectionReadModels(database.admin_dsn, PATHS),
                              within_s=0.3)
    assert await admin_pool.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'audit_scratch_%'") == 0


@pytest.mark.usefixtures("configured")
async def test_the_command_says_when_it_could_not_compare_with_exit_code_3(
    database: Db, admin_pool: asyncpg.Pool, pool: asyncpg.Pool,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as above, through `yizhan audit rebuild-compare` (it used to end in a traceback)
    monkeypatch.setenv("DATABASE_ADMIN_URL", database.admin_dsn)
    get_settings.cache_clear()
    head = await load_simulated(admin_pool, 20)
    await apply_live(pool, head)
    schema = await prepare_tables(pool)
    await admin_pool.execute(f"UPDATE {schema}.case_summary SET position = $1 WHERE case_id ="
                             f" (SELECT case_id FROM {schema}.case_summary LIMIT 1)", head + 50)
    code, out, err = await yizhan(capsys, "audit", "rebuild-compare", "--within", "0.2")
    assert (code, out) == (3, ""), out
    assert err.startswith("not compared: the live read models held events past their "
                          "watermark"), err

    await move_back(admin_pool, schema, head)
    code, out, _ = await yizhan(capsys, "audit", "rebuild-compare")
    assert code == 0 and out.rstrip().endswith("OK: no difference"), out


async def move_back(pool: asyncpg.Pool, schema: str, head: int) -> None:
    """Undo the row moved past the head (back to its case's last event)."""
    await pool.execute(
        f"UPDATE {schema}.case_summary c SET position = (SELECT max(position) FROM events e"
        f" WHERE e.stream_id = 'case-' || c.case_id) WHERE c.position > $1", head)
