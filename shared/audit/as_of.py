"""As-of: the state of a case, or a unit's queue, at a global position or a moment, rebuilt by
replaying the events up to that point with the domain's own ``evolve``.

``shared`` imports no service, so the caller hands in the evolve function (the cases service's
``services.cases.domain.evolve``); the replay itself is here. "As of a moment" means what the
log held then: every event recorded at or before it (recorded time follows position).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from typing import Generic, Protocol, TypeVar
from uuid import UUID

import asyncpg

from shared.audit.history import CaseNotFound
from shared.contracts import cases as _cases  # noqa: F401  (registers the case events)
from shared.contracts.cases import CASE_STREAM_PREFIX, CaseStatus, case_stream
from shared.contracts.envelope import RecordedEvent, chain_hash
from shared.contracts.registry import (
    DomainEvent,
    EventDataInvalid,
    UnknownEventType,
    registry,
)
from shared.eventstore.port import EventStore

S = TypeVar("S")
Evolve = Callable[[S | None, DomainEvent], S]
"""``evolve(state, event) -> state``: the domain's pure transition function."""
CLOSED = frozenset({CaseStatus.CLOSED, CaseStatus.WITHDRAWN})
"""Statuses that take a case out of every queue."""


class Queued(Protocol):
    """What a queue needs of a case's state."""

    @property
    def unit(self) -> str: ...

    @property
    def status(self) -> str: ...


Q = TypeVar("Q", bound=Queued)


@dataclass(frozen=True)
class CaseAsOf(Generic[S]):
    """A case's state after every one of its events at or below ``position``."""

    case_id: UUID
    position: int
    version: int
    last_event_position: int
    state: S
    altered_positions: tuple[int, ...] = ()
    """The case's events whose content no longer gives their recorded hash (altered in the
    store): the state shown was replayed from them, and may never have been the case's."""
    missing_versions: tuple[int, ...] = ()
    """Versions of the case below ``version`` the store no longer holds (removed): likewise."""


@dataclass(frozen=True)
class QueueAsOf(Generic[Q]):
    """The open cases a unit held as of ``position``."""

    unit: str
    position: int
    cases: tuple[Q, ...]


class PositionBeyondLog(ValueError):
    """An as-of position the log has not reached: the state there is not known yet."""


class ReplayFailed(ValueError):
    """An event on the way cannot be read (its data no longer fits its model, or its type is
    unknown: altered in the store): no state can be replayed past it."""


def _decode(event: RecordedEvent) -> DomainEvent:
    try:
        return registry.decode(event)
    except (UnknownEventType, EventDataInvalid) as exc:
        what = ("its type and schema version have no model"
                if isinstance(exc, UnknownEventType) else "its data does not fit the model")
        raise ReplayFailed(f"the event at position {event.position} ({event.stream_id} "
                           f"version {event.version}, {event.type}) cannot be read: {what}; "
                           "no state can be replayed past it (run `yizhan audit verify`)"
                           ) from exc


def replay(events: Iterable[RecordedEvent], evolve: Evolve[S]) -> S | None:
    """Fold recorded events (decoded and upcast by the registry) with ``evolve``;
    ``ReplayFailed`` naming an event that cannot be decoded."""
    decoded = (_decode(e) for e in events)
    return reduce(evolve, decoded, None)


async def case_as_of(store: EventStore, case_id: UUID, position: int,
                     evolve: Evolve[S]) -> CaseAsOf[S]:
    """The case as of ``position``; ``CaseNotFound`` if it did not exist yet."""
    events = await store.read_stream(case_stream(case_id), to_position=position)
    state = replay(events, evolve)
    if state is None:
        raise CaseNotFound(f"case {case_id} has no events at or before position {position}")
    altered = tuple(e.position for e in events
                    if chain_hash(e.prev_hash, e.canonical_bytes()) != e.hash)
    held = {e.version for e in events}
    missing = tuple(v for v in range(1, events[-1].version) if v not in held)
    return CaseAsOf(case_id, position, events[-1].version, events[-1].position, state,
                    altered, missing)


async def queue_as_of(store: EventStore, unit: str, position: int,
                      evolve: Evolve[Q]) -> QueueAsOf[Q]:
    """The open cases (not closed or withdrawn) held by ``unit`` as of ``position``: every
    case stream replayed up to it."""
    states: dict[str, Q] = {}
    async for batch in store.read_all(0, batch_size=5000, to_position=position):
        for event in batch:
            if event.stream_id.startswith(CASE_STREAM_PREFIX):
                states[event.stream_id] = evolve(states.get(event.stream_id), _decode(event))
    held = tuple(s for s in states.values() if s.unit == unit and s.status not in CLOSED)
    return QueueAsOf(unit, position, held)


async def position_at(pool: asyncpg.Pool, at: datetime) -> int:
    """The last global position recorded at or before ``at`` (0 before the first event)."""
    found = await pool.fetchval(
        "SELECT coalesce(max(position), 0) FROM events WHERE recorded_at <= $1", at)
    return int(found)


async def head_position(pool: asyncpg.Pool) -> int:
    """The log's last position."""
    return int(await pool.fetchval("SELECT coalesce(max(position), 0) FROM events"))
