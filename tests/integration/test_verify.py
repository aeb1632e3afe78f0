"""Verification finds every kind of tampering at the right position."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.contracts.envelope import NewEvent
from shared.eventstore.checkpoints import CheckpointSigner, write_checkpoint
from shared.eventstore.postgres import PostgresEventStore
from shared.eventstore.verify import verify_log
from shared.settings import DEV_SIGNING_KEY
from tests import tamper

SIGNER = CheckpointSigner(DEV_SIGNING_KEY)


@pytest.fixture
async def log(pg_store: PostgresEventStore, admin_pool: asyncpg.Pool) -> AsyncIterator[None]:
    """50 events over 10 streams, checkpoints signed at positions 20 and 40."""
    for i in range(50):
        stream = f"case-{i % 10}"
        await pg_store.append(stream, i // 10, [NewEvent("Noted", {"i": i, "说明": "材料齐全"})])
        if i + 1 in (20, 40):
            await write_checkpoint(admin_pool, SIGNER)
    yield


async def stream_of(admin: asyncpg.Pool, position: int) -> str:
    return str(await admin.fetchval("SELECT stream_id FROM events WHERE position = $1", position))


async def test_untouched_log_verifies(log: None, pool: asyncpg.Pool) -> None:
    report = await verify_log(pool, SIGNER.public_key)
    assert report.ok, report
    assert (report.events_checked, report.head_position, report.checkpoints_checked) == (50, 50, 2)


async def test_altered_data_is_found_at_its_position(log: None, admin_pool: asyncpg.Pool) -> None:
    stream = await stream_of(admin_pool, 17)
    await tamper.alter_data(admin_pool, 17, '{"i":99,"说明":"材料齐全"}')
    report = await verify_log(admin_pool, SIGNER.public_key)
    assert not report.ok
    assert (report.first_bad_position, report.stream_id) == (17, stream)
    assert "content" in (report.problem or "")


async def test_deleted_event_is_found(log: None, admin_pool: asyncpg.Pool) -> None:
    await tamper.delete_event(admin_pool, 33)
    report = await verify_log(admin_pool, SIGNER.public_key)
    assert (report.ok, report.first_bad_position) == (False, 33)
    assert "missing" in (report.problem or "")


async def test_swapped_events_are_found_at_the_first(log: None, admin_pool: asyncpg.Pool) -> None:
    await tamper.swap_events(admin_pool, 12, 30)
    report = await verify_log(admin_pool, SIGNER.public_key)
    assert (report.ok, report.first_bad_position) == (False, 12)


async def test_rewritten_chain_is_caught_by_the_signed_checkpoint(
    log: None, admin_pool: asyncpg.Pool
) -> None:
    await tamper.alter_data(admin_pool, 25, '{"i":0}')
    await tamper.rewrite_chain_from(admin_pool, 25)
    report = await verify_log(admin_pool, SIGNER.public_key)
    assert (report.ok, report.first_bad_position) == (False, 40)
    assert "after position 20" in (report.problem or "")
    unsigned = await verify_log(admin_pool, None)  # without checkpoints the forgery holds
    assert unsigned.ok


async def test_removed_tail_is_caught_by_a_later_checkpoint(
    log: None, admin_pool: asyncpg.Pool
) -> None:
    for position in range(50, 38, -1):
        await tamper.delete_event(admin_pool, position)
    report = await verify_log(admin_pool, SIGNER.public_key)
    assert not report.ok and "beyond the end" in (report.problem or "")


async def test_forged_checkpoint_signature_is_found(log: None, admin_pool: asyncpg.Pool) -> None:
    await tamper.as_forger(
        admin_pool, "UPDATE event_checkpoints SET position = 41 WHERE position = 40",
        table="event_checkpoints",
    )
    report = await verify_log(admin_pool, SIGNER.public_key)
    assert (report.ok, report.first_bad_position) == (False, 41)
    assert "signature" in (report.problem or "")


async def test_verify_from_checkpoint_checks_only_what_follows(
    log: None, admin_pool: asyncpg.Pool
) -> None:
    report = await verify_log(admin_pool, SIGNER.public_key, from_checkpoint=True)
    assert (report.ok, report.started_from, report.events_checked) == (True, 40, 10)
    await tamper.alter_data(admin_pool, 45, '{"i":0}')
    report = await verify_log(admin_pool, SIGNER.public_key, from_checkpoint=True)
    assert (report.ok, report.first_bad_position) == (False, 45)
