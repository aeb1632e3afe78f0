"""Tampering with the log (as a superuser with the immutability triggers off) is found by
``verify_log`` at the right position; tampering with an exported file is found by
``verify_export`` at the right position, offline."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.audit import COMMIT_MARGIN, export_case, export_unit, verify_export
from shared.contracts.envelope import RecordedEvent, chain_hash
from shared.eventstore.postgres import PostgresEventStore
from shared.eventstore.verify import verify_log
from tests import tamper
from tests.integration.audit.support import SIGNER, insert_forged, seed, sign_at

KEY = SIGNER.public_key


@pytest.fixture
async def log(pg_store: PostgresEventStore, admin_pool: asyncpg.Pool) -> AsyncIterator[list[Any]]:
    yield await seed(pg_store, admin_pool)


async def checkpoints(pool: asyncpg.Pool) -> list[int]:
    return [r[0] for r in await pool.fetch("SELECT position FROM event_checkpoints ORDER BY 1")]


# ------------------------------------------------------------ the log itself


async def test_the_seeded_log_verifies(log: list[Any], pool: asyncpg.Pool) -> None:
    report = await verify_log(pool, KEY)
    assert report.ok and report.checkpoints_checked >= 3, report


async def test_changed_data_is_found_at_its_position(log: list[Any], admin_pool: asyncpg.Pool,
                                                     pool: asyncpg.Pool) -> None:
    await tamper.alter_data(admin_pool, 7, '{"forged":true}')
    report = await verify_log(pool, KEY)
    assert (report.ok, report.first_bad_position) == (False, 7)


async def test_deleted_event_is_found(log: list[Any], admin_pool: asyncpg.Pool,
                                      pool: asyncpg.Pool) -> None:
    await tamper.delete_event(admin_pool, 9)
    report = await verify_log(pool, KEY)
    assert (report.ok, report.first_bad_position) == (False, 9)


async def test_swapped_events_are_found_at_the_first(log: list[Any], admin_pool: asyncpg.Pool,
                                                     pool: asyncpg.Pool) -> None:
    await tamper.swap_events(admin_pool, 4, 11)
    report = await verify_log(pool, KEY)
    assert (report.ok, report.first_bad_position) == (False, 4)


async def test_forged_insert_with_a_made_up_hash_is_found_where_it_sits(
    log: list[Any], admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    await insert_forged(admin_pool, 6, careful=False)
    report = await verify_log(pool, KEY)
    assert (report.ok, report.first_bad_position) == (False, 6)
    assert "content" in (report.problem or "")


async def test_forged_insert_hashed_onto_the_chain_breaks_it_right_after(
    log: list[Any], admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    """The forged row chains onto its predecessor; the genuine event it pushed to p+1 no
    longer links to it (and its own content names position p)."""
    await insert_forged(admin_pool, 6, careful=True)
    report = await verify_log(pool, KEY)
    assert (report.ok, report.first_bad_position) == (False, 7)


async def test_forged_insert_with_the_chain_rewritten_is_caught_by_the_next_checkpoint(
    log: list[Any], admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    signed = await checkpoints(admin_pool)
    await insert_forged(admin_pool, 6, careful=True)
    await tamper.rewrite_chain_from(admin_pool, 7)
    report = await verify_log(pool, KEY)
    assert (report.ok, report.first_bad_position) == (False, min(p for p in signed if p >= 6))
    assert "signed checkpoint" in (report.problem or "")


# ------------------------------------------------------------ an exported file


@pytest.fixture
async def exported(log: list[Any], pool: asyncpg.Pool, tmp_path: Path) -> Path:
    path = tmp_path / "case.jsonl"
    await export_case(pool, log[0], path)
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text("utf-8").splitlines()]


def write(path: Path, objs: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs), "utf-8")


def chain_index(objs: list[dict[str, Any]], kind: str = "event", nth: int = 1) -> int:
    found = [i for i, o in enumerate(objs) if o["kind"] == kind]
    return found[nth]


def test_an_untouched_export_verifies_offline(exported: Path) -> None:
    report = verify_export(exported, KEY)
    assert report.ok, report
    assert report.events == report.anchored_events > 3 and report.unanchored == []


def test_changed_event_in_the_file_is_found(exported: Path) -> None:
    objs = lines(exported)
    i = chain_index(objs)
    objs[i]["data"]["actor"]["user_id"] = "someone.else"
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert (report.ok, report.first_bad_position) == (False, objs[i]["position"])
    assert "content" in (report.problem or "")


def test_changed_event_with_its_hashes_recomputed_is_caught_by_the_checkpoint(
    exported: Path
) -> None:
    objs = lines(exported)
    i = chain_index(objs)
    objs[i]["data"]["actor"]["user_id"] = "someone.else"
    prev = objs[i]["prev_hash"]
    for obj in objs[i:]:
        if obj["kind"] not in ("event", "witness"):
            continue
        body = (RecordedEvent.from_wire(obj).canonical_bytes() if obj["kind"] == "event"
                else obj["canonical"].encode())
        obj["prev_hash"], obj["hash"] = prev, chain_hash(prev, body)
        prev = obj["hash"]
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert not report.ok and "signed checkpoint" in (report.problem or "")


def test_deleted_line_is_found(exported: Path) -> None:
    objs = lines(exported)
    i = chain_index(objs)
    position = objs[i]["position"]
    del objs[i]
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert (report.ok, report.first_bad_position) == (False, position)


def test_swapped_lines_are_found_at_the_first(exported: Path) -> None:
    objs = lines(exported)
    i = chain_index(objs)
    objs[i], objs[i + 1] = objs[i + 1], objs[i]
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert (report.ok, report.first_bad_position) == (False, objs[i + 1]["position"])


def test_inserted_forged_event_is_found(exported: Path) -> None:
    objs = lines(exported)
    i = chain_index(objs)
    forged = json.loads(json.dumps(objs[i]))
    forged["type"] = "CaseDecided"
    objs.insert(i, forged)
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert (report.ok, report.first_bad_position) == (False, forged["position"])


def test_a_checkpoint_moved_to_another_position_is_refused(exported: Path) -> None:
    objs = lines(exported)
    i = chain_index(objs, "checkpoint", 0)
    objs[i]["position"] += 1
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert not report.ok and "signature" in (report.problem or "")


def recompute_chain(objs: list[dict[str, Any]], start: int) -> None:
    """Rewrite every hash from ``objs[start]`` on, as a forger covering their tracks would."""
    prev = objs[start]["prev_hash"]
    for obj in objs[start:]:
        if obj["kind"] not in ("event", "witness"):
            continue
        body = (RecordedEvent.from_wire(obj).canonical_bytes() if obj["kind"] == "event"
                else obj["canonical"].encode())
        obj["prev_hash"], obj["hash"] = prev, chain_hash(prev, body)
        prev = obj["hash"]


def as_witness(obj: dict[str, Any]) -> dict[str, Any]:
    """An exported event written as a witness line, as the exporter writes other streams'."""
    event = RecordedEvent.from_wire(obj)
    return {"kind": "witness", "position": event.position, "prev_hash": event.prev_hash,
            "hash": event.hash, "canonical": event.canonical_bytes().decode()}


