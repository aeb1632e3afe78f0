"""Portable evidence: a case's events, or a unit's events in a time range, written as JSONL with
their hashes, the hash-chain segments that tie each one to a signed checkpoint, and those
checkpoints. ``verify_export`` (``shared.audit.verify_export``) checks such a file offline.

File layout, one canonical JSON object a line:

- ``{"kind": "header", "format": "yizhan-audit-export-v2", "selection": …, "events": n,
  "segments": [{"from": p, "to": q, "checkpoint": q | null}, …], "head_position": …}``;
  the selection is ``{"case_id", "to_position"}`` or ``{"unit", "from", "to", "to_position"}``,
  ``to_position`` being the log's head when the events were chosen (or the position asked
  for): the verifier holds every event to it, and every witness to not being one of it.
- ``{"kind": "checkpoint", position, hash, signed_at, key_id, signature}``, plus ``format``,
  ``prev_position`` and ``prev_hash`` for a checkpoint of format 2 (which signs the checkpoint
  before it; v1 files hold only format 1 lines): the nearest signed checkpoint before the
  first exported event, and the one closing each segment;
- the chain, in position order: ``{"kind": "event", …envelope…}`` for each exported event and
  ``{"kind": "witness", position, prev_hash, hash, canonical}`` for every other event between
  an exported event and the checkpoint after it.

Why witnesses: ``hash = SHA-256(prev_hash ‖ canonical bytes)`` can only be recomputed from
the full bytes, so tying an event at position p to the checkpoint signed at c needs the bytes
of every event in (p, c]. A case's events are scattered over the global chain, so each
segment runs from an exported event to the next signed checkpoint; witness events are other
streams' events in the form the log hashes them (their applicant fields are ciphertexts, as in
the log). Events recorded after the last checkpoint form an unanchored segment: held by the
chain alone, which the verifier reports.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import asyncpg

from shared.audit.history import CaseNotFound
from shared.contracts.canonical import canonical_json
from shared.contracts.cases import case_stream
from shared.contracts.envelope import RecordedEvent, canonical_time, iso
from shared.eventstore.checkpoints import Checkpoint, read_checkpoints
from shared.eventstore.postgres import PostgresEventStore
from shared.logging import get_logger

log = get_logger(__name__)
FORMAT = "yizhan-audit-export-v2"
FORMATS = ("yizhan-audit-export-v1", FORMAT)  # what verify_export reads
UNIT_FIELDS = ("unit", "from_unit", "to_unit", "station")
_UNIT_RANGE = """
SELECT position FROM events
WHERE stream_id LIKE 'case-%' AND recorded_at >= $2 AND recorded_at < $3 AND position <= $4
  AND (metadata->>'unit' = $1 OR data->'actor'->>'unit' = $1 OR data->>'unit' = $1
       OR data->>'from_unit' = $1 OR data->>'to_unit' = $1 OR data->>'station' = $1)
ORDER BY position
"""


def _as_text(value: Any) -> str | None:
    """A JSON value as PostgreSQL's ``->>`` gives it (NULL for null; strings unquoted)."""
    if value is None:
        return None
    return value if isinstance(value, str) else canonical_json(value)


def unit_selects(unit: str, start: datetime, end: datetime, stream_id: str, recorded_at: int,
                 metadata: Any, data: Any) -> bool:
    """Whether ``export_unit(unit, start, end)`` selects a case event (``recorded_at`` in whole
    microseconds since the epoch, as ``canonical_time`` writes it): ``_UNIT_RANGE`` in Python
    (but for its position bound), for the offline verifier. Keep the two in step."""
    if not stream_id.startswith("case-"):
        return False
    if not int(canonical_time(start)) <= recorded_at < int(canonical_time(end)):
        return False
    meta = metadata if isinstance(metadata, dict) else {}
    body = data if isinstance(data, dict) else {}
    actor = body.get("actor")
    found = [meta.get("unit"), actor.get("unit") if isinstance(actor, dict) else None,
             *(body.get(name) for name in UNIT_FIELDS)]
    return any(_as_text(value) == unit for value in found)


@dataclass(frozen=True)
class Segment:
    """Chain positions ``start``..``end`` in the file; ``checkpoint`` = ``end`` when a signed
    checkpoint closes it, ``None`` when it ends unanchored at the last exported event."""

    start: int
    end: int
    checkpoint: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.start, "to": self.end, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class ExportSummary:
    """What was written."""

    path: Path
    events: int
    witnesses: int
    segments: tuple[Segment, ...]
    checkpoints: int

    @property
    def unanchored(self) -> bool:
        return any(s.checkpoint is None for s in self.segments)


