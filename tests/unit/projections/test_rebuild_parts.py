"""Parts of the rebuild: event data reads the same with orjson as with the json module (or is
refused the same way), stored bytes read as their text would, the paused garbage collector comes
back as it was, a timeline writer that fails stops the fold instead of leaving it waiting, and
what a fold process is given and sends back pickles whole."""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.cli import build_parser
from services.projections.projectors import (
    RawEvent,
    TimelineRow,
    UnitPaths,
    Unprojectable,
    prepare,
)
from services.projections.projectors.case import ts
from services.projections.projectors.events import read_data, read_stored
from services.projections.rebuild import _GcPause, _TimelineSink
from shared.reference import Reference

SAMPLES = [
    '{"at":"2026-03-02T01:00:00Z","actor":{"role":"clerk","acting_for":null},"n":1,"x":1.5}',
    '{"text":"已电话告知申请人办理进度。","documents":["户口簿","身份证"],"ok":true}',
    '{"a":-0.0,"b":1e5,"c":123456789012345678,"d":[],"e":{}}',
    '{"a":"line\\nbreak \\"quoted\\" \\u00e9 \\ud83d\\ude00"}',
    '{"nan":NaN}',  # the json module reads these; orjson refuses them
    '{"inf":Infinity,"big":1e400}',
    '{"lone":"\\ud800"}',
]


@pytest.mark.parametrize("text", SAMPLES)
def test_data_reads_as_the_json_module_reads_it(text: str) -> None:
    expected = json.loads(text)
    stored = read_stored(text.encode())
    if isinstance(stored, str):  # orjson refused it: the text, for prepare's read_data
        assert stored == text
        stored = read_data(stored)
    for found in (read_data(text), stored):
        assert repr(found) == repr(expected)  # repr: nan == nan is false, -0.0 == 0.0 true


@pytest.mark.parametrize("text", ["{", '{"a":}', "", '{"a":1}x'])
def test_unreadable_data_is_unprojectable_either_way(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    for data in (text, read_stored(text.encode())):
        event = RawEvent(1, "case-3f0c3c6e-7f1a-4a57-9d1e-8a2d0b1c2e3f", 1, "CaseClosed", 1,
                         data, datetime(2026, 3, 2, tzinfo=UTC))
        with pytest.raises(Unprojectable, match="unreadable"):
            prepare(*event)


def test_a_timestamp_parsed_twice_is_the_same_and_a_new_string_is_parsed_anew() -> None:
    first = "2026-03-02T01:00:00.123456Z"
    second = "2026-03-02T01:00:00+08:00"
    assert ts(first) == ts(first) == datetime.fromisoformat(first)
    assert ts(second) == datetime.fromisoformat(second)
    assert ts(second).utcoffset() == datetime.fromisoformat(second).utcoffset()
    assert ts("".join(["2026-03-02T01:00:00", ".123456Z"])) == datetime.fromisoformat(first)


def test_the_collector_is_paused_re_entrantly_and_restored_as_found() -> None:
    pause = _GcPause()
    assert gc.isenabled()
    try:
        with pause():
            assert not gc.isenabled()
            with pause():
                assert not gc.isenabled()
            assert not gc.isenabled()
        assert gc.isenabled()
        with pytest.raises(RuntimeError), pause():
            raise RuntimeError("the rebuild failed")
        assert gc.isenabled()
        gc.disable()
        with pause():
            pass
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        gc.enable()


async def _no_tables() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("the tables could not be made")


ROW = TimelineRow(uuid.uuid4(), 1, 1, datetime(2026, 3, 2, tzinfo=UTC), "CaseSubmitted",
                  "clerk.a", "station_clerk", "530102001001", None, "530102001001",
                  "community", None, None, "submitted", "legal_information")


@pytest.mark.parametrize("ranges", [1, 4, 10])
async def test_a_failed_timeline_writer_is_raised_not_waited_for(ranges: int) -> None:
    pool: Any = None  # never reached: the writer fails before it takes a connection
    sink = _TimelineSink(pool, "projections_blue", _no_tables())
    with pytest.raises(RuntimeError, match="could not be made"):
        for _ in range(ranges):
            await sink.put([ROW])
        await asyncio.wait_for(sink.close(), 5)


def test_what_a_fold_process_is_given_and_sends_back_pickles_whole(ref: Reference) -> None:
    """A fold process gets the org tree pickled (``OrgTree`` keeps read-only mappings, which do
    not pickle as they are) and sends back what stopped it (``Unprojectable`` has four
    fields, not the message its ``args`` hold)."""
    paths = pickle.loads(pickle.dumps(UnitPaths(ref.org)))
    units = [u.code for u in ref.org.descendants(ref.org.root.code)]
    assert [paths.chain(u) for u in units] == [UnitPaths(ref.org).chain(u) for u in units]
    assert [paths.path(u) for u in units] == [UnitPaths(ref.org).path(u) for u in units]

    sent = Unprojectable(7, "case-x", "CaseTeleported", "no projector for this event type")
    got = pickle.loads(pickle.dumps(sent))
    assert (got.position, got.stream_id, got.type, got.reason, str(got)) == (
        7, "case-x", "CaseTeleported", "no projector for this event type", str(sent))


@pytest.mark.parametrize("given", ["0", "-2", "two"])
def test_a_rebuild_refuses_a_process_count_below_one(given: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["projections", "rebuild", "--processes", given])
    assert stopped.value.code == 2
    assert "--processes" in capsys.readouterr().err
    assert build_parser().parse_args(["projections", "rebuild", "--processes", "3"]).processes == 3
