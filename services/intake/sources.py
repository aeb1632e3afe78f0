"""The registry of source systems allowed to submit on Kafka, and how a message proves it came
from one: an HMAC-SHA256 of the message value with the source's secret."""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.reference import OrgTree, ReferenceDataError

Kind = Literal["visit", "result"]
SIGNATURE_PREFIX = "sha256="


class SourceSystem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    name: str = Field(min_length=1)
    unit: str = Field(min_length=1)
    may: tuple[Kind, ...] = Field(min_length=1)
    secret: str = Field(min_length=32, repr=False)

    def signature(self, body: bytes) -> str:
        digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return f"{SIGNATURE_PREFIX}{digest}"

    def signed(self, body: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.signature(body), signature)


class SourceRegistry:
    """Immutable lookups of source systems by id."""

    def __init__(self, sources: Iterable[SourceSystem]) -> None:
        self._by_id: Mapping[str, SourceSystem] = MappingProxyType({s.id: s for s in sources})

    def get(self, source_id: str) -> SourceSystem | None:
        return self._by_id.get(source_id)

    def __len__(self) -> int:
        return len(self._by_id)


def load_sources(path: Path, org: OrgTree) -> SourceRegistry:
    """Read the registry file; every problem raises ``ReferenceDataError`` naming the entry."""
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("source", [])
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ReferenceDataError(path, 0, "<file>", str(exc)) from exc
    sources = []
    for index, entry in enumerate(entries):
        try:
            source = SourceSystem.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ReferenceDataError(path, 0, f"source[{index}].{field}", first["msg"]) from exc
        if source.unit not in org:
            raise ReferenceDataError(path, 0, f"source[{index}].unit", "unknown unit")
        sources.append(source)
    return SourceRegistry(sources)
