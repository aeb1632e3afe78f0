"""What every service's process shares: the FastAPI app shell with problem+json errors,
correlation ids, and the health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.types import ASGIApp

from shared.http import MAX_BODY_DEFAULT, LoggedOnce, ProblemError, install
from shared.logging import get_logger

log = get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None = ready, else what is missing
PROMETHEUS_TEXT = "text/plain; version=0.0.4"


def sample_value(value: float) -> str:
    """A sample's value with every digit: positions and counters pass a million, which ``:g``
    printed with six significant digits (1.23457e+06)."""
    if isinstance(value, int):
        return str(int(value))  # (a bool as 0 or 1)
    number = float(value)
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(number)


def prometheus_metric(name: str, kind: str, help_: str, value: float) -> list[str]:
    """One metric in the Prometheus text format: its HELP, TYPE and sample lines."""
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {sample_value(value)}"]


def prometheus_labelled(name: str, kind: str, help_: str, label: str,
                        values: dict[str, float]) -> list[str]:
    """One metric with a sample per value of one label (values quoted as the format asks)."""
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    for key, value in sorted(values.items()):
        quoted = key.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'{name}{{{label}="{quoted}"}} {sample_value(value)}')
    return lines
GC_YOUNG_THRESHOLD = 10_000


def tune_gc(young: int = GC_YOUNG_THRESHOLD) -> tuple[int, int, int]:
    """For a long-running service: every request and message allocates hundreds of short-lived
    objects; with Python's default young-generation threshold (700) the collector ran ~800
    times per 6,000 messages, and full collections re-scanned everything loaded at start-up
    (reference data, modules, Faust): about a fifth of the intake worker's event loop, measured.
    Everything alive now is frozen (not scanned again) and the young generation is collected
    every ``young`` allocations. Returns the thresholds to restore (with ``gc.unfreeze()``)."""
    previous = gc.get_threshold()
    gc.collect()  # (garbage is not frozen)
    gc.freeze()
    gc.set_threshold(max(previous[0], young), *previous[1:])
    return previous


@contextlib.contextmanager
def tuned_gc(young: int = GC_YOUNG_THRESHOLD) -> Iterator[None]:
    """``tune_gc`` for the block, then the thresholds restored and the frozen objects let go."""
    previous = tune_gc(young)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


_OTEL_PROVIDERS = ("OTEL_PYTHON_TRACER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER",
                   "OTEL_PYTHON_LOGGER_PROVIDER")


def native_telemetry(environ: Mapping[str, str]) -> TelemetryConfig | None:
    """FastAPI's native OpenTelemetry, as the environment asks for it. FastAPI looks for a
    configured provider on every request (~9 µs, three lookups of the environment). Nothing
    in this product configures one in code, so unless the environment names a provider or
    asks FastAPI to configure one (``FASTAPI_OTEL_AUTO_CONFIGURE``), it is off (``None``:
    FastAPI's defaults)."""
    if (any(environ.get(name) for name in _OTEL_PROVIDERS)
            or environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true"):
        return None
    return {"tracing": False, "metrics": False, "logs": False}


def create_app(
    title: str, routers: Sequence[APIRouter], *, state: dict[str, Any],
    readiness: Sequence[ReadinessCheck] = (),
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    description: str = "", middleware: Sequence[Callable[[ASGIApp], ASGIApp]] = (),
    max_body: int = MAX_BODY_DEFAULT,
) -> FastAPI:
    """The app with ``state``, the shared error handling and correlation ids, and the health
    endpoints; ``middleware``: plain ASGI layers inside the correlation one (outermost first),
    e.g. a service's lean path for its hottest routes; ``max_body``: the largest request body
    taken (bytes, else 413)."""
    app = FastAPI(title=title, description=description, version="0.1.0", lifespan=lifespan,
                  telemetry=native_telemetry(os.environ))
    for key, value in state.items():
        setattr(app.state, key, value)
    install(app, inner=middleware, max_body=max_body)

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", tags=["operations"], summary="Ready: the database answers")
    async def readyz() -> dict[str, str]:
        # at once: a probe waits for the slowest check, not for their sum (database 2 s,
        # broker up to twice its timeout), which could outlast an orchestrator's probe timeout
        missing = [m for m in await asyncio.gather(*(check() for check in readiness)) if m]
        if missing:
            raise ProblemError(503, "Not ready", "; ".join(missing))
        return {"status": "ready"}

    for router in routers:
        app.include_router(router)
    return app


def database_ready(pool: Any, *, timeout_s: float = 2.0) -> ReadinessCheck:
    """The database answers within ``timeout_s`` (taking a pool connection included: a pool
    whose every connection is stuck is not ready either). ``/readyz`` needs no login: the
    error (user, host, database names) goes to the log, the answer only says the database is
    unreachable."""
    async def check() -> str | None:
        try:
            await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout_s)
        except TimeoutError:
            log.warning("readiness.database_slow", timeout_s=timeout_s)
            return f"database: no answer within {timeout_s:g} s"
        except Exception as exc:  # any failure means not ready
            log.warning("readiness.database_unreachable", error=repr(exc))
            return "database unreachable"
        return None

    return check


class _Server(uvicorn.Server):
    """uvicorn without signal handlers of its own: the process's ``stop`` event decides (several
    servers share one process under `yizhan up`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_http(app: FastAPI, host: str, port: int, stop: asyncio.Event, *,
                     name: str) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set (or the server fails)."""
    server = _Server(uvicorn.Config(LoggedOnce(app), host=host, port=port, log_config=None,
                                    lifespan="on", access_log=False))
    serving = asyncio.create_task(server.serve(), name=f"{name}-http")
    stopping = asyncio.create_task(stop.wait())
    log.info("http.serving", service=name, url=f"http://{host}:{port}",
             docs=f"http://{host}:{port}/docs")
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        stopping.cancel()
        await serving
