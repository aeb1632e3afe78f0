"""The audit commands of `yizhan` (wired in services/cli.py by ``add_audit_commands``):

    yizhan audit history CASE --by USER --reason TEXT [--format json|text|html]
    yizhan audit as-of CASE --by USER --reason TEXT [--at ISO | --position N]
    yizhan audit queue-as-of UNIT --by USER --reason TEXT [--at ISO | --position N]
    yizhan audit export (--case ID | --unit CODE --from ISO --to ISO) -o FILE --by --reason
    yizhan audit verify-export FILE [--public-key B64] [--allow-unanchored]  offline, no database
    yizhan audit rebuild-compare                                 needs the admin connection
    yizhan audit access-log --month YYYY-MM --by USER --reason TEXT [--user U] [--case ID]

Each read names an auditor of the staff directory and a reason, and is recorded in the log
before it is answered. Here the ``shared.audit`` library meets the cases domain (``evolve``)
and the projections' rebuild code (``ProjectionReadModels``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from services.cases.domain import Case, evolve
from services.projections.progress import advance_watermark
from services.projections.projectors import UnitPaths
from services.projections.rebuild import bulk_fold
from services.projections.schema import TABLES, active_schema
from shared.audit import (
    AuditService,
    CompareReport,
    ExportReport,
    ExportSummary,
    LiveMoving,
    LiveState,
    Requester,
    rebuild_compare,
    render_html,
    render_json,
    render_text,
    verify_export,
)
from shared.audit.jsonable import to_jsonable
from shared.eventstore.checkpoints import (
    CheckpointSigner,
    Witness,
    load_public_key,
    write_checkpoint,
)
from shared.eventstore.postgres import Conn, create_pool
from shared.reference import Reference, Role, load_reference
from shared.settings import Settings
from shared.stack import endpoints

T = TypeVar("T")
CASE_STREAMS_VIEW = "CREATE VIEW {s}.events AS SELECT * FROM public.events " \
                    "WHERE stream_id LIKE 'case-%'"
EXPORT_NEEDS = "export needs --case, or --unit with --from and --to"


class NotAnAuditor(ValueError):
    """Only auditors of the staff directory read through the audit commands."""


class UnknownUnit(LookupError):
    """A unit the organisation does not have (a mistyped code is not an empty queue)."""


# ------------------------------------------------------------ the projections' read models


class ProjectionReadModels:
    """The projections' read models for ``rebuild_compare``. Live: the active table set at its
    watermark. Scratch: built by the projections' own bulk rebuild (``rebuild.bulk_fold``: the
    same projectors, folder and COPY), reading the log through a view of the case streams
    (the strict rebuild stops on any other stream, such as ``audit-access-*``). ``dsn``: a role
    that may create schemas (the admin URL)."""

    tables = TABLES

    def __init__(self, dsn: str, paths: UnitPaths, *, batch_size: int = 5000) -> None:
        self.dsn, self.paths, self.batch_size = dsn, paths, batch_size

    async def live(self, conn: Conn) -> LiveState:
        schema = await active_schema(conn)
        watermark = int(await conn.fetchval(
            f"SELECT position FROM {schema}.progress WHERE name = 'watermark'"))
        top = int(await conn.fetchval(
            f"SELECT coalesce(max(position), 0) FROM {schema}.case_summary"))
        return LiveState(schema, watermark, top <= watermark)

    async def settle(self, conn: Conn) -> None:
        await advance_watermark(conn)  # the live path's own task does so every 0.2 s

    async def build(self, pool: asyncpg.Pool, schema: str, upto: int) -> None:
        ddl = (resources.files("services.projections") / "sql" / "tables.sql").read_text("utf-8")
        async with pool.acquire() as conn:
            await conn.execute(ddl.replace("{schema}", schema))
            await conn.execute(CASE_STREAMS_VIEW.format(s=schema))
        scoped = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=4,
            server_settings={"search_path": f"{schema}, public", "application_name": "yizhan"})
        assert scoped is not None
        try:
            await bulk_fold(scoped, schema, self.paths, upto, batch_size=self.batch_size,
                            progress=None)
        finally:
            await scoped.close()


# ------------------------------------------------------------ the functions


def requester(by: str, reason: str, ref: Reference, channel: str = "cli") -> Requester:
    """The auditor ``by`` from the staff directory, asking for ``reason``."""
    member = ref.staff.get(by)
    if member is None or member.role != Role.AUDITOR:
        raise NotAnAuditor(f"{by} is not an auditor in the staff directory")
    return Requester(member.user_id, str(member.role), member.unit, reason, channel)


async def _with_audit(service_url: str, run: Callable[[AuditService[Case]], Awaitable[T]]) -> T:
    pool = await create_pool(service_url, min_size=1, max_size=4)
    audit: AuditService[Case] = AuditService(pool, evolve)
    try:
        return await run(audit)
    finally:
        await audit.close()
        await pool.close()


async def history(service_url: str, case_id: uuid.UUID, *, by: str, reason: str,
                  fmt: str = "text", ref: Reference | None = None) -> str:
    """A case's history as ``json``, ``text`` or ``html``."""
    who = requester(by, reason, ref or load_reference())
    found = await _with_audit(service_url, lambda a: a.history(who, case_id, fmt=fmt))
    render = {"json": render_json, "text": render_text}.get(fmt)
    return render(found) if render else render_html(found, generated_at=datetime.now().astimezone())


