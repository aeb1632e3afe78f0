"""Data subjects' keys on PostgreSQL: found or created for a whole batch at once, each subject
created once, and a caller that loses the race to create one reads the winner's key."""

from __future__ import annotations

import asyncio

import asyncpg

from services.intake.privacy import KeyVault, Sealer, SubjectKey
from services.intake.settings import IntakeSettings

HASHES = [f"hmac-sha256:{i:064x}" for i in range(5)]


async def test_subjects_are_created_once_and_a_lost_race_reads_the_winners_key(
    pool: asyncpg.Pool,
) -> None:
    vault = KeyVault(pool, Sealer.from_settings(IntakeSettings()))
    first, second = await asyncio.gather(vault.keys_for(HASHES[:3]), vault.keys_for(HASHES))
    assert set(second) == set(HASHES) and all(first[h] == second[h] for h in HASHES[:3])

    real, looked = vault._by_hash, []

    async def blind_at_first(id_hashes: list[str]) -> dict[str, SubjectKey]:
        looked.append(id_hashes)  # the first look misses them all, as if they were new
        return {} if len(looked) == 1 else await real(id_hashes)

    vault._by_hash = blind_at_first  # type: ignore[method-assign]
    again = await vault.keys_for(HASHES)
    assert again == second and looked == [HASHES, HASHES]  # lost every insert, read them all
    assert await pool.fetchval("SELECT count(*) FROM intake_subjects") == len(HASHES)
