from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given

from shared.contracts.canonical import NotCanonicalisable, canonical_json, loads
from tests.strategies import json_values


@given(json_values)
def test_canonical_text_round_trips(value: object) -> None:
    text = canonical_json(value)
    assert loads(text) == value
    assert canonical_json(loads(text)) == text


@given(json_values)
def test_canonical_text_is_plain_json_with_sorted_keys(value: object) -> None:
    text = canonical_json(value)
    assert json.loads(text) == value
    assert text == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_numbers_keep_their_kind() -> None:
    text = canonical_json([1.0, 10**20, 1e16, -0.0, 0.1])
    assert text == "[1.0,100000000000000000000,1e+16,-0.0,0.1]"
    assert [type(x) for x in loads("[1.0,100000000000000000000,1e+16]")] == [float, int, float]


def test_chinese_text_is_not_escaped() -> None:
    assert canonical_json({"服务": "养老"}) == '{"服务":"养老"}'


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": float("nan")}, "$.a"),
        ({"a": [1, float("inf")]}, "$.a[1]"),
        ({"a": "\ud800"}, "$.a"),
        ({1: "x"}, "$"),
        ({"a": Decimal("1.10")}, "$.a"),
        ({"a": {1, 2}}, "$.a"),
    ],
)
def test_values_that_are_not_json_are_refused_naming_the_place(value: object, where: str) -> None:
    with pytest.raises(NotCanonicalisable) as caught:
        canonical_json(value)
    assert str(caught.value).startswith(f"{where}:")
