"""Signed checkpoints: (position, hash) of the log signed with Ed25519, so an auditor holding
only the public key can prove the log up to that point is the one that was signed, and can
verify from a checkpoint instead of from genesis.

Format 2 (what ``write_checkpoint`` signs) also signs the position and hash of the checkpoint
before it (0 and the genesis hash for the first): the checkpoints form a chain, so one removed
from the middle shows (``chain_break``), as its successor names it. Format 1 (position, hash,
time), signed before, still verifies. The newest checkpoints are named by none: removing them
(to rewrite the log after the one left) shows only against something kept outside the
database: a ``Witness``, an append-only file of every checkpoint signed, kept where the
database's administrators cannot rewrite it (``compare_witness``). ``run_checkpointer`` keeps
the last checkpoint it signed and refuses to sign a log whose checkpoints no longer reach it
(``CheckpointsRolledBack``)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.contracts.envelope import GENESIS_HASH, iso
from shared.eventstore.postgres import Conn
from shared.logging import get_logger

log = get_logger(__name__)
CHECKPOINT_FORMAT = 2  # what write_checkpoint signs
_CHECKPOINT_LOCK = 0x59_5A_43_50  # "YZCP": one signer at a time, so each names the one before
_COLUMNS = "position, hash, signed_at, key_id, signature, format, prev_position, prev_hash"


@dataclass(frozen=True)
class Checkpoint:
    """``format`` 2 names the checkpoint signed before it (``prev_position``, ``prev_hash``:
    0 and the genesis hash for the first); format 1 does not (both None)."""

    position: int
    hash: str
    signed_at: datetime
    key_id: str
    signature: str
    format: int = 1
    prev_position: int | None = None
    prev_hash: str | None = None

    def message(self) -> bytes:
        return checkpoint_message(self.position, self.hash, self.signed_at, self.format,
                                  self.prev_position, self.prev_hash)


def checkpoint_message(position: int, hash_: str, signed_at: datetime, format_: int = 1,
                       prev_position: int | None = None, prev_hash: str | None = None) -> bytes:
    """The bytes signed; ValueError for a format this code does not know (or a format 2
    checkpoint without its predecessor), which then has no valid signature."""
    if format_ == 1:
        return f"yizhan-checkpoint-v1\n{position}\n{hash_}\n{iso(signed_at)}".encode()
    if format_ == 2 and prev_position is not None and prev_hash is not None:
        return (f"yizhan-checkpoint-v2\n{position}\n{hash_}\n{iso(signed_at)}\n"
                f"{prev_position}\n{prev_hash}").encode()
    raise ValueError(f"checkpoint format {format_} (previous {prev_position}) is not known")


class CheckpointsRolledBack(RuntimeError):
    """The log no longer holds the checkpoint this signer signed last, or the event it covers
    changed: checkpoints were removed, the log rewritten. Nothing more is signed."""


def public_key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoints with an Ed25519 key given as a base64 32-byte seed."""

    def __init__(self, seed_b64: str) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed_b64))
        self.public_key = self._key.public_key()
        self.key_id = public_key_id(self.public_key)

    def public_key_b64(self) -> str:
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def sign(self, position: int, hash_: str, signed_at: datetime, prev_position: int = 0,
             prev_hash: str = GENESIS_HASH, *, format_: int = CHECKPOINT_FORMAT) -> Checkpoint:
        """Sign (position, hash) after the checkpoint (``prev_position``, ``prev_hash``);
        ``format_`` 1 (no predecessor) only to reproduce old checkpoints."""
        prev: tuple[int | None, str | None] = (
            (prev_position, prev_hash) if format_ >= 2 else (None, None))
        signature = self._key.sign(checkpoint_message(position, hash_, signed_at, format_, *prev))
        return Checkpoint(position, hash_, signed_at, self.key_id,
                          base64.b64encode(signature).decode(), format_, *prev)


class InvalidPublicKey(ValueError):
    """A public key as a person types it (``--public-key``) is not base64 of 32 bytes."""


def load_public_key(b64: str) -> Ed25519PublicKey:
    """The Ed25519 public key in ``b64``; ``InvalidPublicKey`` says why not (strict base64: a
    mistyped key must not decode to another one)."""
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
    except binascii.Error as exc:
        raise InvalidPublicKey("the public key is not base64") from exc
    if len(raw) != 32:
        raise InvalidPublicKey(f"the public key must be 32 bytes in base64, not {len(raw)}")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidPublicKey(f"not an Ed25519 public key: {exc}") from exc


