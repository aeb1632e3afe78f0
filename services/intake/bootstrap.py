"""Composition root of intake: pool, store, reference data, source registry, privacy, clock,
handlers, the HTTP app and the Kafka worker."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from fastapi import FastAPI

from services.cases.handlers import CaseCommands
from services.intake.agents import KafkaRejectionPublisher, SubmissionAgent
from services.intake.api import MAX_BODY_BYTES, operations, router
from services.intake.handlers import Clock, IdempotencyLog, IntakeHandler
from services.intake.ingress import SWEEP_BATCH, KafkaIngress, OutcomeLog
from services.intake.privacy import KeyVault, Privacy, Sealer
from services.intake.quarantine import Quarantine
from services.intake.settings import IntakeSettings
from services.intake.sources import SourceRegistry, load_sources
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.logging import get_logger
from shared.reference import Reference, load_reference
from shared.service import ReadinessCheck, create_app, database_ready, tune_gc
from shared.settings import Settings
from shared.streaming import make_app, running_app

log = get_logger(__name__)


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class IntakeService:
    settings: Settings
    intake: IntakeSettings
    pool: asyncpg.Pool
    store: PostgresEventStore
    ref: Reference
    sources: SourceRegistry
    privacy: Privacy
    handler: IntakeHandler
    clock: Clock

    async def close(self) -> None:
        await self.store.close()
        await self.pool.close()


async def bootstrap(
    settings: Settings, service_url: str, *, intake: IntakeSettings | None = None,
    ref: Reference | None = None, clock: Clock = system_clock,
) -> IntakeService:
    intake = intake or IntakeSettings()
    reference = ref or load_reference()
    sources = load_sources(intake.sources_file, reference.org,
                           production=intake.env == "prod", catalogue=reference.catalogue)
    if intake.uses_development_keys:
        log.warning("intake.development_keys", hint="set YIZHAN_INTAKE_MASTER_KEY, "
                    "_ID_HASH_KEY and _QUARANTINE_KEY: the development keys are public")
    pool = await create_pool(service_url, min_size=settings.pool_min,
                             max_size=settings.db_pool_max)
    # One writer: the agent already pipelines two batches of visits, and each batch's appends
    # come at once; a second writer only split them in two transactions (measured: 1,123-1,132
    # submissions/s against 1,183-1,373 with one, interleaved runs of bench/intake.py)
    store = PostgresEventStore(pool, max_batch=settings.append_max_batch, writers=1)
    privacy = Privacy(KeyVault(pool, Sealer.from_settings(intake)))
    handler = IntakeHandler(store, reference, privacy, IdempotencyLog(pool), clock,
                            tracking_key=intake.key_bytes(intake.id_hash_key))
    return IntakeService(settings, intake, pool, store, reference, sources, privacy, handler,
                         clock)


def build_app(service: IntakeService, *, readiness: Sequence[ReadinessCheck] = ()) -> FastAPI:
    """``readiness``: checks for ``/readyz`` beside the database's (the broker, the agent)."""
    return create_app(
        "Yizhan intake", [router, operations],
        state={"settings": service.settings, "intake_handler": service.handler},
        readiness=[database_ready(service.pool), *readiness], max_body=MAX_BODY_BYTES,
        description="The front door: station clerks receive residents; every service of a "
                    "visit becomes a case, owned by the receiving clerk, with the one-time "
                    "notification of missing documents and the time limit's due date.",
    )


def build_ingress(service: IntakeService, publisher: KafkaRejectionPublisher) -> KafkaIngress:
    intake = service.intake
    quarantine = Quarantine(intake.key_bytes(intake.quarantine_key),
                            keep_bytes=intake.max_message_bytes)
    return KafkaIngress(
        service.handler, CaseCommands(service.store, service.ref), OutcomeLog(service.pool),
        service.sources, quarantine, publisher, max_bytes=intake.max_message_bytes,
        clock=service.clock)


async def sweep_dead_letters(ingress: KafkaIngress, every_s: float) -> None:
    """At start-up and then every ``every_s``: publish the rejections recorded at least
    ``every_s`` ago that are still not on the dead-letter topic (``KafkaIngress.sweep``). A
    failure is logged and tried again next time."""
    while True:
        try:
            while await ingress.sweep(older_than_s=every_s, limit=SWEEP_BATCH) == SWEEP_BATCH:
                pass  # a backlog: the next batch at once
        except Exception as exc:  # the broker or the database away: next time
            log.error("intake.dead_letter_sweep_failed", error=repr(exc), retry_in_s=every_s)
        await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def running_worker(
    service: IntakeService, bootstrap_servers: str, *, submissions_topic: str | None = None,
    rejected_topic: str | None = None, partitions: int | None = None,
    group: str | None = None,
) -> AsyncIterator[SubmissionAgent]:
    """Run the Kafka agent (topics must exist: ``shared.kafka.ensure_topics``) until the block
    ends. Arguments override settings (tests use their own topics and groups)."""
    settings, intake = service.settings, service.intake
    publisher = KafkaRejectionPublisher(bootstrap_servers,
                                        rejected_topic or settings.topic_intake_rejected)
    await publisher.start()
    previous_gc = tune_gc()
    try:
        # other systems do not wait on their submissions' outcome: while the topic is quiet
        # the agent polls the broker at the background pace (a busy topic is fetched at once)
        app = make_app(group or intake.consumer_group, settings=settings,
                       bootstrap_servers=bootstrap_servers, partitions=partitions,
                       fetch_max_wait_ms=settings.kafka_background_fetch_max_wait_ms)
        agent = SubmissionAgent(
            app, topic=submissions_topic or settings.topic_intake_submissions,
            ingress=build_ingress(service, publisher), batch_size=intake.batch_size,
            max_wait_s=intake.batch_wait_s, depth=intake.pipeline_depth)
        async with running_app(app, stop_timeout=20):
            sweeping = (asyncio.create_task(
                sweep_dead_letters(agent.ingress, intake.dead_letter_sweep_s),
                name="intake-dead-letter-sweep") if intake.dead_letter_sweep_s else None)
            try:
                yield agent
            finally:
                if sweeping is not None:
                    sweeping.cancel()  # gathered: its CancelledError is returned, and one
                    # cancelling this task while it waits still propagates
                    await asyncio.gather(sweeping, return_exceptions=True)
    finally:
        gc.set_threshold(*previous_gc)
        gc.unfreeze()
        await publisher.stop()


