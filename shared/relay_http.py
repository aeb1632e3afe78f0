"""The relay process's HTTP face: ``/healthz``, ``/readyz`` and ``/metrics`` (it has no API).

Ready means the database answers and the relay is not stuck retrying: leading (publishing) and
standing by (another relay leads) are both ready; a relay whose last attempt failed (broker
unreachable, database error) is not, and ``/readyz`` says so (the error itself only in the
log: ``/readyz`` needs no login). The metrics are the log's head,
how far this relay name has published, and how far signed checkpoints cover the log: what an
operator alerts on (publishing lag) and what an auditor asks (events not yet pinned by a
signature).
"""

from __future__ import annotations

import time

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse

from shared.relay import Relay
from shared.service import (
    PROMETHEUS_TEXT,
    ReadinessCheck,
    create_app,
    database_ready,
    prometheus_metric,
)

_PROGRESS = """
SELECT (SELECT coalesce(max(position), 0) FROM events) AS head,
       (SELECT position FROM relay_positions WHERE relay = $1) AS relayed,
       (SELECT coalesce(max(position), 0) FROM event_checkpoints) AS signed
"""

operations = APIRouter(tags=["operations"])


@operations.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    relay: Relay = request.app.state.relay
    pool: asyncpg.Pool = request.app.state.pool
    row = await pool.fetchrow(_PROGRESS, relay.config.name)
    assert row is not None
    head, relayed, signed = int(row["head"]), int(row["relayed"] or 0), int(row["signed"])
    stats = relay.stats
    lines: list[str] = []
    lines += prometheus_metric("yizhan_relay_leader", "gauge",
                               "1 while this process leads (publishes), 0 while it stands by.",
                               int(relay.is_leader))
    lines += prometheus_metric("yizhan_relay_head_position", "gauge",
                               "Last position of the event log.", head)
    lines += prometheus_metric("yizhan_relay_position", "gauge",
                               "Last position published to Kafka (by whichever relay leads).",
                               relayed)
    lines += prometheus_metric("yizhan_relay_lag_events", "gauge",
                               "Events in the log not yet published.", max(0, head - relayed))
    lines += prometheus_metric("yizhan_relay_published_total", "counter",
                               "Events this process has published.", stats.published)
    lines += prometheus_metric("yizhan_relay_republished_from_zero_total", "counter",
                               "Times this process found a broker that lost its log and published "
                               "everything again.", stats.republished_from_zero)
    lines += prometheus_metric("yizhan_relay_errors_total", "counter",
                               "Failed attempts (broker or database), each retried with back-off.",
                               stats.errors)
    lines += prometheus_metric("yizhan_checkpoint_position", "gauge",
                               "Last position covered by a signed checkpoint.", signed)
    lines += prometheus_metric("yizhan_checkpoint_lag_events", "gauge",
                               "Events not yet covered by a signed checkpoint.",
                               max(0, head - signed))
    return PlainTextResponse("\n".join(lines) + "\n", media_type=PROMETHEUS_TEXT)


def relay_ready(relay: Relay) -> ReadinessCheck:
    """Not stuck retrying. The error itself (broker or database addresses and names) is in the
    relay's log (``relay.error``), not in the answer of ``/readyz``, which needs no login."""
    async def check() -> str | None:
        failing = relay.stats.failing_since
        if failing is None:
            return None
        return f"relay: retrying for {time.time() - failing:.0f} s (the error is in its log)"

    return check


def relay_app(relay: Relay, pool: asyncpg.Pool) -> FastAPI:
    return create_app(
        "Yizhan relay", [operations], state={"relay": relay, "pool": pool},
        readiness=[database_ready(pool), relay_ready(relay)],
        description="The relay publishes the event log to Kafka in position order (one leads, "
                    "others stand by) and signs checkpoints. Health, readiness and metrics.",
    )
