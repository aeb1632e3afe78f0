"""The e2e bench's limit: the hops a command's effect takes to the read model, made of raw parts
and nothing of ours, at the same rate on the same kind of servers.

1. a writer commits one row per tick into a log table (fsync as the server has it; from a pool
   of 16 connections, so that concurrent commits share a flush) and ``NOTIFY``s, as the event
   store's append does;
2. a relay-like task ``LISTEN``s, reads the new rows and produces them to a topic of the
   embedded broker (aiokafka, acks=all), one message per row, keyed as ours are;
3. a plain aiokafka consumer (no Faust, no group: the partitions assigned), fetching with the
   services' ``kafka_fetch_max_wait_ms``, commits each fetched batch's rows into a view table
   in one transaction;
4. visible = from the writer's commit returning to the view row's commit returning (the
   reader learns of it at no cost: an in-process future).

What our pipeline adds to this (HTTP and the domain on the command side; the relay's batching,
Faust, the idempotent consumer, the projectors and the watermark on the read side; the read
with ``min_position``) is what ``ours / limit`` shows. The embedded broker lets a fetch wait its
full ``fetch_max_wait_ms`` even when data arrives (see ``shared/streaming.py``), so most of this
limit is that wait."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.kafka import ensure_topics

_TABLES = """
CREATE TABLE IF NOT EXISTS limit_log (id bigserial PRIMARY KEY, key text NOT NULL,
                                      at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS limit_view (id bigint PRIMARY KEY, key text NOT NULL)
"""
_CHANNEL = "limit_log"
TRAILING = 1000  # ids re-read behind the highest sent (see ``relay``)


@dataclass(frozen=True)
class PipelineLimit:
    sent: int
    visible_p50_ms: float
    visible_p99_ms: float
    lost: int


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def measure(dsn: str, bootstrap: str, *, rate: int, seconds: float,
                  fetch_max_wait_ms: int, partitions: int = 6,
                  timeout_s: float = 10.0) -> PipelineLimit:
    """Run the raw pipeline at ``rate`` rows a second for ``seconds``."""
    topic = f"limit.pipeline.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, {topic: partitions})
    admin = await asyncpg.connect(dsn)
    await admin.execute(_TABLES)
    await admin.close()
    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[float]] = {}
    arrived: dict[int, float] = {}  # visible before its writer had looked
    stop = asyncio.Event()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=fetch_max_wait_ms, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    # commits from concurrent connections, which the server flushes to disk together, as the
    # commands' appends are (ours group them in the event store)
    writers = await asyncpg.create_pool(dsn, min_size=16, max_size=16)
    relay_conn, view = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    wake = asyncio.Event()
    await relay_conn.add_listener(_CHANNEL, lambda *_: wake.set())

    async def relay() -> None:
        # ids are taken at INSERT, commits land in another order (16 writers): a row with a
        # lower id may become visible after a higher one was read. Re-read a trailing window
        # of ids and skip those already sent, or such a row is never relayed.
        sent_ids: set[int] = set()
        top = 0
        while not stop.is_set():
            rows = [r for r in await relay_conn.fetch(
                "SELECT id, key FROM limit_log WHERE id > $1 ORDER BY id", top - TRAILING)
                if r["id"] not in sent_ids]
            if rows:
                sent = [await producer.send(topic, key=r["key"].encode(),
                                            value=str(r["id"]).encode()) for r in rows]
                await asyncio.gather(*sent)
                sent_ids.update(r["id"] for r in rows)
                top = max(top, rows[-1]["id"])
                sent_ids.difference_update([i for i in sent_ids if i <= top - TRAILING])
                continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.5)

    async def project() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            rows = [(int(m.value), m.key.decode()) for ms in batch.values() for m in ms]
            if not rows:
                continue
            await view.executemany("INSERT INTO limit_view (id, key) VALUES ($1, $2) "
                                   "ON CONFLICT DO NOTHING", rows)  # one transaction
            now = time.perf_counter()
            for row_id, _ in rows:
                seen = waiting.pop(row_id, None)
                if seen is None:
                    arrived[row_id] = now
                elif not seen.done():
                    seen.set_result(now)

    async def one(key: str) -> float | None:
        row_id = await writers.fetchval(
            "WITH i AS (INSERT INTO limit_log (key) VALUES ($1) RETURNING id) "
            f"SELECT (SELECT id FROM i) FROM pg_notify('{_CHANNEL}', '')", key)
        committed = time.perf_counter()
        if row_id in arrived:
            return (arrived.pop(row_id) - committed) * 1000
        future = waiting[row_id] = loop.create_future()
        try:
            return (await asyncio.wait_for(future, timeout_s) - committed) * 1000
        except TimeoutError:
            waiting.pop(row_id, None)
            return None

    tasks = [asyncio.create_task(relay()), asyncio.create_task(project())]
    visible: list[float] = []
    lost = 0
    try:
        started = time.perf_counter()
        pending = []
        for i in range(int(rate * seconds)):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(f"case-{i % (2 * rate)}")))
        for outcome in await asyncio.gather(*pending):
            if outcome is None:
                lost += 1
            else:
                visible.append(max(0.0, outcome))
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
        for conn in (relay_conn, view):
            await conn.close()
        await writers.close()
    return PipelineLimit(len(visible) + lost, statistics.median(visible) if visible else 0.0,
                         _pct(visible, 0.99), lost)
