"""docs/prometheus-alerts.yml: valid rule groups, every metric it names is one a service
serves, and every rule tells the person paged what it means and where to look."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "prometheus-alerts.yml"
SERVED_BY = ["services", "shared"]  # where the /metrics endpoints are written
METRIC = re.compile(r"\byizhan_[a-z0-9_]+\b")


def served_metrics() -> set[str]:
    names: set[str] = set()
    for folder in SERVED_BY:
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(METRIC.findall(path.read_text(encoding="utf-8")))
    # intake's counters are named from a table: yizhan_intake_messages_{name}_total
    intake = (ROOT / "services" / "intake" / "metrics.py").read_text(encoding="utf-8")
    names |= {f"yizhan_intake_messages_{n}_total"
              for n in re.findall(r'^\s+\("([a-z_]+)", "', intake, re.MULTILINE)}
    return names


def rules() -> list[dict[str, object]]:
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_every_rule_is_complete_and_named_once() -> None:
    found = rules()
    assert len(found) >= 10
    names = [r["alert"] for r in found]
    assert len(names) == len(set(names)), names
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"page", "warn", "info"}, rule  # type: ignore[index]
        notes = rule["annotations"]
        assert isinstance(notes, dict) and notes.get("summary") and notes.get("runbook"), rule
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule


def test_every_metric_a_rule_names_is_served() -> None:
    served = served_metrics()
    assert "yizhan_relay_leader" in served and "yizhan_intake_messages_swept_total" in served
    for rule in rules():
        named = set(METRIC.findall(str(rule["expr"])))
        assert named <= served, (rule["alert"], named - served)


def test_an_unknown_metric_would_be_caught() -> None:
    assert "yizhan_relay_lead" not in served_metrics()  # a typo of yizhan_relay_leader
