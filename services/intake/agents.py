"""Faust entrypoint of intake: one agent on ``intake.submissions``. It only translates: a batch
of Faust events → ``RawMessage``s → ``KafkaIngress.handle`` → ack.

Following DESIGN's known pitfalls: messages are taken without auto-ack (``noack_take``), acked
only after ``handle`` returned (every outcome durable in PostgreSQL, every rejection published);
concurrency 1; topics pre-created (``shared.kafka.ensure_topics``); earliest offsets and a short
session timeout (``shared.streaming.make_app``); no Kafka transactions. A failing batch is
retried in place with backoff and never acked meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types import EventT, StreamT

from services.intake.ingress import KafkaIngress
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
                 max_wait_s: float, retry_initial_s: float = 0.2,
                 retry_max_s: float = 5.0) -> None:
        self.ingress = ingress
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.failures = 0
        self.topic = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                               value_serializer="raw", partitions=app.conf.topic_partitions,
                               internal=False)
        self.agent = app.agent(self.topic, name=f"intake.{topic}", concurrency=1)(self._run)

    async def _run(self, stream: StreamT[bytes]) -> None:
        # noack_take yields the buffered *events* and never acks them itself: acking is ours
        batches = stream.noack_take(self.batch_size, within=self.max_wait_s)  # type: ignore[attr-defined]
        async for batch in batches:
            events: Sequence[EventT[bytes]] = batch
            await self._handle_until_done([raw_message(event) for event in events])
            for event in events:
                await stream.ack(event)

    async def _handle_until_done(self, messages: list[RawMessage]) -> None:
        delay = self.retry_initial_s
        while True:
            try:
                await self.ingress.handle(messages)
                return
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # held and retried: an offset never passes an outcome
                self.failures += 1
                log.error("intake.batch_failed", messages=len(messages), error=repr(exc),
                          retry_in_s=delay, attempt=self.failures)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)


def raw_message(event: EventT[bytes]) -> RawMessage:
    message = event.message
    return RawMessage(topic=message.topic, partition=message.partition, offset=message.offset,
                      value=message.value, headers=_headers(message.headers))


def _headers(headers: Any) -> Mapping[str, bytes]:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k): bytes(v) for k, v in items if v is not None}
