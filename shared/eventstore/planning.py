"""The pure heart of appending, shared by the PostgreSQL store and the in-memory fake.

Given a batch of pending appends (group commit), the log's head, each stream's current version
and the already-stored events that carry any of the batch's event ids, decide for each append:
written (with its rows, positions and chained hashes), already applied (idempotent retry) or
refused. Appends are judged in order, as if each ran alone after the previous ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shared.contracts.envelope import (
    EncodedEvent,
    NewEvent,
    RecordedEvent,
    canonical_bytes,
    canonical_time,
    chain_hash,
)
from shared.eventstore.errors import AppendError, EventIdReused, WrongExpectedVersion
from shared.eventstore.port import AppendResult, StreamAppend


@dataclass(frozen=True, slots=True)
class StoredId:
    """Where an event id already lives."""

    stream_id: str
    version: int
    position: int


def encode(event: NewEvent | EncodedEvent) -> EncodedEvent:
    return event if isinstance(event, EncodedEvent) else EncodedEvent.of(event)


def encode_appends(appends: Sequence[StreamAppend]) -> list[StreamAppend]:
    """Canonicalise every event up front (outside any lock); refuse a stream named twice."""
    seen: set[str] = set()
    out = []
    for part in appends:
        if part.stream_id in seen:
            raise ValueError(f"stream {part.stream_id} appears twice in one append")
        seen.add(part.stream_id)
        out.append(StreamAppend(part.stream_id, part.expected_version,
                                [encode(e) for e in part.events]))
    return out


@dataclass
class BatchPlan:
    rows: list[RecordedEvent] = field(default_factory=list)
    outcomes: list[list[AppendResult] | AppendError] = field(default_factory=list)

    @property
    def head_hash(self) -> str | None:
        return self.rows[-1].hash if self.rows else None


def plan_batch(
    batch: Sequence[Sequence[StreamAppend]],
    *,
    head_position: int,
    head_hash: str,
    versions: Mapping[str, int],
    stored_ids: Mapping[uuid.UUID, StoredId],
    now: datetime,
) -> BatchPlan:
    """Plan a batch of (possibly multi-stream) appends. Pure: no I/O, no clock."""
    plan = BatchPlan()
    current = dict(versions)
    known = dict(stored_ids)
    position, prev = head_position, head_hash
    now_text = canonical_time(now)  # every event of a batch is recorded at the same moment
    for appends in batch:
        try:
            replay = _already_applied(appends, known)
            if replay is not None:
                plan.outcomes.append(replay)
                continue
            for part in appends:
                actual = current.get(part.stream_id, 0)
                if part.expected_version is not None and part.expected_version != actual:
                    raise WrongExpectedVersion(part.stream_id, part.expected_version, actual)
        except AppendError as refused:
            plan.outcomes.append(refused)
            continue
        results = []
        for part in appends:
            version = current.get(part.stream_id, 0)
            first = position + 1
            for ev in part.events:
                assert isinstance(ev, EncodedEvent)
                position += 1
                version += 1
                occurred = ev.occurred_at or now
                digest = chain_hash(prev, canonical_bytes(
                    position, part.stream_id, version, str(ev.event_id), ev.type,
                    ev.schema_version,
                    now_text if occurred is now else canonical_time(occurred), now_text,
                    ev.metadata_json, ev.data_json,
                ))
                plan.rows.append(RecordedEvent(
                    position, part.stream_id, version, ev.event_id, ev.type, ev.schema_version,
                    ev.data_json, ev.metadata_json, occurred, now, prev, digest,
                ))
                known[ev.event_id] = StoredId(part.stream_id, version, position)
                prev = digest
            current[part.stream_id] = version
            results.append(AppendResult(part.stream_id, version, position, first))
        plan.outcomes.append(results)
    return plan


def _already_applied(
    appends: Sequence[StreamAppend], known: Mapping[uuid.UUID, StoredId]
) -> list[AppendResult] | None:
    """None if no event id is known; the original results if the whole append is already in
    the log exactly as asked; otherwise ``EventIdReused``."""
    ids = [(part, ev.event_id) for part in appends for ev in part.events]
    hits = [(part, eid) for part, eid in ids if eid in known]
    if not hits:
        return None
    if len(hits) != len(ids):
        part, eid = hits[0]
        raise EventIdReused(eid, "while other events of this append are new")
    results = []
    for part in appends:
        stored = [known[ev.event_id] for ev in part.events]
        first = stored[0]
        expected_first = (part.expected_version or first.version - 1) + 1
        same_place = all(
            s.stream_id == part.stream_id and s.version == first.version + i
            for i, s in enumerate(stored)
        ) and first.version == expected_first
        if not same_place:
            raise EventIdReused(part.events[0].event_id, f"in {first.stream_id} v{first.version}")
        results.append(AppendResult(
            part.stream_id, stored[-1].version, stored[-1].position, first.position,
            already_applied=True,
        ))
    return results
