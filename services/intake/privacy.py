"""Personal data: encrypted per data subject, found again only by a keyed hash.

- Every applicant (data subject) has their own AES-256 data key. It is stored only wrapped
  (AES-GCM) by the master key from settings, in ``intake_subjects``.
- Name, ID number, phone and address are each encrypted with the subject's key (AES-GCM, a
  fresh nonce, the subject and field name as associated data) *before* the event is hashed and
  appended, so the log only ever holds ciphertext.
- The same person is recognised by ``id_hash`` = HMAC-SHA256(id-hash key, ID number): never by
  the raw number. The hash is kept in ``intake_subjects`` only, not in the log, so erasing the
  subject (which deletes the row) leaves nothing that links the person to their cases.
- ``erase(subject)`` deletes the subject's wrapped key (crypto-shredding): every ciphertext in
  the log becomes unreadable, and the log itself — hence the hash chain — is untouched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.intake.domain.submission import Applicant
from services.intake.settings import IntakeSettings
from shared.contracts.cases import EncryptedApplicant
from shared.logging import get_logger
from shared.reference import Role, StaffDirectory, StaffMember

log = get_logger(__name__)
FIELD_FORMAT = "v1"
NONCE_BYTES = 12


class ErasureRefused(ValueError):
    """An erasure is ordered by a supervisor or an auditor of the staff directory, with a
    reason: both go on record, and nobody else may destroy a resident's data."""


ORDERS_ERASURES = frozenset({Role.SUPERVISOR, Role.AUDITOR})


def check_erasure_order(erased_by: str, reason: str, staff: StaffDirectory) -> StaffMember:
    """Who orders the erasure; ``ErasureRefused`` unless ``erased_by`` may order one and
    ``reason`` says why."""
    member = staff.get(erased_by)
    if member is None:
        raise ErasureRefused(f"{erased_by} is not in the staff directory")
    if member.role not in ORDERS_ERASURES:
        raise ErasureRefused(f"{erased_by} is a {member.role}: only a supervisor or an auditor "
                             "orders an erasure")
    if not reason.strip():
        raise ErasureRefused("give the legal ground of the erasure (--reason)")
    return member


class SubjectErased(LookupError):
    """The subject's key is gone: their fields can no longer be read."""


@dataclass(frozen=True, slots=True)
class SubjectKey:
    subject_id: str
    id_hash: str
    data_key: bytes


class Sealer:
    """The cryptography, without storage: keyed hashes, key wrapping, field encryption."""

    def __init__(self, master_key: bytes, master_key_id: str, id_hash_key: bytes) -> None:
        self._master = AESGCM(master_key)
        self.master_key_id = master_key_id
        self._id_hash_key = id_hash_key

    @classmethod
    def from_settings(cls, settings: IntakeSettings) -> Sealer:
        return cls(settings.key_bytes(settings.master_key), settings.master_key_id,
                   settings.key_bytes(settings.id_hash_key))

    def id_hash(self, id_number: str) -> str:
        digest = hmac.new(self._id_hash_key, id_number.encode(), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{digest}"

    def wrap(self, subject_id: str, data_key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._master.encrypt(nonce, data_key, self._wrap_aad(subject_id))

    def unwrap(self, subject_id: str, wrapped: bytes) -> bytes:
        return self._master.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                    self._wrap_aad(subject_id))

    def _wrap_aad(self, subject_id: str) -> bytes:
        return f"yizhan-subject-key\n{self.master_key_id}\n{subject_id}".encode()

    @staticmethod
    def encrypt_fields(key: SubjectKey, fields: Mapping[str, str]) -> dict[str, str]:
        cipher = AESGCM(key.data_key)
        sealed = {}
        for name, value in fields.items():
            nonce = os.urandom(NONCE_BYTES)
            body = cipher.encrypt(nonce, value.encode(), _field_aad(key.subject_id, name))
            sealed[name] = f"{FIELD_FORMAT}.{base64.b64encode(nonce + body).decode()}"
        return sealed

    @staticmethod
    def decrypt_fields(key: SubjectKey, sealed: Mapping[str, str]) -> dict[str, str]:
        cipher = AESGCM(key.data_key)
        plain = {}
        for name, text in sealed.items():
            raw = base64.b64decode(text.removeprefix(f"{FIELD_FORMAT}."))
            plain[name] = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                         _field_aad(key.subject_id, name)).decode()
        return plain


def _field_aad(subject_id: str, field: str) -> bytes:
    return f"yizhan-field\n{subject_id}\n{field}".encode()


_INSERT_SUBJECTS = """
INSERT INTO intake_subjects (subject_id, id_hash, wrapped_key, master_key_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])
ON CONFLICT (id_hash) DO NOTHING
RETURNING id_hash
"""
_SUBJECTS_BY_HASH = """
SELECT subject_id, id_hash, wrapped_key FROM intake_subjects WHERE id_hash = ANY($1::text[])
"""