async def test_an_export_relabelled_as_another_case_is_refused(
    log: list[Any], pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Case B's genuine, signed file with case A's id in its header."""
    path = tmp_path / "b.jsonl"
    await export_case(pool, log[1], path)
    objs = lines(path)
    objs[0]["selection"]["case_id"] = str(log[0])
    write(path, objs)
    report = verify_export(path, KEY)
    first = objs[chain_index(objs, nth=0)]["position"]
    assert (report.ok, report.first_bad_position) == (False, first)
    assert f"case-{log[1]}" in (report.problem or "") and "relabelled" in (report.problem or "")


def test_events_hidden_as_witnesses_are_refused(exported: Path) -> None:
    """The case's last three events written as witness lines, the header's count lowered:
    the chain and the versions 1..n-3 still hold."""
    objs = lines(exported)
    hidden = [i for i, o in enumerate(objs) if o["kind"] == "event"][-3:]
    for i in hidden:
        objs[i] = as_witness(objs[i])
    objs[0]["events"] -= 3
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert (report.ok, report.first_bad_position) == (False, objs[hidden[0]]["position"])
    assert "hidden" in (report.problem or "")


def test_a_forged_export_with_its_checkpoints_stripped_is_refused_as_unanchored(
    exported: Path
) -> None:
    """Checkpoints removed, segments declared unanchored, an event changed and every hash
    recomputed: the file holds together, but nothing signed vouches for it."""
    objs = [o for o in lines(exported) if o["kind"] != "checkpoint"]
    for seg in objs[0]["segments"]:
        seg["checkpoint"] = None
    i = chain_index(objs)
    objs[i]["data"]["actor"]["user_id"] = "someone.else"
    recompute_chain(objs, chain_index(objs, "event", 0))
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert not report.ok, report
    assert (report.verdict, report.anchored_events) == ("UNANCHORED", 0)
    assert report.first_bad_position == objs[chain_index(objs, "event", 0)]["position"]
    assert "not anchored by any signed checkpoint" in (report.problem or "")
    # asked for explicitly, the chain alone passes, and says so
    allowed = verify_export(exported, KEY, allow_unanchored=True)
    assert allowed.ok and allowed.anchored_events == 0
    assert allowed.unanchored == [(s["from"], s["to"]) for s in objs[0]["segments"]]


def test_a_forged_event_appended_past_a_segments_checkpoint_is_refused(exported: Path) -> None:
    """The last segment stretched one position past its checkpoint, holding a forged event
    chained onto it: the checkpoint vouches for nothing after it."""
    objs = lines(exported)
    seg = objs[0]["segments"][-1]
    last = [o for o in objs if o["kind"] == "event"][-1]
    forged = json.loads(json.dumps(last))
    forged |= {"position": seg["to"] + 1, "version": last["version"] + 1,
               "event_id": str(uuid.uuid4()), "prev_hash": objs[-1]["hash"]}
    forged["hash"] = chain_hash(forged["prev_hash"],
                                RecordedEvent.from_wire(forged).canonical_bytes())
    objs.append(forged)
    seg["to"] += 1
    objs[0]["events"] += 1
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert (report.ok, report.first_bad_position) == (False, seg["to"])
    assert "not one at its end" in (report.problem or "")


async def test_a_case_exported_up_to_a_position_has_its_later_events_as_witnesses(
    log: list[Any], pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A segment runs on to the next checkpoint, through the case's events after the chosen
    position: witnesses there are not hidden events."""
    stream = f"case-{log[0]}"
    positions = [r[0] for r in await pool.fetch(
        "SELECT position FROM events WHERE stream_id = $1 ORDER BY position", stream)]
    signed = await checkpoints(pool)
    upto = next(p for p, q in pairwise(positions)
                if any(p < c and q <= c for c in signed))
    path = tmp_path / "upto.jsonl"
    await export_case(pool, log[0], path, to_position=upto)
    objs = lines(path)
    assert any(o["kind"] == "witness" and f"\n{stream}\n" in o["canonical"] for o in objs)
    report = verify_export(path, KEY)
    assert report.ok and report.events == positions.index(upto) + 1, report


@pytest.fixture
async def unit_export(log: list[Any], pool: asyncpg.Pool, pg_store: PostgresEventStore,
                      admin_pool: asyncpg.Pool, tmp_path: Path) -> tuple[Path, str]:
    unit = str(await pool.fetchval(
        "SELECT metadata->>'unit' FROM events WHERE stream_id LIKE 'case-%' "
        "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"))
    path, now = tmp_path / "unit.jsonl", datetime.now(UTC)
    await sign_at(pg_store, admin_pool, now + COMMIT_MARGIN)  # closes the window [now-1h, now)
    done = await export_unit(pool, unit, now - timedelta(hours=1), now, path)
    assert done.events > 1 and done.witnesses > 0 and done.window_closed
    return path, unit


def test_an_untouched_unit_export_verifies(unit_export: tuple[Path, str]) -> None:
    report = verify_export(unit_export[0], KEY)
    assert report.ok and report.unanchored == [] and report.complete, report


def test_a_unit_export_relabelled_as_another_unit_is_refused(
    unit_export: tuple[Path, str]
) -> None:
    path, unit = unit_export
    objs = lines(path)
    objs[0]["selection"]["unit"] = unit + "9"
    write(path, objs)
    report = verify_export(path, KEY)
    assert (report.ok, report.first_bad_position) == (False,
                                                      objs[chain_index(objs, nth=0)]["position"])
    assert "relabelled" in (report.problem or "")


def test_a_unit_event_hidden_as_a_witness_is_refused(unit_export: tuple[Path, str]) -> None:
    path, _ = unit_export
    objs = lines(path)
    i = [i for i, o in enumerate(objs) if o["kind"] == "event"][-1]
    objs[i] = as_witness(objs[i])
    objs[0]["events"] -= 1
    write(path, objs)
    report = verify_export(path, KEY)
    assert (report.ok, report.first_bad_position) == (False, objs[i]["position"])
    assert "hidden" in (report.problem or "")


def test_an_export_of_the_first_format_with_unchained_checkpoints_still_verifies(
    exported: Path
) -> None:
    """Files written before checkpoints were chained: a v1 header, format 1 checkpoints."""
    objs = lines(exported)
    objs[0]["format"] = "yizhan-audit-export-v1"
    for obj in objs:
        if obj["kind"] == "checkpoint":
            old = SIGNER.sign(obj["position"], obj["hash"],
                              datetime.fromisoformat(obj["signed_at"]), format_=1)
            for key in ("format", "prev_position", "prev_hash"):
                del obj[key]
            obj["signature"] = old.signature
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert report.ok and report.anchored_events == report.events > 3, report


def test_a_checkpoint_line_stripped_of_the_one_before_it_is_refused(exported: Path) -> None:
    """A chained checkpoint cannot pass as an unchained one: the signature covers the link."""
    objs = lines(exported)
    i = chain_index(objs, "checkpoint", 0)
    for key in ("format", "prev_position", "prev_hash"):
        del objs[i][key]
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert (report.ok, report.first_bad_position) == (False, objs[i]["position"])
    assert "signature" in (report.problem or "")


@pytest.mark.parametrize(("kind", "field"), [("event", "decision"), ("witness", "type"),
                                             ("event", "actor")])
def test_a_field_added_to_a_chain_line_that_its_hash_does_not_cover_is_found(
    exported: Path, kind: str, field: str
) -> None:
    """What the file shows must be what the verifier checked: a field next to an event's
    envelope (or a witness's canonical bytes) is not covered by the hash, so a reader would
    see it as part of the evidence."""
    objs = lines(exported)
    i = chain_index(objs, kind, 0)
    objs[i][field] = "refused by the director"
    write(exported, objs)
    report = verify_export(exported, KEY)
    assert (report.ok, report.first_bad_position) == (False, objs[i]["position"]), report
    assert field in (report.problem or "")


def test_a_key_written_twice_in_an_event_is_found(exported: Path) -> None:
    """JSON readers disagree on a key given twice (Python keeps the last, others the first):
    the verifier, keeping the last, must not pass a line another reader shows otherwise."""
    texts = exported.read_text("utf-8").splitlines()
    objs = [json.loads(t) for t in texts]
    i = chain_index(objs)
    assert texts[i].count('"data":{') == 1
    texts[i] = texts[i].replace('"data":{', '"data":{"actor":{"user_id":"someone.else"},')
    exported.write_text("\n".join(texts) + "\n", "utf-8")
    report = verify_export(exported, KEY)
    assert (report.ok, report.first_bad_position) == (False, objs[i]["position"]), report
    assert "actor" in (report.problem or "") and "twice" in (report.problem or "")