def _dump(value: Any) -> str:
    return json.dumps(to_jsonable(value), ensure_ascii=False, indent=2)


async def as_of(service_url: str, case_id: uuid.UUID, *, by: str, reason: str,
                at: datetime | None = None, position: int | None = None,
                ref: Reference | None = None) -> str:
    """A case's state (JSON) as of a moment or a global position (default: now)."""
    who = requester(by, reason, ref or load_reference())
    found = await _with_audit(service_url, lambda a: a.case_as_of(who, case_id, at=at,
                                                                  position=position))
    return _dump(found)


async def queue_as_of(service_url: str, unit: str, *, by: str, reason: str,
                      at: datetime | None = None, position: int | None = None,
                      ref: Reference | None = None) -> str:
    """A unit's queue (JSON) as of a moment or a global position."""
    ref = ref or load_reference()
    who = requester(by, reason, ref)
    if unit not in ref.org:
        raise UnknownUnit(f"no unit {unit} in the organisation")
    found = await _with_audit(service_url, lambda a: a.queue_as_of(who, unit, at=at,
                                                                   position=position))
    return _dump({"unit": found.unit, "position": found.position, "cases": [
        {"case_id": c.case_id, "tracking_no": c.tracking_no, "status": c.status,
         "owner": c.owner, "level": c.level, "last_at": c.last_at} for c in found.cases]})


async def export(settings: Settings, service_url: str, out: Path, *, by: str, reason: str,
                 case_id: uuid.UUID | None = None, unit: str | None = None,
                 start: datetime | None = None, end: datetime | None = None,
                 sign_first: bool = True, ref: Reference | None = None,
                 witness: Witness | None = None) -> ExportSummary:
    """Write a case's (or a unit's, in ``[start, end)``) evidence file. ``sign_first`` signs a
    checkpoint at the head first, so every exported event is anchored; ``witness``: where it
    is appended once signed, as the relay's are (else removing it, the newest, to rewrite the
    log after the one before would not show in `yizhan audit verify`)."""
    ref = ref or load_reference()
    who = requester(by, reason, ref)
    if case_id is None and (unit is None or start is None or end is None):
        raise ValueError(EXPORT_NEEDS)  # before connecting, and before signing a checkpoint
    if case_id is None and unit not in ref.org:
        raise UnknownUnit(f"no unit {unit} in the organisation")

    async def run(audit: AuditService[Case]) -> ExportSummary:
        if sign_first:
            await write_checkpoint(audit.pool, CheckpointSigner(settings.checkpoint_signing_key),
                                   witness=witness)
        if case_id is not None:
            return await audit.export_case(who, case_id, out)
        assert unit is not None and start is not None and end is not None
        return await audit.export_unit(who, unit, start, end, out)

    return await _with_audit(service_url, run)


