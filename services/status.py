"""``yizhan status``: how far every part of the pipeline has got, read from PostgreSQL alone.

For the engineer on call: it answers with the services down (that is when it is needed), and
says in one screen whether each consumer of the log keeps up with it:

- the log's head and when its last event was recorded;
- each relay name's published position (the log → Kafka hop);
- signed checkpoints: how much of the log they do not cover yet;
- each idempotent consumer (the SLA clock's agent, the projections' agent, …): its furthest
  position over its scopes, and when it last moved; a **problem** if its positions on a topic
  were kept for another partition count than the topic's (``partitions``, from settings): its
  agent refuses to start until `yizhan consumers repartition` moves them;
- the read models: active set, watermark, lag, parked events;
- the SLA clock: timers due longer ago than a tick or two that have not fired;
- intake: rejected messages whose dead letter is not yet on ``intake.rejected``.

A part is **stalled** when work has waited for it longer than ``stale_after_s`` and it has not
moved for as long (an idle part is not stalled). ``check`` (``--check``) makes the command exit
1 when any part is stalled or has a problem, for a cron job or a container health probe;
``--json`` prints the same as one JSON object."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime

from shared.consumer import (
    PositionsKeptForAnotherPartitionCount,
    judge_layout,
    partition_of,
    topic_positions,
)
from shared.eventstore.postgres import Conn

_HEAD = """
SELECT coalesce(max(position), 0) AS head,
       (SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1) AS last_at, now() AS now
