"""What a projector reads: the few fields of a recorded event it needs, with its data upcast to
the newest schema version. Reading the events table yields these directly (no hash, no
metadata: the read models use the actor inside the data)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import orjson

from shared.contracts import cases as _cases  # noqa: F401  (registers the case events)
from shared.contracts.canonical import loads
from shared.contracts.cases import CASE_STREAM_PREFIX
from shared.contracts.envelope import RecordedEvent
from shared.contracts.registry import UnknownEventType, registry

CASE_PREFIX = CASE_STREAM_PREFIX


class Unprojectable(ValueError):
    """An event the projectors cannot apply: unknown type or version, not a case stream,
    or data that does not fit. The live path parks it; a rebuild stops on it."""

    def __init__(self, position: int, stream_id: str, type_: str, reason: str) -> None:
        super().__init__(f"event at position {position} ({type_} on {stream_id}): {reason}")
        self.position = position
        self.stream_id = stream_id
        self.type = type_
        self.reason = reason

    def __reduce__(self) -> tuple[type[Unprojectable], tuple[int, str, str, str]]:
        """Pickled as its four fields (a rebuild's fold process sends it to the parent)."""
        return Unprojectable, (self.position, self.stream_id, self.type, self.reason)


class ProjectedEvent(NamedTuple):
    position: int
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    recorded_at: datetime

    @property
    def case_id(self) -> UUID:
        return case_id_of(self.stream_id)


def read_data(text: str) -> Any:
    """The stored JSON text of an event's data, parsed: with orjson (several times faster
    than the json module, which is most of a rebuild's cost per event), and with the json
    module (``canonical.loads``) for whatever orjson refuses (NaN, a lone surrogate, a number
    too large for a double), so that nothing json reads is refused. One difference is left:
    orjson reads an integer beyond 64 bits as a float; no field a projector reads can hold
    one (they land in ``integer`` columns)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return loads(text)


def read_stored(value: bytes) -> Any:
    """The UTF-8 bytes of an event's stored data, parsed (a rebuild reads them so: no text
    object is made first). What orjson refuses comes back as text, for ``prepare`` to read
    with ``read_data`` — so the result is the same as reading the text."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode()


_new_event = tuple.__new__  # ProjectedEvent(...) without its Python-level __new__


@functools.lru_cache(maxsize=4096)
def case_id_of(stream_id: str) -> UUID:
    """The case of a ``case-<uuid>`` stream (cached: a fold asks again for each event's
    ``case_id``, and ``UUID()`` is slow)."""
    return UUID(stream_id[len(CASE_PREFIX):])


def prepare(
    position: int, stream_id: str, version: int, type_: str, schema_version: int,
    data: dict[str, Any] | str, recorded_at: datetime, *, case_id: UUID | None = None,
) -> ProjectedEvent:
    """The event as projectors read it: a case stream's event, data upcast to the newest
    version. Raises ``Unprojectable`` for anything else."""
    if not stream_id.startswith(CASE_PREFIX):
        raise Unprojectable(position, stream_id, type_, "not a case stream")
    try:
        if case_id is None:
            case_id_of(stream_id)
        raw = read_data(data) if isinstance(data, str) else data
        upcast = registry.upcast(type_, schema_version, raw)
    except UnknownEventType as exc:
        raise Unprojectable(position, stream_id, type_, str(exc)) from exc
    except ValueError as exc:
        raise Unprojectable(position, stream_id, type_, f"unreadable: {exc}") from exc
    return _new_event(ProjectedEvent, (position, stream_id, version, type_, schema_version,
                                       upcast, recorded_at))


def from_recorded(event: RecordedEvent) -> ProjectedEvent:
    return prepare(event.position, event.stream_id, event.version, event.type,
                   event.schema_version, event.data, event.recorded_at)
