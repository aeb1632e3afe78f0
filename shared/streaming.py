"""The thin Faust boundary every service uses to consume the log.

Faust is an entrypoint only: the domain, projectors and the event store never import it. This
module builds an app configured for our stack, declares idempotent batch agents on
``case.events``, and runs an app inside an existing asyncio program::

    app = make_app("projections", settings=settings)
    agent = idempotent_agent(app, topic=settings.topic_case_events,
                             consumer=IdempotentConsumer(pool, "projections"),
                             apply=project_batch, batch_size=500, max_wait_s=0.01)
    async with running_app(app):
        ...                      # serve HTTP, wait for a stop signal, read agent.stats

Correctness comes from PostgreSQL, never from Kafka (see DESIGN, "Known pitfalls"):

- Every message is taken without auto-ack (``eager_batches``, after ``Stream.noack_take``),
  decoded, grouped by partition and applied through ``IdempotentConsumer.apply_scopes`` with scope =
  topic/partition: one transaction checks and advances each partition's stored position and
  applies the writes of the whole batch. Only then are the batch's messages acked, so Faust
  never commits an offset past an unapplied event.
- A failing ``apply`` is retried in place with backoff, holding the batch: later messages of
  the partition are not applied before it (which would advance the stored position past it and
  lose it on redelivery). If the app stops meanwhile, nothing of that batch was acked and the
  next worker gets it again.
- A message that is not a valid envelope is parked (logged, counted, acked) and never crashes
  the worker. Whether an event *type* is known is for ``apply`` to decide.
- Faust's ``take()``/``take_events()`` ack the whole buffer in a ``finally`` block, also when the
  body raised: they are not used here.
- ``stream_wait_empty`` is off: Faust's default makes stop and every rebalance wait, forever and
  deaf to cancellation, for unacked messages, which a held batch never acks.
- Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` hard-coded, and the
  embedded broker lets a waiting fetch run its full wait even when data arrives (measured: p50
  375 ms, max 726 ms from produce to consume at 1,500; 7 ms and 20 ms at 50). The consumer
  takes ``kafka_fetch_max_wait_ms`` instead (``_use_our_fetch_wait``).
- ``running_app`` checks the agents' topics exist first: ``topic_allow_declare=False`` stops
  Faust's own topic creation, but the consumer's subscription still names the topic in a
  metadata request, and the embedded broker creates a missing one with 4 partitions.
- It then checks each idempotent agent's consumer kept its positions for the partition count
  the topic has (``IdempotentConsumer.check_partition_count``): positions are per partition,
  and a stream's partition depends on the count, so after a change they would skip or repeat
  events. ``PositionsKeptForAnotherPartitionCount`` names the consumer, both counts and the
  command that moves the positions (`yizhan consumers repartition`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg
import faust
from aiokafka.admin import AIOKafkaAdminClient
from faust.contrib.asgi import faust_app_running
from faust.streams import Stream
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, StreamT

from shared.consumer import Apply, IdempotentConsumer, scope_for
from shared.contracts.envelope import HashMismatch, RecordedEvent
from shared.kafka import BrokerProbe, TopicMisconfigured, broker_state
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

PARKED_KEPT = 100

#: messages to ack and events to apply (by position), per topic-partition
Groups = dict[TP, tuple[list[EventT[bytes]], dict[int, RecordedEvent]]]


# -- the app ---------------------------------------------------------------------------------

_FETCH_WAIT = "_yizhan_fetch_max_wait_ms"


def _use_our_fetch_wait() -> None:
    """Make Faust's worker consumer wait ``app.<_FETCH_WAIT>`` ms per fetch, not 1,500 (Faust
    offers no setting; aiokafka reads the value when the consumer starts, after this)."""
    thread = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread, _FETCH_WAIT, False):
        return
    original = thread._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait = getattr(self.app, _FETCH_WAIT, None)
        if wait is not None:
            consumer._fetch_max_wait_ms = wait
        return consumer

    thread._create_worker_consumer = create  # type: ignore[method-assign]
    setattr(thread, _FETCH_WAIT, True)


def broker_urls(bootstrap_servers: str) -> list[str]:
    """``host:port,host:port`` → Faust broker URLs."""
    return [f"kafka://{s.strip()}" for s in bootstrap_servers.split(",") if s.strip()]


def make_app(
    app_id: str,
    *,
    settings: Settings | None = None,
    bootstrap_servers: str | None = None,
    partitions: int | None = None,
    replication_factor: int | None = None,
    session_timeout_ms: int | None = None,
    heartbeat_interval_ms: int | None = None,
    web_port: int | None = None,
    datadir: Path | None = None,
    fetch_max_wait_ms: int | None = None,
    **overrides: Any,
) -> faust.App:
    """A Faust app configured for our stack. ``app_id`` is also the Kafka consumer group.

    Explicit arguments win over ``settings``. Topics are never created or declared by Faust
    (create them with ``shared.kafka.ensure_topics`` first), no leader topic, memory store,
    offsets reset to earliest (consumers skip by stored position), no ``exactly_once``, short
    session timeout and heartbeat. The web server is off unless ``web_port`` is given.
    Build the app inside a function: nothing here touches an event loop.
    """
    settings = settings or Settings()
    servers = bootstrap_servers or settings.kafka_bootstrap_servers
    if not servers:
        raise ValueError("no Kafka bootstrap servers: pass bootstrap_servers or set them")
    session_ms = session_timeout_ms or settings.kafka_session_timeout_ms
    heartbeat_ms = heartbeat_interval_ms or settings.kafka_heartbeat_interval_ms
    if datadir is None:
        # Faust creates (empty, with the memory store) folders here on start; its default is
        # "<app id>-data" in the current directory.
        datadir = Path(tempfile.gettempdir()) / "yizhan-faust"
    datadir.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {
        "broker": broker_urls(servers),
        "store": "memory://",
        "datadir": str(datadir),
        "autodiscover": False,
        "processing_guarantee": "at_least_once",
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": session_ms / 1000,
        "broker_heartbeat_interval": heartbeat_ms / 1000,
        "broker_rebalance_timeout": session_ms / 1000,
        "broker_commit_interval": 1.0,
        # True (Faust's default) makes stop and every rebalance wait until all messages taken
        # are acked, swallowing cancellation: a batch held by a failing apply hangs the worker
        # forever. Unacked messages are simply delivered again; positions make that harmless.
        "stream_wait_empty": False,
        "topic_allow_declare": False,  # never create or declare topics ...
        "topic_disable_leader": True,  # ... including the "<id>-__assignor-__leader" topic
        "topic_partitions": partitions or settings.topic_partitions,
        "topic_replication_factor": replication_factor or settings.topic_replication_factor,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "web_enabled": web_port is not None,
        "web_port": web_port or 6066,
        "web_bind": "127.0.0.1",
    }
    conf.update(overrides)
    app = faust.App(app_id, **conf)
    _use_our_fetch_wait()
    setattr(app, _FETCH_WAIT, fetch_max_wait_ms or settings.kafka_fetch_max_wait_ms)
    return app


@contextlib.asynccontextmanager
async def running_app(
    app: faust.App, *, stop_timeout: float = 30.0, check_topics: bool = True,
    topics_wait_s: float = 30.0,
) -> AsyncIterator[faust.App]:
    """Start ``app`` on the running loop and stop it on exit (``app.start()``/``app.stop()``
    through ``faust.contrib.asgi.faust_app_running``). A stopped app cannot be started again:
    build a new one with ``make_app``. For FastAPI, ``faust.contrib.asgi.faust_lifespan(app)``
    does the same from the ASGI lifespan (call ``await check_partition_counts(app, await
    check_agent_topics(app))`` first).

    With ``check_topics``, refuses to start (``TopicMisconfigured``) when a topic an agent reads
    is missing or has another partition count: the consumer's subscription would otherwise name
    it in a metadata request, and the embedded broker would create it with 4 partitions.
    A topic being recreated (the relay does so when it finds a broker that lost its log) is
    waited for, up to ``topics_wait_s``. Then every idempotent agent's consumer is checked
    against the topic's partition count (``check_partition_counts``)."""
    if check_topics:
        counts = await wait_for_agent_topics(app, topics_wait_s)
        await check_partition_counts(app, counts)
    async with faust_app_running(app, stop_timeout=stop_timeout):
        yield app


