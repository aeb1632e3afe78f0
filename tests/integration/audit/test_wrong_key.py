"""A public key other than the one the checkpoints name (a mistyped ``--public-key``, the
development key against production checkpoints, or checkpoints re-signed with another key) is
said as such, with both key ids: not only "invalid signature", which reads as an altered
checkpoint. The verdict stays a failure: under the key given, nothing is proven."""

from __future__ import annotations

import base64
from pathlib import Path

import asyncpg

from shared.audit import export_case, verify_export
from shared.eventstore.checkpoints import CheckpointSigner, public_key_id
from shared.eventstore.postgres import PostgresEventStore
from shared.eventstore.verify import verify_log
from tests.integration.audit.support import SIGNER, seed

OTHER = CheckpointSigner(base64.b64encode(bytes(range(32))).decode())


def names_both_keys(problem: str | None) -> bool:
    return (problem is not None and SIGNER.key_id in problem
            and public_key_id(OTHER.public_key) in problem and "key" in problem)


async def test_the_log_verified_with_another_key_says_which_keys(
    pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    await seed(pg_store, admin_pool, cases=1)
    assert (await verify_log(pool, SIGNER.public_key)).ok
    report = await verify_log(pool, OTHER.public_key)
    assert not report.ok
    assert names_both_keys(report.problem), report.problem


async def test_an_export_verified_with_another_key_says_which_keys(
    pg_store: PostgresEventStore, admin_pool: asyncpg.Pool, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    case = (await seed(pg_store, admin_pool, cases=1))[0]
    path = tmp_path / "case.jsonl"
    await export_case(pool, case, path)
    assert verify_export(path, SIGNER.public_key).ok
    report = verify_export(path, OTHER.public_key)
    assert not report.ok
    assert names_both_keys(report.problem), report.problem
