"""The pure parts of the Faust boundary: envelope decoding (what is parked) and app config."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mode import Service

from shared.contracts.envelope import NewEvent, RecordedEvent
from shared.eventstore.memory import InMemoryEventStore
from shared.eventstore.port import NO_STREAM
from shared.settings import Settings
from shared.streaming import (
    AppCrashed,
    NotAnEnvelope,
    broker_urls,
    decode_envelope,
    make_app,
    stop_on_crash,
)


@pytest.fixture
async def recorded() -> RecordedEvent:
    store = InMemoryEventStore()
    await store.append("case-1", NO_STREAM, [NewEvent(
        "Noted", {"名字": "张三", "n": 10**20, "x": 1.5, "nested": [{"a": None}]},
        metadata={"correlation_id": "c-1"})])
    [event] = [e async for batch in store.read_all() for e in batch]
    return event


def test_a_wire_envelope_decodes_to_the_same_event_with_a_valid_hash(
    recorded: RecordedEvent,
) -> None:
    assert decode_envelope(recorded.to_wire_json().encode()) == recorded


@pytest.mark.parametrize("value", [
    None, b"", b"not json", b"[1, 2]", b'"text"', b'{"position": 1}', b"\xff\xfe",
])
def test_what_is_not_an_envelope_is_refused(value: bytes | None) -> None:
    with pytest.raises(NotAnEnvelope):
        decode_envelope(value)


def test_a_tampered_envelope_is_refused_unless_hashes_are_not_checked(
    recorded: RecordedEvent,
) -> None:
    tampered = json.dumps({**recorded.to_wire(), "data": {"n": 1}}).encode()
    with pytest.raises(NotAnEnvelope, match="hash mismatch"):
        decode_envelope(tampered)
    assert decode_envelope(tampered, verify_hash=False).data == {"n": 1}


@pytest.mark.parametrize("data", [
    {"data": {"data": 1}, "metadata": ',"data":'},  # the split markers inside the values
    {"名字": "张三", "n": 10**20, "x": 1.5},  # beyond 64 bits: only the json module parses it
])
async def test_any_layout_of_a_valid_envelope_decodes_to_the_same_event(data: dict) -> None:
    """The quick path splits the relay's text at its keys and lets the hash judge; other
    producers' layouts (other key order, markers inside values) must decode the same."""
    store = InMemoryEventStore()
    await store.append("case-2", NO_STREAM, [NewEvent("Noted", data, metadata={"data": "x"})])
    [event] = [e async for batch in store.read_all() for e in batch]
    wire = event.to_wire()
    layouts = [event.to_wire_json(), json.dumps(wire, ensure_ascii=False),
               json.dumps(dict(reversed(list(wire.items())))), json.dumps(wire, indent=2)]
    for text in layouts:
        assert decode_envelope(text.encode()) == event, text


def test_a_tampered_relay_text_is_refused(recorded: RecordedEvent) -> None:
    text = recorded.to_wire_json()
    assert '"n":100000000000000000000' in text
    with pytest.raises(NotAnEnvelope, match="hash mismatch"):
        decode_envelope(text.replace('"n":100000000000000000000', '"n":1').encode())


def test_broker_urls() -> None:
    assert broker_urls("a:1, b:2") == ["kafka://a:1", "kafka://b:2"]


def test_make_app_configures_faust_for_the_stack_without_touching_a_loop(tmp_path) -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9092", topic_partitions=6,
                        kafka_session_timeout_ms=6000, kafka_heartbeat_interval_ms=1000)
    app = make_app("svc", settings=settings, datadir=tmp_path / "faust")
    conf = app.conf
    assert [str(u) for u in conf.broker] == ["kafka://127.0.0.1:9092"]
    assert conf.consumer_auto_offset_reset == "earliest"
    assert (conf.broker_session_timeout, conf.broker_heartbeat_interval) == (6.0, 1.0)
    assert conf.topic_allow_declare is False and conf.topic_disable_leader is True
    assert conf.topic_partitions == 6
    assert conf.processing_guarantee.value == "at_least_once"
    assert conf.stream_wait_empty is False
    assert conf.web_enabled is False
    assert str(conf.store) == "memory:"
    assert getattr(app, "_loop", None) is None


