"""`yizhan`: run, operate and audit the system.

    yizhan up                      embedded PostgreSQL + broker, migrations, relay, checkpoints
    yizhan db migrate              apply pending migrations
    yizhan relay                   run the Kafka relay (one leader among many) and checkpoints
    yizhan audit checkpoint        sign a checkpoint at the log's head now
    yizhan audit verify [--from-checkpoint] [--public-key B64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from shared.eventstore.checkpoints import (
    CheckpointSigner,
    load_public_key,
    run_checkpointer,
    write_checkpoint,
)
from shared.eventstore.migrate import ensure_service_role, migrate
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.eventstore.verify import verify_log
from shared.kafka import ensure_topics, topic_specs
from shared.logging import configure_logging, get_logger
from shared.relay import Relay, RelayConfig
from shared.runtime import SERVICE_ROLE
from shared.settings import Settings, get_settings
from shared.stack import Endpoints, endpoints

log = get_logger("yizhan")


async def prepare_database(ep: Endpoints) -> list[str]:
    applied = await migrate(ep.admin_url)
    if ep.embedded:
        await ensure_service_role(ep.admin_url, SERVICE_ROLE)
    return applied


def relay_config(settings: Settings, bootstrap: str) -> RelayConfig:
    return RelayConfig(
        bootstrap_servers=bootstrap, topic=settings.topic_case_events,
        partitions=settings.topic_partitions, batch_size=settings.relay_batch_size,
        poll_interval_s=settings.relay_poll_interval_s,
        probe_interval_s=settings.relay_probe_interval_s,
    )


def warn_on_dev_key(settings: Settings, ep: Endpoints) -> None:
    if settings.uses_dev_signing_key and (not ep.embedded or settings.env == "prod"):
        log.warning("checkpoints.dev_key", hint="set YIZHAN_CHECKPOINT_SIGNING_KEY: the "
                    "development key is public, its signatures prove nothing")


async def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)


async def serve_relay(settings: Settings, ep: Endpoints, stop: asyncio.Event) -> None:
    assert ep.kafka_bootstrap is not None
    await ensure_topics(ep.kafka_bootstrap, topic_specs(settings),
                        replication_factor=settings.topic_replication_factor)
    pool = await create_pool(ep.service_url, min_size=2, max_size=4)
    store = PostgresEventStore(pool)
    signer = CheckpointSigner(settings.checkpoint_signing_key)
    warn_on_dev_key(settings, ep)
    try:
        await asyncio.gather(
            Relay(store, relay_config(settings, ep.kafka_bootstrap)).run(stop),
            run_checkpointer(pool, signer, settings.checkpoint_every_events,
                             settings.checkpoint_every_s, stop),
        )
    finally:
        await store.close()
        await pool.close()


# -- commands -------------------------------------------------------------------------------

def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    with endpoints(settings, kafka=False) as ep:
        applied = asyncio.run(prepare_database(ep))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def cmd_relay(settings: Settings, _: argparse.Namespace) -> int:
    with endpoints(settings, kafka=True) as ep:
        asyncio.run(prepare_database(ep))
        asyncio.run(run_until_signal(lambda stop: serve_relay(settings, ep, stop)))
    return 0


def cmd_up(settings: Settings, _: argparse.Namespace) -> int:
    with endpoints(settings, kafka=True, start_kafka=True) as ep:
        asyncio.run(prepare_database(ep))
        print(f"PostgreSQL  {ep.service_url}  (admin: {ep.admin_url})")
        print(f"Kafka       {ep.kafka_bootstrap}")
        print("relay and checkpoints running; Ctrl-C stops everything")
        asyncio.run(run_until_signal(lambda stop: serve_relay(settings, ep, stop)))
    print("stopped")
    return 0


def cmd_checkpoint(settings: Settings, _: argparse.Namespace) -> int:
    async def go(ep: Endpoints) -> None:
        pool = await create_pool(ep.service_url, min_size=1, max_size=2)
        try:
            cp = await write_checkpoint(pool, CheckpointSigner(settings.checkpoint_signing_key))
        finally:
            await pool.close()
        print("nothing new to sign" if cp is None else
              f"signed checkpoint at position {cp.position}: {cp.hash} (key {cp.key_id})")

    with endpoints(settings, kafka=False) as ep:
        asyncio.run(go(ep))
    return 0


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    public = (load_public_key(args.public_key) if args.public_key
              else CheckpointSigner(settings.checkpoint_signing_key).public_key)
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.monotonic() - started, 1e-9)
        print(f"\rverified {done:,} / {total:,} events ({rate:,.0f}/s)", end="",
              file=sys.stderr, flush=True)

    async def go(ep: Endpoints) -> int:
        pool = await create_pool(ep.service_url, min_size=1, max_size=2)
        try:
            report = await verify_log(pool, public, from_checkpoint=args.from_checkpoint,
                                      progress=progress)
        finally:
            await pool.close()
        print(file=sys.stderr)
        for note in report.notes:
            print(f"note: {note}")
        if report.ok:
            print(f"OK: {report.events_checked:,} events from position {report.started_from} "
                  f"to {report.head_position}, {report.checkpoints_checked} signed checkpoints; "
                  f"head hash {report.head_hash}")
            return 0
        print(f"TAMPERED at position {report.first_bad_position}"
              f"{f' (stream {report.stream_id})' if report.stream_id else ''}: {report.problem}")
        return 1

    with endpoints(settings, kafka=False) as ep:
        return asyncio.run(go(ep))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yizhan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run everything on the embedded default").set_defaults(fn=cmd_up)
    sub.add_parser("relay", help="run the Kafka relay").set_defaults(fn=cmd_relay)
    db = sub.add_parser("db", help="database").add_subparsers(dest="db", required=True)
    db.add_parser("migrate", help="apply pending migrations").set_defaults(fn=cmd_migrate)
    audit = sub.add_parser("audit", help="audit the log").add_subparsers(dest="audit",
                                                                         required=True)
    audit.add_parser("checkpoint", help="sign a checkpoint now").set_defaults(fn=cmd_checkpoint)
    verify = audit.add_parser("verify", help="verify the hash chain and signed checkpoints")
    verify.add_argument("--from-checkpoint", action="store_true",
                        help="start at the latest signed checkpoint instead of genesis")
    verify.add_argument("--public-key", help="base64 Ed25519 public key (default: from settings)")
    verify.set_defaults(fn=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(args.fn(settings, args))
