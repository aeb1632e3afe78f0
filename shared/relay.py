"""The relay: the only producer to ``case.events``.

- One leader at a time, by a PostgreSQL session advisory lock held on a dedicated connection;
  a standby polls for the lock and takes over when the leader's session ends. The leader's
  position is saved through that same connection, so a leader that lost its session cannot
  advance the checkpoint.
- Publishes committed events in position order (key = stream id, value = the JSON envelope,
  headers = type, schema version, correlation id, position), waits for the broker's
  acknowledgement, then advances its position. At-least-once: duplicates possible, loss never.
- Recognises a broker that lost its log without trusting end offsets (which the embedded broker
  reports wrongly): a new cluster id, the topic missing from the broker's topic list (a restarted
  memory broker keeps a "ghost" topic it no longer lists) or with the wrong partition count, or
  an acknowledgement at a lower offset than one already acknowledged on that partition. It then
  recreates the topic (which also clears stray records) and publishes again from position 0.
  The broker is checked at the start of each leadership term, before a batch whenever a
  connection to it was lost or opened since the last check, and every probe interval.
  Consumers skip what they have already applied by position.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata

from shared.contracts.canonical import loads
from shared.contracts.envelope import RecordedEvent
from shared.eventstore.postgres import NO_FLUSH_WAIT, NOTIFY_CHANNEL, Conn, PostgresEventStore
from shared.kafka import broker_state, recreate_topic
from shared.logging import get_logger

log = get_logger(__name__)

RELAY_LOCK = 0x59_5A_52_4C  # "YZRL"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RelayConfig:
    bootstrap_servers: str
    topic: str = "case.events"
    partitions: int = 6
    name: str = "case.events"
    batch_size: int = 1000
    poll_interval_s: float = 0.5
    linger_s: float = 0.0  # after a batch short of batch_size, wait this long before the next
    probe_interval_s: float = 5.0
    standby_interval_s: float = 1.0
    request_timeout_ms: int = 5000
    max_backoff_s: float = 5.0


class BrokerLostLog(Exception):
    """The broker no longer holds what was acknowledged: publish everything again."""


@dataclass
class RelayStats:
    published: int = 0
    republished_from_zero: int = 0
    leader_since: float | None = None
    errors: int = 0
    position: int = 0
    failing_since: float | None = None  # wall time of the first failure in a row (None: fine)
    last_error: str | None = None
    extra: dict[str, int] = field(default_factory=dict)


class Ack(NamedTuple):
    """Where the broker put one event."""

    partition: int
    offset: int


def headers_for(event: RecordedEvent) -> list[tuple[str, bytes]]:
    headers = [
        ("type", event.type.encode()),
        ("schema_version", str(event.schema_version).encode()),
        ("position", str(event.position).encode()),
    ]
    correlation = correlation_id(event.metadata_json)
    if correlation:
        headers.append(("correlation_id", correlation.encode()))
    return headers


_CORRELATION = re.compile(r'"correlation_id":"([^"\\]*)"')


def correlation_id(metadata_json: str) -> str | None:
    """The metadata's ``correlation_id`` as text, read without parsing the metadata when it
    is a flat object (ours always is): there an unescaped ``"correlation_id":"`` can only be
    that key at the top level. Anything else (nesting, escapes, a value not a string) is
    parsed."""
    if metadata_json.count("{") == 1:
        found = _CORRELATION.search(metadata_json)
        if found is not None:
            return found.group(1)
        if '"correlation_id"' not in metadata_json:
            return None
    value = loads(metadata_json).get("correlation_id") if metadata_json else None
    return None if value is None else str(value)


def partition_for(stream_id: str, partitions: int) -> int:
    """The partition of ``stream_id``'s events on a topic of ``partitions`` partitions: the
    producer's default partitioner (murmur2 of the key, as Kafka's Java client)."""
    return int((murmur2(stream_id.encode()) & 0x7FFFFFFF) % partitions)


class Partitioner:
    """The producer's default partitioner (murmur2 of the key, as Kafka's Java client), with
    each stream's partition remembered: a stream's events come in runs, and murmur2 in pure
    Python cost more than building the record."""

    def __init__(self, partitions: int, remember: int = 100_000) -> None:
        self.partitions, self.remember = partitions, remember
        self._known: dict[str, int] = {}

    def __call__(self, stream_id: str) -> int:
        partition = self._known.get(stream_id)
        if partition is None:
            if len(self._known) >= self.remember:
                self._known.clear()
            partition = partition_for(stream_id, self.partitions)
            self._known[stream_id] = partition
        return partition


class Relay:
    """Run with ``await relay.run(stop_event)``; many may run, one leads."""

    def __init__(self, store: PostgresEventStore, config: RelayConfig) -> None:
        self.store = store
        self.config = config
        self.stats = RelayStats()
        self.is_leader = False
        self._wake = asyncio.Event()
        self._known_cluster: str | None = None
        self._led_last_term = False
        self._partition = Partitioner(config.partitions)

    # -- leadership --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                led = await self._term(stop)
                backoff = 0.2
                if not led:
                    self._fine()  # standing by: another relay leads
                    await _sleep_or_stop(stop, self.config.standby_interval_s)
            except (KafkaError, OSError, asyncpg.PostgresError,
                    asyncpg.InterfaceError, TimeoutError) as exc:
                self.stats.errors += 1
                self.stats.last_error = repr(exc)
                if self.stats.failing_since is None:
                    self.stats.failing_since = time.time()
                log.warning("relay.error", error=repr(exc), retry_in_s=backoff)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, self.config.max_backoff_s)

    async def _term(self, stop: asyncio.Event) -> bool:
        """One attempt at leading, until ``stop``; False when another relay leads."""
        conn = await self.store.pool.acquire()
        held = clean = False
        try:
            held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK))
            if held:
                self.is_leader = True
                if not self._led_last_term:  # not again at every retry of a failing term
                    self.stats.leader_since = time.time()
                    log.info("relay.leader", relay=self.config.name)
                self._led_last_term = True
                await self._lead(conn, stop)
            else:
                self._led_last_term = False
            clean = True
            return held
        finally:
            self.is_leader = False
            if not clean:  # failed or cancelled, maybe mid-query: end the session and its lock
                conn.terminate()
            elif held:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)
                except Exception:  # the pool keeps sessions as they are: never keep this lock
                    conn.terminate()
            await self.store.pool.release(conn)

    # -- publishing --------------------------------------------------------------------------

    async def _lead(self, conn: Conn, stop: asyncio.Event) -> None:
        cfg = self.config
        await conn.execute(
            "INSERT INTO relay_positions (relay) VALUES ($1) ON CONFLICT DO NOTHING", cfg.name
        )
        # only the leader writes it, so it is read once per term, not before every batch
        self._known_cluster = await conn.fetchval(
            "SELECT cluster_id FROM relay_positions WHERE relay = $1", cfg.name)
        admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers,
                                    request_timeout_ms=cfg.request_timeout_ms)
        await admin.start()
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        try:
            while not stop.is_set():
                try:
                    # fine once a batch is acknowledged and saved, or nothing is left to
                    # publish: a broker that answers this check may still fail every produce
                    await self._check_broker(conn, admin)
                    await self._publish_until_stopped(conn, admin, stop)
                except BrokerLostLog as lost:
                    await self._start_over(conn, admin, str(lost))
        finally:
            try:
                await conn.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            except BaseException:  # the pool keeps sessions as they are: never keep a LISTEN
                conn.terminate()
                raise
            finally:
                await admin.close()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    def _fine(self) -> None:
        self.stats.failing_since = None

    async def _publish_until_stopped(
        self, conn: Conn, admin: AIOKafkaAdminClient, stop: asyncio.Event
    ) -> None:
        cfg = self.config
        producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap_servers, acks="all", linger_ms=2,
            max_batch_size=256 * 1024, max_request_size=MAX_MESSAGE_BYTES,
            request_timeout_ms=cfg.request_timeout_ms, enable_idempotence=False,
        )
        await producer.start()
        try:
            position = await conn.fetchval(
                "SELECT position FROM relay_positions WHERE relay = $1", cfg.name)
            offsets = await self._load_offsets(conn)
            last_probe = time.monotonic()
            # A broker that lost its log is one that restarted, so the broker is checked
            # before a batch only when a connection to it was lost or opened since the last
            # check (and every probe interval): the all-topics metadata request cost more CPU,
            # the relay's and the broker's, than publishing a small batch
            clients = (producer.client, admin._client)
            seen: list[object] = []
            linger_until = 0.0
            while not stop.is_set():
                # Under a steady trickle every commit would be a batch of its own, each paying
                # a read, a broker check, a produce and a save: let a few gather first (after a
                # quiet spell the first event goes at once; catching up never waits)
                if (wait := linger_until - time.monotonic()) > 0:
                    await _sleep_or_stop(stop, wait)
                self._wake.clear()
                batch = await self.store.read_batch(position, cfg.batch_size)
                if (time.monotonic() - last_probe > cfg.probe_interval_s
                        or (batch and not _unbroken(seen, clients))):
                    await self._check_broker(conn, admin)
                    last_probe = time.monotonic()
                    seen = _connections(clients)
                if not batch:
                    self._fine()  # leading, everything published
                    await _wait_any(self._wake, stop, cfg.poll_interval_s)
                    continue
                acks = await self._send(producer, batch)
                _check_acks(acks, offsets)
                position = batch[-1].position
                await self._save(conn, position, batch, acks, offsets)
                self._fine()  # leading, publishing
                if len(batch) < cfg.batch_size:
                    linger_until = time.monotonic() + cfg.linger_s
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer,
                    batch: Sequence[RecordedEvent]) -> list[Ack]:
        """Publish ``batch`` (one record batch per partition, in position order within each;
        ``_check_broker`` has just seen the topic with ``partitions`` partitions) and wait for
        every acknowledgement: where each event went, in the order of ``batch``."""
        topic, partition_of = self.config.topic, self._partition
        builders: dict[int, tuple[list[int], BatchBuilder]] = {}
        sent: list[tuple[int, list[int], asyncio.Future[RecordMetadata]]] = []
        for index, event in enumerate(batch):
            partition = partition_of(event.stream_id)
            indexes, builder = builders.get(partition) or ([], producer.create_batch())
            value, key = event.to_wire_json().encode(), event.stream_id.encode()
            headers = headers_for(event)
            if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                # full: send it, and start the partition's next one with this event
                sent.append((partition, indexes, await producer.send_batch(
                    builder, topic, partition=partition)))
                indexes, builder = [], producer.create_batch()
                if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    raise KafkaError(f"event {event.position} does not fit a record batch")
            indexes.append(index)
            builders[partition] = (indexes, builder)
        for partition, (indexes, builder) in builders.items():
            sent.append((partition, indexes, await producer.send_batch(
                builder, topic, partition=partition)))
        acks: list[Ack] = [Ack(-1, -1)] * len(batch)
        done = await asyncio.gather(*(future for _, _, future in sent))  # every error retrieved
        for (partition, indexes, _), metadata in zip(sent, done, strict=True):
            for relative, index in enumerate(indexes):
                acks[index] = Ack(partition, metadata.offset + relative)
        return acks

    async def _save(
        self, conn: Conn, position: int, batch: Sequence[RecordedEvent],
        acks: list[Ack], offsets: dict[int, int],
    ) -> None:
        last: dict[int, tuple[int, int]] = {}
        for event, ack in zip(batch, acks, strict=True):
            last[ack.partition] = (ack.offset, event.position)
        parts = sorted(last)
        # One statement (one round trip, atomic by itself): the position and the offsets. Its
        # commit does not wait for the WAL flush (NO_FLUSH_WAIT): should the database crash
        # right after, the relay restarts from the position before and publishes those events
        # again, which every consumer skips by position.
        await conn.execute(
            "WITH moved AS (UPDATE relay_positions SET position = $2, updated_at = now()"
            " WHERE relay = $1)"
            " INSERT INTO relay_partition_offsets (relay, topic, partition, last_offset,"
            " position) SELECT $1, $3, p, o, pos"
            " FROM unnest($4::integer[], $5::bigint[], $6::bigint[]) AS t(p, o, pos),"
            f" ({NO_FLUSH_WAIT}) AS no_flush_wait"
            " ON CONFLICT (relay, topic, partition)"
            " DO UPDATE SET last_offset = EXCLUDED.last_offset, position = EXCLUDED.position",
            self.config.name, position, self.config.topic, parts,
            [last[p][0] for p in parts], [last[p][1] for p in parts],
        )
        for p, (o, _) in last.items():
            offsets[p] = o
        self.stats.published += len(batch)
        self.stats.position = position

    async def _load_offsets(self, conn: Conn) -> dict[int, int]:
        rows = await conn.fetch(
            "SELECT partition, last_offset FROM relay_partition_offsets"
            " WHERE relay = $1 AND topic = $2", self.config.name, self.config.topic,
        )
        return {r[0]: r[1] for r in rows}

    # -- detecting a broker that lost its log ------------------------------------------------

    async def _check_broker(self, conn: Conn, admin: AIOKafkaAdminClient) -> None:
        cfg = self.config
        cluster_id, topics = await broker_state(admin)
        found = topics.get(cfg.topic)
        known = self._known_cluster
        if known is not None and known == cluster_id and found == cfg.partitions:
            return
        if known is None:
            await conn.execute("UPDATE relay_positions SET cluster_id = $2 WHERE relay = $1",
                               cfg.name, cluster_id)
            self._known_cluster = cluster_id
        elif cluster_id != known:
            raise BrokerLostLog(f"cluster id changed from {known} to {cluster_id}")
        position = await conn.fetchval(
            "SELECT position FROM relay_positions WHERE relay = $1", cfg.name)
        if found is None and position == 0:
            await recreate_topic(admin, cfg.topic, cfg.partitions)  # first start: create it
        elif found is None:
            raise BrokerLostLog(f"topic {cfg.topic} is gone from the broker")
        elif found != cfg.partitions:
            raise BrokerLostLog(f"topic {cfg.topic} has {found} partitions, not {cfg.partitions}")

    async def _start_over(
        self, conn: Conn, admin: AIOKafkaAdminClient, reason: str
    ) -> None:
        cfg = self.config
        log.warning("relay.broker_lost_log", reason=reason, action="republish from position 0")
        await recreate_topic(admin, cfg.topic, cfg.partitions)
        cluster_id, _ = await broker_state(admin)
        async with conn.transaction():
            await conn.execute(
                "UPDATE relay_positions SET position = 0, cluster_id = $2,"
                " republished = republished + 1, updated_at = now() WHERE relay = $1",
                cfg.name, cluster_id,
            )
            self._known_cluster = cluster_id
            await conn.execute(
                "DELETE FROM relay_partition_offsets WHERE relay = $1 AND topic = $2",
                cfg.name, cfg.topic,
            )
        self.stats.republished_from_zero += 1


def _connections(clients: Sequence[Any]) -> list[object]:
    """The clients' open connections (aiokafka keeps them by node; a lost one is replaced by a
    new object)."""
    return [conn for client in clients for conn in client._conns.values()]


def _unbroken(seen: list[object], clients: Sequence[Any]) -> bool:
    """The clients hold exactly the connections ``seen`` at the last check, each still open:
    the broker has not restarted since (its process ending closes every one)."""
    now = _connections(clients)
    return bool(seen) and len(now) == len(seen) and all(
        a is b and b.connected() for a, b in zip(now, seen, strict=True))  # type: ignore[attr-defined]


def _check_acks(acks: Sequence[Ack], offsets: dict[int, int]) -> None:
    """Offsets on a partition only grow while the broker keeps its log."""
    lowest: dict[int, int] = {}
    for ack in acks:
        lowest[ack.partition] = min(ack.offset, lowest.get(ack.partition, ack.offset))
    for partition, offset in lowest.items():
        previous = offsets.get(partition)
        if previous is not None and offset <= previous:
            raise BrokerLostLog(
                f"partition {partition} acknowledged offset {offset} after {previous}"
            )


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(wake: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
