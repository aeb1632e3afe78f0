"""Kafka plumbing shared by the services: topic set-up and client settings.

Every topic is created up front with the configured partition count, before any producer or
consumer touches it: the embedded broker auto-creates a topic named in a metadata request with
its own default partition count, which would scatter keys differently. Topic metadata is read
with a request for *all* topics, which creates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)


class TopicMisconfigured(RuntimeError):
    """A topic exists with another partition count than configured."""


def topic_specs(settings: Settings) -> dict[str, int]:
    """Every topic the product uses, with its partition count."""
    return {
        settings.topic_case_events: settings.topic_partitions,
        settings.topic_intake_submissions: settings.topic_partitions,
        settings.topic_intake_rejected: settings.topic_partitions,
    }


class BrokerProbe:
    """A ``/readyz`` check: does the broker answer, and does it hold ``topics``? One all-topics
    metadata request (it creates nothing) on a client opened for it, at most once every
    ``every_s``: the answer is kept in between, so a probe every second costs the broker
    nothing. ``/readyz`` needs no login: the error (addresses) and the missing topics' names
    go to the log, the answer only says what kind of thing is missing."""

    def __init__(self, bootstrap: str, topics: Sequence[str] = (), *, every_s: float = 5.0,
                 timeout_s: float = 2.0) -> None:
        self.bootstrap, self.topics = bootstrap, tuple(topics)
        self.every_s, self.timeout_s = every_s, timeout_s
        self._at: float | None = None
        self._answer: str | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> str | None:
        async with self._lock:  # concurrent probes share one request
            if self._at is None or time.monotonic() - self._at >= self.every_s:
                self._answer = await self._probe()
                self._at = time.monotonic()
            return self._answer

    async def _probe(self) -> str | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap,
                                    request_timeout_ms=int(self.timeout_s * 1000))
        try:
            await asyncio.wait_for(admin.start(), self.timeout_s)
            _, topics = await asyncio.wait_for(broker_state(admin), self.timeout_s)
        except Exception as exc:  # any failure means not ready
            log.warning("readiness.broker_unreachable", error=repr(exc))
            return "broker unreachable"
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        missing = [name for name in self.topics if name not in topics]
        if missing:
            log.warning("readiness.broker_topics_missing", topics=missing)
            return (f"broker: {len(missing)} of the service's {len(self.topics)} topics "
                    "missing")
        return None


async def describe_topics(admin: AIOKafkaAdminClient) -> dict[str, int]:
    """Partition count of every existing topic (an all-topics request: nothing is created)."""
    return (await broker_state(admin))[1]


async def broker_state(admin: AIOKafkaAdminClient) -> tuple[str | None, dict[str, int]]:
    """The cluster id and every topic's partition count, in one all-topics metadata request
    (naming a topic in a metadata request would auto-create it on the embedded broker)."""
    metadata = (await admin._get_cluster_metadata(topics=None)).to_object()
    topics = {
        t["topic"]: len(t["partitions"])
        for t in metadata["topics"] if t.get("error_code", 0) == 0
    }
    return metadata.get("cluster_id"), topics


async def recreate_topic(
    admin: AIOKafkaAdminClient, name: str, partitions: int, replication_factor: int = 1
) -> None:
    """Delete ``name`` if present and create it anew with ``partitions``: clears stray records
    and a topic auto-created with the wrong partition count."""
    for _ in range(20):
        _, topics = await broker_state(admin)
        if name in topics:
            await admin.delete_topics([name])
        errors = await _create(admin, {name: partitions}, replication_factor)
        if errors.get(name) == TopicAlreadyExistsError.errno:
            await asyncio.sleep(0.2)  # the deletion has not settled, or a client re-created it
            continue
        _, topics = await broker_state(admin)
        if topics.get(name) == partitions:
            log.info("kafka.topic_recreated", topic=name, partitions=partitions)
            return
    raise TopicMisconfigured(f"could not recreate topic {name} with {partitions} partitions")


async def ensure_topics(
    bootstrap: str, specs: Mapping[str, int], *, replication_factor: int = 1
) -> dict[str, int]:
    """Create missing topics; raise ``TopicMisconfigured`` if one exists with another partition
    count. Returns the topics' partition counts as found afterwards."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = await describe_topics(admin)
        missing = [name for name in specs if name not in existing]
        if missing:
            # "already exists" means another process won the race: the check below decides
            await _create(admin, {name: specs[name] for name in missing}, replication_factor)
            log.info("kafka.topics_created", topics=missing)
            existing = await describe_topics(admin)
        for name, partitions in specs.items():
            found = existing.get(name)
            if found != partitions:
                raise TopicMisconfigured(
                    f"topic {name} has {found} partitions, settings say {partitions}"
                )
        return {name: existing[name] for name in specs}
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient, specs: Mapping[str, int], replication_factor: int
) -> dict[str, int]:
    """Create topics; return the non-zero error code per topic (the client does not raise)."""
    response = await admin.create_topics(
        [NewTopic(name, n, replication_factor) for name, n in specs.items()]
    )
    return {t[0]: t[1] for t in response.topic_errors if t[1]}


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()
