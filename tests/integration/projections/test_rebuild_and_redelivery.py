"""Rebuild (blue/green) and the live path's robustness on real PostgreSQL: redelivery and
out-of-order delivery change nothing, a worker SIGKILLed mid-batch and restarted ends with
tables identical to a clean rebuild, an unknown event is parked live and refused by a rebuild.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import asyncpg
import pytest

from services.projections import queries as q
from services.projections import rebuild as rebuild_module
from services.projections import writer
from services.projections.agents import build_worker, running
from services.projections.bootstrap import bootstrap, prepare_tables
from services.projections.live import LiveProjection
from services.projections.progress import advance_watermark
from services.projections.projectors import UnitPaths, Unprojectable
from services.projections.rebuild import REBUILD_LOCK, RebuildFailed, rebuild
from services.projections.schema import LAYOUT, active_schema, other
from shared.consumer import IdempotentConsumer
from shared.contracts.envelope import NewEvent
from shared.eventstore.postgres import PostgresEventStore
from shared.kafka import ensure_topics
from shared.reference import Reference
from shared.relay import Relay, RelayConfig
from tests.conftest import Db
from tests.integration.projections.helpers import (
    PARTITIONS,
    SETTINGS,
    digests,
    load_simulated,
    wait_caught_up,
)
from tests.unit.projections.scenarios import (
    TOWNSHIP,
    breached_at_the_station,
    reopened_at_the_county,
)


@pytest.fixture
async def prepared(pool: asyncpg.Pool) -> str:
    return await prepare_tables(pool)


async def apply_live(pool: asyncpg.Pool, live: LiveProjection, events: list) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await live.apply(conn, events)


@pytest.mark.parametrize("copy_from", [writer.COPY_FROM, 1], ids=["insert", "copy"])
async def test_redelivered_and_reordered_batches_change_nothing(
    pool: asyncpg.Pool, admin_pool: asyncpg.Pool, pg_store: PostgresEventStore,
    prepared: str, ref: Reference, copy_from: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches written row by row (a live batch's usual size) or with COPY alike."""
    monkeypatch.setattr(writer, "COPY_FROM", copy_from)
    head = await load_simulated(admin_pool, 80)
    events = await pg_store.read_batch(0, head)
    live = LiveProjection(UnitPaths(ref.org))
    for start in range(0, head, 97):
        await apply_live(pool, live, events[start:start + 97])
    await wait_caught_up(pool)
    before = await digests(pool, prepared)
    assert live.stats.applied == head

    await apply_live(pool, live, events[100:400])  # the same batch again
    await apply_live(pool, live, list(reversed(events)))  # and everything, backwards
    assert await digests(pool, prepared) == before
    assert live.stats.applied == head and live.stats.duplicates == 300 + head

    report = await rebuild(pool, UnitPaths(ref.org), batch_size=500, swap=False)
    assert report.position == head
    assert await digests(pool, other(prepared)) == before  # live == rebuild


async def scans_of(conn: asyncpg.Connection, schema: str, tables: tuple[str, ...],
                   ) -> dict[str, int]:
    """Sequential scans of each table counted by this backend and not yet flushed."""
    return {t: await conn.fetchval("SELECT pg_stat_get_xact_numscans($1::regclass)",
                                   f"{schema}.{t}") for t in tables}


async def test_batches_and_the_watermark_find_rows_by_key_however_small_the_set_was(
    pool: asyncpg.Pool, admin_pool: asyncpg.Pool, pg_store: PostgresEventStore,
    prepared: str, ref: Reference,
) -> None:
    """A connection keeps the plans its statements got first. Planned generically on a nearly
    empty table set (the worst case, forced here), the case rows and counts were looked up by
    scanning their tables, on every batch, however large they grew. Once the set has grown,
    neither a batch nor an advance of the watermark may scan a read-model table."""
    head = await load_simulated(admin_pool, 400)
    events = await pg_store.read_batch(0, head)
    live = LiveProjection(UnitPaths(ref.org))
    tables = ("case_summary", "unit_counts", "subtree_counts")
    async with pool.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            for start in range(0, 60, 10):  # plans made while the set is nearly empty
                async with conn.transaction():
                    await live.apply(conn, events[start:start + 10])
                await advance_watermark(conn)
            async with conn.transaction():  # the set grows
                await live.apply(conn, events[60:-50])
            async with conn.transaction():
                # the backend's counts not yet flushed (at most once a second) include earlier
                # transactions': this one's are the difference
                before = await scans_of(conn, prepared, tables)
                await live.apply(conn, events[-50:])
                await advance_watermark(conn)
                after = await scans_of(conn, prepared, tables)
                scans = {t: after[t] - before[t] for t in tables}
        finally:
            await conn.execute("RESET plan_cache_mode")
    assert scans == dict.fromkeys(tables, 0)
    assert live.stats.applied == head


