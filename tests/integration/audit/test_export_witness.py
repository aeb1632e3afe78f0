"""`yizhan audit export` signs a checkpoint at the head first (so every exported event is
anchored): that checkpoint goes into the witness file like every other, so removing it to
rewrite the log after the one before it shows in `yizhan audit verify`."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from shared.contracts.envelope import NewEvent
from shared.eventstore.checkpoints import Witness, read_checkpoints
from shared.eventstore.postgres import PostgresEventStore
from tests import tamper
from tests.integration.audit.support import seed
from tests.integration.audit.test_cli_mistakes import AUDITOR, WHY, configured, yizhan

__all__ = ["configured"]


async def test_the_checkpoint_an_export_signs_is_witnessed(
        configured: None, pg_store: PostgresEventStore, admin_pool: asyncpg.Pool,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    witness = tmp_path / "witness.jsonl"
    monkeypatch.setenv("YIZHAN_CHECKPOINT_WITNESS_FILE", str(witness))
    case = (await seed(pg_store, admin_pool, cases=1))[0]
    head = (await pg_store.append(f"case-{uuid.uuid4()}", None,
                                  [NewEvent("Noted", {"i": 1})])).position
    code, out, err = await yizhan(capsys, "audit", "export", "--case", str(case), "-o",
                                  str(tmp_path / "case.jsonl"), "--by", AUDITOR, "--reason", WHY)
    assert code in (0, None), err
    assert head in [cp.position for cp in await read_checkpoints(admin_pool)]
    assert head in [cp.position for cp in Witness(witness).read()]

    # The forger rewrites the event the export's checkpoint signs and removes that checkpoint
    # (the newest: no later one names it). Only the witness still knows it.
    await tamper.alter_data(admin_pool, head, '{"i":2}')
    await tamper.rewrite_chain_from(admin_pool, head)
    await tamper.delete_checkpoints(admin_pool, head)
    code, out, err = await yizhan(capsys, "audit", "verify")
    assert code == 1, out + err
    assert out.startswith(f"TAMPERED at position {head}:"), out
