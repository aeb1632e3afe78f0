"""The original bytes of a rejected submission, sealed before they go to ``intake.rejected``.

Nothing is dropped silently, but a rejected message may still hold an ID number or a name, and
no topic or log may hold those in plain form: the bytes are AES-GCM encrypted with the
quarantine key from settings (associated data: where the message was read). An operator with
the key opens them with ``Quarantine.open``."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENCODING = "aes-256-gcm+base64"
NONCE_BYTES = 12


class Quarantine:
    def __init__(self, key: bytes, *, keep_bytes: int) -> None:
        self._cipher = AESGCM(key)
        self.keep_bytes = keep_bytes

    def seal(self, original: bytes, where: tuple[str, int, int]) -> dict[str, Any]:
        """The sealed original (the first ``keep_bytes`` of an oversized one), its size and
        SHA-256 (of all of it), base64."""
        kept = original[: self.keep_bytes]
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._cipher.encrypt(nonce, kept, _aad(where))
        return {"encoding": ENCODING, "data": base64.b64encode(sealed).decode(),
                "size": len(original), "sha256": hashlib.sha256(original).hexdigest(),
                "truncated": len(kept) < len(original)}

    def open(self, sealed: dict[str, Any], where: tuple[str, int, int]) -> bytes:
        raw = base64.b64decode(sealed["data"])
        return self._cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(where))


def _aad(where: tuple[str, int, int]) -> bytes:
    topic, partition, offset = where
    return f"yizhan-rejected\n{topic}\n{partition}\n{offset}".encode()
