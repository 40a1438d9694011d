"""`agentq bench api` at tiny counts: a real `agentq api` process, Redis, Triton and a worker;
both submit sides answer every call at the offered load, both readers get every token of every
streamed run, and the JSON (and PNG) say so."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from rich.console import Console

from app.config import REPO_ROOT, Settings

pytest.importorskip("fastapi")
sys.path.insert(0, str(REPO_ROOT))
from bench.api import Plan, main

pytestmark = pytest.mark.integration


def test_the_bench_measures_both_ways_on_one_stack(tmp_path, triton_home) -> None:
    plan = Plan(rates=(20.0, 40.0), seconds=1, streams=2, words=5)
    out = tmp_path / "api.json"
    assert main(plan, str(out), Console(quiet=True)) == 0

    report = json.loads(out.read_text())
    assert report["bench"] == "api" and report["api_exit"] in (0, -15)
    # With keys on (the default), the HTTP side sent a real one: its check is in the figures.
    assert report["auth"].startswith("API key") == (Settings().api.auth == "keys")
    levels = report["submit"]["levels"]
    assert [level["offered_per_s"] for level in levels] == [20, 40]
    for level in levels:
        rate = level["offered_per_s"]
        for side in ("http", "python"):
            figures = level[side]
            assert (figures["sent"], figures["answered"], figures["failed"]) == (rate, rate, 0)
            assert 0 < figures["achieved_per_s"] <= rate
            assert figures["latency"]["count"] == rate
        assert level["http"]["api_cpu_ms_per_call"] > 0  # the API process did the work
        assert level["ratio_achieved"] is not None and level["ratio_p99"] is not None
    relay = report["relay"]
    for side in ("http", "python"):
        figures = relay[side]
        assert (figures["runs"], figures["failed"], figures["tokens"]) == (2, 0, 10)
        assert figures["first_token_after_submit"]["count"] == 2
    assert relay["ratio_p50"] is not None
    assert report["machine"]["cpu_count"] and report["versions"]["agentq"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_suffix(".png").stat().st_size > 0
