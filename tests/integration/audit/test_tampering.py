"""Tampering with the log (as a superuser with the immutability triggers off) is found by
``verify_log`` at the right position; tampering with an exported file is found by
``verify_export`` at the right position, offline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.audit import export_case, verify_export
from shared.contracts.envelope import chain_hash
from shared.eventstore.postgres import PostgresEventStore
from shared.eventstore.verify import verify_log
from tests import tamper
from tests.integration.audit.support import SIGNER, insert_forged, seed

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
    from shared.contracts.envelope import RecordedEvent

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
