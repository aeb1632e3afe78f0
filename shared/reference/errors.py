"""Errors raised while loading reference data: each names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path


class ReferenceDataError(ValueError):
    """Reference data on disk is malformed or inconsistent.

    ``str(error)`` reads ``units.csv:12: parent: unknown unit '530199'`` so an operator can open
    the file at the right line; the parts are also available as attributes.
    """

    def __init__(self, file: Path | str, line: int, field: str, problem: str) -> None:
        self.file = Path(file)
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(f"{self.file}:{line}: {field}: {problem}")


class UnknownReference(LookupError):
    """A lookup (unit code, user id, service code) names nothing in the reference data."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"unknown {kind} {key!r}")
        self.kind = kind
        self.key = key
