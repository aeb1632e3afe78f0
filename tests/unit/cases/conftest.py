"""Fixtures for the pure case domain (the kit itself lives in ``case_story``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from services.cases.domain import sla_clock_actor
from shared.contracts.cases import Actor, CaseEvent
from shared.reference import Reference
from tests.unit.cases.case_story import CAST, Cast, Given, Story


@pytest.fixture
def story(ref: Reference) -> Story:
    return Story(ref)


@pytest.fixture
def cast() -> Cast:
    return CAST


@pytest.fixture
def given(ref: Reference) -> Callable[[Sequence[CaseEvent]], Given]:
    return lambda events: Given(events, ref)


@pytest.fixture
def clock_actor(ref: Reference) -> Actor:
    return sla_clock_actor(ref)