class KeyVault:
    """Subjects' wrapped keys in PostgreSQL (table ``intake_subjects``)."""

    def __init__(self, pool: asyncpg.Pool, sealer: Sealer) -> None:
        self.pool = pool
        self.sealer = sealer

    async def keys_for(self, id_hashes: Sequence[str]) -> dict[str, SubjectKey]:
        """The key of every subject with these ID hashes, creating the missing ones (one round
        trip to find them and one to create the missing, for a whole batch; concurrent callers
        agree on one subject: who loses the insert reads the winner's key)."""
        wanted = sorted(set(id_hashes))
        found = await self._by_hash(wanted)
        missing = [h for h in wanted if h not in found]
        if missing:
            new = [SubjectKey(f"subj-{uuid.uuid4()}", h, AESGCM.generate_key(256))
                   for h in missing]
            created = {r["id_hash"] for r in await self.pool.fetch(
                _INSERT_SUBJECTS, [k.subject_id for k in new], missing,
                [self.sealer.wrap(k.subject_id, k.data_key) for k in new],
                [self.sealer.master_key_id] * len(new))}
            found |= {k.id_hash: k for k in new if k.id_hash in created}
            if len(created) < len(new):
                found |= await self._by_hash([h for h in missing if h not in created])
        return found

    async def _by_hash(self, id_hashes: list[str]) -> dict[str, SubjectKey]:
        rows = await self.pool.fetch(_SUBJECTS_BY_HASH, id_hashes)
        return {r["id_hash"]: SubjectKey(r["subject_id"], r["id_hash"],
                                         self.sealer.unwrap(r["subject_id"], r["wrapped_key"]))
                for r in rows}

    async def key_of(self, subject_id: str) -> SubjectKey:
        row = await self.pool.fetchrow(
            "SELECT subject_id, id_hash, wrapped_key FROM intake_subjects WHERE subject_id = $1",
            subject_id)
        if row is None:
            raise SubjectErased(subject_id)
        return SubjectKey(row["subject_id"], row["id_hash"],
                          self.sealer.unwrap(row["subject_id"], row["wrapped_key"]))

    async def has_key(self, subject_id: str) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT 1 FROM intake_subjects WHERE subject_id = $1", subject_id))

    async def erasure_of(self, subject_id: str) -> tuple[datetime, str] | None:
        """When and by whom the subject was erased (None: never)."""
        row = await self.pool.fetchrow(
            "SELECT erased_at, erased_by FROM intake_erasures WHERE subject_id = $1", subject_id)
        return None if row is None else (row["erased_at"], row["erased_by"])

    async def erase(self, subject_id: str, *, erased_by: str, reason: str) -> bool:
        """Delete the subject's key and record the erasure; ``False`` if there was no key."""
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM intake_subjects WHERE subject_id = $1 RETURNING subject_id",
                subject_id)
            if deleted is None:
                return False
            await conn.execute(
                "INSERT INTO intake_erasures (subject_id, erased_by, reason) VALUES ($1, $2, $3)"
                " ON CONFLICT (subject_id) DO NOTHING", subject_id, erased_by, reason)
        log.info("privacy.subject_erased", subject_id=subject_id, erased_by=erased_by)
        return True


class Privacy:
    """Protect applicants for the log, and reveal them again while their key exists."""

    def __init__(self, vault: KeyVault) -> None:
        self.vault = vault
        self.sealer = vault.sealer

    async def protect(self, applicants: Sequence[Applicant]) -> list[EncryptedApplicant]:
        hashes = [self.sealer.id_hash(a.id_number) for a in applicants]
        keys = await self.vault.keys_for(hashes)
        # the keyed hash stays in intake_subjects (erasure deletes the row), never in the
        # log: there it would link an erased person to their cases for as long as the key
        return [EncryptedApplicant(subject_id=keys[h].subject_id,
                                   encrypted=self.sealer.encrypt_fields(keys[h],
                                                                        a.personal_fields()))
                for a, h in zip(applicants, hashes, strict=True)]

    async def reveal(self, applicant: EncryptedApplicant) -> dict[str, str]:
        """The plain fields; ``SubjectErased`` once the subject's key was erased."""
        key = await self.vault.key_of(applicant.subject_id)
        try:
            return self.sealer.decrypt_fields(key, applicant.encrypted)
        except InvalidTag as exc:  # a subject re-created after erasure has another key
            raise SubjectErased(applicant.subject_id) from exc

    async def erase(self, subject_id: str, *, erased_by: str, reason: str) -> bool:
        return await self.vault.erase(subject_id, erased_by=erased_by, reason=reason)
