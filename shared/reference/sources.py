"""Line-aware readers for reference files: CSV rows and TOML entries keep their line numbers so
validation errors can point at them."""

from __future__ import annotations

import csv
import re
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.reference.errors import ReferenceDataError

M = TypeVar("M", bound=BaseModel)


def first_error(exc: ValidationError) -> tuple[str, str]:
    """The dotted field path and message of the first problem pydantic found (a field that is
    present but wrong before one that is missing: it has a line to point at)."""
    errors = exc.errors()
    error = next((e for e in errors if e["type"] != "missing"), errors[0])
    field = ".".join(str(part) for part in error["loc"]) or "<entry>"
    return field, str(error["msg"])


def validate_entry(model: type[M], data: dict[str, Any], file: Path, line: int) -> M:
    """Validate one entry into ``model``; on failure raise ``ReferenceDataError`` at ``line``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = first_error(exc)
        raise ReferenceDataError(file, line, field, message) from exc


def read_csv(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` for each data row; the header must hold exactly ``columns``."""
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise ReferenceDataError(path, 0, "<file>", f"cannot be read: {exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        _check_header(path, reader.fieldnames or [], columns)
        for row in reader:
            if None in row:
                raise ReferenceDataError(path, reader.line_num, "<row>", "too many values")
            missing = [name for name, value in row.items() if value is None]
            if missing:
                raise ReferenceDataError(path, reader.line_num, missing[0], "value is missing")
            yield reader.line_num, {key: value.strip() for key, value in row.items()}


def _check_header(path: Path, header: Sequence[str], columns: Sequence[str]) -> None:
    for name in columns:
        if name not in header:
            raise ReferenceDataError(path, 1, name, "column is missing from the header")
    for name in header:
        if name not in columns:
            raise ReferenceDataError(path, 1, name, "unknown column")


_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([\w.-]+)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([\w.-]+)\s*\]")
_TOML_LINE = re.compile(r"at line (\d+)")


@dataclass(frozen=True)
class Section:
    """A ``[table]`` or ``[[array]]`` block of a TOML file: its name and line span (1-based)."""

    name: str
    first: int
    last: int


@dataclass(frozen=True)
class TomlFile:
    """A parsed TOML document that can find the line where an entry or a key was written."""

    path: Path
    lines: tuple[str, ...]
    data: dict[str, Any]
    sections: tuple[Section, ...]

    @classmethod
    def read(cls, path: Path) -> TomlFile:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReferenceDataError(path, 0, "<file>", f"cannot be read: {exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            found = _TOML_LINE.search(str(exc))
            line = int(found.group(1)) if found else 0
            raise ReferenceDataError(path, line, "<syntax>", str(exc)) from exc
        lines = tuple(text.splitlines())
        return cls(path, lines, data, _sections(lines))

    def section(self, name: str, index: int = 0) -> Section:
        """The ``index``-th section called ``name`` (the whole file when there is none)."""
        matching = [s for s in self.sections if s.name == name]
        if index < len(matching):
            return matching[index]
        return Section(name, 1, len(self.lines))

    def line_of(self, section: Section, key: str | None = None, value: str | None = None) -> int:
        """Line of ``key = …`` in ``section`` (or of the quoted ``value`` after it); falls back
        to the section's header line."""
        line = section.first
        if key is not None:
            pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
            line = self._find(section, pattern, section.first) or section.first
        if value is not None:
            pattern = re.compile(re.escape(f'"{value}"'))
            line = self._find(section, pattern, line) or line
        return line

    def _find(self, section: Section, pattern: re.Pattern[str], start: int) -> int | None:
        for number in range(start, section.last + 1):
            if pattern.search(self.lines[number - 1]):
                return number
        return None

    def error(self, section: Section, key: str, problem: str, value: str | None = None) -> (
        ReferenceDataError
    ):
        """A ``ReferenceDataError`` pointing at ``key`` (and ``value``) inside ``section``."""
        top = key.split(".")[0]
        return ReferenceDataError(self.path, self.line_of(section, top, value), key, problem)


def _sections(lines: Sequence[str]) -> tuple[Section, ...]:
    starts: list[tuple[str, int]] = [("", 1)]
    for number, text in enumerate(lines, start=1):
        found = _ARRAY_HEADER.match(text) or _TABLE_HEADER.match(text)
        if found:
            starts.append((found.group(1), number))
    ends = [line - 1 for _, line in starts[1:]] + [len(lines)]
    spans = zip(starts, ends, strict=True)
    return tuple(Section(name, first, last) for (name, first), last in spans)
