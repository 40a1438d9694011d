"""`agentq bench orchestration` end to end at tiny sizes: 200 runs parked on a signal through
a worker and Triton, dispatch rounds with none and with them parked, every one signalled and
finished; an orchestrator's fan-out to 5 children and the client's baseline, twice each; with
SQLite and PostgreSQL (when it answers). Shapes and completeness, no timing thresholds."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from rich.console import Console

from app.config import REPO_ROOT
from tests.fixtures.postgres import POSTGRES_URL

sys.path.insert(0, str(REPO_ROOT))
from bench.orchestration import Plan, delegate_input, main
from bench.report import check_shape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TINY = Plan(
    parked=200,
    dispatch_runs=200,
    rounds=1,
    children=5,
    repeats=2,
    postgres_url=POSTGRES_URL,
)


def _parked(doc: dict[str, Any], store: str) -> None:
    assert doc.get("error") is None and doc["store"] == store
    assert check_shape(doc, document=False) == []
    assert doc["baseline"] == "idle" and doc["ratio"] is not None
    idle, parked = doc["sides"]["idle"], doc["sides"]["agentq"]
    assert (idle["parked"], parked["parked"]) == (0, 200)
    for side in (idle, parked):
        assert side["runs"] == 200 and side["failed"] == 0 and len(side["rounds"]) == 1
        assert side["runs_per_s"] > 0 and side["worker_rss_mib"] > 0
    assert doc["parking"]["parked"] == 200
    signals = doc["signals"]
    assert signals["signalled"] == signals["resumed"] == signals["finished"] == 200
    assert signals["signals_per_s"] > 0


def _fan_out(doc: dict[str, Any], store: str) -> None:
    assert doc.get("error") is None and doc["store"] == store
    assert check_shape(doc, document=False) == []
    assert doc["baseline"] == "client" and doc["ratio"] is not None
    for side in doc["sides"].values():
        assert side["repeats"] == 2 and side["children_seen"] == 10
        # Each repeat: 5 children and the parent (or the client's continuation) succeeded.
        assert side["runs_by_status"] == {"succeeded": 12}
        assert side["fan_in"]["count"] == 2 and side["whole_p50_ms"] > 0


def test_both_benches_run_at_tiny_sizes_and_every_run_finishes(tmp_path, triton_home) -> None:
    code = main(TINY, tmp_path, Console(quiet=True))
    parked = json.loads((tmp_path / "orchestration-parked.json").read_text())
    fan_out = json.loads((tmp_path / "orchestration-fan-out.json").read_text())
    assert code == 0
    assert check_shape(parked) == [] and check_shape(fan_out) == []
    _parked(parked, "sqlite")
    _fan_out(fan_out, "sqlite")
    pg_parked, pg_fan_out = parked["postgres"], fan_out["postgres"]
    if "skipped" not in pg_parked:
        _parked(pg_parked, "postgresql")
        _fan_out(pg_fan_out, "postgresql")


def test_the_delegate_call_fits_the_scripted_models_token_count() -> None:
    # The scripted model cuts its reply to max_tokens whitespace-separated tokens: the call
    # of 100 tasks must stay one token, or the parent's tool call would be cut.
    text = delegate_input(100)
    assert len(text.split()) == 3
    assert json.loads(text.split(" ", 2)[2].removesuffix("]"))["tasks"][99] == {
        "agent": "child",
        "input": "p99",
    }
