"""The cases process: HTTP API, the SLA agent and the SLA timer in one event loop."""

from __future__ import annotations

import asyncio

from services.cases.agents import build_faust
from services.cases.bootstrap import bootstrap, build_app
from shared.kafka import ensure_topics, topic_specs
from shared.logging import get_logger
from shared.service import serve_http, tuned_gc
from shared.settings import Settings
from shared.stack import Endpoints
from shared.streaming import agent_readiness, running_app, stop_on_crash

log = get_logger(__name__)


async def serve(settings: Settings, ep: Endpoints, stop: asyncio.Event) -> None:
    assert ep.kafka_bootstrap is not None
    await ensure_topics(ep.kafka_bootstrap, topic_specs(settings),
                        replication_factor=settings.topic_replication_factor)
    service = await bootstrap(settings, ep.service_url)
    faust_app, agent = build_faust(service, ep.kafka_bootstrap)
    readiness = agent_readiness(faust_app, "SLA agent", lambda: agent.stats.retrying_since,
                                bootstrap=ep.kafka_bootstrap, topics=[settings.topic_case_events])
    try:
        with tuned_gc():  # after start-up: what is loaded now is frozen
            async with running_app(faust_app), stop_on_crash(faust_app, stop):
                await serve_http(build_app(service, readiness=readiness), settings.http_host,
                                 settings.cases_port, stop, name="cases")
    finally:
        await service.close()
