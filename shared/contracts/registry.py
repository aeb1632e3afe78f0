"""Typed events by (type, schema version), with pure upcasters applied on read.

Declare an event::

    @event("CaseSubmitted", version=2)
    class CaseSubmitted(DomainEvent):
        tracking_no: str
        ...

    @upcaster("CaseSubmitted", from_version=1)
    def _v1_to_v2(data: dict) -> dict:
        return {**data, "channel": "counter"}

``registry.decode(recorded)`` upcasts the stored data to the newest version and validates it.
An unknown (type, version) raises ``UnknownEventType``: a rebuild fails loudly on it, a live
consumer parks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.contracts.envelope import NewEvent, RecordedEvent

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class DomainEvent(BaseModel):
    """Base of every event payload: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]
    schema_version: ClassVar[int]


E = TypeVar("E", bound=type[DomainEvent])


class UnknownEventType(LookupError):
    """No model is registered for this event type and schema version."""

    def __init__(self, type_: str, version: int) -> None:
        super().__init__(f"unknown event type {type_!r} version {version}")
        self.type = type_
        self.version = version


class EventDataInvalid(ValueError):
    """The stored data does not fit the registered model (after upcasting)."""


@dataclass
class EventRegistry:
    models: dict[str, type[DomainEvent]] = field(default_factory=dict)
    upcasters: dict[tuple[str, int], Upcaster] = field(default_factory=dict)

    def register(self, type_: str, version: int) -> Callable[[E], E]:
        def decorate(cls: E) -> E:
            if type_ in self.models and self.models[type_] is not cls:
                raise ValueError(f"event type {type_!r} registered twice")
            cls.event_type = type_
            cls.schema_version = version
            self.models[type_] = cls
            return cls

        return decorate

    def register_upcaster(self, type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        def decorate(fn: Upcaster) -> Upcaster:
            self.upcasters[(type_, from_version)] = fn
            return fn

        return decorate

    def upcast(self, type_: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Bring ``data`` from ``version`` to the registered model's version."""
        model = self.models.get(type_)
        if model is None or version > model.schema_version:
            raise UnknownEventType(type_, version)
        while version < model.schema_version:
            step = self.upcasters.get((type_, version))
            if step is None:
                raise UnknownEventType(type_, version)
            data = step(data)
            version += 1
        return data

    def decode(self, event: RecordedEvent) -> DomainEvent:
        data = self.upcast(event.type, event.schema_version, event.data)
        try:
            return self.models[event.type].model_validate(data)
        except ValidationError as exc:
            raise EventDataInvalid(
                f"event at position {event.position} ({event.type}) does not fit its model: {exc}"
            ) from exc

    def knows(self, type_: str, version: int) -> bool:
        model = self.models.get(type_)
        if model is None or version > model.schema_version:
            return False
        return all((type_, v) in self.upcasters for v in range(version, model.schema_version))


registry = EventRegistry()
event = registry.register
upcaster = registry.register_upcaster


def to_new_event(
    payload: DomainEvent, *, event_id: Any = None, metadata: dict[str, Any] | None = None,
    occurred_at: Any = None,
) -> NewEvent:
    """Wrap a typed payload for appending (JSON-mode dump: decimals and dates become strings)."""
    kwargs: dict[str, Any] = {}
    if event_id is not None:
        kwargs["event_id"] = event_id
    return NewEvent(
        type=payload.event_type, schema_version=payload.schema_version,
        data=payload.model_dump(mode="json"), metadata=metadata or {}, occurred_at=occurred_at,
        **kwargs,
    )
