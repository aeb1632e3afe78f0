"""Signed checkpoints: (position, hash) of the log signed with Ed25519, so an auditor holding
only the public key can prove the log up to that point is the one that was signed, and can
verify from a checkpoint instead of from genesis."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.contracts.envelope import iso
from shared.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    position: int
    hash: str
    signed_at: datetime
    key_id: str
    signature: str

    def message(self) -> bytes:
        return checkpoint_message(self.position, self.hash, self.signed_at)


def checkpoint_message(position: int, hash_: str, signed_at: datetime) -> bytes:
    return f"yizhan-checkpoint-v1\n{position}\n{hash_}\n{iso(signed_at)}".encode()


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

    def sign(self, position: int, hash_: str, signed_at: datetime) -> Checkpoint:
        signature = self._key.sign(checkpoint_message(position, hash_, signed_at))
        return Checkpoint(position, hash_, signed_at, self.key_id,
                          base64.b64encode(signature).decode())


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


async def write_checkpoint(pool: asyncpg.Pool, signer: CheckpointSigner) -> Checkpoint | None:
    """Sign the current head and store it; None when the log is empty or already checkpointed
    at its head."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT position, hash, clock_timestamp() AS now FROM events "
            "ORDER BY position DESC LIMIT 1"
        )
        if row is None:
            return None
        last = await conn.fetchval("SELECT max(position) FROM event_checkpoints")
        if last is not None and last >= row["position"]:
            return None
        checkpoint = signer.sign(row["position"], row["hash"], row["now"])
        await conn.execute(
            "INSERT INTO event_checkpoints (position, hash, signed_at, key_id, signature) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (position) DO NOTHING",
            checkpoint.position, checkpoint.hash, checkpoint.signed_at, checkpoint.key_id,
            checkpoint.signature,
        )
        return checkpoint


async def read_checkpoints(pool: asyncpg.Pool) -> list[Checkpoint]:
    rows = await pool.fetch(
        "SELECT position, hash, signed_at, key_id, signature FROM event_checkpoints "
        "ORDER BY position"
    )
    return [Checkpoint(*r) for r in rows]


async def run_checkpointer(
    pool: asyncpg.Pool, signer: CheckpointSigner, every_events: int, every_s: float,
    stop: asyncio.Event,
) -> None:
    """Sign a checkpoint whenever ``every_events`` new events or ``every_s`` seconds have passed
    (and there is something new); several processes may run this, positions are unique."""
    last_time = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(every_s, 1.0))
        try:
            head = await pool.fetchval("SELECT max(position) FROM events") or 0
            signed = await pool.fetchval("SELECT max(position) FROM event_checkpoints") or 0
            due = head - signed >= every_events or time.monotonic() - last_time >= every_s
            if head > signed and (due or stop.is_set()):
                checkpoint = await write_checkpoint(pool, signer)
                last_time = time.monotonic()
                if checkpoint is not None:
                    log.info("checkpoint.signed", position=checkpoint.position)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("checkpoint.failed", error=repr(exc))