def plan_segments(positions: Sequence[int], checkpoints: Sequence[int]) -> list[Segment]:
    """The chain segments tying each position to the first checkpoint at or after it (pure).
    ``positions`` and ``checkpoints`` are sorted."""
    segments: list[Segment] = []
    for p in positions:
        if segments and segments[-1].start <= p <= segments[-1].end:
            continue
        i = bisect.bisect_left(checkpoints, p)
        if i < len(checkpoints):
            segments.append(Segment(p, checkpoints[i], checkpoints[i]))
        else:
            segments.append(Segment(p, positions[-1], None))
    return segments


def _checkpoint_line(cp: Checkpoint) -> dict[str, Any]:
    line = {"kind": "checkpoint", "position": cp.position, "hash": cp.hash,
            "signed_at": iso(cp.signed_at), "key_id": cp.key_id, "signature": cp.signature}
    if cp.format != 1:
        line |= {"format": cp.format, "prev_position": cp.prev_position,
                 "prev_hash": cp.prev_hash}
    return line


def _chain_line(event: RecordedEvent, exported: bool) -> str:
    if exported:
        return canonical_json({"kind": "event", **event.to_wire()})
    return canonical_json({"kind": "witness", "position": event.position,
                           "prev_hash": event.prev_hash, "hash": event.hash,
                           "canonical": event.canonical_bytes().decode()})


async def _write_chain(store: PostgresEventStore, out: TextIO, segments: Sequence[Segment],
                       selected: set[int]) -> int:
    witnesses = 0
    for seg in segments:
        async for batch in store.read_all(seg.start - 1, batch_size=5000, to_position=seg.end):
            for event in batch:
                exported = event.position in selected
                witnesses += not exported
                out.write(_chain_line(event, exported) + "\n")
    return witnesses


async def _head(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(max(position), 0) FROM events"))


async def write_export(pool: asyncpg.Pool, positions: Sequence[int], selection: dict[str, Any],
                       path: Path, *, head: int | None = None) -> ExportSummary:
    """Write the events at ``positions`` (sorted) with their chain segments and checkpoints.
    ``head``: the log's head when the positions were chosen (default: now)."""
    store = PostgresEventStore(pool)
    checkpoints = await read_checkpoints(pool)
    cp_positions = [c.position for c in checkpoints]
    segments = plan_segments(positions, cp_positions)
    wanted = {s.checkpoint for s in segments if s.checkpoint is not None}
    before = bisect.bisect_left(cp_positions, positions[0]) - 1 if positions else -1
    if before >= 0:
        wanted.add(cp_positions[before])
    head = await _head(pool) if head is None else head
    header = {"kind": "header", "format": FORMAT, "selection": selection,
              "exported_at": iso(datetime.now(UTC)), "head_position": head,
              "events": len(positions), "segments": [s.as_dict() for s in segments]}
    with path.open("w", encoding="utf-8") as out:
        out.write(canonical_json(header) + "\n")
        for cp in checkpoints:
            if cp.position in wanted:
                out.write(canonical_json(_checkpoint_line(cp)) + "\n")
        witnesses = await _write_chain(store, out, segments, set(positions))
    summary = ExportSummary(path, len(positions), witnesses, tuple(segments), len(wanted))
    log.info("audit.exported", path=str(path), events=summary.events, witnesses=witnesses,
             segments=len(segments), unanchored=summary.unanchored)
    return summary


async def export_case(pool: asyncpg.Pool, case_id: UUID, path: Path, *,
                      to_position: int | None = None) -> ExportSummary:
    """Export every event of one case up to ``to_position`` (default, and at most: the log's
    head now). The header's selection names that position: the case's events after it, which
    a segment may run through on its way to a checkpoint, are witnesses; any before it are
    exported (the verifier refuses a witness of the case at or below it)."""
    head = await _head(pool)
    upto = head if to_position is None else min(to_position, head)
    events = await PostgresEventStore(pool).read_stream(case_stream(case_id), to_position=upto)
    if not events:
        raise CaseNotFound(f"no events of case {case_id}")
    selection = {"case_id": str(case_id), "to_position": upto}
    return await write_export(pool, [e.position for e in events], selection, path, head=head)


async def export_unit(pool: asyncpg.Pool, unit: str, start: datetime, end: datetime,
                      path: Path) -> ExportSummary:
    """Export the case events recorded in ``[start, end)`` (and by now: up to the log's head,
    named in the selection) in which ``unit`` acted, held the case, or was a move's from- or
    to-unit."""
    head = await _head(pool)
    rows = await pool.fetch(_UNIT_RANGE, unit, start, end, head)
    selection = {"unit": unit, "from": iso(start), "to": iso(end), "to_position": head}
    return await write_export(pool, [r[0] for r in rows], selection, path, head=head)
