"""Typed settings from the environment (and `.env`), validated at start-up.

``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` keep their conventional names; everything else
is ``YIZHAN_*``. When the two are unset, `yizhan` runs the embedded PostgreSQL and broker.
"""

from __future__ import annotations

import base64
import binascii
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A well-known development key (the Ed25519 seed of 32 bytes 0x01..0x20) and token secret: they
# are in the repository, so anyone can sign with them. With YIZHAN_ENV=prod the settings refuse
# them; in development `yizhan` warns when the key signs checkpoints on external servers.
DEV_SIGNING_KEY = base64.b64encode(bytes(range(1, 33))).decode()
DEV_JWT_SECRET = "yizhan-development-secret-change-me-32b"


def same_key(value: str, public: str) -> bool:
    """Whether base64 ``value`` is the key ``public`` is: compared as bytes, since base64 spells
    a 32-byte key in four ways (the last character's two spare bits are ignored)."""
    return base64.b64decode(value) == base64.b64decode(public)


def refuse_development_values(env: str, public: dict[str, bool]) -> None:
    """Raise, naming every variable still at its public development value, when ``env`` is
    ``prod``: one message, so an operator fixes them all at once (``public``: variable →
    whether it still holds the development value)."""
    offending = [name for name, is_public in public.items() if is_public]
    if env == "prod" and offending:
        raise ValueError(f"YIZHAN_ENV=prod refuses the public development value of "
                         f"{', '.join(offending)}: set your own")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="YIZHAN_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "YIZHAN_DATABASE_URL"),
        description="Service role connection string; unset = embedded PostgreSQL.",
    )
    database_admin_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_ADMIN_URL", "YIZHAN_DATABASE_ADMIN_URL"),
        description="Owner/superuser connection used for migrations; defaults to DATABASE_URL.",
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "YIZHAN_KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers; unset = embedded broker.",
    )
    data_dir: Path = Field(default=Path(".yizhan"), description="Embedded data folder.")
    env: Literal["dev", "prod"] = "dev"

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop", description="the `yizhan` commands' event loop (uvloop: about 15% "
        "less server CPU per command, measured; asyncio: the standard library's)")

    topic_case_events: str = "case.events"
    topic_intake_submissions: str = "intake.submissions"
    topic_intake_rejected: str = "intake.rejected"
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    topic_replication_factor: int = Field(default=1, ge=1)
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(default=1000, ge=100)
    kafka_fetch_max_wait_ms: int = Field(
        default=50, ge=1, le=30_000, description="How long a consumer's fetch may wait for "
        "data. The embedded broker does not answer a waiting fetch when data arrives, so this "
        "bounds every hop's latency (Faust hard-codes 1,500 ms; aiokafka's default is 500).")
    kafka_background_fetch_max_wait_ms: int = Field(
        default=500, ge=1, le=30_000, description="The same for consumers nobody waits on (the "
        "SLA clock's agent, which also batches over this long; intake's agent on submissions "
        "from other systems): every idle fetch costs the broker, and the embedded one more as "
        "its memory log grows.")

    migrate_on_start: bool = Field(
        default=True, description="`yizhan serve`/`relay` apply migrations first; false where "
        "a one-shot `yizhan db migrate` does it, so services need no owner credentials.")
    http_host: str = "127.0.0.1"
    cases_port: int = Field(default=8001, ge=1, le=65535)
    projections_port: int = Field(default=8003, ge=1, le=65535)
    public_status_per_minute: int = Field(
        default=60, ge=0, description="Requests a minute each client (address) may make to the "
        "public status endpoint (no login), on average, per projections process; 0: no limit. "
        "Beyond it: 429 with Retry-After.")
    public_status_burst: int = Field(
        default=20, ge=1, description="Requests a client may make to the public status at once "
        "before public_status_per_minute applies.")
    relay_port: int = Field(default=8004, ge=1, le=65535,
                            description="The relay's /healthz, /readyz and /metrics.")
    # intake's port is YIZHAN_INTAKE_HTTP_PORT (services/intake/settings.py, default 8002)
    sla_tick_s: float = Field(default=5.0, gt=0, description="How often due SLA timers fire.")

    db_pool_min: int | None = Field(
        default=None, ge=1, description="Connections a service opens at start-up (default: "
        "db_pool_max, so that no connection is opened, and warmed, under load).")
    db_pool_max: int = Field(default=10, ge=1)
    append_max_batch: int = Field(default=500, ge=1, le=10_000)
    append_writers: int = Field(
        default=2, ge=1, le=8, description="The cases service's group-commit writers: with "
        "two, one batch is planned and sent while the one before is in the database "
        "(measured: +60% appends/s with 64 concurrent writers, server CPU per event about the "
        "same). Intake always uses one (its batches are already pipelined).")

    rebuild_processes: int = Field(
        default_factory=lambda: min(len(os.sched_getaffinity(0)), 8), ge=1, le=64,
        description="Processes a rebuild of the read models folds the log in (each a share "
        "of the cases, see services/projections/rebuild.py): default, the cores this process "
        "may run on, at most 8. A log under 100,000 events is folded in one.")

    relay_batch_size: int = Field(default=1000, ge=1)
    relay_poll_interval_s: float = Field(default=0.5, gt=0)
    relay_linger_ms: float = Field(
        default=10, ge=0, le=1000, description="After a short batch the relay waits this long "
        "before reading the next, so a steady trickle of commits goes out in fewer, larger "
        "batches (after a quiet spell the first event goes at once).")
    relay_probe_interval_s: float = Field(default=5.0, gt=0)

    jwt_secret: str = Field(
        default=DEV_JWT_SECRET,
        min_length=32, description="HS256 secret for officers' bearer tokens.",
    )
    jwt_issuer: str = "yizhan"
    jwt_ttl_s: int = Field(default=8 * 3600, ge=60)

    checkpoint_signing_key: str = Field(
        default=DEV_SIGNING_KEY, description="Base64 Ed25519 private seed (32 bytes)."
    )
    checkpoint_every_events: int = Field(default=10_000, ge=1)
    checkpoint_every_s: float = Field(default=60.0, gt=0)
    checkpoint_witness_file: Path | None = Field(
        default=None, description="An append-only copy of every signed checkpoint, outside the "
        "database (a write-once volume, another host): `yizhan audit verify` checks the log "
        "against it, which catches a rewrite whose newest checkpoints were deleted. Unset: "
        "<data dir>/checkpoint-witness.jsonl on the embedded database, none otherwise.")

    def witness_path(self, embedded: bool) -> Path | None:
        """Where checkpoints are witnessed: the setting, or beside the embedded database."""
        if self.checkpoint_witness_file is not None:
            return self.checkpoint_witness_file
        return self.data_dir / "checkpoint-witness.jsonl" if embedded else None

    @field_validator("checkpoint_signing_key")
    @classmethod
    def _seed_is_32_bytes(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError("must be base64") from exc
        if len(raw) != 32:
            raise ValueError("must decode to a 32-byte Ed25519 seed")
        return value

    @field_validator("topic_intake_submissions", "topic_intake_rejected")
    @classmethod
    def _one_topic_per_role(cls, value: str, info: ValidationInfo) -> str:
        # one topic for two roles would mix other systems' submissions (personal data in the
        # clear) into the case events, or feed rejections back to intake as submissions
        for earlier in ("topic_case_events", "topic_intake_submissions"):
            if earlier != info.field_name and info.data.get(earlier) == value:
                raise ValueError(f"is the same topic as YIZHAN_{earlier.upper()}")
        return value

    @field_validator("kafka_heartbeat_interval_ms")
    @classmethod
    def _heartbeat_below_session(cls, value: int, info: ValidationInfo) -> int:
        # a member that heartbeats no more often than its session expires is dropped from its
        # group again and again (Kafka's own clients refuse it; aiokafka and Faust do not)
        session = info.data.get("kafka_session_timeout_ms")
        if session is not None and value >= session:
            raise ValueError(f"must be below YIZHAN_KAFKA_SESSION_TIMEOUT_MS ({session} ms; "
                             "a third of it or less is usual)")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _servers_have_ports(cls, value: str | None) -> str | None:
        if value is not None:
            for server in value.split(","):
                host, _, port = server.strip().rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"{server!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _no_development_secrets_in_production(self) -> Self:
        problems: list[str] = []
        try:
            refuse_development_values(self.env, {
                "YIZHAN_JWT_SECRET": self.jwt_secret == DEV_JWT_SECRET,
                "YIZHAN_CHECKPOINT_SIGNING_KEY": self.uses_dev_signing_key})
        except ValueError as exc:
            problems.append(str(exc))
        # unset, each process would start an embedded PostgreSQL or memory broker of its own
        # (in its container): services on separate event stores, lost with the container
        unset = [name for name, value in (("DATABASE_URL", self.database_url),
                                          ("KAFKA_BOOTSTRAP_SERVERS", self.kafka_bootstrap_servers))
                 if not value]
        if self.env == "prod" and unset:
            problems.append(f"YIZHAN_ENV=prod needs {', '.join(unset)} (the embedded servers are "
                            "for development only)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def admin_url(self) -> str | None:
        return self.database_admin_url or self.database_url

    @property
    def pool_min(self) -> int:
        """Connections to open at start-up: ``db_pool_min``, or the whole pool."""
        return min(self.db_pool_min or self.db_pool_max, self.db_pool_max)

    @property
    def uses_dev_signing_key(self) -> bool:
        return same_key(self.checkpoint_signing_key, DEV_SIGNING_KEY)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