async def test_the_watermark_stops_before_the_first_event_not_applied_and_never_passes_the_head(
    pool: asyncpg.Pool, admin_pool: asyncpg.Pool, pg_store: PostgresEventStore,
    prepared: str, ref: Reference,
) -> None:
    live = LiveProjection(UnitPaths(ref.org))
    async with pool.acquire() as conn:
        assert [await advance_watermark(conn) for _ in range(3)] == [0, 0, 0]  # an empty log
        head = await load_simulated(admin_pool, 20)
        events = await pg_store.read_batch(0, head)
        assert await advance_watermark(conn) == 0  # nothing applied yet
        for done in (17, 60, head):
            async with conn.transaction():
                await live.apply(conn, events[:done])
            assert [await advance_watermark(conn) for _ in range(2)] == [done, done]


async def test_gaps_are_filled_from_the_store(
    pool: asyncpg.Pool, admin_pool: asyncpg.Pool, pg_store: PostgresEventStore,
    prepared: str, ref: Reference,
) -> None:
    head = await load_simulated(admin_pool, 30)
    events = await pg_store.read_batch(0, head)
    live = LiveProjection(UnitPaths(ref.org))
    # a consumer that saw only every third event (a "ghost" topic lost the rest)
    await apply_live(pool, live, events[2::3])
    await apply_live(pool, live, events)
    assert live.stats.gaps_filled > 0
    await wait_caught_up(pool)
    await rebuild(pool, UnitPaths(ref.org), batch_size=200, swap=False)
    assert await digests(pool, prepared) == await digests(pool, other(prepared))


async def test_rebuild_swaps_while_queries_keep_working_and_refuses_unknown_events(
    pool: asyncpg.Pool, admin_pool: asyncpg.Pool, pg_store: PostgresEventStore,
    prepared: str, ref: Reference,
) -> None:
    head = await load_simulated(admin_pool, 60)
    seen = []
    report = await rebuild(pool, UnitPaths(ref.org), batch_size=150, progress=seen.append)
    assert (report.schema, report.position, report.generation) == (other(prepared), head, 2)
    assert seen and seen[-1].done == head and seen[-1].eta_s == 0
    async with pool.acquire() as conn:
        assert await active_schema(conn) == other(prepared)
    await wait_caught_up(pool)

    stream = next(iter({e.stream_id for e in await pg_store.read_batch(0, 5)}))
    version = await pg_store.stream_version(stream)
    await pg_store.append(stream, version, [NewEvent("CaseTeleported", {"to": "moon"})])
    live = LiveProjection(UnitPaths(ref.org))
    await apply_live(pool, live, await pg_store.read_batch(head, 10))
    assert live.stats.parked == 1
    assert await pool.fetchval("SELECT type FROM projections.parked") == "CaseTeleported"
    await wait_caught_up(pool)  # a parked event does not hold the watermark

    before = await digests(pool, other(prepared))
    with pytest.raises(Unprojectable, match="CaseTeleported"):
        await rebuild(pool, UnitPaths(ref.org), batch_size=150)
    async with pool.acquire() as conn:
        assert await active_schema(conn) == other(prepared)  # nothing swapped
    assert await digests(pool, other(prepared)) == before