def signature_valid(checkpoint: Checkpoint, public: Ed25519PublicKey) -> bool:
    if checkpoint.key_id != public_key_id(public):
        return False
    try:
        public.verify(base64.b64decode(checkpoint.signature), checkpoint.message())
    except (InvalidSignature, ValueError):
        return False
    return True


def signature_problem(checkpoint: Checkpoint, public: Ed25519PublicKey) -> str | None:
    """Why ``checkpoint``'s signature does not hold under ``public`` (None if it does): signed
    with another key (both key ids named: a wrong public key given, or checkpoints re-signed
    with another key), or an invalid signature."""
    if signature_valid(checkpoint, public):
        return None
    given = public_key_id(public)
    if checkpoint.key_id != given:
        return (f"is signed with key {checkpoint.key_id}, not with the public key given "
                f"(key {given}): the wrong public key, or checkpoints signed with another key")
    return "has an invalid signature"


def chain_break(checkpoints: Sequence[Checkpoint]) -> tuple[int, str] | None:
    """The first checkpoint (format 2) in ``checkpoints`` (all of them, by position) that names
    a predecessor they do not hold: (the predecessor's position, why). Each signer names the
    newest checkpoint there was, so a checkpoint removed from before the newest shows here."""
    held = {cp.position: cp.hash for cp in checkpoints}
    for cp in checkpoints:
        if cp.format < 2 or cp.prev_position is None:
            continue
        before = cp.prev_position
        if before == 0 and cp.prev_hash == GENESIS_HASH:
            continue
        if before not in held:
            return before, (f"the checkpoint signed at position {cp.position} follows a signed "
                            f"checkpoint at position {before}, which is gone: signed "
                            "checkpoints were removed")
        if held[before] != cp.prev_hash:
            return before, (f"the checkpoint signed at position {cp.position} follows a "
                            f"checkpoint at position {before} with another hash than the one "
                            "stored there: signed checkpoints were replaced")
    return None


class WitnessUnreadable(ValueError):
    """The witness file holds a line that is not a checkpoint."""


