"""What ``yizhan serve intake`` and ``yizhan privacy erase SUBJECT`` run (wired in
services/cli.py). No output here: the caller prints."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from services.intake.bootstrap import bootstrap, build_app, running_worker
from services.intake.privacy import ErasureRefused, KeyVault, Sealer, check_erasure_order
from services.intake.settings import IntakeSettings
from shared.contracts.audit import AuditReader, SubjectErased, erasure_stream
from shared.contracts.registry import to_new_event
from shared.eventstore.errors import WrongExpectedVersion
from shared.eventstore.port import NO_STREAM
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.kafka import ensure_topics, topic_specs
from shared.logging import current_correlation_id, get_logger, new_correlation_id
from shared.reference import Reference, load_reference
from shared.service import serve_http
from shared.settings import Settings
from shared.stack import Endpoints
from shared.streaming import agent_readiness, stop_on_crash

log = get_logger(__name__)


async def serve(settings: Settings, endpoints: Endpoints, stop: asyncio.Event, *,
                intake: IntakeSettings | None = None) -> None:
    """Run the intake API and its Kafka agent until ``stop`` is set."""
    intake = intake or IntakeSettings()
    if endpoints.kafka_bootstrap is None:
        raise ValueError("intake needs Kafka: endpoints(settings, kafka=True)")
    await ensure_topics(endpoints.kafka_bootstrap, topic_specs(settings),
                        replication_factor=settings.topic_replication_factor)
    service = await bootstrap(settings, endpoints.service_url, intake=intake)
    try:
        async with running_worker(service, endpoints.kafka_bootstrap) as worker, \
                stop_on_crash(worker.app, stop):
            app = build_app(service, readiness=agent_readiness(
                worker.app, "submissions agent", lambda: worker.failing_since,
                bootstrap=endpoints.kafka_bootstrap,
                topics=[settings.topic_intake_submissions, settings.topic_intake_rejected]))
            app.state.submission_agent = worker  # its counters, for /metrics
            await serve_http(app, intake.http_host, intake.http_port, stop, name="intake")
    finally:
        await service.close()


async def erase_subject(settings: Settings, endpoints: Endpoints, subject_id: str, *,
                        erased_by: str, reason: str, intake: IntakeSettings | None = None,
                        ref: Reference | None = None) -> str:
    """Crypto-shred a data subject: record the order in the log (``SubjectErased``), then
    delete their key. No event is changed, so ``yizhan audit verify`` still passes. What
    happened, as a sentence (``ErasureRefused`` first if the order is not one a supervisor or
    auditor gave with a reason)."""
    member = check_erasure_order(erased_by, reason, (ref or load_reference()).staff)
    intake = intake or IntakeSettings()
    pool = await create_pool(endpoints.service_url, min_size=1, max_size=2)
    store = PostgresEventStore(pool)
    try:
        vault = KeyVault(pool, Sealer.from_settings(intake))
        if await vault.has_key(subject_id):
            # the record first: a crash before the key goes leaves an order to carry out
            # again (erasing twice is harmless), never an erasure without its record
            order = SubjectErased(
                at=datetime.now(UTC), subject_id=subject_id, reason=reason.strip(),
                ordered_by=AuditReader(user_id=member.user_id, role=str(member.role),
                                       unit=member.unit))
            with contextlib.suppress(WrongExpectedVersion):  # recorded by an earlier attempt
                await store.append(erasure_stream(subject_id), NO_STREAM, [to_new_event(
                    order, metadata={"actor_id": member.user_id, "role": str(member.role),
                                     "unit": member.unit,
                                     "correlation_id": current_correlation_id()
                                     or new_correlation_id()})])
        if await vault.erase(subject_id, erased_by=erased_by, reason=reason.strip()):
            return (f"erased subject {subject_id}: their personal fields are now unreadable "
                    f"(recorded in the log, stream {erasure_stream(subject_id)})")
        before = await vault.erasure_of(subject_id)
    finally:
        await store.close()
        await pool.close()
    if before is not None:
        return (f"subject {subject_id} was already erased, on {before[0]:%Y-%m-%d %H:%M} UTC "
                f"by {before[1]}: nothing to do")
    raise ErasureRefused(f"no subject {subject_id} (subject ids look like subj-…, as in "
                         "CaseSubmitted.applicant)")
