"""`yizhan consumers repartition`: move idempotent consumers' positions to a new partition count.

A live consumer keeps one position per topic-partition (``shared.consumer``), and a stream's
partition is murmur2(stream id) % partitions: kept for one count, the positions mean nothing
for another (an agent refuses to start then, ``PositionsKeptForAnotherPartitionCount``). When
a consumer has applied *every* event up to its furthest position ``M`` (no event of the log at
or below ``M`` left unapplied on any partition), its state is simply "everything ≤ M applied",
whatever the layout: every partition of the new layout then gets position ``M``, and the new
count is recorded. Events ≤ M are skipped wherever the relay puts them, events > M applied.

What is checked, in one transaction (all or nothing):

- no relay leads: the relay's advisory lock is taken for the transaction, so no relay can
  publish meanwhile (``RelayStillLeads`` otherwise). Its topic has to be recreated with the new
  count anyway, which a relay started with the new ``YIZHAN_TOPIC_PARTITIONS`` does itself;
- for each consumer with positions on the topic whose recorded count is another one: it has
  applied every event of the log up to its furthest position ``M`` — recomputed exactly, from
  the ``events`` table and the partitioner, as the last position of each *old* partition up to
  ``M`` against the stored position of that partition — and ``M`` is not behind what the relay
  last published on the topic (``relay_partition_offsets``): else ``ConsumerHasNotCaughtUp``.
  Stopping the relay, then letting the consumers run until `yizhan status` shows them at the
  relay's position, is how to get there;
- a consumer whose recorded count already is the new one is left alone (running it again
  changes nothing); one without positions on the topic only gets the new count recorded.

Residual assumption: the services (the consumers) are stopped while it runs and start again
with the new count; a consumer still running on the old layout would go on keeping positions
for it. (Their rows are locked for the transaction, so none moves under it.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.consumer import REPARTITION_COMMAND, misplaced_positions, topic_positions
from shared.eventstore.postgres import Conn
from shared.relay import RELAY_LOCK, partition_for


class RelayStillLeads(RuntimeError):
    """A relay holds the relay lock: it may publish while positions move. Stop every relay."""


class ConsumerHasNotCaughtUp(RuntimeError):
    """A consumer has not applied every event up to its furthest position, or is behind what
    the relay published: moving its positions would lose or repeat events."""


class OldPartitionCountUnknown(RuntimeError):
    """A consumer's positions predate recorded partition counts, or name a partition beyond
    the recorded count: give the count they were kept for (``--old-partitions``)."""


@dataclass(frozen=True)
class Repartitioned:
    """What was done for one consumer."""

    consumer: str
    topic: str
    old: int | None
    new: int
    position: int | None
    """Every new partition's position (None: no positions on the topic, only the count)."""
    changed: bool

    def describe(self) -> str:
        if not self.changed:
            return (f"{self.consumer}: positions on {self.topic} already kept for {self.new} "
                    "partitions, unchanged")
        if self.position is None:
            was = "" if self.old is None else f"{self.old} → "
            return (f"{self.consumer}: no positions on {self.topic}; partition count "
                    f"{was}{self.new} recorded")
        return (f"{self.consumer}: every event up to position {self.position:,} applied; "
                f"{self.topic} partitions 0–{self.new - 1} now at {self.position:,} "
                f"(kept for {self.old} partitions before, now {self.new})")


def last_per_partition(streams: Iterable[tuple[str, int]], partitions: int) -> dict[int, int]:
    """The last position on each partition of a ``partitions``-partition topic, from each
    stream's (id, last position)."""
    last: dict[int, int] = {}
    for stream_id, position in streams:
        p = partition_for(stream_id, partitions)
        if position > last.get(p, 0):
            last[p] = position
    return last


