"""Reading a topic back in tests (partitions assigned directly: no slow group join)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    key: str
    value: dict[str, Any]
    headers: dict[str, str]


async def read_topic(
    bootstrap: str, topic: str, partitions: int, *, until: int, timeout: float = 30.0
) -> list[Message]:
    """Read from the beginning of every partition until ``until`` messages or the timeout."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    out: list[Message] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < until and asyncio.get_running_loop().time() < deadline:
            got = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in got.items():
                for r in records:
                    out.append(Message(
                        tp.partition, r.offset, (r.key or b"").decode(), json.loads(r.value),
                        {k: v.decode() for k, v in r.headers},
                    ))
    finally:
        await consumer.stop()
    return out


def positions_by_key(messages: list[Message]) -> dict[str, list[int]]:
    by_key: dict[str, list[int]] = {}
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        by_key.setdefault(m.key, []).append(m.value["position"])
    return by_key
