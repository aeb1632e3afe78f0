"""A rebuild folding the log in several processes (``rebuild.parallel_fold``), on real
PostgreSQL: the same tables as one process, and every way a fold process can fail (an event
it cannot project, being killed mid-fold, the rebuild being cancelled) fails the rebuild,
swaps nothing and leaves no process behind."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from services.projections import rebuild as rebuild_module
from services.projections.bootstrap import prepare_tables
from services.projections.projectors import UnitPaths, Unprojectable
from services.projections.rebuild import RebuildFailed, RebuildProgress, rebuild
from services.projections.schema import other
from shared.contracts.envelope import NewEvent
from shared.eventstore.postgres import PostgresEventStore
from shared.reference import Reference
from tests.conftest import Db
from tests.integration.projections.helpers import digests, load_simulated, wait_for


@pytest.fixture
async def prepared(pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> str:
    """The active set, and any log folded in several processes when asked (a real one is
    folded in one below ``PARALLEL_FROM`` events)."""
    monkeypatch.setattr(rebuild_module, "PARALLEL_FROM", 0)
    return await prepare_tables(pool)


def fold_processes() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children()
            if p.name.startswith("yizhan-rebuild-fold-")]


async def state(pool: asyncpg.Pool) -> tuple[str, int]:
    row = await pool.fetchrow("SELECT active_schema, generation FROM projections.state")
    return row["active_schema"], row["generation"]


async def test_several_processes_write_the_same_tables_as_one(
    database: Db, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, prepared: str, ref: Reference,
) -> None:
    head = await load_simulated(admin_pool, 150, seed=11)
    paths = UnitPaths(ref.org)
    one = await rebuild(pool, paths, batch_size=300, swap=False)
    assert one.processes == 1
    by_one = await digests(pool, other(prepared))

    seen: list[RebuildProgress] = []
    three = await rebuild(pool, paths, batch_size=300, swap=False, processes=3,
                          dsn=database.service_dsn, progress=seen.append)
    assert three.processes == 3 and three.position == head
    assert three.cases == one.cases == 150
    assert await digests(pool, other(prepared)) == by_one
    # the progress counts every process's events: it ends at the head, and never goes back
    assert seen[-1].done == head and seen[-1].eta_s == 0
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert fold_processes() == []


async def test_a_short_log_is_folded_in_one_process(
    database: Db, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, ref: Reference,
) -> None:
    await prepare_tables(pool)
    await load_simulated(admin_pool, 20)
    report = await rebuild(pool, UnitPaths(ref.org), processes=4, dsn=database.service_dsn)
    assert report.processes == 1  # under PARALLEL_FROM events


async def test_several_processes_need_a_dsn(pool: asyncpg.Pool, ref: Reference) -> None:
    with pytest.raises(ValueError, match="given a dsn"):
        await rebuild(pool, UnitPaths(ref.org), processes=2)


async def stream_in_shard(pool: asyncpg.Pool, store: PostgresEventStore, number: int,
                          of: int) -> str:
    """A case stream whose events fold in process ``number`` of ``of``."""
    streams = {e.stream_id for e in await store.read_batch(0, 500)}
    return str(await pool.fetchval(
        "SELECT s FROM unnest($1::text[]) s WHERE (hashtext(s) & 2147483647) % $2 = $3 "
        "ORDER BY s LIMIT 1", sorted(streams), of, number))


async def test_an_event_another_process_cannot_project_fails_the_rebuild(
    database: Db, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, pg_store: PostgresEventStore,
    prepared: str, ref: Reference,
) -> None:
    await load_simulated(admin_pool, 60)
    stream = await stream_in_shard(pool, pg_store, 1, 2)  # not this process's share
    version = await pg_store.stream_version(stream)
    await pg_store.append(stream, version, [NewEvent("CaseTeleported", {"to": "moon"})])

    with pytest.raises(Unprojectable, match="CaseTeleported") as refused:
        await rebuild(pool, UnitPaths(ref.org), batch_size=150, processes=2,
                      dsn=database.service_dsn)
    assert refused.value.stream_id == stream  # the fold process's own error, sent back
    assert await state(pool) == (prepared, 1)  # nothing swapped
    assert fold_processes() == []


def blocking_recreate(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The inactive set's tables are made only once the returned event is set: until then no
    process can write a row (and none can be done)."""
    release = asyncio.Event()
    recreate = rebuild_module.recreate_tables

    async def held(*args: Any, **kwargs: Any) -> None:
        await release.wait()
        await recreate(*args, **kwargs)

    monkeypatch.setattr(rebuild_module, "recreate_tables", held)
    return release


async def test_a_fold_process_killed_mid_fold_fails_the_rebuild_and_a_new_one_succeeds(
    database: Db, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, prepared: str, ref: Reference,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    head = await load_simulated(admin_pool, 120, seed=3)
    paths = UnitPaths(ref.org)
    release = blocking_recreate(monkeypatch)
    result = rebuild_module._FoldProcess.result
    killed: list[int] = []

    async def kill_at_first_progress(self: Any, on_batch: Callable[[int, bool], None],
                                     ) -> Awaitable[Any]:
        def on_progress(done: int, last: bool) -> None:
            if not killed:  # it has folded a range and waits for the tables to write
                killed.append(self.process.pid)
                self.process.kill()
                release.set()
            on_batch(done, last)

        return await result(self, on_progress)

    monkeypatch.setattr(rebuild_module._FoldProcess, "result", kill_at_first_progress)
    with pytest.raises(RebuildFailed, match=r"fold process 1 of 2 ended \(exit code -9\)"):
        await rebuild(pool, paths, batch_size=100, processes=2, dsn=database.service_dsn)
    assert killed and fold_processes() == []
    assert await state(pool) == (prepared, 1)

    monkeypatch.undo()
    monkeypatch.setattr(rebuild_module, "PARALLEL_FROM", 0)
    report = await rebuild(pool, paths, processes=2, dsn=database.service_dsn, swap=False)
    assert report.position == head
    by_two = await digests(pool, other(prepared))
    await rebuild(pool, paths, swap=False)
    assert await digests(pool, other(prepared)) == by_two


async def test_a_cancelled_rebuild_leaves_no_fold_process_and_no_lock(
    database: Db, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, prepared: str, ref: Reference,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await load_simulated(admin_pool, 60)
    blocking_recreate(monkeypatch)  # never released: the rebuild cannot finish
    running = asyncio.create_task(rebuild(pool, UnitPaths(ref.org), processes=3,
                                          dsn=database.service_dsn))
    await wait_for(lambda: len(fold_processes()) == 2, what="two fold processes")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert fold_processes() == []
    assert await admin_pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
        rebuild_module.REBUILD_LOCK) == 0
    assert await state(pool) == (prepared, 1)
