"""`yizhan status` on a real database: each part of the pipeline, where it stands, and
"stalled" only where work waited longer than allowed while the part did not move."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import asyncpg

from services.projections.bootstrap import prepare_tables
from services.status import read_status, render
from shared.contracts.envelope import NewEvent
from shared.eventstore.postgres import PostgresEventStore
from shared.relay import partition_for
from tests.conftest import Db

STALE = 0.2  # seconds; the parts below are made to wait a little longer than this


async def log_of(store: PostgresEventStore, events: int) -> int:
    result = None
    for i in range(events):
        result = await store.append(f"case-00000000-0000-0000-0000-{i:012d}", 0,
                                    [NewEvent("NoteAdded", {"text": "x"})])
    assert result is not None
    return result.position


def parts_by_name(status: object) -> dict[str, object]:
    return {p.name: p for p in status.parts}  # type: ignore[attr-defined]


async def test_a_part_that_work_waits_for_and_that_does_not_move_is_stalled(
    pool: asyncpg.Pool, admin_pool: asyncpg.Pool, pg_store: PostgresEventStore,
) -> None:
    active = await prepare_tables(pool)
    head = await log_of(pg_store, 3)
    await admin_pool.execute(
        "INSERT INTO relay_positions (relay, position, updated_at) VALUES "
        "('main', 1, now() - interval '1 hour'), ('idle', $1, now() - interval '1 hour')", head)
    await admin_pool.execute(
        "INSERT INTO consumer_positions (consumer, scope, position, updated_at) VALUES "
        "('cases.sla-due', 'case.events/0', $1, now() - interval '1 hour'), "
        "('stuck', 'case.events/0', 2, now() - interval '1 hour'), "
        "('stuck', 'case.events/1', 1, now() - interval '1 hour')", head)
    await asyncio.sleep(STALE * 2)  # the events after position 1 have waited longer than STALE

    async with pool.acquire() as conn:
        status = await read_status(conn, stale_after_s=STALE)
    parts = parts_by_name(status)
    assert status.head == head
    assert (parts["relay main"].behind, parts["relay main"].stalled) == (head - 1, True)
    assert (parts["relay idle"].behind, parts["relay idle"].stalled) == (0, False)  # idle
    assert parts["consumer cases.sla-due"].stalled is False
    stuck = parts["consumer stuck"]
    assert (stuck.position, stuck.behind, stuck.stalled) == (2, head - 2, True)
    assert parts["projections"].stalled is True  # nothing applied: the watermark is at 0
    assert parts["checkpoints"].stalled is False  # signed on a schedule: reported only
    assert [p.name for p in status.stalled] == ["relay main", "consumer stuck", "projections"]
    report = render(status)
    assert "relay main" in report and "STALLED" in report
    assert report.splitlines()[-1].startswith("stalled: relay main, consumer stuck")

    # the same parts with the work done, or moving: nothing stalled
    await admin_pool.execute("UPDATE relay_positions SET position = $1, updated_at = now()",
                             head)
    await admin_pool.execute("UPDATE consumer_positions SET updated_at = now()")
    await admin_pool.execute(
        f"UPDATE {active}.progress SET position = $1, updated_at = now()", head)
    async with pool.acquire() as conn:
        status = await read_status(conn, stale_after_s=60)
    assert status.stalled == [] and render(status).endswith("all parts keep up")


async def test_overdue_timers_and_unpublished_dead_letters_are_stalled_only_when_old(
    pool: asyncpg.Pool, admin_pool: asyncpg.Pool,
) -> None:
    await admin_pool.execute(
        "INSERT INTO sla_due (case_id, timer_no, level, unit, warn_at, due_at, position) "
        "VALUES (gen_random_uuid(), 1, 'township', '530102001', now() - interval '2 hours', "
        "now() - interval '1 hour', 1)")
    await admin_pool.execute(
        "INSERT INTO intake_messages (topic, partition, \"offset\", digest, outcome, "
        "recorded_at) VALUES ('intake.submissions', 0, 7, '\\x07', 'rejected', "
        "now() - interval '1 hour'), ('intake.submissions', 0, 8, '\\x08', 'accepted', now())")
    async with pool.acquire() as conn:
        parts = parts_by_name(await read_status(conn, stale_after_s=60))
    clock, dead = parts["sla clock"], parts["intake dead letters"]
    assert (clock.behind, clock.stalled) == (1, True)
    assert "the oldest due 2.0 h ago" in clock.detail  # the warning was due first
    assert (dead.behind, dead.stalled) == (1, True)
    assert "1 accepted, 0 duplicate, 1 rejected" in dead.detail

    async with pool.acquire() as conn:  # the same waits, allowed to be longer
        assert (await read_status(conn, stale_after_s=3 * 3600)).stalled == []
    await admin_pool.execute("UPDATE sla_due SET warned = true, breached = true")
    await admin_pool.execute("UPDATE intake_messages SET published_at = now()")
    async with pool.acquire() as conn:
        parts = parts_by_name(await read_status(conn, stale_after_s=60))
    assert parts["sla clock"].behind == 0 and parts["intake dead letters"].behind == 0
    assert not parts["sla clock"].stalled and not parts["intake dead letters"].stalled


def test_the_command_exits_1_on_a_stalled_part_with_check_and_prints_json(
    database: Db,
) -> None:
    async def stall() -> None:
        conn = await asyncpg.connect(database.admin_dsn)
        try:
            await conn.execute(
                "INSERT INTO intake_messages (topic, partition, \"offset\", digest, outcome, "
                "recorded_at) VALUES ('intake.submissions', 0, 1, '\\x01', 'rejected', "
                "now() - interval '1 hour')")
        finally:
            await conn.close()

    asyncio.run(stall())
    env = {**os.environ, "DATABASE_URL": database.service_dsn,
           "YIZHAN_MIGRATE_ON_START": "false", "YIZHAN_LOG_LEVEL": "warning"}
    yizhan = [sys.executable, "-c", "from services.cli import main; main()", "status"]
    plain = subprocess.run(yizhan, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr  # without --check it only reports
    assert "intake dead letters" in plain.stdout and "STALLED" in plain.stdout
    checked = subprocess.run([*yizhan, "--check", "--json"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 1, checked.stderr
    assert json.loads(checked.stdout)["stalled"] == ["intake dead letters"]


async def test_a_consumer_kept_for_another_partition_count_is_a_problem(
    pool: asyncpg.Pool, admin_pool: asyncpg.Pool, pg_store: PostgresEventStore,
) -> None:
    head = await log_of(pg_store, 2)
    # kept before counts were recorded: the stored position's stream is on its partition for
    # the count they were kept for ('unrecorded': 6; 'unrecorded-misplaced': another count)
    on = partition_for(await pool.fetchval(
        "SELECT stream_id FROM events WHERE position = $1", head), 6)
    await admin_pool.execute(
        "INSERT INTO consumer_positions (consumer, scope, position) VALUES "
        "('kept-for-3', 'case.events/0', $1), ('fits', 'case.events/0', $1), "
        "('unrecorded-wider', 'case.events/7', $1), ('unrecorded', $2, $1),"
        " ('unrecorded-misplaced', $3, $1)", head, f"case.events/{on}",
        f"case.events/{(on + 1) % 6}")
    await admin_pool.execute(
        "INSERT INTO consumer_partition_counts (consumer, topic, partitions) VALUES "
        "('kept-for-3', 'case.events', 3), ('fits', 'case.events', 6)")
    async with pool.acquire() as conn:
        status = await read_status(conn, stale_after_s=60, partitions={"case.events": 6})
        unchecked = await read_status(conn, stale_after_s=60)
    problems = {p.name: p.problem for p in status.problems}
    assert set(problems) == {"consumer kept-for-3", "consumer unrecorded-misplaced",
                             "consumer unrecorded-wider"}
    assert "for another count of partitions, but the topic has 6" in problems[
        "consumer unrecorded-misplaced"]
    assert "for 3 partitions, but the topic has 6" in problems["consumer kept-for-3"]
    assert "--partitions 6" in problems["consumer kept-for-3"]
    assert "at least 8 partitions" in problems["consumer unrecorded-wider"]
    assert status.stalled == []
    report = render(status)
    assert "PROBLEM: consumer 'kept-for-3' kept its positions" in report
    assert report.splitlines()[-2].startswith("problems: consumer kept-for-3, consumer "
                                              "unrecorded-misplaced, consumer unrecorded-wider")
    # a problem is no stall, but "all parts keep up" under a list of problems read as a
    # contradiction
    assert report.endswith("nothing stalled")
    assert set(json.loads(status.as_json())["problems"]) == set(problems)
    assert unchecked.problems == []  # without the topics' counts nothing is held against them