def consumer_ready(
    app: Any, name: str, failing_since: Callable[[], float | None], *,
    stuck_after_s: float = 30.0,
) -> Callable[[], Awaitable[str | None]]:
    """A ``/readyz`` check of an agent's consumer (``app``: a Faust app): it is running (not
    crashed, not stopping), has joined its group (from the end of its first rebalance on;
    later rebalances do not flip it, so a replica stays in its load balancer while partitions
    move) and has not held a failing batch for ``stuck_after_s`` or longer (``failing_since``:
    wall time of the first failure in a row, or None). What is missing, or None; the error
    itself is in the log (``/readyz`` needs no login).

    "Joined" is a rebalance that has ended (Faust's recovery ``completed``, set at the end of
    every rebalance and never cleared), not a count of rebalances begun: a first join that
    is interrupted (another replica joins meanwhile) begins a second rebalance before the
    first ends, and a count would call the consumer joined while it never was."""

    async def check() -> str | None:
        if app.should_stop:  # crashed, or stopping
            return f"{name}: stopped"
        if not app.tables.recovery.completed.is_set():
            return f"{name}: joining its consumer group"
        since = failing_since()
        if since is not None and (held := time.time() - since) >= stuck_after_s:
            return f"{name}: retrying a failing batch for {held:.0f} s (the error is in its log)"
        return None

    return check


