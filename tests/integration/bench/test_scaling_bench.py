"""bench/scaling.py on a real Redis: replicas take real messages through kombu's transport,
LLEN misses the ones in flight, a replica scaled in mid-step hands its step back, and a
short simulation runs both triggers to the end and back to zero."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
from rich.console import Console

from app.celery_ext.backlog import read_backlog
from app.config import REPO_ROOT
from tests.fixtures.waiting import wait_for

sys.path.insert(0, str(REPO_ROOT))
from bench.scaling import Clock, Pool, SimConfig, sim_celery, simulate
from bench.scaling_report import report

pytestmark = pytest.mark.integration

FAST = SimConfig(time_scale=0.01, step_s=10, concurrency=2, startup_s=0, shutdown_s=30)


def test_a_replica_scaled_in_mid_step_hands_the_step_back(redis_url, redis_client) -> None:
    celery = sim_celery(redis_url)
    clock = Clock(FAST.time_scale)
    slow = Pool("llen", celery, redis_client, replace(FAST, step_s=1e6, shutdown_s=1), clock)
    try:
        slow.reconcile(1, clock.now())
        slow.submit(2, clock.now())
        (replica,) = slow.replicas
        wait_for(lambda: len(replica.holding) == 1, 10, "the replica to take the step")
        assert redis_client.llen(slow.queue) == 0  # what KEDA's redis trigger sees
        assert read_backlog(redis_client, [slow.queue])[slow.queue].total == 1
        slow.reconcile(0, clock.now())
        replica.thread.join(timeout=10)
        assert slow.ledger.handed_back == 1
        assert redis_client.llen(slow.queue) == 1 and redis_client.hlen("unacked") == 0
        quick = Pool("llen", celery, redis_client, FAST, clock)  # the next pod
        quick.reconcile(1, clock.now())
        wait_for(lambda: len(quick.ledger.done) == 1, 10, "the run to finish elsewhere")
        assert set(quick.ledger.done) == set(slow.ledger.submitted)
        quick.close()
    finally:
        slow.close()
        celery.close()


def test_a_short_simulation_scales_both_triggers_out_and_back_to_zero() -> None:
    arrivals = {
        "phases": [{"name": "burst", "start_s": 0, "end_s": 5, "note": ""}],
        "runs": [{"at_s": i * 0.4, "steps": 2} for i in range(12)],
    }
    # The cooldown (300 s) ends near 390 s when the last steps finish on time; the tail leaves
    # 200 simulated seconds (4 s real) for a loaded machine's lag.
    cfg = replace(FAST, time_scale=0.02, startup_s=10, max_replicas=4, tail_s=600)
    raw = simulate(cfg, arrivals, Console(quiet=True))
    result = report(cfg, arrivals, raw, 0.0)
    for trigger in result["triggers"].values():
        summary, samples = trigger["summary"], trigger["samples"]
        assert summary["runs_completed"] == 12 and summary["runs_incomplete"] == 0
        assert 1 <= summary["peak_replicas"] <= 4
        assert samples[-1]["replicas"] == 0  # cooldown passed: scaled to zero
        # Steps in flight are in the unacked hash: LLEN misses them.
        assert any(s["unacked"] > 0 and s["llen"] < s["backlog"] for s in samples)
        assert summary["time_to_drain_s"]["burst"] is not None
