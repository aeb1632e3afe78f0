"""Shared pieces of the audit integration tests: simulated cases appended through the real
store (commands of several cases interleaved), checkpoints (one dated later, as a checkpointer
running then would sign it), and a forger's insert."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from bench.projections import metadata_of
from shared.contracts.envelope import NewEvent, canonical_bytes, canonical_time, chain_hash
from shared.contracts.registry import to_new_event
from shared.eventstore.checkpoints import Checkpoint, CheckpointSigner, write_checkpoint
from shared.eventstore.postgres import PostgresEventStore
from shared.settings import DEV_SIGNING_KEY
from tests.tamper import as_forger
from tests.unit.audit.histories import simulate

SIGNER = CheckpointSigner(DEV_SIGNING_KEY)


async def seed(store: PostgresEventStore, admin: asyncpg.Pool, *, seed: int = 11,
               cases: int = 4, checkpoint_every: int = 2) -> list[uuid.UUID]:
    """Append ``cases`` simulated lives, interleaved command by command; sign a checkpoint
    every ``checkpoint_every`` rounds and at the end."""
    lives = simulate(seed, cases)
    ids = [life[0][0].case_id for life in lives]
    for step in range(max(len(life) for life in lives)):
        for life in lives:
            if step < len(life):
                command, events = life[step]
                meta = metadata_of(command, uuid.uuid4().hex)
                await store.append(f"case-{command.case_id}", None, [
                    to_new_event(e, metadata=meta, occurred_at=e.at)
                    for e in events])
        if step % checkpoint_every == checkpoint_every - 1:
            await write_checkpoint(admin, SIGNER)
    await write_checkpoint(admin, SIGNER)
    return ids


async def sign_at(store: PostgresEventStore, admin: asyncpg.Pool,
                  signed_at: datetime) -> Checkpoint:
    """Append one event (a note on a new case, of no unit) and sign a checkpoint over it dated
    ``signed_at``, after the newest one: what the checkpointer would sign then (a unit export's
    window is closed by a checkpoint signed a margin after it ends; tests do not wait)."""
    await store.append(f"case-{uuid.uuid4()}", None, [NewEvent("Noted", {"i": 0})])
    head = await admin.fetchrow("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
    last = await admin.fetchrow(
        "SELECT position, hash FROM event_checkpoints ORDER BY position DESC LIMIT 1")
    assert head is not None and last is not None
    cp = SIGNER.sign(head["position"], head["hash"], signed_at, last["position"], last["hash"])
    await admin.execute(
        "INSERT INTO event_checkpoints (position, hash, signed_at, key_id, signature, format, "
        "prev_position, prev_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", cp.position,
        cp.hash, cp.signed_at, cp.key_id, cp.signature, cp.format, cp.prev_position,
        cp.prev_hash)
    return cp


async def forged_row(admin: asyncpg.Pool, position: int, prev_hash: str) -> tuple[Any, ...]:
    """A plausible event (a note on a new case stream) for ``position``, hashed onto
    ``prev_hash`` as a careful forger would."""
    event_id, stream = uuid.uuid4(), f"case-{uuid.uuid4()}"
    occurred = recorded = await admin.fetchval("SELECT now()")
    data = '{"note":"forged"}'
    meta = '{"actor_id":"forger"}'
    digest = chain_hash(prev_hash, canonical_bytes(position, stream, 1, str(event_id),
                                                   "NoteAdded", 1, canonical_time(occurred),
                                                   canonical_time(recorded), meta, data))
    return (position, stream, 1, event_id, "NoteAdded", 1, data, meta, occurred, recorded,
            prev_hash, digest)


_INSERT = ("INSERT INTO events (position, stream_id, version, event_id, type, schema_version, "
           "data, metadata, occurred_at, recorded_at, prev_hash, hash) VALUES ($1, $2, $3, $4, "
           "$5, $6, $7::json, $8::json, $9, $10, $11, $12)")


async def insert_forged(admin: asyncpg.Pool, position: int, *, careful: bool) -> None:
    """As superuser with the triggers off: shift every event from ``position`` up by one and
    insert a forged one there. ``careful``: its hash is computed onto the real chain; else it
    carries a made-up hash."""
    prev = str(await admin.fetchval("SELECT hash FROM events WHERE position = $1",
                                    position - 1))
    row = list(await forged_row(admin, position, prev))
    if not careful:
        row[-1] = "f" * 64
    await as_forger(admin, "UPDATE events SET position = position + 1000000 "
                           "WHERE position >= $1", position)
    await as_forger(admin, "UPDATE events SET position = position - 999999 "
                           "WHERE position >= 1000000")
    await as_forger(admin, _INSERT, *row)
