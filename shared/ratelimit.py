"""A token bucket per client, for endpoints anyone may call without a login.

Each client (its address, as the ASGI server reports it: behind a trusted proxy, the one the
proxy names) may make ``burst`` requests at once and ``per_minute`` a minute on average. The
buckets live in the process: each replica of a service counts its own clients, so a client
spread over N replicas gets up to N times the rate (a gateway in front is where a global limit
belongs). At most ``max_clients`` buckets are kept, the least recently seen dropped first: a
dropped client starts again with a full bucket, never with less."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class ClientRateLimit:
    """``take(client)``: None if the request may go on, else the seconds until it may."""

    def __init__(self, per_minute: int, burst: int, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1 or burst < 1 or max_clients < 1:
            raise ValueError("per_minute, burst and max_clients must be at least 1")
        self.rate = per_minute / 60.0  # tokens a second
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, client: str) -> float | None:
        now = self.clock()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait: float | None = None
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)  # the most recently seen last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` header's value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(wait)))
