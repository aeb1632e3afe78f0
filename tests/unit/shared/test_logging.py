"""Log lines an operator can read during an outage: a library's repeated message is let
through once per window with a count; every line of a process names it, from any thread."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Iterator

import pytest

from shared.logging import (
    _PROCESS,
    RepeatFilter,
    bind_process,
    configure_logging,
    get_logger,
)

pytestmark = pytest.mark.unit


def record(msg: object, name: str = "aiokafka", *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_a_library_message_repeated_is_let_through_once_a_window_with_the_count() -> None:
    now = [0.0]
    keep = RepeatFilter(window_s=30, clock=lambda: now[0])
    passed = [keep.filter(record("Unable connect to node with id %s", "aiokafka", i))
              for i in range(1000)]
    assert passed.count(True) == 1
    assert keep.filter(record("another message")) is True  # another template is its own
    now[0] = 31.0
    later = record("Unable connect to node with id %s", "aiokafka", 7)
    assert keep.filter(later) is True
    assert "and 999 more like it in 30 s" in later.getMessage()


def test_our_own_lines_are_never_held_back() -> None:
    keep = RepeatFilter(window_s=30, clock=lambda: 0.0)
    assert all(keep.filter(record({"event": "relay.error"}, "shared.relay")) for _ in range(5))


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """JSON logging to a buffer for the test; the suite's configuration back after it."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    configure_logging("json", "info")
    yield out
    _PROCESS.clear()
    monkeypatch.undo()
    configure_logging("console", os.environ.get("YIZHAN_TEST_LOG_LEVEL", "warning"))


def test_every_line_names_the_process_even_from_a_thread_of_a_library(
    json_logs: io.StringIO,
) -> None:
    out = json_logs
    bind_process(service="cases-test")
    get_logger("shared.test").info("from.main")
    worker = threading.Thread(target=lambda: logging.getLogger("faust.x").warning("from %s",
                                                                                "thread"))
    worker.start()
    worker.join()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {line["service"] for line in lines} == {"cases-test"}
    assert [line["event"] for line in lines] == ["from.main", "from thread"]
