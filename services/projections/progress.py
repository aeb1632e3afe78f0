"""How far the active table set has got: the watermark (every event at or below it is applied
or parked), the log's head, and the lag between them in events and seconds.

Positions interleave across Kafka partitions, so the live path's per-partition positions do
not say which prefix of the log is applied. The watermark does: it advances past each event
whose case row already holds its version (or that was parked), checked against the events
table itself, and stops at the first event not yet applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.projections.schema import KEYED_ONLY, active_schema
from shared.eventstore.postgres import NO_FLUSH_WAIT, Conn

SCAN = 5_000

_ADVANCE = """
WITH w AS (SELECT position FROM {s}.progress WHERE name = 'watermark'),
open AS (SELECT ev.position
         FROM (SELECT e.position, e.stream_id, e.version FROM events e
               WHERE e.position > (SELECT position FROM w) ORDER BY e.position LIMIT $1) AS ev
         WHERE ev.stream_id LIKE 'case-%'
           AND NOT coalesce((SELECT cs.version >= ev.version FROM {s}.case_summary cs
                             WHERE cs.case_id = CASE WHEN pg_input_is_valid(
                                 substr(ev.stream_id, 6), 'uuid')
                                 THEN substr(ev.stream_id, 6)::uuid END), false)
           AND NOT coalesce((SELECT true FROM projections.parked p
                             WHERE p.position = ev.position), false)
         ORDER BY ev.position LIMIT 1),
target AS MATERIALIZED (
    SELECT coalesce((SELECT position - 1 FROM open),
                    least((SELECT position FROM w) + $1,
                          (SELECT coalesce(max(position), 0) FROM events))) AS position),
moved AS (UPDATE {s}.progress p SET position = t.position, updated_at = now() FROM target t
          WHERE p.name = 'watermark' AND t.position > p.position RETURNING p.position)
SELECT coalesce((SELECT position FROM moved), (SELECT position FROM w))
FROM ({no_flush_wait}) AS no_flush_wait
"""
"""The first event after the watermark (within the next ``SCAN``) not yet applied or parked:
the events in position order, each looked up by key in the case rows and the parked list
(scalar subqueries: no join to plan, so no sort and no hash of a whole table), stopping at the
first open one. An advance so reads only what was applied since the last one, plus one; it
used to check every event up to the head, each time, while behind. The watermark moves to just
before the open event, or ``SCAN`` positions on (capped at the head) if none is open: the
``SCAN`` events read hold every position up to there. ``target`` is materialized, or the
UPDATE evaluated it twice (in SET and in WHERE). A case stream's id is checked with
``pg_input_is_valid`` (PostgreSQL 16+), not a regular expression: about 0.7 against 6-9 us a
row here."""

_STATUS = "SELECT * FROM projections.read_status()"  # migrations 0002, 0003


@dataclass(frozen=True)
class Progress:
    """Where the active read models stand."""

    schema: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    generation: int
    parked: int

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "head": self.head, "lag_events": self.lag_events,
                "lag_seconds": round(self.lag_seconds, 3), "generation": self.generation,
                "table_set": self.schema}


async def advance_watermark(conn: Conn, schema: str | None = None) -> int:
    """Move the active set's watermark over every applied event; return it (or a value it
    has since passed). One statement (in a transaction of its own that first prices sequential
    scans out, ``KEYED_ONLY``), and it only writes when the watermark moves: advancers
    running at once each move it forward only (the row lock of the UPDATE orders them, and
    its condition is checked again on the row they waited for), and an advance that finds
    nothing new writes nothing, so it costs no commit to disk. Nor does it wait for its own
    commit's flush (``NO_FLUSH_WAIT``): a watermark lost in a database crash is recomputed by
    the next advance, from the read models themselves."""
    name = schema or await active_schema(conn)
    async with conn.transaction():
        await conn.execute(KEYED_ONLY)  # else a plan made on a near-empty case_summary scans it
        value = await conn.fetchval(_ADVANCE.format(s=name, no_flush_wait=NO_FLUSH_WAIT), SCAN)
    return int(value or 0)


async def read_progress(conn: Conn) -> Progress:
    """The active set and how far it has got (one round trip)."""
    row = await conn.fetchrow(_STATUS)
    assert row is not None
    return progress_of(row)


def progress_of(row: Any) -> Progress:
    """``Progress`` from a row holding ``projections.read_status()``'s columns."""
    schema = str(row["active_schema"])
    position, head = int(row["watermark"]), int(row["head"])
    lag_s = 0.0
    if head > position and row["next_recorded_at"] is not None:
        lag_s = max(0.0, (row["now"] - row["next_recorded_at"]).total_seconds())
    return Progress(schema, position, head, head - position, lag_s, int(row["generation"]),
                    int(row["parked"]))
