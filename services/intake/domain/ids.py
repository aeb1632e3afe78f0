"""Deterministic identities: the same idempotency key always yields the same visit, cases and
event ids, so a retried submission is recognised by the event store and never applied twice."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import datetime

from shared.reference import CHINA_TZ

INTAKE_NAMESPACE = uuid.UUID("5b7f3c52-3f0e-4c55-9a43-69a1a3c1e4d0")
_INTAKE_NAMESPACE_BYTES = INTAKE_NAMESPACE.bytes
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _uuid5(namespace: bytes, name: str) -> uuid.UUID:
    """``uuid.uuid5`` (the same ids), without its per-call overhead: several per message."""
    digest = hashlib.sha1(namespace + name.encode(), usedforsecurity=False).digest()
    return uuid.UUID(bytes=digest[:16], version=5)


def derived_id(namespace: uuid.UUID, name: str) -> uuid.UUID:
    """``uuid.uuid5(namespace, name)``."""
    return _uuid5(namespace.bytes, name)


def visit_id(scope: str, key: str) -> uuid.UUID:
    """The visit of idempotency ``key`` within ``scope`` (a caller or a source system)."""
    return _uuid5(_INTAKE_NAMESPACE_BYTES, f"visit\n{scope}\n{key}")


def case_id(visit: uuid.UUID, service_code: str) -> uuid.UUID:
    return _uuid5(visit.bytes, f"case\n{service_code}")


def event_id(case: uuid.UUID, index: int) -> uuid.UUID:
    return _uuid5(case.bytes, f"event\n{index}")


def event_ids(case: uuid.UUID, count: int) -> list[uuid.UUID]:
    """``event_id(case, i)`` for i in 0 … count - 1."""
    namespace = case.bytes
    return [_uuid5(namespace, f"event\n{index}") for index in range(count)]


def command_id(scope: str, key: str) -> uuid.UUID:
    """The command id of a single-case command (an external result) sent with ``key``."""
    return _uuid5(_INTAKE_NAMESPACE_BYTES, f"command\n{scope}\n{key}")


def tracking_no(case: uuid.UUID, station: str, at: datetime, key: bytes) -> str:
    """Public and readable, free of personal data: county code, day of receipt (Beijing time)
    and ten base-32 characters of an HMAC of the case id under ``key`` (the ID-hash key), e.g.
    ``530102-20260302-7K3M9Q2XPA``. Keyed because the case id follows from the caller and the
    Idempotency-Key alone, which others know or can guess (a source's sequential application
    numbers), and the number opens the public status page: without the key nobody computes
    it. Still deterministic, so a retried request answers the same number."""
    digest = hmac.new(key, b"tracking-no\n" + case.bytes, hashlib.sha256).digest()
    bits = int.from_bytes(digest[:7], "big") >> 6  # 50 bits
    chars = "".join(_CROCKFORD[(bits >> shift) & 31] for shift in range(45, -1, -5))
    return f"{station[:6]}-{at.astimezone(CHINA_TZ):%Y%m%d}-{chars}"


def fingerprint(payload: object) -> str:
    """SHA-256 of the payload as sorted-key JSON: "the same payload" for idempotency, whatever
    the order its fields were sent in. (Plain ``json.dumps``: the payload is a validated
    model's dump, so the log's stricter canonical form would only cost time here.)"""
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
