"""`yizhan`: run, operate and audit the system.

    yizhan up                      everything on the embedded default (or the configured servers)
    yizhan db migrate              apply pending migrations
    yizhan relay                   run the Kafka relay (one leader among many) and checkpoints
    yizhan serve cases|intake|projections   one service: its API and its agents
    yizhan projections rebuild     rebuild the read models from the log, swap them in
    yizhan privacy erase SUBJECT --by USER --reason TEXT
    yizhan demo [--days N]         realistic casework through the real interfaces, then dashboards
    yizhan token USER              a bearer token for a user of the staff directory
    yizhan status [--check] [--json]   how far each part of the pipeline has got (from PostgreSQL)
    yizhan consumers repartition   move consumers' positions to a new partition count (relay
                                   stopped, consumers caught up: README "Scaling out")
    yizhan audit checkpoint        sign a checkpoint at the log's head now
    yizhan audit verify [--from-checkpoint] [--public-key B64] [--witness FILE]
    yizhan audit history|as-of|queue-as-of|export|verify-export|rebuild-compare|access-log
                                   an auditor's reads (`yizhan audit --help`)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

from services.audit_cli import NotAnAuditor, UnknownUnit
from services.intake.privacy import ErasureRefused
from services.intake.settings import IntakeSettings
from shared.audit import (
    CaseNotFound,
    ExportUnreadable,
    PositionBeyondLog,
    ReasonRequired,
    ReplayFailed,
)
from shared.consumer import PositionsKeptForAnotherPartitionCount
from shared.eventstore.checkpoints import (
    CheckpointSigner,
    InvalidPublicKey,
    Witness,
    WitnessUnreadable,
    compare_witness,
    load_public_key,
    run_checkpointer,
    write_checkpoint,
)
from shared.eventstore.migrate import ensure_service_role, migrate
from shared.eventstore.postgres import PostgresEventStore, create_pool
from shared.eventstore.verify import verify_log
from shared.kafka import ensure_topics, topic_specs
from shared.logging import bind_process, configure_logging, get_logger
from shared.reference import ReferenceDataError
from shared.relay import Relay, RelayConfig
from shared.repartition import ConsumerHasNotCaughtUp, OldPartitionCountUnknown, RelayStillLeads
from shared.runtime import SERVICE_ROLE
from shared.service import serve_http, tuned_gc
from shared.settings import Settings, get_settings
from shared.stack import Endpoints, endpoints

log = get_logger("yizhan")

# The settings a command may build: their validation errors are the operator's, and are reported
# one line each, by variable, without the value (which may be a secret) and without a traceback.
SETTINGS_CLASSES: dict[str, type[BaseSettings]] = {
    cls.__name__: cls for cls in (Settings, IntakeSettings)}
# Mistakes of the person at the command line that the domain reports with a clear message: an
# unknown case, a reader who is no auditor or gives no reason, a file that is no export, a
# mistyped public key; a service started on a partition count its consumers' positions were not
# kept for, or a repartition refused. Anything else is a bug and keeps its traceback.
USER_MISTAKES: tuple[type[Exception], ...] = (
    CaseNotFound, ConsumerHasNotCaughtUp, ErasureRefused, ExportUnreadable, InvalidPublicKey,
    NotAnAuditor, OldPartitionCountUnknown, PositionBeyondLog,
    PositionsKeptForAnotherPartitionCount, ReasonRequired, RelayStillLeads, ReplayFailed,
    UnknownUnit, WitnessUnreadable)


async def prepare_database(ep: Endpoints) -> list[str]:
    applied = await migrate(ep.admin_url)
    if ep.embedded:
        await ensure_service_role(ep.admin_url, SERVICE_ROLE)
    return applied


def without_password(url: str) -> str:
    """``url`` with any password (``user:password@`` or ``password=`` in the query) shown as
    ``***``: what is printed must not hand out the database's credentials."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, where = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{where}"
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else pair
        for pair in parts.query.split("&") if pair
        for name in [unquote(pair.partition("=")[0])])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def relay_config(settings: Settings, bootstrap: str) -> RelayConfig:
    return RelayConfig(
        bootstrap_servers=bootstrap, topic=settings.topic_case_events,
        partitions=settings.topic_partitions, batch_size=settings.relay_batch_size,
        poll_interval_s=settings.relay_poll_interval_s, linger_s=settings.relay_linger_ms / 1000,
        probe_interval_s=settings.relay_probe_interval_s,
    )


