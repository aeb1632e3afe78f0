"""Where the servers are: the configured ones, or the embedded default.

With ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` set, those are used. Otherwise a running
`yizhan up` is found through the files it leaves in the data folder (pid and port), or the
embedded servers are started for the duration of the command.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.runtime import (
    BROKER_MARKER,
    POSTGRES_MARKER,
    SERVICE_ROLE,
    EmbeddedKafka,
    EmbeddedPostgres,
    process_runs,
)
from shared.settings import Settings


@dataclass(frozen=True)
class Endpoints:
    admin_url: str
    service_url: str
    kafka_bootstrap: str | None
    embedded: bool
    started: tuple[EmbeddedPostgres | EmbeddedKafka, ...] = ()
    """The embedded servers this ``endpoints`` block started (and stops when it ends)."""


def running_postgres(data_dir: Path) -> int | None:
    """The port of an embedded PostgreSQL already running on ``data_dir``, if any."""
    pidfile = data_dir / "postgres" / "pgdata" / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = pidfile.read_text().splitlines()
        if process_runs(int(lines[0]), POSTGRES_MARKER):
            return int(lines[3])
    return None


def running_kafka(data_dir: Path) -> int | None:
    """The port of an embedded broker started by `yizhan up` on ``data_dir``, if running."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        info = json.loads((data_dir / "kafka" / "broker.json").read_text())
        if process_runs(int(info["pid"]), BROKER_MARKER):
            return int(info["port"])
    return None


def record_kafka(broker: EmbeddedKafka) -> None:
    assert broker.process is not None
    (broker.data_dir / "broker.json").write_text(
        json.dumps({"pid": broker.process.pid, "port": broker.port})
    )


@contextlib.contextmanager
def endpoints(
    settings: Settings, *, kafka: bool, start_kafka: bool = False
) -> Iterator[Endpoints]:
    """Yield where PostgreSQL (and Kafka, if asked) are, starting embedded ones if needed and
    stopping what this call started when the block ends."""
    started: list[EmbeddedPostgres | EmbeddedKafka] = []
    try:
        if settings.database_url:
            admin = settings.admin_url or settings.database_url
            service = settings.database_url
        else:
            port = running_postgres(settings.data_dir)
            pg = EmbeddedPostgres(settings.data_dir / "postgres", port=port or 0)
            if port is None:
                pg.start()
                started.append(pg)
            admin = pg.admin_url
            service = pg.url(user=SERVICE_ROLE)
        bootstrap = None
        if kafka:
            if settings.kafka_bootstrap_servers:
                bootstrap = settings.kafka_bootstrap_servers
            else:
                kport = running_kafka(settings.data_dir)
                if kport is None and not start_kafka:
                    raise SystemExit(
                        "no broker: set KAFKA_BOOTSTRAP_SERVERS or run `yizhan up` first"
                    )
                broker = EmbeddedKafka(settings.data_dir / "kafka", port=kport or 0)
                if kport is None:
                    broker.start()
                    record_kafka(broker)
                    started.append(broker)
                bootstrap = broker.bootstrap_servers
        yield Endpoints(admin, service, bootstrap, not settings.database_url, tuple(started))
    finally:
        for server in reversed(started):
            server.stop()
