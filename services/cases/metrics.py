"""Prometheus text exposition of the cases service: the SLA clock (its timer and the agent that
keeps due times from the log) — what an operator needs to see that the clock is alive."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.service import prometheus_labelled, prometheus_metric
from shared.streaming import StreamStats

_UNFIRED = (
    "SELECT count(*) FILTER (WHERE NOT warned AND warn_at <= $1)"
    " + count(*) FILTER (WHERE NOT breached AND due_at <= $1) FROM sla_due")


@dataclass
class SlaTicks:
    """What the SLA clock's timer did."""

    ticks: int = 0
    failures: int = 0
    last_ok_at: float = 0.0  # unix time of the last tick that ran to the end
    warnings: int = 0
    breaches: int = 0
    escalations: int = 0
    case_failures: int = 0  # a case's timers failed in a tick that went on with the others


async def render(ticks: SlaTicks, agent_stats: StreamStats | None,
                 pool: asyncpg.Pool | None, now: datetime) -> str:
    """The text format (version 0.0.4) of every cases metric (``now``: the service's clock,
    which the timer fires by)."""
    agent = agent_stats or StreamStats()
    lines: list[str] = []
    if pool is not None:
        lines += prometheus_metric(
            "yizhan_cases_sla_timers_unfired", "gauge",
            "Warnings and breaches due by now and not yet recorded, or breaches still owed an"
            " escalation (grows if the clock stops).",
            float(await pool.fetchval(_UNFIRED, now) or 0))
    lines += prometheus_metric("yizhan_cases_sla_ticks_total", "counter",
                               "Ticks of the SLA timer.", ticks.ticks)
    lines += prometheus_metric("yizhan_cases_sla_tick_failures_total", "counter",
                               "Ticks that failed (retried at the next tick).", ticks.failures)
    lines += prometheus_metric("yizhan_cases_sla_case_failures_total", "counter",
                               "Cases whose due timers failed in a tick (logged as "
                               "sla.case_failed, retried at the next tick); the tick went on "
                               "with the other cases.", ticks.case_failures)
    lines += prometheus_metric("yizhan_cases_sla_last_tick_ok_timestamp_seconds", "gauge",
                               "Unix time of the last tick that ran to the end.",
                               ticks.last_ok_at)
    for kind, value in (("warnings", ticks.warnings), ("breaches", ticks.breaches),
                        ("escalations", ticks.escalations)):
        lines += prometheus_metric(f"yizhan_cases_sla_{kind}_fired_total", "counter",
                                   f"SLA {kind} recorded by this process's timer.", value)
    lines += prometheus_metric("yizhan_cases_sla_events_applied_total", "counter",
                               "Events the SLA agent applied (due times kept).", agent.applied)
    lines += prometheus_metric("yizhan_cases_sla_events_duplicate_total", "counter",
                               "Events skipped as already applied (by position).",
                               agent.duplicates)
    lines += prometheus_metric("yizhan_cases_sla_messages_parked_total", "counter",
                               "Messages on case.events that are not event envelopes.",
                               agent.parked)
    lines += prometheus_metric("yizhan_cases_sla_apply_errors_total", "counter",
                               "Failed applies of a batch (held and retried).",
                               agent.apply_errors)
    lines += prometheus_metric("yizhan_cases_sla_retrying", "gauge",
                               "1 while the agent holds a failing batch.", int(agent.retrying))
    lines += prometheus_labelled("yizhan_cases_sla_consumer_position", "gauge",
                                 "Last log position applied, per topic partition.", "scope",
                                 {k: float(v) for k, v in agent.positions.items()})
    return "\n".join(lines) + "\n"