def verify_export_file(path: Path, settings: Settings, public_key_b64: str | None = None, *,
                       allow_unanchored: bool = False) -> tuple[int, str]:
    """Check an evidence file offline; (exit code, message)."""
    public = (load_public_key(public_key_b64) if public_key_b64
              else CheckpointSigner(settings.checkpoint_signing_key).public_key)
    report = verify_export(path, public, allow_unanchored=allow_unanchored)
    return (0 if report.ok else 1), describe_export(report)


def describe_export(report: ExportReport) -> str:
    """One line for people."""
    if not report.ok:
        hint = (" (--allow-unanchored accepts events no signed checkpoint covers yet, and a "
                "unit's window none closes yet, as not proven complete)"
                if report.verdict == "UNANCHORED" else "")
        return (f"{report.verdict} at position {report.first_bad_position}: "
                f"{report.problem}{hint}")
    text = (f"OK: {report.events} events ({report.anchored_events} anchored by "
            f"{report.checkpoints} signed checkpoints), {report.witnesses} witness events")
    if report.unanchored:
        text += f"; held by the chain only (after the last checkpoint): {report.unanchored}"
    if report.completeness is not None:
        text += (f"\n{'complete' if report.complete else 'completeness'} "
                 f"({report.selection}): {report.completeness}")
    return text


async def compare(admin_url: str, ref: Reference | None = None, *,
                  within_s: float = 30.0) -> CompareReport:
    """Rebuild every read model into a scratch schema and compare with the live tables."""
    pool = await create_pool(admin_url, min_size=2, max_size=4)
    try:
        models = ProjectionReadModels(admin_url, UnitPaths((ref or load_reference()).org))
        return await rebuild_compare(pool, models, within_s=within_s)
    finally:
        await pool.close()


def describe_compare(report: CompareReport) -> str:
    """The comparison for people: one line per table, then the differing rows."""
    lines = [f"read models at position {report.position} ({report.live_schema}) vs a rebuild "
             "from the log:"]
    for t in report.tables:
        lines.append(f"  {t.table:<15} {'same' if t.same else 'DIFFERENT'}  live "
                     f"{t.live_rows} rows {t.live_digest}  rebuilt {t.rebuilt_rows} rows "
                     f"{t.rebuilt_digest}")
        lines += [f"      only live:    {row}" for row in t.only_live]
        lines += [f"      only rebuilt: {row}" for row in t.only_rebuilt]
    lines.append("OK: no difference" if report.ok else
                 f"DIFFERENT: {', '.join(t.table for t in report.differences)}")
    return "\n".join(lines)


async def access_log(service_url: str, months: list[str], *, by: str, reason: str,
                     user_id: str | None = None, case_id: str | None = None,
                     ref: Reference | None = None) -> str:
    """The audit reads of the given months (JSON lines)."""
    who = requester(by, reason, ref or load_reference())
    found = await _with_audit(service_url, lambda a: a.access_log(who, months, user_id=user_id,
                                                                  case_id=case_id))
    return "".join(json.dumps(e.as_dict(), ensure_ascii=False) + "\n" for e in found)


# ------------------------------------------------------------ argparse


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _mistake(message: str) -> int:
    """A mistake at the command line: one line on stderr, as `yizhan` reports the others, and
    the exit code 2."""
    sys.stderr.write(f"error: {message}\n")
    return 2


