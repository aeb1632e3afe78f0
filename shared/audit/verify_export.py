"""Check an exported file offline: no database, only the file and the public key.

What a file that passes proves (given SHA-256 and Ed25519):
- every exported event's content (envelope, metadata, data) hashes to the hash it carries;
- within each segment, the chain links from the exported event through the witness events to
  a checkpoint whose signature holds under the public key: so each anchored event stands, at
  its position, in the log that was signed — nobody can have changed, removed, inserted or
  reordered anything before that checkpoint without it showing;
- for a case export, its versions run 1..n without a hole.
What it does not prove: that the log held no later events of the case (after the file's last
exported event), nor anything about events in an unanchored segment beyond chain consistency
(they were recorded after the last signed checkpoint; sign one and export again).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.audit.export import FORMAT, Segment
from shared.contracts.envelope import CANONICAL_FORMAT, RecordedEvent, chain_hash
from shared.eventstore.checkpoints import Checkpoint, signature_valid


class ExportUnreadable(ValueError):
    """The file is not an audit export at all."""


@dataclass
class ExportReport:
    """The verdict. ``first_bad_position`` names where the file stops holding together."""

    ok: bool = True
    events: int = 0
    witnesses: int = 0
    anchored_events: int = 0
    checkpoints: int = 0
    unanchored: list[tuple[int, int]] = field(default_factory=list)
    first_bad_position: int | None = None
    problem: str | None = None

    def fail(self, position: int | None, problem: str) -> ExportReport:
        self.ok, self.first_bad_position, self.problem = False, position, problem
        return self


@dataclass(frozen=True)
class _Line:
    kind: str
    position: int
    prev_hash: str
    hash: str
    body: bytes
    version: int | None


def _parse(raw: str, number: int) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ExportUnreadable(f"line {number} is not JSON: {exc}") from exc
    if not isinstance(value, dict) or "kind" not in value:
        raise ExportUnreadable(f"line {number} has no kind")
    return value


def _chain_line(obj: dict[str, Any]) -> _Line:
    if obj["kind"] == "event":
        event = RecordedEvent.from_wire(obj)
        return _Line("event", event.position, event.prev_hash, event.hash,
                     event.canonical_bytes(), event.version)
    return _Line("witness", int(obj["position"]), obj["prev_hash"], obj["hash"],
                 str(obj["canonical"]).encode(), None)


def _checkpoint(obj: dict[str, Any]) -> Checkpoint:
    return Checkpoint(int(obj["position"]), obj["hash"],
                      datetime.fromisoformat(obj["signed_at"]), obj["key_id"], obj["signature"])


def read_export(path: Path) -> tuple[dict[str, Any], list[Checkpoint], list[_Line]]:
    """Header, checkpoints and chain lines of an export file."""
    header: dict[str, Any] | None = None
    checkpoints: list[Checkpoint] = []
    chain: list[_Line] = []
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, 1):
            obj = _parse(raw, number)
            if obj["kind"] == "header":
                header = obj
            elif obj["kind"] == "checkpoint":
                checkpoints.append(_checkpoint(obj))
            elif obj["kind"] in ("event", "witness"):
                try:
                    chain.append(_chain_line(obj))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ExportUnreadable(f"line {number} is not a chain entry: {exc!r}") from exc
            else:
                raise ExportUnreadable(f"line {number}: unknown kind {obj['kind']!r}")
    if header is None or header.get("format") != FORMAT:
        raise ExportUnreadable(f"not a {FORMAT} file")
    return header, checkpoints, chain


def _segments(header: dict[str, Any]) -> list[Segment]:
    return [Segment(int(s["from"]), int(s["to"]), s["checkpoint"]) for s in header["segments"]]


def _check_segment(seg: Segment, lines: Sequence[_Line], signed: dict[int, Checkpoint],
                   report: ExportReport) -> bool:
    """Walk one segment's lines: contiguous positions, links, hashes, checkpoints."""
    before = signed.get(seg.start - 1)
    prev = before.hash if before is not None else (lines[0].prev_hash if lines else "")
    for expected, line in enumerate(lines, seg.start):
        if line.position != expected:
            report.fail(expected, f"position {expected} is missing from the chain (found "
                        f"{line.position} in its place): lines were removed, added or reordered")
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


def verify_export(path: Path, public_key: Ed25519PublicKey) -> ExportReport:
    """Check an export file offline (see the module docstring for what a pass proves)."""
    report = ExportReport()
    header, checkpoints, chain = read_export(path)
    for cp in checkpoints:
        if not signature_valid(cp, public_key):
            return report.fail(cp.position, f"checkpoint at position {cp.position} has an "
                               "invalid signature")
    report.checkpoints = len(checkpoints)
    signed = {cp.position: cp for cp in checkpoints}
    events = [line for line in chain if line.kind == "event"]
    report.events, report.witnesses = len(events), len(chain) - len(events)
    rest = list(chain)
    for seg in _segments(header):
        size = seg.end - seg.start + 1
        lines, rest = rest[:size], rest[size:]
        if seg.checkpoint is not None and seg.checkpoint not in signed:
            return report.fail(seg.end, f"the segment's checkpoint at {seg.end} is not in "
                               "the file")
        if not _check_segment(seg, lines, signed, report):
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
    _versions_ok(events, header, report)
    return report