def agent_readiness(
    app: Any, name: str, failing_since: Callable[[], float | None], *, bootstrap: str,
    topics: Sequence[str],
) -> list[Callable[[], Awaitable[str | None]]]:
    """The ``/readyz`` checks of a service whose agent reads Kafka, beside its database's:
    the broker answers and holds ``topics`` (``BrokerProbe``), and the agent's consumer is
    ready (``consumer_ready``)."""
    return [BrokerProbe(bootstrap, topics), consumer_ready(app, name, failing_since)]


class AppCrashed(RuntimeError):
    """The Faust app crashed (an agent or timer raised past its supervisor): its consumers and
    timers have stopped for good, so the process must end and be started again."""


@contextlib.asynccontextmanager
async def stop_on_crash(app: Any, stop: asyncio.Event) -> AsyncIterator[None]:
    """Set ``stop`` if ``app`` (a Faust app, or any ``mode`` service) crashes, and then raise
    ``AppCrashed`` on leaving the block, so that the process exits non-zero and its supervisor
    (``yizhan up``, an orchestrator) starts it again. Without this a crashed app left the
    process serving HTTP and answering ready, its SLA timers dead (found in review, after a
    database outage)."""

    async def watch() -> None:
        await app._crashed.wait()
        log.critical("streaming.app_crashed", app=str(getattr(app, "conf", app)),
                     reason=repr(app.crash_reason), action="stopping the process")
        stop.set()

    watcher = asyncio.create_task(watch(), name="faust-crash-watch")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if app.crashed:
        raise AppCrashed(repr(app.crash_reason))


_EVENT_AGENTS = "_yizhan_event_agents"


def event_agents(app: faust.App) -> list[EventAgent]:
    """The idempotent agents declared on ``app`` (``idempotent_agent``)."""
    return list(getattr(app, _EVENT_AGENTS, ()))


class PartitionCountChanged(RuntimeError):
    """A running idempotent agent received messages from a partition beyond the count its
    consumer's positions were checked for at start."""