def _reader_checked(args: argparse.Namespace) -> Reference:
    """The reference data, once ``--by`` is an auditor and ``--reason`` a reason: a mistake
    there (``NotAnAuditor``, ``ReasonRequired``, reported by `yizhan`) stops the command
    before it starts or connects to a database."""
    ref = load_reference()
    requester(args.by, args.reason, ref)
    return ref


def _cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    ref = _reader_checked(args)
    with endpoints(settings, kafka=False) as ep:
        _out(asyncio.run(history(ep.service_url, args.case, by=args.by, reason=args.reason,
                                 fmt=args.format, ref=ref)))
    return 0


def _cmd_as_of(settings: Settings, args: argparse.Namespace) -> int:
    ref = _reader_checked(args)
    with endpoints(settings, kafka=False) as ep:
        _out(asyncio.run(as_of(ep.service_url, args.case, by=args.by, reason=args.reason,
                               at=args.at, position=args.position, ref=ref)))
    return 0


def _cmd_queue(settings: Settings, args: argparse.Namespace) -> int:
    ref = _reader_checked(args)
    with endpoints(settings, kafka=False) as ep:
        _out(asyncio.run(queue_as_of(ep.service_url, args.unit, by=args.by, reason=args.reason,
                                     at=args.at, position=args.position, ref=ref)))
    return 0


def _cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    if args.case is None and (args.unit is None or args.start is None or args.end is None):
        return _mistake(EXPORT_NEEDS)
    ref = _reader_checked(args)
    with endpoints(settings, kafka=False) as ep:
        witnessed = settings.witness_path(ep.embedded)
        done = asyncio.run(export(settings, ep.service_url, args.output, by=args.by,
                                  reason=args.reason, case_id=args.case, unit=args.unit,
                                  start=args.start, end=args.end, ref=ref,
                                  witness=None if witnessed is None else Witness(witnessed)))
    closed = ("" if done.window_closed is None else
              "; a signed checkpoint closes the window" if done.window_closed else
              "; no signed checkpoint closes the window yet: completeness will not verify")
    _out(f"wrote {done.path}: {done.events} events, {done.witnesses} witness events, "
         f"{done.checkpoints} checkpoint{'' if done.checkpoints == 1 else 's'}"
         f"{' (partly unanchored)' if done.unanchored else ''}"
         f"{closed}")
    return 0


def _cmd_verify_export(settings: Settings, args: argparse.Namespace) -> int:
    try:
        code, message = verify_export_file(args.file, settings, args.public_key,
                                           allow_unanchored=args.allow_unanchored)
    except OSError as exc:  # only the file is read here: missing, a folder, not permitted
        return _mistake(f"cannot read {args.file}: {exc.strerror or exc}")
    _out(message)
    return code


def _cmd_compare(settings: Settings, args: argparse.Namespace) -> int:
    with endpoints(settings, kafka=False) as ep:
        try:
            report = asyncio.run(compare(ep.admin_url, within_s=args.within))
        except LiveMoving as exc:
            sys.stderr.write(f"not compared: {exc}\n")
            return 3
    _out(describe_compare(report))
    return 0 if report.ok else 1


def _cmd_access_log(settings: Settings, args: argparse.Namespace) -> int:
    ref = _reader_checked(args)
    with endpoints(settings, kafka=False) as ep:
        found = asyncio.run(access_log(ep.service_url, args.month, by=args.by,
                                       reason=args.reason, user_id=args.user, case_id=args.case,
                                       ref=ref))
    if found:
        _out(found)
    else:  # stdout stays JSON lines (none); the person reading is told why on stderr
        sys.stderr.write(f"no audit reads recorded in {', '.join(args.month)} (months in China "
                         "Standard Time, UTC+8; the entries' times are UTC)\n")
    return 0


