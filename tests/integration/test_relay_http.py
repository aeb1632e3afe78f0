"""The relay's HTTP face: alive, ready while it leads or stands by and not while it keeps
failing (saying why), and metrics that follow the log, the relay and the signed checkpoints."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import httpx
import pytest
from aiokafka.errors import KafkaTimeoutError

from shared.eventstore.checkpoints import CheckpointSigner, write_checkpoint
from shared.eventstore.postgres import PostgresEventStore
from shared.relay import Relay, RelayConfig
from shared.relay_http import relay_app, relay_ready
from shared.runtime import free_port
from shared.settings import DEV_SIGNING_KEY
from tests.integration.test_relay import append_many, config, running, wait_for


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} missing from:\n{text}"
    return float(found[1])


async def test_ready_while_leading_and_metrics_follow_the_log(
    pg_store: PostgresEventStore, kafka_bootstrap: str
) -> None:
    await append_many(pg_store, 30)
    relay = Relay(pg_store, config(kafka_bootstrap))
    transport = httpx.ASGITransport(app=relay_app(relay, pg_store.pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:
        assert (await http.get("/healthz")).status_code == 200
        before = (await http.get("/metrics")).text
        assert metric(before, "yizhan_relay_lag_events") == 30
        assert metric(before, "yizhan_checkpoint_lag_events") == 30
        async with running(relay):
            await wait_for(lambda: relay.stats.position == 30)
            assert (await http.get("/readyz")).status_code == 200
            await write_checkpoint(pg_store.pool, CheckpointSigner(DEV_SIGNING_KEY))
            await append_many(pg_store, 5)
            await wait_for(lambda: relay.stats.position == 35)
            text = (await http.get("/metrics")).text
        assert metric(text, "yizhan_relay_leader") == 1
        assert metric(text, "yizhan_relay_head_position") == 35
        assert metric(text, "yizhan_relay_position") == 35
        assert metric(text, "yizhan_relay_lag_events") == 0
        assert metric(text, "yizhan_relay_published_total") == 35
        assert metric(text, "yizhan_checkpoint_position") == 30
        assert metric(text, "yizhan_checkpoint_lag_events") == 5


async def test_not_ready_while_the_broker_is_unreachable_and_says_why(
    pg_store: PostgresEventStore,
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    cfg = config(nowhere)
    relay = Relay(pg_store, RelayConfig(**{**cfg.__dict__, "request_timeout_ms": 500}))
    transport = httpx.ASGITransport(app=relay_app(relay, pg_store.pool))
    async with (httpx.AsyncClient(transport=transport, base_url="http://relay") as http,
                running(relay)):
        await wait_for(lambda: relay.stats.errors >= 1)
        answer = await http.get("/readyz")
        alive = await http.get("/healthz")
    assert alive.status_code == 200
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "relay: retrying" in answer.json()["detail"]


async def test_not_ready_while_the_broker_answers_but_never_acknowledges(
    pg_store: PostgresEventStore, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that answers metadata requests but fails every produce (e.g. acks=all without
    enough in-sync replicas): nothing is published, and /readyz must say so all along — not
    turn ready at every retry, when the broker check at the start of each attempt passes."""
    await append_many(pg_store, 10)

    async def never_acknowledged(self: Relay, producer: object, batch: object) -> None:
        await asyncio.sleep(0.3)  # the produce request waits, then times out
        raise KafkaTimeoutError("not enough in-sync replicas")

    monkeypatch.setattr(Relay, "_send", never_acknowledged)
    relay = Relay(pg_store, dataclasses.replace(config(kafka_bootstrap), max_backoff_s=0.3))
    check = relay_ready(relay)
    async with running(relay):
        await wait_for(lambda: relay.stats.errors >= 1)
        answers = []
        for _ in range(40):  # a few attempts' worth
            answers.append(await check())
            await asyncio.sleep(0.05)
        assert relay.stats.errors >= 3 and relay.stats.published == 0
    assert all(answer is not None for answer in answers), answers
