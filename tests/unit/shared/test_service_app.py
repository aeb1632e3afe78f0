"""The served apps: FastAPI's native OpenTelemetry on only where the environment asks."""

from __future__ import annotations

import pytest

from shared.service import create_app, native_telemetry


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
