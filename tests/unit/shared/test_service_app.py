"""The served apps: FastAPI's native OpenTelemetry on only where the environment asks; the
unauthenticated ``/readyz`` says what is not ready, never the error's names and addresses."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.relay_http import relay_ready
from shared.service import (
    create_app,
    database_ready,
    native_telemetry,
    prometheus_labelled,
    prometheus_metric,
)
from shared.streaming import consumer_ready

LEAKY = 'password authentication failed for user "yizhan_app" at db-7.internal:5432'


def test_without_a_provider_named_native_telemetry_is_off() -> None:
    assert native_telemetry({}) == {"tracing": False, "metrics": False, "logs": False}
    app = create_app("t", [], state={})
    assert not app._native_telemetry.enabled()


@pytest.mark.parametrize("environ", [
    {"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"},
    {"OTEL_PYTHON_METER_PROVIDER": "sdk_meter_provider"},
    {"OTEL_PYTHON_LOGGER_PROVIDER": "sdk_logger_provider"},
    {"FASTAPI_OTEL_AUTO_CONFIGURE": "TRUE"},
])
def test_a_provider_named_in_the_environment_leaves_fastapi_its_defaults(
    environ: dict[str, str]
) -> None:
    assert native_telemetry(environ) is None


class DownPool:
    async def fetchval(self, query: str) -> Any:
        raise ConnectionRefusedError(LEAKY)


def test_readyz_says_the_database_is_unreachable_and_logs_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app("t", [], state={}, readiness=[database_ready(DownPool())])
    with caplog.at_level(logging.WARNING):
        answer = TestClient(app).get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["detail"] == "database unreachable"
    assert "yizhan_app" not in answer.text and "db-7" not in answer.text
    assert any("yizhan_app" in r.getMessage() for r in caplog.records)


def test_the_relays_readyz_does_not_repeat_its_error() -> None:
    stats = SimpleNamespace(failing_since=time.time() - 30, last_error=repr(OSError(LEAKY)))
    app = create_app("t", [], state={}, readiness=[relay_ready(SimpleNamespace(stats=stats))])  # type: ignore[arg-type]
    answer = TestClient(app).get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["detail"].startswith("relay: retrying for 30 s")
    assert "yizhan_app" not in answer.text and "db-7" not in answer.text


class HangingPool:
    async def fetchval(self, query: str) -> Any:
        await asyncio.sleep(3600)  # a pool whose every connection is stuck


def test_readyz_does_not_hang_on_a_database_that_never_answers() -> None:
    app = create_app("t", [], state={}, readiness=[database_ready(HangingPool(), timeout_s=0.2)])
    answer = TestClient(app).get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["detail"] == "database: no answer within 0.2 s"


def test_readyz_runs_its_checks_at_once() -> None:
    # each check may wait up to its own timeout: one after another, a probe waited for their
    # sum. Here the first check can only pass once the second has started.
    second_started = asyncio.Event()

    async def first() -> str | None:
        try:
            await asyncio.wait_for(second_started.wait(), 5)
        except TimeoutError:
            return "ran alone"
        return None

    async def second() -> str | None:
        second_started.set()
        return None

    answer = TestClient(create_app("t", [], state={}, readiness=[first, second])).get("/readyz")
    assert answer.status_code == 200, answer.text


def faust_app(*, rebalances: int = 1, rebalancing: bool = False, ended: int | None = None,
              should_stop: bool = False) -> Any:
    """``rebalances`` begun, ``ended`` of them ended (default: all but one in progress)."""
    ended = rebalances - rebalancing if ended is None else ended
    completed = SimpleNamespace(is_set=lambda: ended > 0)
    return SimpleNamespace(rebalancing_count=rebalances, rebalancing=rebalancing,
                           should_stop=should_stop,
                           tables=SimpleNamespace(recovery=SimpleNamespace(completed=completed)))


@pytest.mark.parametrize(("app", "failing_for", "missing"), [
    (faust_app(rebalances=0), None, "agent: joining its consumer group"),
    (faust_app(rebalancing=True), None, "agent: joining its consumer group"),
    # a first join interrupted by another replica's: a second rebalance, none ended yet
    (faust_app(rebalances=2, rebalancing=True, ended=0), None,
     "agent: joining its consumer group"),
    (faust_app(), None, None),
    (faust_app(rebalances=3, rebalancing=True), None, None),  # partitions moving: still ready
    (faust_app(), 5.0, None),  # a batch retried for a while is not an outage yet
    (faust_app(), 45.0, "agent: retrying a failing batch for 45 s (the error is in its log)"),
    (faust_app(should_stop=True), None, "agent: stopped"),
])
def test_an_agents_readiness(app: Any, failing_for: float | None, missing: str | None) -> None:
    since = None if failing_for is None else time.time() - failing_for
    check = consumer_ready(app, "agent", lambda: since, stuck_after_s=30.0)
    assert asyncio.run(check()) == missing


@pytest.mark.parametrize(("value", "sample"), [
    (1_234_567, "1234567"), (98_765_432_101, "98765432101"), (0, "0"),
    (1_234_567.0, "1234567"), (1_234_567.25, "1234567.25"), (0.125, "0.125"), (True, "1"),
])
def test_metric_samples_keep_every_digit(value: float, sample: str) -> None:
    """Positions and counters pass a million within months: printed with six significant
    digits (1.23457e+06), a head position, a lag worked out from two of them, or a counter's
    rate were wrong by up to the last rounded digits."""
    assert prometheus_metric("m", "gauge", "h", value)[-1] == f"m {sample}"
    assert prometheus_labelled("m", "gauge", "h", "scope", {"a/0": value})[-1] == (
        f'm{{scope="a/0"}} {sample}')
