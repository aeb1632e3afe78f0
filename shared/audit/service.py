"""The audit application layer: every read goes through here, so every read is recorded.

The access event is appended *before* the read is answered: an attempt that then fails (an
unknown case, say) still shows in the access log, and no answer leaves without its record.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Generic
from uuid import UUID

import asyncpg

from shared.audit.access import AccessEntry, Requester, read_access_log, record_read
from shared.audit.as_of import (
    CaseAsOf,
    Evolve,
    PositionBeyondLog,
    Q,
    QueueAsOf,
    case_as_of,
    head_position,
    position_at,
    queue_as_of,
)
from shared.audit.export import ExportSummary, export_case, export_unit
from shared.audit.history import CaseHistory, load_history
from shared.contracts.audit import AuditAction
from shared.eventstore.postgres import PostgresEventStore


class AuditService(Generic[Q]):
    """Audit reads over one pool. ``evolve`` is the case domain's (see ``as_of``)."""

    def __init__(self, pool: asyncpg.Pool, evolve: Evolve[Q]) -> None:
        self.pool = pool
        self.store = PostgresEventStore(pool)
        self.evolve = evolve

    async def close(self) -> None:
        """Stop the store's writer task (the pool stays the caller's)."""
        await self.store.close()

    async def resolve(self, position: int | None, at: datetime | None) -> int:
        """The global position meant: ``position``, else the last one recorded by ``at``,
        else the head. ``PositionBeyondLog`` for a position past the head: the state there is
        not known yet (today's state is not the state at a position not reached)."""
        if position is not None:
            head = await head_position(self.pool)
            if position > head:
                raise PositionBeyondLog(f"position {position} is beyond the end of the log "
                                        f"(position {head}): there is no state there yet")
            return position
        if at is not None:
            return await position_at(self.pool, at)
        return await head_position(self.pool)

    async def history(self, who: Requester, case_id: UUID, *, fmt: str = "json") -> CaseHistory:
        """A case's full history."""
        await record_read(self.store, who, AuditAction.HISTORY, case_id=case_id, detail=fmt)
        return await load_history(self.store, case_id)

    async def case_as_of(self, who: Requester, case_id: UUID, *, position: int | None = None,
                         at: datetime | None = None) -> CaseAsOf[Q]:
        """A case's state as of a position or moment (default: now)."""
        target = await self.resolve(position, at)
        await record_read(self.store, who, AuditAction.CASE_AS_OF, case_id=case_id,
                          position=target, detail="" if at is None else f"at {at.isoformat()}")
        return await case_as_of(self.store, case_id, target, self.evolve)

    async def queue_as_of(self, who: Requester, unit: str, *, position: int | None = None,
                          at: datetime | None = None) -> QueueAsOf[Q]:
        """A unit's queue (open cases it held) as of a position or moment."""
        target = await self.resolve(position, at)
        await record_read(self.store, who, AuditAction.QUEUE_AS_OF, unit=unit, position=target,
                          detail="" if at is None else f"at {at.isoformat()}")
        return await queue_as_of(self.store, unit, target, self.evolve)

    async def export_case(self, who: Requester, case_id: UUID, path: Path) -> ExportSummary:
        """Write a case's portable evidence file."""
        await record_read(self.store, who, AuditAction.EXPORT, case_id=case_id,
                          detail=path.name)
        return await export_case(self.pool, case_id, path)

    async def export_unit(self, who: Requester, unit: str, start: datetime, end: datetime,
                          path: Path) -> ExportSummary:
        """Write the portable evidence of a unit's events in ``[start, end)``."""
        await record_read(self.store, who, AuditAction.EXPORT, unit=unit,
                          detail=f"{start.isoformat()}..{end.isoformat()} {path.name}")
        return await export_unit(self.pool, unit, start, end, path)

    async def access_log(self, who: Requester, months: Sequence[str], *,
                         user_id: str | None = None,
                         case_id: str | None = None) -> list[AccessEntry]:
        """Who read what in the given months (this read is recorded too)."""
        await record_read(self.store, who, AuditAction.ACCESS_LOG,
                          detail=f"months {','.join(months)} user {user_id or '*'} "
                                 f"case {case_id or '*'}")
        return await read_access_log(self.store, months, user_id=user_id, case_id=case_id)
