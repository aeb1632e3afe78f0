"""The Kunming fixture: the report's numbers, fast lookups, immutability, regenerability."""

from __future__ import annotations

import csv
import importlib.util
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.reference import (
    Level,
    Reference,
    Role,
    UnitKind,
    UnknownReference,
    default_reference_dir,
    load_reference,
)

pytestmark = pytest.mark.unit

COUNTIES = {"530102", "530103", "530111", "530112", "530113", "530114", "530115", "530124",
            "530125", "530126", "530127", "530128", "530129", "530181"}


@pytest.fixture(scope="module")
def ref() -> Reference:
    return load_reference()


def test_the_org_tree_has_the_reports_units(ref):
    assert ref.org.root.code == "530100"
    assert {u.code for u in ref.org.at_level(Level.COUNTY)} == COUNTIES
    assert ref.org.unit("530102").name.startswith("五华区")
    assert len(ref.org.at_level(Level.TOWNSHIP)) == 133
    stations = ref.org.at_level(Level.COMMUNITY)
    assert sum(u.kind == UnitKind.STATION for u in stations) == 449
    assert sum(u.kind == UnitKind.ENTERPRISE_STATION for u in stations) == 22


def test_synthetic_names_are_labelled(ref):
    for unit in ref.org:
        assert unit.synthetic == (unit.level in (Level.TOWNSHIP, Level.COMMUNITY))
    assert all(member.synthetic for member in ref.staff)
    readme = (default_reference_dir() / "README.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in readme


def test_every_station_has_a_clerk_with_a_backup(ref):
    for station in ref.org.at_level(Level.COMMUNITY):
        clerk = ref.staff.duty_clerk(station.code)
        backup = ref.staff.backup_of(clerk.user_id)
        assert clerk.post == "A" and backup is not None and backup.unit == station.code
        assert ref.staff.backup_of(backup.user_id) == clerk


def test_townships_and_counties_have_officers_and_a_supervisor(ref):
    for unit in (*ref.org.at_level(Level.TOWNSHIP), *ref.org.at_level(Level.COUNTY)):
        officer = Role.TOWNSHIP_OFFICER if unit.level == Level.TOWNSHIP else Role.COUNTY_OFFICER
        assert len(ref.staff.at_unit(unit.code, officer)) >= 2
        assert len(ref.staff.at_unit(unit.code, Role.SUPERVISOR)) == 1
    assert ref.staff.at_unit("530100", Role.SUPERVISOR)
    assert len(ref.staff.at_unit("530100", Role.AUDITOR)) >= 2


def test_lookups_walk_the_tree(ref):
    chain = [u.code for u in ref.org.parent_chain("530102001001")]
    assert chain == ["530102001", "530102", "530100"]
    assert ref.org.ancestor_at("530102001001", Level.COUNTY).code == "530102"
    assert ref.org.ancestor_at("530102001", Level.COMMUNITY) is None
    assert ref.org.is_within("530102001001", "530102") and ref.org.is_within("530102", "530102")
    assert not ref.org.is_within("530103001001", "530102")
    under_county = ref.org.descendants("530102")
    assert all(u.code.startswith("530102") for u in under_county)
    assert len(ref.org.descendants("530100")) == len(ref.org) - 1
    assert {u.code for u in ref.org.children("530100")} == COUNTIES


def test_unknown_keys_raise_a_lookup_error(ref):
    with pytest.raises(UnknownReference):
        ref.org.unit("530199")
    with pytest.raises(UnknownReference):
        ref.staff.member("nobody")
    with pytest.raises(UnknownReference):
        ref.catalogue.service("fortune_telling")
    assert ref.org.get("530199") is None


def test_the_catalogue_covers_every_service_of_the_report(ref):
    assert len(ref.catalogue) == 17
    mlg = ref.catalogue.service("minimum_living_guarantee")
    assert mlg.name_zh == "最低生活保障"
    assert mlg.chain == (Level.COMMUNITY, Level.TOWNSHIP, Level.COUNTY)
    assert mlg.deciding_level == Level.COUNTY
    assert mlg.next_level(Level.TOWNSHIP) == Level.COUNTY
    assert mlg.previous_level(Level.COMMUNITY) is None
    assert "income_certificate" in mlg.required_documents
    assert ref.catalogue.service("labour_inspection_complaint").escalates_on_breach_at(
        Level.COMMUNITY
    )
    assert all(doc in ref.catalogue.documents for s in ref.catalogue
               for doc in s.required_documents)


def test_reference_data_is_immutable(ref):
    with pytest.raises(ValidationError):
        ref.org.unit("530102").name = "changed"
    with pytest.raises(TypeError):
        ref.catalogue.service("job_referral").budget_days[Level.COMMUNITY] = 9  # type: ignore[index]
    with pytest.raises(TypeError):
        ref.catalogue.documents["x"] = None  # type: ignore[index]


def test_the_generator_reproduces_the_files():
    path = default_reference_dir() / "generate.py"
    spec = importlib.util.spec_from_file_location("kunming_generate", path)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    rng = random.Random(generator.SEED)
    units = generator.units(rng)
    staff = generator.staff(rng, units)
    assert units == _rows(default_reference_dir() / "units.csv")
    assert staff == _rows(default_reference_dir() / "staff.csv")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_reference_folder_can_be_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package (or another city) points YIZHAN_REFERENCE_DIR at its data."""
    import shutil

    from shared.reference.loader import default_reference_dir

    copy = tmp_path / "city"
    shutil.copytree(default_reference_dir(), copy)
    monkeypatch.setenv("YIZHAN_REFERENCE_DIR", str(copy))
    assert default_reference_dir() == copy
    assert load_reference().source == copy
