"""Pure projectors: an event and a case's summary row in, the rows it changes out.

``project`` (one event), ``CaseFolder`` (version continuity over many), ``ReadModel`` (the same
changes in memory), ``own_deltas``/``subtree_deltas`` (counts up the org tree)."""

from services.projections.projectors.case import PROJECTORS, project
from services.projections.projectors.counts import own_deltas, subtree_deltas
from services.projections.projectors.events import ProjectedEvent, Unprojectable, prepare
from services.projections.projectors.fold import (
    APPLIED,
    DUPLICATE,
    PARKED,
    CaseFolder,
    Gap,
    RawEvent,
    raw,
)
from services.projections.projectors.memory import ReadModel
from services.projections.projectors.paths import UnitPaths
from services.projections.projectors.rows import (
    TABLES,
    BreachRow,
    CaseRow,
    Changes,
    CountKey,
    MoveRow,
    Receipt,
    SlaFact,
    TimelineRow,
)

__all__ = [
    "APPLIED",
    "DUPLICATE",
    "PARKED",
    "PROJECTORS",
    "TABLES",
    "BreachRow",
    "CaseFolder",
    "CaseRow",
    "Changes",
    "CountKey",
    "Gap",
    "MoveRow",
    "ProjectedEvent",
    "RawEvent",
    "ReadModel",
    "Receipt",
    "SlaFact",
    "TimelineRow",
    "UnitPaths",
    "Unprojectable",
    "own_deltas",
    "prepare",
    "project",
    "raw",
    "subtree_deltas",
]
