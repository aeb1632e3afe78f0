"""Prometheus text exposition of intake's Kafka ingress: what came in and what became of it."""

from __future__ import annotations

from services.intake.ingress import IngressStats
from shared.service import prometheus_metric

_COUNTERS = (
    ("received", "Messages read from intake.submissions (redeliveries included)."),
    ("accepted", "Messages that opened a visit's cases or attached a result."),
    ("duplicates", "Messages repeating an idempotency key with the same payload."),
    ("rejected", "Messages refused, with reasons, and sent to intake.rejected."),
    ("redelivered", "Messages already handled, delivered again (skipped)."),
    ("published", "Rejections published to intake.rejected."),
    ("offsets_reused", "Messages at an offset that held another one: the broker lost its log."),
    ("swept", "Rejections published by the periodic sweep: their message was lost unpublished."),
    ("batches", "Batches handled."),
)


def render(stats: IngressStats | None, failures: int) -> str:
    """The text format (version 0.0.4); ``stats`` None while no agent runs in this process."""
    counts = stats or IngressStats()
    lines: list[str] = []
    for name, help_ in _COUNTERS:
        lines += prometheus_metric(f"yizhan_intake_messages_{name}_total", "counter", help_,
                                   getattr(counts, name))
    lines += prometheus_metric("yizhan_intake_batch_failures_total", "counter",
                               "Batches that failed and were retried (held, never skipped).",
                               failures)
    return "\n".join(lines) + "\n"
