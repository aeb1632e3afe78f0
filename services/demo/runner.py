"""``run_demo``: the demo's days, driven through the real interfaces of a running stack —
intake and cases over HTTP, other systems over Kafka — then the dashboards from the
projections API and the audit of the log."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.demo import kafka_feed as kf
from services.demo.cast import Tokens, receiving_stations
from services.demo.client import Api, Urls
from services.demo.dashboard import city_total, summary
from services.demo.plan import CaseScript
from services.demo.progress import Progress, no_progress
from services.demo.report import AuditResult, DemoReport, Tally, UnitSummary
from services.demo.workload import DayPlan, PlannedVisit, plan_days
from services.intake.settings import IntakeSettings
from services.intake.sources import SourceRegistry, load_sources
from shared.eventstore.checkpoints import CheckpointSigner, Witness, write_checkpoint
from shared.eventstore.postgres import create_pool
from shared.eventstore.verify import verify_log
from shared.logging import get_logger
from shared.reference import Reference, Role, load_reference
from shared.settings import Settings
from shared.stack import Endpoints

log = get_logger("yizhan.demo")
DEFAULT_SCALE = 0.5
"""Default share of docs/domain.md's 1,560 contacts a day: `yizhan demo --days 1` in about
1–1.5 min on two cores, on `yizhan up`."""
CONCURRENCY = 24
CITY_READER = "supervisor.530100.a"
RESULT_SERVICES = frozenset({"rural_pension_insurance", "land_expropriated_farmers_pension",
                             "flexible_employment_pension_declaration"})


@dataclass
class Meter:
    """Counts finished operations and reports them to ``progress``."""

    progress: Progress
    total: int
    done: int = 0
    phase: str = ""

    def add(self, n: int = 1) -> None:
        self.done += n
        self.progress(self.done, self.total, self.phase)


@dataclass
class Demo:
    """One run's context: interfaces, reference data and what has happened so far."""

    settings: Settings
    endpoints: Endpoints
    api: Api
    ref: Reference
    sources: SourceRegistry
    run: str
    meter: Meter
    tally: Tally = field(default_factory=Tally)
    approved: list[str] = field(default_factory=list)
    rejected_places: set[str] = field(default_factory=set)


def urls_of(settings: Settings, intake: IntakeSettings) -> Urls:
    """Where the three HTTP services listen (the same settings `yizhan up` reads)."""
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    return Urls(intake=f"http://{host}:{intake.http_port}",
                cases=f"http://{host}:{settings.cases_port}",
                projections=f"http://{host}:{settings.projections_port}")


# ------------------------------------------------------------------ casework


async def work_case(demo: Demo, case_id: str, script: CaseScript) -> None:
    """Send the case's steps in order; stop at the first refusal."""
    for index, step in enumerate(script.steps):
        answer = await demo.api.command(case_id, step.verb, step.actor, step.body,
                                        key=f"{demo.run}:{case_id}:{index}")
        demo.meter.add()
        if not answer.ok:
            demo.tally.failures[f"{step.verb}: {answer.status} {answer.problem}"] += 1
            log.warning("demo.command_refused", case_id=case_id, verb=step.verb,
                        status=answer.status, problem=answer.problem)
            demo.meter.add(len(script.steps) - index - 1)
            demo.tally.endings["refused"] += 1
            return
        demo.tally.commands[step.verb] += 1
    demo.tally.endings[script.ending] += 1
    if _approved(script) and script.service_code in RESULT_SERVICES:
        demo.approved.append(case_id)


def _approved(script: CaseScript) -> bool:
    decisions = [s for s in script.steps if s.verb == "decide"]
    return bool(decisions) and decisions[-1].body.get("outcome") == "approved"


async def counter_visit(demo: Demo, visit: PlannedVisit) -> None:
    """A resident at the counter: the visit over HTTP, then each case's casework."""
    body: dict[str, Any] = {
        "station": visit.station, "applicant": visit.applicant,
        "services": [{"service_code": c.service_code, "documents": list(c.documents)}
                     for c in visit.cases]}
    if visit.acting_for:
        body["acting_for"] = visit.acting_for
    answer = await demo.api.visit(visit.clerk, body, key=f"{demo.run}:{visit.key}")
    demo.meter.add()
    if not answer.ok:
        demo.tally.failures[f"visit: {answer.status} {answer.problem}"] += 1
        demo.meter.add(sum(len(c.script.steps) for c in visit.cases))
        return
    demo.tally.visits_counter += 1
    demo.tally.cases_counter += len(visit.cases)
    ids = {c["service_code"]: c["case_id"] for c in answer.body["cases"]}
    await asyncio.gather(*(work_case(demo, ids[c.service_code], c.script)
                           for c in visit.cases))


