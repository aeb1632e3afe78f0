"""The workload's shape, from docs/domain.md (the bureau's report, Jan 2008 – Jun 2010): about
1.43 million service contacts in 30 months, roughly 1,560 a day city-wide, in this mix.

The report gives "social-insurance services" (748,000) as one figure; the split over the six
social-insurance services below is an ASSUMPTION of the demo. Employment services the report
does not count separately get a small assumed share, so every catalogue entry shows up."""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType

CONTACTS_PER_DAY = 1_560

_SOCIAL_INSURANCE = 748_000
_REPORTED: Mapping[str, float] = {
    "legal_information": 347_000,
    "labour_export": 129_000,
    "job_referral": 98_000,
    "retiree_social_management": 92_000,
    "labour_inspection_complaint": 6_595,
    "labour_dispute_mediation": 5_340,
    # assumed split of the 748,000 social-insurance contacts
    "pension_qualification_certification": _SOCIAL_INSURANCE * 0.30,
    "urban_resident_medical_insurance": _SOCIAL_INSURANCE * 0.24,
    "rural_pension_insurance": _SOCIAL_INSURANCE * 0.18,
    "flexible_employment_pension_declaration": _SOCIAL_INSURANCE * 0.12,
    "minimum_living_guarantee": _SOCIAL_INSURANCE * 0.10,
    "land_expropriated_farmers_pension": _SOCIAL_INSURANCE * 0.06,
    # assumed: employment services not counted separately in the report
    "employment_reemployment": 12_000,
    "graduate_employment": 8_000,
    "labour_exchange": 8_000,
    "employment_training": 5_000,
    "reemployment_assistance": 5_000,
}
SERVICE_MIX: Mapping[str, float] = MappingProxyType(
    {code: n / sum(_REPORTED.values()) for code, n in _REPORTED.items()})
"""Share of contacts per service code (sums to 1)."""

SERVICES_PER_VISIT = ((1, 0.75), (2, 0.20), (3, 0.05))
"""One-stop: how many services one visit asks for (assumed), mean 1.3."""


def contacts_for(days: int, scale: float) -> int:
    """How many service contacts (cases) the demo opens over ``days`` at ``scale``."""
    return max(1, round(CONTACTS_PER_DAY * scale * days))


def pick_services(rng: random.Random, available: Mapping[str, float]) -> list[str]:
    """The services of one visit: 1–3 distinct codes drawn by the mix."""
    sizes, weights = zip(*SERVICES_PER_VISIT, strict=True)
    wanted = rng.choices(sizes, weights)[0]
    codes, shares = list(available), list(available.values())
    chosen: list[str] = []
    while len(chosen) < min(wanted, len(codes)):
        code = rng.choices(codes, shares)[0]
        if code not in chosen:
            chosen.append(code)
    return chosen