async def check_partition_counts(app: faust.App, counts: dict[str, int]) -> None:
    """Refuse to start (``PositionsKeptForAnotherPartitionCount``) an idempotent agent whose
    consumer kept its positions on its topic for another partition count than ``counts`` (as
    the broker has them: ``check_agent_topics``); record the count for one without
    positions there."""
    for agent in event_agents(app):
        partitions = counts.get(agent.topic_name)
        if partitions is not None:
            await agent.consumer.check_partition_count(agent.topic_name, partitions)
            agent.partitions = partitions


def bootstrap_of(app: faust.App) -> str:
    return ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)


async def wait_for_agent_topics(app: faust.App, timeout_s: float) -> dict[str, int]:
    """``check_agent_topics`` until it passes or ``timeout_s`` has passed (then it raises)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await check_agent_topics(app)
        except TopicMisconfigured as problem:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            log.info("streaming.waiting_for_topics", problem=str(problem))
            await asyncio.sleep(0.5)


async def check_agent_topics(app: faust.App) -> dict[str, int]:
    """Every topic the app's agents read, with its partition count, as the broker has it (one
    all-topics metadata request, which creates nothing). Raises ``TopicMisconfigured``."""
    wanted: dict[str, int] = {}
    for agent in app.agents.values():
        channel = agent.channel
        if isinstance(channel, faust.TopicT):
            for name in channel.topics:
                wanted[name] = channel.partitions or app.conf.topic_partitions
    if not wanted:
        return {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_of(app), request_timeout_ms=10_000)
    await admin.start()
    try:
        _, topics = await broker_state(admin)
    finally:
        await admin.close()
    for name, partitions in wanted.items():
        if topics.get(name) != partitions:
            raise TopicMisconfigured(
                f"topic {name} has {topics.get(name)} partitions, expected {partitions}:"
                " create it first (shared.kafka.ensure_topics)"
            )
    return {name: topics[name] for name in wanted}


# -- the idempotent agent --------------------------------------------------------------------


@dataclass(frozen=True)
class ParkedMessage:
    topic: str
    partition: int
    offset: int
    reason: str


@dataclass
class StreamStats:
    """Counters for metrics. ``positions`` is the last position applied per scope."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    parked: int = 0
    batches: int = 0
    apply_errors: int = 0
    last_position: int = 0
    retrying_since: float | None = None  # wall time the batch held now first failed
    positions: dict[str, int] = field(default_factory=dict)
    last_parked: deque[ParkedMessage] = field(default_factory=lambda: deque(maxlen=PARKED_KEPT))

    @property
    def retrying(self) -> bool:
        """A failing batch is held and retried now."""
        return self.retrying_since is not None


class NotAnEnvelope(ValueError):
    """A message whose value is not an event envelope (or whose hash does not match)."""


def decode_envelope(value: bytes | None, *, verify_hash: bool = True) -> RecordedEvent:
    """The event in a message value, or ``NotAnEnvelope``."""
    if value is None:
        raise NotAnEnvelope("empty message")
    try:
        if verify_hash:
            event = RecordedEvent.from_wire_json(value.decode())
        else:
            event = RecordedEvent.from_wire(json.loads(value))
    except HashMismatch as exc:
        raise NotAnEnvelope(str(exc)) from exc
    except Exception as exc:  # whatever the bytes are, they are parked, never fatal
        raise NotAnEnvelope(f"{type(exc).__name__}: {exc}") from exc
    if event.position < 1:
        raise NotAnEnvelope(f"position {event.position}")
    return event


