"""Events of the audit trail itself: who read what in the audit tools, when and why.

They live in monthly streams ``audit-access-<yyyy-mm>`` (month of ``at`` in China Standard
Time), appended with no version check, so concurrent readers never conflict. They are events of
the same hash-chained log as the cases, so an auditor's reading is as tamper-evident as an
officer's acting.
"""

from __future__ import annotations

from datetime import timedelta, timezone
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.cases import NonEmpty, UtcDatetime
from shared.contracts.registry import DomainEvent, event

ACCESS_STREAM_PREFIX = "audit-access-"
CHINA = timezone(timedelta(hours=8))


class AuditAction(StrEnum):
    """What the auditor looked at."""

    HISTORY = "history"
    CASE_AS_OF = "case_as_of"
    QUEUE_AS_OF = "queue_as_of"
    EXPORT = "export"
    ACCESS_LOG = "access_log"


class AuditReader(BaseModel):
    """The person who read: user id, role and unit (from their token or the command line)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: NonEmpty
    role: NonEmpty
    unit: NonEmpty


@event("AuditRecordRead", version=1)
class AuditRecordRead(DomainEvent):
    """An audit read happened. ``case_id`` or ``unit`` names what was read; ``position`` /
    ``as_of`` the moment reconstructed (if any); ``channel`` is ``api`` or ``cli``."""

    at: UtcDatetime
    reader: AuditReader
    action: AuditAction
    reason: str = Field(min_length=3, max_length=500)
    channel: NonEmpty
    case_id: str | None = None
    unit: str | None = None
    detail: str = ""
    position: int | None = Field(default=None, ge=0)


def access_stream(at_month: str) -> str:
    """The stream of one month's audit reads (``at_month`` is ``YYYY-MM``)."""
    return f"{ACCESS_STREAM_PREFIX}{at_month}"


ERASURE_STREAM_PREFIX = "privacy-erasure-"


@event("SubjectErased", version=1)
class SubjectErased(DomainEvent):
    """A data subject's key was destroyed on this order (crypto-shredding): their personal
    fields in every event are unreadable from then on. One per subject, in the stream
    ``privacy-erasure-<subject_id>``, appended before the key is deleted, so that no erasure
    is without its record in the hash-chained log."""

    at: UtcDatetime
    subject_id: NonEmpty
    ordered_by: AuditReader
    reason: NonEmpty


def erasure_stream(subject_id: str) -> str:
    return f"{ERASURE_STREAM_PREFIX}{subject_id}"
