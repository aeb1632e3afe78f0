"""Audit: replay any case's history, reconstruct any moment, prove nothing was altered, and
record who looked.

- ``history``: a case's steps (JSON data, text, printable HTML via ``render``);
- ``as_of``: a case or a unit's queue as of a position or moment, replayed with the domain's
  ``evolve`` (handed in by the caller: ``shared`` imports no service);
- ``export`` / ``verify_export``: portable evidence files, checked offline with the public key
  (a unit's, over a window two signed checkpoints close, proven complete);
- ``rebuild_compare``: read models rebuilt into a scratch schema and compared with the live ones;
- ``access``: every audit read recorded in the log (``audit-access-<yyyy-mm>``);
- ``service.AuditService``: the reads, each recorded first.
"""

from shared.audit.access import AccessEntry, ReasonRequired, Requester, month_of, read_access_log
from shared.audit.as_of import (
    CaseAsOf,
    PositionBeyondLog,
    QueueAsOf,
    ReplayFailed,
    case_as_of,
    position_at,
    queue_as_of,
    replay,
)
from shared.audit.export import (
    COMMIT_MARGIN,
    ExportSummary,
    export_case,
    export_unit,
    plan_segments,
    plan_window,
)
from shared.audit.history import CaseHistory, CaseNotFound, HistoryEntry, history_of
from shared.audit.rebuild_compare import (
    CompareReport,
    LiveMoving,
    LiveState,
    ReadModels,
    rebuild_compare,
)
from shared.audit.render import render_html, render_json, render_text
from shared.audit.service import AuditService
from shared.audit.verify_export import ExportReport, ExportUnreadable, verify_export

__all__ = [
    "COMMIT_MARGIN",
    "AccessEntry",
    "AuditService",
    "CaseAsOf",
    "CaseHistory",
    "CaseNotFound",
    "CompareReport",
    "ExportReport",
    "ExportSummary",
    "ExportUnreadable",
    "HistoryEntry",
    "LiveMoving",
    "LiveState",
    "PositionBeyondLog",
    "QueueAsOf",
    "ReadModels",
    "ReasonRequired",
    "ReplayFailed",
    "Requester",
    "case_as_of",
    "export_case",
    "export_unit",
    "history_of",
    "month_of",
    "plan_segments",
    "plan_window",
    "position_at",
    "queue_as_of",
    "read_access_log",
    "rebuild_compare",
    "render_html",
    "render_json",
    "render_text",
    "replay",
    "verify_export",
]
