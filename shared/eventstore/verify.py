"""Verify the log: recompute the hash chain from genesis (or from a signed checkpoint) and check
every checkpoint's signature and hash, and that no checkpoint a later one names (format 2:
``checkpoints.chain_break``) is gone. Names the first position where anything no longer holds.

Anyone can recompute a hash chain, so a thorough forger could rewrite every hash after a change;
signed checkpoints are what pins the chain down. Events after the last checkpoint are held only
by the chain until the next checkpoint is signed; removing them (cutting the tail) leaves a
chain that holds, so the head is also held against what other durable records say the log
reached: the relay's published position (``relay_positions``, ``relay_partition_offsets``) and
every idempotent consumer's applied position (``consumer_positions``: log positions too). A
log that ends below any of them was truncated. Those records live in the same database, so a
forger who also lowers them is not caught here: only something outside the database can tell,
such as the witness file of the signed checkpoints (``checkpoints.compare_witness``, which
`yizhan audit verify` runs after this).

How it goes fast: PostgreSQL assembles each event's canonical bytes, a range of events (4,000)
at a time in pieces of 200, each piece one row; two connections each build a range while Python
hashes the one before, a piece at a time (taking in what arrives between pieces). Python
recomputes every hash from those bytes and checks each piece as a whole. A piece that does not
hold, in any way, is read again event by event from its start by the plain per-event check,
which names the first bad position: the same checks, the same words.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.contracts.envelope import CANONICAL_FORMAT, GENESIS_HASH
from shared.eventstore.checkpoints import (
    Checkpoint,
    chain_break,
    read_checkpoints,
    signature_problem,
)

# envelope.canonical_time: whole microseconds since the Unix epoch (extract is exact numeric,
# and about half the cost of writing the timestamp as text, which was a fifth of the whole)
_MICROS = "(extract(epoch FROM {}) * 1000000)::bigint"
# PostgreSQL assembles each event's canonical bytes (envelope.canonical_bytes, same format);
# Python recomputes the hash from them. What is hashed is still exactly what is stored.
_CANONICAL = f"""concat_ws(E'\\n', '{CANONICAL_FORMAT}', position, stream_id, version, event_id,
                          type, schema_version, {_MICROS.format("occurred_at")},
                          {_MICROS.format("recorded_at")}, metadata::text, data::text)"""
# Event by event: the reference check, from the first piece that does not hold (and for
# whatever was appended after verification started).
_READ = f"""
SELECT position, stream_id, prev_hash, hash, convert_to({_CANONICAL}, 'UTF8')
FROM events WHERE position > $1 ORDER BY position LIMIT $2
"""
# The events in (lo, hi] in pieces (lo, lo + _PIECE], (lo + _PIECE, lo + 2 * _PIECE], ..., one
# row each: the piece's positions, its prev hashes and hashes (comma-separated), and for each
# event what its hash covers, prev_hash || canonical bytes (a NULL, impossible unless forged,
# fails the piece); textsend gives the text in the client's encoding, which asyncpg always sets
# to UTF-8 (so: convert_to(..., 'UTF8'), minus looking the encoding up by name for each event).
# All aggregates take the rows in one order; the positions say which (Python checks them).
# Pieces stay small (~200 kB) so that neither side keeps mapping fresh memory for them; 200
# events a piece beat 100 (5-15% more events/s here: fewer rows, fewer index descents) and 400.
_PIECE = 200
_READ_RANGE = f"""
SELECT p.* FROM generate_series($1::bigint, $2::bigint - 1, {_PIECE}) AS g(lo), LATERAL (
  SELECT array_agg(position), string_agg(prev_hash, ','), string_agg(hash, ','),
         array_agg(textsend(prev_hash || {_CANONICAL}))
  FROM (SELECT * FROM events WHERE position > g.lo AND position <= least(g.lo + {_PIECE}, $2)
        ORDER BY position) AS e) AS p
