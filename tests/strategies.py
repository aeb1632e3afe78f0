"""Hypothesis strategies shared by tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Unicode scalar values only (lone surrogates are not text); Chinese, emoji, controls and NUL
# all included.
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)
scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | text
    | st.sampled_from(["最低生活保障", "张三", "𠀋", "é", "\u0000", "line\nbreak", ""])
)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(text, json_values, max_size=6)
