"""The functions behind `yizhan serve intake` and `yizhan privacy erase SUBJECT`: the API and
the agent run until stopped; erasing a subject makes their fields unreadable."""

from __future__ import annotations

import asyncio
import random
import uuid

import httpx
import pytest

from services.intake.cli import erase_subject, serve
from services.intake.privacy import ErasureRefused, KeyVault, Privacy, Sealer, SubjectErased
from services.intake.settings import IntakeSettings
from shared.contracts.cases import EncryptedApplicant
from shared.eventstore.postgres import PostgresEventStore
from shared.kafka import ensure_topics
from shared.reference import load_reference
from shared.runtime import free_port
from shared.settings import Settings
from shared.stack import Endpoints
from tests.conftest import Db
from tests.integration.intake.support import bearer
from tests.unit.intake.people import synthetic_person


async def test_serve_answers_until_stopped_then_erase_shreds_the_subject(
    database: Db, kafka_bootstrap: str, pg_store: PostgresEventStore,
) -> None:
    run = uuid.uuid4().hex[:8]
    settings = Settings(topic_case_events=f"case.events.{run}",
                        topic_intake_submissions=f"intake.submissions.{run}",
                        topic_intake_rejected=f"intake.rejected.{run}", topic_partitions=2)
    intake = IntakeSettings(http_port=free_port(), consumer_group=f"intake-{run}")
    endpoints = Endpoints(database.admin_dsn, database.service_dsn, kafka_bootstrap, False)
    await ensure_topics(kafka_bootstrap, {settings.topic_intake_submissions: 2,
                                          settings.topic_intake_rejected: 2,
                                          settings.topic_case_events: 2})
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(settings, endpoints, stop, intake=intake))
    base = f"http://127.0.0.1:{intake.http_port}"
    person = synthetic_person(random.Random(31))
    async with httpx.AsyncClient(base_url=base) as client:
        await _until_up(client, serving)
        answer = await client.post("/v1/intake", headers=bearer(
            "clerk.530102001001.a", load_reference()), json={
                "station": "530102001001", "applicant": person.as_applicant(),
                "service_code": "legal_information"})
    stop.set()
    await asyncio.wait_for(serving, 30)
    assert answer.status_code == 201, answer.text
    subject = answer.json()["subject_id"]

    for who, why in (("clerk.530102001001.a", "asked"), ("ghost.1", "asked"),
                     ("auditor.530100.a", "  ")):  # not one who orders erasures; no reason
        with pytest.raises(ErasureRefused):
            await erase_subject(settings, endpoints, subject, erased_by=who, reason=why,
                                intake=intake)
    done = await erase_subject(settings, endpoints, subject, erased_by="auditor.530100.a",
                               reason="applicant's request", intake=intake)
    assert done.startswith(f"erased subject {subject}")
    again = await erase_subject(settings, endpoints, subject, erased_by="auditor.530100.a",
                                reason="applicant's request", intake=intake)
    assert "already erased" in again and "by auditor.530100.a" in again
    (order,) = await pg_store.read_stream(f"privacy-erasure-{subject}")  # on record, once
    assert order.type == "SubjectErased"
    assert order.data["ordered_by"] == {"user_id": "auditor.530100.a", "role": "auditor",
                                        "unit": "530100"}
    assert order.data["reason"] == "applicant's request"
    with pytest.raises(ErasureRefused, match="no subject"):
        await erase_subject(settings, endpoints, "subj-nobody", erased_by="auditor.530100.a",
                            reason="applicant's request", intake=intake)
    (submitted,) = [e for e in await pg_store.read_stream(
        f"case-{answer.json()['cases'][0]['case_id']}") if e.type == "CaseSubmitted"]
    privacy = Privacy(KeyVault(pg_store.pool, Sealer.from_settings(intake)))
    with pytest.raises(SubjectErased):
        await privacy.reveal(EncryptedApplicant.model_validate(submitted.data["applicant"]))


async def _until_up(client: httpx.AsyncClient, serving: asyncio.Task[None]) -> None:
    for _ in range(200):
        if serving.done():
            serving.result()  # raises what stopped it
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("intake did not start serving")
