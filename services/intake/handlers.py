"""Application layer of intake: route a visit, protect the applicant, decide the opening of
every case with the case domain, and append them all in one multi-stream append.

Ids derive from the idempotency key (``domain/ids.py``): a retried visit re-appends the same
event ids, which the store recognises (``already_applied``), so nothing is applied twice; the
receipt is then rebuilt from the stored events. ``IdempotencyLog`` keeps the receipt given for
each (scope, key) with the payload's fingerprint: same key and payload → the same receipt;
same key, other payload → ``KeyReused``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.cases.domain import Rejection, decide_all
from services.cases.handlers import stream_id
from services.intake.domain import Refused, Route, Visit, route
from services.intake.domain.ids import event_ids, visit_id
from services.intake.domain.opening import Reception, visit_commands
from services.intake.domain.reasons import Reason
from services.intake.domain.receipts import VisitReceipt, visit_receipt
from services.intake.privacy import Privacy, SubjectErased
from shared.contracts import cases as _events  # noqa: F401  (registers the case events)
from shared.contracts.canonical import canonical_json
from shared.contracts.cases import (
    Actor,
    CaseAccepted,
    CaseEvent,
    CaseSubmitted,
    EncryptedApplicant,
)
from shared.contracts.envelope import EncodedEvent, utc
from shared.contracts.registry import DomainEvent, registry
from shared.eventstore.errors import EventIdReused, WrongExpectedVersion
from shared.eventstore.port import NO_STREAM, EventStore, StreamAppend
from shared.logging import correlation, get_logger
from shared.reference import Reference, Role

log = get_logger(__name__)
_stdlib_log = logging.getLogger(__name__)  # its level decides whether the info lines are built
Clock = Callable[[], datetime]


class KeyReused(Exception):
    """The idempotency key was used before with another payload (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class VisitRequest:
    """A visit to open. ``receiver`` None = the station's duty clerk receives it (Kafka)."""

    visit: Visit
    scope: str
    key: str
    submitter: Actor
    receiver: Actor | None
    correlation_id: str
    source_system: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A visit decided and encoded, not yet appended."""

    request: VisitRequest
    visit: uuid.UUID
    decided: dict[uuid.UUID, list[CaseEvent]]
    appends: list[StreamAppend]


PENDING: dict[str, Any] = {}
"""The receipt of a key reserved by a request still opening its visit (or that failed)."""


@dataclass(frozen=True, slots=True)
class Remembered:
    fingerprint: str
    receipt: dict[str, Any]


class IdempotencyLog:
    """Receipts by (scope, idempotency key) in ``intake_requests``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def recall(self, scope_keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str],
                                                                          Remembered]:
        if not scope_keys:
            return {}
        rows = await self.pool.fetch(
            "SELECT r.scope, r.key, r.fingerprint, r.receipt::text FROM intake_requests r"
            " JOIN unnest($1::text[], $2::text[]) AS w(scope, key)"
            " ON r.scope = w.scope AND r.key = w.key",
            [s for s, _ in scope_keys], [k for _, k in scope_keys])
        return {(r["scope"], r["key"]): Remembered(r["fingerprint"], _loads(r["receipt"]))
                for r in rows}

    async def reserve(self, scope: str, key: str, fingerprint: str) -> Remembered:
        """Take the key for this payload (an empty receipt: ``PENDING``) unless it is taken;
        what the key holds now (first wins)."""
        return (await self.reserve_many([(scope, key, fingerprint)]))[(scope, key)]

    async def reserve_many(self, entries: Sequence[tuple[str, str, str]]
                           ) -> dict[tuple[str, str], Remembered]:
        """``reserve`` for many (scope, key, fingerprint) at once: one statement, and a recall
        only of keys another holder had taken first. A key its holder gave back between the
        two (refused, ``release``) is gone from the recall: it is tried again, never left out
        (the caller looks every key up). Keys go in sorted, as in ``release_many`` and the
        ingress's record: two replicas taking the same keys in opposite orders could deadlock."""
        held: dict[tuple[str, str], Remembered] = {}
        todo = sorted(entries)
        while todo:
            won = {(r["scope"], r["key"]) for r in await self.pool.fetch(
                "INSERT INTO intake_requests (scope, key, fingerprint, receipt)"
                " SELECT s, k, f, '{}'::jsonb FROM unnest($1::text[], $2::text[], $3::text[])"
                " AS w(s, k, f) ON CONFLICT DO NOTHING RETURNING scope, key",
                [s for s, _, _ in todo], [k for _, k, _ in todo], [f for _, _, f in todo])}
            held |= {(s, k): Remembered(f, PENDING) for s, k, f in todo if (s, k) in won}
            lost = [(s, k, f) for s, k, f in todo if (s, k) not in won]
            kept = await self.recall([(s, k) for s, k, _ in lost])
            held |= kept
            todo = [(s, k, f) for s, k, f in lost if (s, k) not in kept]
        return held

    async def release_many(self, entries: Sequence[tuple[str, str, str]]) -> None:
        """``release`` for many (scope, key, fingerprint) at once (sorted, see
        ``reserve_many``)."""
        if entries:
            entries = sorted(entries)
            await self.pool.execute(
                "DELETE FROM intake_requests r USING unnest($1::text[], $2::text[],"
                " $3::text[]) AS w(s, k, f) WHERE r.scope = w.s AND r.key = w.k"
                " AND r.fingerprint = w.f AND r.receipt = '{}'::jsonb",
                [s for s, _, _ in entries], [k for _, k, _ in entries],
                [f for _, _, f in entries])

    async def release(self, scope: str, key: str, fingerprint: str) -> None:
        """Give back a reservation whose request opened nothing (it was refused)."""
        await self.pool.execute(
            "DELETE FROM intake_requests WHERE scope = $1 AND key = $2 AND fingerprint = $3"
            " AND receipt = '{}'::jsonb", scope, key, fingerprint)

    async def remember(self, scope: str, key: str, fingerprint: str,
                       receipt: VisitReceipt) -> Remembered:
        """Keep the receipt unless one is already kept (filling this payload's reservation
        in); return the one kept (first wins)."""
        await self.pool.execute(
            "INSERT INTO intake_requests AS r (scope, key, fingerprint, receipt)"
            " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (scope, key) DO UPDATE"
            " SET receipt = excluded.receipt WHERE r.receipt = '{}'::jsonb"
            " AND r.fingerprint = excluded.fingerprint",
            scope, key, fingerprint, receipt.model_dump_json())
        kept = await self.recall([(scope, key)])
        return kept[(scope, key)]


