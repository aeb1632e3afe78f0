"""Settings of the intake service only (``YIZHAN_INTAKE_*``), kept apart from the shared ones.

The three keys default to *public development keys* (fixed bytes below): fine for tests and the
embedded mode, worthless in production. With ``YIZHAN_ENV=prod`` (the shared settings' ``env``)
the settings refuse them; in development ``uses_development_keys`` tells the process to warn.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.reference import default_reference_dir
from shared.settings import refuse_development_values, same_key


def _development_key(label: str) -> str:
    return base64.b64encode(hashlib.sha256(f"yizhan-dev-{label}".encode()).digest()).decode()


DEV_MASTER_KEY = _development_key("intake-master-key")
DEV_ID_HASH_KEY = _development_key("intake-id-hash-key")
DEV_QUARANTINE_KEY = _development_key("intake-quarantine-key")


class IntakeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="YIZHAN_INTAKE_", env_file=".env", extra="ignore", frozen=True
    )

    env: Literal["dev", "prod"] = Field(
        default="dev", validation_alias=AliasChoices("YIZHAN_ENV"),
        description="The shared YIZHAN_ENV (not YIZHAN_INTAKE_ENV): one switch for every "
        "process.")
    master_key: str = Field(
        default=DEV_MASTER_KEY,
        description="Base64 AES-256 key that wraps every data subject's key.")
    master_key_id: str = Field(default="dev-1", min_length=1, max_length=40,
                               description="Names the master key in each wrapped key.")
    id_hash_key: str = Field(
        default=DEV_ID_HASH_KEY,
        description="Base64 HMAC key for the keyed hashes of ID numbers (duplicate detection) "
        "and of case ids (the tracking number's random part, so nobody else computes one).")
    quarantine_key: str = Field(
        default=DEV_QUARANTINE_KEY,
        description="Base64 AES-256 key sealing the original bytes of rejected submissions.")
    sources_file: Path = Field(
        default=default_reference_dir() / "source_systems.toml",
        description="Registry of the systems allowed to submit on Kafka, with their secrets.")
    max_message_bytes: int = Field(default=64 * 1024, ge=1024, le=512 * 1024)
    consumer_group: str = Field(default="yizhan-intake", min_length=1)
    batch_size: int = Field(default=500, ge=1, le=5000)
    batch_wait_s: float = Field(default=0.05, gt=0, le=5)
    pipeline_depth: int = Field(
        default=2, ge=1, le=8,
        description="Kafka batches in flight at once (acked in order; 1 = one at a time).")
    dead_letter_sweep_s: float = Field(
        default=60.0, ge=0, le=3600,
        description="Every so often (and at start-up), publish rejections recorded at least "
                    "this long ago and still not on intake.rejected: their message will not "
                    "be delivered again (the broker lost its log). 0 turns it off.")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8002, ge=0, le=65535)

    @field_validator("master_key", "id_hash_key", "quarantine_key")
    @classmethod
    def _is_a_32_byte_key(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError("must be base64") from exc
        if len(raw) != 32:
            raise ValueError("must decode to 32 bytes")
        return value

    @model_validator(mode="after")
    def _no_development_keys_in_production(self) -> Self:
        refuse_development_values(self.env, {
            "YIZHAN_INTAKE_MASTER_KEY": same_key(self.master_key, DEV_MASTER_KEY),
            "YIZHAN_INTAKE_ID_HASH_KEY": same_key(self.id_hash_key, DEV_ID_HASH_KEY),
            "YIZHAN_INTAKE_QUARANTINE_KEY": same_key(self.quarantine_key, DEV_QUARANTINE_KEY)})
        return self

    @property
    def uses_development_keys(self) -> bool:
        return (same_key(self.master_key, DEV_MASTER_KEY)
                or same_key(self.id_hash_key, DEV_ID_HASH_KEY)
                or same_key(self.quarantine_key, DEV_QUARANTINE_KEY))

    @staticmethod
    def key_bytes(value: str) -> bytes:
        return base64.b64decode(value)

