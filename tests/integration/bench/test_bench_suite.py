"""The bench suite end to end at tiny counts: every scenario starts its Redis, workers of both
sides and Triton, measures, and writes a complete JSON document and a PNG."""

from __future__ import annotations

import json
import sys

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
    for side in ("agentq", "stock"):
        assert dispatch["sides"][side]["runs"] == 200 and dispatch["sides"][side]["failed"] == 0
    pg = dispatch["postgres"]
    assert "skipped" in pg or pg["sides"]["agentq"]["failed"] == 0
    latency = docs["latency"]
    assert latency["saturation_source"].startswith("dispatch")
    for side in ("agentq", "stock"):
        timed = latency["sides"][side]["enqueue_to_start"]
        assert timed["count"] == latency["sides"][side]["runs"] and timed["p50_ms"] > 0
    memory = docs["memory"]["sides"]
    assert memory["agentq"]["in_flight_seen"] == memory["stock"]["in_flight_seen"] == [64, 64]
    assert docs["inference"]["ratio_at_concurrency"] == 4
