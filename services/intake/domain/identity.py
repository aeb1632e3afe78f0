"""Who the applicant is, checked without storing anything: the resident identity number of
GB 11643-1999 (18 characters, ISO 7064 MOD 11-2 check character) and Chinese phone numbers."""

from __future__ import annotations

import re
from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARACTERS = "10X98765432"
_SHAPE = re.compile(r"^[1-9]\d{16}[\dX]$")
_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_LANDLINE = re.compile(r"^0\d{2,3}-?\d{7,8}$")


def check_character(first_17: str) -> str:
    """The 18th character for the first 17 digits (ISO 7064 MOD 11-2)."""
    total = sum(int(digit) * weight for digit, weight in zip(first_17, _WEIGHTS, strict=True))
    return _CHECK_CHARACTERS[total % 11]


def normalise_id_number(number: str) -> str:
    return number.strip().upper()


def id_number_problem(number: str) -> str | None:
    """Why ``number`` is not a valid resident identity number, or ``None`` when it is. The
    message never repeats the number (it ends up in logs and rejection records)."""
    if not _SHAPE.match(number):
        return "must be 18 characters: 17 digits and a digit or X"
    if not _is_a_date(number[6:14]):
        return "the birth date (characters 7-14) is not a date"
    if check_character(number[:17]) != number[17]:
        return "the check character does not match (GB 11643)"
    return None


def is_valid_id_number(number: str) -> bool:
    return id_number_problem(normalise_id_number(number)) is None


def normalise_phone(phone: str) -> str:
    return re.sub(r"[\s()]", "", phone.strip()).removeprefix("+86")


def is_valid_phone(phone: str) -> bool:
    """A mainland mobile number (11 digits from 13x–19x) or a landline with its area code."""
    return bool(_MOBILE.match(phone) or _LANDLINE.match(phone))


def _is_a_date(digits: str) -> bool:
    try:
        born = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return False
    return born.year >= 1900
