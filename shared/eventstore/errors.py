"""Typed errors of the event store. Each append error writes nothing."""

from __future__ import annotations

import uuid


class AppendError(Exception):
    """An append was refused; nothing of it was written."""


class WrongExpectedVersion(AppendError):
    """The stream is not at the version the caller expected (someone else wrote first)."""

    def __init__(self, stream_id: str, expected: int | None, actual: int) -> None:
        super().__init__(f"stream {stream_id} is at version {actual}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class EventIdReused(AppendError):
    """Some event ids of the append are already in the log, but not as this same append."""

    def __init__(self, event_id: uuid.UUID, detail: str) -> None:
        super().__init__(f"event id {event_id} is already in the log {detail}")
        self.event_id = event_id
