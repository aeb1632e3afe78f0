"""With YIZHAN_ENV=prod intake's settings refuse its public development keys, naming each
variable; development keeps them as defaults."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from services.intake.settings import (
    DEV_ID_HASH_KEY,
    DEV_MASTER_KEY,
    DEV_QUARANTINE_KEY,
    IntakeSettings,
)
from tests.keys import other_spelling

OWN = {"YIZHAN_INTAKE_MASTER_KEY": base64.b64encode(bytes(range(1, 33))).decode(),
       "YIZHAN_INTAKE_ID_HASH_KEY": base64.b64encode(bytes(range(33, 65))).decode(),
       "YIZHAN_INTAKE_QUARANTINE_KEY": base64.b64encode(bytes(range(65, 97))).decode()}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*OWN, "YIZHAN_ENV"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("left_at_default", list(OWN))
def test_production_refuses_each_development_key_by_its_variable_name(
        monkeypatch: pytest.MonkeyPatch, left_at_default: str) -> None:
    monkeypatch.setenv("YIZHAN_ENV", "prod")
    for name, value in OWN.items():
        if name != left_at_default:
            monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        IntakeSettings(_env_file=None)
    message = str(refused.value)
    assert left_at_default in message
    assert all(name not in message for name in OWN if name != left_at_default)


def test_production_accepts_its_own_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_ENV", "prod")
    for name, value in OWN.items():
        monkeypatch.setenv(name, value)
    intake = IntakeSettings(_env_file=None)
    assert intake.env == "prod" and not intake.uses_development_keys


def test_development_keeps_the_development_keys() -> None:
    intake = IntakeSettings(_env_file=None)
    assert intake.env == "dev" and intake.uses_development_keys


PUBLIC = {"YIZHAN_INTAKE_MASTER_KEY": DEV_MASTER_KEY, "YIZHAN_INTAKE_ID_HASH_KEY": DEV_ID_HASH_KEY,
          "YIZHAN_INTAKE_QUARANTINE_KEY": DEV_QUARANTINE_KEY}


@pytest.mark.parametrize("name", list(PUBLIC))
def test_production_refuses_a_development_key_in_another_base64_spelling(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("YIZHAN_ENV", "prod")
    for own, value in OWN.items():
        monkeypatch.setenv(own, other_spelling(PUBLIC[name]) if own == name else value)
    with pytest.raises(ValidationError, match=name):
        IntakeSettings(_env_file=None)
