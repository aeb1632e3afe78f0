"""The event envelope: what is appended (``NewEvent``) and what is read back (``RecordedEvent``).

These are plain frozen dataclasses, not pydantic models: the store reads and verifies hundreds of
thousands of them a second. Typed event payloads live in the registry (``registry.py``); the
envelope carries ``data`` and ``metadata`` as canonical JSON text, parsed on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import orjson

from shared.contracts.canonical import canonical_json, loads

GENESIS_HASH = "0" * 64
CANONICAL_FORMAT = "yizhan-event-v2"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def utc(dt: datetime) -> datetime:
    """Return ``dt`` in UTC (microseconds, as PostgreSQL keeps them); naive is refused."""
    if dt.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return dt.astimezone(UTC)


def iso(dt: datetime) -> str:
    """A timestamp as envelopes on the wire and in exports write it: UTC, four-digit year,
    always six fractional digits, ``Z``. (The hash covers ``canonical_time`` instead.)"""
    if dt.tzinfo is not UTC:
        dt = utc(dt)
    return dt.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


def canonical_time(dt: datetime) -> str:
    """A timestamp as the hash covers it: whole microseconds since 1970-01-01T00:00:00Z, in
    decimal (exact, the same in any language, and what PostgreSQL's
    ``(extract(epoch FROM t) * 1000000)::bigint`` writes; verify builds it so)."""
    if dt.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return str((dt - _EPOCH) // _MICROSECOND)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``event_id`` makes a retried append a no-op."""

    type: str
    data: dict[str, Any]
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    schema_version: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.type or "\n" in self.type:
            raise ValueError("event type must be a non-empty single line")
        if self.schema_version < 1:
            raise ValueError("schema_version starts at 1")


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """A ``NewEvent`` with its data and metadata already in canonical text (done once, outside
    the store's critical section)."""

    event_id: uuid.UUID
    type: str
    schema_version: int
    data_json: str
    metadata_json: str
    occurred_at: datetime | None

    @classmethod
    def of(cls, event: NewEvent) -> EncodedEvent:
        return cls(
            event.event_id, event.type, event.schema_version, canonical_json(event.data),
            canonical_json(event.metadata),
            None if event.occurred_at is None else utc(event.occurred_at),
        )


