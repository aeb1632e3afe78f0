"""The SLA clock's two halves, both idempotent.

- ``apply_sla_events``: keeps the ``sla_due`` table from timer events on the log (consumed from
  ``case.events`` by an idempotent agent: positions, not Faust tables, make it exactly-once).
- ``fire_due``: finds timers whose warning or due time has passed and sends the domain's timer
  commands, then the escalation a breach owes where the catalogue asks, through the same
  handler as people's commands. Firing twice records once: the domain ignores a timer that
  already fired, and the command ids are derived from the timer. A row is marked breached by
  the clock, once its case owes nothing more for the breach, so a breach whose escalation
  failed stays due.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from services.cases.domain import (
    Case,
    Command,
    escalations_owed,
    sla_clock_actor,
    timer_commands_due,
)
from services.cases.domain.errors import Rejection
from services.cases.handlers import CaseCommands
from shared.contracts.cases import Actor, SlaBreached
from shared.contracts.envelope import RecordedEvent
from shared.contracts.registry import DomainEvent
from shared.eventstore.postgres import Conn
from shared.logging import get_logger
from shared.reference import Reference

log = get_logger(__name__)
TIMER_EVENTS = frozenset({"SlaTimerScheduled", "SlaClockPaused", "SlaClockStopped",
                          "SlaWarningRaised", "SlaBreached"})


@dataclass(frozen=True)
class RowChange:
    """One change to ``sla_due``: an SQL statement and its arguments."""

    sql: str
    args: tuple[object, ...]


def sla_change(event: RecordedEvent) -> RowChange | None:
    """The change a timer event makes to ``sla_due`` (pure)."""
    d = event.data
    case_id = uuid.UUID(d["case_id"]) if event.type in TIMER_EVENTS else None
    match event.type:
        case "SlaTimerScheduled":
            return RowChange(
                "INSERT INTO sla_due (case_id, timer_no, level, unit, warn_at, due_at, position)"
                " VALUES ($1, $2, $3, $4, $5::text::timestamptz, $6::text::timestamptz, $7)"
                " ON CONFLICT (case_id) DO UPDATE SET timer_no = EXCLUDED.timer_no,"
                " level = EXCLUDED.level, unit = EXCLUDED.unit, warn_at = EXCLUDED.warn_at,"
                " due_at = EXCLUDED.due_at, warned = false, breached = false,"
                " position = EXCLUDED.position WHERE sla_due.position < EXCLUDED.position",
                (case_id, d["timer_no"], d["level"], d["unit"], d["warn_at"], d["due_at"],
                 event.position))
        case "SlaClockPaused" | "SlaClockStopped":
            return RowChange("DELETE FROM sla_due WHERE case_id = $1 AND timer_no = $2",
                             (case_id, d["timer_no"]))
        case "SlaWarningRaised":
            return RowChange("UPDATE sla_due SET warned = true WHERE case_id = $1"
                             " AND timer_no = $2", (case_id, d["timer_no"]))
        case "SlaBreached":  # breached is the clock's to mark: an escalation may be owed
            return RowChange("UPDATE sla_due SET warned = true"
                             " WHERE case_id = $1 AND timer_no = $2", (case_id, d["timer_no"]))
    return None


async def apply_sla_events(conn: Conn, events: Sequence[RecordedEvent]) -> None:
    """Apply a batch of events (in position order) to ``sla_due``.

    Each change touches only its case's row, so changes to different cases commute: the batch
    goes in rounds (every case's first change, then every case's second, …), each round one
    pipelined ``executemany`` per statement, instead of a round trip per event."""
    per_case: dict[object, list[RowChange]] = {}
    for event in events:
        change = sla_change(event)
        if change is not None:
            per_case.setdefault(change.args[0], []).append(change)
    for k in range(max(map(len, per_case.values()), default=0)):
        statements: dict[str, list[tuple[object, ...]]] = {}
        for changes in per_case.values():
            if k < len(changes):
                statements.setdefault(changes[k].sql, []).append(changes[k].args)
        for sql, args in statements.items():
            await conn.executemany(sql, args)


def timer_command_id(command: Command, timer_no: int) -> uuid.UUID:
    return uuid.uuid5(command.case_id, f"sla:{timer_no}:{type(command).__name__}")


@dataclass
class FireReport:
    checked: int = 0
    warnings: int = 0
    breaches: int = 0
    escalations: int = 0
    failed: int = 0  # cases whose timers failed this tick (left due for the next)


_UNREACHABLE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError)
"""Failures of the database connection, not of one case: the tick ends (and is retried)."""


async def fire_due(
    commands: CaseCommands, conn: Conn, now: datetime, *, limit: int = 500
) -> FireReport:
    """Send every timer command due at ``now``, then any escalation owed; return what was
    recorded. The escalation is asked of the case after the breach, not sent in answer to it:
    if it failed (a crash, a conflict, the database away), the row is still due and the next
    tick finds it owed."""
    rows = await conn.fetch(
        "SELECT case_id, timer_no FROM sla_due WHERE (NOT warned AND warn_at <= $1)"
        " OR (NOT breached AND due_at <= $1) ORDER BY due_at LIMIT $2", now, limit)
    report = FireReport(checked=len(rows))
    ref: Reference = commands.ref
    actor = sla_clock_actor(ref)
    for row in rows:
        try:
            await _fire_case(commands, conn, row["case_id"], row["timer_no"], now, actor, ref,
                             report)
        except _UNREACHABLE:
            raise
        except Exception as exc:  # one case's failure must not stop every other case's clock
            report.failed += 1
            log.error("sla.case_failed", case_id=str(row["case_id"]), timer_no=row["timer_no"],
                      error=repr(exc))
    return report


async def _fire_case(commands: CaseCommands, conn: Conn, case_id: UUID, timer_no: int,
                     now: datetime, actor: Actor, ref: Reference, report: FireReport) -> None:
    """What one due row's case owes: its timer commands, then any escalation."""
    case, *_ = await commands.load(case_id)
    if case is None:
        return
    recorded = [event for command in timer_commands_due(case, now, actor)
                for event in await _fire(commands, command)]
    report.warnings += sum(e.event_type == "SlaWarningRaised" for e in recorded)
    report.breaches += sum(isinstance(e, SlaBreached) for e in recorded)
    if recorded:  # what the case owes now is asked of it as it is now
        case, *_ = await commands.load(case_id)
        if case is None:
            return
    owed = escalations_owed(case, now, actor, ref)
    for command in owed:
        report.escalations += bool(await _fire(commands, command))
    if not owed:
        await _owes_nothing(conn, case, timer_no)


