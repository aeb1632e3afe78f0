"""The public endpoints' token bucket per client, on a controlled clock."""

from __future__ import annotations

import pytest

from shared.ratelimit import ClientRateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_then_one_request_per_interval() -> None:
    clock = Clock()
    limit = ClientRateLimit(per_minute=60, burst=3, clock=clock)
    assert [limit.take("a") for _ in range(3)] == [None, None, None]
    assert limit.take("a") == pytest.approx(1.0)  # one token a second at 60 a minute
    clock.now += 0.5
    assert limit.take("a") == pytest.approx(0.5)  # a refused request takes nothing
    clock.now += 0.5
    assert limit.take("a") is None
    assert limit.take("a") == pytest.approx(1.0)


def test_clients_are_counted_apart_and_an_idle_one_refills_only_to_its_burst() -> None:
    clock = Clock()
    limit = ClientRateLimit(per_minute=120, burst=2, clock=clock)
    assert [limit.take("a"), limit.take("a"), limit.take("a") is not None] == [None, None, True]
    assert [limit.take("b"), limit.take("b")] == [None, None]
    clock.now += 3600
    assert [limit.take("a"), limit.take("a"), limit.take("a") is not None] == [None, None, True]


def test_the_least_recently_seen_client_is_dropped_first_and_starts_again_full() -> None:
    clock = Clock()
    limit = ClientRateLimit(per_minute=60, burst=1, max_clients=2, clock=clock)
    assert [limit.take("a"), limit.take("b")] == [None, None]
    assert limit.take("b") is not None  # b is the most recently seen
    assert limit.take("c") is None  # a is dropped: two buckets at most
    assert limit.take("b") is not None  # b kept its empty bucket
    assert limit.take("a") is None  # a starts again full (c is dropped now)


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [ClientRateLimit.retry_after(w) for w in (0.01, 1.0, 1.2, 59.5)] == ["1", "1", "2",
                                                                                  "60"]


def test_a_limit_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ClientRateLimit(per_minute=0, burst=1)
