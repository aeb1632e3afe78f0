"""Application layer of the cases service: load a case, decide, append.

Optimistic concurrency: the append expects the version the decision was made on. Without a
caller's ``expected_version`` a conflict means "someone acted first": reload, decide again
(the domain may now refuse). With one (HTTP ``If-Match``) a mismatch is the caller's to resolve.
Event ids derive from the command id, so a retried command is recognised and not applied twice.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.cases.domain import Case, Command, Rejection, authorise, decide, fold
from shared.contracts import cases as _events  # noqa: F401  (registers the case events)
from shared.contracts.cases import case_of_stream, case_stream
from shared.contracts.envelope import RecordedEvent
from shared.contracts.registry import DomainEvent, registry, to_new_event
from shared.eventstore.errors import WrongExpectedVersion
from shared.eventstore.port import EventStore
from shared.logging import current_correlation_id, get_logger
from shared.reference import Reference

log = get_logger(__name__)

stream_id = case_stream  # the name the cases service and intake use


def event_id(command_id: uuid.UUID, index: int) -> uuid.UUID:
    return uuid.uuid5(command_id, str(index))


class PreconditionFailed(Exception):
    """The case is not at the version the caller said it saw (HTTP 412)."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"case is at version {actual}, not {expected}")
        self.expected, self.actual = expected, actual


class StillConflicting(Exception):
    """Others kept acting on the case while this command was retried (HTTP 409)."""


@dataclass(frozen=True)
class Handled:
    """The outcome of a command: ``events`` are those this call recorded (none when the same
    command had already been applied)."""

    case_id: uuid.UUID
    version: int
    position: int
    events: list[DomainEvent]
    already_applied: bool = False


def metadata_for(command: Command, command_id: uuid.UUID, **extra: Any) -> dict[str, Any]:
    actor = command.actor
    meta: dict[str, Any] = {
        "actor_id": actor.user_id, "role": str(actor.role), "unit": actor.unit,
        "acting_for": actor.acting_for, "causation_id": str(command_id),
        "correlation_id": current_correlation_id() or str(command_id),
    }
    meta.update({k: v for k, v in extra.items() if v is not None})
    return {k: v for k, v in meta.items() if v is not None}


@dataclass(frozen=True)
class Loaded:
    """A case folded from its events: state, stream version, last position, event ids."""

    state: Case | None
    version: int
    position: int
    event_ids: frozenset[uuid.UUID]

    def then(self, recorded: list[RecordedEvent]) -> Loaded:
        if not recorded:
            return self
        return Loaded(fold((registry.decode(r) for r in recorded), self.state),
                      recorded[-1].version, recorded[-1].position,
                      self.event_ids | {r.event_id for r in recorded})


EMPTY = Loaded(None, 0, 0, frozenset())


