#!/usr/bin/env python
"""The commands bench's limit: HTTP in, one durable row per request, nothing else.

    python bench/limit_http.py --port 8099 --dsn postgresql://…

A bare ASGI app (no FastAPI, no middleware, no token check, no domain, no event store) served
by uvicorn as ``yizhan serve cases`` serves its app (same ``uvicorn.Config`` options, same
event loop), on the same PostgreSQL: each ``POST`` parses its JSON body and commits one
``INSERT`` of it (autocommit, fsync as the server has it), then answers 200 with a small JSON
body. What the cases service adds on top of this per command (authentication, validation,
loading and deciding the case, the hash-chained append, the SLA agent) is what the bench's
``ours / limit`` ratio shows."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench import run as bench_run

TABLE = "bench_limit_rows"
CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, path text NOT NULL, "
          "body jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now())")
INSERT = f"INSERT INTO {TABLE} (path, body) VALUES ($1, $2::jsonb) RETURNING id"


class LimitApp:
    """``POST`` anything: one row in, its id out. ``GET /readyz``: 200. The pool opens all
    its connections at start-up, as the cases service's does."""

    def __init__(self, dsn: str, pool_max: int) -> None:
        self.dsn, self.pool_max = dsn, pool_max
        self.pool: asyncpg.Pool | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.pool = await asyncpg.create_pool(self.dsn, min_size=self.pool_max,
                                                          max_size=self.pool_max)
                    await self.pool.execute(CREATE)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.pool is not None:
                        await self.pool.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http" and self.pool is not None
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if scope["method"] == "POST":
            row_id = await self.pool.fetchval(INSERT, scope["path"],
                                              json.dumps(json.loads(body or b"{}")))
            content = json.dumps({"id": row_id}).encode()
        else:
            content = b'{"status": "ready"}'
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", str(len(content)).encode()),
            (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": content})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--pool-max", type=int, default=20)
    args = parser.parse_args()
    server = uvicorn.Server(uvicorn.Config(LimitApp(args.dsn, args.pool_max), host="127.0.0.1",
                                           port=args.port, log_config=None, lifespan="on",
                                           access_log=False))
    bench_run(server.serve())


if __name__ == "__main__":
    main()
