"""Reading Kafka messages (size, source, signature, JSON, schema) and the cryptography of
privacy and quarantine, pure."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from services.intake.messages import SIGNATURE_HEADER, SOURCE_HEADER, RawMessage, read_message
from services.intake.privacy import Sealer, SubjectKey
from services.intake.quarantine import Quarantine
from services.intake.settings import IntakeSettings
from services.intake.sources import SourceRegistry, load_sources
from shared.reference import ReferenceDataError, load_reference
from tests.unit.intake.people import synthetic_person, with_bad_check_character

MAX = 4096


@pytest.fixture(scope="module")
def sources() -> SourceRegistry:
    return load_sources(IntakeSettings().sources_file, load_reference().org)


def message(sources: SourceRegistry, body: bytes, *, source: str = "pension",
            signature: str | None = None) -> RawMessage:
    system = sources.get(source)
    sig = signature or (system.signature(body) if system else "sha256=00")
    return RawMessage("intake.submissions", 0, 7, body,
                      {SOURCE_HEADER: source.encode(), SIGNATURE_HEADER: sig.encode()})


def visit_body(**overrides: object) -> bytes:
    person = synthetic_person(random.Random(1))
    body = {"kind": "visit", "idempotency_key": "k-1", "station": "530102001001",
            "applicant": person.as_applicant(),
            "services": [{"service_code": "job_referral", "documents": ["id_card"]}]}
    return json.dumps({**body, **overrides}, ensure_ascii=False).encode()


def codes(outcome: object) -> list[str]:
    return [r.code for r in getattr(outcome, "reasons", ())]


def test_a_signed_visit_is_readable(sources: SourceRegistry) -> None:
    read = read_message(message(sources, visit_body()), sources, MAX)
    assert codes(read) == [] and read.scope == "source:pension"  # type: ignore[union-attr]


@pytest.mark.parametrize(("make", "code"), [
    (lambda s: message(s, b"{not json"), "not_json"),
    (lambda s: message(s, b""), "empty"),
    (lambda s: message(s, b"x" * (MAX + 1)), "oversized"),
    (lambda s: message(s, visit_body(), signature="sha256=" + "0" * 64), "bad_signature"),
    (lambda s: message(s, visit_body(), source="nobody"), "unknown_source"),
    (lambda s: message(s, visit_body(kind="visit"), source="medical_insurance"), "not_allowed"),
])
def test_each_refusal_has_its_code(sources: SourceRegistry, make: object, code: str) -> None:
    assert codes(read_message(make(sources), sources, MAX)) == [code]  # type: ignore[operator]


@pytest.mark.parametrize("signature", [b"sha256=\xc3\xa9", b"\xff\xfe", "签名".encode()])
def test_a_signature_header_that_is_not_ascii_is_a_bad_signature(
        sources: SourceRegistry, signature: bytes) -> None:
    # hmac.compare_digest raised TypeError on a non-ASCII str: the batch failed and was
    # retried for ever, a poison message that anyone naming a source could send
    raw = RawMessage("intake.submissions", 0, 7, visit_body(),
                     {SOURCE_HEADER: b"pension", SIGNATURE_HEADER: signature})
    assert codes(read_message(raw, sources, MAX)) == ["bad_signature"]


def test_a_bad_id_number_is_refused_without_quoting_it(sources: SourceRegistry) -> None:
    person = synthetic_person(random.Random(1))
    applicant = {**person.as_applicant(), "id_number": with_bad_check_character(person.id_number)}
    read = read_message(message(sources, visit_body(applicant=applicant)), sources, MAX)
    assert [(r.code, r.field) for r in read.reasons] == [  # type: ignore[union-attr]
        ("invalid", "visit.applicant.id_number")]
    assert person.id_number[:17] not in repr(read.reasons)  # type: ignore[union-attr]


def test_fields_decrypt_only_with_the_subjects_key() -> None:
    sealer = Sealer(os.urandom(32), "k1", os.urandom(32))
    key = SubjectKey("subj-1", "h", os.urandom(32))
    sealed = sealer.encrypt_fields(key, {"name": "虚构名字"})
    assert "虚构" not in sealed["name"]
    assert sealer.decrypt_fields(key, sealed) == {"name": "虚构名字"}
    with pytest.raises(InvalidTag):
        sealer.decrypt_fields(SubjectKey("subj-1", "h", os.urandom(32)), sealed)
    with pytest.raises(InvalidTag):  # bound to its subject: moved to another, it fails
        sealer.decrypt_fields(SubjectKey("subj-2", "h", key.data_key), sealed)


def test_wrapped_keys_and_keyed_hashes() -> None:
    sealer = Sealer(os.urandom(32), "k1", os.urandom(32))
    data_key = os.urandom(32)
    assert sealer.unwrap("s", sealer.wrap("s", data_key)) == data_key
    number = synthetic_person(random.Random(2)).id_number
    assert sealer.id_hash(number) == sealer.id_hash(number)
    assert number not in sealer.id_hash(number)
    other = Sealer(os.urandom(32), "k1", os.urandom(32))
    assert other.id_hash(number) != sealer.id_hash(number)


def test_quarantine_seals_and_truncates() -> None:
    quarantine = Quarantine(os.urandom(32), keep_bytes=10)
    sealed = quarantine.seal(b"0123456789abcdef", ("t", 1, 2))
    assert sealed["truncated"] and sealed["size"] == 16
    assert quarantine.open(sealed, ("t", 1, 2)) == b"0123456789"


REGISTRY = """
[[source]]
id = "employment"
name = "employment (synthetic)"
unit = "530100"
may = ["visit"]
services = ["job_referral", "labour_exchange"]
secret = "test-employment-secret-0123456789abcdef"
"""


def test_a_source_opens_cases_only_for_the_services_it_is_registered_for(
        tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(REGISTRY, encoding="utf-8")
    ref = load_reference()
    registry = load_sources(path, ref.org, catalogue=ref.catalogue)
    allowed = read_message(message(registry, visit_body(), source="employment"), registry, MAX)
    assert codes(allowed) == []
    body = visit_body(services=[{"service_code": "job_referral"},
                                {"service_code": "minimum_living_guarantee"}])
    refused = read_message(message(registry, body, source="employment"), registry, MAX)
    assert [(r.code, r.field) for r in refused.reasons] == [  # type: ignore[union-attr]
        ("service_not_allowed", "services[1].service_code")]


def test_a_registered_service_the_catalogue_does_not_hold_stops_the_start(
        tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(REGISTRY.replace('"labour_exchange"', '"labour_exhcange"'), encoding="utf-8")
    ref = load_reference()
    with pytest.raises(ReferenceDataError, match=r"source\[0\]\.services.*labour_exhcange"):
        load_sources(path, ref.org, catalogue=ref.catalogue)


@pytest.mark.parametrize("body", [
    {"idempotency_key": "k-1"},  # no kind at all
    {"kind": "110101199003071234", "idempotency_key": "k-1"},  # one no system sends
    {"kind": 7, "idempotency_key": "k-1"},
])
def test_a_missing_or_unknown_kind_is_refused_naming_kind_without_quoting_it(
        sources: SourceRegistry, body: dict[str, object]) -> None:
    # Before: the reason named the field "body" and repeated the kind sent ("Input tag
    # '110101199003071234' found using 'kind' ...") into intake.rejected.
    raw = json.dumps(body).encode()
    read = read_message(message(sources, raw), sources, MAX)
    assert [(r.code, r.field) for r in read.reasons] == [  # type: ignore[union-attr]
        ("invalid", "kind")]
    assert "110101199003071234" not in repr(read.reasons)  # type: ignore[union-attr]


def test_a_detail_key_is_not_repeated_in_the_reasons(sources: SourceRegistry) -> None:
    # A result's details are keyed by the sender: before, a key that was not a code went into
    # the reason's field as sent ("result.details.张三 110101199003071234.[key]"), in plain on
    # intake.rejected, which must never hold an ID number or a name.
    person = synthetic_person(random.Random(3))
    body = {"kind": "result", "idempotency_key": "r-1",
            "case_id": "6c68018e-ec7d-5d91-bca7-ce16c88b6b8d", "result_type": "verified",
            "reference": "PEN-1", "details": {f"{person.name} {person.id_number}": "x" * 501,
                                              "checked_by": "y" * 501}}
    read = read_message(message(sources, json.dumps(body, ensure_ascii=False).encode()),
                        sources, MAX)
    fields = [r.field for r in read.reasons]  # type: ignore[union-attr]
    assert person.id_number[:17] not in repr(fields) and person.name not in repr(fields)
    assert "result.details.checked_by" in fields  # a key that is a code names its entry
    assert all(f.startswith("result.details") for f in fields) and len(fields) == 3