class CaseCommands:
    """Loads cases (keeping recently used ones folded, reading only their newer events),
    decides and appends."""

    def __init__(self, store: EventStore, ref: Reference, *, max_attempts: int = 8,
                 cache_size: int = 10_000) -> None:
        self.store = store
        self.ref = ref
        self.max_attempts = max_attempts
        self._cache: OrderedDict[uuid.UUID, Loaded] = OrderedDict()
        self._cache_size = cache_size

    async def load(
        self, case_id: uuid.UUID, *, to_position: int | None = None
    ) -> tuple[Case | None, int, int, frozenset[uuid.UUID]]:
        """The case as of now (or a position): state, version, last position, event ids."""
        if to_position is not None:  # as-of reads fold from the start, outside the cache
            past = EMPTY.then(await self.store.read_stream(stream_id(case_id),
                                                           to_position=to_position))
            return past.state, past.version, past.position, past.event_ids
        current = await self._fresh(case_id)
        return current.state, current.version, current.position, current.event_ids

    async def _fresh(self, case_id: uuid.UUID) -> Loaded:
        """The case as the store has it now: the cached fold plus any newer events."""
        known = self._cache.get(case_id, EMPTY)
        newer = await self.store.read_stream(stream_id(case_id), from_version=known.version + 1)
        current = known.then(newer)
        if current.state is not None:
            self._remember(case_id, current)
        return current

    def observe(self, recorded: Iterable[RecordedEvent]) -> int:
        """Fold events of the log read elsewhere (the SLA agent's, from Kafka) into the cache,
        so that the first command on a case opened by intake finds it folded, not in the
        store. A case whose first event this is becomes known; a known case moves on only by
        its next version; anything else is left to the next load, which reads the store. Never
        reads, never raises (an event it cannot fold drops the case from the cache). How many
        events were folded. A batch may end inside a transaction; ``handle`` decides such a
        state again on the store's when the domain cannot decide on it."""
        folded = 0
        for event in recorded:
            case_id = case_of_stream(event.stream_id)
            if case_id is None:
                continue
            known = self._cache.get(case_id)
            if known is None and event.version == 1:
                known = EMPTY
            elif known is None or known.version != event.version - 1:
                continue
            try:
                self._remember(case_id, known.then([event]))
            except Exception as exc:  # an unknown or unfoldable event: the store decides later
                self._cache.pop(case_id, None)
                log.warning("cases.observe_dropped", case_id=str(case_id),
                            position=event.position, error=repr(exc))
                continue
            folded += 1
        return folded

    def _remember(self, case_id: uuid.UUID, loaded: Loaded) -> None:
        self._cache[case_id] = loaded
        self._cache.move_to_end(case_id)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _for_deciding(self, case_id: uuid.UUID, fresh: bool) -> tuple[Loaded, bool]:
        """The cached fold when allowed (the append's version check catches a stale one),
        else the store's; and whether what is returned was read fresh."""
        if not fresh:
            cached = self._cache.get(case_id)
            if cached is not None:
                self._cache.move_to_end(case_id)
                return cached, False
        return await self._fresh(case_id), True

    async def handle(
        self, command: Command, *, command_id: uuid.UUID, expected_version: int | None = None,
        source_system: str | None = None,
    ) -> Handled:
        """Decide and append; raises the domain's ``Rejection``, ``PreconditionFailed`` or
        ``StillConflicting``."""
        fresh = expected_version is not None  # a caller's version is judged on the store's
        for _ in range(self.max_attempts):
            case, fresh = await self._for_deciding(command.case_id, fresh)
            version, position = case.version, case.position
            if event_id(command_id, 0) in case.event_ids:  # the cache is a prefix of the store
                return Handled(command.case_id, version, position, [], already_applied=True)
            if expected_version is not None and expected_version != version:
                authorise(case.state, command, self.ref)  # the version is for who may act
                raise PreconditionFailed(expected_version, version)
            try:
                events = decide(case.state, command, self.ref)
            except Rejection:
                if fresh:
                    raise
                fresh = True  # a cached state may be behind: refuse only on the store's
                continue
            except Exception as exc:
                # The cache learns the log in Kafka's batches (``observe``), which may end
                # inside a transaction: a state no transaction left (e.g. accepted, its SLA
                # clock not yet seen), that the domain rightly refuses to decide on.
                if fresh:
                    raise
                log.info("cases.cached_state_undecidable", case_id=str(command.case_id),
                         version=version, error=repr(exc))
                fresh = True
                continue
            if not events:
                if fresh:
                    return Handled(command.case_id, version, position, [])
                fresh = True  # e.g. a timer the cached state does not know yet
                continue
            meta = metadata_for(command, command_id, source_system=source_system)
            new = [to_new_event(e, event_id=event_id(command_id, i), metadata=meta,
                                occurred_at=command.at) for i, e in enumerate(events)]
            try:
                result = await self.store.append(stream_id(command.case_id), version, new)
            except WrongExpectedVersion as conflict:
                if expected_version is not None:
                    raise PreconditionFailed(expected_version, conflict.actual) from conflict
                fresh = True
                continue
            if not result.already_applied:  # the store took them right after the cached fold
                self._remember(command.case_id, Loaded(
                    fold(events, case.state), result.version, result.position,
                    case.event_ids | {e.event_id for e in new}))
            recorded: list[DomainEvent] = [] if result.already_applied else list(events)
            return Handled(command.case_id, result.version, result.position, recorded,
                           already_applied=result.already_applied)
        raise StillConflicting(f"case {command.case_id} kept changing; try again")
