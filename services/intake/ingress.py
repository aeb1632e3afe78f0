"""Kafka ingress, without Faust: what to do with a batch of messages read from
``intake.submissions``. The agent (``agents.py``) only feeds batches in and acks them after.

For each message, once: read it (size, source, signature, JSON, schema), open its visit or
attach its result, and record the outcome in ``intake_messages`` keyed by (topic, partition,
offset, digest of the message) — accepted, duplicate or rejected with reasons. Rejections are
then published to ``intake.rejected`` (original bytes sealed, reasons, source, offset) and
marked published. A
redelivered message finds its outcome and is not applied or published again; a crash between
the record and the publication publishes it on redelivery (at least once, never silently lost).
A broker that lost its log (a restarted memory broker, a recreated topic) hands out offsets
again from 0: a message at a known offset but with another digest is a new message, handled as
such (and counted, ``offsets_reused``), never skipped as a redelivery.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import asyncpg

from services.cases.domain import RecordExternalResult, Rejection
from services.cases.handlers import CaseCommands
from services.intake.domain.ids import command_id, derived_id, visit_id
from services.intake.domain.reasons import Reason, Refused
from services.intake.domain.receipts import VisitReceipt
from services.intake.domain.submission import ResultSubmission, VisitSubmission
from services.intake.handlers import (
    PENDING,
    Clock,
    IntakeHandler,
    Remembered,
    VisitRequest,
    refused_by_domain,
)
from services.intake.messages import (
    CORRELATION_HEADER,
    SOURCE_HEADER,
    RawMessage,
    Readable,
    Unreadable,
    read_message,
)
from services.intake.quarantine import Quarantine
from services.intake.sources import SourceRegistry, SourceSystem
from shared.contracts.cases import Actor
from shared.contracts.envelope import iso
from shared.eventstore.errors import EventIdReused
from shared.logging import correlation, get_logger
from shared.reference import Role

log = get_logger(__name__)
SWEEP_BATCH = 500  # dead letters the sweep publishes per request
Where = tuple[str, int, int]
OutcomeKind = Literal["accepted", "duplicate", "rejected"]


class RejectionPublisher(Protocol):
    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Send (key, value) pairs to ``intake.rejected`` and wait for every acknowledgement."""
        ...


@dataclass
class Outcome:
    where: Where
    digest: bytes
    kind: OutcomeKind
    source: str | None = None
    key: str | None = None
    case_ids: list[uuid.UUID] = field(default_factory=list)
    reasons: tuple[Reason, ...] = ()
    rejection: dict[str, Any] | None = None
    remember: tuple[str, str, str, str] | None = None  # scope, key, fingerprint, receipt


@dataclass
class IngressStats:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    redelivered: int = 0
    published: int = 0
    batches: int = 0
    offsets_reused: int = 0
    """Messages at an offset that held another message before: the broker lost its log."""
    swept: int = 0
    """Rejections published by the sweep (``KafkaIngress.sweep``), not by their message."""


