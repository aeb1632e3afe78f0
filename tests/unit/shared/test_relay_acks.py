from __future__ import annotations

import pytest
from aiokafka.structs import RecordMetadata, TopicPartition

from shared.relay import BrokerLostLog, _check_acks


def ack(partition: int, offset: int) -> RecordMetadata:
    return RecordMetadata("t", partition, TopicPartition("t", partition), offset, 0, 0, 0)


def test_growing_offsets_pass() -> None:
    _check_acks([ack(0, 5), ack(1, 0), ack(0, 6)], {0: 4})


def test_an_offset_at_or_below_one_already_acknowledged_means_the_log_was_lost() -> None:
    with pytest.raises(BrokerLostLog, match="partition 0 acknowledged offset 0 after 4"):
        _check_acks([ack(0, 0), ack(0, 1)], {0: 4})
    with pytest.raises(BrokerLostLog):
        _check_acks([ack(2, 7)], {2: 7})
