"""The functions behind `yizhan audit …`: history, as-of, export of a case and of a unit with
offline verification, the access log; only auditors may use them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services import audit_cli
from shared.audit import COMMIT_MARGIN, month_of
from shared.eventstore.postgres import PostgresEventStore
from tests.conftest import Db
from tests.integration.audit.support import seed, sign_at
from tests.integration.projections.helpers import SETTINGS
from tests.unit.audit.histories import REF

AUDITOR = "auditor.530100.a"
WHY = "court order 2026-3"


@pytest.fixture
async def ids(pg_store: PostgresEventStore, admin_pool: asyncpg.Pool) -> list[Any]:
    return await seed(pg_store, admin_pool, cases=3)


async def test_history_as_of_export_verify_and_access_log(
        ids: list[Any], database: Db, pg_store: PostgresEventStore, admin_pool: asyncpg.Pool,
        tmp_path: Path) -> None:
    url, case = database.service_dsn, ids[1]
    text = await audit_cli.history(url, case, by=AUDITOR, reason=WHY, fmt="text", ref=REF)
    assert str(case) in text and "by clerk." in text
    page = await audit_cli.history(url, case, by=AUDITOR, reason=WHY, fmt="html", ref=REF)
    assert "<table>" in page
    state = json.loads(await audit_cli.as_of(url, case, by=AUDITOR, reason=WHY, position=3,
                                             ref=REF))
    assert state["version"] == 1 and state["state"]["status"] == "submitted"

    out = tmp_path / "case.jsonl"
    done = await audit_cli.export(SETTINGS, url, out, by=AUDITOR, reason=WHY, case_id=case,
                                  ref=REF)
    assert done.events > 3 and not done.unanchored
    assert audit_cli.verify_export_file(out, SETTINGS)[0] == 0

    unit_file = tmp_path / "unit.jsonl"
    station = json.loads(await audit_cli.history(url, case, by=AUDITOR, reason=WHY, fmt="json",
                                                 ref=REF))["entries"][0]["details"]["station"]
    now = datetime.now(UTC)
    await sign_at(pg_store, admin_pool, now + COMMIT_MARGIN)  # closes [now - 1 h, now)
    done = await audit_cli.export(SETTINGS, url, unit_file, by=AUDITOR, reason=WHY,
                                  unit=station, start=now - timedelta(hours=1), end=now,
                                  ref=REF)
    assert done.events > 0 and done.window_closed
    code, message = audit_cli.verify_export_file(unit_file, SETTINGS)
    assert code == 0, message
    assert f"\ncomplete (unit {station}'s events recorded in [" in message, message
    # a window ending in an hour: no checkpoint closes it yet
    done = await audit_cli.export(SETTINGS, url, unit_file, by=AUDITOR, reason=WHY,
                                  unit=station, start=now - timedelta(hours=1), end=now
                                  + timedelta(hours=1), ref=REF)
    assert done.events > 0 and done.window_closed is False
    code, message = audit_cli.verify_export_file(unit_file, SETTINGS)
    assert code == 1 and message.startswith("UNANCHORED") and "--allow-unanchored" in message
    code, message = audit_cli.verify_export_file(unit_file, SETTINGS, allow_unanchored=True)
    assert code == 0 and "\ncompleteness (unit " in message and "not proven" in message

    log = await audit_cli.access_log(url, [month_of(now)], by=AUDITOR, reason=WHY, ref=REF)
    actions = [json.loads(line)["action"] for line in log.splitlines()]
    assert actions == ["history", "history", "case_as_of", "export", "history", "export",
                       "export", "access_log"]


async def test_only_auditors_use_the_audit_commands(ids: list[Any], database: Db) -> None:
    with pytest.raises(audit_cli.NotAnAuditor):
        await audit_cli.history(database.service_dsn, ids[0], by="supervisor.530100.a",
                                reason=WHY, ref=REF)
