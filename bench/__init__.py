"""Benchmarks (run as scripts, e.g. ``python bench/eventstore.py --quick``)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the event loop the services run on (``YIZHAN_EVENT_LOOP``, uvloop by
    default), so what a bench runs in its own process measures as it runs in production."""
    from shared.settings import Settings

    if Settings().event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
