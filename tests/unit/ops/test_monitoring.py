"""The dashboard and the alert rules name only metrics agentq exports, and show all of them."""

from __future__ import annotations

import json
import re

import yaml

from app.config import REPO_ROOT
from app.ops import metrics
from app.ops.exporter import METRIC_NAMES as EXPORTER_NAMES
from app.ops.health import COLLECTOR_NAMES

MONITORING = REPO_ROOT / "monitoring"
_NAME = re.compile(r"\b(agentq_[a-z0-9_]+)")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def exported() -> set[str]:
    return metrics.family_names() | set(EXPORTER_NAMES) | set(COLLECTOR_NAMES)


def family(name: str) -> str | None:
    """The exported family a sample name belongs to (``x_total`` -> ``x``), or None."""
    known = exported()
    if name in known:
        return name
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in known:
            return name.removesuffix(suffix)
    return None


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana/dashboards/agentq.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "prometheus/alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_metric_in_the_dashboard_and_alerts_is_exported() -> None:
    names = {n for expr in dashboard_exprs() + alert_exprs() for n in _NAME.findall(expr)}
    assert names
    assert sorted(n for n in names if family(n) is None) == []


def test_the_dashboard_shows_every_exported_metric() -> None:
    shown = {family(n) for expr in dashboard_exprs() for n in _NAME.findall(expr)}
    assert sorted(exported() - shown) == []


def test_every_metric_carries_the_agentq_prefix() -> None:
    assert all(name.startswith("agentq_") for name in exported())


def test_the_alerts_cover_what_an_operator_pages_on() -> None:
    rules = yaml.safe_load((MONITORING / "prometheus/alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"AgentqBacklogGrowing", "AgentqDeadLetters", "AgentqNoReadyReplica"} <= alerts
    assert {"AgentqWorkerNotLive", "AgentqModelErrorRate"} <= alerts
    tests = yaml.safe_load((MONITORING / "prometheus/alerts_test.yml").read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]}
    assert tested == alerts  # every rule has a promtool unit test
