"""What every service's process shares: the FastAPI app shell with problem+json errors,
correlation ids, and the health endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI

from shared.http import ProblemError, install

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None = ready, else what is missing


def create_app(
    title: str, routers: Sequence[APIRouter], *, state: dict[str, Any],
    readiness: Sequence[ReadinessCheck] = (),
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    description: str = "",
) -> FastAPI:
    app = FastAPI(title=title, description=description, version="0.1.0", lifespan=lifespan)
    for key, value in state.items():
        setattr(app.state, key, value)
    install(app)

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", tags=["operations"], summary="Database, broker and consumers ready")
    async def readyz() -> dict[str, str]:
        missing = [m for m in [await check() for check in readiness] if m]
        if missing:
            raise ProblemError(503, "Not ready", "; ".join(missing))
        return {"status": "ready"}

    for router in routers:
        app.include_router(router)
    return app


def database_ready(pool: Any) -> ReadinessCheck:
    async def check() -> str | None:
        try:
            await pool.fetchval("SELECT 1")
        except Exception as exc:  # any failure means not ready
            return f"database: {exc!r}"
        return None

    return check