class OutcomeLog:
    """``intake_messages``: the durable outcome of every message handled."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def known(self, messages: Sequence[RawMessage]) -> tuple[
            dict[Where, dict[str, Any] | None], list[RawMessage],
            list[tuple[dict[str, Any], bytes]]]:
        """Messages already handled, with their unpublished rejection (else None); those at
        an offset that held another message (by digest) before; and the unpublished
        rejections of those other messages, with their digests (the broker lost them before
        they were published: they will never be delivered again). A row recorded before
        digests were (an empty digest) stands for whatever message was at its offset."""
        rows = await self.pool.fetch(
            'SELECT m.topic, m.partition, m."offset", m.rejection::text AS rejection,'
            " m.published_at IS NULL AND m.outcome = 'rejected' AS unpublished,"
            " m.digest = w.digest OR m.digest = ''::bytea AS same, m.digest AS digest"
            ' FROM intake_messages m JOIN unnest($1::text[], $2::int[], $3::bigint[],'
            ' $4::bytea[]) AS w(topic, partition, "offset", digest)'
            ' ON (m.topic, m.partition, m."offset") = (w.topic, w.partition, w."offset")',
            [m.topic for m in messages], [m.partition for m in messages],
            [m.offset for m in messages], [m.digest for m in messages])
        known: dict[Where, dict[str, Any] | None] = {}
        other: set[Where] = set()
        orphans: list[tuple[dict[str, Any], bytes]] = []
        for r in rows:
            where = (r["topic"], r["partition"], r["offset"])
            if r["same"]:
                known[where] = json.loads(r["rejection"]) if r["unpublished"] else None
            else:
                other.add(where)
                if r["unpublished"]:
                    orphans.append((json.loads(r["rejection"]), bytes(r["digest"])))
        reused = [m for m in messages if m.where in other and m.where not in known]
        return known, reused, orphans

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Every outcome and every receipt to remember, in one transaction."""
        # sorted by key: replicas filling the same reservations in opposite orders could
        # deadlock (as in ``IdempotencyLog.reserve_many``)
        remembered = sorted(o.remember for o in outcomes if o.remember is not None)
        async with self.pool.acquire() as conn, conn.transaction():
            if remembered:
                await conn.execute(  # fills this payload's reservation; first receipt wins
                    "INSERT INTO intake_requests AS r (scope, key, fingerprint, receipt)"
                    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])"
                    " ON CONFLICT (scope, key) DO UPDATE SET receipt = excluded.receipt"
                    " WHERE r.receipt = '{}'::jsonb AND r.fingerprint = excluded.fingerprint",
                    [s for s, _, _, _ in remembered], [k for _, k, _, _ in remembered],
                    [f for _, _, f, _ in remembered], [r for _, _, _, r in remembered])
            await conn.execute(
                'INSERT INTO intake_messages (topic, partition, "offset", digest, source,'
                " idempotency_key, outcome, case_ids, reasons, rejection)"
                " SELECT t, p, o, d, s, k, c,"
                " ARRAY(SELECT jsonb_array_elements_text(ids))::uuid[], r, j"
                " FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bytea[], $5::text[],"
                " $6::text[], $7::text[], $8::jsonb[], $9::jsonb[], $10::jsonb[])"
                " AS x(t, p, o, d, s, k, c, ids, r, j) ON CONFLICT DO NOTHING",
                *_columns(outcomes))

    async def unpublished(self, older_than_s: float, limit: int
                          ) -> list[tuple[dict[str, Any], bytes]]:
        """Rejections recorded at least ``older_than_s`` ago and not yet published, oldest
        first, with their digests."""
        rows = await self.pool.fetch(
            "SELECT rejection::text AS rejection, digest FROM intake_messages"
            " WHERE outcome = 'rejected' AND published_at IS NULL AND rejection IS NOT NULL"
            " AND recorded_at <= now() - make_interval(secs => $1)"
            " ORDER BY recorded_at LIMIT $2", older_than_s, limit)
        return [(json.loads(r["rejection"]), bytes(r["digest"])) for r in rows]

    async def mark_published(self, published: Sequence[tuple[Where, bytes]]) -> None:
        await self.pool.execute(
            'UPDATE intake_messages m SET published_at = now() FROM unnest($1::text[],'
            ' $2::int[], $3::bigint[], $4::bytea[]) AS w(topic, partition, "offset", digest)'
            ' WHERE (m.topic, m.partition, m."offset") = (w.topic, w.partition, w."offset")'
            " AND (m.digest = w.digest OR m.digest = ''::bytea)",
            [w[0] for w, _ in published], [w[1] for w, _ in published],
            [w[2] for w, _ in published], [d for _, d in published])


def _columns(outcomes: Sequence[Outcome]) -> list[list[Any]]:
    return [
        [o.where[0] for o in outcomes], [o.where[1] for o in outcomes],
        [o.where[2] for o in outcomes], [o.digest for o in outcomes],
        [o.source for o in outcomes],
        [o.key for o in outcomes], [o.kind for o in outcomes],
        [json.dumps([str(c) for c in o.case_ids]) for o in outcomes],
        [json.dumps([r.as_dict() for r in o.reasons]) for o in outcomes],
        [None if o.rejection is None else json.dumps(o.rejection) for o in outcomes],
    ]