async def test_a_rebuild_waits_while_another_process_rebuilds(
    database: Db, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, prepared: str, ref: Reference,
) -> None:
    """Two rebuilds at once would write the same inactive set, the second dropping the tables
    the first had just swapped in: the second waits for the first's lock."""
    head = await load_simulated(admin_pool, 20)
    other_process = await asyncpg.connect(database.service_dsn)
    try:
        await other_process.execute("SELECT pg_advisory_lock($1)", REBUILD_LOCK)
        second = asyncio.create_task(rebuild(pool, UnitPaths(ref.org), batch_size=150))
        waiting = 0
        for _ in range(400):  # until its session waits for the lock (or it is done: a fail)
            waiting = await admin_pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 "
                "AND objid = $1 AND NOT granted", REBUILD_LOCK)
            if waiting or second.done():
                break
            await asyncio.sleep(0.05)
        assert waiting == 1 and not second.done()
        state = await pool.fetchrow("SELECT active_schema, generation FROM projections.state")
        assert tuple(state) == (prepared, 1)
        await other_process.execute("SELECT pg_advisory_unlock($1)", REBUILD_LOCK)
        report = await asyncio.wait_for(second, 60)
    finally:
        await other_process.close()
    assert (report.schema, report.position, report.generation) == (other(prepared), head, 2)


async def test_a_rebuild_swaps_nothing_if_another_swapped_meanwhile(
    pool: asyncpg.Pool, admin_pool: asyncpg.Pool, prepared: str, ref: Reference,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebuild that did not take the lock (older code, mid-deployment) swapped while this one
    was catching up: this one's target may be the active set now; it swaps nothing."""
    await load_simulated(admin_pool, 20)
    catch_up = rebuild_module._catch_up

    async def raced(*args: object, **kwargs: object) -> int:
        await admin_pool.execute("UPDATE projections.state SET generation = generation + 1")
        return await catch_up(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rebuild_module, "_catch_up", raced)
    with pytest.raises(RebuildFailed, match="another rebuild swapped the read models"):
        await rebuild(pool, UnitPaths(ref.org), batch_size=150)
    state = await pool.fetchrow("SELECT active_schema, generation FROM projections.state")
    assert tuple(state) == (prepared, 2)


async def test_a_worker_killed_mid_batch_resumes_to_the_same_tables_as_a_rebuild(
    database: Db, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, pg_store: PostgresEventStore,
    prepared: str, ref: Reference, kafka_bootstrap: str,
) -> None:
    head = await load_simulated(admin_pool, 300, seed=9)
    topic = f"case.events.{uuid.uuid4().hex[:8]}"
    group = f"proj-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: PARTITIONS})
    relay = Relay(pg_store, RelayConfig(bootstrap_servers=kafka_bootstrap, topic=topic,
                                        partitions=PARTITIONS, poll_interval_s=0.05,
                                        probe_interval_s=1.0, request_timeout_ms=3000))
    stop = asyncio.Event()
    relaying = asyncio.create_task(relay.run(stop))
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.projections.worker_main",
            database.service_dsn, kafka_bootstrap, topic, group, "7",
            cwd=os.getcwd(), stdout=asyncio.subprocess.DEVNULL)
        try:
            for _ in range(600):  # until it is well into the log, then SIGKILL it
                done = await pool.fetchval(f"SELECT count(*) FROM {prepared}.timeline")
                if done > 200:
                    break
                await asyncio.sleep(0.05)
            child.send_signal(signal.SIGKILL)
        finally:
            await child.wait()
        applied = await pool.fetchval(f"SELECT count(*) FROM {prepared}.case_summary")
        assert applied > 0, "the worker applied nothing before it was killed"
        assert await pool.fetchval(f"SELECT count(*) FROM {prepared}.timeline") < head

        worker = build_worker(SETTINGS, pool, UnitPaths(ref.org), bootstrap_servers=kafka_bootstrap,
                              topic=topic, group=group, batch_size=100, max_wait_s=0.05,
                              partitions=PARTITIONS)
        async with running(worker, pool):
            assert await wait_caught_up(pool, timeout=40) == head
    finally:
        stop.set()
        await asyncio.wait_for(relaying, 20)
    assert await IdempotentConsumer(pool, "projections").positions()
    await rebuild(pool, UnitPaths(ref.org), batch_size=500, swap=False)
    assert await digests(pool, prepared) == await digests(pool, other(prepared))


async def county_rounds(pool: asyncpg.Pool, schema: str) -> list[tuple[int, int]]:
    rows = await pool.fetch(f"SELECT round, used_seconds FROM {schema}.sla_facts "
                            "WHERE level = 'county' ORDER BY round")
    return [(r["round"], r["used_seconds"]) for r in rows]