def unapplied(positions: Mapping[int, int], last: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """Partitions whose last event is beyond the stored position: (stored, last) by
    partition."""
    return {p: (positions.get(p, 0), position) for p, position in sorted(last.items())
            if position > positions.get(p, 0)}


async def repartition(conn: Conn, topic: str, partitions: int, *,
                      old_partitions: int | None = None) -> list[Repartitioned]:
    """Move every consumer of ``topic`` to ``partitions`` (see the module's docstring), in one
    transaction; what was done, per consumer."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    done: list[Repartitioned] = []
    async with conn.transaction():
        recorded = {r["consumer"]: r["partitions"] for r in await conn.fetch(
            "SELECT consumer, partitions FROM consumer_partition_counts WHERE topic = $1"
            " ORDER BY consumer FOR UPDATE", topic)}
        with_positions = {r["consumer"] for r in await conn.fetch(
            "SELECT consumer, scope FROM consumer_positions WHERE left(scope, $2) = $1"
            " ORDER BY consumer, scope FOR UPDATE", f"{topic}/", len(topic) + 1)}
        relay_checked = False
        published = None
        for consumer in sorted(set(recorded) | with_positions):
            before = recorded.get(consumer)
            if before == partitions:
                done.append(Repartitioned(consumer, topic, before, partitions, None, False))
                continue
            positions = await topic_positions(conn, consumer, topic)
            if positions:
                if not relay_checked:
                    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                               RELAY_LOCK):
                        raise RelayStillLeads(
                            "a relay leads (holds the relay lock): stop every `yizhan relay` "
                            "first, then run this again")
                    relay_checked = True
                    published = await conn.fetchval(
                        "SELECT max(position) FROM relay_partition_offsets WHERE topic = $1",
                        topic)
                top = await _move(conn, consumer, topic, before or old_partitions, positions,
                                  partitions, int(published or 0), given=before is None)
            else:
                top = None
            await conn.execute(
                "INSERT INTO consumer_partition_counts AS c (consumer, topic, partitions)"
                " VALUES ($1, $2, $3) ON CONFLICT (consumer, topic) DO UPDATE"
                " SET partitions = EXCLUDED.partitions, updated_at = now()",
                consumer, topic, partitions)
            done.append(Repartitioned(consumer, topic, before or old_partitions, partitions,
                                      top, True))
    return done


async def _move(conn: Conn, consumer: str, topic: str, old: int | None,
                positions: dict[int, int], partitions: int, published: int, *,
                given: bool) -> int:
    """Check ``consumer`` applied everything up to its furthest position and set every new
    partition's position to it; that position. ``given``: ``old`` is the operator's
    ``--old-partitions`` (no count recorded), checked against the stored positions' events
    (``misplaced_positions``; a recorded count's positions may all be one position, as the
    command leaves them)."""
    command = REPARTITION_COMMAND.format(topic=topic, partitions=partitions)
    if old is None:
        raise OldPartitionCountUnknown(
            f"consumer {consumer!r} has positions on {topic} from before partition counts "
            f"were recorded: give the count they were kept for, `{command} --old-partitions "
            "N` (the YIZHAN_TOPIC_PARTITIONS its service last ran with)")
    if max(positions) >= old:
        raise OldPartitionCountUnknown(
            f"consumer {consumer!r} has positions on partition {max(positions)} of {topic}, "
            f"beyond the {old} partitions given or recorded for it: give the count its "
            f"positions were kept for, `{command} --old-partitions N`")
    if given and (misplaced := await misplaced_positions(conn, positions, old)):
        p, position = next(iter(misplaced.items()))
        raise OldPartitionCountUnknown(
            f"consumer {consumer!r}'s positions on {topic} were not kept for the {old} "
            f"partitions given: partition {p}'s position {position:,} is an event of a stream "
            f"on another partition of {old}; give the count its positions were kept for, "
            f"`{command} --old-partitions N` (the YIZHAN_TOPIC_PARTITIONS its service last "
            "ran with)")
    top = max(positions.values())
    if top < published:
        raise ConsumerHasNotCaughtUp(
            f"consumer {consumer!r} has applied {topic} up to position {top:,}, the relay "
            f"published up to {published:,}: with the relay stopped, let the consumers catch "
            "up (`yizhan status`), stop them, then run this again")
    # An event at or below every old partition's position is applied wherever it is: only
    # the events above the lowest one are read (not the whole log up to ``top``, per consumer)
    lowest = min(positions.get(p, 0) for p in range(old))
    streams = await conn.fetch(
        "SELECT stream_id, max(position) AS last FROM events WHERE position > $1"
        " AND position <= $2 GROUP BY stream_id", lowest, top)
    missing = unapplied(positions, last_per_partition(
        ((r["stream_id"], int(r["last"])) for r in streams), old))
    if missing:
        shown = ", ".join(f"partition {p} at {stored:,}, its last event {last:,}"
                          for p, (stored, last) in list(missing.items())[:5])
        raise ConsumerHasNotCaughtUp(
            f"consumer {consumer!r} has not applied every event of {topic} up to {top:,} "
            f"(kept for {old} partitions: {shown}): with the relay stopped, let the "
            "consumers catch up (`yizhan status`), stop them, then run this again")
    await conn.execute(
        "DELETE FROM consumer_positions WHERE consumer = $1 AND left(scope, $3) = $2",
        consumer, f"{topic}/", len(topic) + 1)
    await conn.execute(
        "INSERT INTO consumer_positions (consumer, scope, position)"
        " SELECT $1, $2 || p, $4 FROM generate_series(0, $3 - 1) AS p",
        consumer, f"{topic}/", partitions, top)
    return top
