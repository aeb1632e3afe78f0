"""`yizhan` answers a configuration error with one line per problem on stderr and exit code 2:
no traceback, and never the value of a setting (it may be a secret)."""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services import audit_cli, cli
from shared.settings import get_settings

AUDITOR = "auditor.530100.a"
CLERK = "clerk.530102001001.a"
WHY = "court order 2026-3"
CASE = str(uuid.UUID(int=7))
SETTINGS_VARIABLES = ("YIZHAN_ENV", "YIZHAN_JWT_SECRET", "YIZHAN_CHECKPOINT_SIGNING_KEY",
                      "YIZHAN_CASES_PORT", "YIZHAN_INTAKE_MASTER_KEY", "YIZHAN_REFERENCE_DIR")


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A development environment without .env; main's logging and loop as the suite's own."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YIZHAN_EVENT_LOOP", "asyncio")
    monkeypatch.setenv("YIZHAN_LOG_FORMAT", "console")
    monkeypatch.setenv("YIZHAN_LOG_LEVEL", os.environ.get("YIZHAN_TEST_LOG_LEVEL", "warning"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistake must stop the command before it starts or finds PostgreSQL."""
    @contextlib.contextmanager
    def refuse(*_: Any, **__: Any) -> Iterator[Any]:
        raise AssertionError("the command reached for the database")
        yield

    monkeypatch.setattr(cli, "endpoints", refuse)
    monkeypatch.setattr(audit_cli, "endpoints", refuse)


def yizhan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    code = ended.value.code
    return (code if isinstance(code, int) else 0), out, err


def test_a_short_jwt_secret_is_named_without_its_value(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_JWT_SECRET", "short-secret-value")
    code, out, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and out == ""
    assert err == ("configuration error: YIZHAN_JWT_SECRET: String should have at least 32 "
                   "characters\n")


def test_a_checkpoint_key_of_the_wrong_length_is_named_without_its_value(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(b"sixteen byte key").decode()
    monkeypatch.setenv("YIZHAN_CHECKPOINT_SIGNING_KEY", key)
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and key not in err
    assert err == ("configuration error: YIZHAN_CHECKPOINT_SIGNING_KEY: must decode to a "
                   "32-byte Ed25519 seed\n")


def test_a_port_that_is_no_number_is_one_line(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_CASES_PORT", "abc")
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2
    assert err == ("configuration error: YIZHAN_CASES_PORT: Input should be a valid integer, "
                   "unable to parse string as an integer\n")


def test_every_bad_variable_gets_its_own_line(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_CASES_PORT", "abc")
    monkeypatch.setenv("YIZHAN_JWT_SECRET", "short-secret-value")
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2
    assert [line.split(":")[1].strip() for line in err.splitlines()] == [
        "YIZHAN_CASES_PORT", "YIZHAN_JWT_SECRET"]


def test_production_with_the_development_secrets_is_one_line_naming_them(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_ENV", "prod")
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("configuration error: YIZHAN_ENV=prod refuses")
    assert "YIZHAN_JWT_SECRET" in err and "YIZHAN_CHECKPOINT_SIGNING_KEY" in err


def test_an_intake_key_error_is_named_by_its_intake_variable(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        no_database: None) -> None:
    monkeypatch.setenv("YIZHAN_INTAKE_MASTER_KEY", "not-a-key")
    code, _, err = yizhan(capsys, "up")
    assert code == 2
    assert err == "configuration error: YIZHAN_INTAKE_MASTER_KEY: must be base64\n"


def test_broken_reference_data_is_a_configuration_error(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        no_database: None) -> None:
    monkeypatch.setenv("YIZHAN_REFERENCE_DIR", str(tmp_path / "nothing-here"))
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("configuration error: ") and "nothing-here" in err


def test_the_development_defaults_still_mint_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = yizhan(capsys, "token", CLERK)
    assert code == 0 and out.count(".") == 2 and "error" not in err


class Other(BaseModel):
    number: int


def other_validation_error() -> ValidationError:
    try:
        Other.model_validate({"number": "abc"})
    except ValidationError as exc:
        return exc
    raise AssertionError("abc is a number?")


@pytest.mark.parametrize("bug", [RuntimeError("a bug"), other_validation_error()],
                         ids=["RuntimeError", "ValidationError of another model"])
def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, bug: Exception) -> None:
    def broken(*_: Any) -> int:
        raise bug

    monkeypatch.setattr(cli, "cmd_token", broken)
    with pytest.raises(type(bug)):
        cli.main(["token", CLERK])
