"""Faust entrypoints of the cases service: the agent that keeps SLA due times from the log (and
feeds the command cache, ``CaseCommands.observe``), and the timer that fires them. Both only
translate; the work is in ``sla_clock`` and ``handlers``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

import faust

from services.cases.bootstrap import CasesService
from services.cases.sla_clock import apply_sla_events, fire_due
from shared.contracts.envelope import RecordedEvent
from shared.eventstore.postgres import Conn
from shared.logging import get_logger
from shared.streaming import EventAgent, idempotent_agent, make_app

log = get_logger(__name__)
SLA_CONSUMER = "cases.sla-due"


def build_faust(
    service: CasesService, bootstrap_servers: str, *, clock: Callable[[], datetime] | None = None,
    app_id: str = "yizhan-cases",
) -> tuple[faust.App, EventAgent]:
    settings = service.settings
    # due times are kept for a timer ticking every sla_tick_s: no one waits on this consumer
    background = settings.kafka_background_fetch_max_wait_ms
    app = make_app(app_id, settings=settings, bootstrap_servers=bootstrap_servers,
                   fetch_max_wait_ms=background)
    assert service.pool is not None
    commands = service.commands

    async def apply(conn: Conn, events: Sequence[RecordedEvent]) -> None:
        await apply_sla_events(conn, events)
        commands.observe(events)  # the command cache learns new cases before their commands

    agent = idempotent_agent(app, topic=settings.topic_case_events, pool=service.pool,
                             consumer_name=SLA_CONSUMER, apply=apply,
                             max_wait_s=background / 1000)
    service.sla_agent = agent.stats
    now = clock or service.clock

    async def fire_sla_timers() -> None:
        await fire_sla_timers_once(service, now)

    app.timer(interval=settings.sla_tick_s)(fire_sla_timers)
    return app, agent


async def fire_sla_timers_once(service: CasesService, now: Callable[[], datetime]) -> bool:
    """One tick of the SLA clock; False if it failed. A failure (the database away, a timer
    the domain refuses) is logged and left to the next tick, which finds the same timers due:
    an exception escaping a Faust timer crashes the whole app, and with it every later tick
    (found in review: the clock stopped for good after a database outage)."""
    assert service.pool is not None
    ticks = service.sla_ticks
    ticks.ticks += 1
    try:
        async with service.pool.acquire() as conn:
            report = await fire_due(service.commands, conn, now())
    except Exception as exc:
        ticks.failures += 1
        log.error("sla.tick_failed", error=repr(exc), retry_in_s=service.settings.sla_tick_s)
        return False
    ticks.last_ok_at = time.time()
    ticks.warnings += report.warnings
    ticks.breaches += report.breaches
    ticks.escalations += report.escalations
    ticks.case_failures += report.failed
    if report.warnings or report.breaches or report.escalations or report.failed:
        log.info("sla.fired", warnings=report.warnings, breaches=report.breaches,
                 escalations=report.escalations, cases_failed=report.failed)
    return True
