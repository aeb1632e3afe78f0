"""The constrained input types: free text without control characters, real months, moments
PostgreSQL can store."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from services.intake.domain.submission import ResultSubmission
from shared.inputs import ChinaMoment, Moment, Month, Text
from shared.reference import CHINA_TZ

TEXT = TypeAdapter(Text)
MONTH = TypeAdapter(Month)
MOMENT = TypeAdapter(Moment)
CHINA_MOMENT = TypeAdapter(ChinaMoment)


@pytest.mark.parametrize("value", ["a\x00b", "\x01", "x\x08", "\x0b", "\x0c", "\x1b[2J", "\x1f"])
def test_text_refuses_control_characters_and_says_which_and_where(value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        TEXT.validate_python(value)
    found = next(c for c in value if ord(c) < 0x20)
    assert f"U+{ord(found):04X} at character {value.index(found)}" in str(refused.value)


@pytest.mark.parametrize("value", ["", "申请人来电\r\n\t询问进度", "a b ~ \x7f é"])
def test_text_keeps_line_breaks_tabs_and_everything_printable(value: str) -> None:
    assert TEXT.validate_python(value) == value


def test_a_result_from_another_system_with_a_nul_in_its_summary_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        ResultSubmission.model_validate({
            "kind": "result", "idempotency_key": "k-1",
            "case_id": "0c8f4e7a-2d3b-4c1e-9f5a-6b7c8d9e0f1a", "result_type": "payment",
            "reference": "R-1", "summary": "paid\x00", "details": {"bank": "ok\x00"}})
    assert {e["loc"] for e in refused.value.errors()} == {("summary",), ("details", "bank")}


@pytest.mark.parametrize("value", ["2026-00", "2026-13", "2026-99", "2026-1", "26-01", "2026_01",
                                   "2026-01\n", "２０２６-01"])
def test_a_month_is_yyyy_mm_with_a_month_from_01_to_12(value: str) -> None:
    with pytest.raises(ValidationError):
        MONTH.validate_python(value)
    assert MONTH.validate_python("2026-12") == "2026-12"


def test_a_moment_without_a_utc_form_is_refused() -> None:
    with pytest.raises(ValidationError, match="out of the range of dates"):
        MOMENT.validate_python("0001-01-01T00:00:00+14:00")
    assert MOMENT.validate_python("0001-01-01T00:00:00-01:00").year == 1
    assert MOMENT.validate_python("2026-03-02T09:00:00").tzinfo is None


def test_a_china_moment_without_a_zone_is_china_standard_time() -> None:
    assert CHINA_MOMENT.validate_python("2026-03-01") == datetime(2026, 3, 1, tzinfo=CHINA_TZ)
    assert CHINA_MOMENT.validate_python("2026-03-01T00:00:00Z").utcoffset() == timedelta(0)
    with pytest.raises(ValidationError, match="out of the range of dates"):
        CHINA_MOMENT.validate_python("0001-01-01T00:00:00")
