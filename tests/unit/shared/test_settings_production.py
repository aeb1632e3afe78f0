"""With YIZHAN_ENV=prod the shared settings refuse the public development secrets (they are in
the repository: anyone could mint officers' tokens or sign checkpoints), naming each variable;
development keeps them as defaults."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from shared.settings import DEV_JWT_SECRET, DEV_SIGNING_KEY, Settings
from tests.keys import other_spelling

OWN = {"YIZHAN_JWT_SECRET": "an-operator-chosen-secret-of-40-characters",
       "YIZHAN_CHECKPOINT_SIGNING_KEY": base64.b64encode(bytes(range(100, 132))).decode()}


SERVERS = {"DATABASE_URL": "postgresql://yizhan_service@db.internal:5432/yizhan",
           "KAFKA_BOOTSTRAP_SERVERS": "kafka.internal:9092"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*OWN, *SERVERS, "YIZHAN_ENV", "YIZHAN_DATABASE_URL",
                 "YIZHAN_KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)


def production(monkeypatch: pytest.MonkeyPatch, *, servers: bool = True, **values: str) -> None:
    monkeypatch.setenv("YIZHAN_ENV", "prod")
    for name, value in (SERVERS if servers else {}).items():
        monkeypatch.setenv(name, value)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("left_at_default", list(OWN))
def test_production_refuses_each_development_default_by_its_variable_name(
        monkeypatch: pytest.MonkeyPatch, left_at_default: str) -> None:
    production(monkeypatch, **{k: v for k, v in OWN.items() if k != left_at_default})
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)
    message = str(refused.value)
    assert left_at_default in message
    assert all(name not in message for name in OWN if name != left_at_default)


def test_production_names_every_development_default_in_one_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)
    assert len(refused.value.errors()) == 1
    assert all(name in str(refused.value) for name in OWN)


def test_production_refuses_the_development_values_also_when_set_explicitly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch, YIZHAN_JWT_SECRET=DEV_JWT_SECRET,
               YIZHAN_CHECKPOINT_SIGNING_KEY=DEV_SIGNING_KEY)
    with pytest.raises(ValidationError, match="YIZHAN_JWT_SECRET, YIZHAN_CHECKPOINT_SIGNING_KEY"):
        Settings(_env_file=None)


def test_production_accepts_its_own_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch, **OWN)
    settings = Settings(_env_file=None)
    assert settings.env == "prod" and not settings.uses_dev_signing_key
    assert settings.jwt_secret == OWN["YIZHAN_JWT_SECRET"]


def test_development_keeps_the_development_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.env == "dev"
    assert settings.jwt_secret == DEV_JWT_SECRET and settings.uses_dev_signing_key


def test_production_refuses_the_development_key_in_another_base64_spelling(
        monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch, YIZHAN_JWT_SECRET=OWN["YIZHAN_JWT_SECRET"],
               YIZHAN_CHECKPOINT_SIGNING_KEY=other_spelling(DEV_SIGNING_KEY))
    with pytest.raises(ValidationError, match="YIZHAN_CHECKPOINT_SIGNING_KEY"):
        Settings(_env_file=None)


@pytest.mark.parametrize("unset", list(SERVERS))
def test_production_refuses_to_fall_back_to_an_embedded_server(
        monkeypatch: pytest.MonkeyPatch, unset: str) -> None:
    """Unset (or mistyped) in production, DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS made every
    process start a PostgreSQL or a memory broker of its own, inside its container: each
    service on its own event store, lost with the container."""
    production(monkeypatch, servers=False, **OWN)
    for name, value in SERVERS.items():
        if name != unset:
            monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)
    (error,) = refused.value.errors()
    assert unset in error["msg"]
    assert all(name not in error["msg"] for name in SERVERS if name != unset)
