"""The service catalogue: what residents come for, who reviews it, who decides, how long it may
take and which documents it needs. Configuration, not code (``services.toml``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import pairwise
from types import MappingProxyType
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
)

from shared.reference.errors import UnknownReference
from shared.reference.org import Level

DEFAULT_WARNING_SHARE = 0.8
MAX_BUDGET_DAYS = 365
"""The most working days one level's budget may give (about a year and a half): no service's
time limit comes near it, and the SLA clock finds its due time within the ten years of calendar
it searches. A budget of some 2,600 working days loaded and then failed every clock it started
(HTTP 500)."""
MAX_REOPEN_WINDOW_DAYS = 3650
"""The longest reopen window, in calendar days (ten years): a window of millions of days loaded
and then overflowed the date arithmetic of every reopen (HTTP 500)."""

BudgetDays = Annotated[int, Field(strict=True, ge=1, le=MAX_BUDGET_DAYS)]
"""A level's budget in working days: a TOML integer (``true`` was read as one day)."""


class Document(BaseModel):
    """A document a service may require."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name_zh: str = Field(min_length=1)
    name_en: str = Field(min_length=1)


class AutoEscalation(BaseModel):
    """Hand a case up automatically when its SLA is breached at one of ``on_breach_at``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    on_breach_at: tuple[Level, ...] = Field(min_length=1)


class ServiceType(BaseModel):
    """One service of the catalogue.

    ``chain`` lists the levels that handle the case bottom up, starting at the community station
    that receives it and ending at ``deciding_level``; ``budget_days`` gives each of them its
    time limit in working days. Numbers are bounded and of their TOML type (no booleans, no
    strings), so that data the services would fail on later fails here, at start-up.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name_zh: str = Field(min_length=1)
    name_en: str = Field(min_length=1)
    chain: tuple[Level, ...] = Field(min_length=1)
    deciding_level: Level
    budget_days: Mapping[Level, BudgetDays] = Field(
        description=f"working days per level of the chain, 1 to {MAX_BUDGET_DAYS}")
    required_documents: tuple[str, ...] = ()
    auto_escalation: AutoEscalation | None = None
    reopen_window_days: int = Field(
        strict=True, ge=0, le=MAX_REOPEN_WINDOW_DAYS,
        description=f"calendar days after closure, 0 to {MAX_REOPEN_WINDOW_DAYS}")
    warning_share: float = Field(default=DEFAULT_WARNING_SHARE, strict=True, gt=0, lt=1)

    @field_validator("chain")
    @classmethod
    def _chain_goes_up_from_the_station(cls, chain: tuple[Level, ...]) -> tuple[Level, ...]:
        if chain[0] != Level.COMMUNITY:
            raise ValueError("must start at the community level")
        if Level.CITY in chain:
            raise ValueError("the city level does not handle cases")
        for lower, upper in pairwise(chain):
            if not upper.is_above(lower):
                raise ValueError("must go strictly upwards (community, township, county)")
        return chain

    @field_validator("deciding_level")
    @classmethod
    def _decided_at_the_top_of_the_chain(cls, level: Level, info: ValidationInfo) -> Level:
        chain = info.data.get("chain")
        if chain and level != chain[-1]:
            raise ValueError(f"must be the last level of the chain ({chain[-1]})")
        return level

    @field_validator("budget_days")
    @classmethod
    def _budget_for_every_level(cls, budget: Mapping[Level, int], info: ValidationInfo) -> (
        Mapping[Level, int]
    ):
        chain = info.data.get("chain")
        if chain and set(budget) != set(chain):
            raise ValueError("must give a budget for exactly the levels of the chain")
        return MappingProxyType(dict(budget))

    @field_serializer("budget_days")
    def _budget_as_plain_dict(self, budget: Mapping[Level, int]) -> dict[str, int]:
        return {level.value: days for level, days in budget.items()}

    @field_validator("required_documents")
    @classmethod
    def _documents_listed_once(cls, documents: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(documents)) != len(documents):
            raise ValueError("lists a document twice")
        return documents

    def next_level(self, level: Level) -> Level | None:
        """The level above ``level`` in this service's chain, if any."""
        index = self.chain.index(level)
        return self.chain[index + 1] if index + 1 < len(self.chain) else None

    def previous_level(self, level: Level) -> Level | None:
        """The level below ``level`` in this service's chain, if any."""
        index = self.chain.index(level)
        return self.chain[index - 1] if index > 0 else None

    def budget_for(self, level: Level) -> int:
        return self.budget_days[level]

    def escalates_on_breach_at(self, level: Level) -> bool:
        return self.auto_escalation is not None and level in self.auto_escalation.on_breach_at


class Catalogue:
    """Immutable lookups of services and documents by code."""

    __slots__ = ("_documents", "_services")

    def __init__(self, services: Iterable[ServiceType], documents: Iterable[Document]) -> None:
        self._services: Mapping[str, ServiceType] = MappingProxyType(
            {s.code: s for s in services}
        )
        self._documents: Mapping[str, Document] = MappingProxyType(
            {d.code: d for d in documents}
        )

    def service(self, code: str) -> ServiceType:
        """The service with ``code``; raise ``UnknownReference`` if there is none."""
        found = self._services.get(code)
        if found is None:
            raise UnknownReference("service", code)
        return found

    def get(self, code: str) -> ServiceType | None:
        return self._services.get(code)

    def document(self, code: str) -> Document:
        found = self._documents.get(code)
        if found is None:
            raise UnknownReference("document", code)
        return found

    @property
    def documents(self) -> Mapping[str, Document]:
        return self._documents

    def __contains__(self, code: object) -> bool:
        return code in self._services

    def __iter__(self) -> Iterator[ServiceType]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)
