"""Portable evidence: a case's events, or a unit's events in a time range, written as JSONL with
their hashes, the hash-chain segments that tie each one to a signed checkpoint, and those
checkpoints. ``verify_export`` (``shared.audit.verify_export``) checks such a file offline.

File layout, one canonical JSON object a line:

- ``{"kind": "header", "format": "yizhan-audit-export-v3", "selection": …, "events": n,
  "segments": [{"from": p, "to": q, "checkpoint": q | null}, …], "head_position": …}``;
  the selection is ``{"case_id", "to_position"}`` or ``{"unit", "from", "to", "to_position"}``,
  ``to_position`` being the log's head when the events were chosen (or the position asked
  for; for a unit, the end of its run): the verifier holds every event to it, and every
  witness to not being one of it. A unit export's header also gives ``start_checkpoint``
  (below);
- ``{"kind": "checkpoint", position, hash, signed_at, key_id, signature}``, plus ``format``,
  ``prev_position`` and ``prev_hash`` for a checkpoint of format 2 (which signs the checkpoint
  before it; v1 files hold only format 1 lines): the nearest signed checkpoint before the
  first exported event, and the one closing each segment (for a unit: every checkpoint its
  run passes);
- the chain, in position order: ``{"kind": "event", …envelope…}`` for each exported event and
  ``{"kind": "witness", position, prev_hash, hash, canonical}`` for every other event of a
  segment.

Why witnesses: ``hash = SHA-256(prev_hash ‖ canonical bytes)`` can only be recomputed from
the full bytes, so tying an event at position p to the checkpoint signed at c needs the bytes
of every event in (p, c]. Witness events are other streams' events in the form the log hashes
them (their applicant fields are ciphertexts, as in the log).

A case export: a case's events are scattered over the global chain, so each segment runs from
an exported event to the next signed checkpoint; its versions 1..n show that none is missing.

A unit export (v3) is one contiguous run of the global chain, every event from the one after a
start checkpoint C0 to an end checkpoint C1, so that nothing can be left out of it unseen.
Checkpoints bound the window by their signed times: an append sets ``recorded_at`` under the
append lock, at most the database clock then, and commits before releasing it (positions are
commit order, ``shared.eventstore.postgres``); a checkpoint reads the head and its clock after
that commit. So every event at or before C was recorded no later than ``signed_at(C)``:
``plan_window`` takes C0 = the last checkpoint signed before ``from`` (or genesis, position 0),
so no event at or before C0 lies in the window; and C1 = the first checkpoint signed at or
after ``to + COMMIT_MARGIN``, so every event recorded before ``to`` is at or before C1 unless
its append held the append lock for longer than the margin (less the 2 s by which
``recorded_at`` may precede the lock's clock, migration 0002). The cost: the file carries every
event of (C0, C1] of every unit, as witnesses: a busy log's hour is that hour's whole log.
While no checkpoint closes the window yet (``to + COMMIT_MARGIN`` is still ahead, or nothing
was signed since), the run ends at the log's head, unanchored after the last checkpoint, and
the verifier says the unit's events are not proven complete (sign a checkpoint later and
export again). Events recorded after the last checkpoint in a case export form an unanchored
segment too: held by the chain alone, which the verifier reports.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
FORMAT = "yizhan-audit-export-v3"
FORMATS = ("yizhan-audit-export-v1", "yizhan-audit-export-v2", FORMAT)  # what verify_export reads
CONTIGUOUS_FORMATS = (FORMAT,)  # unit exports of these formats are one run, proven complete
# How long after a unit export's window ends its closing checkpoint must have been signed: an
# append started (recorded_at) before the end but committed later than this would be missed.
# Appends hold the append lock from their clock check to their commit, a few milliseconds
# normally; every other append waits meanwhile, so a minute is far beyond any working append.
COMMIT_MARGIN = timedelta(seconds=60)
GENESIS = 0  # the start "checkpoint" before the log's first event (prev hash GENESIS_HASH)
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
    """What was written. ``window_closed`` (unit exports only, else None): a checkpoint signed
    at or after the window's end plus ``COMMIT_MARGIN`` ends the run, so the file can prove
    the unit's events complete; False while the run ends unanchored at the head."""

    path: Path
    events: int
    witnesses: int
    segments: tuple[Segment, ...]
    checkpoints: int
    window_closed: bool | None = None
    anchored_to: int | None = None
    """Unit exports: the last position of the run a signed checkpoint in the file covers."""

    @property
    def unanchored(self) -> bool:
        if self.anchored_to is not None:
            return any(s.end > self.anchored_to for s in self.segments)
        return any(s.checkpoint is None for s in self.segments)


@dataclass(frozen=True)
class Window:
    """A unit export's run: every position after ``start`` (a checkpoint's, or ``GENESIS``)
    through ``end`` (a checkpoint's; None: none closes the window yet)."""

    start: int
    end: int | None


def plan_window(checkpoints: Sequence[Checkpoint], start: datetime, end: datetime,
                margin: timedelta = COMMIT_MARGIN) -> Window:
    """The run proving a unit's events recorded in ``[start, end)`` complete (pure; see the
    module docstring): after the last checkpoint signed before ``start`` (strictly: an event
    at a checkpoint's position may carry its very ``signed_at``), through the first signed at
    or after ``end + margin`` that follows it. ``checkpoints`` are sorted by position."""
    before = [cp.position for cp in checkpoints if cp.signed_at < start]
    first = max(before, default=GENESIS)
    closing = [cp.position for cp in checkpoints
               if cp.position > first and cp.signed_at >= end + margin]
    return Window(first, min(closing, default=None))


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