async def _fire(commands: CaseCommands, command: Command) -> list[DomainEvent]:
    """Send one of the clock's commands; the events it recorded (none if it had been)."""
    timer_no = getattr(command, "timer_no", 0)
    try:
        done = await commands.handle(command, command_id=timer_command_id(command, timer_no))
    except Rejection as refused:  # the case moved on meanwhile: nothing to fire
        log.info("sla.fire_refused", case_id=str(command.case_id), command=type(command).__name__,
                 reason=refused.reason)
        return []
    return done.events


async def _owes_nothing(conn: Conn, case: Case, timer_no: int) -> None:
    """The row looked due, and its timer owes nothing (more): mark on the row what the case
    says its timer has had. A breach is marked only here, once no escalation is owed for it.
    And a level warned (or breached) before a pause or a return is not warned again on its new
    timer, which ``SlaTimerScheduled`` does not say, so the row has it "not warned" with the
    time past. Left so, it was picked first at every tick until the level moved on, and enough
    of them filled the tick's limit: no other timer fired (found in review)."""
    timer = case.timer
    if timer is None or timer.timer_no != timer_no:  # the row is behind the log: not ours
        return
    await conn.execute("UPDATE sla_due SET warned = warned OR $3, breached = breached OR $4"
                       " WHERE case_id = $1 AND timer_no = $2",
                       case.case_id, timer_no, timer.warned, timer.breached)
