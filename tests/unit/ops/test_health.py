"""Liveness and readiness decisions, the checks' deadline and cache, and metric labels."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY

from app.ops import metrics
from app.ops.health import CheckResult, Checks, liveness, replica_result
from app.ops.metrics import StepInFlight


def live(now: float, last_beat: float | None, steps=(), limit: float = 360.0):
    return liveness(now, last_beat, interval_s=2.0, misses=5, steps=list(steps), step_limit_s=limit)


def test_a_recent_heartbeat_and_no_step_is_live() -> None:
    checks = live(100.0, 99.0)
    assert all(c.ok for c in checks.values())
    assert "1.0 s ago" in checks["heartbeat"].detail


def test_a_heartbeat_older_than_the_allowed_misses_means_the_loop_is_wedged() -> None:
    assert live(110.0, 100.0)["heartbeat"].ok  # exactly 5 intervals
    stale = live(110.5, 100.0)["heartbeat"]
    assert not stale.ok and "wedged" in stale.detail


def test_a_paused_heartbeat_while_the_consumer_reconnects_is_not_a_failure() -> None:
    beat = live(1e6, None)["heartbeat"]
    assert beat.ok and "connecting" in beat.detail


def test_a_step_running_past_its_timeout_and_grace_fails_liveness() -> None:
    steps = [StepInFlight("coder", 10.0), StepInFlight("research", 5.0)]
    ok = live(300.0, 299.0, steps)["steps"]
    assert ok.ok and "2 step(s)" in ok.detail and "research" in ok.detail
    stuck = live(400.0, 399.0, steps)["steps"]
    assert not stuck.ok and "research" in stuck.detail and "wedged" in stuck.detail


def test_replicas_are_ready_when_at_least_one_is() -> None:
    result = replica_result({"a:1": False, "b:2": True})
    assert result.ok and "ready: b:2" in result.detail and "not ready: a:1" in result.detail
    assert not replica_result({"a:1": False}).ok
    assert not replica_result({}).ok


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_checks_are_cached_and_a_failing_check_reports_its_reason() -> None:
    calls = {"ok": 0, "bad": 0}

    def ok() -> CheckResult:
        calls["ok"] += 1
        return CheckResult(True, "fine")

    def bad() -> CheckResult:
        calls["bad"] += 1
        raise ConnectionError("Connection refused")

    clock = Clock()
    checks = Checks({"ok": ok, "bad": bad}, timeout_s=5, cache_s=1.0, clock=clock)
    first = checks.results()
    assert first["ok"] == CheckResult(True, "fine")
    assert not first["bad"].ok and first["bad"].detail == "ConnectionError: Connection refused"
    for _ in range(20):  # a scrape storm within the cache period
        checks.results()
    assert calls == {"ok": 1, "bad": 1}
    clock.now = 1.5
    checks.results()
    assert calls == {"ok": 2, "bad": 2}
    checks.close()


def test_a_hung_check_times_out_and_is_not_started_again_until_it_returns() -> None:
    release = threading.Event()
    started = []

    def hung() -> CheckResult:
        started.append(1)
        release.wait(30)
        return CheckResult(True, "back")

    checks = Checks({"db": hung}, timeout_s=0.1, cache_s=0, clock=Clock())
    assert checks.results()["db"] == CheckResult(False, "no answer within 0.1 s")
    assert not checks.results()["db"].ok
    assert len(started) == 1
    release.set()
    for _ in range(100):
        if checks.results()["db"].ok:
            break
    assert checks.results()["db"] == CheckResult(True, "back")
    checks.close()


def test_labels_never_carry_credentials_or_unbounded_text() -> None:
    assert metrics.replica_label("http://user:secret@vllm-0:8000/v1") == "vllm-0:8000"
    assert metrics.replica_label("triton-0:8001") == "triton-0:8001"
    assert metrics.label(None) == "none"
    assert metrics.label("a b/c" * 40) == ("a_b_c" * 40)[:64]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_steps_in_flight_are_tracked_per_thread_and_counted_in_the_gauge() -> None:
    before = sample("agentq_runs_in_flight", agent="unit")
    inside = threading.Event()
    done = threading.Event()

    def step() -> None:
        metrics.step_started("unit")
        inside.set()
        done.wait(10)
        metrics.step_ended("unit")

    thread = threading.Thread(target=step)
    thread.start()
    inside.wait(10)
    assert sample("agentq_runs_in_flight", agent="unit") == before + 1
    assert any(s.agent == "unit" for s in metrics.steps_in_flight())
    done.set()
    thread.join()
    assert sample("agentq_runs_in_flight", agent="unit") == before
    assert not any(s.agent == "unit" for s in metrics.steps_in_flight())


def test_step_and_run_metrics_record_latency_tokens_and_speed() -> None:
    metrics.step_finished("unit2", "tool", 2.0, tokens_in=100, tokens_out=50, counted="tokenizer")
    metrics.run_finished("unit2", "failed", "budget_exceeded", 7.0)
    metrics.model_call("triton", "http://u:p@t0:8001", 0.2, "unavailable")
    counted = {"agent": "unit2", "counted": "tokenizer"}
    assert sample("agentq_tokens_in_total", **counted, tenant="default") == 100
    assert sample("agentq_tokens_out_total", **counted, tenant="default") == 50
    assert sample("agentq_output_tokens_per_second_sum", **counted) == 25
    assert sample("agentq_step_duration_seconds_count", agent="unit2", kind="tool") == 1
    runs = {
        "agent": "unit2", "status": "failed", "error_type": "budget_exceeded", "tenant": "default"
    }  # fmt: skip
    assert sample("agentq_runs_total", **runs) == 1
    errors = {"backend": "triton", "replica": "t0:8001", "error": "unavailable"}
    assert sample("agentq_model_call_errors_total", **errors) == 1
    body, _ = metrics.exposition(None)
    assert b'agentq_model_call_duration_seconds_count{backend="triton",replica="t0:8001"}' in body


def test_only_listed_tenants_get_their_own_label_the_rest_count_as_other() -> None:
    metrics.label_tenants(["acme"])
    try:
        for tenant in ("acme", "globex", "initech", "default"):
            metrics.run_finished("unit3", "succeeded", None, 1.0, tenant)
            metrics.step_finished("unit3", "final", 1.0, 10, 5, "server", tenant)
    finally:
        metrics.label_tenants([])
    runs = {"agent": "unit3", "status": "succeeded", "error_type": "none"}
    assert sample("agentq_runs_total", **runs, tenant="acme") == 1
    assert sample("agentq_runs_total", **runs, tenant="default") == 1
    assert sample("agentq_runs_total", **runs, tenant="other") == 2  # globex and initech
    assert sample("agentq_runs_total", **runs, tenant="globex") == 0
    tokens = {"agent": "unit3", "counted": "server"}
    assert sample("agentq_tokens_in_total", **tokens, tenant="other") == 20
    assert metrics.tenant_label("globex") == "other"
