"""Writes a batch's ``Changes`` into a table set, in the caller's transaction (the live path and
a rebuild's catch-up both use it), and folds events with gap filling from the store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from services.projections.projectors import (
    APPLIED,
    PARKED,
    TABLES,
    CaseFolder,
    CaseRow,
    Gap,
    RawEvent,
    UnitPaths,
    own_deltas,
    subtree_deltas,
)
from services.projections.schema import KEYED_ONLY
from shared.contracts.cases import case_of_stream
from shared.eventstore.postgres import Conn
from shared.logging import get_logger

log = get_logger(__name__)

RAW_COLUMNS = "position, stream_id, version, type, schema_version, data::text, recorded_at"
_MISSING = (f"SELECT {RAW_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2 "
            "AND version < $3 ORDER BY version")


COPY_FROM = 100
"""Rows of a table written with COPY from this many on; fewer go in one pipelined INSERT
(one round trip where COPY takes two; a live batch usually holds a few dozen events, and under
load each round trip waits its turn for the CPU)."""


async def _insert(conn: Conn, schema: str, table: str, rows: Sequence[tuple[object, ...]]) -> None:
    columns = TABLES[table]
    if len(rows) >= COPY_FROM:
        await conn.copy_records_to_table(table, schema_name=schema, records=rows,
                                         columns=columns)
        return
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    await conn.executemany(
        f"INSERT INTO {schema}.{table} ({', '.join(columns)}) VALUES ({params})", rows)


def _upsert(schema: str, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    cols = ", ".join(columns)
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {schema}.{table} ({cols}) VALUES ({params}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


class GapNotFilled(RuntimeError):
    """The store does not hold versions a delivered event says came before it."""


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    parked: int = 0
    gaps_filled: int = 0


async def load_rows(conn: Conn, schema: str, case_ids: Sequence[UUID]) -> dict[UUID, CaseRow]:
    rows = await conn.fetch(
        f"SELECT * FROM {schema}.case_summary WHERE case_id = ANY($1::uuid[])", list(case_ids))
    return {r["case_id"]: CaseRow(*r) for r in rows}


async def fold_batch(conn: Conn, schema: str, events: Sequence[RawEvent],
                     paths: UnitPaths, *, strict: bool = False) -> tuple[CaseFolder, int]:
    """Offer ``events`` (in position order) to the rows of their cases, filling gaps from the
    events table. Returns the folder and how many missing events were read. ``strict``: raise
    ``Unprojectable`` instead of parking (a rebuild)."""
    ids = {case_of_stream(e.stream_id) for e in events}
    ids.discard(None)
    folder = CaseFolder(paths, await load_rows(conn, schema, [i for i in ids if i]),
                        strict=strict)
    filled = 0
    for event in events:
        outcome = folder.offer(event)
        if isinstance(outcome, Gap):
            missing = [RawEvent(*r) for r in await conn.fetch(
                _MISSING, outcome.stream_id, outcome.after, outcome.before)]
            for earlier in missing:
                if folder.offer(earlier) not in (APPLIED, PARKED):
                    raise GapNotFilled(f"{outcome.stream_id} version {earlier.version}")
            filled += len(missing)
            if folder.offer(event) not in (APPLIED, PARKED):
                raise GapNotFilled(f"{event.stream_id}: versions {outcome.after + 1}.."
                                   f"{outcome.before - 1} are not in the store")
            log.warning("projections.gap_filled", stream_id=event.stream_id,
                        after=outcome.after, before=outcome.before, read=len(missing))
    return folder, filled


async def write(conn: Conn, schema: str, folder: CaseFolder, paths: UnitPaths) -> None:
    """Write everything the folder collected (rows, counts, facts, parked events)."""
    changes = folder.changes
    rows = [folder.rows[i] for i in sorted(folder.touched)]
    if rows:
        await conn.executemany(
            _upsert(schema, "case_summary", TABLES["case_summary"], ["case_id"]), rows)
    timeline = [c.timeline for c in changes if c.timeline is not None]
    if timeline:
        await _insert(conn, schema, "timeline", timeline)
    await _write_counts(conn, schema, folder, paths)
    await _write_facts(conn, schema, folder)
    if folder.parked:
        await conn.executemany(
            "INSERT INTO projections.parked (position, stream_id, version, type, "
            "schema_version, reason) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            [(e.position, e.stream_id, e.version, e.type, e.schema_version, why.reason)
             for e, why in folder.parked])
        for event, why in folder.parked:
            log.error("projections.event_parked", position=event.position,
                      stream_id=event.stream_id, type=event.type, reason=why.reason)


_ADD_COUNTS = """
WITH own AS (
  INSERT INTO {schema}.unit_counts AS t (unit, status, service_code, n)
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])
  ON CONFLICT (unit, status, service_code) DO UPDATE SET n = t.n + excluded.n)