def test_make_app_needs_bootstrap_servers(tmp_path) -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        make_app("svc", settings=Settings(kafka_bootstrap_servers=None), datadir=tmp_path)


async def test_a_crashed_app_stops_the_process_and_leaves_it_with_an_error() -> None:
    """A Faust app that crashed has stopped its agents and timers for good: the process must
    stop serving and exit non-zero, for its supervisor to start it again."""
    app, stop = Service(), asyncio.Event()
    with pytest.raises(AppCrashed, match="database away"):
        async with stop_on_crash(app, stop):
            await app.crash(OSError("database away"))
            await asyncio.wait_for(stop.wait(), 5)  # what ends the HTTP server
    running, untouched = Service(), asyncio.Event()
    async with stop_on_crash(running, untouched):
        await asyncio.sleep(0)
    assert not untouched.is_set()


class AckingStream:
    """A stream whose acks go nowhere (the agent acks what it applied)."""

    async def ack(self, event: object) -> None: ...


def agent_on(consumer: object, tmp_path: Any) -> tuple[Any, Any]:
    """An app (its broker never contacted) and an idempotent agent applying through
    ``consumer``, a stand-in for IdempotentConsumer."""
    from shared.streaming import idempotent_agent

    app = make_app("svc", bootstrap_servers="127.0.0.1:9", datadir=tmp_path)
    agent = idempotent_agent(app, topic="case.events", consumer=consumer,  # type: ignore[arg-type]
                             apply=lambda conn, events: None)  # type: ignore[arg-type,return-value]
    return app, agent


async def test_a_batch_applied_while_its_partition_is_revoked_reports_no_position(
    recorded: RecordedEvent, tmp_path
) -> None:
    """The batch in flight when a rebalance takes its partition away finishes after the
    revocation: its position must not come back as a frozen per-partition metric."""
    from faust.types import TP

    class Consumer:  # an IdempotentConsumer whose transaction is under way
        name = "c"

        def __init__(self) -> None:
            self.entered, self.release = asyncio.Event(), asyncio.Event()

        async def apply_scopes(self, batches: dict, apply: object) -> dict:
            self.entered.set()
            await self.release.wait()
            return {scope: list(events) for scope, events in batches.items()}

    consumer = Consumer()
    app, agent = agent_on(consumer, tmp_path)
    tp = TP("case.events", 0)
    batch = {tp: ([object()], {recorded.position: recorded})}
    applying = asyncio.create_task(agent.apply_groups(AckingStream(), batch))  # type: ignore[arg-type]
    await consumer.entered.wait()
    await app.on_partitions_revoked.send({tp})
    consumer.release.set()
    await applying
    assert agent.stats.positions == {} and agent.stats.applied == 1
    await app.on_partitions_assigned.send({tp})  # back to this worker: reported again
    consumer.release.set()
    await agent.apply_groups(AckingStream(), batch)  # type: ignore[arg-type]
    assert agent.stats.positions == {"case.events/0": recorded.position}


async def test_an_agent_refuses_a_partition_beyond_the_count_checked_at_start(
    recorded: RecordedEvent, tmp_path
) -> None:
    # The topic recreated with more partitions under a running agent (a relay restarted with
    # another count): a new partition's events would be applied from position 0, again.
    from faust.types import TP

    from shared.streaming import PartitionCountChanged

    class Consumer:
        name = "c"
        calls = 0

        async def apply_scopes(self, batches: dict, apply: object) -> dict:
            self.calls += 1
            return {scope: list(events) for scope, events in batches.items()}

    consumer = Consumer()
    _, agent = agent_on(consumer, tmp_path)
    agent.partitions = 3  # as check_partition_counts leaves it
    with pytest.raises(PartitionCountChanged, match=r"partition 4 of case\.events, which had 3"):
        await agent.apply_groups(AckingStream(), {  # type: ignore[arg-type]
            TP("case.events", 4): ([object()], {recorded.position: recorded})})
    assert consumer.calls == 0
    await agent.apply_groups(AckingStream(), {  # type: ignore[arg-type]
        TP("case.events", 2): ([object()], {recorded.position: recorded})})
    assert consumer.calls == 1
