"""With YIZHAN_ENV=prod intake refuses a registry of source systems holding the public
development secrets (anyone could submit as the source), before it connects anywhere;
development loads the shipped registry."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from services.intake import sources as sources_module
from services.intake.settings import IntakeSettings
from services.intake.sources import SHIPPED_SOURCES_FILE, load_sources
from shared.reference import OrgTree, ReferenceDataError, load_reference

OWN = {"YIZHAN_INTAKE_MASTER_KEY": base64.b64encode(bytes(range(1, 33))).decode(),
       "YIZHAN_INTAKE_ID_HASH_KEY": base64.b64encode(bytes(range(33, 65))).decode(),
       "YIZHAN_INTAKE_QUARANTINE_KEY": base64.b64encode(bytes(range(65, 97))).decode()}
SOURCE = """
[[source]]
id = "{id}"
name = "a system (synthetic)"
unit = "530100"
may = ["visit"]
secret = "{secret}"
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*OWN, "YIZHAN_ENV"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def org() -> OrgTree:
    return load_reference().org


def registry(folder: Path, name: str, **secrets: str) -> Path:
    path = folder / name
    path.write_text("".join(SOURCE.format(id=i, secret=s) for i, s in secrets.items()),
                    encoding="utf-8")
    return path


def test_production_refuses_the_shipped_registry_naming_every_source(org: OrgTree) -> None:
    with pytest.raises(ReferenceDataError) as refused:
        load_sources(SHIPPED_SOURCES_FILE, org, production=True)
    assert "pension, employment, medical_insurance" in str(refused.value)
    assert "dev-only-" not in str(refused.value), "the message must not repeat a secret"


def test_production_refuses_a_secret_marked_for_development(org: OrgTree,
                                                            tmp_path: Path) -> None:
    path = registry(tmp_path, "sources.toml", pension="p" * 40,
                    employment="dev-only-" + "e" * 40)
    with pytest.raises(ReferenceDataError, match=r"secrets of employment: "):
        load_sources(path, org, production=True)


def test_production_refuses_a_secret_copied_from_the_shipped_registry(
        org: OrgTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    public = "an-unmarked-public-secret-0123456789abcdef"
    monkeypatch.setattr(sources_module, "SHIPPED_SOURCES_FILE",
                        registry(tmp_path, "shipped.toml", pension=public))
    path = registry(tmp_path, "sources.toml", pension=public, employment="e" * 40)
    with pytest.raises(ReferenceDataError, match=r"secrets of pension: "):
        load_sources(path, org, production=True)


def test_production_accepts_a_registry_of_its_own_secrets(org: OrgTree, tmp_path: Path) -> None:
    path = registry(tmp_path, "sources.toml", pension="p" * 40, employment="e" * 40)
    assert len(load_sources(path, org, production=True)) == 2


def test_development_loads_the_shipped_registry(org: OrgTree) -> None:
    assert len(load_sources(SHIPPED_SOURCES_FILE, org)) == 3


async def test_intake_in_production_stops_at_the_shipped_registry_before_connecting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from services.intake.bootstrap import bootstrap
    from shared.settings import Settings

    monkeypatch.setenv("YIZHAN_ENV", "prod")
    for name, value in OWN.items():
        monkeypatch.setenv(name, value)
    intake = IntakeSettings(_env_file=None, sources_file=SHIPPED_SOURCES_FILE)
    with pytest.raises(ReferenceDataError, match="public development secrets"):
        await bootstrap(Settings(_env_file=None, env="dev"), "postgresql://nowhere.invalid/x",
                        intake=intake)
