"""A case's history as readable text and as a printable one-page HTML timeline (for the
applicant or a court). Times are shown in China Standard Time; no personal data is shown: the
applicant is named by the case's tracking number and subject id only."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from html import escape
from typing import Any

from shared.audit.history import CaseHistory, HistoryEntry

CHINA = timezone(timedelta(hours=8))
ALTERED = ("WARNING: the events at positions {} were altered in the store after they were "
           "recorded (their content no longer gives their hash); run `yizhan audit verify`")
MISSING = ("WARNING: versions {} of the case are missing from the store (removed after they "
           "were recorded); run `yizhan audit verify`")


def _warnings(history: CaseHistory) -> list[str]:
    """What no longer holds in the case's events as the store has them."""
    found = []
    if history.altered:
        found.append(ALTERED.format(", ".join(map(str, history.altered))))
    if history.missing_versions:
        found.append(MISSING.format(", ".join(map(str, history.missing_versions))))
    return found


def local(at: datetime) -> str:
    """``at`` in China Standard Time, to the minute."""
    return at.astimezone(CHINA).strftime("%Y-%m-%d %H:%M CST")


def who(entry: HistoryEntry) -> str:
    """The actor, their role and unit, and on whose behalf they acted (A/B roles)."""
    text = f"{entry.actor_id} ({entry.role}, {entry.unit})"
    return f"{text} for {entry.acting_for}" if entry.acting_for else text


def move(entry: HistoryEntry) -> str:
    """``from → to`` for moves between units, else empty."""
    if entry.from_unit is None and entry.to_unit is None:
        return ""
    return f"{entry.from_unit or '?'} → {entry.to_unit or '?'}"


def _details(entry: HistoryEntry) -> str:
    shown = {k: v for k, v in entry.details.items() if v not in (None, "", [], {})}
    return ", ".join(f"{k}={_value(v)}" for k, v in sorted(shown.items()))


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "/".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _one_line(text: str) -> str:
    """Free text (reasons, notes) on the one line it is shown on: a line break typed into a
    reason is shown escaped, so it cannot start a line that reads as another event."""
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def render_json(history: CaseHistory) -> str:
    """The history as pretty JSON text."""
    return json.dumps(history.as_dict(), ensure_ascii=False, indent=2)


def render_text(history: CaseHistory) -> str:
    """The history as plain text, one block per event."""
    lines = [f"Case {history.tracking_no} ({history.case_id})",
             f"service {history.service_code}, subject {history.subject_id}, "
             f"{len(history.entries)} events", ""]
    lines[2:2] = _warnings(history)
    for e in history.entries:
        lines.append(f"#{e.version:<3} {local(e.at)}  {e.type}  [position {e.position}]")
        if not e.hash_ok:
            lines.append("     !! ALTERED: this event's content does not give its recorded hash")
        lines.append(f"     by {_one_line(who(e))}")
        if move(e):
            lines.append(f"     moved {_one_line(move(e))}")
        if e.reasons:
            lines.append(f"     reasons: {_one_line('; '.join(e.reasons))}")
        if _details(e):
            lines.append(f"     {_one_line(_details(e))}")
    if history.entries:
        last = history.entries[-1]
        lines += ["", f"last event hash {last.hash} at position {last.position}"]
    return "\n".join(lines) + "\n"


_STYLE = """
@page { size: A4; margin: 12mm; }
body { font: 9pt/1.3 "Noto Sans CJK SC", "Source Han Sans", sans-serif; color: #000; }
h1 { font-size: 13pt; margin: 0 0 2mm; }
.meta { margin: 0 0 3mm; }
table { width: 100%; border-collapse: collapse; }
th, td { border-bottom: 0.3pt solid #888; padding: 1mm; vertical-align: top; text-align: left; }
th { background: #eee; }
td.n { white-space: nowrap; }
.foot { margin-top: 3mm; font-size: 7pt; word-break: break-all; }
"""


def _row(e: HistoryEntry) -> str:
    reasons = "; ".join(e.reasons)
    cells = (str(e.version), local(e.at), e.type, who(e), move(e), reasons, _details(e))
    return "<tr>" + "".join(
        f'<td class="n">{escape(c)}</td>' if i < 2 else f"<td>{escape(c)}</td>"
        for i, c in enumerate(cells)) + "</tr>"


def render_html(history: CaseHistory, *, generated_at: datetime | None = None) -> str:
    """A self-contained, printable one-page timeline (A4, no scripts, no external assets)."""
    last = history.entries[-1] if history.entries else None
    stamp = f"generated {local(generated_at)}; " if generated_at else ""
    anchor = (f"last event at log position {last.position}, hash {last.hash}" if last else "")
    rows = "\n".join(_row(e) for e in history.entries)
    warning = "".join(f'<p class="meta"><strong>{escape(text)}</strong></p>\n'
                      for text in _warnings(history))
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>Case {escape(str(history.tracking_no))}</title><style>{_STYLE}</style></head>
<body>
<h1>Case history 办理记录 — {escape(str(history.tracking_no))}</h1>
<p class="meta">Service {escape(str(history.service_code))} · data subject
{escape(str(history.subject_id))} · case {escape(str(history.case_id))} ·
{len(history.entries)} recorded steps</p>
{warning}<table><thead><tr><th>#</th><th>When</th><th>Step</th><th>Who (role, unit)</th>
<th>Moved</th><th>Reasons</th><th>Details</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<p class="foot">{escape(stamp + anchor)}. Taken from the hash-chained event log; it can be
checked with <code>yizhan audit verify</code> and an exported file with
<code>yizhan audit verify-export</code>. No personal data is shown.</p>
</body></html>
"""
