"""A unit export (format v3) is one run of the chain between two signed checkpoints that bound
its window, so nothing can be dropped from it unseen: an exported event's lines dropped from
the middle (with the header's count), or witnesses dropped, are found at the first missing
position; an untouched file is proven complete. A window no checkpoint closes yet is not
proven complete (UNANCHORED; passes with allow_unanchored, still not complete). Older files
still verify, completeness not proven."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.audit import COMMIT_MARGIN, export_unit, verify_export
from shared.audit.export import GENESIS, write_export
from shared.eventstore.postgres import PostgresEventStore
from tests import tamper
from tests.integration.audit.support import SIGNER, seed, sign_at

KEY = SIGNER.public_key


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text("utf-8").splitlines()]


def write(path: Path, objs: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs), "utf-8")


async def busiest_unit(pool: asyncpg.Pool, since: datetime) -> str:
    return str(await pool.fetchval(
        "SELECT metadata->>'unit' FROM events WHERE stream_id LIKE 'case-%' AND recorded_at >= $1"
        " GROUP BY 1 ORDER BY count(*) DESC LIMIT 1", since))


@pytest.fixture
async def closed(pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool,
                 tmp_path: Path) -> tuple[Path, str]:
    """The seeded log's busiest unit over [an hour ago, now), a checkpoint signed the margin
    after now closing it: a run from genesis through the seed's checkpoints."""
    start = datetime.now(UTC) - timedelta(hours=1)
    await seed(pg_store, admin_pool)
    end = datetime.now(UTC)
    await sign_at(pg_store, admin_pool, end + COMMIT_MARGIN)
    unit = await busiest_unit(pool, start)
    path = tmp_path / "unit.jsonl"
    done = await export_unit(pool, unit, start, end, path)
    assert done.window_closed and done.events > 3 and done.witnesses > 0
    return path, unit


def test_an_untouched_unit_export_is_proven_complete(closed: tuple[Path, str]) -> None:
    path, unit = closed
    objs = lines(path)
    assert objs[0]["start_checkpoint"] == GENESIS and len(objs[0]["segments"]) == 1
    chain = [o["position"] for o in objs if o["kind"] in ("event", "witness")]
    assert chain == list(range(1, objs[0]["segments"][0]["to"] + 1))
    report = verify_export(path, KEY)
    assert report.ok and report.complete and report.unanchored == [], report
    assert report.events == report.anchored_events == objs[0]["events"]
    assert "proven" in (report.completeness or "") and unit in (report.selection or "")


