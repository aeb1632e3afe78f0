"""The pure parts of keeping consumers' positions to one partition count: which scope names
which partition, when a recorded count refuses a start, and the check that a consumer applied
every event of the old layout up to its furthest position."""

from __future__ import annotations

import pytest

from shared.consumer import (
    PositionsKeptForAnotherPartitionCount,
    layout_to_record,
    partition_of,
    scope_for,
)
from shared.relay import Partitioner, partition_for
from shared.repartition import Repartitioned, last_per_partition, unapplied


def test_a_scope_names_its_partition_only_for_its_own_topic() -> None:
    assert partition_of(scope_for("case.events", 3), "case.events") == 3
    assert partition_of("case.events/12", "case.events") == 12
    assert partition_of("case.events.x/1", "case.events") is None
    assert partition_of("case.events/x", "case.events") is None
    assert partition_of("all", "case.events") is None


def test_without_positions_any_count_is_recorded() -> None:
    assert layout_to_record("c", "t", None, [], 4) is True
    assert layout_to_record("c", "t", 3, [], 4) is True
    assert layout_to_record("c", "t", 4, [0, 3], 4) is False


def test_positions_kept_for_another_count_refuse_with_both_counts_and_the_command() -> None:
    with pytest.raises(PositionsKeptForAnotherPartitionCount) as refused:
        layout_to_record("projections", "case.events", 3, [0, 1, 2], 4)
    message = str(refused.value)
    assert "'projections'" in message and "for 3 partitions" in message
    assert "has 4" in message
    assert "yizhan consumers repartition --topic case.events --partitions 4" in message
    assert (refused.value.recorded, refused.value.actual) == (3, 4)
    # fewer partitions than recorded: refused as well
    with pytest.raises(PositionsKeptForAnotherPartitionCount):
        layout_to_record("c", "t", 6, [0], 4)


def test_positions_from_before_counts_were_recorded_are_taken_for_the_topic_count() -> None:
    assert layout_to_record("c", "t", None, [0, 2], 3) is True
    with pytest.raises(PositionsKeptForAnotherPartitionCount, match="at least 6 partitions"):
        layout_to_record("c", "t", None, [0, 5], 4)


def test_the_partition_is_the_relays() -> None:
    relay = Partitioner(4)
    for i in range(200):
        stream = f"case-{i}"
        assert partition_for(stream, 4) == relay(stream)
    assert {partition_for(f"case-{i}", 4) for i in range(200)} == {0, 1, 2, 3}


def test_a_partition_whose_last_event_is_beyond_its_position_is_unapplied() -> None:
    streams = [(f"case-{i}", 10 + i) for i in range(30)]
    last = last_per_partition(streams, 3)
    assert set(last) == {0, 1, 2}
    for p, position in last.items():
        assert position == max(pos for s, pos in streams if partition_for(s, 3) == p)
    assert unapplied(last, last) == {}
    assert unapplied({**last, 1: last[1] + 5}, last) == {}  # beyond: fine
    lagging = {**last, 2: last[2] - 1}
    assert unapplied(lagging, last) == {2: (last[2] - 1, last[2])}
    assert unapplied({0: last[0]}, last) == {1: (0, last[1]), 2: (0, last[2])}


def test_what_was_done_reads_plainly() -> None:
    moved = Repartitioned("projections", "case.events", 3, 4, 1200, True)
    assert moved.describe() == ("projections: every event up to position 1,200 applied; "
                                "case.events partitions 0–3 now at 1,200 (kept for 3 "
                                "partitions before, now 4)")
    assert "unchanged" in Repartitioned("c", "t", 4, 4, None, False).describe()
    assert "no positions" in Repartitioned("c", "t", 3, 4, None, True).describe()
