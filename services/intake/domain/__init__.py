"""The pure core of intake: validate what arrives (ID checksum, phone, known service, receiving
station), route it to cases, derive deterministic ids, and build the receipt. No I/O."""

from services.intake.domain.reasons import Reason, Refused
from services.intake.domain.routing import CasePlan, Route, route
from services.intake.domain.submission import (
    Applicant,
    ResultSubmission,
    ServiceRequest,
    Submission,
    Visit,
    VisitSubmission,
)

__all__ = [
    "Applicant",
    "CasePlan",
    "Reason",
    "Refused",
    "ResultSubmission",
    "Route",
    "ServiceRequest",
    "Submission",
    "Visit",
    "VisitSubmission",
    "route",
]
