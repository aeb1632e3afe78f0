"""Verification finds every kind of tampering at the right position, however the log is cut
into ranges (one range, or ranges of 7 events that start and end around the checkpoints)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from shared.contracts.envelope import GENESIS_HASH, NewEvent
from shared.eventstore import verify
from shared.eventstore.checkpoints import (
    CheckpointSigner,
    CheckpointsRolledBack,
    Witness,
    compare_witness,
    read_checkpoints,
    run_checkpointer,
    write_checkpoint,
)
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.eventstore.verify import verify_log
from shared.settings import DEV_SIGNING_KEY
from tests import tamper
from tests.conftest import Db
from tests.integration.audit.support import seed

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


@pytest.fixture(params=[2_000, 7], ids=["one-range", "ranges-of-7"])
def batch(request: pytest.FixtureRequest) -> int:
    return int(request.param)


async def stream_of(admin: asyncpg.Pool, position: int) -> str:
    return str(await admin.fetchval("SELECT stream_id FROM events WHERE position = $1", position))


async def test_untouched_log_verifies(log: None, pool: asyncpg.Pool) -> None:
    report = await verify_log(pool, SIGNER.public_key)
    assert report.ok, report
    assert (report.events_checked, report.head_position, report.checkpoints_checked) == (50, 50, 2)


async def test_altered_data_is_found_at_its_position(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    stream = await stream_of(admin_pool, 17)
    await tamper.alter_data(admin_pool, 17, '{"i":99,"说明":"材料齐全"}')
    report = await verify_log(admin_pool, SIGNER.public_key, batch_size=batch)
    assert not report.ok
    assert (report.first_bad_position, report.stream_id) == (17, stream)
    assert "content" in (report.problem or "")


async def test_deleted_event_is_found(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    await tamper.delete_event(admin_pool, 33)
    report = await verify_log(admin_pool, SIGNER.public_key, batch_size=batch)
    assert (report.ok, report.first_bad_position) == (False, 33)
    assert "missing" in (report.problem or "")


async def test_swapped_events_are_found_at_the_first(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    await tamper.swap_events(admin_pool, 12, 30)
    report = await verify_log(admin_pool, SIGNER.public_key, batch_size=batch)
    assert (report.ok, report.first_bad_position) == (False, 12)


async def test_rewritten_chain_is_caught_by_the_signed_checkpoint(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    await tamper.alter_data(admin_pool, 25, '{"i":0}')
    await tamper.rewrite_chain_from(admin_pool, 25)
    report = await verify_log(admin_pool, SIGNER.public_key, batch_size=batch)
    assert (report.ok, report.first_bad_position) == (False, 40)
    assert "after position 20" in (report.problem or "")
    # without checkpoints the forgery holds
    unsigned = await verify_log(admin_pool, None, batch_size=batch)
    assert unsigned.ok


async def test_removed_tail_is_caught_by_a_later_checkpoint(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    for position in range(50, 38, -1):
        await tamper.delete_event(admin_pool, position)
    report = await verify_log(admin_pool, SIGNER.public_key, batch_size=batch)
    assert not report.ok and "beyond the end" in (report.problem or "")


async def relay_published(pool: asyncpg.Pool, position: int, relay: str = "main") -> None:
    """As the relay records it after the broker acknowledged everything up to ``position``."""
    await pool.execute("INSERT INTO relay_positions (relay, position) VALUES ($1, $2) "
                       "ON CONFLICT (relay) DO UPDATE SET position = $2", relay, position)


async def consumer_applied(pool: asyncpg.Pool, position: int, scope: str = "case.events/0"
                           ) -> None:
    """As an idempotent consumer records it with the writes of the events it applied."""
    await pool.execute("INSERT INTO consumer_positions (consumer, scope, position) "
                       "VALUES ('projections', $1, $2)", scope, position)


async def test_a_log_at_or_beyond_what_the_relay_and_consumers_recorded_verifies(
    log: None, pool: asyncpg.Pool
) -> None:
    await relay_published(pool, 50)
    await consumer_applied(pool, 44)
    report = await verify_log(pool, SIGNER.public_key)
    assert (report.ok, report.verdict, report.recorded_position) == (True, "OK", 50), report


async def test_a_tail_cut_after_the_last_checkpoint_is_found_against_the_relay(
    log: None, pool: asyncpg.Pool, admin_pool: asyncpg.Pool, batch: int
) -> None:
    """Events 48..50 come after the last checkpoint (40): the chain that is left holds, but
    the relay had published up to 50."""
    await relay_published(pool, 50)
    await tamper.delete_tail(admin_pool, 47)
    report = await verify_log(pool, SIGNER.public_key, batch_size=batch)
    assert not report.ok, report
    assert (report.verdict, report.first_bad_position) == ("TRUNCATED", 48)
    assert "relay 'main' published up to position 50" in (report.problem or "")
    assert "48..50" in (report.problem or "")
    from_checkpoint = await verify_log(pool, SIGNER.public_key, from_checkpoint=True,
                                       batch_size=batch)
    assert (from_checkpoint.ok, from_checkpoint.verdict) == (False, "TRUNCATED")


async def test_a_tail_cut_below_a_consumers_position_is_found(
    log: None, pool: asyncpg.Pool, admin_pool: asyncpg.Pool
) -> None:
    await relay_published(pool, 45)
    await consumer_applied(pool, 49, "case.events/2")
    await tamper.delete_tail(admin_pool, 46)
    report = await verify_log(pool, SIGNER.public_key)
    assert not report.ok, report
    assert (report.verdict, report.first_bad_position) == ("TRUNCATED", 47)
    assert "consumer 'projections' (case.events/2) applied position 49" in (report.problem or "")


async def test_each_checkpoint_signs_the_one_before_it(log: None, pool: asyncpg.Pool) -> None:
    first, second = await read_checkpoints(pool)
    assert (first.format, first.prev_position, first.prev_hash) == (2, 0, GENESIS_HASH)
    assert (second.format, second.prev_position, second.prev_hash) == (2, 20, first.hash)


async def test_signers_at_the_same_time_each_sign_after_the_newest_checkpoint(
    pg_store: PostgresEventStore, pool: asyncpg.Pool
) -> None:
    """Several relays sign while the log grows: one at a time, so no two checkpoints name the
    same predecessor (else removing one of them would not show)."""
    async def append_and_sign(i: int, version: int) -> None:
        await pg_store.append(f"case-{i}", version, [NewEvent("Noted", {"i": i})])
        await write_checkpoint(pool, SIGNER)

    for version in range(10):
        await asyncio.gather(*(append_and_sign(i, version) for i in range(8)))
    signed = await read_checkpoints(pool)
    assert len(signed) > 5
    assert [cp.prev_position for cp in signed] == [0, *(cp.position for cp in signed[:-1])]
    assert (await verify_log(pool, SIGNER.public_key)).ok


async def test_a_checkpoint_removed_from_before_the_newest_is_found(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    """Nothing else is touched: the log still holds, but the checkpoint at 40 was signed after
    one at 20 that the table no longer has."""
    await tamper.delete_checkpoints(admin_pool, 20)
    report = await verify_log(admin_pool, SIGNER.public_key, batch_size=batch)
    assert not report.ok, report
    assert report.first_bad_position == 20 and "removed" in (report.problem or "")
    from_checkpoint = await verify_log(admin_pool, SIGNER.public_key, from_checkpoint=True,
                                       batch_size=batch)
    assert (from_checkpoint.ok, from_checkpoint.first_bad_position) == (False, 20)


async def test_checkpoints_signed_before_they_were_chained_still_verify(
    pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    """A store with format 1 checkpoints (position, hash, time) goes on with format 2 ones;
    the first of those names the last format 1 one, so removing it shows."""
    for i in range(30):
        await pg_store.append(f"case-{i % 3}", i // 3, [NewEvent("Noted", {"i": i})])
        if i + 1 in (10, 20):
            head = await pool.fetchrow("SELECT position, hash, now() FROM events "
                                       "ORDER BY position DESC LIMIT 1")
            assert head is not None
            old = SIGNER.sign(head[0], head[1], head[2], format_=1)
            await pool.execute("INSERT INTO event_checkpoints (position, hash, signed_at, key_id,"
                               " signature) VALUES ($1, $2, $3, $4, $5)", old.position,
                               old.hash, old.signed_at, old.key_id, old.signature)
    new = await write_checkpoint(pool, SIGNER)
    assert new is not None and (new.format, new.prev_position) == (2, 20)
    assert [cp.format for cp in await read_checkpoints(pool)] == [1, 1, 2]
    report = await verify_log(pool, SIGNER.public_key)
    assert (report.ok, report.checkpoints_checked) == (True, 3), report
    await tamper.delete_checkpoints(admin_pool, 20)
    report = await verify_log(pool, SIGNER.public_key)
    assert (report.ok, report.first_bad_position) == (False, 20)


async def test_a_signer_refuses_to_sign_once_its_last_checkpoint_is_gone(
    log: None, pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    """Rewrite the log after the checkpoint at 40 and remove the newest one (50), which no
    later checkpoint names: the log and its checkpoints hold again, and the relay's position
    (50) is not above the head. Only what the signer remembers (kept outside the database)
    tells: it refuses to sign the forged head after the checkpoint at 40."""
    newest = await write_checkpoint(pool, SIGNER)
    assert newest is not None and newest.position == 50
    await relay_published(pool, 50)
    await tamper.alter_data(admin_pool, 45, '{"i":0}')
    await tamper.rewrite_chain_from(admin_pool, 45)
    await tamper.delete_checkpoints(admin_pool, 50)
    await pg_store.append("case-0", 5, [NewEvent("Noted", {"i": 50})])
    with pytest.raises(CheckpointsRolledBack, match="position 50 is gone"):
        await write_checkpoint(pool, SIGNER, after=newest)
    assert [cp.position for cp in await read_checkpoints(pool)] == [20, 40]


async def test_a_signer_refuses_to_sign_once_the_event_its_checkpoint_covers_changed(
    log: None, admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    newest = await write_checkpoint(pool, SIGNER)
    assert newest is not None
    await tamper.alter_data(admin_pool, 50, '{"i":0}')
    await tamper.rewrite_chain_from(admin_pool, 50)
    with pytest.raises(CheckpointsRolledBack, match="no longer covers"):
        await write_checkpoint(pool, SIGNER, after=newest)


async def test_the_checkpointer_stops_signing_once_its_last_checkpoint_is_gone(
    pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    stop = asyncio.Event()
    signer = asyncio.create_task(run_checkpointer(pool, SIGNER, 1, 0.05, stop))
    try:
        await pg_store.append("case-a", 0, [NewEvent("Noted", {"i": 1})])
        await until(lambda: pool.fetchval("SELECT max(position) FROM event_checkpoints"), 1)
        await pg_store.append("case-a", 1, [NewEvent("Noted", {"i": 2})])
        await until(lambda: pool.fetchval("SELECT max(position) FROM event_checkpoints"), 2)
        await tamper.delete_checkpoints(admin_pool, 2)
        await pg_store.append("case-a", 2, [NewEvent("Noted", {"i": 3})])
        await asyncio.sleep(0.5)
        assert [cp.position for cp in await read_checkpoints(pool)] == [1]
    finally:
        stop.set()
        await signer


async def until(read: Callable[[], Awaitable[object]], want: object, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await read() != want:
        assert asyncio.get_running_loop().time() < deadline, f"never reached {want!r}"
        await asyncio.sleep(0.02)


async def test_forged_checkpoint_signature_is_found(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    await tamper.as_forger(
        admin_pool, "UPDATE event_checkpoints SET position = 41 WHERE position = 40",
        table="event_checkpoints",
    )
    report = await verify_log(admin_pool, SIGNER.public_key, batch_size=batch)
    assert (report.ok, report.first_bad_position) == (False, 41)
    assert "signature" in (report.problem or "")


async def test_verify_from_checkpoint_checks_only_what_follows(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    report = await verify_log(admin_pool, SIGNER.public_key, from_checkpoint=True,
                              batch_size=batch)
    assert (report.ok, report.started_from, report.events_checked) == (True, 40, 10)
    await tamper.alter_data(admin_pool, 45, '{"i":0}')
    report = await verify_log(admin_pool, SIGNER.public_key, from_checkpoint=True,
                              batch_size=batch)
    assert (report.ok, report.first_bad_position) == (False, 45)


@pytest.mark.parametrize("batch_size", [1, 3, 19, 20, 21, 49, 50, 2_000])
async def test_any_range_size_checks_every_event_and_checkpoint(
    log: None, pool: asyncpg.Pool, batch_size: int
) -> None:
    seen: list[tuple[int, int]] = []
    report = await verify_log(pool, SIGNER.public_key, batch_size=batch_size,
                              progress=lambda done, total: seen.append((done, total)))
    assert report.ok, report
    assert (report.events_checked, report.head_position, report.checkpoints_checked) == (50, 50, 2)
    assert seen and seen[-1] == (50, 50)


async def test_a_pool_of_one_connection_verifies_too(log: None, database: Db) -> None:
    one = await create_pool(database.service_dsn, min_size=1, max_size=1)
    try:
        report = await verify_log(one, SIGNER.public_key, batch_size=7)
    finally:
        await one.close()
    assert report.ok and report.events_checked == 50, report


async def test_a_hash_rewritten_in_capitals_is_found(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    """Same digest, other letters: the stored text is what the chain holds, so it fails."""
    await tamper.as_forger(admin_pool, "UPDATE events SET hash = upper(hash) WHERE position = 17")
    report = await verify_log(admin_pool, SIGNER.public_key, batch_size=batch)
    assert (report.ok, report.first_bad_position) == (False, 17)
    assert "content" in (report.problem or "")


async def test_a_null_smuggled_into_an_event_is_found(
    log: None, admin_pool: asyncpg.Pool, batch: int
) -> None:
    await tamper.as_forger(admin_pool, "ALTER TABLE events ALTER COLUMN metadata DROP NOT NULL")
    await tamper.as_forger(admin_pool, "UPDATE events SET metadata = NULL WHERE position = 17")
    report = await verify_log(admin_pool, SIGNER.public_key, batch_size=batch)
    assert (report.ok, report.first_bad_position) == (False, 17)
    assert "content" in (report.problem or "")


async def test_an_untouched_log_never_needs_the_event_by_event_check(
    pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL's canonical bytes are byte for byte the writer's (real domain events: Chinese
    text, nested metadata), so every range holds as a whole and nothing is read twice."""
    await seed(pg_store, admin_pool)
    reread: list[int] = []
    take_rows = verify._Chain.take_rows

    def spy(chain: verify._Chain, rows: list[asyncpg.Record]) -> bool:
        reread.append(len(rows))
        return take_rows(chain, rows)

    monkeypatch.setattr(verify._Chain, "take_rows", spy)
    for batch_size in (7, 2_000):
        report = await verify_log(pool, SIGNER.public_key, batch_size=batch_size)
        assert report.ok and report.checkpoints_checked >= 3, report
    assert reread == []


