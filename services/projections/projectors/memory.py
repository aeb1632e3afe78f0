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
    ``keep_timeline`` is off (a rebuild streams them out instead)."""

    cases: dict[UUID, CaseRow] = field(default_factory=dict)
    counts: Counter[CountKey] = field(default_factory=Counter)
    sla: dict[tuple[UUID, str, str], SlaFact] = field(default_factory=dict)
    breaches: dict[tuple[UUID, int], BreachRow] = field(default_factory=dict)
    moves: dict[tuple[UUID, int], MoveRow] = field(default_factory=dict)
    timeline: list[TimelineRow] = field(default_factory=list)
    keep_timeline: bool = True

    def apply(self, change: Changes) -> None:
        """Apply one event's changes, with the same semantics as the PostgreSQL writer."""
        self.cases[change.case.case_id] = change.case
        for count_key, delta in change.counts:
            self.counts[count_key] += delta
        if change.timeline is not None and self.keep_timeline:
            self.timeline.append(change.timeline)
        if change.sla is not None:
            fact = change.sla
            self.sla[(fact.case_id, fact.level, fact.unit)] = fact
        if change.breach is not None:
            self.breaches.setdefault((change.breach.case_id, change.breach.timer_no),
                                     change.breach)
        if change.move is not None:
            self.moves[(change.move.case_id, change.move.version)] = change.move
        if change.receipt is not None:
            key = (change.receipt.case_id, change.receipt.version)
            move = self.moves.get(key)
            if move is not None:
                self.moves[key] = move._replace(received_at=change.receipt.at)

    def own_counts(self) -> dict[CountKey, int]:
        return {k: v for k, v in self.counts.items() if v}

    def subtree_counts(self, paths: UnitPaths) -> dict[CountKey, int]:
        return dict(subtree_deltas(self.own_counts(), paths))
