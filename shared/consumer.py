"""The idempotent-consumer helper every service uses to apply events exactly once.

A consumer applies a batch and records the last global position it applied *in the same
transaction*; events at or below the recorded position are skipped, so redelivery (Kafka's
at-least-once, a relay republishing from position 0, a worker killed mid-batch) changes nothing.

Positions are kept per ``scope``. Events reach a Kafka consumer partition by partition, and
positions interleave across partitions, so a live consumer uses one scope per topic-partition
(``scope_for(topic, partition)``); a rebuild that reads the store in order uses ``"all"``.
``apply_scopes`` applies several scopes' batches in one transaction (one commit for what a
worker fetched from all its partitions).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

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
        return (await self.apply_scopes({scope: events}, apply))[scope]

    async def apply_scopes(
        self, batches: Mapping[str, Sequence[RecordedEvent]], apply: Apply
    ) -> dict[str, list[RecordedEvent]]:
        """``apply`` for several scopes in one transaction: lock and read every scope's
        position (in scope order, so two workers never wait on each other in a circle), call
        ``apply`` once with all the fresh events in position order, advance each scope's
        position. Returns the events applied per scope. If ``apply`` raises, nothing is
        written."""
        scopes = sorted(batches)
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "INSERT INTO consumer_positions AS c (consumer, scope, position)"
                " SELECT $1, s, 0 FROM unnest($2::text[]) AS s ORDER BY s"
                " ON CONFLICT (consumer, scope) DO UPDATE SET position = c.position"
                " RETURNING scope, position", self.name, scopes,
            )
            current = {r["scope"]: r["position"] for r in rows}
            fresh: dict[str, list[RecordedEvent]] = {}
            for scope in scopes:
                unique = {e.position: e for e in batches[scope] if e.position > current[scope]}
                fresh[scope] = [unique[p] for p in sorted(unique)]
            moved = [scope for scope in scopes if fresh[scope]]
            if moved:
                # by position, once: a log republished with other partitioning could put one
                # position in two scopes
                merged = {e.position: e for scope in moved for e in fresh[scope]}
                await apply(conn, [merged[p] for p in sorted(merged)])
                await conn.execute(
                    "UPDATE consumer_positions c SET position = m.position, updated_at = now()"
                    " FROM unnest($2::text[], $3::bigint[]) AS m(scope, position)"
                    " WHERE c.consumer = $1 AND c.scope = m.scope", self.name, moved,
                    [fresh[scope][-1].position for scope in moved],
                )
            return fresh
