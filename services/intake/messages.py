"""Reading one Kafka message on ``intake.submissions``: size, source, signature, then the JSON
body as a typed submission. Pure: everything it refuses comes back as reasons, never raised."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import TypeAdapter, ValidationError

from services.intake.domain.ids import fingerprint
from services.intake.domain.reasons import Reason, from_validation_errors
from services.intake.domain.submission import ResultSubmission, Submission, VisitSubmission
from services.intake.sources import SourceRegistry, SourceSystem

SOURCE_HEADER = "yizhan-source"
SIGNATURE_HEADER = "yizhan-signature"
CORRELATION_HEADER = "correlation_id"
_SUBMISSION: TypeAdapter[VisitSubmission | ResultSubmission] = TypeAdapter(Submission)
SOURCE_SHOWN = 40  # the longest source id a registry holds (``SourceSystem.id``)
MAX_REASONS = 100
"""The most problems of one message listed as reasons (then one saying how many more): each
is ~100 bytes of ``intake.rejected``, and a 64 KB message can hold 20,000 of them, a rejection
larger than the producer and the broker take (1 MB)."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message as read from the topic."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: Mapping[str, bytes]

    digest: bytes = field(init=False, repr=False, compare=False)
    """SHA-256 of the value and the headers: what tells this message from another one that a
    broker which lost its log later hands out at the same offset."""

    def __post_init__(self) -> None:
        h = hashlib.sha256(b"v" if self.value is not None else b"n")
        h.update(self.value or b"")
        for name in sorted(self.headers):
            value = self.headers[name]
            h.update(b"\0%d:%s%d:" % (len(name.encode()), name.encode(), len(value)))
            h.update(value)
        object.__setattr__(self, "digest", h.digest())

    @property
    def where(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.offset

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Readable:
    raw: RawMessage
    source: SourceSystem
    submission: VisitSubmission | ResultSubmission
    fingerprint: str

    @property
    def scope(self) -> str:
        """Idempotency keys are the source's own: another source may reuse one."""
        return f"source:{self.source.id}"


@dataclass(frozen=True, slots=True)
class Unreadable:
    raw: RawMessage
    source_id: str | None
    reasons: tuple[Reason, ...]


def read_message(raw: RawMessage, sources: SourceRegistry,
                 max_bytes: int) -> Readable | Unreadable:
    sent = raw.header(SOURCE_HEADER)
    # as echoed in a rejection: the header is not bounded by max_bytes, and a rejection too
    # large for the producer would fail its batch for ever (no registered id is this long)
    source_id = sent if sent is None or len(sent) <= SOURCE_SHOWN else \
        sent[:SOURCE_SHOWN] + "\u2026"
    if not raw.value or len(raw.value) > max_bytes:  # None (a tombstone) or b"": empty
        size = 0 if raw.value is None else len(raw.value)
        return _refused(raw, source_id, "oversized" if size else "empty", "value",
                        f"{size} bytes; the limit is {max_bytes}" if size else "no value")
    source = sources.get(sent) if sent else None
    if source is None:
        return _refused(raw, source_id, "unknown_source", f"header:{SOURCE_HEADER}",
                        "not a registered source system")
    signature = raw.header(SIGNATURE_HEADER) or ""
    if not source.signed(raw.value, signature):
        return _refused(raw, source_id, "bad_signature", f"header:{SIGNATURE_HEADER}",
                        "HMAC-SHA256 of the value does not match the source's secret")
    return _parse(raw, source)


def _parse(raw: RawMessage, source: SourceSystem) -> Readable | Unreadable:
    assert raw.value is not None
    try:
        submission = _SUBMISSION.validate_json(raw.value)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            return _refused(raw, source.id, "not_json", "value", "not valid JSON")
        reasons = from_validation_errors(errors)
        if len(reasons) > MAX_REASONS:
            more = len(reasons) - MAX_REASONS
            reasons[MAX_REASONS:] = [Reason("too_many_problems", "body",
                                            f"{more} more problems, not listed")]
        return Unreadable(raw, source.id, tuple(reasons))
    if submission.kind not in source.may:
        return _refused(raw, source.id, "not_allowed", "kind",
                        f"{source.id} may not send {submission.kind}")
    if isinstance(submission, VisitSubmission) and source.services is not None:
        outside = tuple(
            Reason("service_not_allowed", f"services[{index}].service_code",
                   f"{source.id} may not open {wanted.service_code} cases")
            for index, wanted in enumerate(submission.services)
            if wanted.service_code not in source.services)
        if outside:
            return Unreadable(raw, source.id, outside)
    return Readable(raw, source, submission, fingerprint(submission.model_dump(mode="json")))


def _refused(raw: RawMessage, source_id: str | None, code: str, field: str,
             message: str) -> Unreadable:
    return Unreadable(raw, source_id, (Reason(code, field, message),))
