"""The pure parts of the Faust boundary: envelope decoding (what is parked) and app config."""

from __future__ import annotations

import json

import pytest

from shared.contracts.envelope import NewEvent, RecordedEvent
from shared.eventstore.memory import InMemoryEventStore
from shared.eventstore.port import NO_STREAM
from shared.settings import Settings
from shared.streaming import NotAnEnvelope, broker_urls, decode_envelope, make_app


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
