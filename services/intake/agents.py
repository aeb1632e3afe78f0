"""Faust entrypoint of intake: one agent on ``intake.submissions``. It only translates: a batch
of Faust events → ``RawMessage``s → ``KafkaIngress.handle`` → ack.

Following DESIGN's known pitfalls: messages are taken without auto-ack (``noack_take``), acked
only after ``handle`` returned (every outcome durable in PostgreSQL, every rejection published);
concurrency 1; topics pre-created (``shared.kafka.ensure_topics``); earliest offsets and a short
session timeout (``shared.streaming.make_app``); no Kafka transactions. A failing batch is
retried in place with backoff and never acked meanwhile.

Pipelined within the one actor: up to ``depth`` batches are in flight, so one batch's database
round trips (the append's group commit, the outcome record) overlap the next one's decoding and
deciding, which is where the CPU goes. Batches are still acked strictly in the order they were
read (a batch's acks wait for every earlier batch's), and batches that share a message or an
idempotency key are handled one after the other (``KafkaIngress.turns``). Stopping cancels the
batches in flight: none of them is acked, all are delivered again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types import EventT, StreamT

from services.intake.ingress import KafkaIngress, Turn
from services.intake.messages import RawMessage
from shared.logging import get_logger

log = get_logger(__name__)


class KafkaRejectionPublisher:
    """Publishes rejections to ``intake.rejected`` with aiokafka, waiting for every ack."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.topic = topic
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all",
                                         linger_ms=5, request_timeout_ms=10_000)

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        sent = [await self.producer.send(self.topic, value, key=key) for key, value in messages]
        await asyncio.gather(*sent)


class SubmissionAgent:
    """The agent on ``intake.submissions``; ``ingress.stats`` are its counters."""

    def __init__(self, app: faust.App, *, topic: str, ingress: KafkaIngress, batch_size: int,
                 max_wait_s: float, depth: int = 2, retry_initial_s: float = 0.2,
                 retry_max_s: float = 5.0) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.app = app
        self.ingress = ingress
        self.depth = depth
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.failures = 0
        self._failing: dict[object, float] = {}  # each held batch: its first failure's time
        self.topic = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                               value_serializer="raw", partitions=app.conf.topic_partitions,
                               internal=False)
        self.agent = app.agent(self.topic, name=f"intake.{topic}", concurrency=1)(self._run)

    @property
    def failing_since(self) -> float | None:
        """Wall time of the first failure of the batch held failing longest, or None. Per
        batch: with batches in flight, another batch's success says nothing of one still
        failing, and a batch cancelled (stopping) is failing no more."""
        return min(self._failing.values(), default=None)

    async def _run(self, stream: StreamT[bytes]) -> None:
        # noack_take yields the buffered *events* and never acks them itself: acking is ours
        batches = stream.noack_take(self.batch_size, within=self.max_wait_s)  # type: ignore[attr-defined]
        pipeline = _Pipeline(self, stream)
        try:
            async for batch in batches:
                pipeline.taken.extend(batch)
                await pipeline.dispatch()
        finally:  # stopping: nothing in flight or taken is acked; it is delivered again
            await pipeline.cancel()

    async def _handle_then_ack(self, stream: StreamT[bytes], events: Sequence[EventT[bytes]],
                               messages: list[RawMessage], turn: Turn,
                               previous: asyncio.Task[None] | None) -> None:
        try:
            await turn.wait()
            await self._handle_until_done(messages)
        finally:
            turn.release()
        if previous is not None:  # ack in the order read, never ahead of an earlier batch
            await asyncio.wait([previous])
            if previous.cancelled() or previous.exception() is not None:
                return
        for event in events:
            await stream.ack(event)

    async def _handle_until_done(self, messages: list[RawMessage]) -> None:
        delay = self.retry_initial_s
        batch = object()
        try:
            while True:
                try:
                    await self.ingress.handle(messages)
                    return
                except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # held and retried: an offset never passes an outcome
                    self.failures += 1
                    self._failing.setdefault(batch, time.time())
                    log.error("intake.batch_failed", messages=len(messages), error=repr(exc),
                              retry_in_s=delay, attempt=self.failures)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)
        finally:
            self._failing.pop(batch, None)


class _Pipeline:
    """The agent's batches: ``taken`` (read, not started) and ``in_flight`` (started, oldest
    first; each acks only after the one before it)."""

    def __init__(self, agent: SubmissionAgent, stream: StreamT[bytes]) -> None:
        self.agent = agent
        self.stream = stream
        self.taken: list[EventT[bytes]] = []
        self.in_flight: deque[asyncio.Task[None]] = deque()
        self.closed = False
        self._watched: asyncio.Task[None] | None = None

    async def dispatch(self) -> None:
        """Start every full batch taken (at most ``depth`` in flight), and the rest at once if
        nothing is in flight; else the rest waits to fill up, and starts anyway once the
        newest batch in flight is done (the stream may have gone quiet)."""
        self.reap()
        batch_size, depth = self.agent.batch_size, self.agent.depth
        while len(self.taken) >= batch_size or (self.taken and not self.in_flight):
            while len(self.in_flight) >= depth:
                await asyncio.wait([self.in_flight[0]])
                self.reap()
            self.start()
        if self.taken:
            self._start_when_idle()

    def start(self) -> None:
        """Start (a batch of) the taken messages; claims are made here, in the order read."""
        if not self.taken or self.closed:
            return
        size = self.agent.batch_size
        events, self.taken = self.taken[:size], self.taken[size:]
        messages = [raw_message(event) for event in events]
        turn = self.agent.ingress.turns.claim(messages)
        previous = self.in_flight[-1] if self.in_flight else None
        self.in_flight.append(asyncio.create_task(self.agent._handle_then_ack(
            self.stream, events, messages, turn, previous)))

    def _start_when_idle(self) -> None:
        newest = self.in_flight[-1]
        if newest is self._watched:
            return
        self._watched = newest

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and self.in_flight and self.in_flight[-1] is task:
                self.start()

        newest.add_done_callback(done)

    def reap(self) -> None:
        while self.in_flight and self.in_flight[0].done():
            task = self.in_flight.popleft()
            if not task.cancelled() and task.exception() is not None:
                log.error("intake.batch_not_acked", error=repr(task.exception()))

    async def cancel(self) -> None:
        self.closed = True
        for task in self.in_flight:
            task.cancel()
        if self.in_flight:
            await asyncio.wait(self.in_flight)


def raw_message(event: EventT[bytes]) -> RawMessage:
    message = event.message
    return RawMessage(topic=message.topic, partition=message.partition, offset=message.offset,
                      value=message.value, headers=_headers(message.headers))


def _headers(headers: Any) -> Mapping[str, bytes]:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k): bytes(v) for k, v in items if v is not None}