def warn_on_dev_key(settings: Settings, ep: Endpoints) -> None:
    """Development on external servers: the key is public. (Production never gets here: its
    settings refuse the development key.)"""
    if settings.uses_dev_signing_key and not ep.embedded:
        log.warning("checkpoints.dev_key", hint="set YIZHAN_CHECKPOINT_SIGNING_KEY: the "
                    "development key is public, its signatures prove nothing")


Runner = Callable[[asyncio.Event], Awaitable[None]]
T = TypeVar("T")


async def run_until_signal(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await main(stop)


async def serve_relay(settings: Settings, ep: Endpoints, stop: asyncio.Event) -> None:
    """The relay (one leads, others stand by), the checkpoint signer, and the relay's health
    and metrics on ``relay_port``."""
    from shared.relay_http import relay_app

    assert ep.kafka_bootstrap is not None
    witness = writable_witness(settings, ep)
    await ensure_topics(ep.kafka_bootstrap, topic_specs(settings),
                        replication_factor=settings.topic_replication_factor)
    pool = await create_pool(ep.service_url, min_size=2, max_size=4)
    store = PostgresEventStore(pool)
    signer = CheckpointSigner(settings.checkpoint_signing_key)
    relay = Relay(store, relay_config(settings, ep.kafka_bootstrap))
    warn_on_dev_key(settings, ep)
    try:
        with tuned_gc():
            await asyncio.gather(
                relay.run(stop),
                run_checkpointer(pool, signer, settings.checkpoint_every_events,
                                 settings.checkpoint_every_s, stop, witness),
                serve_http(relay_app(relay, pool), settings.http_host, settings.relay_port,
                           stop, name="relay"),
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
    bind_process(service="relay")  # every log line of this process names it
    with endpoints(settings, kafka=True) as ep:
        if settings.migrate_on_start:
            asyncio.run(prepare_database(ep))
        asyncio.run(run_until_signal(lambda stop: serve_relay(settings, ep, stop)))
    return 0


def service_urls(settings: Settings, intake: IntakeSettings) -> dict[str, str]:
    """Where each service of `yizhan up` listens (intake has a host setting of its own)."""
    host = settings.http_host
    return {"intake": f"http://{intake.http_host}:{intake.http_port}",
            "cases": f"http://{host}:{settings.cases_port}",
            "projections": f"http://{host}:{settings.projections_port}",
            "relay": f"http://{host}:{settings.relay_port}"}


def port_clash(settings: Settings, intake: IntakeSettings) -> str | None:
    """Two services of `yizhan up` (all on this machine) on one address: the second could
    never bind, and was started again for ever."""
    binds = {"YIZHAN_INTAKE_HTTP_PORT": (intake.http_host, intake.http_port),
             "YIZHAN_CASES_PORT": (settings.http_host, settings.cases_port),
             "YIZHAN_PROJECTIONS_PORT": (settings.http_host, settings.projections_port),
             "YIZHAN_RELAY_PORT": (settings.http_host, settings.relay_port)}
    anywhere = {"", "0.0.0.0", "::"}
    names = list(binds)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            (host_a, port_a), (host_b, port_b) = binds[first], binds[second]
            if port_a == port_b and (host_a == host_b or {host_a, host_b} & anywhere):
                return (f"{first} and {second} are both {port_a}: `yizhan up` runs every "
                        "service on this machine, each on a port of its own")
    return None


def cmd_up(settings: Settings, _: argparse.Namespace) -> int:
    """Start (or find) PostgreSQL and the broker, migrate, then run each service in its own
    process (``services.supervisor``) until Ctrl-C."""
    from services.supervisor import ServerSpec, Supervisor, yizhan_children

    intake = IntakeSettings()  # a configuration error stops us before any server
    # so does broken reference data, or intake's source registry, which every service (or
    # intake) loads as it starts: else each would fail, and be started again, for ever
    from services.intake.sources import load_sources
    from shared.reference import load_reference

    reference = load_reference()
    load_sources(intake.sources_file, reference.org, production=intake.env == "prod",
                 catalogue=reference.catalogue)
    clash = port_clash(settings, intake)
    if clash:
        return complain([f"configuration error: {clash}"])
    with endpoints(settings, kafka=True, start_kafka=True) as ep:
        asyncio.run(prepare_database(ep))
        urls = service_urls(settings, intake)
        print(f"PostgreSQL   {without_password(ep.service_url)}"
              f"  (admin: {without_password(ep.admin_url)})")
        print(f"Kafka        {ep.kafka_bootstrap}")
        for name, url in urls.items():
            print(f"{name:<12} {url}/" + ("metrics  (publishes the log, signs checkpoints)"
                                          if name == "relay" else "docs"))
        print("each in its own process; Ctrl-C stops everything", flush=True)
        # the children find these servers as any `yizhan` command does (data folder, or the
        # configured URLs); the database is migrated already
        env = dict(os.environ) | {"YIZHAN_MIGRATE_ON_START": "false"}
        # the embedded servers started here are started again should one exit
        servers = [ServerSpec.of(type(server).__name__, server, topics=topic_specs(settings),
                                 replication_factor=settings.topic_replication_factor)
                   for server in ep.started]
        supervisor = Supervisor(yizhan_children(), env, servers=servers)

        async def everything(stop: asyncio.Event) -> int:
            announce = asyncio.create_task(announce_ready(urls, stop))
            try:
                return await supervisor.run(stop)
            finally:
                announce.cancel()

        code = asyncio.run(run_until_signal(everything))
    print("stopped")
    return code


async def announce_ready(urls: dict[str, str], stop: asyncio.Event) -> None:
    """Print once every service answers ``/readyz``."""
    import httpx

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=2) as http:
        waiting = dict(urls)
        while waiting and not stop.is_set():
            for name, url in list(waiting.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url + "/readyz")).status_code == 200:
                        del waiting[name]
            await asyncio.sleep(0.5)
    if not waiting:
        print(f"all services ready ({time.monotonic() - started:.1f} s)", flush=True)


