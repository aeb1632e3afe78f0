"""`verify --from-checkpoint` trusts what lies before the newest signed checkpoint, but not that
the log still reaches it: a log cut at or below that checkpoint, or whose event there no longer
gives the signed hash, is refused, never reported OK up to a position it does not hold."""

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
    """30 events over 5 streams, checkpoints signed at positions 10 and 30 (the head)."""
    for i in range(30):
        await pg_store.append(f"case-{i % 5}", i // 5, [NewEvent("Noted", {"i": i})])
        if i + 1 in (10, 30):
            await write_checkpoint(admin_pool, SIGNER)
    yield


@pytest.mark.parametrize("after", [29, 25])
async def test_a_log_cut_below_its_newest_checkpoint_is_refused_from_the_checkpoint(
    log: None, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, after: int
) -> None:
    await tamper.delete_tail(admin_pool, after)
    whole = await verify_log(pool, SIGNER.public_key)
    assert (whole.ok, whole.first_bad_position) == (False, after + 1), whole
    report = await verify_log(pool, SIGNER.public_key, from_checkpoint=True)
    assert not report.ok, report
    assert report.first_bad_position == after + 1
    assert "signed checkpoint at position 30" in (report.problem or "")
    assert f"position {after}" in (report.problem or "")


async def test_the_event_under_the_newest_checkpoint_altered_is_refused_from_it(
    log: None, pool: asyncpg.Pool, admin_pool: asyncpg.Pool
) -> None:
    """The event the checkpoint signs is the checkpoint's own: not something before it."""
    await tamper.alter_data(admin_pool, 30, '{"i":0}')
    report = await verify_log(pool, SIGNER.public_key, from_checkpoint=True)
    assert (report.ok, report.first_bad_position) == (False, 30), report
    assert "content" in (report.problem or "")


async def test_an_untouched_log_still_verifies_from_its_newest_checkpoint(
    log: None, pool: asyncpg.Pool
) -> None:
    report = await verify_log(pool, SIGNER.public_key, from_checkpoint=True)
    assert (report.ok, report.started_from, report.head_position) == (True, 30, 30), report
