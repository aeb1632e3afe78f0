"""The read models in memory: the same ``Changes`` applied to dictionaries. The rebuild fills
one before copying it into PostgreSQL; tests compare it with the tables."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from uuid import UUID

from services.projections.projectors.counts import subtree_deltas
from services.projections.projectors.paths import UnitPaths
from services.projections.projectors.rows import (
    BreachRow,
    CaseRow,
    Changes,
    CountKey,
    MoveRow,
    SlaFact,
    TimelineRow,
)


@dataclass
class ReadModel:
    """Every read model but the timeline is kept here; timeline rows go to ``timeline`` unless
    ``keep_timeline`` is off (a rebuild streams them out instead). ``keep_cases`` off: the
    case rows are not kept (a rebuild has them in its ``CaseFolder``)."""

    cases: dict[UUID, CaseRow] = field(default_factory=dict)
    counts: Counter[CountKey] = field(default_factory=Counter)
    sla: dict[tuple[UUID, str, str, int], SlaFact] = field(default_factory=dict)
    breaches: dict[tuple[UUID, int], BreachRow] = field(default_factory=dict)
    moves: dict[tuple[UUID, int], MoveRow] = field(default_factory=dict)
    timeline: list[TimelineRow] = field(default_factory=list)
    keep_timeline: bool = True
    keep_cases: bool = True

    def apply(self, change: Changes) -> None:
        """Apply one event's changes, with the same semantics as the PostgreSQL writer."""
        case, line, counts, sla, breach, move, receipt = change
        if self.keep_cases:
            self.cases[case.case_id] = case
        if counts:
            own = self.counts
            for count_key, delta in counts:
                own[count_key] = own.get(count_key, 0) + delta
        if line is not None and self.keep_timeline:
            self.timeline.append(line)
        if sla is not None:
            self.sla[(sla.case_id, sla.level, sla.unit, sla.round)] = sla
        if breach is not None:
            self.breaches.setdefault((breach.case_id, breach.timer_no), breach)
        if move is not None:
            self.moves[(move.case_id, move.version)] = move
        if receipt is not None:
            key = (receipt.case_id, receipt.version)
            sent = self.moves.get(key)
            if sent is not None:
                self.moves[key] = sent._replace(received_at=receipt.at)

    def own_counts(self) -> dict[CountKey, int]:
        return {k: v for k, v in self.counts.items() if v}

    def subtree_counts(self, paths: UnitPaths) -> dict[CountKey, int]:
        return dict(subtree_deltas(self.own_counts(), paths))
