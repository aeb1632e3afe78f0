"""Why a submission was refused: a code a machine can count, the field, and a sentence."""

from __future__ import annotations

import re
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


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}|\[key\]")


def field_path(loc: Sequence[Any]) -> str:
    """``("applicant", "id_number")`` → ``applicant.id_number``; indexes as ``[i]``. A part
    that is not shaped like a name (a key of a sender's mapping, or of an unknown field, as
    sent: a digit first, a space, a Chinese character, ...) is ``*``: it may be an ID number
    or a name."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        name = str(part) if _NAME.fullmatch(str(part)) else "*"
        path += f".{name}" if path else name
    return path or "body"


def from_validation_errors(errors: Sequence[Any]) -> list[Reason]:
    """Reasons from pydantic's ``errors(include_input=False)``: location and message only, so
    no input value (an ID number, a name) is ever repeated. A missing or unknown tag of a
    discriminated union names the discriminator (its message would quote the tag sent)."""
    reasons = []
    for e in errors:
        kind, ctx = e.get("type"), e.get("ctx") or {}
        if kind in ("union_tag_not_found", "union_tag_invalid"):
            tag = field_path((*e.get("loc", ()), str(ctx.get("discriminator", "")).strip("'")))
            expected = ctx.get("expected_tags")
            reasons.append(Reason("invalid", tag, f"must be one of {expected}" if expected
                                  else "is required"))
        else:
            reasons.append(Reason("invalid", field_path(e.get("loc", ())),
                                  str(e.get("msg", ""))))
    return reasons
