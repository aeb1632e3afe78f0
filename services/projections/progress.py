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

from services.projections.schema import active_schema
from shared.eventstore.postgres import Conn

SCAN = 5_000

_ADVANCE = """
WITH w AS (SELECT position FROM {s}.progress WHERE name = 'watermark' FOR UPDATE),
ev AS (SELECT e.position, e.stream_id, e.version FROM events e
       WHERE e.position > (SELECT position FROM w) ORDER BY e.position LIMIT $1),
chk AS (SELECT ev.position,
               coalesce(cs.version >= ev.version, false) OR p.position IS NOT NULL
               OR ev.stream_id NOT LIKE 'case-%' AS done
        FROM ev
        LEFT JOIN {s}.case_summary cs ON cs.case_id = CASE
            WHEN ev.stream_id ~ '^case-[0-9a-fA-F-]{{36}}$' THEN substr(ev.stream_id, 6)::uuid END
        LEFT JOIN projections.parked p ON p.position = ev.position)
UPDATE {s}.progress SET position = coalesce(
        (SELECT min(position) - 1 FROM chk WHERE NOT done),
        (SELECT max(position) FROM chk), progress.position),
    updated_at = now()
WHERE name = 'watermark'
RETURNING position
"""

_STATUS = """
SELECT p.position AS watermark, p.updated_at,
       (SELECT coalesce(max(position), 0) FROM events) AS head,
       (SELECT recorded_at FROM events WHERE position = p.position + 1) AS next_recorded_at,
       (SELECT generation FROM projections.state WHERE name = 'main') AS generation,
       (SELECT count(*) FROM projections.parked) AS parked,
       clock_timestamp() AS now
FROM {s}.progress p WHERE name = 'watermark'
"""


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
    """Move the active set's watermark over every applied event (one transaction)."""
    async with conn.transaction():
        name = schema or await active_schema(conn, lock=True)
        value = await conn.fetchval(_ADVANCE.format(s=name), SCAN)
    return int(value or 0)


async def read_progress(conn: Conn) -> Progress:
    schema = await active_schema(conn)
    row = await conn.fetchrow(_STATUS.format(s=schema))
    assert row is not None
    position, head = int(row["watermark"]), int(row["head"])
    lag_s = 0.0
    if head > position and row["next_recorded_at"] is not None:
        lag_s = max(0.0, (row["now"] - row["next_recorded_at"]).total_seconds())
    return Progress(schema, position, head, head - position, lag_s, int(row["generation"]),
                    int(row["parked"]))
