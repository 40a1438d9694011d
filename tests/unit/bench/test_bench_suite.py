"""The bench suite's pure parts: rates, ratios, latency summaries, documents, table, plan."""

from __future__ import annotations

import json
import sys

import pytest

from app.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from bench.coldstart import import_times, summary
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


def test_a_dramatiq_side_gets_its_own_ratio_beside_the_baseline() -> None:
    sides = {"agentq": {"runs_per_s": 600.0}, "stock": {"runs_per_s": 500.0},
             "dramatiq": {"runs_per_s": 2000.0}}  # fmt: skip
    doc = scenario("dispatch", "runs_per_s", sides)
    assert doc["ratio"] == 1.2 and doc["ratio_dramatiq"] == 0.3
    assert check_shape(doc, document=False) == []
    two = scenario("dispatch", "runs_per_s", {"agentq": sides["agentq"], "stock": sides["stock"]})
    assert "ratio_dramatiq" not in two


IMPORTTIME_LOG = """[worker] starting
import time: self [us] | cumulative | imported package
import time:       100 |        100 |   _io
import time:      2000 |       2000 |     tritonclient.grpc
import time:       500 |       2500 |   tritonclient
import time:      1000 |       3600 | app.cli
some log line in between
import time:       300 |        300 | celery.bin.celery
"""


def test_the_import_budget_is_read_from_an_importtime_log() -> None:
    budget = import_times(IMPORTTIME_LOG, top=2)
    assert budget["total_ms"] == 3.9 and budget["modules"] == 5
    assert [m["module"] for m in budget["top_cumulative"]] == ["app.cli", "tritonclient"]
    assert budget["top_cumulative"][1] == {"module": "tritonclient", "depth": 1,
                                           "cumulative_ms": 2.5, "self_ms": 0.5}  # fmt: skip
    assert budget["optional_packages_imported"] == ["tritonclient"]
    assert import_times("no imports here")["total_ms"] == 0


def test_a_cold_start_summary_has_the_median_and_the_spread() -> None:
    figures = summary([1.2, 0.9, 3.0, 1.0, 1.1])
    assert figures["median_s"] == 1.1 and figures["spread_s"] == 2.1
    assert figures["rounds_s"] == [1.2, 0.9, 3.0, 1.0, 1.1]


def _coldstart_doc() -> dict:
    def side(median: float) -> dict:
        return {**summary([median, median + 0.1]), "imports": import_times(IMPORTTIME_LOG)}

    sides = {"agentq": side(0.9), "stock": side(1.5), "dramatiq": side(0.2)}
    doc = scenario("coldstart", "median_s", sides, higher_is_better=False, rounds=2)
    doc["targets"] = {"agentq_median_s": target(sides["agentq"]["median_s"], 1.0, False),
                      "ratio": target(doc["ratio"], 1.0, False)}  # fmt: skip
    return doc


def test_the_table_shows_both_baselines_and_the_cold_start_targets() -> None:
    dispatch = scenario("dispatch", "runs_per_s", {"agentq": {"runs_per_s": 900.0},
                                                   "stock": {"runs_per_s": 1000.0},
                                                   "dramatiq": {"runs_per_s": 1800.0}})  # fmt: skip
    dispatch["targets"] = {"ratio": target(dispatch["ratio"], 0.8)}
    dispatch["postgres"] = {"skipped": "no PostgreSQL URL given"}
    lines = rows({"dispatch": dispatch, "coldstart": _coldstart_doc()})
    assert lines[1][0].strip() == "vs Dramatiq" and lines[1][2:4] == ("1,800", "0.50")
    cold = next(line for line in lines if line[0].startswith("cold start"))
    assert cold[1:4] == ("0.95", "1.55", "0.61") and "✓" in cold[4]
    median = next(line for line in lines if "agentq median" in line[0])
    assert "✓" in median[4] and "≤ 1.0" in median[4]


def test_a_coldstart_document_plots(tmp_path) -> None:
    path = plot({**_coldstart_doc(), **environment(REPO_ROOT)}, tmp_path / "coldstart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
