"""The bench suite end to end at tiny counts: every scenario starts its Redis, each side's
workers (agentq, stock Celery, Dramatiq) and Triton, measures, and writes a complete JSON
document and a PNG."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
from rich.console import Console

from app.config import REPO_ROOT
from tests.fixtures.postgres import POSTGRES_URL

sys.path.insert(0, str(REPO_ROOT))
from bench.report import check_shape
from bench.suite import SCENARIOS, Plan
from bench.suite import main as run_suite

pytestmark = pytest.mark.integration

TINY = Plan(
    enqueue_runs=200,
    dispatch_runs=200,
    latency_s=1.0,
    saturation_runs=100,
    coldstart_rounds=2,
    memory_hold_ms=2000,
    inference_levels=(4,),
    inference_latency_ms=20,
    concurrency=4,
    postgres_url=POSTGRES_URL,
)


def test_every_scenario_runs_end_to_end_and_writes_its_results(tmp_path, triton_home) -> None:
    code = run_suite(["all"], TINY, tmp_path, Console(quiet=True))
    docs = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in SCENARIOS}
    assert {n: d.get("error") for n, d in docs.items()} == dict.fromkeys(SCENARIOS)
    assert code == 0
    for name, doc in docs.items():
        assert check_shape(doc) == [], name
        assert doc["ratio"] is not None, name
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    enqueue = docs["enqueue"]["sides"]
    assert enqueue["agentq"]["queued"] == enqueue["stock"]["queued"] == 200
    assert enqueue["raw_ceiling"]["message_bytes"] == enqueue["agentq"]["message_bytes"]
    dispatch = docs["dispatch"]
    for side in ("agentq", "stock", "dramatiq"):
        assert dispatch["sides"][side]["runs"] == 200 and dispatch["sides"][side]["failed"] == 0
    assert dispatch["ratio_dramatiq"] is not None
    pg = dispatch["postgres"]
    assert (
        "skipped" in pg or pg["sides"]["dramatiq"]["failed"] == pg["sides"]["agentq"]["failed"] == 0
    )
    latency = docs["latency"]
    assert latency["saturation_source"].startswith("dispatch")
    assert set(latency["saturation_runs_per_s"]) == {"agentq", "stock", "dramatiq"}
    for side in ("agentq", "stock", "dramatiq"):
        timed = latency["sides"][side]["enqueue_to_start"]
        assert timed["count"] == latency["sides"][side]["runs"] and timed["p50_ms"] > 0
    assert latency["ratio_dramatiq"] is not None
    assert_coldstart(docs["coldstart"], rounds=2)
    memory = docs["memory"]["sides"]
    assert memory["agentq"]["in_flight_seen"] == memory["stock"]["in_flight_seen"] == [64, 64]
    assert docs["inference"]["ratio_at_concurrency"] == 4


def assert_coldstart(doc: dict, rounds: int) -> None:
    """Three sides, each timed ``rounds`` times, each with its import-time budget."""
    assert set(doc["sides"]) == {"agentq", "stock", "dramatiq"}
    assert doc["ratio"] is not None and doc["ratio_dramatiq"] is not None
    for side, figures in doc["sides"].items():
        assert len(figures["rounds_s"]) == rounds and figures["median_s"] > 0, side
        budget = figures["imports"]
        assert budget["total_ms"] > 0 and len(budget["top_cumulative"]) == 15, side
    assert {"agentq_median_s", "ratio"} <= set(doc["targets"])
    assert "celery" in {
        m["module"].split(".")[0] for m in doc["sides"]["stock"]["imports"]["top_cumulative"]
    }


def test_coldstart_alone_times_every_side_and_keeps_the_import_budget(tmp_path) -> None:
    code = run_suite(
        ["coldstart"], replace(TINY, coldstart_rounds=1), tmp_path, Console(quiet=True)
    )
    doc = json.loads((tmp_path / "coldstart.json").read_text())
    assert doc.get("error") is None and code == 0
    assert check_shape(doc) == []
    assert_coldstart(doc, rounds=1)
    assert doc["load_average"]["before"] and (tmp_path / "coldstart.png").stat().st_size > 0