def service_runners(settings: Settings, ep: Endpoints) -> dict[str, Runner]:
    """Each service's process body, by name (imported lazily: each pulls in its own stack)."""
    from services.cases import serve as cases
    from services.intake import cli as intake
    from services.projections import cli as projections

    assert ep.kafka_bootstrap is not None
    bootstrap = ep.kafka_bootstrap
    return {
        "cases": lambda stop: cases.serve(settings, ep, stop),
        "intake": lambda stop: intake.serve(settings, ep, stop),
        "projections": lambda stop: projections.serve(
            settings, ep.service_url, bootstrap, stop, host=settings.http_host,
            port=settings.projections_port),
    }


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    bind_process(service=args.service)  # every log line of this process names it
    with endpoints(settings, kafka=True) as ep:
        if settings.migrate_on_start:
            asyncio.run(prepare_database(ep))
        runner = service_runners(settings, ep)[args.service]
        asyncio.run(run_until_signal(runner))
    return 0


def cmd_erase(settings: Settings, args: argparse.Namespace) -> int:
    from services.intake import cli as intake
    from services.intake.privacy import check_erasure_order
    from shared.reference import load_reference

    ref = load_reference()
    check_erasure_order(args.by, args.reason, ref.staff)  # before any database starts
    with endpoints(settings, kafka=False) as ep:
        print(asyncio.run(intake.erase_subject(settings, ep, args.subject, erased_by=args.by,
                                               reason=args.reason, ref=ref)))
    return 0


def cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from services.projections import cli as projections

    with endpoints(settings, kafka=False) as ep:
        asyncio.run(prepare_database(ep))
        report = asyncio.run(projections.rebuild(settings, ep.service_url,
                                                 processes=args.processes))
    print(f"rebuilt the read models from the log: {report.events:,} events, {report.cases:,} "
          f"cases in {report.seconds:.1f} s ({report.events_per_s:,.0f} events/s, "
          f"{report.processes} {'process' if report.processes == 1 else 'processes'}); "
          f"{report.schema} (generation {report.generation}) is now active, "
          f"{report.previous} kept as it was until the next rebuild")
    return 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from shared.auth import Principal, mint_token
    from shared.reference import load_reference

    staff = load_reference().staff
    member = staff.get(args.user)
    if member is None:
        print(f"no such user in the staff directory: {args.user}", file=sys.stderr)
        return 2
    print(mint_token(Principal(user_id=member.user_id, role=str(member.role), unit=member.unit,
                               name=member.name), settings))
    return 0


def witness_of(settings: Settings, ep: Endpoints) -> Witness | None:
    path = settings.witness_path(ep.embedded)
    return None if path is None else Witness(path)


def writable_witness(settings: Settings, ep: Endpoints) -> Witness | None:
    """The witness the relay's checkpointer appends to, checked (created if missing) before
    the relay starts: one it cannot write only logged a warning at every checkpoint, and the
    relay ran without any witness."""
    witness = witness_of(settings, ep)
    if witness is not None:
        try:
            witness.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(witness.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as exc:
            variable = ("YIZHAN_CHECKPOINT_WITNESS_FILE" if settings.checkpoint_witness_file
                        else "YIZHAN_DATA_DIR")
            raise SystemExit(f"configuration error: {variable}: cannot append to the witness "
                             f"file {witness.path}: {exc.strerror or exc}") from None
    return witness


def cmd_checkpoint(settings: Settings, _: argparse.Namespace) -> int:
    async def go(ep: Endpoints) -> None:
        pool = await create_pool(ep.service_url, min_size=1, max_size=2)
        signer = CheckpointSigner(settings.checkpoint_signing_key)
        try:
            cp = await write_checkpoint(pool, signer, witness=witness_of(settings, ep))
        finally:
            await pool.close()
        print("nothing new to sign" if cp is None else
              f"signed checkpoint at position {cp.position:,}: {cp.hash} (key {cp.key_id})")
        print(f"public key (for `yizhan audit verify --public-key`): {signer.public_key_b64()}")

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
        witness = Witness(args.witness) if args.witness else witness_of(settings, ep)
        if args.witness and not args.witness.is_file():  # named, so it must be held to
            raise WitnessUnreadable(f"witness file {args.witness} does not exist: nothing to "
                                    "hold the log to")
        seen = witness.read() if witness is not None else []  # a bad file: before any work
        pool = await create_pool(ep.service_url, min_size=1, max_size=2)
        try:
            report = await verify_log(pool, public, from_checkpoint=args.from_checkpoint,
                                      progress=progress)
            differs = await compare_witness(pool, seen, public) if seen else None
        finally:
            await pool.close()
        print(file=sys.stderr)
        if differs is not None and report.ok:  # the log holds together, but is not the one
            assert witness is not None          # whose checkpoints the witness recorded
            print(f"TAMPERED at position {differs[0]}: {differs[1]} (witness {witness.path})")
            return 1
        for note in report.notes:
            print(f"note: {note}")
        if report.ok:
            signed = report.checkpoints_checked
            print(f"OK: {report.events_checked:,} events from position {report.started_from:,} "
                  f"to {report.head_position:,}, {signed:,} signed checkpoint"
                  f"{'' if signed == 1 else 's'}; head hash {report.head_hash}")
            if args.from_checkpoint:
                print(f"(events up to position {report.started_from:,} were not checked: the "
                      "signed checkpoint there is trusted; run without --from-checkpoint to "
                      "check the whole log)")
            if seen:
                assert witness is not None
                print(f"witness {witness.path}: the log still holds every checkpoint it "
                      f"recorded ({len(seen):,})")
            return 0
        print(f"{report.verdict} at position {report.first_bad_position}"
              f"{f' (stream {report.stream_id})' if report.stream_id else ''}: {report.problem}")
        return 1

    with endpoints(settings, kafka=False) as ep:
        return asyncio.run(go(ep))


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from services.status import read_status, render

    async def go(ep: Endpoints) -> int:
        if ep.embedded:  # the embedded default's own database: as `yizhan up` leaves it
            await prepare_database(ep)
        conn = await asyncpg.connect(ep.service_url)
        try:
            status = await read_status(conn, stale_after_s=args.stale_after,
                                       partitions=topic_specs(settings))
        except asyncpg.UndefinedTableError as exc:
            print(f"the database has no Yizhan tables yet ({exc}): run `yizhan db migrate`",
                  file=sys.stderr)
            return 2
        finally:
            await conn.close()
        print(status.as_json() if args.json else render(status))
        return 1 if args.check and (status.stalled or status.problems) else 0

    with endpoints(settings, kafka=False) as ep:
        return asyncio.run(go(ep))


def cmd_repartition(settings: Settings, args: argparse.Namespace) -> int:
    """Move every consumer of the topic to the new partition count (``shared.repartition``)."""
    import asyncpg

    from shared.repartition import repartition

    topic = args.topic or settings.topic_case_events
    partitions = args.partitions or settings.topic_partitions

    async def go(ep: Endpoints) -> None:
        if ep.embedded:  # the embedded default's own database; elsewhere `yizhan db migrate`
            await prepare_database(ep)
        conn = await asyncpg.connect(ep.service_url)
        try:
            done = await repartition(conn, topic, partitions, old_partitions=args.old_partitions)
        finally:
            await conn.close()
        for line in done:
            print(line.describe())
        if not done:
            print(f"no consumer has positions on {topic}: nothing to move")
        elif any(line.changed for line in done):
            print(f"start the relay and the services with YIZHAN_TOPIC_PARTITIONS={partitions}"
                  f" (the relay recreates {topic} with {partitions} partitions and publishes "
                  "the log again; the consumers skip what they applied)")

    with endpoints(settings, kafka=False) as ep:
        asyncio.run(go(ep))
    return 0


def at_least_one(what: str) -> Callable[[str], int]:
    """An argument type: a whole number, at least 1, named ``what`` when refused."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{what} is at least 1, not {value}")
        return value

    return parse


partition_count = at_least_one("a partition count")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yizhan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run everything on the embedded default").set_defaults(fn=cmd_up)
    sub.add_parser("relay", help="run the Kafka relay").set_defaults(fn=cmd_relay)
    serve = sub.add_parser("serve", help="run one service (API and its agents)")
    serve.add_argument("service", choices=["cases", "intake", "projections"])
    serve.set_defaults(fn=cmd_serve)
    privacy = sub.add_parser("privacy", help="personal data").add_subparsers(dest="privacy",
                                                                            required=True)
    erase = privacy.add_parser("erase", help="crypto-shred a data subject's personal fields")
    erase.add_argument("subject", help="the subject id (as in CaseSubmitted.applicant)")
    erase.add_argument("--by", required=True, help="who orders the erasure (user id)")
    erase.add_argument("--reason", required=True, help="the legal ground")
    erase.set_defaults(fn=cmd_erase)
    proj = sub.add_parser("projections", help="read models").add_subparsers(dest="projections",
                                                                           required=True)
    rebuild = proj.add_parser("rebuild",
                              help="rebuild every read model from the log (blue/green)")
    rebuild.add_argument("--processes", type=at_least_one("a number of processes"),
                         default=None, metavar="N",
                         help="fold the log in this many processes (default: "
                              "YIZHAN_REBUILD_PROCESSES, else the cores available, at most 8)")
    rebuild.set_defaults(fn=cmd_rebuild)
    from services.demo.cli import add_arguments, demo_command

    demo = sub.add_parser("demo", help="drive realistic casework through the running stack")
    add_arguments(demo)
    demo.set_defaults(fn=demo_command)
    token = sub.add_parser("token", help="mint a bearer token for a user of the staff directory")
    token.add_argument("user", help="user id, e.g. clerk.530102001001.a")
    token.set_defaults(fn=cmd_token)
    status = sub.add_parser("status", help="how far each part of the pipeline has got")
    status.add_argument("--check", action="store_true",
                        help="exit 1 if a part is stalled or has a problem (for a health "
                             "probe or cron job)")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("--stale-after", type=float, default=60.0, metavar="S",
                        help="a part is stalled when work waited for it longer than S seconds "
                             "and it did not move meanwhile (default 60)")
    status.set_defaults(fn=cmd_status)
    consumers = sub.add_parser("consumers", help="the idempotent consumers' positions"
                               ).add_subparsers(dest="consumers", required=True)
    repartition = consumers.add_parser(
        "repartition", help="move consumers' positions to a new partition count (relay "
        "stopped, consumers caught up and stopped)")
    repartition.add_argument("--topic", help="default: YIZHAN_TOPIC_CASE_EVENTS")
    repartition.add_argument("--partitions", type=partition_count, metavar="N",
                             help="the new count (default: YIZHAN_TOPIC_PARTITIONS)")
    repartition.add_argument("--old-partitions", type=partition_count, metavar="N",
                             help="the count positions kept before counts were recorded "
                                  "were kept for")
    repartition.set_defaults(fn=cmd_repartition)
    db = sub.add_parser("db", help="database").add_subparsers(dest="db", required=True)
    db.add_parser("migrate", help="apply pending migrations").set_defaults(fn=cmd_migrate)
    audit = sub.add_parser("audit", help="audit the log").add_subparsers(dest="audit",
                                                                         required=True)
    audit.add_parser("checkpoint", help="sign a checkpoint now").set_defaults(fn=cmd_checkpoint)
    verify = audit.add_parser("verify", help="verify the hash chain and signed checkpoints")
    verify.add_argument("--from-checkpoint", action="store_true",
                        help="start at the latest signed checkpoint instead of genesis")
    verify.add_argument("--public-key", help="base64 Ed25519 public key (default: from settings)")
    verify.add_argument("--witness", type=Path,
                        help="a copy of the signed checkpoints kept outside the database "
                             "(default: YIZHAN_CHECKPOINT_WITNESS_FILE, or the embedded one's)")
    verify.set_defaults(fn=cmd_verify)
    from services.audit_cli import add_audit_commands

    add_audit_commands(audit)  # history, as-of, queue-as-of, export, verify-export, ...
    return parser


def variable_of(settings_class: type[BaseSettings], loc: tuple[int | str, ...]) -> str | None:
    """The environment variable behind an error's location: the field's alias (which pydantic
    also reports as the location when the value came from it), or prefix + field name."""
    if not loc:
        return None  # a check of the whole model: its message names the variables
    name = str(loc[0])
    field = settings_class.model_fields.get(name)
    if field is None:
        return name.upper()
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0]).upper()
    if isinstance(alias, str):
        return alias.upper()
    return f"{settings_class.model_config.get('env_prefix', '')}{name}".upper()


def configuration_errors(error: ValidationError) -> list[str]:
    """One line per error of a settings class, never echoing the value."""
    settings_class = SETTINGS_CLASSES[error.title]
    lines = []
    for found in error.errors(include_url=False, include_input=False, include_context=False):
        variable = variable_of(settings_class, found["loc"])
        message = found["msg"].removeprefix("Value error, ")
        lines.append(f"configuration error: {variable}: {message}" if variable
                     else f"configuration error: {message}")
    return lines


def run(args: argparse.Namespace) -> int | None:
    """Settings, logging and event loop, then the command: its exit code."""
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    if settings.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # every asyncio.run below
    code: int | None = args.fn(settings, args)
    return code


def main(argv: list[str] | None = None) -> None:
    """`yizhan`. A configuration error or a user's mistake ends in one line on stderr per
    problem and exit code 2, not a traceback (which would also print a bad secret's value)."""
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except KeyboardInterrupt:
        return
    except ValidationError as exc:
        if exc.title not in SETTINGS_CLASSES:
            raise
        code = complain(configuration_errors(exc))
    except ReferenceDataError as exc:
        code = complain([f"configuration error: {exc}"])
    except USER_MISTAKES as exc:
        code = complain([f"error: {exc}"])
    raise SystemExit(code)


def complain(lines: list[str]) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return 2
