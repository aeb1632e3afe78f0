"""The idempotent-consumer helper every service uses to apply events exactly once.

A consumer applies a batch and records the last global position it applied *in the same
transaction*; events at or below the recorded position are skipped, so redelivery (Kafka's
at-least-once, a relay republishing from position 0, a worker killed mid-batch) changes nothing.

Positions are kept per ``scope``. Events reach a Kafka consumer partition by partition, and
positions interleave across partitions, so a live consumer uses one scope per topic-partition
(``scope_for(topic, partition)``); a rebuild that reads the store in order uses ``"all"``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from shared.contracts.envelope import RecordedEvent
from shared.eventstore.postgres import Conn

Apply = Callable[[Conn, list[RecordedEvent]], Awaitable[None]]
ALL = "all"


def scope_for(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


class IdempotentConsumer:
    """Applies batches of events for the consumer ``name`` at most once per position."""

    def __init__(self, pool: asyncpg.Pool, name: str) -> None:
        self.pool = pool
        self.name = name

    async def position(self, scope: str = ALL) -> int:
        """The last position applied in ``scope`` (0 if none)."""
        value = await self.pool.fetchval(
            "SELECT position FROM consumer_positions WHERE consumer = $1 AND scope = $2",
            self.name, scope,
        )
        return int(value or 0)

    async def positions(self) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT scope, position FROM consumer_positions WHERE consumer = $1", self.name
        )
        return {r["scope"]: r["position"] for r in rows}

    async def apply(
        self, scope: str, events: Sequence[RecordedEvent], apply: Apply
    ) -> list[RecordedEvent]:
        """In one transaction: lock this scope's position, call ``apply`` with the events after
        it (in position order), advance the position. Returns the events applied (maybe none).
        If ``apply`` raises, nothing is written and the position stays."""
        async with self.pool.acquire() as conn, conn.transaction():
            # one round trip: create the row if new, lock it (as FOR UPDATE would), read it
            current = await conn.fetchval(
                "INSERT INTO consumer_positions AS c (consumer, scope, position)"
                " VALUES ($1, $2, 0) ON CONFLICT (consumer, scope)"
                " DO UPDATE SET position = c.position RETURNING position", self.name, scope,
            )
            # by position: a republished log can hold one position twice in a batch
            unique = {e.position: e for e in events if e.position > current}
            fresh = [unique[p] for p in sorted(unique)]
            if fresh:
                await apply(conn, fresh)
                await conn.execute(
                    "UPDATE consumer_positions SET position = $3, updated_at = now()"
                    " WHERE consumer = $1 AND scope = $2", self.name, scope, fresh[-1].position,
                )
            return fresh
