"""Where a visit goes: the receiving station must be a community or enterprise station, every
service must be in the catalogue and every document in its checklist. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from services.intake.domain.reasons import Reason, Refused
from services.intake.domain.submission import ServiceRequest, Visit
from shared.reference import Level, Reference, ServiceType, Unit, UnitKind

RECEIVING_KINDS = frozenset({UnitKind.STATION, UnitKind.ENTERPRISE_STATION})


@dataclass(frozen=True, slots=True)
class CasePlan:
    """One case to open: its service, the documents supplied and those still missing (the
    one-time notification, in checklist order)."""

    service: ServiceType
    documents: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    station: Unit
    cases: tuple[CasePlan, ...]


def route(visit: Visit, ref: Reference) -> Route:
    """The cases a visit opens at its station, or ``Refused`` naming every problem."""
    reasons: list[Reason] = []
    station = _receiving_station(visit.station, ref, reasons)
    plans = [_plan(i, wanted, ref, reasons) for i, wanted in enumerate(visit.services)]
    if reasons or station is None:
        raise Refused(reasons)
    return Route(station, tuple(p for p in plans if p is not None))


def _receiving_station(code: str, ref: Reference, reasons: list[Reason]) -> Unit | None:
    unit = ref.org.get(code)
    if unit is None:
        reasons.append(Reason("unknown_station", "station", "no such unit"))
    elif unit.level != Level.COMMUNITY or unit.kind not in RECEIVING_KINDS:
        reasons.append(Reason("not_a_station", "station",
                              "cases are received only at community or enterprise stations"))
    else:
        return unit
    return None


def _plan(index: int, wanted: ServiceRequest, ref: Reference,
          reasons: list[Reason]) -> CasePlan | None:
    service = ref.catalogue.get(wanted.service_code)
    if service is None:
        reasons.append(Reason("unknown_service", f"services[{index}].service_code",
                              "not in the service catalogue"))
        return None
    extra = [d for d in wanted.documents if d not in service.required_documents]
    if extra:
        reasons.append(Reason("document_not_in_checklist", f"services[{index}].documents",
                              f"not required by {service.code}: {', '.join(extra)}"))
        return None
    supplied = set(wanted.documents)
    return CasePlan(
        service=service,
        documents=tuple(d for d in service.required_documents if d in supplied),
        missing=tuple(d for d in service.required_documents if d not in supplied),
    )
