"""Test kit for the pure case domain: a cast of actors, canned histories of one case, and the
given(events).when(command).then(events | Rejection) helper. (A uniquely named module, not
conftest, so tests can import it whatever other conftest files exist.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from services.cases.domain import (
    AcceptCase,
    CloseCase,
    Command,
    DecideCase,
    HandOffCase,
    ReceiveHandoff,
    Rejection,
    SubmitCase,
    decide,
    decide_all,
    evolve,
    fold,
)
from shared.contracts.cases import Actor, CaseEvent, EncryptedApplicant, Outcome
from shared.reference import CHINA_TZ, Reference, Role

STATION = "530102001001"
OTHER_STATION = "530102001002"
TOWNSHIP = "530102001"
OTHER_TOWNSHIP = "530102002"
COUNTY = "530102"
OTHER_COUNTY = "530103"
CITY = "530100"
MLG = "minimum_living_guarantee"
MLG_DOCUMENTS = (
    "id_card", "household_register", "application_form", "income_certificate",
    "property_declaration", "bank_account",
)


def person(user_id: str, role: Role, unit: str, acting_for: str | None = None) -> Actor:
    return Actor(user_id=user_id, role=role, unit=unit, acting_for=acting_for)


class Cast:
    """The people of the stories: station 530102001001 in township 530102001, county 530102."""

    clerk: Actor = person(f"clerk.{STATION}.a", Role.STATION_CLERK, STATION)
    clerk_b: Actor = person(f"clerk.{STATION}.b", Role.STATION_CLERK, STATION)
    backup_for_clerk: Actor = person(
        f"clerk.{STATION}.b", Role.STATION_CLERK, STATION, acting_for=f"clerk.{STATION}.a"
    )
    other_station_clerk: Actor = person(
        f"clerk.{OTHER_STATION}.a", Role.STATION_CLERK, OTHER_STATION
    )
    town: Actor = person(f"officer.{TOWNSHIP}.a", Role.TOWNSHIP_OFFICER, TOWNSHIP)
    town_b: Actor = person(f"officer.{TOWNSHIP}.b", Role.TOWNSHIP_OFFICER, TOWNSHIP)
    other_town: Actor = person(
        f"officer.{OTHER_TOWNSHIP}.a", Role.TOWNSHIP_OFFICER, OTHER_TOWNSHIP
    )
    county: Actor = person(f"officer.{COUNTY}.a", Role.COUNTY_OFFICER, COUNTY)
    county_b: Actor = person(f"officer.{COUNTY}.b", Role.COUNTY_OFFICER, COUNTY)
    backup_for_county: Actor = person(
        f"officer.{COUNTY}.b", Role.COUNTY_OFFICER, COUNTY, acting_for=f"officer.{COUNTY}.a"
    )
    town_supervisor: Actor = person(f"supervisor.{TOWNSHIP}", Role.SUPERVISOR, TOWNSHIP)
    other_town_supervisor: Actor = person(
        f"supervisor.{OTHER_TOWNSHIP}", Role.SUPERVISOR, OTHER_TOWNSHIP
    )
    county_supervisor: Actor = person(f"supervisor.{COUNTY}", Role.SUPERVISOR, COUNTY)
    city_supervisor: Actor = person(f"supervisor.{CITY}.a", Role.SUPERVISOR, CITY)
    auditor: Actor = person(f"auditor.{CITY}.a", Role.AUDITOR, CITY)
    other_system: Actor = person("system.pension", Role.SYSTEM, CITY)
    clock: Actor = person("system.sla-clock", Role.SYSTEM, CITY)


CAST = Cast()


class Story:
    """Commands and canned histories for one case, starting Monday 2 March 2026, 09:00 CST (an
    ordinary working week). ``hours`` are offsets from that moment."""

    case_id = UUID("00000000-0000-4000-8000-000000000001")
    visit_id = UUID("00000000-0000-4000-8000-0000000000aa")
    start = datetime(2026, 3, 2, 9, 0, tzinfo=CHINA_TZ)
    applicant = EncryptedApplicant(
        subject_id="subject-1", id_hash="hmac:0f0f", encrypted={"name": "gcm:AAAA", "id": "gcm:BB"}
    )

    def __init__(self, ref: Reference) -> None:
        self.ref = ref

    def at(self, hours: float) -> datetime:
        return self.start + timedelta(hours=hours)

    def cmd(self, kind: Callable[..., Command], actor: Actor, hours: float, **fields: Any) -> (
        Command
    ):
        return kind(case_id=self.case_id, at=self.at(hours), actor=actor, **fields)

    def submit(self, service: str = MLG, documents: Sequence[str] = MLG_DOCUMENTS,
               actor: Actor = CAST.clerk, station: str = STATION, hours: float = 0) -> SubmitCase:
        command = self.cmd(
            SubmitCase, actor, hours, tracking_no="KM-2026-000001", service_code=service,
            visit_id=self.visit_id, station=station, applicant=self.applicant,
            documents=tuple(documents),
        )
        assert isinstance(command, SubmitCase)
        return command

    def history(self, *commands: Command) -> list[CaseEvent]:
        return decide_all(None, commands, self.ref)

    def history_after(self, events: Sequence[CaseEvent], *commands: Command) -> (
        list[CaseEvent]
    ):
        """The events ``commands`` add to an existing history."""
        return decide_all(fold(events), commands, self.ref)

    # canned histories, each at most 10 hours long -------------------------------------
    def submitted(self, **kwargs: Any) -> list[CaseEvent]:
        return self.history(self.submit(**kwargs))

    def accepted(self, **kwargs: Any) -> list[CaseEvent]:
        return self.history(self.submit(**kwargs), self.cmd(AcceptCase, CAST.clerk, 1))

    def handed_to_township(self, **kwargs: Any) -> list[CaseEvent]:
        return self.history(
            self.submit(**kwargs), self.cmd(AcceptCase, CAST.clerk, 1),
            self.cmd(HandOffCase, CAST.clerk, 2),
        )

    def at_township(self, **kwargs: Any) -> list[CaseEvent]:
        return self.history(
            self.submit(**kwargs), self.cmd(AcceptCase, CAST.clerk, 1),
            self.cmd(HandOffCase, CAST.clerk, 2), self.cmd(ReceiveHandoff, CAST.town, 3),
        )

    def at_county(self, **kwargs: Any) -> list[CaseEvent]:
        return self.history(
            self.submit(**kwargs), self.cmd(AcceptCase, CAST.clerk, 1),
            self.cmd(HandOffCase, CAST.clerk, 2), self.cmd(ReceiveHandoff, CAST.town, 3),
            self.cmd(HandOffCase, CAST.town, 4), self.cmd(ReceiveHandoff, CAST.county, 5),
        )

    def decided(self) -> list[CaseEvent]:
        return [*self.at_county(), *decide(fold(self.at_county()), self.cmd(
            DecideCase, CAST.county, 6, outcome=Outcome.APPROVED, basis="income below the line"
        ), self.ref)]

    def closed(self) -> list[CaseEvent]:
        decided = self.decided()
        return [*decided, *decide(fold(decided), self.cmd(CloseCase, CAST.county, 7), self.ref)]


class Then:
    def __init__(self, state: Any, command: Command, ref: Reference) -> None:
        self.state, self.command, self.ref = state, command, ref

    def then(self, *expected: Any) -> Any:
        """``then(SomeRejection)`` expects that rejection (returned); otherwise each expected item
        is an event (compared equal) or an event class (type checked), in order. The events are
        returned, after checking they evolve the state."""
        if len(expected) == 1 and isinstance(expected[0], type) and issubclass(
            expected[0], Rejection
        ):
            with pytest.raises(expected[0]) as caught:
                decide(self.state, self.command, self.ref)
            assert type(caught.value) is expected[0]
            return caught.value
        events = decide(self.state, self.command, self.ref)
        assert [_name(e) for e in events] == [_name(x) for x in expected]
        for event, wanted in zip(events, expected, strict=True):
            if not isinstance(wanted, type):
                assert event == wanted
        state = self.state
        for event in events:
            state = evolve(state, event)
        return events

    def then_nothing(self) -> None:
        assert decide(self.state, self.command, self.ref) == []


class Given:
    def __init__(self, events: Sequence[CaseEvent], ref: Reference) -> None:
        self.state = fold(events)
        self.ref = ref

    def when(self, command: Command) -> Then:
        return Then(self.state, command, self.ref)


def _name(item: Any) -> str:
    return item.__name__ if isinstance(item, type) else type(item).__name__
