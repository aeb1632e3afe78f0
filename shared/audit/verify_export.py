"""Check an exported file offline: no database, only the file and the public key.

What a file that passes proves (given SHA-256 and Ed25519):
- every exported event's content (envelope, metadata, data) hashes to the hash it carries;
- within each segment, the chain links from the exported event through the witness events to
  a checkpoint whose signature holds under the public key: so each anchored event stands, at
  its position, in the log that was signed — nobody can have changed, removed, inserted or
  reordered anything before that checkpoint without it showing;
- every exported event belongs to the header's selection (a case's stream, up to its
  ``to_position``; or a unit's events in the time range), and no witness does: an event of the
  selection cannot be passed off as a witness, nor the file relabelled as another case's;
- for a case export, its versions run 1..n without a hole;
- every event is anchored by a signed checkpoint. A file with events in an unanchored segment
  (recorded after the last checkpoint, or whose checkpoints were stripped) fails, verdict
  ``UNANCHORED``, unless the caller passes ``allow_unanchored=True``: then it passes and
  ``unanchored`` lists those segments, which hold by the chain alone (anyone can recompute a
  chain, so they prove nothing on their own; sign a checkpoint and export again);
- for a unit export of format v3, that the file holds every event of the selection: its chain
  is one run without a gap from a start checkpoint C0 (or genesis) to an end checkpoint C1,
  both signed, C0 before the window's start and C1 at least ``COMMIT_MARGIN`` after its end
  (``shared.audit.export`` explains why that bounds the window), and no witness is of the
  selection. ``complete`` is then True. A position missing anywhere in the run (an exported
  event's lines dropped with its header count, a witness dropped) fails, ``TAMPERED`` at the
  first missing position. A run no checkpoint closes yet (the window ends after the last
  checkpoint, less the margin) fails as ``UNANCHORED``; with ``allow_unanchored`` it passes,
  ``complete`` False.
What it does not prove: that a case export, or a unit export of format v1 or v2 (``complete``
False, "completeness not proven"), holds every event of its selection: the header is not
signed, and a segment dropped whole, with its lines, leaves a shorter history that still holds
(for a case, from the end of the file). Nor does it prove the window is the one asked for: the
report names the selection the file claims, which the auditor compares with the request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.audit.export import (
    COMMIT_MARGIN,
    CONTIGUOUS_FORMATS,
    FORMATS,
    GENESIS,
    Segment,
    unit_selects,
)
from shared.contracts.cases import case_stream
from shared.contracts.envelope import (
    CANONICAL_FORMAT,
    GENESIS_HASH,
    RecordedEvent,
    chain_hash,
    iso,
)
from shared.eventstore.checkpoints import Checkpoint, signature_problem


class ExportUnreadable(ValueError):
    """The file is not an audit export at all."""


@dataclass
class ExportReport:
    """The verdict. ``first_bad_position`` names where the file stops holding together;
    ``verdict`` is ``OK``, ``TAMPERED`` (the file does not hold) or ``UNANCHORED`` (it holds,
    but some events are tied to no signed checkpoint, or a unit's window is closed by none,
    and that was not allowed). ``complete``: the file proves it holds every event of its
    selection (unit exports of format v3); ``completeness`` says what was proven or why not
    (None for a case export, whose versions 1..n are checked instead); ``selection``: what the
    header says was exported."""

    ok: bool = True
    verdict: str = "OK"
    events: int = 0
    witnesses: int = 0
    anchored_events: int = 0
    checkpoints: int = 0
    unanchored: list[tuple[int, int]] = field(default_factory=list)
    first_bad_position: int | None = None
    problem: str | None = None
    complete: bool = False
    completeness: str | None = None
    selection: str | None = None

    def fail(self, position: int | None, problem: str, verdict: str = "TAMPERED") -> ExportReport:
        self.ok, self.first_bad_position, self.problem = False, position, problem
        self.verdict = verdict
        return self


@dataclass(frozen=True)
class _Line:
    kind: str
    position: int
    prev_hash: str
    hash: str
    body: bytes
    version: int | None
    problem: str | None = None
    """What the line holds beyond what its hash covers (an added field, a key given twice)."""

    def fields(self) -> list[str] | None:
        """What the canonical bytes hold (``envelope.canonical_bytes``): format, position,
        stream id, version, event id, type, schema version, occurred at, recorded at (whole
        microseconds), metadata and data (canonical JSON, no raw newline); None if they do
        not hold that many lines."""
        parts = self.body.decode("utf-8", "replace").split("\n", 10)
        return parts if len(parts) == 11 else None


Belongs = Callable[[_Line], bool]


def _selection(selection: Any) -> tuple[str, Belongs]:
    """What the header's selection says was exported, and a test of whether a chain line is
    one of those events; ValueError (saying why) for a selection this verifier does not know
    (which it cannot check, so does not pass)."""
    if not isinstance(selection, dict):
        raise ValueError("the header has no selection")
    raw = selection.get("to_position")
    upto = None if raw is None else int(raw)
    bound = "" if upto is None else f" up to position {upto}"
    if "case_id" in selection:
        stream = case_stream(UUID(str(selection["case_id"])))

        def in_case(line: _Line) -> bool:
            fields = line.fields()
            return (fields is not None and fields[2] == stream
                    and (upto is None or line.position <= upto))

        return f"stream {stream}{bound}", in_case
    if {"unit", "from", "to"} <= selection.keys():
        unit = str(selection["unit"])
        start = datetime.fromisoformat(str(selection["from"]))
        end = datetime.fromisoformat(str(selection["to"]))

        def in_unit(line: _Line) -> bool:
            fields = line.fields()
            if fields is None or (upto is not None and line.position > upto):
                return False
            try:
                return unit_selects(unit, start, end, fields[2], int(fields[8]),
                                    json.loads(fields[9]), json.loads(fields[10]))
            except ValueError:
                return False

        return f"unit {unit}'s events recorded in [{iso(start)}, {iso(end)}){bound}", in_unit
    raise ValueError(f"the header's selection {sorted(selection)} is neither a case nor a unit")


def _parse(raw: str, number: int) -> tuple[dict[str, Any], list[str]]:
    """The line's object, and the keys any object in it gives twice (JSON readers differ on
    which value counts: Python's keeps the last, others the first)."""
    twice: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj:
                twice.append(key)
            obj[key] = value
        return obj

    try:
        value = json.loads(raw, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise ExportUnreadable(f"line {number} is not JSON: {exc}") from exc
    except RecursionError as exc:  # nested deeper than any line we write
        raise ExportUnreadable(f"line {number} is nested too deeply to read") from exc
    if not isinstance(value, dict) or "kind" not in value:
        raise ExportUnreadable(f"line {number} has no kind")
    return value, twice


# What each line may hold: every field of a chain line is covered by its hash (an event's
# envelope as ``to_wire`` writes it; a witness's canonical bytes), every field of a checkpoint
# line by its signature (``key_id`` must name the key). Anything more would be read as part
# of the evidence without having been checked.
_EVENT_FIELDS = frozenset({"kind", "position", "stream_id", "version", "event_id", "type",
                           "schema_version", "occurred_at", "recorded_at", "metadata", "data",
                           "prev_hash", "hash"})
_WITNESS_FIELDS = frozenset({"kind", "position", "prev_hash", "hash", "canonical"})
_CHECKPOINT_FIELDS = frozenset({"kind", "position", "hash", "signed_at", "key_id", "signature",
                                "format", "prev_position", "prev_hash"})


def _hash_of(obj: dict[str, Any], name: str) -> str:
    """``obj[name]`` as a hash is written: 64 hex digits (ValueError naming the field)."""
    value = obj[name]
    if not (isinstance(value, str) and len(value) == 64 and value.isascii()
            and all(c in "0123456789abcdefABCDEF" for c in value)):
        raise ValueError(f"{name} is not 64 hex digits: {value!r:.80}")
    return value


def _chain_line(obj: dict[str, Any], twice: Sequence[str] = ()) -> _Line:
    _hash_of(obj, "prev_hash")  # hashed with the content: must be ASCII, as the log has it
    _hash_of(obj, "hash")
    kind = "event" if obj["kind"] == "event" else "witness"
    extra = sorted(obj.keys() - (_EVENT_FIELDS if kind == "event" else _WITNESS_FIELDS))
    problem = (f"the {kind} line gives {twice[0]!r} twice (JSON readers differ on which "
               "value counts; the hash covers one)" if twice else
               f"the {kind} line holds fields its hash does not cover "
               f"({', '.join(map(repr, extra))}): they were added to the file" if extra
               else None)
    if kind == "event":
        event = RecordedEvent.from_wire(obj)
        return _Line("event", event.position, event.prev_hash, event.hash,
                     event.canonical_bytes(), event.version, problem)
    return _Line("witness", int(obj["position"]), obj["prev_hash"], obj["hash"],
                 str(obj["canonical"]).encode(), None, problem)


def _checkpoint(obj: dict[str, Any], twice: Sequence[str] = ()) -> Checkpoint:
    if twice:
        raise ValueError(f"it gives {twice[0]!r} twice")
    if extra := sorted(obj.keys() - _CHECKPOINT_FIELDS):
        raise ValueError(f"fields its signature does not cover: {', '.join(map(repr, extra))}")
    prev = obj.get("prev_position")
    return Checkpoint(int(obj["position"]), obj["hash"],
                      datetime.fromisoformat(obj["signed_at"]), obj["key_id"], obj["signature"],
                      int(obj.get("format", 1)), None if prev is None else int(prev),
                      obj.get("prev_hash"))


def _lines_of(lines: Iterable[str]) -> Iterator[str]:
    """The file's lines; a file that is not UTF-8 text (a binary, another encoding) is not an
    export, said as such, not a decoding traceback."""
    iterator = iter(lines)
    number = 0
    while True:
        number += 1
        try:
            yield next(iterator)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise ExportUnreadable(f"line {number} is not UTF-8 text: {exc.reason}") from exc


def read_export(path: Path) -> tuple[dict[str, Any], list[Checkpoint], list[_Line]]:
    """Header, checkpoints and chain lines of an export file."""
    header: dict[str, Any] | None = None
    header_line = 0
    checkpoints: list[Checkpoint] = []
    chain: list[_Line] = []
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(_lines_of(lines), 1):
            obj, twice = _parse(raw, number)
            if obj["kind"] == "header":
                header, header_line = obj, number
            elif obj["kind"] == "checkpoint":
                try:
                    checkpoints.append(_checkpoint(obj, twice))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ExportUnreadable(
                        f"line {number} is not a checkpoint: {_why(exc)}") from exc
            elif obj["kind"] in ("event", "witness"):
                try:
                    chain.append(_chain_line(obj, twice))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ExportUnreadable(
                        f"line {number} is not a chain entry: {_why(exc)}") from exc
            else:
                raise ExportUnreadable(f"line {number}: unknown kind {obj['kind']!r}")
    if header is None or header.get("format") not in FORMATS:
        raise ExportUnreadable(f"not a {' or '.join(FORMATS)} file")
    try:
        _segments(header)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportUnreadable(f"line {header_line}: the header's segments are not a list of "
                               f"{{from, to, checkpoint}} positions: {_why(exc)}") from exc
    count = header.get("events")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ExportUnreadable(f"line {header_line}: the header's events is not a count of "
                               f"events: {count!r:.80}")
    return header, checkpoints, chain


def _why(exc: Exception) -> str:
    """What a line lacks or holds wrong, in words (a KeyError names the missing field)."""
    return f"no field {exc.args[0]!r}" if isinstance(exc, KeyError) else f"{exc!r}"


def _segments(header: dict[str, Any]) -> list[Segment]:
    return [Segment(int(s["from"]), int(s["to"]), None if s["checkpoint"] is None
                    else int(s["checkpoint"])) for s in header["segments"]]


def _check_segment(seg: Segment, lines: Sequence[_Line], signed: dict[int, Checkpoint],
                   selected: tuple[str, Belongs], report: ExportReport) -> bool:
    """Walk one segment's lines: contiguous positions, links, hashes, checkpoints, and which
    lines the selection holds (all events, no witness)."""
    what, belongs = selected
    before = signed.get(seg.start - 1)
    prev = (before.hash if before is not None else GENESIS_HASH if seg.start == 1
            else lines[0].prev_hash if lines else "")
    for expected, line in enumerate(lines, seg.start):
        if line.position != expected:
            report.fail(expected, f"position {expected} is missing from the chain (found "
                        f"{line.position} in its place): lines were removed, added or reordered")
            return False
        if line.problem is not None:
            report.fail(expected, line.problem)
            return False
        if not line.body.startswith(f"{CANONICAL_FORMAT}\n{line.position}\n".encode()):
            report.fail(expected, "the line's content names another position")
            return False
        if line.prev_hash != prev:
            report.fail(expected, "prev_hash does not match the hash of the line before it "
                        "(or of the signed checkpoint before the segment)")
            return False
        if chain_hash(prev, line.body) != line.hash:
            report.fail(expected, f"the {line.kind}'s content no longer matches its hash")
            return False
        cp = signed.get(expected)
        if cp is not None and cp.hash != line.hash:
            report.fail(expected, f"the chain at position {expected} differs from the signed "
                        "checkpoint there")
            return False
        if line.kind == "event" and not belongs(line):
            fields = line.fields()
            report.fail(expected, f"the event at position {expected} (stream "
                        f"{fields[2] if fields else '?'}) is not one the header's selection "
                        f"({what}) holds: the file was relabelled, or events mixed in")
            return False
        if line.kind == "witness" and belongs(line):
            report.fail(expected, f"the witness at position {expected} is an event of the "
                        f"selection ({what}) left out of the exported events: events were "
                        "hidden as witnesses")
            return False
        prev = line.hash
    last = seg.start + len(lines) - 1
    if last != seg.end:
        report.fail(last + 1, f"the segment should run to position {seg.end}, the file stops "
                    f"at {last}")
        return False
    return True


def _versions_ok(events: Sequence[_Line], header: dict[str, Any], report: ExportReport) -> bool:
    if "case_id" not in header["selection"]:
        return True
    for expected, line in enumerate(events, 1):
        if line.version != expected:
            report.fail(line.position, f"the case's version {expected} is missing from the file")
            return False
    return True


def verify_export(path: Path, public_key: Ed25519PublicKey, *, allow_unanchored: bool = False,
                  margin: timedelta = COMMIT_MARGIN) -> ExportReport:
    """Check an export file offline (see the module docstring for what a pass proves).
    ``allow_unanchored``: pass a file whose events are not all anchored by a signed checkpoint
    (``unanchored`` lists those segments), or a unit export whose window no checkpoint closes
    yet (``complete`` False); by default such a file fails, verdict ``UNANCHORED``.
    ``margin``: how long after a unit window's end its closing checkpoint must be signed."""
    report = ExportReport()
    header, checkpoints, chain = read_export(path)
    for cp in checkpoints:
        if (problem := signature_problem(cp, public_key)) is not None:
            return report.fail(cp.position, f"checkpoint at position {cp.position} {problem}")
    try:
        selected = _selection(header.get("selection"))
    except (ValueError, TypeError) as exc:
        return report.fail(None, f"the header's selection cannot be checked: {exc}")
    report.selection = selected[0]
    report.checkpoints = len(checkpoints)
    signed = {cp.position: cp for cp in checkpoints}
    events = [line for line in chain if line.kind == "event"]
    report.events, report.witnesses = len(events), len(chain) - len(events)
    if "case_id" not in header["selection"]:
        if header["format"] in CONTIGUOUS_FORMATS:
            return _verify_run(header, signed, chain, selected, report,
                               allow_unanchored=allow_unanchored, margin=margin)
        report.completeness = (f"not proven: a {header['format']} file is made of segments, "
                               "one of which may have been dropped whole; export again")
    rest = list(chain)
    previous_end = 0
    for seg in _segments(header):
        size = seg.end - seg.start + 1
        if seg.start <= previous_end or size < 1:
            return report.fail(seg.start, f"the segment {seg.start}..{seg.end} overlaps the one "
                               "before it or runs backwards")
        if seg.checkpoint is not None and seg.checkpoint != seg.end:
            return report.fail(seg.end, f"the segment {seg.start}..{seg.end} claims the "
                               f"checkpoint at {seg.checkpoint}, not one at its end")
        previous_end = seg.end
        lines, rest = rest[:size], rest[size:]
        if seg.checkpoint is not None and seg.checkpoint not in signed:
            return report.fail(seg.end, f"the segment's checkpoint at {seg.end} is not in "
                               "the file")
        if not _check_segment(seg, lines, signed, selected, report):
            return report
        exported = sum(line.kind == "event" for line in lines)
        if seg.checkpoint is None:
            report.unanchored.append((seg.start, seg.end))
        else:
            report.anchored_events += exported
    if rest:
        return report.fail(rest[0].position, "lines beyond the declared segments")
    if report.events != header["events"]:
        return report.fail(None, f"the header counts {header['events']} events, the file "
                           f"holds {report.events}")
    if not _versions_ok(events, header, report):
        return report
    if report.unanchored and not allow_unanchored:
        start, end = report.unanchored[0]
        loose = report.events - report.anchored_events
        return report.fail(start, f"{loose} of {report.events} events (from position {start}"
                           f"{'' if start == end else f' to {end}'}"
                           f"{'' if len(report.unanchored) == 1 else ', and more'}) are not "
                           "anchored by any signed checkpoint: the chain alone proves nothing "
                           "(anyone can recompute it). Sign a checkpoint and export again, or "
                           "accept unanchored events explicitly", verdict="UNANCHORED")
    return report


def _verify_run(header: dict[str, Any], signed: dict[int, Checkpoint], chain: Sequence[_Line],
                selected: tuple[str, Belongs], report: ExportReport, *, allow_unanchored: bool,
                margin: timedelta) -> ExportReport:
    """A unit export of format v3: one run of the chain from the start checkpoint (or genesis)
    to the end checkpoint, each bounding the window by its signed time."""
    selection = header["selection"]
    start = datetime.fromisoformat(str(selection["from"]))
    end = datetime.fromisoformat(str(selection["to"]))
    c0 = header.get("start_checkpoint")
    if not isinstance(c0, int) or isinstance(c0, bool) or c0 < GENESIS:
        return report.fail(None, f"the header's start_checkpoint is not a position: {c0!r:.80}")
    segments = _segments(header)
    if len(segments) > 1:
        return report.fail(segments[0].end + 1, "a unit export of this format is one run of "
                           f"the chain, the header declares {len(segments)} segments")
    if c0 != GENESIS:
        first = signed.get(c0)
        if first is None:
            return report.fail(c0, f"the run's start checkpoint at {c0} is not in the file")
        if not first.signed_at < start:
            return report.fail(c0 + 1, f"the run starts after the checkpoint at {c0}, signed "
                               f"at {iso(first.signed_at)}, not before the window's start "
                               f"{iso(start)}: events of the window may be left out before it")
    seg = segments[0] if segments else Segment(c0 + 1, c0, None)
    if segments:
        if seg.start != c0 + 1:
            return report.fail(c0 + 1, f"position {c0 + 1}, right after the start checkpoint, "
                               f"is missing: the run begins at {seg.start}")
        if seg.end < seg.start:
            return report.fail(seg.start, f"the run {seg.start}..{seg.end} runs backwards")
        if seg.checkpoint is not None and seg.checkpoint != seg.end:
            return report.fail(seg.end, f"the run {seg.start}..{seg.end} claims the checkpoint "
                               f"at {seg.checkpoint}, not one at its end")
        if seg.checkpoint is not None and seg.checkpoint not in signed:
            return report.fail(seg.end, f"the run's checkpoint at {seg.end} is not in the file")
        upto = selection.get("to_position")
        if upto is not None and int(upto) < seg.end:
            return report.fail(int(upto) + 1, f"the selection stops at position {upto}, before "
                               f"the run's end at {seg.end}: the unit's events after it would "
                               "pass as witnesses")
    size = seg.end - seg.start + 1
    if not _check_segment(seg, chain[:size], signed, selected, report):
        return report
    if len(chain) > size:
        return report.fail(chain[size].position, "lines beyond the declared run")
    if report.events != header["events"]:
        return report.fail(None, f"the header counts {header['events']} events, the file "
                           f"holds {report.events}")
    anchor = max((p for p in signed if seg.start <= p <= seg.end), default=c0)
    report.anchored_events = sum(line.kind == "event" and line.position <= anchor
                                 for line in chain)
    if anchor < seg.end:
        report.unanchored.append((anchor + 1, seg.end))
    closing = signed.get(seg.checkpoint) if seg.checkpoint is not None else None
    secs = f"{margin.total_seconds():g} s"
    since = "genesis" if c0 == GENESIS else (f"the checkpoint at {c0} (signed "
                                              f"{iso(signed[c0].signed_at)})")
    if closing is not None and closing.signed_at >= end + margin:
        report.complete = True
        report.completeness = (f"proven: the chain runs without a gap from {since} to the "
                               f"checkpoint at {closing.position} (signed "
                               f"{iso(closing.signed_at)}, at least {secs} after the "
                               "window's end), and no witness is of the selection")
        return report
    why = ("no signed checkpoint closes the window: the run ends at position "
           f"{seg.end}{', unanchored after ' + str(anchor) if anchor < seg.end else ''}"
           if closing is None else
           f"the run ends at the checkpoint at {closing.position}, signed "
           f"{iso(closing.signed_at)}, less than {secs} after the window's end")
    report.completeness = (f"not proven: {why}; events of the window may have been committed "
                           "after it (sign a checkpoint once the margin has passed and export "
                           "again)")
    if not allow_unanchored:
        loose = report.events - report.anchored_events
        unsigned = (f"; {loose} of {report.events} events are anchored by no signed checkpoint"
                    if loose else "")
        return report.fail(anchor + 1, f"the unit's events are not proven complete: {why}"
                           f"{unsigned}", verdict="UNANCHORED")
    return report