def _widened(window: Window, positions: Sequence[int], checkpoints: Sequence[Checkpoint],
             start: datetime, end: datetime, margin: timedelta = COMMIT_MARGIN) -> Window:
    """``window`` grown to hold every position of the selection the log has now (sorted):
    none lies outside it unless the database clock went back, or an append held its lock for
    longer than the margin; the verifier could not see that, so the exporter does. The new
    bounds are checkpoints the verifier accepts as such (``plan_window``'s rule): a start
    signed before ``start``, an end signed at or after ``end + margin``. With a clock set
    back, the checkpoint right before the event may have been signed after ``start``: a run
    from it would fail verification as tampered, so the run starts at an earlier one."""
    early = bool(positions) and positions[0] <= window.start
    late = bool(positions) and window.end is not None and positions[-1] > window.end
    if not (early or late):
        return window
    log.warning("audit.export_window_widened", start_checkpoint=window.start,
                end_checkpoint=window.end, first=positions[0], last=positions[-1])
    first = (max((c.position for c in checkpoints
                  if c.position < positions[0] and c.signed_at < start), default=GENESIS)
             if early else window.start)
    last = (min((c.position for c in checkpoints
                 if c.position >= positions[-1] and c.signed_at >= end + margin), default=None)
            if late else window.end)
    return Window(first, last)


_PROGRESS_EVERY = 100_000  # chain lines between two progress log lines


async def _write_chain(store: PostgresEventStore, out: TextIO, segments: Sequence[Segment],
                       selected: set[int]) -> int:
    witnesses = written = 0
    total = sum(seg.end - seg.start + 1 for seg in segments)
    for seg in segments:
        async for batch in store.read_all(seg.start - 1, batch_size=5000, to_position=seg.end):
            for event in batch:
                exported = event.position in selected
                witnesses += not exported
                out.write(_chain_line(event, exported) + "\n")
                written += 1
                if written % _PROGRESS_EVERY == 0:
                    log.info("audit.export_progress", lines=written, of=total)
    return witnesses


async def _head(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(max(position), 0) FROM events"))


async def _write_file(pool: asyncpg.Pool, path: Path, header: dict[str, Any],
                      checkpoints: Sequence[Checkpoint], segments: Sequence[Segment],
                      positions: Sequence[int]) -> int:
    """Write header, checkpoints and the segments' chain lines; the number of witnesses."""
    with path.open("w", encoding="utf-8") as out:
        out.write(canonical_json(header) + "\n")
        for cp in checkpoints:
            out.write(canonical_json(_checkpoint_line(cp)) + "\n")
        return await _write_chain(PostgresEventStore(pool), out, segments, set(positions))


async def write_export(pool: asyncpg.Pool, positions: Sequence[int], selection: dict[str, Any],
                       path: Path, *, head: int | None = None) -> ExportSummary:
    """Write the events at ``positions`` (sorted) with their chain segments and checkpoints,
    a segment from each to the next checkpoint (a case export's layout).
    ``head``: the log's head when the positions were chosen (default: now)."""
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
    witnesses = await _write_file(pool, path, header,
                                  [cp for cp in checkpoints if cp.position in wanted],
                                  segments, positions)
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
                      path: Path, *, margin: timedelta = COMMIT_MARGIN) -> ExportSummary:
    """Export the case events recorded in ``[start, end)`` in which ``unit`` acted, held the
    case, or was a move's from- or to-unit, as one run of the chain (``plan_window``): from
    the last checkpoint signed before ``start`` to the first signed at or after ``end +
    margin``, every other event a witness. If no checkpoint closes the window yet, the run
    ends at the log's head, unanchored after the last checkpoint (``window_closed`` False):
    the verifier will not call the unit's events complete. Should the log hold an event of
    the selection outside the planned run (``_widened``), the run grows to take it in."""
    checkpoints = await read_checkpoints(pool)
    head = await _head(pool)  # after the checkpoints: at or past every one of them
    window = plan_window(checkpoints, start, end, margin)
    positions = [r[0] for r in await pool.fetch(_UNIT_RANGE, unit, start, end, head)]
    window = _widened(window, positions, checkpoints, start, end, margin)
    last = head if window.end is None else window.end
    positions = [p for p in positions if p <= last]
    segments = [Segment(window.start + 1, last, window.end)] if last > window.start else []
    passed = [cp for cp in checkpoints if window.start <= cp.position <= last
              and cp.position != GENESIS]
    log.info("audit.export_window", unit=unit, start_checkpoint=window.start,
             end_checkpoint=window.end, chain_events=last - window.start, events=len(positions))
    selection = {"unit": unit, "from": iso(start), "to": iso(end), "to_position": last}
    header = {"kind": "header", "format": FORMAT, "selection": selection,
              "exported_at": iso(datetime.now(UTC)), "head_position": head,
              "events": len(positions), "start_checkpoint": window.start,
              "segments": [s.as_dict() for s in segments]}
    witnesses = await _write_file(pool, path, header, passed, segments, positions)
    summary = ExportSummary(path, len(positions), witnesses, tuple(segments), len(passed),
                            window_closed=window.end is not None,
                            anchored_to=max((cp.position for cp in passed), default=window.start))
    log.info("audit.exported", path=str(path), events=summary.events, witnesses=witnesses,
             segments=len(segments), unanchored=summary.unanchored,
             window_closed=summary.window_closed)
    return summary