def _moment_arg(text: str) -> datetime:
    """``--at``, ``--from``, ``--to``: a moment with its zone (without one, the database driver
    would read it in the zone of whatever host runs the command; the HTTP API refuses it too)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 moment") from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: write one, e.g. "
                                         f"{text}+08:00 (China Standard Time)")
    return value


def _month_arg(text: str) -> str:
    """``--month``: ``YYYY-MM`` (another spelling names a stream no read is recorded in)."""
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a month as YYYY-MM (01 to 12)")
    return text


def _case_arg(text: str) -> str:
    """``--case`` of the access log: a case id, written as the log records it."""
    try:
        return str(uuid.UUID(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a case id (a UUID)") from exc


def _reader_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", required=True, help="the auditor reading (user id)")
    parser.add_argument("--reason", required=True, help="why (recorded in the access log)")


def _moment_args(parser: argparse.ArgumentParser) -> None:
    moment = parser.add_mutually_exclusive_group()
    moment.add_argument("--at", type=_moment_arg, help="ISO timestamp with zone")
    moment.add_argument("--position", type=int, help="global position")


def add_audit_commands(audit: Any) -> None:
    """Add the audit subcommands to the ``audit`` subparsers of `yizhan` (each sets ``fn``)."""
    p = audit.add_parser("history", help="a case's history")
    p.add_argument("case", type=uuid.UUID)
    p.add_argument("--format", choices=["json", "text", "html"], default="text")
    _reader_args(p)
    p.set_defaults(fn=_cmd_history)
    p = audit.add_parser("as-of", help="a case's state as of a moment or position")
    p.add_argument("case", type=uuid.UUID)
    _moment_args(p)
    _reader_args(p)
    p.set_defaults(fn=_cmd_as_of)
    p = audit.add_parser("queue-as-of", help="a unit's queue as of a moment or position")
    p.add_argument("unit")
    _moment_args(p)
    _reader_args(p)
    p.set_defaults(fn=_cmd_queue)
    p = audit.add_parser("export", help="write an evidence file (JSONL)")
    p.add_argument("--case", type=uuid.UUID)
    p.add_argument("--unit")
    p.add_argument("--from", dest="start", type=_moment_arg, help="ISO timestamp with zone")
    p.add_argument("--to", dest="end", type=_moment_arg, help="ISO timestamp with zone")
    p.add_argument("-o", "--output", type=Path, required=True)
    _reader_args(p)
    p.set_defaults(fn=_cmd_export)
    p = audit.add_parser("verify-export", help="check an evidence file offline")
    p.add_argument("file", type=Path)
    p.add_argument("--public-key", help="base64 Ed25519 public key (default: from settings)")
    p.add_argument("--allow-unanchored", action="store_true",
                   help="pass events that no signed checkpoint covers yet (exported after the "
                        "last checkpoint): they are held by the hash chain only; and a unit's "
                        "window no checkpoint closes yet, reported as not proven complete")
    p.set_defaults(fn=_cmd_verify_export)
    p = audit.add_parser(
        "rebuild-compare", help="rebuild read models aside and compare",
        description="Rebuild every read model from the log into a scratch schema, at the "
                    "position the live tables hold exactly, and compare them table by table. "
                    "Exit code 0: no difference; 1: differences (listed); 3: not compared, "
                    "the live tables never held exactly the events up to their watermark "
                    "within --within seconds (the live path kept applying ahead of it).")
    p.add_argument("--within", type=float, default=30.0, metavar="S",
                   help="how long to look for the live tables holding exactly the events up "
                        "to their watermark (default 30)")
    p.set_defaults(fn=_cmd_compare)
    p = audit.add_parser("access-log", help="who read what (auditors of auditors)")
    p.add_argument("--month", action="append", required=True, type=_month_arg,
                   help="YYYY-MM in China Standard Time, UTC+8 (repeatable)")
    p.add_argument("--user")
    p.add_argument("--case", type=_case_arg)
    _reader_args(p)
    p.set_defaults(fn=_cmd_access_log)
