"""One contract for every event store: the in-memory fake and PostgreSQL must agree."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.contracts.envelope import GENESIS_HASH, NewEvent, chain_hash
from shared.eventstore.errors import EventIdReused, WrongExpectedVersion
from shared.eventstore.memory import InMemoryEventStore
from shared.eventstore.port import ANY, NO_STREAM, EventStore, StreamAppend
from tests.conftest import postgres_store


@pytest.fixture(params=["memory", "postgres", "postgres-locked", "postgres-two-writers"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    """The fake, and PostgreSQL every way a batch is planned: on the writer's beliefs checked
    by ``yizhan_append`` (the usual path), under the append lock (its fallback), and by two
    pipelined writers (the second plans on top of the first's batch in flight)."""
    if request.param == "memory":
        yield InMemoryEventStore()
    else:
        async with postgres_store(request.getfixturevalue("pg_cluster"),
                                  optimistic=request.param != "postgres-locked",
                                  writers=2 if request.param == "postgres-two-writers" else 1,
                                  ) as pg:
            yield pg


def ev(n: int = 0, **data: Any) -> NewEvent:
    return NewEvent(type="Noted", data={"n": n, **data}, metadata={"actor_id": "u1"})


async def collect(it: AsyncIterator[list[Any]]) -> list[Any]:
    return [e async for batch in it for e in batch]


async def test_append_assigns_versions_and_gap_free_positions(store: EventStore) -> None:
    a = await store.append("case-a", NO_STREAM, [ev(1), ev(2)])
    b = await store.append("case-b", NO_STREAM, [ev(3)])
    c = await store.append("case-a", 2, [ev(4)])
    assert (a.version, a.first_position, a.position) == (2, 1, 2)
    assert (b.version, b.position) == (1, 3)
    assert (c.version, c.position) == (3, 4)
    events = await collect(store.read_all())
    assert [e.position for e in events] == [1, 2, 3, 4]
    assert [(e.stream_id, e.version) for e in events] == [
        ("case-a", 1), ("case-a", 2), ("case-b", 1), ("case-a", 3)]
    assert [e.data["n"] for e in await store.read_stream("case-a")] == [1, 2, 4]


async def test_wrong_expected_version_raises_and_writes_nothing(store: EventStore) -> None:
    await store.append("case-a", NO_STREAM, [ev()])
    with pytest.raises(WrongExpectedVersion) as caught:
        await store.append("case-a", NO_STREAM, [ev(), ev()])
    assert (caught.value.expected, caught.value.actual) == (0, 1)
    with pytest.raises(WrongExpectedVersion):
        await store.append("case-a", 5, [ev()])
    assert await store.stream_version("case-a") == 1
    assert (await store.head()).position == 1


async def test_any_version_appends_without_check(store: EventStore) -> None:
    await store.append("case-a", ANY, [ev()])
    result = await store.append("case-a", ANY, [ev()])
    assert result.version == 2


async def test_retried_append_with_same_ids_is_a_no_op(store: EventStore) -> None:
    events = [ev(1), ev(2)]
    first = await store.append("case-a", NO_STREAM, events)
    again = await store.append("case-a", NO_STREAM, events)
    assert again.already_applied and not first.already_applied
    assert (again.version, again.position, again.first_position) == (2, 2, 1)
    assert (await store.head()).position == 2


async def test_event_id_reused_elsewhere_is_refused(store: EventStore) -> None:
    reused = ev(1)
    await store.append("case-a", NO_STREAM, [reused])
    with pytest.raises(EventIdReused):
        await store.append("case-b", NO_STREAM, [reused])
    with pytest.raises(EventIdReused):
        await store.append("case-a", 1, [reused, ev(2)])
    assert (await store.head()).position == 1


async def test_multi_stream_append_is_all_or_nothing(store: EventStore) -> None:
    await store.append("case-b", NO_STREAM, [ev()])
    with pytest.raises(WrongExpectedVersion) as caught:
        await store.append_streams([
            StreamAppend("case-a", NO_STREAM, [ev(1)]),
            StreamAppend("case-b", NO_STREAM, [ev(2)]),  # case-b already exists
        ])
    assert caught.value.stream_id == "case-b"
    assert await store.stream_version("case-a") == 0
    results = await store.append_streams([
        StreamAppend("case-a", NO_STREAM, [ev(1)]),
        StreamAppend("case-b", 1, [ev(2), ev(3)]),
    ])
    assert [(r.stream_id, r.version, r.position) for r in results] == [
        ("case-a", 1, 2), ("case-b", 3, 4)]


async def test_multi_stream_refuses_a_stream_named_twice(store: EventStore) -> None:
    with pytest.raises(ValueError, match="twice"):
        await store.append_streams([
            StreamAppend("case-a", NO_STREAM, [ev()]), StreamAppend("case-a", 1, [ev()])])


async def test_hash_chain_links_every_event(store: EventStore) -> None:
    await store.append("case-a", NO_STREAM, [ev(1), ev(2)])
    await store.append("case-b", NO_STREAM, [ev(3, text="最低生活保障")])
    events = await collect(store.read_all())
    prev = GENESIS_HASH
    for e in events:
        assert e.prev_hash == prev
        assert e.hash == chain_hash(prev, e.canonical_bytes())
        prev = e.hash
    assert (await store.head()).hash == prev


async def test_read_all_in_batches_and_up_to_a_position(store: EventStore) -> None:
    for i in range(7):
        await store.append(f"case-{i}", NO_STREAM, [ev(i)])
    batches = [b async for b in store.read_all(2, batch_size=2)]
    assert [[e.position for e in b] for b in batches] == [[3, 4], [5, 6], [7]]
    upto = await collect(store.read_all(0, batch_size=3, to_position=4))
    assert [e.position for e in upto] == [1, 2, 3, 4]


async def test_read_stream_as_of_a_position(store: EventStore) -> None:
    await store.append("case-a", NO_STREAM, [ev(1)])
    await store.append("case-b", NO_STREAM, [ev(2)])
    await store.append("case-a", 1, [ev(3)])
    assert [e.data["n"] for e in await store.read_stream("case-a", to_position=2)] == [1]
    assert [e.data["n"] for e in await store.read_stream("case-a", from_version=2)] == [3]
    assert await store.read_stream("case-a", from_version=3) == []


async def test_subscribe_delivers_existing_then_new_events(store: EventStore) -> None:
    await store.append("case-a", NO_STREAM, [ev(1)])
    seen: list[int] = []

    async def tail() -> None:
        async for batch in store.subscribe(0):
            seen.extend(e.position for e in batch)
            if len(seen) >= 3:
                return

    task = asyncio.create_task(tail())
    await asyncio.sleep(0.05)
    await store.append("case-b", NO_STREAM, [ev(2)])
    await store.append("case-c", NO_STREAM, [ev(3)])
    await asyncio.wait_for(task, 10)
    assert seen == [1, 2, 3]


async def test_metadata_and_data_come_back_as_given(store: EventStore) -> None:
    eid = uuid.uuid4()
    data = {"name": "张三", "n": 10**30, "x": 0.1, "nested": {"b": [1, 2.5, None, True]}}
    await store.append("case-a", NO_STREAM, [NewEvent("Noted", data, event_id=eid,
                                                       metadata={"correlation_id": "c-1"})])
    (got,) = await store.read_stream("case-a")
    assert (got.event_id, got.data, got.metadata) == (eid, data, {"correlation_id": "c-1"})
