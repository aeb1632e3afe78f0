"""Why a submission was refused: a code a machine can count, the field, and a sentence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


Kind = Literal["invalid", "forbidden", "conflict", "not_found"]


class Refused(Exception):
    """A submission that intake will not turn into cases; ``reasons`` names every problem and
    ``kind`` says whose problem it is (as the case domain's rejections do)."""

    def __init__(self, reasons: Sequence[Reason], kind: Kind = "invalid") -> None:
        self.reasons = tuple(reasons)
        self.kind = kind
        super().__init__("; ".join(f"{r.field}: {r.message}" for r in self.reasons))


def field_path(loc: Sequence[Any]) -> str:
    """``("applicant", "id_number")`` → ``applicant.id_number``; indexes as ``[i]``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def from_validation_errors(errors: Sequence[Any]) -> list[Reason]:
    """Reasons from pydantic's ``errors(include_input=False)``: location and message only, so
    no input value (an ID number, a name) is ever repeated."""
    return [Reason("invalid", field_path(e.get("loc", ())), str(e.get("msg", "")))
            for e in errors]