def test_a_middle_exported_event_dropped_is_found_at_its_position(
        closed: tuple[Path, str]) -> None:
    """Its line removed and the header's count lowered: each event once stood alone in its
    own segment, whose removal went unseen."""
    path, _ = closed
    objs = lines(path)
    exported = [i for i, o in enumerate(objs) if o["kind"] == "event"]
    i = exported[len(exported) // 2]
    dropped = objs.pop(i)["position"]
    objs[0]["events"] -= 1
    write(path, objs)
    report = verify_export(path, KEY)
    assert (report.ok, report.verdict, report.first_bad_position) == (False, "TAMPERED",
                                                                      dropped), report
    assert f"position {dropped} is missing" in (report.problem or "")
    assert not report.complete


def test_a_middle_segment_dropped_whole_is_found(closed: tuple[Path, str]) -> None:
    """The hole a v2 file could not show: an exported event that began a segment (the one
    before it tied to an earlier checkpoint) dropped with the witnesses up to the next
    checkpoint, its header entry (if any) removed and the header's count lowered."""
    path, _ = closed
    objs = lines(path)
    signed = sorted(o["position"] for o in objs if o["kind"] == "checkpoint")
    exported = [o["position"] for o in objs if o["kind"] == "event"]
    first = next(p for q, p in pairwise(exported)
                 if any(q <= c < p for c in signed) and p < exported[-1])
    upto = next(c for c in signed if c >= first)
    kept = [o for o in objs if o["kind"] not in ("event", "witness")
            or not first <= o["position"] <= upto]
    kept[0]["segments"] = [s for s in kept[0]["segments"] if s["from"] != first]
    kept[0]["events"] -= sum(o["kind"] == "event" and first <= o["position"] <= upto
                             for o in objs)
    write(path, kept)
    report = verify_export(path, KEY)
    assert (report.ok, report.verdict, report.first_bad_position) == (False, "TAMPERED",
                                                                      first), report
    assert f"position {first} is missing" in (report.problem or "")


def test_dropped_witnesses_are_found(closed: tuple[Path, str]) -> None:
    path, _ = closed
    objs = lines(path)
    witnesses = [i for i, o in enumerate(objs) if o["kind"] == "witness"]
    gone = objs[witnesses[len(witnesses) // 2]]["position"]
    objs = [o for o in objs if o.get("position") != gone or o["kind"] == "checkpoint"]
    write(path, objs)
    report = verify_export(path, KEY)
    assert (report.ok, report.verdict, report.first_bad_position) == (False, "TAMPERED",
                                                                      gone), report


def test_a_run_started_at_a_checkpoint_signed_inside_the_window_is_refused(
        closed: tuple[Path, str]) -> None:
    """The run cut at one of the seed's checkpoints (signed after the window opened), as if
    it began there: the unit's events before it would be left out unseen."""
    path, _ = closed
    objs = lines(path)
    cut = sorted(o["position"] for o in objs if o["kind"] == "checkpoint")[1]
    kept = [o for o in objs if o["kind"] not in ("event", "witness") or o["position"] > cut]
    kept[0]["events"] = sum(o["kind"] == "event" for o in kept)
    kept[0]["start_checkpoint"] = cut
    kept[0]["segments"][0]["from"] = cut + 1
    write(path, kept)
    report = verify_export(path, KEY)
    assert (report.ok, report.first_bad_position) == (False, cut + 1), report
    assert "not before the window's start" in (report.problem or "")


def test_the_run_ends_cut_short_of_its_closing_checkpoint_is_refused(
        closed: tuple[Path, str]) -> None:
    """The end moved back to an earlier checkpoint, signed before the window's end: the
    unit's later events could be missing; not complete."""
    path, _ = closed
    objs = lines(path)
    cut = sorted(o["position"] for o in objs if o["kind"] == "checkpoint")[-2]
    kept = [o for o in objs if o["kind"] not in ("event", "witness") or o["position"] <= cut]
    kept[0]["events"] = sum(o["kind"] == "event" for o in kept)
    kept[0]["segments"][0] |= {"to": cut, "checkpoint": cut}
    kept[0]["selection"]["to_position"] = cut
    write(path, kept)
    report = verify_export(path, KEY)
    assert (report.ok, report.verdict, report.complete) == (False, "UNANCHORED", False), report
    assert "less than" in (report.problem or "")


async def test_a_window_after_the_seeds_checkpoints_starts_at_the_last_one_before_it(
        pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool,
        tmp_path: Path) -> None:
    await seed(pg_store, admin_pool, seed=11)
    before = max(r[0] for r in await pool.fetch("SELECT position FROM event_checkpoints"))
    start = datetime.now(UTC)
    await seed(pg_store, admin_pool, seed=12)
    end = datetime.now(UTC)
    await sign_at(pg_store, admin_pool, end + COMMIT_MARGIN)
    unit = await busiest_unit(pool, start)
    path = tmp_path / "unit.jsonl"
    done = await export_unit(pool, unit, start, end, path)
    objs = lines(path)
    assert objs[0]["start_checkpoint"] == before
    assert min(o["position"] for o in objs if o["kind"] in ("event", "witness")) == before + 1
    report = verify_export(path, KEY)
    assert report.ok and report.complete and report.events == done.events > 0, report


async def test_a_window_no_checkpoint_closes_yet_is_not_proven_complete(
        pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool,
        tmp_path: Path) -> None:
    """The window ends now: the checkpoints were all signed before its end plus the margin.
    Events recorded after the last checkpoint are unanchored besides."""
    start = datetime.now(UTC) - timedelta(hours=1)
    await seed(pg_store, admin_pool)
    unit = await busiest_unit(pool, start)
    await seed(pg_store, admin_pool, seed=12, cases=1, checkpoint_every=1000)
    last = max(r[0] for r in await pool.fetch("SELECT position FROM event_checkpoints"))
    await tamper.delete_checkpoints(admin_pool, last)  # as if not signed yet
    path = tmp_path / "unit.jsonl"
    done = await export_unit(pool, unit, start, datetime.now(UTC), path)
    assert done.window_closed is False and done.unanchored
    report = verify_export(path, KEY)
    assert (report.ok, report.verdict, report.complete) == (False, "UNANCHORED", False), report
    assert "not proven complete" in (report.problem or "")
    allowed = verify_export(path, KEY, allow_unanchored=True)
    assert allowed.ok and not allowed.complete, allowed
    assert (allowed.completeness or "").startswith("not proven")
    assert allowed.unanchored and allowed.unanchored[0][1] == lines(path)[0]["head_position"]


async def test_a_window_ending_later_than_the_last_checkpoint_allows_is_not_complete(
        pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool,
        tmp_path: Path) -> None:
    """Every event anchored, but the window ends in an hour: nothing proves no event of it
    will follow."""
    now = datetime.now(UTC)
    await seed(pg_store, admin_pool)
    unit = await busiest_unit(pool, now - timedelta(hours=1))
    path = tmp_path / "unit.jsonl"
    done = await export_unit(pool, unit, now - timedelta(hours=1), now + timedelta(hours=1), path)
    assert done.window_closed is False and not done.unanchored
    report = verify_export(path, KEY)
    assert (report.ok, report.verdict, report.complete) == (False, "UNANCHORED", False), report
    allowed = verify_export(path, KEY, allow_unanchored=True)
    assert allowed.ok and not allowed.complete and allowed.unanchored == [], allowed
    assert allowed.anchored_events == allowed.events > 0


async def test_a_unit_export_of_the_second_format_verifies_but_is_not_proven_complete(
        pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool,
        tmp_path: Path) -> None:
    """A v2 file: a segment from each exported event to the next checkpoint."""
    now = datetime.now(UTC)
    await seed(pg_store, admin_pool)
    unit = await busiest_unit(pool, now - timedelta(hours=1))
    positions = [r[0] for r in await pool.fetch(
        "SELECT position FROM events WHERE metadata->>'unit' = $1 ORDER BY 1", unit)]
    path = tmp_path / "unit.jsonl"
    selection = {"unit": unit, "from": (now - timedelta(hours=1)).isoformat(),
                 "to": (now + timedelta(hours=1)).isoformat(), "to_position": positions[-1]}
    await write_export(pool, positions, selection, path)
    objs = lines(path)
    objs[0]["format"] = "yizhan-audit-export-v2"
    write(path, objs)
    report = verify_export(path, KEY)
    assert report.ok and not report.complete, report
    assert (report.completeness or "").startswith("not proven")