class Witness:
    """An append-only JSON-lines file of every checkpoint signed: a copy of the signatures
    outside the database. Whoever can rewrite the database (and delete its newest checkpoints
    to rewrite the log after the one left) cannot rewrite this too if it lives elsewhere: a
    write-once volume, another host, an auditor's archive. Each line is appended and flushed
    to disk after the checkpoint's own commit, so it never names one the database lacks."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def append(self, checkpoint: Checkpoint) -> None:
        line = json.dumps({**asdict(checkpoint), "signed_at": iso(checkpoint.signed_at)},
                          separators=(",", ":")) + "\n"
        await asyncio.to_thread(self._append, line.encode())

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[Checkpoint]:
        """The checkpoints on file (``WitnessUnreadable`` naming a line that is not one)."""
        found: list[Checkpoint] = []
        if not self.path.exists():
            return found
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                obj["signed_at"] = datetime.fromisoformat(obj["signed_at"])
                found.append(Checkpoint(**obj))
            except (ValueError, TypeError, KeyError) as exc:
                raise WitnessUnreadable(
                    f"{self.path} line {number} is not a checkpoint: {exc}") from exc
        return found


async def compare_witness(pool: asyncpg.Pool, witness: Sequence[Checkpoint],
                          public: Ed25519PublicKey) -> tuple[int, str] | None:
    """(position, problem) where the log or its checkpoints differ from what the witness
    recorded when they were signed, else None: a witness line whose signature fails, a
    checkpoint the database no longer holds as signed, an event no longer under its signed
    hash, or a log that ends before the last position the witness saw signed."""
    for checkpoint in witness:
        if (problem := signature_problem(checkpoint, public)) is not None:
            return checkpoint.position, (f"the witness's checkpoint at position "
                                         f"{checkpoint.position} {problem}")
    rows = await pool.fetch(
        "SELECT w.position, (SELECT c.signature FROM event_checkpoints c"
        " WHERE c.position = w.position) AS signature,"
        " (SELECT e.hash FROM events e WHERE e.position = w.position) AS hash"
        " FROM unnest($1::bigint[]) AS w(position) ORDER BY w.position",
        [c.position for c in witness])
    signed = {c.position: c for c in witness}
    for row in rows:
        checkpoint = signed[row["position"]]
        if row["hash"] is None:
            return checkpoint.position, (
                f"the event at position {checkpoint.position}, which the witness saw signed, "
                "is gone from the log")
        if row["hash"] != checkpoint.hash:
            return checkpoint.position, (
                f"the event at position {checkpoint.position} no longer has the hash the "
                f"witness saw signed ({checkpoint.hash[:16]}…): history was rewritten")
        if row["signature"] != checkpoint.signature:
            return checkpoint.position, (
                f"the signed checkpoint at position {checkpoint.position} that the witness "
                "recorded is gone from the database (or replaced)")
    return None


async def write_checkpoint(pool: asyncpg.Pool, signer: CheckpointSigner, *,
                           after: Checkpoint | None = None,
                           witness: Witness | None = None) -> Checkpoint | None:
    """Sign the current head after the newest checkpoint and store it; None when the log is
    empty or already checkpointed at its head. ``after``: the checkpoint this signer signed
    last; if the log no longer holds it (as signed, over an event with that hash), raise
    ``CheckpointsRolledBack`` and sign nothing. ``witness``: appended to once committed."""
    checkpoint = await _sign_and_store(pool, signer, after)
    if checkpoint is not None and witness is not None:
        await witness.append(checkpoint)
    return checkpoint


async def _sign_and_store(pool: asyncpg.Pool, signer: CheckpointSigner,
                          after: Checkpoint | None) -> Checkpoint | None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHECKPOINT_LOCK)
        if after is not None:
            await _still_there(conn, after)
        row = await conn.fetchrow(
            "SELECT position, hash, clock_timestamp() AS now FROM events "
            "ORDER BY position DESC LIMIT 1"
        )
        if row is None:
            return None
        last = await conn.fetchrow(
            "SELECT position, hash FROM event_checkpoints ORDER BY position DESC LIMIT 1")
        if last is not None and last["position"] >= row["position"]:
            return None
        prev = (last["position"], last["hash"]) if last is not None else (0, GENESIS_HASH)
        checkpoint = signer.sign(row["position"], row["hash"], row["now"], *prev)
        stored = await conn.fetchval(
            f"INSERT INTO event_checkpoints ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (position) DO NOTHING RETURNING position",
            checkpoint.position, checkpoint.hash, checkpoint.signed_at, checkpoint.key_id,
            checkpoint.signature, checkpoint.format, checkpoint.prev_position,
            checkpoint.prev_hash,
        )
        return checkpoint if stored is not None else None


async def _still_there(conn: Conn, signed: Checkpoint) -> None:
    row = await conn.fetchrow(
        "SELECT (SELECT signature FROM event_checkpoints WHERE position = $1),"
        " (SELECT hash FROM events WHERE position = $1)", signed.position)
    assert row is not None
    signature, hash_ = row
    if signature != signed.signature or hash_ != signed.hash:
        what = ("is gone" if signature is None else "was replaced" if signature
                != signed.signature else "no longer covers the event there")
        raise CheckpointsRolledBack(
            f"the checkpoint this signer signed at position {signed.position} {what}: the "
            "log or its checkpoints were rolled back or rewritten; not signing")


async def read_checkpoints(pool: asyncpg.Pool) -> list[Checkpoint]:
    rows = await pool.fetch(f"SELECT {_COLUMNS} FROM event_checkpoints ORDER BY position")
    return [Checkpoint(*r) for r in rows]


async def run_checkpointer(
    pool: asyncpg.Pool, signer: CheckpointSigner, every_events: int, every_s: float,
    stop: asyncio.Event, witness: Witness | None = None,
) -> None:
    """Sign a checkpoint whenever ``every_events`` new events or ``every_s`` seconds have passed
    (and there is something new); several processes may run this, positions are unique. The
    last checkpoint signed here is remembered: if the log stops holding it, nothing more is
    signed (``checkpoint.refused`` is logged as an error at every attempt)."""
    last_time = time.monotonic()
    signed_last: Checkpoint | None = None
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(every_s, 1.0))
        try:
            head = await pool.fetchval("SELECT max(position) FROM events") or 0
            signed = await pool.fetchval("SELECT max(position) FROM event_checkpoints") or 0
            due = head - signed >= every_events or time.monotonic() - last_time >= every_s
            if head > signed and (due or stop.is_set()):
                checkpoint = await write_checkpoint(pool, signer, after=signed_last,
                                                    witness=witness)
                last_time = time.monotonic()
                if checkpoint is not None:
                    signed_last = checkpoint
                    log.info("checkpoint.signed", position=checkpoint.position)
        except CheckpointsRolledBack as exc:
            log.error("checkpoint.refused", error=str(exc))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("checkpoint.failed", error=repr(exc))
