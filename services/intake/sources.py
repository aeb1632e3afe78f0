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
from shared.reference.catalogue import Catalogue

Kind = Literal["visit", "result"]
SIGNATURE_PREFIX = "sha256="
# The registry in the repository: its secrets are public, for development and tests only, and
# each starts with DEVELOPMENT_MARKER. Production refuses both (``load_sources(production=)``).
SHIPPED_SOURCES_FILE = Path(__file__).resolve().parents[2] / "data" / "kunming" / \
    "source_systems.toml"
DEVELOPMENT_MARKER = "dev-only-"


class SourceSystem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    name: str = Field(min_length=1)
    unit: str = Field(min_length=1)
    may: tuple[Kind, ...] = Field(min_length=1)
    services: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="The services it may open cases for (codes of "
        "the service catalogue); absent: any.")
    secret: str = Field(min_length=32, repr=False)

    def signature(self, body: bytes) -> str:
        digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return f"{SIGNATURE_PREFIX}{digest}"

    def signed(self, body: bytes, signature: str) -> bool:
        """Constant-time, on bytes: ``compare_digest`` raises ``TypeError`` for a ``str`` that
        is not ASCII, and a header anyone may write must be refused, never crash the batch."""
        return hmac.compare_digest(self.signature(body).encode(), signature.encode())


class SourceRegistry:
    """Immutable lookups of source systems by id."""

    def __init__(self, sources: Iterable[SourceSystem]) -> None:
        self._by_id: Mapping[str, SourceSystem] = MappingProxyType({s.id: s for s in sources})

    def get(self, source_id: str) -> SourceSystem | None:
        return self._by_id.get(source_id)

    def __len__(self) -> int:
        return len(self._by_id)


def _entries(path: Path) -> list[dict[str, object]]:
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("source", [])
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ReferenceDataError(path, 0, "<file>", str(exc)) from exc
    return list(entries)


def development_secrets() -> frozenset[str]:
    """The secrets of the registry shipped in the repository (none when an install has no
    data/ folder: the marker check still holds)."""
    if not SHIPPED_SOURCES_FILE.is_file():
        return frozenset()
    return frozenset(str(e["secret"]) for e in _entries(SHIPPED_SOURCES_FILE) if "secret" in e)


def load_sources(path: Path, org: OrgTree, *, production: bool = False,
                 catalogue: Catalogue | None = None) -> SourceRegistry:
    """Read the registry file; every problem raises ``ReferenceDataError`` naming the entry.
    ``production`` also refuses the public development secrets (a copy of the shipped file, or
    any secret marked ``dev-only-``): with them anyone could submit as the source. With the
    ``catalogue``, a source's ``services`` must be codes it holds."""
    entries = _entries(path)
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
        unknown = [code for code in source.services or () if catalogue is not None
                   and catalogue.get(code) is None]
        if unknown:
            raise ReferenceDataError(path, 0, f"source[{index}].services",
                                     f"unknown service {', '.join(unknown)}")
        sources.append(source)
    if production:
        public = development_secrets()
        exposed = [source.id for source in sources
                   if source.secret in public or source.secret.startswith(DEVELOPMENT_MARKER)]
        if exposed:
            raise ReferenceDataError(path, 0, "secret", "YIZHAN_ENV=prod refuses the public "
                                     f"development secrets of {', '.join(exposed)}: each source "
                                     "needs its own (YIZHAN_INTAKE_SOURCES_FILE)")
    return SourceRegistry(sources)