@dataclass(frozen=True)
class RecordedEvent:
    """An event as the log holds it. ``position`` is the global commit order, gap-free from 1."""

    position: int
    stream_id: str
    version: int
    event_id: uuid.UUID
    type: str
    schema_version: int
    data_json: str
    metadata_json: str
    occurred_at: datetime
    recorded_at: datetime
    prev_hash: str
    hash: str

    @cached_property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = loads(self.data_json)
        return value

    @cached_property
    def metadata(self) -> dict[str, Any]:
        value: dict[str, Any] = loads(self.metadata_json)
        return value

    def canonical_bytes(self) -> bytes:
        return canonical_bytes(
            self.position, self.stream_id, self.version, str(self.event_id), self.type,
            self.schema_version, canonical_time(self.occurred_at),
            canonical_time(self.recorded_at), self.metadata_json, self.data_json,
        )

    def to_wire(self) -> dict[str, Any]:
        """The envelope as published on Kafka and exported for auditors."""
        return {
            "position": self.position, "stream_id": self.stream_id, "version": self.version,
            "event_id": str(self.event_id), "type": self.type,
            "schema_version": self.schema_version, "occurred_at": iso(self.occurred_at),
            "recorded_at": iso(self.recorded_at), "metadata": self.metadata, "data": self.data,
            "prev_hash": self.prev_hash, "hash": self.hash,
        }

    def to_wire_json(self) -> str:
        """``to_wire`` as text, spliced from the stored canonical text without re-parsing it:
        the envelope fields first, then ``"metadata":…,"data":…}`` exactly as stored (which
        ``from_wire_json`` relies on for its quick path)."""
        head = orjson.dumps({
            "position": self.position, "stream_id": self.stream_id, "version": self.version,
            "event_id": str(self.event_id), "type": self.type,
            "schema_version": self.schema_version, "occurred_at": iso(self.occurred_at),
            "recorded_at": iso(self.recorded_at), "prev_hash": self.prev_hash, "hash": self.hash,
        }).decode()
        return f'{head[:-1]}{_META}{self.metadata_json}{_DATA}{self.data_json}}}'

    @classmethod
    def from_wire_json(cls, text: str) -> RecordedEvent:
        """Parse ``to_wire_json`` text and check the hash (``HashMismatch``). The quick path
        takes metadata and data as the text between their keys, unparsed, and lets the hash
        decide: if the split was wrong (a producer that wrote the fields in another order, a
        nested ``"data"`` key) the hash cannot match, and the text is parsed in full and
        canonicalised instead."""
        meta_at, data_at = text.find(_META), text.rfind(_DATA)
        if 0 < meta_at < data_at and text.endswith("}"):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                wire = orjson.loads(text[:meta_at] + "}")
                metadata_json = text[meta_at + len(_META):data_at]
                data_json = text[data_at + len(_DATA):-1]
                position, version = int(wire["position"]), int(wire["version"])
                schema_version = int(wire["schema_version"])
                stream_id, type_ = wire["stream_id"], wire["type"]
                occurred = datetime.fromisoformat(wire["occurred_at"])
                recorded = datetime.fromisoformat(wire["recorded_at"])
                body = canonical_bytes(position, stream_id, version, wire["event_id"], type_,
                                       schema_version, canonical_time(occurred),
                                       canonical_time(recorded), metadata_json, data_json)
                if chain_hash(wire["prev_hash"], body) == wire["hash"]:
                    return cls(
                        position, stream_id, version, uuid.UUID(wire["event_id"]), type_,
                        schema_version, data_json, metadata_json,
                        occurred, recorded, wire["prev_hash"], wire["hash"])
        event = cls.from_wire(loads(text))  # the json module: integers of any size
        if chain_hash(event.prev_hash, event.canonical_bytes()) != event.hash:
            raise HashMismatch(f"hash mismatch at position {event.position}")
        return event

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> RecordedEvent:
        return cls(
            position=int(wire["position"]), stream_id=wire["stream_id"],
            version=int(wire["version"]), event_id=uuid.UUID(wire["event_id"]),
            type=wire["type"], schema_version=int(wire["schema_version"]),
            data_json=canonical_json(wire["data"]), metadata_json=canonical_json(wire["metadata"]),
            occurred_at=datetime.fromisoformat(wire["occurred_at"]),
            recorded_at=datetime.fromisoformat(wire["recorded_at"]),
            prev_hash=wire["prev_hash"], hash=wire["hash"],
        )


_META, _DATA = ',"metadata":', ',"data":'


class HashMismatch(ValueError):
    """An envelope whose content does not match its hash."""


def canonical_bytes(
    position: int, stream_id: str, version: int, event_id: str, type_: str,
    schema_version: int, occurred_at: str, recorded_at: str, metadata_json: str, data_json: str,
) -> bytes:
    """The bytes an event's hash covers: a format tag, the envelope fields one per line (the
    two timestamps as ``canonical_time`` writes them), then metadata and data as their stored
    canonical JSON (which holds no raw newline)."""
    return (
        f"{CANONICAL_FORMAT}\n{position}\n{stream_id}\n{version}\n{event_id}\n{type_}\n"
        f"{schema_version}\n{occurred_at}\n{recorded_at}\n{metadata_json}\n{data_json}"
    ).encode()


def chain_hash(prev_hash: str, event_bytes: bytes) -> str:
    """hash = SHA-256(previous hash ‖ canonical bytes), hex-encoded."""
    return hashlib.sha256(prev_hash.encode("ascii") + event_bytes).hexdigest()
