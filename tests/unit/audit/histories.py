"""Random case histories made by the real domain (``decide``), put in an in-memory log."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from bench.projections import START, Simulator, metadata_of
from services.cases.domain import Command
from shared.contracts.cases import CaseEvent
from shared.contracts.envelope import RecordedEvent
from shared.contracts.registry import to_new_event
from shared.eventstore.memory import InMemoryEventStore
from shared.reference import Reference, load_reference

REF: Reference = load_reference()


Life = list[tuple[Command, list[CaseEvent]]]


def simulate(seed: int, cases: int = 1) -> list[Life]:
    """``cases`` case lives (each a list of (command, events)), driven by ``decide``."""
    sim = Simulator(REF, seed)
    return [sim.case(n, START + timedelta(hours=3 * n)) for n in range(1, cases + 1)]


async def logged(seed: int, cases: int = 1) -> tuple[InMemoryEventStore, list[uuid.UUID]]:
    """The lives appended to an in-memory store, commands of the cases interleaved."""
    store = InMemoryEventStore()
    lives = simulate(seed, cases)
    ids: list[uuid.UUID] = []
    for step in range(max(len(life) for life in lives)):
        for life in lives:
            if step >= len(life):
                continue
            command, events = life[step]
            case_id = command.case_id
            if step == 0:
                ids.append(case_id)
            meta = metadata_of(command, uuid.uuid4().hex)
            await store.append(f"case-{case_id}", None, [
                to_new_event(e, metadata=meta, occurred_at=e.at)
                for e in events])
    return store, ids


def recorded(seed: int, cases: int = 1) -> tuple[list[RecordedEvent], list[uuid.UUID]]:
    """Every recorded event of ``logged``, in position order (sync, for Hypothesis)."""
    store, ids = asyncio.run(logged(seed, cases))
    return list(store.events), ids
