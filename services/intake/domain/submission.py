"""What a visit asks for, as received at a counter (HTTP) or from another system (Kafka).

Validation messages never quote the input: they reach logs, problem responses and the
``intake.rejected`` topic, which must never hold an ID number or a name. Free text is ``Text``
(no control characters: PostgreSQL's read models cannot hold a NUL).
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from services.intake.domain.identity import (
    id_number_problem,
    is_valid_phone,
    normalise_id_number,
    normalise_phone,
)
from shared.inputs import Text

Code = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class Applicant(Strict):
    """The resident: every field is personal data, encrypted before anything is stored."""

    name: Text = Field(min_length=1, max_length=50)
    id_number: str = Field(description="Resident identity number (GB 11643, 18 characters).")
    phone: str = Field(description="Mobile (11 digits) or landline with area code.")
    address: Text = Field(min_length=1, max_length=200)

    @field_validator("id_number")
    @classmethod
    def _valid_id_number(cls, value: str) -> str:
        number = normalise_id_number(value)
        problem = id_number_problem(number)
        if problem is not None:
            raise ValueError(problem)
        return number

    @field_validator("phone")
    @classmethod
    def _valid_phone(cls, value: str) -> str:
        phone = normalise_phone(value)
        if not is_valid_phone(phone):
            raise ValueError("must be a mainland mobile number or a landline with area code")
        return phone

    def personal_fields(self) -> dict[str, str]:
        return {"name": self.name, "id_number": self.id_number, "phone": self.phone,
                "address": self.address}


def _listed_once(documents: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(documents)) != len(documents):
        raise ValueError("lists a document twice")
    return documents


Documents = Annotated[tuple[Code, ...], Field(max_length=30), AfterValidator(_listed_once)]
"""The documents a resident brought for one service: each code at most once."""


class ServiceRequest(Strict):
    """One service the resident applies for, with the documents they brought."""

    service_code: Code
    documents: Documents = ()


class Visit(Strict):
    """One applicant, one or more services, one station: one-stop (一站式)."""

    station: str = Field(pattern=r"^\d{12}$", description="Receiving station's unit code.")
    applicant: Applicant
    services: tuple[ServiceRequest, ...] = Field(min_length=1, max_length=10)

    @field_validator("services")
    @classmethod
    def _each_service_once(cls, services: tuple[ServiceRequest, ...]) -> (
        tuple[ServiceRequest, ...]
    ):
        codes = [s.service_code for s in services]
        if len(set(codes)) != len(codes):
            raise ValueError("asks for a service twice in one visit")
        return services


class VisitSubmission(Visit):
    """A visit sent by another system on Kafka."""

    kind: Literal["visit"]
    idempotency_key: IdempotencyKey


class ResultSubmission(Strict):
    """Another system attaches a result to an existing case."""

    kind: Literal["result"]
    idempotency_key: IdempotencyKey
    case_id: UUID
    result_type: Code
    reference: Text = Field(min_length=1, max_length=100)
    summary: Text = Field(default="", max_length=500)
    details: dict[Code, Annotated[Text, Field(max_length=500)]] = Field(
        default_factory=dict, max_length=20)


Submission = Annotated[VisitSubmission | ResultSubmission, Field(discriminator="kind")]
