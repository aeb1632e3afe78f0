"""The event store's port: what every service may rely on, whichever store is behind it.

Semantics (checked by tests/contract, run against the in-memory fake and PostgreSQL alike):
- ``append`` is atomic: all of its events are written, or none. A wrong expected version raises
  ``WrongExpectedVersion``. Re-appending the same event ids in the same place returns the first
  result (``already_applied=True``) and writes nothing.
- Positions are global, gap-free from 1, and equal commit order: a reader that has seen position
  ``p`` will never later see a new event at a position ``<= p``.
- Stream versions start at 1. ``expected_version``: an int (0 = the stream must not exist yet)
  or ``ANY`` (no check).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from shared.contracts.envelope import EncodedEvent, NewEvent, RecordedEvent

ANY: Final = None
NO_STREAM: Final = 0


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """One stream's part of an append."""

    stream_id: str
    expected_version: int | None
    events: Sequence[NewEvent | EncodedEvent]

    def __post_init__(self) -> None:
        if not self.stream_id or "\n" in self.stream_id:
            raise ValueError("stream id must be a non-empty single line")
        if not self.events:
            raise ValueError("an append needs at least one event")
        if self.expected_version is not None and self.expected_version < 0:
            raise ValueError("expected_version is ANY (None), 0 or a version")


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed. ``version`` is the stream's new version, ``position`` the global
    position of its last event."""

    stream_id: str
    version: int
    position: int
    first_position: int
    already_applied: bool = False


@dataclass(frozen=True, slots=True)
class Head:
    """The last event of the log (position 0 and the genesis hash when empty)."""

    position: int
    hash: str


class EventStore(Protocol):
    async def append(
        self, stream_id: str, expected_version: int | None, events: Sequence[NewEvent]
    ) -> AppendResult:
        """Append events to one stream, atomically, if it is at ``expected_version``."""
        ...

    async def append_streams(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        """Append to several streams in one transaction: every stream's expected version must
        hold, or nothing is written."""
        ...

    async def read_stream(
        self, stream_id: str, *, from_version: int = 1, to_position: int | None = None
    ) -> list[RecordedEvent]:
        """A stream's events in version order, from a version (for callers that hold the
        state up to it) and up to a global position (for as-of reads)."""
        ...

    def read_all(
        self, after: int = 0, *, batch_size: int = 1000, to_position: int | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Every event after position ``after``, in position order, in batches; ends at the
        head as it was when each batch was read (or at ``to_position``)."""
        ...

    def subscribe(
        self, after: int = 0, *, batch_size: int = 1000
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Like ``read_all`` but never ends: waits for new events (notification + polling)."""
        ...

    async def head(self) -> Head:
        """The position and hash of the last event."""
        ...

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 if it has no events)."""
        ...