async def eager_batches(
    stream: StreamT[bytes], max_: int, within: float
) -> AsyncIterator[list[EventT[bytes]]]:
    """The stream's events in batches, never acked here (acking is the caller's, as with Faust's
    ``noack_take``). A batch goes as soon as it holds ``max_`` events, or ``within`` seconds
    after its first event arrived: not at the next tick of a fixed timer, as ``noack_take``
    does (a message there waits up to the whole window, ``within`` / 2 on average, even with
    the agent idle). While the caller works on a batch, the next one fills (up to ``max_``):
    under load it is taken at once, larger, and nothing waits for a timer.

    Faust's own stream machinery feeds it (a processor on a passively drained stream, as in
    ``noack_take``); a processor that fails crashes the stream, as there."""
    concrete = cast(Stream[bytes], stream)
    loop = asyncio.get_running_loop()
    buffer: list[EventT[bytes]] = []
    arrived = asyncio.Event()  # the buffer holds something
    full = asyncio.Event()
    room = asyncio.Event()  # the buffer is below max_
    room.set()
    first_at = 0.0

    async def add_to_buffer(value: bytes) -> bytes:
        nonlocal first_at
        try:
            while len(buffer) >= max_:
                room.clear()
                await concrete.wait(room)  # type: ignore[arg-type]
                if concrete.should_stop:
                    return value
            event = concrete.current_event
            if event is None:
                raise RuntimeError("eager_batches: a value without its event")
            if not buffer:
                first_at = loop.time()
            buffer.append(cast(EventT[bytes], event))
            arrived.set()
            if len(buffer) >= max_:
                full.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("streaming.buffer_failed", error=repr(exc))
            await concrete.crash(exc)
        return value

    enable_acks = concrete.enable_acks
    concrete.enable_acks = False
    concrete.add_processor(add_to_buffer)
    concrete._enable_passive(cast(Any, aiter(concrete.channel)))
    try:
        while not concrete.should_stop:
            # (mode's wait reports a timeout as "stopped": should_stop is what tells)
            if not buffer:
                arrived.clear()
                await concrete.wait(arrived)  # type: ignore[arg-type]
                continue
            wait = first_at + within - loop.time()
            if len(buffer) < max_ and wait > 0:
                full.clear()
                await concrete.wait(full, timeout=wait)  # type: ignore[arg-type]
                if concrete.should_stop:
                    break
            batch = buffer[:]
            buffer.clear()
            room.set()
            yield batch
    finally:
        concrete.enable_acks = enable_acks
        concrete._processors.remove(add_to_buffer)


