#!/usr/bin/env python
"""Intake benchmark: Kafka submissions durably appended per second, HTTP visits per second and
their p99 latency, next to the limit — raw aiokafka produce of the same messages — measured in
the same run on the same machine.

    python bench/intake.py --quick     # 6,000 Kafka + 1,500 HTTP submissions, under a minute
    python bench/intake.py             # 30,000 Kafka + 6,000 HTTP submissions

With no ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` it starts an embedded PostgreSQL (fsync
on unless ``--no-fsync``) and broker in a temporary folder and stops them at the end; with them
it creates a scratch database (dropped at the end) and topics named for the run.

Measures (all submissions are valid visits of one synthetic resident and one service each):
- ``limit_produce_per_s``: the same messages produced with aiokafka (linger 5 ms, acks=all),
  waiting for every ack, to a topic of their own.
- ``kafka_submissions_per_s``: the messages are on ``intake.submissions`` before the worker
  starts; timed from the agent's first batch until every message's outcome is durable
  (cases appended, outcomes and receipts committed, offsets ackable). The group join is not
  timed.
- ``http_submissions_per_s`` / ``http_p99_ms``: ``POST /v1/visits`` in process over
  httpx.ASGITransport (no sockets), 32 concurrent clerks, each request its own key.
Progress goes to stderr; the table and the final ``RESULT {json}`` line to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx

from services.intake.bootstrap import IntakeService, bootstrap, build_app, running_worker
from shared.auth import Principal, mint_token
from shared.eventstore.migrate import ensure_service_role, migrate
from shared.kafka import ensure_topics
from shared.logging import configure_logging, get_logger
from shared.reference import load_reference
from shared.runtime import EmbeddedKafka, EmbeddedPostgres
from shared.settings import Settings

# The synthetic residents and Kafka workload are the integration tests' own (run from a checkout)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import run as bench_run
from bench import with_db
from tests.integration.intake.kafka_support import produce, visit_body, workload
from tests.unit.intake.people import synthetic_person

log = get_logger("bench.intake")
RESULT_KEYS = ("kafka_submissions_per_s", "http_submissions_per_s", "http_p99_ms",
               "limit_produce_per_s")
PARTITIONS = 6
HTTP_CONCURRENCY = 32
SERVICE_ROLE = "yizhan_bench_service"
STATION = "530102001001"


@contextlib.contextmanager
def servers(no_fsync: bool) -> Iterator[tuple[str, str, str]]:
    """(admin URL, Kafka bootstrap, description): the given servers or embedded ones."""
    given_db, given_kafka = os.environ.get("DATABASE_URL"), os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS")
    with tempfile.TemporaryDirectory(prefix="yizhan-bench-intake-") as tmp:
        started: list[EmbeddedPostgres | EmbeddedKafka] = []
        try:
            if given_db:
                admin = given_db
            else:
                pg = EmbeddedPostgres(Path(tmp) / "postgres", durable=not no_fsync).start()
                started.append(pg)
                admin = pg.admin_url
            if given_kafka:
                kafka = given_kafka
            else:
                broker = EmbeddedKafka(Path(tmp) / "kafka").start()
                started.append(broker)
                kafka = broker.bootstrap_servers
            where = f"PostgreSQL {'given' if given_db else 'embedded'}" + (
                f" (fsync {'off' if no_fsync else 'on'})" if not given_db else "") + (
                f", broker {'given' if given_kafka else 'embedded Tansu (memory)'}")
            yield admin, kafka, where
        finally:
            for server in reversed(started):
                server.stop()


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str) -> AsyncIterator[tuple[str, str]]:
    """A migrated scratch database: (admin DSN, service DSN); dropped at the end."""
    name = f"yizhan_bench_intake_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = with_db(admin_url, name)
    try:
        await migrate(dsn)
        await ensure_service_role(dsn, SERVICE_ROLE)
        yield dsn, with_db(admin_url, name, SERVICE_ROLE)
    finally:
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def bench_limit(kafka: str, messages: list, run: str) -> float:  # type: ignore[type-arg]
    topic = f"bench.limit.{run}"
    await ensure_topics(kafka, {topic: PARTITIONS})
    seconds = await produce(kafka, topic, messages)
    log.info("bench.limit.done", per_s=round(len(messages) / seconds))
    return len(messages) / seconds


async def bench_kafka(service: IntakeService, kafka: str, messages: list,  # type: ignore[type-arg]
                      run: str) -> float:
    topics = (f"intake.submissions.{run}", f"intake.rejected.{run}")
    await ensure_topics(kafka, dict.fromkeys(topics, PARTITIONS))
    await produce(kafka, topics[0], messages)
    log.info("bench.kafka.produced", messages=len(messages))
    async with running_worker(service, kafka, submissions_topic=topics[0],
                              rejected_topic=topics[1], partitions=PARTITIONS,
                              group=f"bench-{run}") as agent:
        stats = agent.ingress.stats
        started = await _when(lambda: stats.received > 0, every_s=0.002)
        finished = await _when(
            lambda: stats.accepted + stats.rejected + stats.duplicates >= len(messages))
        seconds = finished - started
    assert stats.rejected == 0 and stats.accepted == len(messages), stats
    log.info("bench.kafka.done", per_s=round(len(messages) / seconds), batches=stats.batches)
    return len(messages) / seconds


async def _when(condition: Callable[[], bool], every_s: float = 0.005) -> float:
    """The moment ``condition`` first holds (polled: the agent's counters have no events)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(every_s)
    return time.perf_counter()


def machine_busy(sample_s: float = 1.0) -> float:
    """Fraction of all CPUs busy during ``sample_s`` (Linux /proc/stat; 0 elsewhere)."""

    def snap() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = snap()
        time.sleep(sample_s)
        total1, idle1 = snap()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


async def bench_http(service: IntakeService, total: int) -> tuple[float, float]:
    ref = service.ref
    clerk = ref.staff.duty_clerk(STATION)
    token = mint_token(Principal(user_id=clerk.user_id, role=str(clerk.role), unit=clerk.unit),
                       service.settings)
    rng = random.Random(7)
    bodies = []
    for i in range(total):
        body = visit_body(synthetic_person(rng), f"http-{i}", rng)
        del body["kind"], body["idempotency_key"]
        bodies.append({**body, "station": STATION})
    latencies: list[float] = []
    queue = iter(enumerate(bodies))
    transport = httpx.ASGITransport(app=build_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:

        async def clerk_at_counter() -> None:
            for i, body in queue:
                sent = time.perf_counter()
                answer = await client.post("/v1/visits", json=body, headers={
                    "Authorization": f"Bearer {token}", "Idempotency-Key": f"bench-{i}"})
                latencies.append(time.perf_counter() - sent)
                assert answer.status_code == 201, answer.text

        started = time.perf_counter()
        await asyncio.gather(*(clerk_at_counter() for _ in range(HTTP_CONCURRENCY)))
        seconds = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    log.info("bench.http.done", per_s=round(total / seconds), p99_ms=round(p99, 1))
    return total / seconds, p99


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    n_kafka = args.kafka or (6_000 if args.quick else 30_000)
    n_http = args.http or (1_500 if args.quick else 6_000)
    settings = Settings(append_max_batch=2000, db_pool_max=20)
    ref = load_reference()
    run = uuid.uuid4().hex[:8]
    busy = machine_busy()
    with servers(args.no_fsync) as (admin_url, kafka, where):
        async with scratch_database(admin_url) as (_admin_dsn, service_dsn):
            service = await bootstrap(settings, service_dsn, ref=ref)
            try:
                messages = workload(service.sources, n_kafka, malformed_every=None,
                                    seed=int(run, 16))
                limit = await bench_limit(kafka, messages, run)
                kafka_rate = await bench_kafka(service, kafka, messages, run)
                http_rate, p99 = await bench_http(service, n_http)
            finally:
                await service.close()
    result = {"kafka_submissions_per_s": round(kafka_rate, 1),
              "http_submissions_per_s": round(http_rate, 1), "http_p99_ms": round(p99, 1),
              "limit_produce_per_s": round(limit, 1)}
    print("\n".join([
        f"Yizhan intake benchmark ({'quick' if args.quick else 'full'}): {n_kafka:,} Kafka and "
        f"{n_http:,} HTTP submissions; {where}; {os.cpu_count()} CPUs",
        f"CPU busy before the run (other processes, 1 s sample): {busy:.0%}"
        + ("  ← busy machine: figures are disturbed" if busy > 0.2 else ""),
        f"{'measure':<26}{'value':>12}  how", "-" * 90,
        f"{'limit_produce_per_s':<26}{limit:>12,.0f}  aiokafka produce of the same messages",
        f"{'kafka_submissions_per_s':<26}{kafka_rate:>12,.0f}  agent's first batch → every "
        "outcome durable", f"{'  / limit':<26}{kafka_rate / limit:>12.2f}",
        f"{'http_submissions_per_s':<26}{http_rate:>12,.0f}  POST /v1/visits, "
        f"{HTTP_CONCURRENCY} concurrent, in process",
        f"{'http_p99_ms':<26}{p99:>12.1f}",
        f"target kafka_submissions_per_s ≥ 2,000: "
        f"{'met' if kafka_rate >= 2000 else 'NOT MET'}",
    ]), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="under a minute")
    parser.add_argument("--kafka", type=int, default=0, help="Kafka submissions")
    parser.add_argument("--http", type=int, default=0, help="HTTP submissions")
    parser.add_argument("--no-fsync", action="store_true",
                        help="embedded PostgreSQL without fsync (not durable)")
    parser.add_argument("--log-level", default=os.environ.get("YIZHAN_BENCH_LOG_LEVEL",
                                                              "warning"))
    args = parser.parse_args(argv)
    configure_logging("console" if sys.stderr.isatty() else "json", args.log_level)
    result = bench_run(main_async(args))
    print("RESULT " + json.dumps({k: result[k] for k in RESULT_KEYS}), flush=True)


if __name__ == "__main__":
    main()
