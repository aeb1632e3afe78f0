"""What the demo did and what the system says about it, and how it is printed."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from services.demo.client import Retried


@dataclass
class UnitSummary:
    """A supervisor's dashboard of one unit, read from the projections API."""

    level: str
    unit: str
    name: str
    reader: str
    subtree_total: int
    own_open: int
    overdue: int
    by_status: dict[str, int]
    sla: list[dict[str, Any]]
    handoffs: list[dict[str, Any]]


@dataclass
class Tally:
    """What the demo sent and how it was answered."""

    visits_counter: int = 0
    visits_kafka: int = 0
    cases_counter: int = 0
    cases_kafka: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    retried: Counter[Retried] = field(default_factory=Counter)
    """Answers a retry got past (409 clashes, 504 waits, transport errors, 5xx)."""
    endings: Counter[str] = field(default_factory=Counter)
    kafka_results: int = 0
    kafka_malformed: int = 0
    kafka_missing_cases: int = 0


@dataclass
class AuditResult:
    ok: bool
    events_checked: int
    head_position: int
    checkpoints_checked: int
    head_hash: str
    problem: str | None = None


@dataclass
class DemoReport:
    """Everything `yizhan demo` prints: the work done, the dashboards, the audit."""

    days: int
    scale: float
    seed: int
    run: str
    elapsed_s: float
    tally: Tally
    rejections: Counter[str]
    rejected_seen: int
    events_before: int
    events_after: int
    projection_position: int
    city_cases_before: int
    city_cases_after: int
    dashboards: list[UnitSummary]
    audit: AuditResult

    @property
    def cases_opened(self) -> int:
        return self.tally.cases_counter + self.tally.cases_kafka

    @property
    def counts_match(self) -> bool:
        """The projections' city total grew by exactly the cases this run opened, and the
        projections have applied every event in the store."""
        grew = self.city_cases_after - self.city_cases_before
        return grew == self.cases_opened and self.projection_position == self.events_after

    @property
    def ok(self) -> bool:
        return (self.audit.ok and self.counts_match and not self.tally.failures
                and not self.server_errors
                and self.rejected_seen == self.tally.kafka_malformed)

    @property
    def server_errors(self) -> int:
        """500s a retry got past: each is a defect, whatever the retry then got."""
        return sum(n for key, n in self.tally.retried.items() if key.status == 500)


def _work(r: DemoReport) -> list[str]:
    t = r.tally
    commands = sum(t.commands.values())
    verbs = ", ".join(f"{verb} {n:,}" for verb, n in t.commands.most_common())
    endings = ", ".join(f"{k} {n:,}" for k, n in t.endings.most_common())
    return [
        f"yizhan demo: {r.days} day(s) at scale {r.scale:g} "
        f"(≈{round(1560 * r.scale):,} contacts/day of docs/domain.md's 1,560), seed {r.seed}, "
        f"run {r.run}, {r.elapsed_s:,.1f} s — SYNTHETIC residents",
        f"  counter visits  {t.visits_counter:,} over HTTP → {t.cases_counter:,} cases",
        f"  Kafka visits    {t.visits_kafka:,} from other systems → {t.cases_kafka:,} cases; "
        f"{t.kafka_results:,} results attached; {t.kafka_malformed:,} malformed sent, "
        f"{r.rejected_seen:,} seen on intake.rejected "
        f"({', '.join(f'{k} {n}' for k, n in sorted(r.rejections.items()))})",
        f"  officers' commands {commands:,}: {verbs}",
        f"  where the cases ended: {endings}",
        f"  failed requests: {sum(t.failures.values()):,}"
        + ("".join(f"\n    {n:,} × {k}" for k, n in t.failures.most_common(8))),
        f"  retried requests: {sum(t.retried.values()):,}"
        + (f" ({r.server_errors:,} server errors: see the services' logs)"
           if r.server_errors else "")
        + ("".join(f"\n    {n:,} × {k}" for k, n in t.retried.most_common(8))),
    ]


def _store(r: DemoReport) -> list[str]:
    grew = r.city_cases_after - r.city_cases_before
    return [
        f"event store     {r.events_before:,} → {r.events_after:,} events "
        f"(+{r.events_after - r.events_before:,}); projections at position "
        f"{r.projection_position:,}",
        f"city cases      {r.city_cases_before:,} → {r.city_cases_after:,} (+{grew:,}; this "
        f"run opened {r.cases_opened:,}): {'match' if r.counts_match else 'MISMATCH'}",
    ]


def _unit(s: UnitSummary) -> list[str]:
    statuses = ", ".join(f"{k} {n:,}" for k, n in sorted(s.by_status.items(),
                                                         key=lambda kv: -kv[1]))
    lines = [f"{s.level:<9} {s.unit} {s.name}  (read as {s.reader})",
             f"    cases {s.subtree_total:,} in its jurisdiction: {statuses}",
             f"    own queue {s.own_open:,} open; overdue {s.overdue:,}"]
    for row in s.sla + s.handoffs:
        if "error" in row:
            lines.append(f"    (not available: {row['error']})")
    for row in (r for r in s.sla if "error" not in r):
        rate = row.get("on_time_rate")
        lines.append(f"    SLA {row.get('level', '?'):<9} handled {row.get('handled', 0):>6,}  "
                     f"on time {'-' if rate is None else f'{rate:.0%}'}  "
                     f"median {_secs(row.get('median_seconds'))}  breaches "
                     f"{row.get('breaches', 0):,}")
    for row in (r for r in s.handoffs if "error" not in r):
        lines.append(f"    hand-offs {row['from_level']}→{row['to_level']}: {row['moves']:,} "
                     f"moves, {row['waiting']:,} waiting, median "
                     f"{_secs(row.get('median_seconds'))}")
    return lines


def _secs(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.1f} s"


def _audit(a: AuditResult) -> list[str]:
    if a.ok:
        return [f"audit verify    OK: {a.events_checked:,} events to position "
                f"{a.head_position:,}, {a.checkpoints_checked:,} signed checkpoint(s); head hash "
                f"{a.head_hash[:16]}…"]
    return [f"audit verify    TAMPERED at position {a.head_position}: {a.problem}"]


def format_report(report: DemoReport) -> str:
    """The report as text: the work, the store, four dashboards, the audit."""
    lines = [*_work(report), "", *_store(report), ""]
    for summary in report.dashboards:
        lines += _unit(summary)
    return "\n".join([*lines, "", *_audit(report.audit)])


def print_report(report: DemoReport) -> None:
    """Write the report to stdout (the CLI's output)."""
    sys.stdout.write(format_report(report) + "\n")
    sys.stdout.flush()
