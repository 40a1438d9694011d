"""The bench suite's pure parts: rates, ratios, latency summaries, documents, table, plan."""

from __future__ import annotations

import json
import sys

import pytest

from app.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from bench.latency import offered_rate
from bench.plots import plot
from bench.report import (
    check_shape,
    environment,
    latency_summary,
    rate,
    ratio,
    scenario,
    target,
)
from bench.suite import FULL, QUICK, inference_summary, plan_for, rows


def test_rates_and_ratios_refuse_empty_figures() -> None:
    assert rate(100, 2.0) == 50.0
    assert rate(0, 2.0) is None and rate(10, 0.0) is None
    assert ratio(500.0, 1000.0) == 0.5
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None


def test_latency_summary_in_milliseconds() -> None:
    summary = latency_summary([0.001 * i for i in range(1, 101)])
    assert summary["count"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == pytest.approx(100.0)
    assert latency_summary([])["p50_ms"] is None


def test_a_scenario_document_has_both_sides_a_ratio_and_the_environment() -> None:
    doc = scenario("dispatch", "runs_per_s", {"agentq": {"runs_per_s": 400.0},
                                              "stock": {"runs_per_s": 800.0}})  # fmt: skip
    assert doc["ratio"] == 0.5 and doc["baseline"] == "stock"
    assert check_shape(doc) == ["machine", "versions", "date"]
    assert check_shape(doc, document=False) == []
    doc.update(environment(REPO_ROOT))
    assert check_shape(doc) == []
    versions = doc["versions"]
    assert {"python", "celery", "kombu", "redis_py", "agentq"} <= set(versions)
    assert doc["machine"]["cpu_count"] and doc["machine"]["ram_gib"]
    json.dumps(doc)  # what is written must serialise


def test_a_missing_side_is_reported() -> None:
    doc = scenario("x", "m", {"agentq": {"m": 1.0}, "direct": {"m": 2.0}}, baseline="direct")
    assert check_shape(doc, document=False) == []
    del doc["sides"]["direct"]
    assert check_shape(doc, document=False) == ["sides.direct"]


def test_targets_bound_either_way() -> None:
    assert target(25.0, 20.0)["met"] is True
    assert target(1.6, 1.5, at_least=False) == {"max": 1.5, "value": 1.6, "met": False}
    assert target(None, 1.0)["met"] is None


def test_the_offered_load_is_half_the_slower_side() -> None:
    assert offered_rate({"agentq": 400.0, "stock": 1000.0}) == 200.0
    assert offered_rate({"agentq": None, "stock": 1000.0}) == 500.0


def _inference_report() -> dict:
    def side(per_s: float) -> dict:
        return {"calls": 100, "failed": 0, "calls_per_s": per_s}

    levels = [
        {"concurrency": c, "direct": side(d), "agentq": side(a), "agentq_two_processes": None,
         "ratio": round(a / d, 3), "ideal_calls_per_s": c * 5.0}
        for c, d, a in ((16, 50.0, 45.0), (64, 200.0, 100.0), (256, 500.0, 100.0))
    ]  # fmt: skip
    return {"levels": levels, "latency_ms": 200}


def test_the_inference_ratio_is_taken_at_c64_or_below() -> None:
    report = _inference_report()
    summary = inference_summary(report, 64, 0.9)
    assert summary["ratio"] == 0.5 and summary["ratio_at_concurrency"] == 64
    assert summary["targets"]["ratio"]["met"] is False
    report["levels"] = report["levels"][:1]
    assert inference_summary(report, 64, 0.9)["ratio_at_concurrency"] == 16


def test_the_table_has_a_line_per_target_and_says_what_failed() -> None:
    dispatch = scenario("dispatch", "runs_per_s", {"agentq": {"runs_per_s": 900.0},
                                                   "stock": {"runs_per_s": 1000.0}})  # fmt: skip
    dispatch["targets"] = {"ratio": target(dispatch["ratio"], 0.8)}
    dispatch["postgres"] = {"skipped": "PostgreSQL at x is unreachable"}
    lines = rows({"dispatch": dispatch, "memory": {"scenario": "memory", "error": "boom"}})
    assert lines[0][0] == "dispatch runs/s, SQLite" and lines[0][3] == "0.90"
    assert "✓" in lines[0][4]
    assert lines[1][1] == "skipped" and "unreachable" in lines[1][4]
    assert "failed" in lines[2][1]


def test_quick_is_smaller_and_overrides_apply() -> None:
    assert QUICK.dispatch_runs < FULL.dispatch_runs == 20_000 == FULL.enqueue_runs
    plan = plan_for(True, dispatch_runs=500, concurrency=None)
    assert plan.dispatch_runs == 500 and plan.concurrency == QUICK.concurrency


def test_an_inference_document_plots(tmp_path) -> None:
    report = {**_inference_report(), **inference_summary(_inference_report(), 64, 0.9)}
    path = plot({**report, **environment(REPO_ROOT)}, tmp_path / "inference.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
