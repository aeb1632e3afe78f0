"""Canonical JSON: the one byte form of event data that is hashed, stored and read back.

Rules (RFC 8785 in spirit, kept simple enough to reproduce in any language):
- objects with keys sorted by code point, no insignificant whitespace;
- strings as UTF-8, not escaped beyond what JSON requires; lone surrogates are refused;
- integers of any size as digits; floats as Python's shortest round-trip repr
  (so ``1.0`` stays a float and ``10**20`` stays an int); NaN and infinities are refused;
- ``Decimal`` is not a JSON type: event models serialise it as a string.

The event store keeps this text verbatim in ``json`` columns (not ``jsonb``, which would rewrite
numbers), so ``canonical(json.loads(stored)) == stored`` for every stored value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

JsonValue = Any
_SURROGATE = re.compile("[\ud800-\udfff]")


class NotCanonicalisable(ValueError):
    """The value cannot be written as canonical JSON (e.g. NaN, a lone surrogate, a set)."""


def _check(value: JsonValue, path: str) -> None:
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise NotCanonicalisable(f"{path}: string holds a lone surrogate")
    elif isinstance(value, bool) or value is None or isinstance(value, int):
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise NotCanonicalisable(f"{path}: {value!r} is not a JSON number")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotCanonicalisable(f"{path}: object key {key!r} is not a string")
            _check(key, f"{path}.<key>")
            _check(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
    else:
        raise NotCanonicalisable(f"{path}: {type(value).__name__} is not a JSON type")


_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


_CONTAINERS = (dict, list, tuple)


def _keys_are_strings(value: JsonValue) -> bool:
    """The json module silently turns int/float/bool/None keys into strings; we refuse them.
    (Iterative and type-exact: this runs on every appended event.)"""
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is dict:
            for key, child in item.items():
                if type(key) is not str and not isinstance(key, str):
                    return False
                if type(child) in _CONTAINERS or isinstance(child, _CONTAINERS):
                    pending.append(child)
        elif type(item) in _CONTAINERS or isinstance(item, _CONTAINERS):
            pending.extend(c for c in item if isinstance(c, _CONTAINERS))
    return True


def _keys_surely_strings(value: JsonValue) -> bool:
    """orjson refuses any non-string key (and is ten times quicker than walking the value in
    Python). It also refuses things the json module takes (integers beyond 64 bits, str
    subclasses as keys...): then walk it to be sure. Its output is not used."""
    try:
        orjson.dumps(value)
    except TypeError:
        return _keys_are_strings(value)
    return True


def canonical_json(value: JsonValue) -> str:
    """Return the canonical JSON text of ``value``; raise ``NotCanonicalisable`` if impossible."""
    if not _keys_surely_strings(value):
        _check(value, "$")
    try:
        text = _encoder.encode(value)
        text.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        _check(value, "$")  # names the offending place
        raise NotCanonicalisable(str(exc)) from exc
    return text


def loads(text: str) -> JsonValue:
    """Parse JSON text (the inverse of ``canonical_json``)."""
    return json.loads(text)
