"""The rows the read models hold, as plain named tuples (COPY takes them as they are), and the
``Changes`` one event makes to them."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple
from uuid import UUID


class CaseRow(NamedTuple):
    """``case_summary``: one row per case (column order = the table's). ``warned`` and
    ``breached`` are the flags of the clock of the level holding the case; ``warned_levels``
    and ``breached_levels`` every level's since the submission or the last reopen, as the
    domain keeps them (a level's flags come back with the case when it returns)."""

    case_id: UUID
    tracking_no: str
    service_code: str
    station: str
    visit_id: UUID
    status: str
    unit: str
    level: str
    county: str | None
    township: str | None
    community: str | None
    owner: str | None
    acting_person: str | None
    due_at: datetime | None
    warned: bool
    breached: bool
    warned_levels: tuple[str, ...]  # read back from the table as a list
    breached_levels: tuple[str, ...]
    outcome: str | None
    resume_status: str | None
    submitted_at: datetime
    last_change_at: datetime
    last_event: str
    pending_move: int | None
    reopens: int  # the round of the SLA facts its clock stops make
    version: int
    position: int


class TimelineRow(NamedTuple):
    """``timeline``: one step of a case, with who acted and where the case is afterwards."""

    case_id: UUID
    version: int
    position: int
    at: datetime
    type: str
    actor_id: str
    actor_role: str
    actor_unit: str
    acting_for: str | None
    unit: str
    level: str
    from_unit: str | None
    to_unit: str | None
    status: str
    detail: str


class SlaFact(NamedTuple):
    """``sla_facts``: how long ``level``/``unit`` took with a case in one round (the round's
    last clock stop). ``round`` is the number of reopens before it: a reopen restarts the
    level's clock from zero, and each round is a fact of its own."""

    case_id: UUID
    level: str
    unit: str
    round: int
    service_code: str
    county: str | None
    township: str | None
    month: str
    used_seconds: int
    budget_seconds: int
    on_time: bool
    stopped_at: datetime


class BreachRow(NamedTuple):
    """``sla_breaches``: a breach charged to the level and unit that used the time."""

    case_id: UUID
    timer_no: int
    level: str
    unit: str
    service_code: str
    county: str | None
    township: str | None
    month: str
    at: datetime


class MoveRow(NamedTuple):
    """``moves``: a hand-off or escalation up; ``received_at`` is set when it is received."""

    case_id: UUID
    version: int
    kind: str
    service_code: str
    from_unit: str
    from_level: str
    to_unit: str
    to_level: str
    county: str | None
    township: str | None
    sent_at: datetime
    received_at: datetime | None


class CountKey(NamedTuple):
    unit: str
    status: str
    service_code: str


class Receipt(NamedTuple):
    """A pending move (``case_id``, ``version``) was received at ``at``."""

    case_id: UUID
    version: int
    at: datetime


class Changes(NamedTuple):
    """Everything one event changes. ``counts`` are deltas of the holding unit's own counts
    (the subtree counts follow from them, see ``counts.subtree_deltas``). A named tuple (not
    a frozen dataclass): one is made per event, and a rebuild makes millions."""

    case: CaseRow
    timeline: TimelineRow | None = None
    counts: tuple[tuple[CountKey, int], ...] = ()
    sla: SlaFact | None = None
    breach: BreachRow | None = None
    move: MoveRow | None = None
    receipt: Receipt | None = None


TABLES: dict[str, tuple[str, ...]] = {
    "case_summary": CaseRow._fields,
    "timeline": TimelineRow._fields,
    "sla_facts": SlaFact._fields,
    "sla_breaches": BreachRow._fields,
    "moves": MoveRow._fields,
}
"""Column names of the row tables, in table order."""
