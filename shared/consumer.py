"""The idempotent-consumer helper every service uses to apply events exactly once.

A consumer applies a batch and records the last global position it applied *in the same
transaction*; events at or below the recorded position are skipped, so redelivery (Kafka's
at-least-once, a relay republishing from position 0, a worker killed mid-batch) changes nothing.

Positions are kept per ``scope``. Events reach a Kafka consumer partition by partition, and
positions interleave across partitions, so a live consumer uses one scope per topic-partition
(``scope_for(topic, partition)``); a rebuild that reads the store in order uses ``"all"``.
``apply_scopes`` applies several scopes' batches in one transaction (one commit for what a
worker fetched from all its partitions).

Per-partition positions mean something only for the partition count they were kept for: a
stream's partition is murmur2(stream id) % partitions, so with another count its events land
on a partition whose stored position belongs to other streams (events at or below it skipped
as applied, lost; others applied twice; a stream's old and new partitions read out of order).
The count is recorded per consumer and topic (``consumer_partition_counts``);
``check_partition_count`` (every agent, as it starts) records it for a consumer without
positions on the topic and refuses (``PositionsKeptForAnotherPartitionCount``) one whose
positions were kept for another count. ``shared.repartition`` (`yizhan consumers
repartition`) moves them safely.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import asyncpg

from shared.contracts.envelope import RecordedEvent
from shared.eventstore.postgres import Conn

Apply = Callable[[Conn, list[RecordedEvent]], Awaitable[None]]
ALL = "all"


def scope_for(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def partition_of(scope: str, topic: str) -> int | None:
    """The partition a scope of ``topic`` names (None: a scope of something else)."""
    prefix = f"{topic}/"
    if not scope.startswith(prefix):
        return None
    rest = scope[len(prefix):]
    return int(rest) if rest.isdigit() else None


REPARTITION_COMMAND = "yizhan consumers repartition --topic {topic} --partitions {partitions}"


class PositionsKeptForAnotherPartitionCount(RuntimeError):
    """A consumer's positions on a topic were kept for another partition count than the topic
    has: applying with them would skip or repeat events. Move them first (`yizhan consumers
    repartition`, README "Scaling out")."""

    def __init__(self, consumer: str, topic: str, recorded: int | None, actual: int,
                 *, at_least: int | None = None) -> None:
        self.consumer, self.topic, self.recorded, self.actual = consumer, topic, recorded, actual
        kept = (f"{recorded}" if recorded is not None else f"at least {at_least}"
                if at_least is not None else "another count of")
        command = REPARTITION_COMMAND.format(topic=topic, partitions=actual)
        super().__init__(
            f"consumer {consumer!r} kept its positions on {topic} for {kept} partitions, but "
            f"the topic has {actual}: a stream's events would land on a partition whose stored "
            f"position belongs to other streams (skipped as applied, or applied twice). Stop "
            f"the relay, let every consumer catch up (`yizhan status`), stop the services, "
            f"then run `{command}` (README, \"Scaling out\")")


def layout_to_record(consumer: str, topic: str, recorded: int | None,
                     partitions_with_positions: Iterable[int], actual: int) -> bool:
    """Whether to record ``actual`` as the consumer's partition count on ``topic`` (True),
    keep what is recorded (False), or refuse (raises ``PositionsKeptForAnotherPartitionCount``).

    Without positions there, any count is fine (recorded anew). Positions kept before counts
    were recorded (``recorded`` None) are taken to be for ``actual``, unless they name a
    partition beyond it."""
    used = set(partitions_with_positions)
    if recorded == actual:
        return False
    if not used:
        return True
    if recorded is None:
        if max(used) < actual:
            return True
        raise PositionsKeptForAnotherPartitionCount(consumer, topic, None, actual,
                                                    at_least=max(used) + 1)
    raise PositionsKeptForAnotherPartitionCount(consumer, topic, recorded, actual)


async def misplaced_positions(conn: Conn, positions: Mapping[int, int],
                              partitions: int) -> dict[int, int]:
    """The stored positions (by partition) whose event's stream is on another partition of a
    ``partitions``-partition topic: positions kept for another count. A partition's position
    is the last event applied from it, so for the count it was kept for, that event's stream
    is on that partition (a position not in the log proves nothing and is left out)."""
    from shared.relay import partition_for  # shared.relay is heavier (aiokafka's producer)

    rows = await conn.fetch("SELECT position, stream_id FROM events WHERE position = ANY($1)",
                            sorted(set(positions.values())))
    stream = {int(r["position"]): r["stream_id"] for r in rows}
    return {p: position for p, position in sorted(positions.items())
            if position in stream and partition_for(stream[position], partitions) != p}


async def judge_layout(conn: Conn, consumer: str, topic: str, recorded: int | None,
                       positions: Mapping[int, int], actual: int) -> bool:
    """``layout_to_record`` (True: record ``actual``), and for positions kept before counts
    were recorded, also that each stored position's event is on its partition for ``actual``
    (``misplaced_positions``): kept for another count that happens to be larger than every
    partition they name (e.g. 6 -> 12 with the upgrade), they are refused too. What the agent
    checks at start and `yizhan status` reports."""
    record = layout_to_record(consumer, topic, recorded, positions, actual)
    if record and recorded is None and positions and await misplaced_positions(
            conn, positions, actual):
        raise PositionsKeptForAnotherPartitionCount(consumer, topic, None, actual)
    return record


async def topic_positions(conn: Conn, consumer: str, topic: str) -> dict[int, int]:
    """The consumer's positions on ``topic`` above 0, by partition."""
    rows = await conn.fetch(
        "SELECT scope, position FROM consumer_positions WHERE consumer = $1"
        " AND left(scope, $3) = $2 AND position > 0", consumer, f"{topic}/", len(topic) + 1)
    found = {partition_of(r["scope"], topic): int(r["position"]) for r in rows}
    return {p: position for p, position in found.items() if p is not None}


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

    async def check_partition_count(self, topic: str, partitions: int) -> None:
        """Refuse (``PositionsKeptForAnotherPartitionCount``) if this consumer's positions on
        ``topic`` were kept for another partition count than ``partitions`` (the topic's);
        else record ``partitions`` for it (``layout_to_record``)."""
        async with self.pool.acquire() as conn, conn.transaction():
            recorded = await conn.fetchval(
                "SELECT partitions FROM consumer_partition_counts"
                " WHERE consumer = $1 AND topic = $2 FOR UPDATE", self.name, topic)
            used = await topic_positions(conn, self.name, topic)
            if await judge_layout(conn, self.name, topic, recorded, used, partitions):
                await conn.execute(
                    "INSERT INTO consumer_partition_counts AS c (consumer, topic, partitions)"
                    " VALUES ($1, $2, $3) ON CONFLICT (consumer, topic) DO UPDATE"
                    " SET partitions = EXCLUDED.partitions, updated_at = now()",
                    self.name, topic, partitions)

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