"""
_HEAD = "SELECT coalesce(max(position), 0) FROM events"
# The furthest position another durable record says the log reached (read before the head:
# whatever they name was in the log when verification began).
_RECORDED = """
SELECT what, position FROM (
  SELECT format('the relay %L published up to', relay) AS what, position FROM relay_positions
  UNION ALL
  SELECT format('the relay %L saw partition %s of %L acknowledge', relay, partition, topic),
         position FROM relay_partition_offsets
  UNION ALL
  SELECT format('the consumer %L (%s) applied', consumer, scope), position
  FROM consumer_positions
) AS r ORDER BY position DESC, what LIMIT 1
"""
_LANES = 2  # ranges in flight, one per connection (when the pool allows two)

_sha256 = hashlib.sha256
_digest = type(_sha256()).digest

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
    verdict: str = "OK"  # OK, TAMPERED, or TRUNCATED (the log ends below a durable record)
    recorded_position: int = 0  # the furthest position another durable record names
    recorded_by: str | None = None  # which record (a relay, a consumer)

    def fail(self, position: int, stream_id: str | None, problem: str,
             verdict: str = "TAMPERED") -> VerifyReport:
        self.ok = False
        self.verdict = verdict
        self.first_bad_position = position
        self.stream_id = stream_id
        self.problem = problem
        return self


@dataclass
class _Chain:
    """How far the log has been verified: the last good position and its hash, the signed
    checkpoints not reached yet, and the last one the chain was found to pass through."""

    report: VerifyReport
    position: int
    prev: str
    pending: dict[int, Checkpoint]
    last_good_checkpoint: int
    ahead: list[int] = field(default_factory=list)  # pending's positions, sorted

    def __post_init__(self) -> None:
        self.ahead = sorted(self.pending)

    def take_range(self, row: asyncpg.Record | None, hi: int) -> bool:
        """Move past the events (position, hi] in ``row`` (a piece) if every one of them holds;
        False (and nothing moved) if anything at all is off, for take_rows to name."""
        if row is None or row[0] is None:
            return False
        positions, prevs, hashes, inputs = row
        start, count = self.position, len(positions)
        if count != hi - start or positions != list(range(start + 1, hi + 1)):
            return False  # a hole, or rows out of order
        if None in inputs:
            return False
        digests = b"".join(map(_digest, map(_sha256, inputs)))
        # Equal as text with a comma after every 64 hex digits: every stored hash is exactly the
        # recomputed one (a stored hash of another length, or in capitals, cannot match)
        if digests.hex(",", 32) != hashes:
            return False
        # Each stored prev_hash is the hash before it (so, exactly 64 hex digits: what was
        # hashed above is prev ‖ canonical bytes, as in take_rows; PostgreSQL joined the two)
        if "," in self.prev or prevs != (f"{self.prev},{hashes[:-65]}" if count > 1 else self.prev):
            return False
        due = self.ahead[bisect_right(self.ahead, start):bisect_right(self.ahead, hi)]
        for pos in due:
            at = (pos - start - 1) * 65
            if pos in self.pending and self.pending[pos].hash != hashes[at:at + 64]:
                return False  # the chain differs from the signed checkpoint there
        for pos in due:
            if self.pending.pop(pos, None) is not None:
                self.report.checkpoints_checked += 1
                self.last_good_checkpoint = pos
        self.position, self.prev = hi, hashes[-64:]
        self.report.events_checked += count
        return True

    def take_rows(self, rows: list[asyncpg.Record]) -> bool:
        """The event-by-event check; False once the report names the first bad position."""
        report, pending, sha256 = self.report, self.pending, _sha256
        position, prev = self.position, self.prev
        for pos, stream, prev_hash, digest, body in rows:
            position += 1
            if pos != position:
                report.fail(position, None, f"event at position {position} is missing"
                            f" (the next stored position is {pos})")
                return False
            if prev_hash != prev:
                report.fail(pos, stream, "prev_hash does not match the hash of the event "
                            "before it (an event was removed or reordered)")
                return False
            if sha256(prev.encode() + body).hexdigest() != digest:
                report.fail(pos, stream, "the event's content no longer matches its hash "
                            "(data, metadata or envelope was altered)")
                return False
            prev = digest
            if pos in pending:
                cp = pending.pop(pos)
                if cp.hash != digest:
                    report.fail(pos, stream, f"the chain at position {pos} differs from the "
                                "signed checkpoint there: history after position "
                                f"{self.last_good_checkpoint} was rewritten")
                    return False
                report.checkpoints_checked += 1
                self.last_good_checkpoint = pos
        self.position, self.prev = position, prev
        report.events_checked += len(rows)
        return True


async def verify_log(
    pool: asyncpg.Pool,
    public_key: Ed25519PublicKey | None,
    *,
    from_checkpoint: bool = False,
    batch_size: int = 4_000,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check the chain and checkpoints. ``from_checkpoint`` starts at the latest checkpoint whose
    signature holds (its hash is then trusted for everything before it). ``batch_size`` is the
    most events read at once."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = VerifyReport()
    checkpoints = await read_checkpoints(pool) if public_key is not None else []
    for cp in checkpoints:
        if (why := signature_problem(cp, public_key)) is not None:  # type: ignore[arg-type]
            return report.fail(cp.position, None, f"checkpoint at position {cp.position} {why}")
    if (broken := chain_break(checkpoints)) is not None:
        return report.fail(broken[0], None, broken[1])
    pending = {cp.position: cp for cp in checkpoints}
    position, prev = 0, GENESIS_HASH
    if from_checkpoint and checkpoints:
        start: Checkpoint = checkpoints[-1]
        position, prev = start.position, start.hash
        report.started_from = start.position
        report.checkpoints_checked += 1
        pending = {p: cp for p, cp in pending.items() if p > start.position}
        # Trusted is what lies before the checkpoint, not that the log still reaches it: the
        # event it signs must still be there, and still give the signed hash
        if (problem := await _under_checkpoint(pool, start)) is not None:
            return report.fail(*problem)
    elif from_checkpoint:
        report.notes.append("no checkpoint yet: verified from genesis")
    chain = _Chain(report, position, prev, pending, last_good_checkpoint=position)
    await _read_records(pool, report)
    head = await pool.fetchval(_HEAD)
    # Two connections when two are free right now (never wait on one a caller may be holding)
    free = pool.get_idle_size() + pool.get_max_size() - pool.get_size()
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(pool.acquire())
                 for _ in range(max(1, min(_LANES, free)))]
        ranges = [await conn.prepare(_READ_RANGE) for conn in conns]
        read = await conns[0].prepare(_READ)
        while True:
            await _verify_ranges(ranges, chain, head, batch_size, progress)
            # A range that did not hold, or the end: event by event, for one batch
            rows = await read.fetch(chain.position, batch_size)
            if not rows:
                break
            if not chain.take_rows(rows):
                return report
            if progress is not None:
                progress(chain.position, head)
            if len(rows) == batch_size:  # more after it, maybe appended since verifying began
                head = max(head, await conns[0].fetchval(_HEAD))
    report.head_position, report.head_hash = chain.position, chain.prev
    if chain.pending:
        first = min(chain.pending)
        return report.fail(chain.position + 1, None, f"signed checkpoint at position {first} "
                           f"lies beyond the end of the log (position {chain.position}): "
                           "events were removed")
    if report.recorded_position > chain.position:
        return report.fail(chain.position + 1, None, f"the log ends at position "
                           f"{chain.position}, but {report.recorded_by} position "
                           f"{report.recorded_position}: events {chain.position + 1}.."
                           f"{report.recorded_position} were removed from its end",
                           verdict="TRUNCATED")
    return report


async def _under_checkpoint(pool: asyncpg.Pool,
                            start: Checkpoint) -> tuple[int, str | None, str] | None:
    """(position, stream, problem) if the event ``start`` signs is gone, altered, or not the
    one signed; None if it holds (the start of ``verify_log(from_checkpoint=True)``)."""
    rows = await pool.fetch(_READ, start.position - 1, 1)
    if not rows:
        end = int(await pool.fetchval(_HEAD))
        return (end + 1, None, f"signed checkpoint at position {start.position} lies beyond "
                f"the end of the log (position {end}): events were removed")
    pos, stream, prev_hash, digest, body = rows[0]
    if pos != start.position:
        return (start.position, None, f"event at position {start.position} is missing (the "
                f"next stored position is {pos})")
    if _sha256(prev_hash.encode() + body).hexdigest() != digest:
        return (pos, stream, "the event's content no longer matches its hash (data, metadata "
                "or envelope was altered)")
    if digest != start.hash:
        return (pos, stream, f"the chain at position {pos} differs from the signed checkpoint "
                "there: the event it signs was rewritten")
    return None


async def _read_records(pool: asyncpg.Pool, report: VerifyReport) -> None:
    """The furthest position the relay's and consumers' records name, into ``report``."""
    try:
        row = await pool.fetchrow(_RECORDED)
    except asyncpg.UndefinedTableError as exc:  # a store without the relay's tables
        report.notes.append(f"no relay or consumer positions to hold the head to ({exc})")
        return
    if row is not None:
        report.recorded_by, report.recorded_position = row["what"], int(row["position"])


async def _verify_ranges(statements: list[Any], chain: _Chain, head: int, batch_size: int,
                         progress: Progress | None) -> None:
    """Verify (chain.position, head] range by range, each connection (one statement each)
    building the next range while this one is hashed; stops at the first that does not hold."""
    in_flight: deque[tuple[int, int, asyncio.Future[Any]]] = deque()
    span, issued = min(batch_size, 500), chain.position  # a short first range: start sooner

    def ask(lane: int) -> None:
        nonlocal issued
        if issued < head:
            hi = min(issued + span, head)
            reading = asyncio.ensure_future(statements[lane].fetch(issued, hi))
            in_flight.append((lane, hi, reading))
            issued = hi

    try:
        for lane in range(len(statements)):
            ask(lane)
        while in_flight:
            lane, hi, reading = in_flight.popleft()
            try:
                pieces = await reading
            except (asyncpg.ProgramLimitExceededError, asyncpg.OutOfMemoryError):
                return  # too big to hand over in pieces of _PIECE events: event by event
            span = batch_size
            ask(lane)
            await asyncio.sleep(0)  # let the next range's query go out before hashing this one
            for piece in pieces:
                if not chain.take_range(piece, min(chain.position + _PIECE, hi)):
                    return
                # between pieces the loop takes in what the other connection has sent: the
                # server can run only a socket buffer (~200 kB, ~250 events) ahead of what is
                # read, and hashing a whole range without a turn stalled it (+9-14% events/s)
                await asyncio.sleep(0)
            if chain.position != hi:
                return
            if progress is not None:
                progress(chain.position, head)
    finally:
        for _, _, reading in in_flight:  # finish what is in flight before the connections go on
            with contextlib.suppress(Exception):
                await reading