@pytest.fixture
async def witnessed(pg_store: PostgresEventStore, admin_pool: asyncpg.Pool,
                    tmp_path: Path) -> Witness:
    """The log of ``log``, its checkpoints (20, 40) also copied to a witness file."""
    witness = Witness(tmp_path / "witness.jsonl")
    for i in range(50):
        await pg_store.append(f"case-{i % 10}", i // 10, [NewEvent("Noted", {"i": i})])
        if i + 1 in (20, 40):
            await write_checkpoint(admin_pool, SIGNER, witness=witness)
    return witness


async def test_the_witness_holds_every_checkpoint_and_an_untouched_log_agrees(
    witnessed: Witness, admin_pool: asyncpg.Pool
) -> None:
    assert [(c.position, c.format) for c in witnessed.read()] == [(20, 2), (40, 2)]
    assert await compare_witness(admin_pool, witnessed.read(), SIGNER.public_key) is None


async def test_a_rewrite_whose_newest_checkpoint_was_deleted_passes_verify_but_not_the_witness(
    witnessed: Witness, admin_pool: asyncpg.Pool
) -> None:
    await tamper.alter_data(admin_pool, 25, '{"i":0}')
    await tamper.rewrite_chain_from(admin_pool, 25)
    await tamper.delete_checkpoints(admin_pool, 40)
    assert (await verify_log(admin_pool, SIGNER.public_key)).ok  # the database alone: fooled
    differs = await compare_witness(admin_pool, witnessed.read(), SIGNER.public_key)
    assert differs is not None and differs[0] == 40 and "rewritten" in differs[1]


async def test_a_tail_cut_with_its_checkpoint_shows_against_the_witness(
    witnessed: Witness, admin_pool: asyncpg.Pool
) -> None:
    await tamper.delete_checkpoints(admin_pool, 40)
    await tamper.delete_tail(admin_pool, 30)
    assert (await verify_log(admin_pool, SIGNER.public_key)).ok
    differs = await compare_witness(admin_pool, witnessed.read(), SIGNER.public_key)
    assert differs == (40, "the event at position 40, which the witness saw signed, is gone "
                           "from the log")


async def test_a_witness_line_that_was_not_signed_is_refused(
    witnessed: Witness, admin_pool: asyncpg.Pool
) -> None:
    lines = witnessed.path.read_text().splitlines()
    lines[0] = lines[0].replace('"position":20', '"position":21')
    witnessed.path.write_text("\n".join(lines) + "\n")
    differs = await compare_witness(admin_pool, witnessed.read(), SIGNER.public_key)
    assert differs is not None and differs[0] == 21 and "invalid signature" in differs[1]
