"""Verify the log: recompute the hash chain from genesis (or from a signed checkpoint) and check
every checkpoint's signature and hash. Names the first position where anything no longer holds.

Anyone can recompute a hash chain, so a thorough forger could rewrite every hash after a change;
signed checkpoints are what pins the chain down. Events after the last checkpoint are held only
by the chain until the next checkpoint is signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.contracts.envelope import CANONICAL_FORMAT, GENESIS_HASH
from shared.eventstore.checkpoints import Checkpoint, read_checkpoints, signature_valid

_ISO = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
# PostgreSQL assembles each event's canonical bytes (envelope.canonical_bytes, same format);
# Python recomputes the hash from them. What is hashed is still exactly what is stored.
_READ = f"""
SELECT position, stream_id, prev_hash, hash,
       convert_to(concat_ws(E'\\n', '{CANONICAL_FORMAT}', position, stream_id, version,
                            event_id, type, schema_version, {_ISO.format("occurred_at")},
                            {_ISO.format("recorded_at")}, metadata::text, data::text), 'UTF8')
FROM events WHERE position > $1 ORDER BY position LIMIT $2
"""

Progress = Callable[[int, int], None]  # (checked so far, head position)


@dataclass
class VerifyReport:
    ok: bool = True
    events_checked: int = 0
    head_position: int = 0
    head_hash: str = GENESIS_HASH
    started_from: int = 0
    checkpoints_checked: int = 0
    first_bad_position: int | None = None
    stream_id: str | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    def fail(self, position: int, stream_id: str | None, problem: str) -> VerifyReport:
        self.ok = False
        self.first_bad_position = position
        self.stream_id = stream_id
        self.problem = problem
        return self


async def verify_log(
    pool: asyncpg.Pool,
    public_key: Ed25519PublicKey | None,
    *,
    from_checkpoint: bool = False,
    batch_size: int = 20_000,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check the chain and checkpoints. ``from_checkpoint`` starts at the latest checkpoint whose
    signature holds (its hash is then trusted for everything before it)."""
    report = VerifyReport()
    checkpoints = await read_checkpoints(pool) if public_key is not None else []
    for cp in checkpoints:
        if not signature_valid(cp, public_key):  # type: ignore[arg-type]
            return report.fail(cp.position, None,
                               f"checkpoint at position {cp.position} has an invalid signature")
    pending = {cp.position: cp for cp in checkpoints}
    position, prev = 0, GENESIS_HASH
    if from_checkpoint and checkpoints:
        start: Checkpoint = checkpoints[-1]
        position, prev = start.position, start.hash
        report.started_from = start.position
        report.checkpoints_checked += 1
        pending = {p: cp for p, cp in pending.items() if p > start.position}
    elif from_checkpoint:
        report.notes.append("no checkpoint yet: verified from genesis")
    last_good_checkpoint = position
    total = await pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
    sha256 = hashlib.sha256
    async with pool.acquire() as conn:
        read = await conn.prepare(_READ)
        while True:
            rows = await read.fetch(position, batch_size)
            if not rows:
                break
            for pos, stream, prev_hash, digest, body in rows:
                position += 1
                if pos != position:
                    return report.fail(position, None, f"event at position {position} is missing"
                                       f" (the next stored position is {pos})")
                if prev_hash != prev:
                    return report.fail(pos, stream, "prev_hash does not match the hash of the "
                                       "event before it (an event was removed or reordered)")
                if sha256(prev.encode() + body).hexdigest() != digest:
                    return report.fail(pos, stream, "the event's content no longer matches its "
                                       "hash (data, metadata or envelope was altered)")
                prev = digest
                if pos in pending:
                    cp = pending.pop(pos)
                    if cp.hash != digest:
                        return report.fail(pos, stream, f"the chain at position {pos} differs "
                                           "from the signed checkpoint there: history after "
                                           f"position {last_good_checkpoint} was rewritten")
                    report.checkpoints_checked += 1
                    last_good_checkpoint = pos
            report.events_checked += len(rows)
            if progress is not None:
                progress(position, total)
    report.head_position, report.head_hash = position, prev
    if pending:
        first = min(pending)
        return report.fail(position + 1, None, f"signed checkpoint at position {first} lies "
                           f"beyond the end of the log (position {position}): events were removed")
    return report
