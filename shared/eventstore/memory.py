"""An in-memory event store with the same semantics as PostgreSQL (for pure unit tests of
handlers). Positions, hashes and idempotency come from the same planner; the contract suite in
tests/contract runs against both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

from shared.contracts.envelope import GENESIS_HASH, NewEvent, RecordedEvent
from shared.eventstore.errors import AppendError
from shared.eventstore.planning import StoredId, encode_appends, plan_batch
from shared.eventstore.port import AppendResult, Head, StreamAppend


class InMemoryEventStore:
    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.events: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._ids: dict[uuid.UUID, StoredId] = {}
        self._changed = asyncio.Condition()
        self._clock = clock

    async def append(
        self, stream_id: str, expected_version: int | None, events: Sequence[NewEvent]
    ) -> AppendResult:
        (result,) = await self.append_streams([StreamAppend(stream_id, expected_version, events)])
        return result

    async def append_streams(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        encoded = encode_appends(appends)
        head = await self.head()
        now = self._clock()
        plan = plan_batch(
            [encoded], head_position=head.position, head_hash=head.hash,
            versions={s: len(self._streams.get(s, [])) for s in {a.stream_id for a in encoded}},
            stored_ids=self._ids, now=now,
        )
        (outcome,) = plan.outcomes
        if isinstance(outcome, AppendError):
            raise outcome
        for row in plan.rows:
            self.events.append(row)
            self._streams.setdefault(row.stream_id, []).append(row)
            self._ids[row.event_id] = StoredId(row.stream_id, row.version, row.position)
        if plan.rows:
            async with self._changed:
                self._changed.notify_all()
        return outcome

    async def read_stream(
        self, stream_id: str, *, from_version: int = 1, to_position: int | None = None
    ) -> list[RecordedEvent]:
        return [e for e in self._streams.get(stream_id, [])[from_version - 1:]
                if to_position is None or e.position <= to_position]

    async def read_all(
        self, after: int = 0, *, batch_size: int = 1000, to_position: int | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        while True:
            end = len(self.events) if to_position is None else min(to_position, len(self.events))
            batch = self.events[after:min(after + batch_size, end)]
            if not batch:
                return
            yield batch
            after = batch[-1].position

    async def subscribe(
        self, after: int = 0, *, batch_size: int = 1000
    ) -> AsyncIterator[list[RecordedEvent]]:
        while True:
            batch = self.events[after:after + batch_size]
            if batch:
                after = batch[-1].position
                yield batch
                continue
            async with self._changed:
                await self._changed.wait_for(self._longer_than(after))

    def _longer_than(self, n: int) -> Callable[[], bool]:
        return lambda: len(self.events) > n

    async def head(self) -> Head:
        last = self.events[-1] if self.events else None
        return Head(0, GENESIS_HASH) if last is None else Head(last.position, last.hash)

    async def stream_version(self, stream_id: str) -> int:
        return len(self._streams.get(stream_id, []))
