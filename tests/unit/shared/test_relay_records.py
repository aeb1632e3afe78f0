"""The relay's record building: partitions as Kafka's default partitioner, correlation ids
read without parsing the metadata."""

from __future__ import annotations

import json

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from shared.contracts.canonical import canonical_json
from shared.relay import Partitioner, correlation_id


@given(st.lists(st.text(min_size=1), min_size=1, max_size=50), st.integers(1, 12))
def test_partitions_are_the_default_partitioners(streams: list[str], partitions: int) -> None:
    ours = Partitioner(partitions, remember=7)  # forgets now and then: same answers
    every = list(range(partitions))
    for stream in streams + streams:
        assert ours(stream) == DefaultPartitioner()(stream.encode(), every, every)


metadata_values = st.one_of(st.none(), st.text(), st.integers(), st.booleans(),
                            st.dictionaries(st.text(), st.text(), max_size=2))


@given(st.dictionaries(st.text(), metadata_values, max_size=4), metadata_values)
def test_correlation_id_is_what_parsing_gives(others: dict[str, object],
                                              correlation: object) -> None:
    metadata = dict(others)
    if correlation is not None:
        metadata["correlation_id"] = correlation
    else:
        metadata.pop("correlation_id", None)
    text = canonical_json(metadata)
    expected = json.loads(text).get("correlation_id")
    assert correlation_id(text) == (None if expected is None else str(expected))


def test_a_lookalike_inside_a_value_or_a_nested_object_is_not_the_key() -> None:
    assert correlation_id(canonical_json({"note": '"correlation_id":"x"'})) is None
    assert correlation_id(canonical_json({"inner": {"correlation_id": "x"}})) is None
    assert correlation_id(canonical_json({"correlation_id": "a\\b"})) == "a\\b"
    assert correlation_id(canonical_json({"correlation_id": "c-1", "x": 1})) == "c-1"
    assert correlation_id("{}") is None
