"""A damaged export file (a checkpoint line or the header missing a field or holding the wrong
type, a chain line whose hashes are not hashes) is refused as ``ExportUnreadable`` naming the
line and the field, never with a KeyError, ValueError or AttributeError (a traceback at the
command line)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.audit import ExportUnreadable, verify_export
from shared.eventstore.checkpoints import CheckpointSigner
from shared.settings import DEV_SIGNING_KEY

KEY = CheckpointSigner(DEV_SIGNING_KEY).public_key
HEADER: dict[str, Any] = {
    "kind": "header", "format": "yizhan-audit-export-v2", "events": 0, "segments": [],
    "selection": {"case_id": str(uuid.uuid4()), "to_position": 5}}
CHECKPOINT: dict[str, Any] = {
    "kind": "checkpoint", "position": 3, "hash": "a" * 64,
    "signed_at": "2026-01-01T00:00:00.000000Z", "key_id": "0" * 16, "signature": "AA=="}
ONE_SEGMENT = {**HEADER, "segments": [{"from": 1, "to": 1, "checkpoint": None}]}
WITNESS: dict[str, Any] = {"kind": "witness", "position": 1, "prev_hash": "0" * 64,
                           "hash": "b" * 64, "canonical": "yizhan-event-v2\n1\nx"}


def without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


@pytest.mark.parametrize(("objs", "words"), [
    ([HEADER, without(CHECKPOINT, "signature")], ["line 2", "checkpoint", "signature"]),
    ([HEADER, {**CHECKPOINT, "signed_at": "yesterday"}], ["line 2", "checkpoint", "yesterday"]),
    ([HEADER, {**CHECKPOINT, "position": "three"}], ["line 2", "checkpoint", "three"]),
    ([without(HEADER, "segments")], ["line 1", "segments"]),
    ([{**HEADER, "segments": None}], ["line 1", "segments"]),
    ([{**HEADER, "segments": [{"from": "x", "to": 1, "checkpoint": None}]}],
     ["line 1", "segments"]),
    ([{**HEADER, "segments": [{"from": 1, "to": 1}]}], ["line 1", "segments", "checkpoint"]),
    ([without(HEADER, "events")], ["line 1", "events"]),
    ([{**HEADER, "events": "many"}], ["line 1", "events"]),
    ([ONE_SEGMENT, {**WITNESS, "prev_hash": 5}], ["line 2", "prev_hash"]),
    ([ONE_SEGMENT, {**WITNESS, "prev_hash": "é" * 64}], ["line 2", "prev_hash"]),
], ids=["checkpoint-without-signature", "checkpoint-time", "checkpoint-position",
        "no-segments", "segments-null", "segment-from", "segment-without-checkpoint",
        "no-event-count", "event-count-text", "prev-hash-number", "prev-hash-not-ascii"])
def test_a_damaged_line_is_named_not_a_traceback(tmp_path: Path, objs: list[Any],
                                                  words: list[str]) -> None:
    path = tmp_path / "damaged.jsonl"
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs), "utf-8")
    with pytest.raises(ExportUnreadable) as refused:
        verify_export(path, KEY)
    for word in words:
        assert word in str(refused.value), str(refused.value)


def test_a_line_nested_beyond_reading_is_named_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    deep = '{"kind": "witness", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path.write_text(json.dumps(HEADER) + "\n" + deep + "\n", "utf-8")
    with pytest.raises(ExportUnreadable, match="line 2 is nested too deeply to read"):
        verify_export(path, KEY)
