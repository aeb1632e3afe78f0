"""Plain JSON values from the domain's state objects, with personal data left out."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from shared.contracts.cases import EncryptedApplicant
from shared.contracts.envelope import iso


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses and mappings become objects, sets sorted lists,
    datetimes canonical UTC text. An applicant is reduced to its subject id."""
    if isinstance(value, EncryptedApplicant):
        return {"subject_id": value.subject_id}
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, BaseModel):
        return to_jsonable(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(to_jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON data")
