"""The projectors over events made by the real domain, and the version-continuity fold."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime

import pytest

from bench.projections import Simulator
from services.projections.projectors import (
    APPLIED,
    DUPLICATE,
    PARKED,
    CaseFolder,
    Gap,
    RawEvent,
    ReadModel,
    UnitPaths,
    Unprojectable,
)
from shared.contracts.canonical import canonical_json
from shared.reference import Reference
from tests.unit.projections.scenarios import (
    breached_at_the_station,
    raw_events,
    reopened_at_the_county,
    returned_to_the_station,
)

STATION = "530102001001"
AT = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def events_of(ref: Reference, cases: int, seed: int = 7) -> list[RawEvent]:
    """Events of simulated cases, interleaved by time, with positions."""
    sim = Simulator(ref, seed)
    per_case = []
    for n in range(cases):
        events = [e for _, evs in sim.case(n, AT, STATION if n == 0 else None) for e in evs]
        per_case.append(events)
    flat = [(e.at, f"case-{e.case_id}", v + 1, e) for evs in per_case
            for v, e in enumerate(evs)]
    flat.sort(key=lambda t: (t[0], t[1], t[2]))
    return [RawEvent(i + 1, stream, version, e.event_type, e.schema_version,
                     canonical_json(e.model_dump(mode="json")), AT)
            for i, (_, stream, version, e) in enumerate(flat)]


def fold_all(ref: Reference, events: list[RawEvent]) -> tuple[CaseFolder, ReadModel]:
    folder = CaseFolder(UnitPaths(ref.org), strict=True)
    model = ReadModel()
    for event in events:
        assert folder.offer(event) == APPLIED
    for change in folder.changes:
        model.apply(change)
    return folder, model


def test_a_simulated_case_is_summarised_and_counted_once(ref: Reference) -> None:
    sim = Simulator(ref, 3)
    sim.rng.seed(11)
    run = [e for _, evs in sim.case(1, AT, STATION) for e in evs]
    stream = f"case-{run[0].case_id}"
    events = [RawEvent(i + 1, stream, i + 1, e.event_type, 1,
                       canonical_json(e.model_dump(mode="json")), AT)
              for i, e in enumerate(run)]
    folder, model = fold_all(ref, events)
    (row,) = folder.rows.values()
    assert row.version == len(events) and row.position == len(events)
    assert row.tracking_no == "KM20260300000001"
    moves = [m for m in model.moves.values()]
    assert all(m.received_at is not None and m.received_at >= m.sent_at for m in moves)
    assert next(t.type for t in model.timeline) == "CaseSubmitted"
    assert not any(t.type.startswith("SlaTimer") for t in model.timeline)
    assert model.own_counts() == {(row.unit, row.status, row.service_code): 1}


def test_many_cases_count_once_each_wherever_they_are(ref: Reference) -> None:
    events = events_of(ref, 60)
    folder, model = fold_all(ref, events)
    assert sum(model.own_counts().values()) == len(folder.rows) == 60
    paths = UnitPaths(ref.org)
    subtree = model.subtree_counts(paths)
    assert sum(n for k, n in subtree.items() if k.unit == ref.org.root.code) == 60
    for case in folder.rows.values():
        assert (case.county, case.township) == paths.path(case.unit)[:2]


def test_duplicates_are_skipped_and_gaps_reported(ref: Reference) -> None:
    events = events_of(ref, 1)
    folder = CaseFolder(UnitPaths(ref.org))
    assert folder.offer(events[0]) == APPLIED
    assert folder.offer(events[0]) == DUPLICATE
    gap = folder.offer(events[3])
    assert gap == Gap(events[0].stream_id, 1, 4)
    assert [folder.offer(e) for e in events[1:4]] == [APPLIED] * 3
    assert folder.duplicates == 1 and len(folder.changes) == 4


def test_an_unknown_event_is_parked_and_the_case_goes_on(ref: Reference) -> None:
    events = events_of(ref, 1)
    odd = events[1]._replace(type="CaseTeleported")
    folder = CaseFolder(UnitPaths(ref.org))
    assert folder.offer(events[0]) == APPLIED
    assert folder.offer(odd) == PARKED
    assert folder.offer(events[2]) == APPLIED
    assert [why.type for _, why in folder.parked] == ["CaseTeleported"]
    strict = CaseFolder(UnitPaths(ref.org), strict=True)
    strict.offer(events[0])
    with pytest.raises(Unprojectable, match="CaseTeleported"):
        strict.offer(odd)


def test_a_newer_schema_version_and_a_malformed_case_are_parked(ref: Reference) -> None:
    events = events_of(ref, 1)
    folder = CaseFolder(UnitPaths(ref.org))
    folder.offer(events[0])
    assert folder.offer(events[1]._replace(schema_version=9)) == PARKED
    assert folder.offer(events[0]._replace(stream_id="case-not-a-uuid", position=99)) == PARKED
    assert folder.offer(events[0]._replace(stream_id=f"case-{uuid.uuid4()}",
                                           data="{}", position=100)) == PARKED


def test_any_split_into_batches_and_any_redelivery_gives_the_same_model(
    ref: Reference,
) -> None:
    events = events_of(ref, 25)
    _, expected = fold_all(ref, events)
    folder = CaseFolder(UnitPaths(ref.org))
    by_stream = {s: list(g) for s, g in itertools.groupby(
        sorted(events, key=lambda e: (e.stream_id, e.version)), key=lambda e: e.stream_id)}
    # deliver in reverse, twice: every gap is filled from "the store" (by_stream)
    for event in [*reversed(events), *events]:
        outcome = folder.offer(event)
        if isinstance(outcome, Gap):
            for earlier in by_stream[outcome.stream_id][outcome.after:outcome.before - 1]:
                assert folder.offer(earlier) == APPLIED
            assert folder.offer(event) == APPLIED
    model = ReadModel()
    for change in folder.changes:
        model.apply(change)
    assert model.cases == expected.cases
    assert sorted(model.timeline) == sorted(expected.timeline)
    assert model.own_counts() == expected.own_counts()
    assert (model.sla, model.moves, model.breaches) == (expected.sla, expected.moves,
                                                        expected.breaches)



def test_events_of_other_streams_are_passed_over_not_parked(ref: Reference) -> None:
    """The log also holds e.g. the auditors' access log: not a case, nothing to project."""
    from services.projections.projectors.fold import NOT_A_CASE

    folder = CaseFolder(UnitPaths(ref.org), strict=True)  # a rebuild would raise on a park
    audit_read = events_of(ref, 1)[0]._replace(stream_id="audit-access-2026-11", position=5)
    assert folder.offer(audit_read) == NOT_A_CASE
    assert folder.changes == [] and folder.duplicates == 0


