"""The case events as contracts: registered, versioned, attributable, free of plain personal
data, and round-tripping through canonical JSON unchanged."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.contracts.canonical import canonical_json, loads
from shared.contracts.cases import (
    CASE_EVENTS,
    MOVES,
    CaseReturned,
    CaseSubmitted,
    EncryptedApplicant,
    NoteAdded,
)
from shared.contracts.registry import registry, to_new_event
from shared.reference import CHINA_TZ
from tests.unit.cases.case_story import CAST

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("event_type", CASE_EVENTS, ids=lambda t: t.__name__)
def test_every_case_event_is_registered_named_in_the_past_and_attributable(event_type):
    assert registry.models[event_type.event_type] is event_type
    assert event_type.schema_version == 1
    assert event_type.__name__.endswith(("ed", "Off", "Withdrawn"))  # past tense
    assert {"case_id", "at", "actor"} <= set(event_type.model_fields)


@pytest.mark.parametrize("event_type", MOVES, ids=lambda t: t.__name__)
def test_every_move_names_where_from_and_where_to(event_type):
    assert {"from_unit", "from_level", "to_unit", "to_level"} <= set(event_type.model_fields)


def test_a_return_carries_its_reasons():
    assert CaseReturned.model_fields["reasons"].is_required()


def test_times_must_be_timezone_aware_and_are_kept_in_utc(story):
    note = NoteAdded(case_id=story.case_id, at=datetime(2026, 3, 2, 9, tzinfo=CHINA_TZ),
                     actor=CAST.clerk, text="hello")
    assert note.at == datetime(2026, 3, 2, 1, tzinfo=UTC) and note.at.tzinfo == UTC
    with pytest.raises(ValidationError):
        NoteAdded(case_id=story.case_id, at=datetime(2026, 3, 2, 9), actor=CAST.clerk, text="x")


def test_the_applicant_travels_only_as_ciphertext_and_hashes(story):
    [submitted] = story.submitted()
    assert isinstance(submitted, CaseSubmitted)
    assert set(EncryptedApplicant.model_fields) == {"subject_id", "id_hash", "encrypted"}
    assert submitted.model_dump(mode="json")["applicant"] == {
        "subject_id": "subject-1", "id_hash": "hmac:0f0f",
        "encrypted": {"name": "gcm:AAAA", "id": "gcm:BB"},
    }


def test_events_round_trip_through_canonical_json(story):
    for event in story.closed():
        new = to_new_event(event)
        text = canonical_json(new.data)
        again = registry.models[new.type].model_validate(loads(text))
        assert again == event
        assert canonical_json(again.model_dump(mode="json")) == text