async def kafka_visit_cases(demo: Demo, visit: PlannedVisit) -> None:
    """Wait until intake opened the visit's cases from Kafka, then work them."""
    ids = kf.kafka_case_ids(visit)
    for case_id, planned in zip(ids, visit.cases, strict=True):
        if not await _case_exists(demo, case_id, visit.clerk):
            demo.tally.kafka_missing_cases += 1
            demo.meter.add(len(planned.script.steps))
            continue
        demo.tally.cases_kafka += 1
        await work_case(demo, case_id, planned.script)
    demo.tally.visits_kafka += 1


async def _case_exists(demo: Demo, case_id: str, reader: str, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await demo.api.case(case_id, reader)).ok:
            return True
        await asyncio.sleep(0.2)
    return False


async def bounded(tasks: Iterable[Any], limit: int = CONCURRENCY) -> None:
    """Run the coroutines with at most ``limit`` at a time."""
    gate = asyncio.Semaphore(limit)

    async def one(task: Any) -> None:
        async with gate:
            await task

    await asyncio.gather(*(one(t) for t in tasks))


# ------------------------------------------------------------------ Kafka


async def send_kafka(demo: Demo, plan: DayPlan) -> None:
    """Other systems' visits and malformed messages for the day, then their casework."""
    bootstrap = demo.endpoints.kafka_bootstrap
    assert bootstrap is not None
    templates = list(plan.kafka_visits or plan.counter_visits)
    limit = IntakeSettings().max_message_bytes
    messages = [kf.visit_message(demo.sources, v) for v in plan.kafka_visits] + [
        kf.malformed_message(demo.sources, templates[i % len(templates)], kind,
                             f"{demo.run}-d{plan.day}-bad{i}", limit)
        for i, kind in enumerate(plan.malformed)]
    sent = await kf.produce(bootstrap, demo.settings.topic_intake_submissions, messages)
    demo.meter.add(len(messages))
    demo.tally.kafka_malformed += sent.malformed
    demo.rejected_places |= {p for p, kind in sent.by_place.items() if kind is not None}
    await bounded(kafka_visit_cases(demo, v) for v in plan.kafka_visits)