def test_free_text_with_a_nul_reaches_the_timeline_without_it(ref: Reference) -> None:
    """The log may hold a note with U+0000 (JSON allows it; a PostgreSQL text column does
    not): projected as U+FFFD, or the live worker would retry that batch for ever."""
    first = events_of(ref, 1)[0]
    data = json.loads(first.data if isinstance(first.data, str) else json.dumps(first.data))
    note = {"case_id": data["case_id"], "at": data["at"], "actor": data["actor"],
            "text": "缺\x00页"}
    added = RawEvent(2, first.stream_id, 2, "NoteAdded", 1, canonical_json(note), AT)
    _, model = fold_all(ref, [first, added])
    assert [t.detail for t in model.timeline if t.type == "NoteAdded"] == ["缺\ufffd页"]


def test_an_external_result_shows_what_the_other_system_said_in_the_timeline(
    ref: Reference,
) -> None:
    """The officer deciding reads the result in the case's timeline: its summary and details,
    not only its source and reference (they were all it showed)."""
    first = events_of(ref, 1)[0]
    data = json.loads(first.data if isinstance(first.data, str) else json.dumps(first.data))
    actor = {"user_id": "system.pension", "role": "system", "unit": "530102"}

    def result(version: int, summary: str, details: dict[str, str]) -> RawEvent:
        body = {"case_id": data["case_id"], "at": data["at"], "actor": actor,
                "source_system": "pension", "result_type": "contribution_history",
                "reference": f"PEN-{version}", "summary": summary, "details": details}
        return RawEvent(version, first.stream_id, version, "ExternalResultRecorded", 1,
                        canonical_json(body), AT)

    _, model = fold_all(ref, [first, result(2, "12 years paid", {"years": "12",
                                                                  "arrears": "none"}),
                              result(3, "", {})])
    assert [t.detail for t in model.timeline if t.type == "ExternalResultRecorded"] == [
        "pension: contribution_history PEN-2 — 12 years paid; arrears: none; years: 12",
        "pension: contribution_history PEN-3"]


def test_a_reopened_case_keeps_each_round_of_a_levels_clock(ref: Reference) -> None:
    """The county took 2 h, then 1 h more after a reopen (its clock restarted from zero):
    both rounds are facts, the first one not replaced by the second."""
    _, events = reopened_at_the_county(ref)
    _, model = fold_all(ref, raw_events(events))
    county = sorted((f.round, f.used_seconds, f.on_time) for f in model.sla.values()
                    if f.level == "county")
    assert county == [(0, 7200, True), (1, 3600, True)]
    assert sorted(f.level for f in model.sla.values()) == ["community", "county", "county",
                                                          "township"]


def test_the_flags_are_those_of_the_level_holding_the_case(ref: Reference) -> None:
    """Breached at the station, the case reaches the township's queue on the township's clock,
    which has not warned: not late at the township, while ``breached_levels`` still says where
    it was. Sent back down, it is the station's late case again (the domain does not warn or
    breach a level twice: its clock keeps the flags)."""
    state, events = breached_at_the_station(ref)
    folder, _ = fold_all(ref, raw_events(events))
    (row,) = folder.rows.values()
    assert (row.level, row.status) == ("township", "in_review")
    assert (row.warned, row.breached) == (False, False)
    assert (tuple(row.warned_levels), tuple(row.breached_levels)) == (("community",),
                                                                        ("community",))
    assert state.timer is not None and not state.timer.breached  # as the domain has it

    state, back = returned_to_the_station(ref, state)
    folder, _ = fold_all(ref, raw_events(events + back))
    (row,) = folder.rows.values()
    assert (row.level, row.warned, row.breached) == ("community", True, True)
    assert state.timer is not None and state.timer.breached

