"""`yizhan audit history` through `main` against a real store: a case the log does not hold is
one line on stderr and exit code 2, as a case it holds is its history."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services import cli
from shared.eventstore.postgres import PostgresEventStore
from shared.settings import get_settings
from tests.conftest import Db
from tests.integration.audit.support import seed

AUDITOR = "auditor.530100.a"
WHY = "court order 2026-3"


@pytest.fixture
def configured(database: Db, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """`yizhan` pointed at this test's database; asyncio's loop, so main sets no global uvloop
    policy under the suite's own loops."""
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("DATABASE_URL", database.service_dsn)
    monkeypatch.setenv("YIZHAN_EVENT_LOOP", "asyncio")
    monkeypatch.setenv("YIZHAN_LOG_FORMAT", "console")
    monkeypatch.setenv("YIZHAN_LOG_LEVEL", os.environ.get("YIZHAN_TEST_LOG_LEVEL", "warning"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def yizhan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[Any, str, str]:
    """``main`` in a thread: it runs its own event loop (``asyncio.run``)."""
    with pytest.raises(SystemExit) as ended:
        await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return ended.value.code, out, err


async def test_a_case_not_in_the_log_is_one_line_and_exit_code_2(
        configured: None, pg_store: PostgresEventStore, admin_pool: asyncpg.Pool,
        capsys: pytest.CaptureFixture[str]) -> None:
    known = (await seed(pg_store, admin_pool, cases=1))[0]
    code, out, _ = await yizhan(capsys, "audit", "history", str(known), "--by", AUDITOR,
                                "--reason", WHY)
    assert code == 0 and str(known) in out
    unknown = uuid.uuid4()
    code, out, err = await yizhan(capsys, "audit", "history", str(unknown), "--by", AUDITOR,
                                  "--reason", WHY)
    assert (code, out, err) == (2, "", f"error: no events of case {unknown}\n")


async def test_an_as_of_position_the_log_has_not_reached_is_one_line_and_exit_code_2(
        configured: None, pg_store: PostgresEventStore, admin_pool: asyncpg.Pool,
        capsys: pytest.CaptureFixture[str]) -> None:
    known = (await seed(pg_store, admin_pool, cases=1))[0]
    head = int(await admin_pool.fetchval("SELECT max(position) FROM events"))
    code, out, err = await yizhan(capsys, "audit", "as-of", str(known), "--position",
                                  str(head + 1000), "--by", AUDITOR, "--reason", WHY)
    assert (code, out) == (2, ""), out
    assert err == (f"error: position {head + 1000} is beyond the end of the log (position "
                   f"{head}): there is no state there yet\n")


async def test_verify_against_a_witness_file_that_is_not_there_is_refused_not_ok(
        configured: None, pg_store: PostgresEventStore, admin_pool: asyncpg.Pool,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An auditor who names a witness file asks for the log to be held against it: a file
    that is not there (a mistyped path, a volume not mounted) is not a witness that agrees."""
    await seed(pg_store, admin_pool, cases=1)
    missing = tmp_path / "mnt" / "witness.jsonl"
    code, out, err = await yizhan(capsys, "audit", "verify", "--witness", str(missing))
    assert (code, out) == (2, ""), out
    assert err == f"error: witness file {missing} does not exist: nothing to hold the log to\n"


async def test_the_access_log_of_a_case_finds_its_reads_however_its_id_is_written(
        configured: None, pg_store: PostgresEventStore, admin_pool: asyncpg.Pool,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The reads of a case are found by its id in capitals too (as the HTTP API finds them):
    "no audit reads recorded" for a case that was read is a false answer to an auditor of
    auditors."""
    from datetime import UTC, datetime

    from shared.audit import month_of

    known = (await seed(pg_store, admin_pool, cases=1))[0]
    code, _, _ = await yizhan(capsys, "audit", "history", str(known), "--by", AUDITOR,
                              "--reason", WHY)
    assert code == 0
    month = month_of(datetime.now(UTC))
    code, out, err = await yizhan(capsys, "audit", "access-log", "--month", month, "--case",
                                  str(known).upper(), "--by", AUDITOR, "--reason", WHY)
    assert code == 0, err
    assert [line for line in out.splitlines() if str(known) in line], (out, err)


@pytest.mark.parametrize(("argv", "option"), [
    (["access-log", "--month", "2026-1"], "--month"),
    (["access-log", "--month", "2026-13"], "--month"),
    (["access-log", "--month", "2026-12", "--case", "not-a-case"], "--case"),
    (["as-of", "00000000-0000-0000-0000-000000000001", "--at", "2026-12-01T10:00:00"], "--at"),
    (["queue-as-of", "530102", "--at", "2026-12-01T10:00:00"], "--at"),
    (["export", "--unit", "530102", "--from", "2026-12-01T00:00:00", "--to",
      "2026-12-02T00:00:00+08:00", "-o", "unit.jsonl"], "--from"),
])
async def test_audit_reads_refuse_what_they_would_misread(
        configured: None, capsys: pytest.CaptureFixture[str], argv: list[str],
        option: str) -> None:
    """A month not written YYYY-MM, a case id that is none, or a moment without a zone (which
    would be read in the zone of whatever host runs the command) is refused, exit code 2,
    naming the option: not answered with nothing, or with the state at another moment."""
    code, out, err = await yizhan(capsys, "audit", *argv, "--by", AUDITOR, "--reason", WHY)
    assert (code, out) == (2, ""), (out, err)
    assert f"argument {option}: " in err, err


async def test_a_queue_as_of_for_a_unit_that_does_not_exist_is_one_line_and_exit_code_2(
        configured: None, pg_store: PostgresEventStore, admin_pool: asyncpg.Pool,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped unit is not a unit that held no open cases (the HTTP API says 404 too)."""
    await seed(pg_store, admin_pool, cases=1)
    code, out, err = await yizhan(capsys, "audit", "queue-as-of", "53010200100", "--by",
                                  AUDITOR, "--reason", WHY)
    assert (code, out, err) == (2, "", "error: no unit 53010200100 in the organisation\n")
    code, out, _ = await yizhan(capsys, "audit", "queue-as-of", "530102001001", "--by",
                                AUDITOR, "--reason", WHY)
    assert code == 0 and '"unit": "530102001001"' in out


async def test_an_export_for_a_unit_that_does_not_exist_is_one_line_and_exit_code_2(
        configured: None, pg_store: PostgresEventStore, admin_pool: asyncpg.Pool,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Not an evidence file of no events (which verifies) for a mistyped unit."""
    await seed(pg_store, admin_pool, cases=1)
    out_file = tmp_path / "unit.jsonl"
    code, out, err = await yizhan(capsys, "audit", "export", "--unit", "53010200100", "--from",
                                  "2000-01-01T00:00:00+08:00", "--to",
                                  "2100-01-01T00:00:00+08:00", "-o", str(out_file), "--by",
                                  AUDITOR, "--reason", WHY)
    assert (code, out, err) == (2, "", "error: no unit 53010200100 in the organisation\n")
    assert not out_file.exists()