async def send_results(demo: Demo, day: int) -> None:
    """The pension system attaches a payment result to some approved pension cases."""
    bootstrap = demo.endpoints.kafka_bootstrap
    assert bootstrap is not None
    chosen, demo.approved = demo.approved[: max(1, len(demo.approved) // 4)], []
    messages = [kf.result_message(demo.sources, "pension", f"{demo.run}-d{day}-r{i}", case)
                for i, case in enumerate(chosen)]
    if messages:
        await kf.produce(bootstrap, demo.settings.topic_intake_submissions, messages)
    demo.tally.kafka_results += len(messages)
    demo.meter.add(len(messages))


async def run_day(demo: Demo, plan: DayPlan, days: int) -> None:
    demo.meter.phase = f"day {plan.day}/{days}: counters"
    await bounded(counter_visit(demo, v) for v in plan.counter_visits)
    demo.meter.phase = f"day {plan.day}/{days}: other systems"
    await send_kafka(demo, plan)
    await send_results(demo, plan.day)


# ------------------------------------------------------------------ store and audit


async def event_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM events"))


async def settled_count(pool: asyncpg.Pool, quiet_s: float = 1.5,
                        timeout_s: float = 60.0) -> int:
    """The event count once nothing has been appended for ``quiet_s`` (Kafka submissions
    and results are appended asynchronously by intake)."""
    deadline = time.monotonic() + timeout_s
    last = await event_count(pool)
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet_s)
        now = await event_count(pool)
        if now == last:
            return now
        last = now
    return last


async def audit(pool: asyncpg.Pool, settings: Settings, endpoints: Endpoints) -> AuditResult:
    """End as an audit does: sign a checkpoint at the head (as `yizhan audit checkpoint` does,
    witnessed where the relay's are: its own comes every 60 s or 10,000 events, so a short
    demo would end with none, and a chain no signature covers proves nothing), then verify
    the whole log against the signing key's public half."""
    signer = CheckpointSigner(settings.checkpoint_signing_key)
    path = settings.witness_path(endpoints.embedded)
    await write_checkpoint(pool, signer, witness=None if path is None else Witness(path))
    found = await verify_log(pool, signer.public_key)
    return AuditResult(ok=found.ok, events_checked=found.events_checked,
                       head_position=found.first_bad_position or found.head_position,
                       checkpoints_checked=found.checkpoints_checked,
                       head_hash=found.head_hash, problem=found.problem)


# ------------------------------------------------------------------ dashboards


def featured_units(ref: Reference, plans: list[DayPlan]) -> list[tuple[str, str]]:
    """(unit, reader) for the city, the busiest county, its busiest township and station."""
    per_station: Counter[str] = Counter()
    for plan in plans:
        for visit in plan.counter_visits + plan.kafka_visits:
            per_station[visit.station] += len(visit.cases)

    def busiest(prefix: str, length: int) -> str:
        totals: Counter[str] = Counter()
        for station, n in per_station.items():
            if station.startswith(prefix):
                totals[station[:length]] += n
        return totals.most_common(1)[0][0]

    county = busiest("", 6)
    township = busiest(county, 9)
    station = busiest(township, 12)
    clerk = ref.staff.duty_clerk(station).user_id
    city = ref.org.root.code
    return [(city, CITY_READER), (county, _supervisor(ref, county)),
            (township, _supervisor(ref, township)), (station, clerk)]


def _supervisor(ref: Reference, unit: str) -> str:
    people = ref.staff.at_unit(unit, Role.SUPERVISOR)
    return people[0].user_id


async def dashboards(api: Api, ref: Reference, plans: list[DayPlan],
                     position: int) -> list[UnitSummary]:
    return [await summary(api, ref, unit, reader, position)
            for unit, reader in featured_units(ref, plans)]


# ------------------------------------------------------------------ the run


async def run_demo(settings: Settings, endpoints: Endpoints, *, days: int = 1,
                   scale: float = DEFAULT_SCALE, seed: int = 2010,
                   progress: Progress = no_progress) -> DemoReport:
    """Drive ``days`` of casework at ``scale`` × 1,560 contacts a day through the running
    services, then read the dashboards and verify the log. Needs `yizhan up` (or the three
    services and the relay) running on the ports in ``settings``; ``endpoints`` gives the
    database (for the event count and the audit) and Kafka."""
    started = time.monotonic()
    ref = load_reference()
    intake = IntakeSettings()
    pool = await create_pool(endpoints.service_url, min_size=1, max_size=2)
    api = Api(urls_of(settings, intake), Tokens(ref, settings), connections=CONCURRENCY * 2)
    try:
        events_before = await event_count(pool)
        city = ref.org.root.code
        city_before = await city_total(api, city, CITY_READER, events_before)
        run = f"demo-s{seed}-e{events_before}"
        plans = plan_days(ref, receiving_stations(ref), days=days, scale=scale,
                          seed=hash((seed, events_before)) & 0xFFFFFFFF, run=run)
        demo = Demo(settings, endpoints, api, ref, load_sources(intake.sources_file, ref.org),
                    run, Meter(progress, _total_ops(plans)))
        log.info("demo.start", run=run, days=days, scale=scale, cases=sum(p.cases for p in plans))
        for plan in plans:
            await run_day(demo, plan, days)
        demo.meter.phase = "reading intake.rejected"
        rejections = await _rejections(demo)
        demo.meter.phase = "dashboards and audit"
        events_after = await settled_count(pool)
        boards = await dashboards(api, ref, plans, events_after)
        head = await api.read("/v1/projections/status", CITY_READER)
        city_after = await city_total(api, city, CITY_READER, events_after)
        verified = await audit(pool, settings, endpoints)
    finally:
        await api.close()
        await pool.close()
    demo.tally.retried.update(api.retried)
    return DemoReport(
        days=days, scale=scale, seed=seed, run=run, elapsed_s=time.monotonic() - started,
        tally=demo.tally, rejections=Counter(code for codes in rejections.values()
                                             for code in codes[:1]),
        rejected_seen=len(rejections), events_before=events_before, events_after=events_after,
        projection_position=int(head.body.get("projection", {}).get("position", 0)),
        city_cases_before=city_before, city_cases_after=city_after, dashboards=boards,
        audit=verified)


async def _rejections(demo: Demo) -> dict[str, list[str]]:
    bootstrap = demo.endpoints.kafka_bootstrap
    assert bootstrap is not None
    return await kf.read_rejections(bootstrap, demo.settings.topic_intake_rejected,
                                    demo.settings.topic_partitions, demo.rejected_places)


def _total_ops(plans: list[DayPlan]) -> int:
    visits = sum(len(p.counter_visits) + len(p.kafka_visits) + len(p.malformed) for p in plans)
    results = sum(max(1, p.cases // 40) for p in plans)  # an estimate: results are chosen late
    return visits + sum(p.steps for p in plans) + results

