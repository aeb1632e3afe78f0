"""What a malicious superuser could do to the log, with the immutability triggers disabled.
Used by tests to prove that verification notices."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.contracts.envelope import canonical_bytes, canonical_time, chain_hash

_DISABLE = "ALTER TABLE {t} DISABLE TRIGGER USER"
_ENABLE = "ALTER TABLE {t} ENABLE TRIGGER USER"


async def as_forger(admin: asyncpg.Pool, sql: str, *args: Any, table: str = "events") -> None:
    async with admin.acquire() as conn, conn.transaction():
        await conn.execute(_DISABLE.format(t=table))
        await conn.execute(sql, *args)
        await conn.execute(_ENABLE.format(t=table))


async def alter_data(admin: asyncpg.Pool, position: int, data: str) -> None:
    await as_forger(admin, "UPDATE events SET data = $2::json WHERE position = $1", position, data)


async def delete_event(admin: asyncpg.Pool, position: int) -> None:
    await as_forger(admin, "DELETE FROM events WHERE position = $1", position)


async def swap_events(admin: asyncpg.Pool, a: int, b: int) -> None:
    """Exchange the positions of two rows (everything else moves with its row)."""
    async with admin.acquire() as conn, conn.transaction():
        await conn.execute(_DISABLE.format(t="events"))
        await conn.execute("UPDATE events SET position = 1000000000 WHERE position = $1", a)
        await conn.execute("UPDATE events SET position = $1 WHERE position = $2", a, b)
        await conn.execute("UPDATE events SET position = $1 WHERE position = 1000000000", b)
        await conn.execute(_ENABLE.format(t="events"))


async def rewrite_chain_from(admin: asyncpg.Pool, position: int) -> None:
    """Recompute every hash from ``position`` on, as a forger covering their tracks would."""
    async with admin.acquire() as conn, conn.transaction():
        await conn.execute(_DISABLE.format(t="events"))
        prev = await conn.fetchval("SELECT hash FROM events WHERE position = $1", position - 1)
        rows = await conn.fetch(
            "SELECT position, stream_id, version, event_id::text, type, schema_version,"
            " occurred_at, recorded_at, metadata::text, data::text FROM events"
            " WHERE position >= $1 ORDER BY position", position)
        for r in rows:
            digest = chain_hash(prev, canonical_bytes(
                r[0], r[1], r[2], r[3], r[4], r[5], canonical_time(r[6]), canonical_time(r[7]),
                r[8], r[9]))
            await conn.execute("UPDATE events SET prev_hash = $2, hash = $3 WHERE position = $1",
                               r[0], prev, digest)
            prev = digest
        await conn.execute(_ENABLE.format(t="events"))


async def delete_tail(admin: asyncpg.Pool, after: int) -> None:
    """Remove every event after position ``after`` (cut the log's end)."""
    await as_forger(admin, "DELETE FROM events WHERE position > $1", after)


async def delete_checkpoints(admin: asyncpg.Pool, *positions: int) -> None:
    """Remove the signed checkpoints at ``positions``."""
    await as_forger(admin, "DELETE FROM event_checkpoints WHERE position = ANY($1::bigint[])",
                    list(positions), table="event_checkpoints")
