"""SLA arithmetic on the working-day calendar: Spring Festival 2026 and its working Saturdays,
a paused clock, and a year the calendar package does not know."""

from __future__ import annotations

from datetime import date, datetime

import chinese_calendar
import pytest
from structlog.testing import capture_logs

from services.cases.domain import AcceptCase, RequestDocuments, SupplyDocuments, fold, sla
from shared.reference import CHINA_TZ, DayOverride, WorkingCalendar, load_calendar
from shared.reference.catalogue import MAX_BUDGET_DAYS
from tests.unit.cases.case_story import CAST

pytestmark = pytest.mark.unit
DAY = sla.DAY_SECONDS


def cst(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHINA_TZ)


@pytest.fixture
def calendar() -> WorkingCalendar:
    return WorkingCalendar()


def test_spring_festival_2026_as_the_package_publishes_it():
    holidays = [date(2026, 2, d) for d in range(15, 24)]
    assert not any(chinese_calendar.is_workday(d) for d in holidays)
    for saturday in (date(2026, 2, 14), date(2026, 2, 28)):  # adjusted working Saturdays
        assert saturday.weekday() == 5 and chinese_calendar.is_workday(saturday)


def test_the_calendar_follows_the_package(calendar):
    assert calendar.is_working_day(date(2026, 2, 14))
    assert not calendar.is_working_day(date(2026, 2, 16))
    assert calendar.is_working_day(date(2026, 2, 28))
    assert not calendar.is_working_day(date(2026, 3, 1))


def test_a_budget_runs_through_the_working_saturday_and_skips_the_festival(calendar):
    # Fri 13th 09:00 → 15 h; Sat 14th (worked) 24 h; 15th–23rd holiday; Tue 24th 24 h; Wed 9 h
    due = sla.add_working_seconds(calendar, cst(2026, 2, 13, 9), 3 * DAY)
    assert due == cst(2026, 2, 25, 9)
    days = [date(2026, 2, d) for d in range(13, 26)]
    assert sum(chinese_calendar.is_workday(d) for d in days) == 4  # 13, 14, 24, 25


def test_the_saturday_after_the_festival_counts_too(calendar):
    assert sla.add_working_seconds(calendar, cst(2026, 2, 26, 9), 2 * DAY) == cst(2026, 2, 28, 9)


def test_time_spent_over_the_festival_counts_only_the_working_days(calendar):
    used = sla.working_seconds_between(calendar, cst(2026, 2, 13), cst(2026, 2, 24))
    assert used == 2 * DAY


def test_a_clock_started_on_a_holiday_starts_counting_after_it(calendar):
    assert sla.add_working_seconds(calendar, cst(2026, 2, 17, 10), DAY) == cst(2026, 2, 25)


def test_warning_and_due_times_from_a_partly_used_budget(calendar):
    planned = sla.plan(calendar, starts_at=cst(2026, 3, 2, 9), budget_days=5,
                       used_seconds=DAY, warning_share=0.5)
    assert planned.warn_at == cst(2026, 3, 3, 21)  # 2.5 days − 1 used = 1.5 days
    assert planned.due_at == cst(2026, 3, 6, 9)


def test_an_overrun_budget_is_due_at_once(calendar):
    planned = sla.plan(calendar, starts_at=cst(2026, 3, 2, 9), budget_days=1,
                       used_seconds=2 * DAY)
    assert planned.due_at == planned.warn_at == cst(2026, 3, 2, 9)


def test_the_largest_budget_the_catalogue_admits_is_planned(calendar):
    """The catalogue bounds a level's budget well within the calendar the clock searches for
    working time: a budget of thousands of days loaded, then failed every clock it started."""
    planned = sla.plan(calendar, starts_at=cst(2026, 12, 31, 9), budget_days=MAX_BUDGET_DAYS)
    assert cst(2028, 1, 1) < planned.warn_at < planned.due_at < cst(2029, 1, 1)
    with pytest.raises(ValueError, match="no working time found"):
        sla.plan(calendar, starts_at=cst(2026, 12, 31, 9), budget_days=2_700)


