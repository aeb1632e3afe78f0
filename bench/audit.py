#!/usr/bin/env python
"""Audit benchmark: verifying the log (``verify_log``, hash chain from genesis) next to its
limit (SHA-256 over the same canonical bytes in a tight loop, in this process), and as-of
reads of a case with 50 events (read its stream from PostgreSQL and replay it with the
domain's ``evolve``), in one run on one PostgreSQL server.

    python bench/audit.py --quick     # ~30,000 events, under a minute
    python bench/audit.py             # ~300,000 events

The log is the projections benchmark's workload (real domain events, docs/domain.md's service mix)
bulk-loaded with COPY (then vacuumed, as autovacuum would have done to a log in service), plus
one case of exactly 50 events appended through the store. Verify and its limit are measured in
turns, five times each after one verify not counted; each figure is the median. With no
``DATABASE_URL`` an embedded PostgreSQL is started (fsync off: every measure here only reads).
Progress goes to stderr; the table and the last line ``RESULT {json}`` to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.cases.domain import AcceptCase, AddNote, SubmitCase, decide_all, evolve
from shared.audit import case_as_of
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.contracts.registry import to_new_event
from shared.eventstore.migrate import migrate
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.eventstore.verify import verify_log
from shared.logging import configure_logging, get_logger
from shared.reference import Role, load_reference

# The workload generator is the projections benchmark's (run from a checkout)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import run as bench_run
from bench.projections import create_database, generate, load_events, with_db

log = get_logger("bench.audit")
RESULT_KEYS = ("verify_eps", "asof_p99_ms", "asof_p50_ms", "limit_sha256_eps", "events")
STATION = "530102001001"
CLERK = Actor(user_id=f"clerk.{STATION}.a", role=Role.STATION_CLERK, unit=STATION)


async def append_fifty(store: PostgresEventStore) -> uuid.UUID:
    """One case of exactly 50 events: submitted, accepted (+ its clock), 47 notes."""
    case_id, start = uuid.uuid4(), datetime(2026, 3, 2, 1, tzinfo=UTC)
    commands: list[Any] = [
        SubmitCase(case_id=case_id, at=start, actor=CLERK, tracking_no="KM-BENCH-50",
                   service_code="job_referral", visit_id=uuid.uuid4(), station=STATION,
                   applicant=EncryptedApplicant(subject_id="s-50", id_hash="h")),
        AcceptCase(case_id=case_id, at=start + timedelta(minutes=1), actor=CLERK)]
    commands += [AddNote(case_id=case_id, at=start + timedelta(minutes=2 + i), actor=CLERK,
                         text=f"第{i}次电话回访（合成数据）") for i in range(47)]
    events = decide_all(None, commands, load_reference())
    assert len(events) == 50
    await store.append(f"case-{case_id}", 0, [to_new_event(e, occurred_at=e.at) for e in events])
    return case_id


async def canonical_blobs(pool: Any) -> list[bytes]:
    """prev_hash ‖ canonical bytes of every event: exactly what the chain hashes."""
    store = PostgresEventStore(pool)
    blobs: list[bytes] = []
    async for batch in store.read_all(0, batch_size=20_000):
        blobs += [e.prev_hash.encode() + e.canonical_bytes() for e in batch]
    return blobs


def limit_sha256(blobs: list[bytes]) -> float:
    sha256 = hashlib.sha256
    started = time.perf_counter()
    for blob in blobs:
        sha256(blob).hexdigest()
    return len(blobs) / (time.perf_counter() - started)


async def measure_verify(pool: Any, head: int) -> float:
    started = time.perf_counter()
    report = await verify_log(pool, None)
    assert report.ok and report.head_position == head, report
    return head / (time.perf_counter() - started)


async def measure_as_of(store: PostgresEventStore, case_id: uuid.UUID, head: int,
                        n: int) -> list[float]:
    timings = []
    for i in range(n):
        started = time.perf_counter()
        found = await case_as_of(store, case_id, head - (i % 3), evolve)
        timings.append((time.perf_counter() - started) * 1000)
        assert found.version >= 48
    return timings


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def run(admin_url: str, cases: int, repeats: int) -> dict[str, Any]:
    name = await create_database(admin_url, "yizhan_bench_audit")
    dsn = with_db(admin_url, name)
    await migrate(dsn)
    mark = time.perf_counter()
    rows = generate(cases, 7, max(1, min(4, os.cpu_count() or 1)))
    await load_events(dsn, rows)
    log.info("bench.audit.loaded", events=len(rows), seconds=round(time.perf_counter() - mark, 1))
    pool = await create_pool(dsn, min_size=2, max_size=4)
    store = PostgresEventStore(pool)
    try:
        case_id = await append_fifty(store)
        head = int(await pool.fetchval("SELECT max(position) FROM events"))
        blobs = await canonical_blobs(pool)
        # In turns, so that a change in the machine's speed meanwhile touches both alike; after
        # one verify not counted (its connections' first statements and catalog look-ups)
        await measure_verify(pool, head)
        verifies, limits = [], []
        for _ in range(repeats):
            verifies.append(await measure_verify(pool, head))
            limits.append(limit_sha256(blobs))
        verify, limit = statistics.median(verifies), statistics.median(limits)
        await measure_as_of(store, case_id, head, 20)  # warm-up
        timings = await measure_as_of(store, case_id, head, 500)
    finally:
        await store.close()
        await pool.close()
    return {"verify_eps": round(verify), "asof_p99_ms": round(p99(timings), 3),
            "asof_p50_ms": round(statistics.median(timings), 3),
            "limit_sha256_eps": round(limit), "events": head}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~30,000 events, under a minute")
    parser.add_argument("--cases", type=int, help="simulated cases (about 10 events each)")
    args = parser.parse_args()
    configure_logging("console", "info")
    cases = args.cases or (3_000 if args.quick else 30_000)
    with tempfile.TemporaryDirectory(prefix="yizhan-bench-audit-") as tmp:
        url = os.environ.get("DATABASE_URL")
        server = None
        if not url:
            from shared.runtime import EmbeddedPostgres

            server = EmbeddedPostgres(Path(tmp) / "postgres", durable=False).start()
            url = server.admin_url
        try:
            result = bench_run(run(url, cases, 5))
        finally:
            if server is not None:
                server.stop()
    ratio = result["verify_eps"] / result["limit_sha256_eps"]
    print(f"{'measure':<22}{'value':>14}")
    print(f"{'events in the log':<22}{result['events']:>14,}")
    print(f"{'verify_eps':<22}{result['verify_eps']:>14,}  ({ratio:.2f} x the limit)")
    print(f"{'limit_sha256_eps':<22}{result['limit_sha256_eps']:>14,}")
    print(f"{'asof_p50_ms':<22}{result['asof_p50_ms']:>14}")
    print(f"{'asof_p99_ms':<22}{result['asof_p99_ms']:>14}  (a case with 50 events)")
    sys.stdout.flush()
    print("RESULT " + json.dumps({k: result[k] for k in RESULT_KEYS}))


if __name__ == "__main__":
    main()
