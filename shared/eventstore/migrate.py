"""Versioned SQL migrations: numbered files per component, applied once, in order, under an
advisory lock, each in its own transaction; an applied file that later changed is an error."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

from shared.logging import get_logger

log = get_logger(__name__)
_MIGRATION_LOCK = 0x59_5A_4D_49  # "YZMI"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


MIN_SERVER_MAJOR = 16
"""The oldest PostgreSQL the migrations and queries need (``pg_input_is_valid``, in the
projections' watermark advance, came with 16)."""


class MigrationChanged(RuntimeError):
    """An already-applied migration file no longer matches what was applied."""


class UnsupportedServer(RuntimeError):
    """The PostgreSQL server is older than ``MIN_SERVER_MAJOR``."""


def require_supported_server(major: int, version: str) -> None:
    """Refuse a server older than ``MIN_SERVER_MAJOR`` before anything is applied: on an older
    one the migrations would pass and a query fail later, in a running service."""
    if major < MIN_SERVER_MAJOR:
        raise UnsupportedServer(f"PostgreSQL {MIN_SERVER_MAJOR} or later is required; this "
                                f"server is {version}")


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(component: str, package: str) -> list[Migration]:
    """Read ``NNNN_name.sql`` files from the ``migrations`` folder of ``package``."""
    folder: Traversable = resources.files(package) / "migrations"
    found = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(component, int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


EVENT_STORE = ("eventstore", "shared.eventstore")
# Every component with migrations, in the order they apply (the event store first).
ALL_COMPONENTS = [
    EVENT_STORE,
    ("cases", "services.cases"),
    ("intake", "services.intake"),
    ("projections", "services.projections"),
]


async def migrate(dsn: str, components: list[tuple[str, str]] | None = None) -> list[str]:
    """Apply pending migrations of ``components`` [(name, package)]; return what was applied."""
    components = components or ALL_COMPONENTS
    applied_now: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        server = conn.get_server_version()
        require_supported_server(server.major, f"{server.major}.{server.minor}")
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   component text NOT NULL, version integer NOT NULL, name text NOT NULL,
                   checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (component, version))"""
        )
        rows = await conn.fetch("SELECT component, version, checksum FROM schema_migrations")
        done = {(r["component"], r["version"]): r["checksum"] for r in rows}
        for component, package in components:
            for mig in load_migrations(component, package):
                key = (mig.component, mig.version)
                if key in done:
                    if done[key] != mig.checksum:
                        raise MigrationChanged(
                            f"{component} migration {mig.version:04d}_{mig.name} was changed "
                            "after it was applied; add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (component, version, name, checksum)"
                        " VALUES ($1, $2, $3, $4)",
                        mig.component, mig.version, mig.name, mig.checksum,
                    )
                label = f"{component}/{mig.version:04d}_{mig.name}"
                log.info("migration.applied", migration=label)
                applied_now.append(label)
        await conn.execute("GRANT SELECT ON schema_migrations TO yizhan_app")
    finally:
        await conn.execute("SELECT pg_advisory_unlock_all()")
        await conn.close()
    return applied_now


async def ensure_service_role(admin_dsn: str, role: str) -> None:
    """Create a login role that is a member of yizhan_app (embedded mode and tests)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        if not exists:
            await conn.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE yizhan_app')
    finally:
        await conn.close()
