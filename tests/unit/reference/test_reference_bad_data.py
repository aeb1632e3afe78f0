"""Bad reference data fails at load time with an error naming file, line and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared.reference import Level, ReferenceDataError, default_reference_dir, load_reference

pytestmark = pytest.mark.unit
FILES = ("units.csv", "staff.csv", "services.toml", "calendar_overrides.csv")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in FILES:
        shutil.copy(default_reference_dir() / name, tmp_path / name)
    return tmp_path


def line_of(path: Path, needle: str, after: str | None = None) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    start = 0 if after is None else next(i for i, t in enumerate(lines) if after in t)
    return next(i for i, t in enumerate(lines) if i >= start and needle in t) + 1


def edit(path: Path, line: int, old: str, new: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert old in lines[line - 1], lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("".join(lines), encoding="utf-8")


def append(path: Path, text: str) -> int:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
    return len(path.read_text(encoding="utf-8").splitlines())


def fails(folder: Path, file: str, line: int, field: str) -> ReferenceDataError:
    with pytest.raises(ReferenceDataError) as caught:
        load_reference(folder)
    error = caught.value
    assert (error.file.name, error.line, error.field) == (file, line, field), str(error)
    assert str(error).startswith(f"{folder / file}:{line}: {field}: ")
    return error


# ------------------------------------------------------------------ units.csv


def test_an_unknown_level(folder):
    line = line_of(folder / "units.csv", "530102,")
    edit(folder / "units.csv", line, ",county,", ",borough,")
    fails(folder, "units.csv", line, "level")


def test_a_parent_that_does_not_exist(folder):
    line = line_of(folder / "units.csv", "530102001001,")
    edit(folder / "units.csv", line, ",530102001,", ",530102999,")
    assert "unknown unit '530102999'" in str(fails(folder, "units.csv", line, "parent"))


def test_a_code_of_the_wrong_length_for_its_level(folder):
    line = line_of(folder / "units.csv", "530102001,")
    edit(folder / "units.csv", line, "530102001,", "530102001001,")
    fails(folder, "units.csv", line, "code")


def test_a_kind_that_does_not_fit_the_level(folder):
    line = line_of(folder / "units.csv", "530102001001,")
    edit(folder / "units.csv", line, ",station,", ",office,")
    fails(folder, "units.csv", line, "kind")


def test_a_duplicate_code(folder):
    row = "530102001001,重复服务站,community,530102001,station,true\n"
    line = append(folder / "units.csv", row)
    assert "duplicate" in str(fails(folder, "units.csv", line, "code"))


def test_a_missing_column(folder):
    edit(folder / "units.csv", 1, ",kind", "")
    fails(folder, "units.csv", 1, "kind")


def test_a_row_with_too_many_values(folder):
    line = append(folder / "units.csv", "530102001009,多余,community,530102001,station,true,x\n")
    fails(folder, "units.csv", line, "<row>")


# ------------------------------------------------------------------ staff.csv


def test_staff_at_an_unknown_unit(folder):
    line = line_of(folder / "staff.csv", "clerk.530102001001.a,")
    edit(folder / "staff.csv", line, ",530102001001,A", ",530102001999,A")
    fails(folder, "staff.csv", line, "unit")


def test_a_role_posted_at_the_wrong_level(folder):
    line = line_of(folder / "staff.csv", "officer.530102001.a,")
    edit(folder / "staff.csv", line, ",township_officer,", ",station_clerk,")
    fails(folder, "staff.csv", line, "role")


def test_a_backup_who_does_not_exist(folder):
    line = line_of(folder / "staff.csv", "clerk.530102001001.a,")
    edit(folder / "staff.csv", line, ",clerk.530102001001.b,", ",clerk.530102001001.z,")
    fails(folder, "staff.csv", line, "backup")


def test_a_backup_at_another_unit(folder):
    line = line_of(folder / "staff.csv", "clerk.530102001001.a,")
    edit(folder / "staff.csv", line, ",clerk.530102001001.b,", ",clerk.530102001002.b,")
    fails(folder, "staff.csv", line, "backup")


def test_a_malformed_user_id(folder):
    line = line_of(folder / "staff.csv", "clerk.530102001001.a,")
    edit(folder / "staff.csv", line, "clerk.530102001001.a,", "Clerk A,")
    fails(folder, "staff.csv", line, "user_id")


# ------------------------------------------------------------------ services.toml


def test_a_deciding_level_that_is_not_the_top_of_the_chain(folder):
    path = folder / "services.toml"
    line = line_of(path, "deciding_level", after='code = "minimum_living_guarantee"')
    edit(path, line, '"county"', '"township"')
    fails(folder, "services.toml", line, "deciding_level")


def test_an_unknown_document_in_a_multi_line_list(folder):
    path = folder / "services.toml"
    line = line_of(path, '"property_declaration"', after='code = "minimum_living_guarantee"')
    edit(path, line, "property_declaration", "horoscope")
    error = fails(folder, "services.toml", line, "required_documents")
    assert "horoscope" in str(error)


def test_a_budget_missing_a_level_of_the_chain(folder):
    path = folder / "services.toml"
    line = line_of(path, "budget_days", after='code = "urban_resident_medical_insurance"')
    edit(path, line, ", county = 5", "")
    fails(folder, "services.toml", line, "budget_days")


@pytest.mark.parametrize("days", ["0", "366", "100000", "true", "2.5", '"3"'])
def test_a_budget_out_of_bounds_or_not_an_integer(folder, days):
    """A budget of thousands of working days loaded, then made starting the level's clock fail
    (HTTP 500: no working time found that far); ``true`` was read as one day."""
    path = folder / "services.toml"
    line = line_of(path, "budget_days", after='code = "minimum_living_guarantee"')
    edit(path, line, "township = 10", f"township = {days}")
    fails(folder, "services.toml", line, "budget_days.township")


@pytest.mark.parametrize("days", ["-1", "3651", "99999999999", "true", "60.0"])
def test_a_reopen_window_out_of_bounds_or_not_an_integer(folder, days):
    """A huge window loaded, then overflowed the date arithmetic when a case was reopened."""
    path = folder / "services.toml"
    line = line_of(path, "reopen_window_days", after='code = "minimum_living_guarantee"')
    edit(path, line, "= 60", f"= {days}")
    fails(folder, "services.toml", line, "reopen_window_days")


def test_the_widest_bounds_load(folder):
    path = folder / "services.toml"
    service = 'code = "minimum_living_guarantee"'
    edit(path, line_of(path, "budget_days", after=service), "township = 10", "township = 365")
    edit(path, line_of(path, "reopen_window_days", after=service), "= 60", "= 3650")
    edit(path, line_of(path, "reopen_window_days", after='code = "job_referral"'), "= 15", "= 0")
    catalogue = load_reference(folder).catalogue
    mlg = catalogue.service("minimum_living_guarantee")
    assert (mlg.budget_days[Level.TOWNSHIP], mlg.reopen_window_days) == (365, 3650)
    assert catalogue.service("job_referral").reopen_window_days == 0


@pytest.mark.parametrize("share", ["true", "1", '"0.5"'])
def test_a_warning_share_that_is_not_a_fraction_is_pointed_at_where_it_was_written(folder, share):
    """The file-wide share is checked on each service that does not give its own: the error
    named the first service's header, where the share is not."""
    path = folder / "services.toml"
    line = line_of(path, "warning_share =")
    edit(path, line, "0.8", share)
    fails(folder, "services.toml", line, "warning_share")


