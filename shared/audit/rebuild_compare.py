"""Determinism proof: rebuild every read model from the log into a scratch schema and compare
it, table by table, with the live tables at the same position.

The read models belong to a service (``shared`` imports none), so the caller hands in a
``ReadModels``: which tables, where the live ones are and how far they got, and how to build
them from the log. The comparison itself is here: an order-independent md5 of each table's
rows, and for tables that differ, the rows found on one side only.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from shared.eventstore.postgres import Conn
from shared.logging import get_logger

log = get_logger(__name__)


class LiveMoving(RuntimeError):
    """The live tables were never found holding exactly the events up to their watermark
    within the time allowed (events applied past it, e.g. one partition ahead of another);
    try again when quieter."""


@dataclass(frozen=True)
class LiveState:
    """The live table set: its schema and the position every event up to which it holds."""

    schema: str
    position: int
    exact: bool
    """True when the tables hold exactly events 1..position (nothing applied beyond)."""


class ReadModels(Protocol):
    """A service's read models, as the comparison needs them."""

    @property
    def tables(self) -> Sequence[str]:
        """The read-model tables, compared one by one."""
        ...

    async def live(self, conn: Conn) -> LiveState:
        """Inside a repeatable-read snapshot: the live set and how far it got."""
        ...

    async def settle(self, conn: Conn) -> None:
        """Before each snapshot, outside it: bring the live position up to what is applied
        (e.g. advance a watermark that a background task moves only now and then)."""
        ...

    async def build(self, pool: asyncpg.Pool, schema: str, upto: int) -> None:
        """Create the tables in the (empty) ``schema`` and fill them from events 1..upto."""
        ...


@dataclass(frozen=True)
class TableDiff:
    """One table compared. ``only_live`` / ``only_rebuilt``: row texts on one side only."""

    table: str
    live_digest: str
    rebuilt_digest: str
    live_rows: int
    rebuilt_rows: int
    only_live: tuple[str, ...] = ()
    only_rebuilt: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        return self.live_digest == self.rebuilt_digest

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "same": self.same, "live_digest": self.live_digest,
                "rebuilt_digest": self.rebuilt_digest, "live_rows": self.live_rows,
                "rebuilt_rows": self.rebuilt_rows, "only_live": list(self.only_live),
                "only_rebuilt": list(self.only_rebuilt)}


@dataclass
class CompareReport:
    """Every table's comparison at ``position``; ``ok`` when all match."""

    position: int
    live_schema: str
    tables: list[TableDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.same for t in self.tables)

    @property
    def differences(self) -> list[TableDiff]:
        return [t for t in self.tables if not t.same]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "position": self.position, "live_schema": self.live_schema,
                "tables": [t.as_dict() for t in self.tables]}


_ROW_HASHES = "SELECT md5(t::text) FROM {s}.{t} t"
_ROWS_BY_HASH = "SELECT t::text FROM {s}.{t} t WHERE md5(t::text) = ANY($1::text[])"


async def _row_hashes(conn: Conn, schema: str, table: str) -> Counter[str]:
    return Counter(r[0] for r in await conn.fetch(_ROW_HASHES.format(s=schema, t=table)))


async def _rows(conn: Conn, schema: str, table: str, hashes: Sequence[str]) -> tuple[str, ...]:
    if not hashes:
        return ()
    rows = await conn.fetch(_ROWS_BY_HASH.format(s=schema, t=table), list(hashes))
    return tuple(sorted(r[0] for r in rows))


def _digest(hashes: Counter[str]) -> str:
    text = "\n".join(sorted(hashes.elements()))
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


async def _compare_table(live: Conn, rebuilt: Conn, live_schema: str, scratch: str,
                         table: str, max_rows: int) -> TableDiff:
    ours = await _row_hashes(live, live_schema, table)
    theirs = await _row_hashes(rebuilt, scratch, table)
    diff = TableDiff(table, _digest(ours), _digest(theirs), sum(ours.values()),
                     sum(theirs.values()))
    if diff.same:
        return diff
    only_live = list((ours - theirs).elements())[:max_rows]
    only_rebuilt = list((theirs - ours).elements())[:max_rows]
    return TableDiff(diff.table, diff.live_digest, diff.rebuilt_digest, diff.live_rows,
                     diff.rebuilt_rows, await _rows(live, live_schema, table, only_live),
                     await _rows(rebuilt, scratch, table, only_rebuilt))


async def _snapshot(conn: Conn, models: ReadModels, within_s: float,
                    every_s: float = 0.02) -> LiveState:
    """Open a repeatable-read snapshot (left open) in which the live tables are exact: settle
    the live position, then look, until it holds or ``within_s`` has passed. Under load the
    live path applies a batch every few milliseconds, and between two batches its tables are
    usually exact once the watermark has caught up; so look often, settling first each time."""
    deadline = asyncio.get_running_loop().time() + within_s
    tries = 0
    while True:
        tries += 1
        await models.settle(conn)
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        state = await models.live(conn)
        if state.exact:
            return state
        await conn.execute("ROLLBACK")
        if asyncio.get_running_loop().time() >= deadline:
            raise LiveMoving(
                f"the live read models held events past their watermark (position "
                f"{state.position}) at each of {tries} looks over {within_s:g} s: the live "
                f"path keeps applying ahead of it; try again when it is quieter")
        await asyncio.sleep(every_s)


async def rebuild_compare(pool: asyncpg.Pool, models: ReadModels, *, max_rows: int = 20,
                          within_s: float = 30.0, keep_scratch: bool = False) -> CompareReport:
    """Rebuild ``models`` into a scratch schema up to the live tables' position and compare
    every table. Needs a role that may create schemas. The scratch schema is dropped after
    (unless ``keep_scratch``)."""
    scratch = f"audit_scratch_{uuid.uuid4().hex[:12]}"
    async with pool.acquire() as live, pool.acquire() as other:
        state = await _snapshot(live, models, within_s)
        try:
            await other.execute(f"CREATE SCHEMA {scratch}")
            await models.build(pool, scratch, state.position)
            report = CompareReport(state.position, state.schema)
            for table in models.tables:
                report.tables.append(await _compare_table(live, other, state.schema, scratch,
                                                          table, max_rows))
        finally:
            await live.execute("ROLLBACK")
            if not keep_scratch:
                await other.execute(f"DROP SCHEMA IF EXISTS {scratch} CASCADE")
    log.info("audit.rebuild_compared", position=report.position, ok=report.ok,
             differing=[t.table for t in report.differences])
    return report
