"""Prometheus text exposition of the projection's progress and the live path's counters."""

from __future__ import annotations

from services.projections.live import LiveStats
from services.projections.progress import Progress
from shared.service import prometheus_metric


def render(progress: Progress, live: LiveStats | None, envelopes_parked: int = 0) -> str:
    """The text format (version 0.0.4) of every projections metric."""
    lines: list[str] = []
    lines += prometheus_metric("yizhan_projection_position", "gauge",
                               "Watermark: every event at or below it is applied.",
                               progress.position)
    lines += prometheus_metric("yizhan_projection_head_position", "gauge",
                               "Last position of the event log.", progress.head)
    lines += prometheus_metric("yizhan_projection_lag_events", "gauge",
                               "Events in the log not yet applied.", progress.lag_events)
    lines += prometheus_metric("yizhan_projection_lag_seconds", "gauge",
                               "Age of the oldest event not yet applied.", progress.lag_seconds)
    lines += prometheus_metric("yizhan_projection_generation", "gauge",
                               "Table-set generation (incremented at every rebuild swap).",
                               progress.generation)
    lines += prometheus_metric("yizhan_projection_parked_events", "gauge",
                               "Events parked (unknown type or version) in the database.",
                               progress.parked)
    stats = live or LiveStats()
    lines += prometheus_metric("yizhan_projection_events_applied_total", "counter",
                               "Events applied by this process's live path.", stats.applied)
    lines += prometheus_metric("yizhan_projection_events_duplicate_total", "counter",
                               "Events skipped as already applied (per-case version).",
                               stats.duplicates)
    lines += prometheus_metric("yizhan_projection_events_parked_total", "counter",
                               "Events parked by this process's live path.",
                               stats.parked + envelopes_parked)
    lines += prometheus_metric("yizhan_projection_gap_events_filled_total", "counter",
                               "Missing events read from the store to fill per-case gaps.",
                               stats.gaps_filled)
    return "\n".join(lines) + "\n"
