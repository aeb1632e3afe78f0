"""A case's history names who, where from and to, when and why; the text and the printable
page show no personal data (only the tracking number and the subject id)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.cases.domain import (
    AcceptCase,
    HandOffCase,
    ReceiveHandoff,
    ReturnCase,
    SubmitCase,
    decide_all,
)
from shared.audit import history_of, plan_segments, render_html, render_json, render_text
from shared.audit.history import CaseNotFound, load_history
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.contracts.registry import to_new_event
from shared.eventstore.memory import InMemoryEventStore
from shared.reference import Role
from tests.unit.audit.histories import REF

pytestmark = pytest.mark.unit
STATION, TOWNSHIP = "530102001001", "530102001"
CLERK = Actor(user_id=f"clerk.{STATION}.a", role=Role.STATION_CLERK, unit=STATION)
BACKUP = Actor(user_id=f"clerk.{STATION}.b", role=Role.STATION_CLERK, unit=STATION,
               acting_for=f"clerk.{STATION}.a")
TOWN = Actor(user_id=f"officer.{TOWNSHIP}.a", role=Role.TOWNSHIP_OFFICER, unit=TOWNSHIP)
CASE = uuid.UUID("00000000-0000-4000-8000-00000000a0d1")
SECRET_CIPHERTEXT, SECRET_HASH = "Z2NtOuW8oOS4iQ==", "hmac:9f86d081884c7d65"
DOCS = ("id_card", "household_register", "application_form", "income_certificate",
        "property_declaration", "bank_account")


def at(hour: int) -> datetime:
    return datetime(2026, 3, 2, 1 + hour, tzinfo=UTC)


def story() -> InMemoryEventStore:
    commands = [
        SubmitCase(case_id=CASE, at=at(0), actor=CLERK, tracking_no="KM-2026-000777",
                   service_code="minimum_living_guarantee", visit_id=uuid.uuid4(),
                   station=STATION, documents=DOCS,
                   applicant=EncryptedApplicant(subject_id="subject-777", id_hash=SECRET_HASH,
                                                encrypted={"name": SECRET_CIPHERTEXT})),
        AcceptCase(case_id=CASE, at=at(1), actor=CLERK),
        HandOffCase(case_id=CASE, at=at(2), actor=BACKUP, note="材料齐全"),
        ReceiveHandoff(case_id=CASE, at=at(3), actor=TOWN),
        ReturnCase(case_id=CASE, at=at(4), actor=TOWN, reasons=("收入证明需补正",)),
    ]
    store = InMemoryEventStore()
    events = decide_all(None, commands, REF)
    asyncio.run(store.append(f"case-{CASE}", 0, [to_new_event(e) for e in events]))
    return store


def test_history_names_actor_role_unit_acting_for_moves_and_reasons() -> None:
    history = asyncio.run(load_history(story(), CASE))
    assert (history.tracking_no, history.subject_id) == ("KM-2026-000777", "subject-777")
    handoff = next(e for e in history.entries if e.type == "CaseHandedOff")
    assert (handoff.actor_id, handoff.role, handoff.unit, handoff.acting_for) == (
        BACKUP.user_id, "station_clerk", STATION, CLERK.user_id)
    assert (handoff.from_unit, handoff.to_unit, handoff.reasons) == (STATION, TOWNSHIP,
                                                                     ("材料齐全",))
    returned = next(e for e in history.entries if e.type == "CaseReturned")
    assert (returned.from_unit, returned.to_unit) == (TOWNSHIP, STATION)
    assert returned.reasons == ("收入证明需补正",)
    assert [e.version for e in history.entries] == list(range(1, len(history.entries) + 1))


def test_no_rendering_shows_personal_data() -> None:
    history = asyncio.run(load_history(story(), CASE))
    for text in (render_text(history), render_html(history), render_json(history)):
        assert "KM-2026-000777" in text and "subject-777" in text
        assert SECRET_CIPHERTEXT not in text and SECRET_HASH not in text
    page = render_html(history)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "收入证明需补正" in page and f"{STATION} → {TOWNSHIP}" in page
    assert json.loads(render_json(history))["events"] == len(history.entries)


def test_an_unknown_case_has_no_history() -> None:
    with pytest.raises(CaseNotFound):
        history_of(CASE, [])


def test_segments_run_from_each_event_to_the_next_checkpoint() -> None:
    segments = plan_segments([3, 5, 12, 25, 31], [10, 20, 30])
    assert [(s.start, s.end, s.checkpoint) for s in segments] == [
        (3, 10, 10), (12, 20, 20), (25, 30, 30), (31, 31, None)]
    assert plan_segments([10], [10])[0].end == 10


def test_an_event_altered_in_the_store_is_flagged_in_every_rendering() -> None:
    """An auditor reading a history is told when an event no longer gives its recorded hash
    (changed in the store), not shown the altered content as if it were the record."""
    import dataclasses

    events = asyncio.run(story().read_stream(f"case-{CASE}"))
    assert history_of(CASE, events).altered == []
    returned = next(i for i, e in enumerate(events) if e.type == "CaseReturned")
    forged = events[returned].data_json.replace("收入证明需补正", "材料齐全")
    events[returned] = dataclasses.replace(events[returned], data_json=forged)
    history = history_of(CASE, events)
    assert history.altered == [events[returned].position]
    assert "WARNING: the events at positions" in render_text(history)
    assert "!! ALTERED" in render_text(history)
    assert json.loads(render_json(history))["altered_positions"] == [events[returned].position]
    assert "were altered in the store" in render_html(history)



def test_a_reason_with_line_breaks_cannot_add_lines_to_the_text_history() -> None:
    """Reasons are free text and may hold line breaks: in the plain-text history they are
    shown escaped, never as lines of their own that read as a further event or another
    actor."""
    forged = ("补正\n#6   2026-03-02 14:00 CST  CaseDecided  [position 6]\r\n"
              "     by director.530102.a (county_officer, 530102)")
    store = story()
    events = asyncio.run(store.read_stream(f"case-{CASE}"))
    returned = next(i for i, e in enumerate(events) if e.type == "CaseReturned")
    data = json.loads(events[returned].data_json)
    data["reasons"] = [forged]
    events[returned] = to_recorded(events[returned], data)
    history = history_of(CASE, events)
    text = render_text(history)
    headers = [line for line in text.splitlines() if line.startswith("#")]
    assert len(headers) == len(history.entries), text
    assert not [line for line in text.splitlines() if "by director" in line
                and not line.lstrip().startswith("reasons:")], text
    assert "补正\\n#6" in text, text


def to_recorded(event: Any, data: dict[str, Any]) -> Any:
    """``event`` holding ``data``, hashed as the store would have (an officer's own words)."""
    import dataclasses

    from shared.contracts.canonical import canonical_json
    from shared.contracts.envelope import chain_hash

    changed = dataclasses.replace(event, data_json=canonical_json(data))
    return dataclasses.replace(changed, hash=chain_hash(changed.prev_hash,
                                                        changed.canonical_bytes()))


def test_an_event_removed_from_the_store_is_flagged_in_every_rendering() -> None:
    """A case version the store no longer holds leaves a history that reads as complete:
    the renderings say which versions are missing, as they say which events were altered."""
    events = asyncio.run(story().read_stream(f"case-{CASE}"))
    i = next(i for i, e in enumerate(events) if e.type == "CaseHandedOff")
    version = events[i].version
    del events[i]
    history = history_of(CASE, events)
    assert history.missing_versions == [version]
    assert json.loads(render_json(history))["missing_versions"] == [version]
    warning = f"WARNING: versions {version} of the case are missing from the store"
    assert warning in render_text(history)
    assert warning in render_html(history)
    untouched = history_of(CASE, asyncio.run(story().read_stream(f"case-{CASE}")))
    assert untouched.missing_versions == [] and "WARNING" not in render_text(untouched)


@pytest.mark.parametrize(("field", "value"), [("data_json", '{"forged":true}'),
                                              ("type", "NoteAdded"),
                                              ("schema_version", 99)])
def test_an_event_altered_beyond_its_model_is_shown_flagged_not_a_crash(
    field: str, value: Any
) -> None:
    """A forger's edit need not fit the event's model (nor name a known type): the history
    of that case, which the auditor needs most then, still shows every other step, and the
    altered one as such."""
    import dataclasses

    events = asyncio.run(story().read_stream(f"case-{CASE}"))
    i = next(i for i, e in enumerate(events) if e.type == "CaseHandedOff")
    events[i] = dataclasses.replace(events[i], **{field: value})
    history = history_of(CASE, events)
    assert len(history.entries) == len(events)
    assert history.altered == [events[i].position]
    assert history.tracking_no == "KM-2026-000777"
    for text in (render_text(history), render_html(history), render_json(history)):
        assert "cannot be read" in text