FROM events
"""
_NEXT_AT = "SELECT recorded_at FROM events WHERE position > $1 ORDER BY position LIMIT 1"


@dataclass(frozen=True)
class Part:
    """One line of the report: what it is, where it stands, and whether it is stalled."""

    name: str
    position: int | None
    behind: int | None
    waiting_s: float | None
    """How long the oldest work it has not done has waited (None: none waits)."""
    detail: str
    stalled: bool = False
    problem: str | None = None
    """Something that stops the part whether work waits or not (None: nothing)."""


@dataclass(frozen=True)
class Status:
    head: int
    last_recorded_at: datetime | None
    parts: list[Part] = field(default_factory=list)

    @property
    def stalled(self) -> list[Part]:
        return [p for p in self.parts if p.stalled]

    @property
    def problems(self) -> list[Part]:
        return [p for p in self.parts if p.problem is not None]

    def as_json(self) -> str:
        return json.dumps({"head": self.head, "last_recorded_at": self.last_recorded_at,
                           "stalled": [p.name for p in self.stalled],
                           "problems": {p.name: p.problem for p in self.problems},
                           "parts": [asdict(p) for p in self.parts]},
                          default=str, ensure_ascii=False)


async def _table_exists(conn: Conn, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def _waiting_since(conn: Conn, position: int, now: datetime) -> float | None:
    """Seconds since the first event after ``position`` was recorded (None: there is none)."""
    at = await conn.fetchval(_NEXT_AT, position)
    return None if at is None else max(0.0, (now - at).total_seconds())


def _age(now: datetime, at: datetime | None) -> str:
    if at is None:
        return "never"
    seconds = max(0.0, (now - at).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _stalled(waiting_s: float | None, moved_at: datetime | None, now: datetime,
             stale_after_s: float) -> bool:
    if waiting_s is None or waiting_s <= stale_after_s:
        return False
    return moved_at is None or (now - moved_at).total_seconds() > stale_after_s


async def _layout_problems(conn: Conn, partitions: Mapping[str, int]) -> dict[str, str]:
    """Per consumer, why its positions on a topic of ``partitions`` do not fit its count."""
    if not partitions or not await _table_exists(conn, "consumer_partition_counts"):
        return {}
    recorded = {(r["consumer"], r["topic"]): r["partitions"] for r in await conn.fetch(
        "SELECT consumer, topic, partitions FROM consumer_partition_counts")}
    used: set[tuple[str, str]] = set()
    for consumer, scope in await conn.fetch(
            "SELECT consumer, scope FROM consumer_positions WHERE position > 0"):
        used |= {(consumer, topic) for topic in partitions
                 if partition_of(scope, topic) is not None}
    problems: dict[str, str] = {}
    for consumer, topic in sorted(used | set(recorded)):
        if topic not in partitions:
            continue
        try:
            await judge_layout(conn, consumer, topic, recorded.get((consumer, topic)),
                               await topic_positions(conn, consumer, topic), partitions[topic])
        except PositionsKeptForAnotherPartitionCount as problem:
            problems.setdefault(consumer, str(problem))
    return problems


async def read_status(conn: Conn, *, stale_after_s: float = 60.0,
                      partitions: Mapping[str, int] | None = None) -> Status:
    """Everything ``yizhan status`` reports, from one connection (read only). ``partitions``:
    each topic's partition count (settings), against which consumers' positions are held."""
    row = await conn.fetchrow(_HEAD)
    assert row is not None
    head, last_at, now = int(row["head"]), row["last_at"], row["now"]
    status = Status(head, last_at)
    parts = status.parts

    for relay, position, updated in await conn.fetch(
            "SELECT relay, position, updated_at FROM relay_positions ORDER BY relay"):
        waiting = await _waiting_since(conn, position, now)
        parts.append(Part(f"relay {relay}", position, head - position, waiting,
                          f"published up to {position:,}; moved {_age(now, updated)}",
                          _stalled(waiting, updated, now, stale_after_s)))

    cp = await conn.fetchrow("SELECT position, signed_at, key_id FROM event_checkpoints "
                             "ORDER BY position DESC LIMIT 1")
    signed = int(cp["position"]) if cp is not None else 0
    parts.append(Part("checkpoints", signed, head - signed,
                      await _waiting_since(conn, signed, now),
                      "no signed checkpoint yet" if cp is None else
                      f"signed up to {signed:,} {_age(now, cp['signed_at'])} "
                      f"(key {cp['key_id']})"))

    layout = await _layout_problems(conn, partitions or {})
    for consumer, position, scopes, moved in await conn.fetch(
            "SELECT consumer, max(position), count(*), max(updated_at) "
            "FROM consumer_positions GROUP BY consumer ORDER BY consumer"):
        waiting = await _waiting_since(conn, position, now)
        parts.append(Part(f"consumer {consumer}", position, head - position, waiting,
                          f"furthest position {position:,} over {scopes} scope(s); "
                          f"moved {_age(now, moved)}",
                          _stalled(waiting, moved, now, stale_after_s), layout.get(consumer)))

    active = (await conn.fetchval("SELECT active_schema FROM projections.state")
              if await _table_exists(conn, "projections.state") else None)
    if active is not None and not await _table_exists(conn, f"{active}.progress"):
        parts.append(Part("projections", None, None, None, "no read models yet (the "
                          "projections service makes them when it first starts)"))
    elif active is not None:
        from services.projections.progress import read_progress

        progress = await read_progress(conn)
        moved = await conn.fetchval(
            f"SELECT updated_at FROM {progress.schema}.progress WHERE name = 'watermark'")
        waiting = progress.lag_seconds if progress.lag_events else None
        parts.append(Part(
            "projections", progress.position, progress.lag_events, waiting,
            f"active {progress.schema} (generation {progress.generation}); watermark "
            f"{progress.position:,}, {progress.lag_seconds:.1f} s behind; {progress.parked} parked "
            f"event(s)", _stalled(waiting, moved, now, stale_after_s)))

    if await _table_exists(conn, "sla_due"):
        due = await conn.fetchrow(
            "SELECT count(*) AS n, min(least(CASE WHEN NOT warned THEN warn_at END, "
            "CASE WHEN NOT breached THEN due_at END)) AS oldest FROM sla_due "
            "WHERE (NOT warned AND warn_at <= now()) OR (NOT breached AND due_at <= now())")
        assert due is not None
        waiting = None if due["oldest"] is None else (now - due["oldest"]).total_seconds()
        parts.append(Part(
            "sla clock", None, int(due["n"]), waiting,
            f"{due['n']:,} timer(s) due and not yet fired"
            + (f", the oldest due {_age(now, due['oldest'])}" if due["oldest"] else ""),
            waiting is not None and waiting > stale_after_s))

    if await _table_exists(conn, "intake_messages"):
        dead = await conn.fetchrow(
            "SELECT count(*) AS n, min(recorded_at) AS oldest FROM intake_messages "
            "WHERE outcome = 'rejected' AND published_at IS NULL")
        assert dead is not None
        waiting = None if dead["oldest"] is None else (now - dead["oldest"]).total_seconds()
        counts = {r["outcome"]: int(r["n"]) for r in await conn.fetch(
            "SELECT outcome, count(*) AS n FROM intake_messages GROUP BY outcome")}
        parts.append(Part(
            "intake dead letters", None, int(dead["n"]), waiting,
            f"{dead['n']:,} rejected message(s) not yet on the dead-letter topic; Kafka "
            f"messages so far: {counts.get('accepted', 0):,} accepted, "
            f"{counts.get('duplicate', 0):,} duplicate, {counts.get('rejected', 0):,} rejected",
            waiting is not None and waiting > stale_after_s))
    return status


def render(status: Status) -> str:
    """The report as the terminal shows it."""
    lines = [f"{'log':<28} head {status.head:,}; last event recorded "
             + (status.last_recorded_at.isoformat(timespec="seconds")
                if status.last_recorded_at else "never")]
    for part in status.parts:
        behind = "" if part.behind is None else f"  [{part.behind:,} behind]"
        flag = "  STALLED" if part.stalled else ""
        lines.append(f"{part.name:<28} {part.detail}{behind}{flag}")
        if part.problem is not None:
            lines.append(f"{'':<28} PROBLEM: {part.problem}")
    problems = status.problems
    if problems:
        lines.append(f"problems: {', '.join(p.name for p in problems)} (cannot run as they "
                     "are; see PROBLEM above)")
    stalled = status.stalled
    lines.append(("nothing stalled" if problems else "all parts keep up") if not stalled else
                 f"stalled: {', '.join(p.name for p in stalled)} (waited longer than allowed "
                 "and did not move meanwhile)")
    return "\n".join(lines)
