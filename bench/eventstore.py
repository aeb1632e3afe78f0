#!/usr/bin/env python
"""Event-store benchmark: our PostgreSQL event store against the `eventsourcing` library's
PostgreSQL recorder and against raw asyncpg INSERT / COPY, in one run, on one PostgreSQL server,
with the same event-shaped rows.

    python bench/eventstore.py            # full run (100,000 events per measure)
    python bench/eventstore.py --quick    # 8,000 events per measure, under a minute

With no ``DATABASE_URL`` it starts its own embedded PostgreSQL (fsync on unless ``--no-fsync``)
in a temporary folder and stops it at the end; with ``DATABASE_URL`` (a role that may create
databases and roles) it creates scratch databases on that server and drops them afterwards.
Progress goes to stderr (structlog); the table and the final ``RESULT {json}`` line to stdout.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import asyncpg

from bench import libpq_params, with_db
from bench import run as bench_run
from shared.contracts.canonical import canonical_json
from shared.contracts.envelope import NewEvent
from shared.eventstore.migrate import ensure_service_role, migrate
from shared.eventstore.port import NO_STREAM
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.eventstore.verify import verify_log
from shared.logging import configure_logging, get_logger

log = get_logger("bench.eventstore")

RESULT_KEYS = (
    "append_eps", "append5_eps", "read_eps", "verify_eps", "peer_append_eps", "peer_read_eps",
    "limit_insert_eps", "limit_copy_eps",
)
WRITERS = 64
READ_BATCH = 1000
LIMIT_BATCH = 1000
PEER_THREADS = (1, 4, 8, 16)
REPEATS = 3  # every measure reports the median of this many runs
SERVICE_ROLE = "yizhan_bench_service"


# ------------------------------------------------------------------------------ event shapes

# Real county codes (GB/T 2260) and fixture-style township / station codes, as in data/kunming.
_COUNTIES = ("530102", "530103", "530111", "530112", "530113", "530114")
_SERVICES = (
    ("employment_reemployment", "就业困难人员认定及再就业援助"),
    ("graduate_employment", "高校毕业生就业登记与见习补贴申领"),
    ("pension_transfer", "城乡居民基本养老保险关系转移接续"),
    ("medical_reimbursement", "异地就医医疗费用手工报销"),
    ("injury_recognition", "工伤认定申请受理"),
    ("unemployment_benefit", "失业保险金申领"),
)
_DOCUMENTS = ("id_card", "household_register", "labour_contract", "diploma", "bank_card",
              "medical_invoice", "discharge_summary")
_NOTES = (
    "申请材料齐全，经初审符合条件，转街道复核。",
    "申请人户籍信息与社保系统登记不一致，需补充户口簿复印件。",
    "已电话联系申请人确认转移接续意向，材料原件已核验。",
    "跨区转移，需原参保地出具缴费凭证，请于五个工作日内补齐。",
    "按规定审核通过，报区人社局审批。",
)
_TYPES = ("CaseSubmitted", "CaseAccepted", "DocumentsRequested", "DocumentsSupplied",
          "CaseHandedOff")


def _station(rng: random.Random) -> tuple[str, str, str]:
    county = rng.choice(_COUNTIES)
    township = f"{county}{rng.randint(1, 12):03d}"
    return county, township, f"{township}{rng.randint(1, 6):03d}"


def case_event(rng: random.Random, case_id: uuid.UUID, step: int, at: datetime) -> NewEvent:
    """One event of a case's life (``step`` 0..4 → submitted, accepted, documents requested,
    documents supplied, handed off): ~300 bytes of canonical JSON data, plus the metadata every
    command carries. Chinese notes, unit codes, ids, as the cases service writes them."""
    county, township, station = _station(rng)
    service, _title = rng.choice(_SERVICES)
    type_ = _TYPES[step % len(_TYPES)]
    clerk = f"clerk.{station}.{rng.choice('ab')}"
    officer = f"officer.{township}.{rng.choice('ab')}"
    actor_id, role, unit = ((clerk, "station_clerk", station) if step in (0, 1, 3)
                            else (officer, "township_officer", township))
    data: dict[str, Any] = {
        "case_id": str(case_id), "at": at.isoformat().replace("+00:00", "Z"),
        "actor": {"user_id": actor_id, "role": role, "unit": unit},
    }
    if type_ == "CaseSubmitted":
        data.update(tracking_no=f"YZ{station}{rng.randint(0, 10**6):06d}", service_code=service,
                    station=station, visit_id=str(uuid.UUID(int=rng.getrandbits(128))),
                    documents_provided=rng.sample(_DOCUMENTS, 1))
    elif type_ == "CaseAccepted":
        data.update(unit=station, level="community", owner=clerk,
                    note=rng.choice(_NOTES)[:14])
    elif type_ == "DocumentsRequested":
        data.update(unit=township, level="township", documents=rng.sample(_DOCUMENTS, 2),
                    request_no=1, note=rng.choice(_NOTES))
    elif type_ == "DocumentsSupplied":
        data.update(unit=station, documents=rng.sample(_DOCUMENTS, 2), outstanding=[],
                    note=rng.choice(_NOTES)[:12])
    else:
        data.update(from_unit=township, from_level="township", to_unit=county,
                    to_level="county", owner=f"officer.{county}.a", note=rng.choice(_NOTES))
    metadata = {
        "actor_id": actor_id, "role": role, "unit": unit,
        "correlation_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "causation_id": uuid.UUID(int=rng.getrandbits(128)).hex,
    }
    return NewEvent(type_, data, metadata=metadata, occurred_at=at)


@dataclass
class Workload:
    """Pre-built events (built before any timer starts), ``REPEATS`` runs of each kind.
    ``single_runs``: one event per new stream; ``five_runs``: five events per new stream (one
    case's first five steps)."""

    warm_singles: list[tuple[str, NewEvent]]
    single_runs: list[list[tuple[str, NewEvent]]]
    warm_fives: list[tuple[str, list[NewEvent]]]
    five_runs: list[list[tuple[str, list[NewEvent]]]]

    @property
    def singles(self) -> list[tuple[str, NewEvent]]:
        """The first run's (the peer appends these)."""
        return self.single_runs[0]


def build_workload(n: int, warm: int, seed: int = 2024, runs: int = REPEATS) -> Workload:
    rng = random.Random(seed)
    t0 = datetime(2025, 3, 3, 1, 30, tzinfo=UTC)

    def single(i: int) -> tuple[str, NewEvent]:
        case = uuid.UUID(int=rng.getrandbits(128), version=4)
        return f"case-{case}", case_event(rng, case, i % 5, t0 + timedelta(seconds=i))

    def five(i: int) -> tuple[str, list[NewEvent]]:
        case = uuid.UUID(int=rng.getrandbits(128), version=4)
        at = t0 + timedelta(minutes=i)
        return f"case-{case}", [case_event(rng, case, s, at + timedelta(hours=s)) for s in range(5)]

    return Workload(
        warm_singles=[single(i) for i in range(warm)],
        single_runs=[[single(i) for i in range(n)] for _ in range(runs)],
        warm_fives=[five(i) for i in range(max(1, warm // 5))],
        five_runs=[[five(i) for i in range(n // 5)] for _ in range(runs)],
    )


def event_sizes(events: Sequence[NewEvent]) -> tuple[float, float]:
    """Mean UTF-8 bytes of canonical data and metadata."""
    data = sum(len(canonical_json(e.data).encode()) for e in events) / len(events)
    meta = sum(len(canonical_json(e.metadata).encode()) for e in events) / len(events)
    return data, meta


# ------------------------------------------------------------------------------ the server


@contextlib.contextmanager
def postgres_server(no_fsync: bool) -> Iterator[tuple[str, str]]:
    """(admin URL, description). Uses DATABASE_URL when set, else an embedded server."""
    given = os.environ.get("DATABASE_URL")
    if given:
        if no_fsync:
            log.warning("bench.no_fsync_ignored", reason="DATABASE_URL given: server settings "
                        "are the server's own")
        yield given, "DATABASE_URL"
        return
    from shared.runtime import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="yizhan-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "postgres", durable=not no_fsync)
        log.info("bench.embedded_postgres.starting", durable=not no_fsync)
        server.start()
        try:
            yield server.admin_url, "embedded"
        finally:
            server.stop()


@dataclass
class Scratch:
    admin_url: str
    names: list[str] = field(default_factory=list)

    async def create(self, prefix: str) -> str:
        name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.names.append(name)
        return name

    async def drop_all(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            for name in self.names:
                with contextlib.suppress(asyncpg.PostgresError):
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def settle(admin_dsn: str) -> None:
    """Flush dirty buffers between measures (CHECKPOINT), so one measure's writes are not paid
    for by the next one's. Needs superuser or pg_checkpoint; skipped quietly otherwise."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


# ------------------------------------------------------------------------------ measures


@dataclass
class Measure:
    key: str
    events: int
    seconds: float
    note: str = ""
    client_cpu: float = 0.0  # this process's CPU seconds (all threads) during the measure

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


_cpu_marks: list[float] = []


async def timed(fn: Callable[[], Awaitable[int]]) -> tuple[int, float]:
    cpu = time.process_time()
    start = time.perf_counter()
    count = await fn()
    secs = time.perf_counter() - start
    _cpu_marks.append(time.process_time() - cpu)
    return count, secs


def last_cpu() -> float:
    return _cpu_marks[-1] if _cpu_marks else 0.0


async def timed_median(fn: Callable[[], Awaitable[int]], runs: int,
                       before: Callable[[], Awaitable[None]] | None = None) -> tuple[int, float]:
    """The median of ``runs`` timed runs (for the cheap measures, which one run of a fraction
    of a second would leave at the mercy of noise); ``before`` runs untimed before each."""
    results: list[tuple[float, float, int]] = []
    for _ in range(runs):
        if before is not None:
            await before()
        count, secs = await timed(fn)
        results.append((secs, last_cpu(), count))
    secs, cpu, count = sorted(results)[len(results) // 2]
    _cpu_marks.append(cpu)
    return count, secs


async def run_writers(store: PostgresEventStore, items: Sequence[tuple[str, Any]],
                      writers: int) -> int:
    """``writers`` asyncio tasks on one store, each appending its share, one append at a time,
    to new streams (expected version NO_STREAM)."""

    async def writer(share: Sequence[tuple[str, Any]]) -> int:
        done = 0
        for stream, events in share:
            batch = events if isinstance(events, list) else [events]
            await store.append(stream, NO_STREAM, batch)
            done += len(batch)
        return done

    counts = await asyncio.gather(*(writer(items[i::writers]) for i in range(writers)))
    return sum(counts)


async def group_commits(admin_pool: asyncpg.Pool, first: int, last: int) -> int:
    """How many transactions wrote positions first..last (each group commit stamps one
    recorded_at on all its rows)."""
    return int(await admin_pool.fetchval(
        "SELECT count(DISTINCT recorded_at) FROM events WHERE position BETWEEN $1 AND $2",
        first, last))


async def append_runs(store: PostgresEventStore, admin_pool: asyncpg.Pool, admin_dsn: str,
                      runs: Sequence[Sequence[tuple[str, Any]]], key: str,
                      how: str) -> Measure:
    """Each run of appends after a CHECKPOINT; the median run by time (appends are as exposed
    to the machine's swings as the other measures, so they are repeated too)."""
    results: list[tuple[float, int, int, float]] = []
    for items in runs:
        await settle(admin_dsn)
        head0 = (await store.head()).position
        count, secs = await timed(lambda items=items: run_writers(store, items, WRITERS))
        head1 = (await store.head()).position
        assert head1 - head0 == count, (head0, head1, count)
        txs = await group_commits(admin_pool, head0 + 1, head1)
        results.append((secs, count, txs, last_cpu()))
        log.info(f"bench.{key.removesuffix('_eps')}.run", eps=round(count / secs), transactions=txs)
    secs, count, txs, cpu = sorted(results)[len(results) // 2]
    _cpu_marks.append(cpu)
    log.info(f"bench.{key.removesuffix('_eps')}.done", eps=round(count / secs), transactions=txs)
    return Measure(key, count, secs, f"{WRITERS} writers, {how}, {txs} transactions "
                   f"(~{count / max(txs, 1):.0f} events each); median of {len(results)}", cpu)


@contextlib.contextmanager
def maybe_profile(enabled: bool, label: str) -> Iterator[None]:
    if not enabled:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
        print(f"\n===== cProfile: {label} =====\n{out.getvalue()}", file=sys.stderr)


async def bench_ours(admin_dsn: str, service_dsn: str, work: Workload, n: int,
                     profile: bool) -> tuple[list[Measure], asyncpg.Pool]:
    pool = await create_pool(service_dsn, min_size=4, max_size=10)
    admin_pool = await create_pool(admin_dsn, min_size=1, max_size=2)
    store = PostgresEventStore(pool)
    measures: list[Measure] = []
    try:
        log.info("bench.append.warmup", events=len(work.warm_singles))
        await run_writers(store, work.warm_singles, WRITERS)
        log.info("bench.append.start", events=n, writers=WRITERS, runs=REPEATS)
        with maybe_profile(profile, "append (64 writers, 1 event per append)"):
            measures.append(await append_runs(store, admin_pool, admin_dsn, work.single_runs,
                                              "append_eps", "1 event/append"))
        await run_writers(store, work.warm_fives, WRITERS)
        log.info("bench.append5.start", events=n, writers=WRITERS, runs=REPEATS)
        with maybe_profile(profile, "append5 (64 writers, 5 events per append)"):
            measures.append(await append_runs(store, admin_pool, admin_dsn, work.five_runs,
                                              "append5_eps", "5 events/append"))

        async def read(upto: int) -> int:
            seen = 0
            last = 0
            async for batch in store.read_all(0, batch_size=READ_BATCH, to_position=upto):
                for ev in batch:  # touch every event (no JSON parsing: the store does none)
                    last = ev.position
                seen += len(batch)
            assert last == upto, (last, upto)
            return seen

        await settle(admin_dsn)
        await read(min(n, 5 * READ_BATCH))  # warm-up
        log.info("bench.read.start", events=n)
        with maybe_profile(profile, "read_all"):
            count, secs = await timed_median(lambda: read(n), REPEATS)
        measures.append(Measure("read_eps", count, secs,
                                f"read_all(batch_size={READ_BATCH}), positions 1..{n}; "
                                f"median of {REPEATS}",
                                last_cpu()))
        log.info("bench.read.done", eps=round(count / secs))

        async def verify() -> int:
            report = await verify_log(pool, public_key=None)
            assert report.ok, report
            return report.events_checked

        log.info("bench.verify.start", events=(await store.head()).position)
        with maybe_profile(profile, "verify_log"):
            count, secs = await timed_median(verify, REPEATS)
        measures.append(Measure("verify_eps", count, secs,
                                f"verify_log from genesis, whole log; median of {REPEATS}",
                                last_cpu()))
        log.info("bench.verify.done", eps=round(count / secs))
    finally:
        await store.close()
        await pool.close()
    return measures, admin_pool


# ------------------------------------------------------------------------------ raw limits

_ROW_COLUMNS = ("position", "stream_id", "version", "event_id", "type", "schema_version", "data",
                "metadata", "occurred_at", "recorded_at", "prev_hash", "hash")
_UNNEST = """
INSERT INTO {table} (position, stream_id, version, event_id, type, schema_version, data,
                     metadata, occurred_at, recorded_at, prev_hash, hash)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::uuid[], $5::text[], $6::int[],
                     $7::json[], $8::json[], $9::timestamptz[], $10::timestamptz[], $11::text[],
                     $12::text[])
"""


async def bench_limits(admin_pool: asyncpg.Pool, admin_dsn: str, n: int) -> list[Measure]:
    """The same rows our store wrote (positions 1..n, read back), written by raw asyncpg into
    plain same-shaped tables (columns of ``events``, primary key only: no other index, no
    trigger, no check), 1,000 rows per transaction, by one connection (the store serialises its
    writers too)."""
    rows = [tuple(r) for r in await admin_pool.fetch(
        "SELECT position, stream_id, version, event_id, type, schema_version, data::text, "
        "metadata::text, occurred_at, recorded_at, prev_hash, hash FROM events "
        "WHERE position <= $1 ORDER BY position", n)]
    assert len(rows) == n
    chunks = [rows[i:i + LIMIT_BATCH] for i in range(0, n, LIMIT_BATCH)]
    columns = [tuple(list(col) for col in zip(*chunk, strict=True)) for chunk in chunks]
    measures = []
    async with admin_pool.acquire() as conn:
        for table in ("limit_warm", "limit_insert", "limit_copy"):
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"CREATE TABLE {table} (LIKE events)")
            await conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (position)")

        # warm-up: a few batches of each kind into a throwaway table
        for cols in columns[:3]:
            async with conn.transaction():
                await conn.execute(_UNNEST.format(table="limit_warm"), *cols)
        await conn.execute("TRUNCATE limit_warm")
        for chunk in chunks[:3]:
            async with conn.transaction():
                await conn.copy_records_to_table("limit_warm", records=chunk,
                                                 columns=_ROW_COLUMNS)
        await conn.execute("DROP TABLE limit_warm")

        insert = _UNNEST.format(table="limit_insert")

        async def inserts() -> int:
            for cols in columns:
                async with conn.transaction():
                    await conn.execute(insert, *cols)
            return n

        async def fresh(table: str) -> None:
            await conn.execute(f"TRUNCATE {table}")
            await settle(admin_dsn)

        log.info("bench.limit_insert.start", events=n, runs=REPEATS)
        count, secs = await timed_median(inserts, REPEATS, lambda: fresh("limit_insert"))
        measures.append(Measure("limit_insert_eps", count, secs,
                                f"asyncpg INSERT … unnest, {LIMIT_BATCH} rows/transaction; "
                                f"median of {REPEATS}",
                                last_cpu()))
        log.info("bench.limit_insert.done", eps=round(count / secs))

        async def copies() -> int:
            for chunk in chunks:
                async with conn.transaction():
                    await conn.copy_records_to_table("limit_copy", records=chunk,
                                                     columns=_ROW_COLUMNS)
            return n

        log.info("bench.limit_copy.start", events=n, runs=REPEATS)
        count, secs = await timed_median(copies, REPEATS, lambda: fresh("limit_copy"))
        measures.append(Measure("limit_copy_eps", count, secs,
                                f"asyncpg copy_records_to_table, {LIMIT_BATCH} rows/tx; "
                                f"median of {REPEATS}",
                                last_cpu()))
        log.info("bench.limit_copy.done", eps=round(count / secs))
        assert await conn.fetchval("SELECT count(*) FROM limit_insert") == n
        assert await conn.fetchval("SELECT count(*) FROM limit_copy") == n
    return measures


# ------------------------------------------------------------------------------ the peer


def _peer_state(event: NewEvent) -> bytes:
    """What an eventsourcing application would store as the domain event's state: the event's
    attributes (data, metadata, timestamp) as JSON."""
    return json.dumps(
        {"data": event.data, "metadata": event.metadata,
         "timestamp": event.occurred_at.isoformat() if event.occurred_at else None},
        ensure_ascii=False, separators=(",", ":"),
    ).encode()


def bench_peer(dsn: str, admin_dsn: str, work: Workload, n: int) -> list[Measure]:
    """The `eventsourcing` library's PostgresApplicationRecorder (its insert_events takes the
    table's EXCLUSIVE lock so notification ids follow commit order — the same guarantee our store
    gives). One StoredEvent per insert_events call = one command per transaction, from a pool of
    threads; the thread count with the best trial rate is used for the measure."""
    try:
        from eventsourcing.persistence import StoredEvent
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
    except ImportError as exc:  # pragma: no cover - the bench extra is missing
        raise SystemExit("the peer needs the bench extra: pip install -e '.[bench]'") from exc

    dbname, host, port, user, password = libpq_params(dsn)

    def recorder_for(threads: int) -> tuple[PostgresDatastore, PostgresApplicationRecorder]:
        datastore = PostgresDatastore(dbname, host, port, user, password, pool_size=threads,
                                      max_overflow=0, connect_timeout=30)
        datastore.pool.open(wait=True, timeout=30)
        recorder = PostgresApplicationRecorder(datastore)
        recorder.create_table()
        return datastore, recorder

    def to_stored(items: Sequence[tuple[str, NewEvent]]) -> list[tuple[uuid.UUID, str, NewEvent]]:
        return [(uuid.UUID(stream.removeprefix("case-")), f"yizhan.cases:{ev.type}", ev)
                for stream, ev in items]

    def insert_all(recorder: PostgresApplicationRecorder,
                   items: list[tuple[uuid.UUID, str, NewEvent]],
                   threads: int) -> tuple[float, float]:
        def worker(share: list[tuple[uuid.UUID, str, NewEvent]]) -> int:
            for originator_id, topic, ev in share:
                recorder.insert_events([StoredEvent(originator_id, 1, topic, _peer_state(ev))])
            return len(share)

        cpu = time.process_time()
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as executor:
            done = sum(executor.map(worker, [items[i::threads] for i in range(threads)]))
        secs = time.perf_counter() - start
        assert done == len(items)
        return secs, time.process_time() - cpu

    singles = to_stored(work.singles)
    trial_size = max(400, n // 20)
    rng = random.Random(7)

    datastore, recorder = recorder_for(1)
    insert_all(recorder, to_stored(work.warm_singles[:300]), 1)  # warm-up
    datastore.close()

    trials: dict[int, float] = {}
    for threads in PEER_THREADS:
        # each trial appends trial_size of the same events to fresh streams
        items = [(uuid.UUID(int=rng.getrandbits(128), version=4), topic, ev)
                 for _id, topic, ev in singles[:trial_size]]
        datastore, recorder = recorder_for(threads)
        try:
            secs, _cpu = insert_all(recorder, items, threads)
        finally:
            datastore.close()
        trials[threads] = len(items) / secs
        log.info("bench.peer_append.trial", threads=threads, events=len(items),
                 eps=round(trials[threads]))
    best = max(trials, key=lambda t: trials[t])

    asyncio.run(settle(admin_dsn))
    datastore, recorder = recorder_for(best)
    measures = []
    try:
        log.info("bench.peer_append.start", events=n, threads=best)
        secs, cpu = insert_all(recorder, singles, best)
        trial_text = ", ".join(f"{t}:{trials[t]:,.0f}" for t in PEER_THREADS)
        measures.append(Measure("peer_append_eps", n, secs,
                                f"{best} thread(s), best of trials {{threads:eps {trial_text}}}",
                                cpu))
        log.info("bench.peer_append.done", eps=round(n / secs), threads=best)

        def read(upto: int) -> int:
            seen, start = 0, 1
            while True:
                page = recorder.select_notifications(start, READ_BATCH, stop=upto)
                if not page:
                    return seen
                for note in page:  # touch every notification, as for our store
                    start = note.id
                seen += len(page)
                start += 1

        asyncio.run(settle(admin_dsn))
        read(min(n, 5 * READ_BATCH))  # warm-up
        log.info("bench.peer_read.start", events=n)
        runs = []
        for _ in range(REPEATS):
            cpu = time.process_time()
            start = time.perf_counter()
            count = read(n)
            runs.append((time.perf_counter() - start, time.process_time() - cpu))
            assert count == n, (count, n)
        secs, cpu = sorted(runs)[len(runs) // 2]
        measures.append(Measure("peer_read_eps", count, secs,
                                f"select_notifications(limit={READ_BATCH}) pages, ids 1..{n}; "
                                f"median of {REPEATS}", cpu))
        log.info("bench.peer_read.done", eps=round(count / secs))
    finally:
        datastore.close()
    return measures


# ------------------------------------------------------------------------------ report

TARGETS = (
    ("append_eps / peer_append_eps", "append_eps", "peer_append_eps", 10.0),
    ("append_eps / limit_insert_eps", "append_eps", "limit_insert_eps", 0.25),
    ("read_eps / peer_read_eps", "read_eps", "peer_read_eps", 2.0),
    ("verify_eps", "verify_eps", None, 100_000.0),
)


def report(measures: list[Measure], header: list[str]) -> dict[str, float]:
    by_key = {m.key: m for m in measures}
    result = {k: round(by_key[k].eps, 1) for k in RESULT_KEYS}
    lines = [*header, ""]
    lines.append(f"{'measure':<18}{'events':>9}{'seconds':>9}{'events/s':>11}{'cpu':>6}  how")
    lines.append("-" * 110)
    for key in RESULT_KEYS:
        m = by_key[key]
        cpu = f"{100 * m.client_cpu / m.seconds:.0f}%" if m.seconds > 0 else "-"
        lines.append(f"{key:<18}{m.events:>9,}{m.seconds:>9.2f}{m.eps:>11,.0f}{cpu:>6}  "
                     f"{m.note}")
    lines.append("(cpu: this benchmark process's CPU time / wall time; the server's is not "
                 "included)")
    lines += ["", f"{'target':<32}{'needed':>10}{'actual':>12}  verdict", "-" * 66]
    for label, num, den, need in TARGETS:
        value = result[num] / result[den] if den else result[num]
        shown = f"{value:,.2f}" if den else f"{value:,.0f}"
        needed = f"≥ {need:g}" if den else f"≥ {need:,.0f}"
        lines.append(f"{label:<32}{needed:>10}{shown:>12}  "
                     f"{'met' if value >= need else 'NOT MET'}")
    print("\n".join(lines), flush=True)
    return result


def machine_busy(sample: float = 1.0) -> float:
    """Fraction of all CPUs busy during ``sample`` seconds (Linux /proc/stat; 0 elsewhere)."""

    def snap() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = snap()
        time.sleep(sample)
        total1, idle1 = snap()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    n = args.events or (8_000 if args.quick else 100_000)
    n -= n % LIMIT_BATCH
    busy_start = machine_busy()
    if busy_start > 0.2:
        log.warning("bench.machine_busy", cpu_busy=round(busy_start, 2), cpus=os.cpu_count(),
                    hint="other work on the machine skews every figure")
    warm = max(1000, n // 20)
    log.info("bench.workload.building", events=n, warmup=warm)
    work = build_workload(n, warm)
    data_bytes, meta_bytes = event_sizes([ev for _s, ev in work.singles[:2000]])
    log.info("bench.workload.built", data_bytes=round(data_bytes), metadata_bytes=round(meta_bytes))

    with postgres_server(args.no_fsync) as (admin_url, origin):
        scratch = Scratch(admin_url)
        try:
            ours = await scratch.create("yizhan_bench")
            peer = await scratch.create("yizhan_bench_peer")
            ours_admin = with_db(admin_url, ours)
            await migrate(ours_admin)
            service_dsn = ours_admin
            try:
                await ensure_service_role(ours_admin, SERVICE_ROLE)
                service_dsn = with_db(admin_url, ours, SERVICE_ROLE)
            except asyncpg.PostgresError as exc:
                log.warning("bench.service_role_unavailable", error=repr(exc),
                            using="the admin role")
            conn = await asyncpg.connect(ours_admin)
            try:
                server = await conn.fetchrow(
                    "SELECT current_setting('server_version') AS version, "
                    "current_setting('fsync') AS fsync, "
                    "current_setting('synchronous_commit') AS sync_commit, "
                    "current_setting('shared_buffers') AS shared_buffers")
            finally:
                await conn.close()
            assert server is not None
            log.info("bench.server", origin=origin, **dict(server))

            measures, admin_pool = await bench_ours(ours_admin, service_dsn, work, n,
                                                    args.profile)
            try:
                measures += await bench_limits(admin_pool, ours_admin, n)
            finally:
                await admin_pool.close()
            measures += await asyncio.to_thread(bench_peer, with_db(admin_url, peer),
                                                ours_admin, work, n)
        finally:
            await scratch.drop_all()

    header = [
        f"Yizhan event store benchmark — {n:,} events per measure "
        f"({'quick' if args.quick else 'full'} run)",
        f"PostgreSQL {server['version']} ({origin}), fsync={server['fsync']}, "
        f"synchronous_commit={server['sync_commit']}, shared_buffers={server['shared_buffers']}; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"rows: case events, data ≈ {data_bytes:.0f} B canonical JSON (Chinese notes, unit codes, "
        f"ids), metadata ≈ {meta_bytes:.0f} B (actor_id, role, unit, correlation_id, "
        "causation_id)",
        "client and server share the machine; each measure follows a warm-up and a CHECKPOINT; "
        f"every measure is the median of {REPEATS} runs",
        f"CPU busy before the run (other processes, 1 s sample): {busy_start:.0%}"
        + ("  ← the machine was busy: figures are disturbed" if busy_start > 0.2 else ""),
    ]
    return report(measures, header)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="8,000 events per measure (under a minute)")
    parser.add_argument("--events", type=int, default=0,
                        help="events per measure (default 8,000 quick / 100,000 full)")
    parser.add_argument("--no-fsync", action="store_true",
                        help="embedded server with fsync, full_page_writes and "
                             "synchronous_commit off (not durable)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile our append, read and verify phases (report to stderr; "
                             "slows them down)")
    parser.add_argument("--log-level", default=os.environ.get("YIZHAN_BENCH_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    configure_logging("console" if sys.stderr.isatty() else "json", args.log_level)
    started = time.perf_counter()
    result = bench_run(main_async(args))
    log.info("bench.finished", seconds=round(time.perf_counter() - started, 1))
    sys.stderr.flush()
    print("RESULT " + json.dumps(result, sort_keys=False), flush=True)


if __name__ == "__main__":
    main()