async def reopened_case(pg_store: PostgresEventStore, ref: Reference) -> list:
    """The county took 2 h, then 1 h more after a reopen: its events, as the log holds them."""
    _, events = reopened_at_the_county(ref)
    await pg_store.append(f"case-{events[0].case_id}", 0, [
        NewEvent(e.event_type, e.model_dump(mode="json")) for e in events])
    return await pg_store.read_batch(0, len(events))


async def test_a_reopened_case_counts_every_round_of_a_level_live_and_rebuilt(
    pool: asyncpg.Pool, pg_store: PostgresEventStore, prepared: str, ref: Reference,
) -> None:
    """A reopen restarts the county's clock from zero: the first round's 2 h stay a fact
    beside the second round's 1 h, whether the live path saw them batch by batch or a rebuild
    all at once."""
    live = LiveProjection(UnitPaths(ref.org))
    for event in await reopened_case(pg_store, ref):
        await apply_live(pool, live, [event])
    await wait_caught_up(pool)
    await rebuild(pool, UnitPaths(ref.org), batch_size=500, swap=False)
    for schema in (prepared, other(prepared)):
        assert await county_rounds(pool, schema) == [(0, 7200), (1, 3600)], schema
        async with pool.acquire() as conn:
            (county,) = await q.sla_stats(conn, schema, q.Scope(None), ["level"],
                                          level="county")
        assert (county["handled"], county["median_seconds"]) == (2, 5400), schema
    assert await digests(pool, prepared) == await digests(pool, other(prepared))


async def test_a_table_set_of_an_older_layout_is_rebuilt_before_the_service_serves(
    database: Db, pool: asyncpg.Pool, pg_store: PostgresEventStore, prepared: str,
    ref: Reference,
) -> None:
    """A deployment whose active set older code made (layout 1: one SLA fact per level, the
    first round's overwritten) comes up with the read models rebuilt from the log; a second
    start finds them current and rebuilds nothing."""
    async with pool.acquire() as conn, conn.transaction():
        await LiveProjection(UnitPaths(ref.org)).apply(conn, await reopened_case(pg_store, ref))
    await wait_caught_up(pool)
    await pool.execute(f"DELETE FROM {prepared}.sla_facts WHERE level = 'county' AND round = 0")
    await pool.execute(f"ALTER TABLE {prepared}.sla_facts DROP COLUMN round")
    await pool.execute("UPDATE projections.state SET layout = 1")

    for start in range(2):
        service = await bootstrap(SETTINGS, database.service_dsn, ref=ref)
        await service.close()
        state = await pool.fetchrow("SELECT active_schema, generation, layout "
                                    "FROM projections.state")
        assert tuple(state) == (other(prepared), 2, LAYOUT), start
    assert await county_rounds(pool, other(prepared)) == [(0, 7200), (1, 3600)]


async def test_a_case_breached_at_the_station_is_not_late_in_the_townships_queue(
    pool: asyncpg.Pool, pg_store: PostgresEventStore, prepared: str, ref: Reference,
) -> None:
    """The flags are the township's clock's once it holds the case, live and rebuilt alike;
    where it was late stays readable (``breached_levels``)."""
    _, events = breached_at_the_station(ref)
    await pg_store.append(f"case-{events[0].case_id}", 0, [
        NewEvent(e.event_type, e.model_dump(mode="json")) for e in events])
    live = LiveProjection(UnitPaths(ref.org))
    for event in await pg_store.read_batch(0, len(events)):
        await apply_live(pool, live, [event])
    await wait_caught_up(pool)
    await rebuild(pool, UnitPaths(ref.org), batch_size=500, swap=False)
    for schema in (prepared, other(prepared)):
        async with pool.acquire() as conn:
            queue = await q.list_cases(conn, schema, q.Scope.of(ref.org, TOWNSHIP),
                                       q.CaseFilter(unit=TOWNSHIP, open_only=True))
        (case,) = queue["items"]
        assert (case["warned"], case["breached"], case["breached_levels"]) == (
            False, False, ["community"]), schema
    assert await digests(pool, prepared) == await digests(pool, other(prepared))
