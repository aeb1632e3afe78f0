"""The demo's days as data (pure, seeded): which stations residents walk into, what they ask
for and bring, which visits arrive from other systems over Kafka (some malformed), and every
case's script. Applicants are SYNTHETIC (services/demo/people.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.demo.cast import Cast, cast_of
from services.demo.mix import SERVICE_MIX, contacts_for, pick_services
from services.demo.people import synthetic_applicant
from services.demo.plan import P_BACKUP_ACTS, P_MISSING_DOCUMENTS, CaseScript, case_script
from shared.reference import Reference, ServiceType

KAFKA_SHARE = 0.05          # visits sent by other systems (pension, employment) on Kafka
MALFORMED_KINDS = ("not_json", "bad_id", "unknown_service", "bad_signature",
                   "unknown_source", "oversized")
KAFKA_SOURCES = ("pension", "employment")


@dataclass(frozen=True)
class PlannedCase:
    service_code: str
    documents: tuple[str, ...]
    missing: tuple[str, ...]
    script: CaseScript


@dataclass(frozen=True)
class PlannedVisit:
    """One resident at one station asking for one or more services (one-stop)."""

    key: str
    station: str
    applicant: dict[str, str]
    cases: tuple[PlannedCase, ...]
    clerk: str
    acting_for: str | None = None
    source: str | None = None  # set: sent by another system on Kafka


@dataclass(frozen=True)
class DayPlan:
    day: int
    counter_visits: tuple[PlannedVisit, ...]
    kafka_visits: tuple[PlannedVisit, ...]
    malformed: tuple[str, ...]

    @property
    def cases(self) -> int:
        return sum(len(v.cases) for v in self.counter_visits + self.kafka_visits)

    @property
    def steps(self) -> int:
        return sum(len(c.script.steps) for v in self.counter_visits + self.kafka_visits
                   for c in v.cases)


def station_weights(stations: list[str], rng: random.Random) -> list[float]:
    """Busier and quieter stations: log-normal weights (an assumption)."""
    return [rng.lognormvariate(0, 0.8) for _ in stations]


def plan_days(ref: Reference, stations: list[str], *, days: int, scale: float, seed: int,
              run: str) -> list[DayPlan]:
    """Every day's visits and scripts; about ``1,560 × scale`` cases a day."""
    rng = random.Random(seed)
    weights = station_weights(stations, rng)
    per_day = contacts_for(1, scale)
    casts: dict[str, Cast] = {}
    return [_plan_day(ref, stations, weights, casts, rng, day, per_day, run)
            for day in range(1, days + 1)]


def _plan_day(ref: Reference, stations: list[str], weights: list[float],
              casts: dict[str, Cast], rng: random.Random, day: int, per_day: int,
              run: str) -> DayPlan:
    counter: list[PlannedVisit] = []
    kafka: list[PlannedVisit] = []
    opened = 0
    while opened < per_day:
        station = rng.choices(stations, weights)[0]
        cast = casts.setdefault(station, cast_of(ref, station))
        source = rng.choice(KAFKA_SOURCES) if rng.random() < KAFKA_SHARE else None
        visit = _visit(ref, cast, rng, f"{run}-d{day}-{opened:06d}", source)
        (kafka if source else counter).append(visit)
        opened += len(visit.cases)
    malformed = tuple(MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
                      for i in range(max(len(MALFORMED_KINDS), len(kafka) // 5)))
    return DayPlan(day, tuple(counter), tuple(kafka), malformed)


def _visit(ref: Reference, cast: Cast, rng: random.Random, key: str,
           source: str | None) -> PlannedVisit:
    codes = pick_services(rng, SERVICE_MIX)
    cases = tuple(_case(ref.catalogue.service(code), cast, rng) for code in codes)
    clerk = cast.at("community")
    backup_receives = source is None and clerk.b is not None and rng.random() < P_BACKUP_ACTS
    return PlannedVisit(
        key=key, station=cast.station, applicant=synthetic_applicant(rng, cast.station),
        cases=cases, clerk=clerk.b if backup_receives and clerk.b else clerk.a,
        acting_for=clerk.a if backup_receives else None, source=source)


def _case(service: ServiceType, cast: Cast, rng: random.Random) -> PlannedCase:
    required = service.required_documents
    brought = required
    if required and rng.random() < P_MISSING_DOCUMENTS:
        keep = rng.randrange(len(required))
        brought = tuple(rng.sample(required, keep))
    documents = tuple(d for d in required if d in brought)
    missing = tuple(d for d in required if d not in brought)
    return PlannedCase(service.code, documents, missing,
                       case_script(service, cast, missing, rng))