def test_an_unknown_field_in_a_service(folder):
    path = folder / "services.toml"
    line = line_of(path, "reopen_window_days", after='code = "job_referral"')
    edit(path, line, "reopen_window_days", "reopen_windw_days")
    fails(folder, "services.toml", line, "reopen_windw_days")


def test_a_missing_field_points_at_the_service_header(folder):
    path = folder / "services.toml"
    line = line_of(path, 'name_en = "Job referral"')
    edit(path, line, 'name_en = "Job referral"', "")
    fails(folder, "services.toml", _header_before(path, line), "name_en")


def _header_before(path: Path, line: int) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return max(i + 1 for i, text in enumerate(lines[:line]) if text.startswith("[[service]]"))


def test_a_toml_syntax_error(folder):
    path = folder / "services.toml"
    line = line_of(path, 'name_en = "Job referral"')
    edit(path, line, '"Job referral"', '"Job referral')
    fails(folder, "services.toml", line, "<syntax>")


# ------------------------------------------------------------------ calendar_overrides.csv


def test_a_bad_date_in_the_calendar_overrides(folder):
    path = folder / "calendar_overrides.csv"
    append(path, "2027-01-01,false,New Year's Day\n")
    line = append(path, "2027-02-30,false,No such day\n")
    fails(folder, "calendar_overrides.csv", line, "date")


def test_a_bad_working_flag_in_the_calendar_overrides(folder):
    line = append(folder / "calendar_overrides.csv", "2027-01-01,perhaps,New Year's Day\n")
    fails(folder, "calendar_overrides.csv", line, "working")


def test_a_date_given_twice_in_the_calendar_overrides(folder):
    path = folder / "calendar_overrides.csv"
    append(path, "2027-01-01,false,New Year's Day\n")
    line = append(path, "2027-01-01,true,Oops\n")
    fails(folder, "calendar_overrides.csv", line, "date")