class EventAgent:
    """One Faust agent applying a topic's events through an ``IdempotentConsumer``.

    Made by ``idempotent_agent``; ``stats`` is live, ``agent`` is the Faust agent."""

    def __init__(
        self, app: faust.App, *, topic: str, consumer: IdempotentConsumer, apply: Apply,
        batch_size: int, max_wait_s: float, name: str, verify_hash: bool,
        retry_initial_s: float, retry_max_s: float,
    ) -> None:
        if batch_size < 1 or max_wait_s <= 0:
            raise ValueError("batch_size must be >= 1 and max_wait_s > 0")
        self.app = app
        self.topic_name = topic
        self.consumer = consumer
        self.apply = apply
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.name = name
        self.verify_hash = verify_hash
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.stats = StreamStats()
        self.partitions: int | None = None
        """The topic's partition count the consumer's positions were checked against as the
        app started (``check_partition_counts``; None: not checked)."""
        self.on_applied: Callable[[], None] | None = None
        """Called after a batch is applied and acked (e.g. to wake readers in this process)."""
        self.topic = app.topic(
            topic, key_type=bytes, value_type=bytes, key_serializer="raw",
            value_serializer="raw", partitions=app.conf.topic_partitions, internal=False,
        )
        self.agent = app.agent(self.topic, name=name, concurrency=1)(self._run)
        setattr(app, _EVENT_AGENTS, [*event_agents(app), self])
        self._revoked: set[str] = set()  # scopes taken away (and not given back)
        app.on_partitions_revoked.connect(self._forget_revoked)
        app.on_partitions_assigned.connect(self._note_assigned)

    async def _forget_revoked(self, _app: Any, /, *args: Any, signal: Any = None,
                              **_: Any) -> None:
        """A partition taken away is another worker's to report: its last position here
        would stay frozen in ``stats.positions`` (a metric, per partition), also when a
        batch of it in flight finishes after the revocation."""
        revoked: set[TP] = args[0]
        for tp in revoked:
            scope = scope_for(tp.topic, tp.partition)
            self._revoked.add(scope)
            self.stats.positions.pop(scope, None)

    async def _note_assigned(self, _app: Any, /, *args: Any, signal: Any = None,
                             **_: Any) -> None:
        assigned: set[TP] = args[0]
        for tp in assigned:
            self._revoked.discard(scope_for(tp.topic, tp.partition))

    async def _run(self, stream: StreamT[bytes]) -> None:
        # eager_batches yields the buffered *events* and, unlike take()/take_events(), does
        # not ack them in a finally block when this body raises: acking is ours alone.
        async for batch in eager_batches(stream, self.batch_size, self.max_wait_s):
            await self._handle_until_done(stream, cast(Sequence[EventT[bytes]], batch))

    async def _handle_until_done(
        self, stream: StreamT[bytes], batch: Sequence[EventT[bytes]]
    ) -> None:
        # An exception escaping the agent would make Faust's supervisor restart it on the
        # *next* messages, leaving this batch unapplied while later positions advance the
        # stored position: the batch would be skipped on redelivery. So hold it and retry
        # (apply is idempotent by position, acks by message).
        groups = await self.decode(stream, batch)
        delay = self.retry_initial_s
        while True:
            try:
                await self.apply_groups(stream, groups)
                return
            except Exception as exc:
                self.stats.apply_errors += 1
                log.critical("streaming.batch_failed", agent=self.name, error=repr(exc),
                             traceback=_plain_traceback(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    async def decode(self, stream: StreamT[bytes], batch: Sequence[EventT[bytes]]) -> Groups:
        """Decode a batch, grouped by partition; park (and ack) what is not an envelope."""
        self.stats.batches += 1
        self.stats.received += len(batch)
        groups: Groups = {}
        for event in batch:
            message = event.message
            try:
                recorded = decode_envelope(message.value, verify_hash=self.verify_hash)
            except NotAnEnvelope as exc:
                self._park(message.topic, message.partition, message.offset, str(exc))
                await stream.ack(event)
                continue
            acks, by_position = groups.setdefault(message.tp, ([], {}))
            acks.append(event)
            # a republish may put one position twice into a batch: apply it once
            by_position.setdefault(recorded.position, recorded)
        return groups

    async def apply_groups(self, stream: StreamT[bytes], groups: Groups) -> None:
        """Apply every partition's events in one transaction (in position order), then ack.

        A partition beyond the count checked at start (the topic recreated or grown under a
        running agent: a relay started with another ``YIZHAN_TOPIC_PARTITIONS``) is refused
        (``PartitionCountChanged``): its stored position, if any, belongs to another layout.
        The batch is held, retried and logged like any failing one, nothing applied."""
        if self.partitions is not None and (beyond := sorted(
                tp.partition for tp in groups if tp.partition >= self.partitions)):
            raise PartitionCountChanged(
                f"{self.name}: messages on partition {beyond[-1]} of {self.topic_name}, which "
                f"had {self.partitions} partitions when this agent started: the topic's "
                "partition count changed under it. Stop the services and follow README "
                "\"Scaling out\" (`yizhan consumers repartition`)")
        pending = {scope_for(tp.topic, tp.partition): tp for tp in groups}
        fresh_by_scope = await self._apply_until_done(pending, {
            scope: [groups[tp][1][p] for p in sorted(groups[tp][1])]
            for scope, tp in pending.items()})
        for scope, fresh in fresh_by_scope.items():
            acks = groups[pending[scope]][0]
            self.stats.applied += len(fresh)
            self.stats.duplicates += len(acks) - len(fresh)
            if fresh:
                last = fresh[-1].position
                if scope not in self._revoked:
                    self.stats.positions[scope] = last
                self.stats.last_position = max(self.stats.last_position, last)
            for event in acks:
                await stream.ack(event)
        if self.on_applied is not None and fresh_by_scope:
            self.on_applied()

    async def _apply_until_done(
        self, tps: dict[str, TP], batches: dict[str, list[RecordedEvent]]
    ) -> dict[str, list[RecordedEvent]]:
        """Apply, retrying with backoff until it succeeds (the fresh events per scope). A
        partition no longer assigned to this worker while retrying is dropped from the batch
        (nothing of it acked: it is redelivered to its new worker)."""
        try:
            return await self._apply_with_retries(tps, batches)
        finally:  # applied, released, or stopping: no batch held failing any more
            self.stats.retrying_since = None

    async def _apply_with_retries(
        self, tps: dict[str, TP], batches: dict[str, list[RecordedEvent]]
    ) -> dict[str, list[RecordedEvent]]:
        delay = self.retry_initial_s
        attempt = 0
        while batches:
            try:
                fresh = await self.consumer.apply_scopes(batches, self.apply)
            except Exception as exc:  # retried: the batch is held, never skipped
                attempt += 1
                self.stats.apply_errors += 1
                if self.stats.retrying_since is None:
                    self.stats.retrying_since = time.time()
                first = min(events[0].position for events in batches.values() if events)
                last = max(events[-1].position for events in batches.values() if events)
                log.error("streaming.apply_failed", agent=self.name, scopes=sorted(batches),
                          first=first, last=last, attempt=attempt, error=repr(exc),
                          retry_in_s=delay,
                          # one plain traceback per held batch: no frame locals (events,
                          # personal data) in the log, and cheap in any renderer
                          traceback=_plain_traceback(exc) if attempt == 1 else None)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                assigned = self.app.consumer.assignment()
                for scope in [s for s in batches if tps[s] not in assigned]:
                    del batches[scope]
                    log.warning("streaming.batch_released", agent=self.name, scope=scope,
                                reason="partition revoked while retrying")
            else:
                return fresh
        return {}

    def _park(self, topic: str, partition: int, offset: int, reason: str) -> None:
        self.stats.parked += 1
        self.stats.last_parked.append(ParkedMessage(topic, partition, offset, reason))
        log.error("streaming.message_parked", agent=self.name, topic=topic,
                  partition=partition, offset=offset, reason=reason)


def _plain_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def idempotent_agent(
    app: faust.App,
    *,
    topic: str,
    consumer: IdempotentConsumer | None = None,
    pool: asyncpg.Pool | None = None,
    consumer_name: str | None = None,
    apply: Apply,
    batch_size: int = 500,
    max_wait_s: float = 0.01,
    name: str | None = None,
    verify_hash: bool = True,
    retry_initial_s: float = 0.2,
    retry_max_s: float = 5.0,
) -> EventAgent:
    """Declare an agent on ``topic`` (pre-created, key = stream id, value = JSON envelope) that
    applies events exactly once through ``consumer`` (or ``IdempotentConsumer(pool,
    consumer_name)``) with ``apply(conn, events)`` — events in position order, one call per
    batch (every partition's fresh events merged), inside the transaction that advances the
    stored positions.

    Batches hold up to ``batch_size`` messages, or what arrived within ``max_wait_s`` of the
    first (``eager_batches``). Call
    before the app starts. ``name`` (default: the consumer name) must be unique in the app."""
    if consumer is None:
        if pool is None or consumer_name is None:
            raise ValueError("pass consumer, or pool and consumer_name")
        consumer = IdempotentConsumer(pool, consumer_name)
    return EventAgent(
        app, topic=topic, consumer=consumer, apply=apply, batch_size=batch_size,
        max_wait_s=max_wait_s, name=name or f"{consumer.name}.{topic}",
        verify_hash=verify_hash, retry_initial_s=retry_initial_s, retry_max_s=retry_max_s,
    )
