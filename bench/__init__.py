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


def libpq_params(dsn: str) -> tuple[str, str, int, str, str]:
    """(dbname, host, port, user, password) of a ``postgresql://`` URL, for the peers' drivers.
    The host is the socket folder when the URL names one (``?host=/folder&port=N``, as the
    embedded server's URLs do), so a peer connects the way our side does."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(dsn)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return (parts.path.lstrip("/"), query.get("host") or parts.hostname or "127.0.0.1",
            int(query.get("port") or parts.port or 5432), unquote(parts.username or "postgres"),
            unquote(parts.password or ""))


def with_db(url: str, database: str, user: str | None = None) -> str:
    """``url`` naming another database (and, given ``user``, another role); its query (a
    socket folder, a port) is kept."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc if user is None else f"{user}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, parts.fragment))