class Turn:
    """A batch's place among the batches in flight: ``wait()`` until every earlier batch that
    holds one of its messages or idempotency keys is done, ``release()`` once it is done."""

    def __init__(self, turns: Turns, claims: list[Hashable], before: set[asyncio.Future[None]],
                 done: asyncio.Future[None]) -> None:
        self._turns = turns
        self._claims = claims
        self._before = before
        self._done = done

    async def wait(self) -> None:
        if self._before:  # (asyncio.wait: cancelling this waiter leaves the others alone)
            await asyncio.wait(self._before)

    def release(self) -> None:
        self._turns.release(self._claims, self._done)


class Turns:
    """Batches in flight take turns on what they share.

    Two batches may be handled at once (the agent overlaps one batch's database round trips
    with the next one's decoding and deciding), but not on the same message (a redelivery)
    or the same idempotency key: the later one would not yet see the earlier one's outcome
    or receipt, so a repeat would not be recognised as one. ``claim`` is called in the order
    the batches were read; each claim is a message's place or its (scope, key), taken from
    the JSON without validating it (a claim too many only costs waiting)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._holders: dict[Hashable, asyncio.Future[None]] = {}

    def claim(self, messages: Sequence[RawMessage]) -> Turn:
        claims: list[Hashable] = []
        for message in messages:
            claims.append(message.where)
            key = self._scope_key(message)
            if key is not None:
                claims.append(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = {self._holders[c] for c in claims if c in self._holders}
        for claim in claims:
            self._holders[claim] = done
        return Turn(self, claims, before, done)

    def release(self, claims: list[Hashable], done: asyncio.Future[None]) -> None:
        for claim in claims:
            if self._holders.get(claim) is done:
                del self._holders[claim]
        if not done.done():
            done.set_result(None)

    def __len__(self) -> int:
        return len(self._holders)

    def _scope_key(self, message: RawMessage) -> tuple[str, str] | None:
        source = message.header(SOURCE_HEADER)
        if not source or not message.value or len(message.value) > self.max_bytes:
            return None
        try:
            body = json.loads(message.value)
        except (ValueError, RecursionError):
            return None
        key = body.get("idempotency_key") if isinstance(body, dict) else None
        # (stripped as the submission model strips it)
        return (f"source:{source}", key.strip()) if isinstance(key, str) else None


class KafkaIngress:
    def __init__(self, handler: IntakeHandler, commands: CaseCommands, outcomes: OutcomeLog,
                 sources: SourceRegistry, quarantine: Quarantine, publisher: RejectionPublisher,
                 *, max_bytes: int, clock: Clock) -> None:
        self.handler = handler
        self.commands = commands
        self.outcomes = outcomes
        self.sources = sources
        self.quarantine = quarantine
        self.publisher = publisher
        self.max_bytes = max_bytes
        self.clock = clock
        self.stats = IngressStats()
        self.turns = Turns(max_bytes)
        self._actors: dict[str, Actor] = {}  # each source system's actor (frozen, shared)

    async def handle(self, messages: Sequence[RawMessage]) -> None:
        """Handle a batch; when this returns, every message's outcome is durable and every
        rejection published: the batch may be acked. Raises (nothing acked) on a fault.

        Batches may be handled concurrently only if they share no message and no idempotency
        key (``Turns``): the agent lets a batch through once earlier ones holding its keys are
        done."""
        self.stats.batches += 1
        self.stats.received += len(messages)
        unique = list({m.where: m for m in messages}.values())
        readings = [read_message(m, self.sources, self.max_bytes) for m in unique]
        readable = [r for r in readings if isinstance(r, Readable)]
        (known, reused, orphans), recalled = await asyncio.gather(
            self.outcomes.known(unique),
            self.handler.idempotency.recall(
                [(r.scope, r.submission.idempotency_key) for r in readable]))
        self.stats.redelivered += len(known)
        if reused:
            self.stats.offsets_reused += len(reused)
            log.warning("intake.offsets_reused", messages=len(reused),
                        first=[m.where for m in reused[:3]],
                        meaning="the broker lost its log: handled as new messages")
        decided = await self._decide([r for r in readings if r.raw.where not in known],
                                     recalled)
        await self.outcomes.record(decided)
        pending = [(o.rejection, o.digest) for o in decided if o.rejection is not None]
        digests = {m.where: m.digest for m in unique}
        pending += [(r, digests[w]) for w, r in known.items() if r is not None]
        await self._publish(pending + orphans)
        self._count(decided)

    async def _decide(self, readings: Sequence[Readable | Unreadable],
                      recalled: Mapping[tuple[str, str], Remembered]) -> list[Outcome]:
        """Every reading's outcome. Repeats of a refused message are decided again, as
        messages in their own right, round after round: in a loop, not by recursion, since a
        source resending one refused message may put hundreds of copies in one batch (each
        round decides one of them), and a recursion that deep fails the batch for ever."""
        outcomes: dict[Where, Outcome] = {}
        pending: Sequence[Readable | Unreadable] = readings
        while pending:
            pending = await self._decide_round(pending, recalled, outcomes)
            recalled = {}  # a later round's keys were given back: reserved afresh
        return [outcomes[r.raw.where] for r in readings]

    async def _decide_round(self, readings: Sequence[Readable | Unreadable],
                            recalled: Mapping[tuple[str, str], Remembered],
                            outcomes: dict[Where, Outcome]) -> list[Readable]:
        """Decide the first message of each key and its repeats into ``outcomes``; the repeats
        of a refused first message, to be decided in the next round."""
        first_of: dict[tuple[str, str], Readable] = {}
        repeats: list[Readable] = []
        fresh: list[Readable] = []
        for reading in readings:
            if isinstance(reading, Unreadable):
                outcomes[reading.raw.where] = self._rejected(reading.raw, reading.source_id,
                                                             reading.reasons)
                continue
            scope_key = (reading.scope, reading.submission.idempotency_key)
            seen = recalled.get(scope_key)
            if seen is not None and seen.receipt != PENDING:
                outcomes[reading.raw.where] = self._repeated(reading, seen)
            elif scope_key in first_of:
                repeats.append(reading)  # judged once the first one's outcome is known
            else:
                first_of[scope_key] = reading
                fresh.append(reading)
        going = await self._reserve(fresh, recalled, outcomes)
        visits = [r for r in going if isinstance(r.submission, VisitSubmission)]
        results = [r for r in going if not isinstance(r.submission, VisitSubmission)]
        for reading, done in zip(visits, await self._open_visits(visits), strict=True):
            outcomes[reading.raw.where] = self._visit_outcome(reading, done)
        for reading, attached in zip(results, await self._attach_results(results), strict=True):
            outcomes[reading.raw.where] = self._result_outcome(reading, attached)
        # a refused message opened nothing: its key is given back, for a corrected resend
        await self.handler.idempotency.release_many([
            (r.scope, r.submission.idempotency_key, r.fingerprint) for r in going
            if outcomes[r.raw.where].kind == "rejected"])
        # A repeat of a message of this batch: of an accepted one, a duplicate (or a reuse of
        # its key); of a rejected one, which opened nothing and kept no key, a message in its
        # own right, as it would be in a later batch (a corrected resend, or a copy that must
        # reach intake.rejected with its reasons too).
        again: list[Readable] = []
        for reading in repeats:
            first = first_of[(reading.scope, reading.submission.idempotency_key)]
            if outcomes[first.raw.where].kind == "rejected":
                again.append(reading)
                continue
            outcome = self._repeated(reading, _remembered(first))
            if outcome.kind == "duplicate":
                outcome.case_ids = list(outcomes[first.raw.where].case_ids)
            outcomes[reading.raw.where] = outcome
        return again

    async def _reserve(self, fresh: Sequence[Readable],
                       recalled: Mapping[tuple[str, str], Remembered],
                       outcomes: dict[Where, Outcome]) -> list[Readable]:
        """Take each key for its payload before anything is opened (``intake_requests``, as
        an HTTP request does; one statement per batch): the messages that may go on. Two
        messages with one key and different payloads on two partitions, read by two replicas
        at once, each opened their own cases before; now the second finds the key taken and
        is rejected as a reuse. A key already taken for the same payload and not finished (a
        crash between reserving and recording, or another replica opening the same visit
        now) goes on: the ids follow from the key, so the store keeps one set."""
        def key_of(reading: Readable) -> tuple[str, str]:
            return reading.scope, reading.submission.idempotency_key

        held = dict(recalled) | await self.handler.idempotency.reserve_many(
            [(*key_of(r), r.fingerprint) for r in fresh if key_of(r) not in recalled])
        going = []
        for reading in fresh:
            holder = held[key_of(reading)]
            if holder.receipt != PENDING:  # finished by another replica meanwhile
                outcomes[reading.raw.where] = self._repeated(reading, holder)
            elif holder.fingerprint != reading.fingerprint:
                outcomes[reading.raw.where] = self._rejected(reading.raw, reading.source.id,
                                                             (_KEY_REUSED,))
            else:
                going.append(reading)
        return going

    async def _open_visits(self, visits: Sequence[Readable]) -> list[VisitReceipt | Refused]:
        requests = []
        for reading in visits:
            submission = reading.submission
            assert isinstance(submission, VisitSubmission)
            requests.append(VisitRequest(
                visit=submission, scope=reading.scope, key=submission.idempotency_key,
                submitter=self._system_actor(reading.source), receiver=None,
                correlation_id=_correlation_id(reading), source_system=reading.source.id))
        return await self.handler.open_visits(requests)

    async def _attach_results(self, results: Sequence[Readable]) -> list[Refused | None]:
        return list(await asyncio.gather(*(self._attach(r) for r in results)))

    async def _attach(self, reading: Readable) -> Refused | None:
        result = reading.submission
        assert isinstance(result, ResultSubmission)
        command = RecordExternalResult(
            case_id=result.case_id, at=self.clock(), actor=self._system_actor(reading.source),
            source_system=reading.source.id, result_type=result.result_type,
            reference=result.reference, summary=result.summary, details=dict(result.details))
        with correlation(_correlation_id(reading)):
            try:
                await self.commands.handle(
                    command, command_id=command_id(reading.scope, result.idempotency_key),
                    source_system=reading.source.id)
            except Rejection as rejection:
                return refused_by_domain(rejection)
            except EventIdReused:  # the key's command id already holds a result elsewhere
                return Refused([_KEY_REUSED], "conflict")
        return None

    def _visit_outcome(self, reading: Readable, done: VisitReceipt | Refused) -> Outcome:
        if isinstance(done, Refused):
            return self._rejected(reading.raw, reading.source.id,
                                  _as_sent(done.reasons, "station"))
        key = reading.submission.idempotency_key
        return Outcome(reading.raw.where, reading.raw.digest, "accepted", reading.source.id, key,
                       [c.case_id for c in done.cases],
                       remember=(reading.scope, key, reading.fingerprint,
                                 done.model_dump_json()))

    def _result_outcome(self, reading: Readable, refused: Refused | None) -> Outcome:
        if refused is not None:
            return self._rejected(reading.raw, reading.source.id,
                                  _as_sent(refused.reasons, "case_id"))
        submission = reading.submission
        assert isinstance(submission, ResultSubmission)
        # remembered as a visit's receipt is: a later message with the key and another payload
        # is then refused as a reuse (the case domain only knows the command id, so it took
        # it for a redelivery and dropped the new content), and the same one is a duplicate
        key = submission.idempotency_key
        receipt = json.dumps({"cases": [{"case_id": str(submission.case_id)}]})
        return Outcome(reading.raw.where, reading.raw.digest, "accepted", reading.source.id,
                       key, [submission.case_id],
                       remember=(reading.scope, key, reading.fingerprint, receipt))

    def _repeated(self, reading: Readable, seen: Remembered) -> Outcome:
        if seen.fingerprint != reading.fingerprint:
            return self._rejected(reading.raw, reading.source.id, (_KEY_REUSED,))
        cases = [uuid.UUID(c["case_id"]) for c in seen.receipt.get("cases", [])]
        return Outcome(reading.raw.where, reading.raw.digest, "duplicate", reading.source.id,
                       reading.submission.idempotency_key, cases)

    def _rejected(self, raw: RawMessage, source: str | None,
                  reasons: Sequence[Reason]) -> Outcome:
        log.warning("intake.submission_rejected", topic=raw.topic, partition=raw.partition,
                    offset=raw.offset, source=source, reasons=[r.code for r in reasons])
        rejection = {
            "topic": raw.topic, "partition": raw.partition, "offset": raw.offset,
            "source": source, "reasons": [r.as_dict() for r in reasons],
            "rejected_at": iso(self.clock()),
            "original": self.quarantine.seal(raw.value or b"", raw.where),
        }
        return Outcome(raw.where, raw.digest, "rejected", source, None, reasons=tuple(reasons),
                       rejection=rejection)

    async def sweep(self, *, older_than_s: float, limit: int = SWEEP_BATCH) -> int:
        """Publish the rejections recorded at least ``older_than_s`` ago and still not
        published (``limit`` at a time); how many. Their message is not coming back to
        publish them: the broker lost its log (a restarted memory broker, a recreated topic)
        and no new message took their offset. A batch still retrying its publication that
        long publishes it again when the broker returns: the dead-letter topic is at least
        once, keyed by topic/partition/offset."""
        pending = await self.outcomes.unpublished(older_than_s, limit)
        if pending:
            await self._publish(pending)
            self.stats.swept += len(pending)
            log.warning("intake.dead_letters_swept", rejections=len(pending),
                        first=[f"{r['topic']}/{r['partition']}/{r['offset']}"
                               for r, _ in pending[:3]],
                        meaning="rejected messages the broker lost before their dead letter "
                                "was published")
        return len(pending)

    async def _publish(self, rejections: Sequence[tuple[dict[str, Any], bytes]]) -> None:
        if not rejections:
            return
        await self.publisher.publish([
            (f"{r['topic']}/{r['partition']}/{r['offset']}".encode(),
             json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode())
            for r, _ in rejections])
        await self.outcomes.mark_published(
            [((r["topic"], r["partition"], r["offset"]), d) for r, d in rejections])
        self.stats.published += len(rejections)

    def _system_actor(self, source: SourceSystem) -> Actor:
        actor = self._actors.get(source.id)
        if actor is None or actor.unit != source.unit:
            actor = self._actors[source.id] = Actor(
                user_id=f"system:{source.id}", role=Role.SYSTEM, unit=source.unit)
        return actor

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.kind == "accepted":
                self.stats.accepted += 1
            elif outcome.kind == "duplicate":
                self.stats.duplicates += 1
            else:
                self.stats.rejected += 1


_KEY_REUSED = Reason("idempotency_key_reused", "idempotency_key",
                     "this key was used before with another payload")


def _as_sent(reasons: Sequence[Reason], field: str) -> tuple[Reason, ...]:
    """The case domain names the fields of its command: a refusal of its actor (the source
    system, acting outside its unit) is about the ``field`` of the message that took it
    there (a visit's station, a result's case)."""
    return tuple(replace(r, field=field) if r.field.split(".")[0] == "actor" else r
                 for r in reasons)


def _remembered(reading: Readable) -> Remembered:
    """A message repeated within one batch counts as seen with the first one's payload."""
    visit = visit_id(reading.scope, reading.submission.idempotency_key)
    return Remembered(reading.fingerprint, {"visit_id": str(visit), "cases": []})


def _correlation_id(reading: Readable) -> str:
    given = reading.raw.header(CORRELATION_HEADER)
    if given and 0 < len(given) <= 128 and given.isprintable():
        return given
    return derived_id(visit_id(reading.scope, reading.submission.idempotency_key),
                      "correlation").hex
