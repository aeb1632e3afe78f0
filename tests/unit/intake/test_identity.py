"""GB 11643 ID numbers and phone numbers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.domain.identity import (
    check_character,
    id_number_problem,
    is_valid_id_number,
    is_valid_phone,
    normalise_phone,
)
from tests.unit.intake.people import synthetic_id_number, with_bad_check_character


def test_the_standard_worked_example_checks() -> None:
    # GB 11643-1999's own example number (appendix): 11010519491231002X
    assert check_character("11010519491231002") == "X"
    assert is_valid_id_number("11010519491231002x")


@given(st.integers(min_value=0))
def test_every_generated_number_is_valid_and_any_other_check_character_is_not(seed: int) -> None:
    number = synthetic_id_number(random.Random(seed))
    assert is_valid_id_number(number)
    assert not is_valid_id_number(with_bad_check_character(number))


@pytest.mark.parametrize(("number", "problem"), [
    ("1101051949123100", "must be 18 characters"),
    ("01010519491231002X", "must be 18 characters"),
    ("110105194913310023", "birth date"),
    ("110105194912310021", "check character"),
])
def test_problems_are_named_without_repeating_the_number(number: str, problem: str) -> None:
    found = id_number_problem(number)
    assert found is not None and problem in found
    assert number not in found


@pytest.mark.parametrize(("phone", "valid"), [
    ("13812345678", True), ("+86 138 1234 5678", True), ("0871-65123456", True),
    ("12812345678", False), ("1381234567", False), ("abc", False),
])
def test_phones(phone: str, valid: bool) -> None:
    assert is_valid_phone(normalise_phone(phone)) is valid