def test_waiting_for_documents_pauses_the_clock(story):
    events = story.history(
        story.submit(documents=("id_card",)),
        story.cmd(AcceptCase, CAST.clerk, 1),                      # Mon 2 Mar 10:00
        story.cmd(RequestDocuments, CAST.clerk, 25),               # Tue 3 Mar 10:00
        story.cmd(SupplyDocuments, CAST.clerk, 24 * 8 + 1, documents=(  # Tue 10 Mar 10:00
            "household_register", "application_form", "income_certificate",
            "property_declaration", "bank_account",
        )),
    )
    timer = fold(events).timer
    assert timer.used_before == DAY
    assert timer.due_at == cst(2026, 3, 16, 10)  # 4 days left from Tue 10th; unpaused: 9th


def test_a_pause_over_the_festival_charges_nothing_and_the_saturday_counts(story):
    before = -17 * 24  # hours before Mon 2 Mar 09:00: Fri 13 Feb 09:00
    events = story.history(
        story.submit(documents=("id_card",), hours=before),
        story.cmd(AcceptCase, CAST.clerk, before),                 # Fri 13 Feb 09:00
        story.cmd(RequestDocuments, CAST.clerk, before + 1),       # Fri 13 Feb 10:00
        story.cmd(SupplyDocuments, CAST.clerk, before + 11 * 24 + 1, documents=(  # Tue 24 Feb
            "household_register", "application_form", "income_certificate",
            "property_declaration", "bank_account",
        )),
    )
    timer = fold(events).timer
    assert timer.starts_at == cst(2026, 2, 24, 10) and timer.used_before == 3600
    # 119 h left: Tue 14 h, Wed–Fri 72 h, Sat 28th (worked) 24 h, Sun off, Mon 2 Mar 9 h
    assert timer.due_at == cst(2026, 3, 2, 9)


def test_an_unknown_year_falls_back_to_weekends_and_warns_once(calendar):
    with capture_logs() as logs:
        assert calendar.is_working_day(date(2027, 1, 1))  # a Friday: no official data yet
        assert not calendar.is_working_day(date(2027, 1, 2))
        assert calendar.is_working_day(date(2027, 1, 4))
    warnings = [log for log in logs if log["event"] == "working_calendar_year_unknown"]
    assert len(warnings) == 1
    assert warnings[0]["year"] == 2027 and warnings[0]["log_level"] == "warning"
    assert not calendar.knows_year(2027)


def test_an_sla_across_new_year_2027_does_not_crash(calendar):
    with capture_logs():
        due = sla.add_working_seconds(calendar, cst(2026, 12, 31, 9), DAY)
    assert due == cst(2027, 1, 1, 9)


def test_an_override_file_makes_a_day_of_an_unknown_year_a_holiday(tmp_path):
    path = tmp_path / "calendar_overrides.csv"
    path.write_text(
        "date,working,name\n"
        "2027-01-01,false,New Year's Day\n"
        "2027-02-20,true,Adjusted working Saturday\n",
        encoding="utf-8",
    )
    calendar = load_calendar(path)
    with capture_logs() as logs:
        assert not calendar.is_working_day(date(2027, 1, 1))
        assert calendar.is_working_day(date(2027, 2, 20))
        assert calendar.is_working_day(date(2027, 1, 4))
        due = sla.add_working_seconds(calendar, cst(2026, 12, 31, 9), DAY)
    assert logs == []
    assert calendar.knows_year(2027)
    assert due == cst(2027, 1, 4, 9)


def test_an_override_wins_over_the_package():
    calendar = WorkingCalendar([DayOverride(date=date(2026, 3, 2), working=False, name="x")])
    assert not calendar.is_working_day(date(2026, 3, 2))


@pytest.mark.parametrize("share", [0.55, 0.7, 0.85, 0.95])
def test_the_warning_falls_on_the_share_to_the_second(calendar, share):
    # a day's 86,400 s × 0.55 is 47,520.000000000007 in binary floating point: rounding that up
    # warned a second after the share
    planned = sla.plan(calendar, starts_at=cst(2026, 3, 2), budget_days=1, warning_share=share)
    expected = round(DAY * share)
    assert sla.working_seconds_between(calendar, cst(2026, 3, 2), planned.warn_at) == expected