def _loads(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value


class IntakeHandler:
    def __init__(self, store: EventStore, ref: Reference, privacy: Privacy,
                 idempotency: IdempotencyLog, clock: Clock, *, tracking_key: bytes) -> None:
        self.store = store
        self.ref = ref
        self.privacy = privacy
        self.idempotency = idempotency
        self.clock = clock
        self.tracking_key = tracking_key
        self._clerks: dict[str, Actor] = {}  # each station's duty clerk, as an actor

    async def submit_visit(self, request: VisitRequest, fingerprint: str, *,
                           shared_key: bool = True) -> tuple[VisitReceipt, bool]:
        """Open the visit once per key: ``(receipt, replayed)``; raises ``Refused`` or
        ``KeyReused``. ``shared_key`` False: the key was made for this request alone (the
        caller sent none), so no other request can race for it."""
        scope, key = request.scope, request.key
        prior = (await self.idempotency.recall([(scope, key)])).get((scope, key))
        if prior is not None and prior.receipt != PENDING:
            return _replay(prior, fingerprint), True
        # reserved before anything is opened: a request sent at the same moment with another
        # payload finds the key taken (409) instead of opening its own cases beside these
        if prior is None and shared_key:
            prior = await self.idempotency.reserve(scope, key, fingerprint)
        if prior is not None and prior.fingerprint != fingerprint:
            raise KeyReused("this Idempotency-Key was used before with another payload")
        (outcome,) = await self.open_visits([request])
        if isinstance(outcome, Refused):
            if shared_key:
                await self.idempotency.release(scope, key, fingerprint)
            raise outcome
        kept = await self.idempotency.remember(scope, key, fingerprint, outcome)
        return _replay(kept, fingerprint), False

    async def open_visits(self, requests: Sequence[VisitRequest]) -> list[VisitReceipt | Refused]:
        """Open many visits at once (their appends are group-committed by the store); each
        gets its receipt or the reasons it was refused."""
        outcomes: list[Prepared | Refused | None] = [None] * len(requests)
        routable: list[tuple[int, Route]] = []
        for index, request in enumerate(requests):
            try:
                routable.append((index, route(request.visit, self.ref)))
            except Refused as refused:
                outcomes[index] = refused
        applicants = await self.privacy.protect([requests[i].visit.applicant for i, _ in routable])
        for (index, found), applicant in zip(routable, applicants, strict=True):
            outcomes[index] = self._prepare(requests[index], found, applicant)
        return list(await asyncio.gather(*(
            self._append_visit(o) if isinstance(o, Prepared) else _refused(o)
            for o in outcomes if o is not None)))

    def _prepare(self, request: VisitRequest, found: Route,
                 applicant: EncryptedApplicant) -> Prepared | Refused:
        """Decide the opening of every case of the visit and encode its events (most of the CPU
        of a visit; pure: nothing is appended or logged yet)."""
        visit = visit_id(request.scope, request.key)
        try:
            reception = self._reception(request, found)
            decided = {cid: decide_all(None, commands, self.ref) for cid, commands in
                       visit_commands(found, visit=visit, applicant=applicant,
                                      reception=reception,
                                      tracking_key=self.tracking_key).items()}
        except Rejection as rejection:
            return refused_by_domain(rejection)
        except Refused as refused:
            return refused
        metadata: dict[Actor, str] = {}  # the events of a visit share a few actors
        appends = [_encoded(cid, events, visit, request, metadata)
                   for cid, events in decided.items()]
        return Prepared(request, visit, decided, appends)

    async def _append_visit(self, prepared: Prepared) -> VisitReceipt | Refused:
        request, visit, decided = prepared.request, prepared.visit, prepared.decided
        with correlation(request.correlation_id):
            try:
                results = await self.store.append_streams(prepared.appends)
            except (WrongExpectedVersion, EventIdReused):
                return Refused([_OTHER_CASES], "conflict")
            events_by_case: dict[uuid.UUID, Sequence[DomainEvent]] = dict(decided)
            if any(r.already_applied for r in results):
                events_by_case = await self._stored(list(decided))
                if not await self._same_visit(prepared, events_by_case):
                    return Refused([_OTHER_CASES], "conflict")
            position = max(r.position for r in results)
            if _stdlib_log.isEnabledFor(logging.INFO):  # (the line costs even when dropped)
                log.info("intake.visit_opened", visit_id=str(visit), cases=len(decided),
                         position=position, replayed=results[0].already_applied,
                         source_system=request.source_system)
            return visit_receipt(visit, events_by_case, self.ref.catalogue, position)

    async def _same_visit(self, prepared: Prepared,
                          stored: Mapping[uuid.UUID, Sequence[DomainEvent]]) -> bool:
        """Whether the visit the log holds under this key (its events' ids) is the one asked
        for: the same services, station, documents supplied, owner (a clerk's choice, with
        acting_for; a source's visits go to the station's duty clerk of the day) and applicant.
        The ids follow from the key alone, so a request with another payload whose key was not
        remembered (the database failed after the append) is otherwise taken for a retry,
        answered with the first payload's receipt, and what it changed is silently dropped.
        What follows from the time or the reference data (tracking number, due dates, missing
        documents) may differ in a retry."""
        chosen_owner = prepared.request.receiver is not None

        def asked(events: Sequence[DomainEvent]) -> tuple[Any, ...]:
            submitted = next(e for e in events if isinstance(e, CaseSubmitted))
            accepted = next(e for e in events if isinstance(e, CaseAccepted))
            return (submitted.service_code, submitted.station,
                    sorted(submitted.documents_provided), submitted.source_system,
                    accepted.owner if chosen_owner else None)

        # the opening events only: the case may have moved on since
        opening = {case: stored[case][:len(events)] for case, events in prepared.decided.items()}
        if any(asked(opening[case]) != asked(events)
               for case, events in prepared.decided.items()):
            return False
        first = next(e for e in next(iter(opening.values())) if isinstance(e, CaseSubmitted))
        try:
            applicant = await self.privacy.reveal(first.applicant)
        except SubjectErased:
            return False
        return applicant == prepared.request.visit.applicant.personal_fields()

    def _reception(self, request: VisitRequest, found: Route) -> Reception:
        receiver = request.receiver or self._duty_clerk(found.station.code)
        return Reception(submitter=request.submitter, receiver=receiver, at=self.clock(),
                         source_system=request.source_system)

    def _duty_clerk(self, station: str) -> Actor:
        clerk = self._clerks.get(station)
        if clerk is None:
            try:
                member = self.ref.staff.duty_clerk(station)
            except LookupError as exc:
                raise Refused([Reason("no_duty_clerk", "station",
                                      "the station has no clerk to receive the case")]) from exc
            clerk = Actor(user_id=member.user_id, role=Role.STATION_CLERK, unit=member.unit)
            self._clerks[station] = clerk
        return clerk

    async def _stored(self, cases: list[uuid.UUID]) -> dict[uuid.UUID, Sequence[DomainEvent]]:
        streams = await asyncio.gather(*(self.store.read_stream(stream_id(c)) for c in cases))
        return {case: [registry.decode(r) for r in recorded]
                for case, recorded in zip(cases, streams, strict=True)}


def _encoded(case: uuid.UUID, events: Sequence[CaseEvent], visit: uuid.UUID,
             request: VisitRequest, metadata: dict[Actor, str]) -> StreamAppend:
    """A new case's stream, its events encoded here as the store would (``to_new_event``, then
    the canonical text of data and metadata: the same bytes), the metadata of each actor
    encoded once per visit."""
    encoded = []
    for event, eid in zip(events, event_ids(case, len(events)), strict=True):
        meta = metadata.get(event.actor)
        if meta is None:
            meta = metadata[event.actor] = canonical_json(_metadata(event.actor, visit, request))
        encoded.append(EncodedEvent(eid, event.event_type, event.schema_version,
                                    canonical_json(event.model_dump(mode="json")), meta,
                                    utc(event.at)))
    return StreamAppend(stream_id(case), NO_STREAM, encoded)


def _metadata(actor: Actor, visit: uuid.UUID, request: VisitRequest) -> dict[str, Any]:
    meta = {"actor_id": actor.user_id, "role": str(actor.role), "unit": actor.unit,
            "acting_for": actor.acting_for, "correlation_id": request.correlation_id,
            "causation_id": str(visit), "source_system": request.source_system}
    return {k: v for k, v in meta.items() if v is not None}


_OTHER_CASES = Reason("idempotency_key_reused", "idempotency_key",
                      "this key already opened other cases")


async def _refused(refused: Refused) -> Refused:
    return refused


def refused_by_domain(rejection: Rejection) -> Refused:
    reason = Reason(type(rejection).__name__, rejection.field or "command", rejection.reason)
    kind = "invalid" if rejection.kind == "not_found" else rejection.kind
    return Refused([reason], kind)


def _replay(kept: Remembered, fingerprint: str) -> VisitReceipt:
    if kept.fingerprint != fingerprint:
        raise KeyReused("this Idempotency-Key was used before with another payload")
    return VisitReceipt.model_validate(kept.receipt)