INSERT INTO {schema}.subtree_counts AS t (unit, status, service_code, n)
SELECT * FROM unnest($5::text[], $6::text[], $7::text[], $8::int[])
ON CONFLICT (unit, status, service_code) DO UPDATE SET n = t.n + excluded.n
"""
# A statement of its own, after the additions: its snapshot sees the counts they left at zero
_DROP_ZEROS = """
WITH own AS (
  DELETE FROM {schema}.unit_counts t USING unnest($1::text[], $2::text[], $3::text[])
    AS k(unit, status, service_code)
  WHERE t.unit = k.unit AND t.status = k.status AND t.service_code = k.service_code
    AND t.n = 0)
DELETE FROM {schema}.subtree_counts t USING unnest($4::text[], $5::text[], $6::text[])
  AS k(unit, status, service_code)
WHERE t.unit = k.unit AND t.status = k.status AND t.service_code = k.service_code AND t.n = 0
"""


async def _write_counts(conn: Conn, schema: str, folder: CaseFolder, paths: UnitPaths) -> None:
    """Both tables' counts in one statement, then the counts left at zero dropped in one more
    (two round trips where one per table and step took four)."""
    own = own_deltas(folder.changes)
    if not own:
        return
    tables = (own, subtree_deltas(own, paths))
    keys = [sorted(deltas) for deltas in tables]  # one order for every writer: no deadlocks
    added: list[list[object]] = []
    dropped: list[list[object]] = []
    for deltas, ordered in zip(tables, keys, strict=True):
        gone = [k for k in ordered if deltas[k] < 0]
        added += [[k.unit for k in ordered], [k.status for k in ordered],
                  [k.service_code for k in ordered], [deltas[k] for k in ordered]]
        dropped += [[k.unit for k in gone], [k.status for k in gone],
                    [k.service_code for k in gone]]
    await conn.execute(_ADD_COUNTS.format(schema=schema), *added)
    if dropped[0] or dropped[3]:
        await conn.execute(_DROP_ZEROS.format(schema=schema), *dropped)


async def _write_facts(conn: Conn, schema: str, folder: CaseFolder) -> None:
    changes = folder.changes
    facts = {(c.sla.case_id, c.sla.level, c.sla.unit, c.sla.round): c.sla
             for c in changes if c.sla}
    if facts:
        await conn.executemany(
            _upsert(schema, "sla_facts", TABLES["sla_facts"],
                    ["case_id", "level", "unit", "round"]),
            [facts[k] for k in sorted(facts)])
    breaches = [c.breach for c in changes if c.breach is not None]
    if breaches:
        cols = TABLES["sla_breaches"]
        await conn.executemany(
            f"INSERT INTO {schema}.sla_breaches ({', '.join(cols)}) VALUES "
            f"({', '.join(f'${i}' for i in range(1, len(cols) + 1))}) ON CONFLICT DO NOTHING",
            breaches)
    moves = [c.move for c in changes if c.move is not None]
    if moves:
        await _insert(conn, schema, "moves", moves)
    receipts = [c.receipt for c in changes if c.receipt is not None]
    if receipts:
        await conn.executemany(
            f"UPDATE {schema}.moves SET received_at = $3 WHERE case_id = $1 AND version = $2",
            receipts)


async def apply_batch(conn: Conn, schema: str, events: Sequence[RawEvent],
                      paths: UnitPaths, *, strict: bool = False) -> BatchResult:
    """Fold and write ``events`` into ``schema`` (inside the caller's transaction)."""
    await conn.execute(KEYED_ONLY)
    folder, filled = await fold_batch(conn, schema, events, paths, strict=strict)
    await write(conn, schema, folder, paths)
    return BatchResult(applied=len(folder.changes), duplicates=folder.duplicates,
                       parked=len(folder.parked), gaps_filled=filled)
