"""The KEDA + HPA model: activation, scale from and to zero, ceil(metric / target), the
tolerance, the stabilization windows and the rate policies, on our ScaledObject's numbers."""

from __future__ import annotations

import pytest

from app.deploy.autoscale import (
    Policy,
    Rules,
    ScalerState,
    ScalingParams,
    decide,
    hpa_desired,
    rate_limit,
    stabilize,
)
from tests.fixtures.manifests import KEDA_DIR, load_documents

UP = Rules(0, (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
DOWN = Rules(300, (Policy("Percent", 100, 15),))


def params(**changes: float) -> ScalingParams:
    base = {
        "target": 10,
        "activation": 0,
        "min_replicas": 0,
        "max_replicas": 10,
        "cooldown_s": 300,
        "polling_s": 15,
    }
    base.update(changes)
    return ScalingParams(up=UP, down=DOWN, **base)  # type: ignore[arg-type]


def test_desired_replicas_are_the_metric_over_the_target_rounded_up() -> None:
    assert hpa_desired(95, 10, 2) == 10
    assert hpa_desired(101, 10, 2) == 11
    assert hpa_desired(21, 10, 2) == 2  # within the 10% tolerance: no change
    assert hpa_desired(23, 10, 2) == 3
    assert hpa_desired(0, 10, 3) == 0


def test_the_params_come_from_the_committed_scaled_objects() -> None:
    redis = ScalingParams.from_scaled_object(
        load_documents(KEDA_DIR / "scaledobject-research.yaml")[0]
    )
    prom_doc = load_documents(KEDA_DIR / "prometheus-trigger" / "scaledobject-research.yaml")[0]
    prometheus = ScalingParams.from_scaled_object(prom_doc)
    assert redis == prometheus
    assert (redis.target, redis.activation, redis.min_replicas, redis.max_replicas) == (
        64,
        0,
        0,
        10,
    )
    assert (redis.cooldown_s, redis.polling_s) == (300, 15)
    assert redis.up == UP and redis.down == DOWN


def test_an_active_trigger_wakes_a_deployment_at_zero_to_one_replica() -> None:
    state = ScalerState()
    p = params(activation=5)
    assert decide(state, 5, 0, p) == 0  # not above the activation threshold
    assert decide(state, 500, 15, p) == 1  # KEDA: 0 -> 1, whatever the metric
    assert decide(state, 500, 30, p) == 5  # then the HPA: 1 + 4 pods (> 100%) per 15 s
    assert decide(state, 500, 45, p) == 10  # 100% of 5, capped at maxReplicaCount


def test_scale_down_waits_for_the_stabilization_window_then_cooldown_to_zero() -> None:
    state, p = ScalerState(), params()
    for t in (0, 15, 30, 45):
        decide(state, 100, t, p)
    assert state.replicas == 10
    # Metric 0: not active, but within the cooldown; the HPA's window holds the peak.
    for t in range(60, 45 + 300, 15):
        assert decide(state, 0, t, p) == 10, t
    assert decide(state, 0, 345, p) == 0  # cooldown since the last active poll (t=45)


def test_the_hpa_scales_in_once_its_window_has_passed() -> None:
    state, p = ScalerState(), params(cooldown_s=3600)
    for t in (0, 15, 30):
        decide(state, 100, t, p)
    assert state.replicas == 10
    for t in range(45, 30 + 300, 15):
        assert decide(state, 15, t, p) == 10, t  # wants 2; the window remembers 10
    assert decide(state, 15, 330, p) == 2


def test_cooldown_keeps_one_replica_while_the_window_lets_go() -> None:
    state, p = ScalerState(), params(cooldown_s=600)
    decide(state, 10, 0, p)
    decide(state, 10, 15, p)
    assert state.replicas == 1
    for t in range(30, 600, 15):
        assert decide(state, 0, t, p) == 1  # the HPA's floor under KEDA is one
    assert decide(state, 0, 615, p) == 0


def test_an_idle_trigger_never_scales_up_and_an_active_one_resets_cooldown() -> None:
    state, p = ScalerState(), params()
    assert [decide(state, 0, t, p) for t in (0, 15, 30)] == [0, 0, 0]
    decide(state, 5, 45, p)
    assert state.replicas == 1
    assert decide(state, 0, 300, p) == 1
    assert decide(state, 3, 330, p) == 1  # active again: cooldown starts over
    assert decide(state, 0, 600, p) == 1
    assert decide(state, 0, 630, p) == 0


def test_stabilization_takes_the_window_extremes() -> None:
    recs = [(0.0, 8), (100.0, 3), (250.0, 6)]
    assert stabilize(recs, 280, current=8, desired=2, up=UP, down=DOWN) == 8
    assert stabilize(recs, 320, current=8, desired=2, up=UP, down=DOWN) == 6
    short = Rules(60, DOWN.policies)
    assert stabilize(recs, 300, current=8, desired=2, up=UP, down=short) == 6
    assert stabilize(recs, 400, current=8, desired=2, up=UP, down=short) == 2


@pytest.mark.parametrize(
    ("current", "desired", "events", "rules", "expected"),
    [
        (1, 100, [], UP, 5),  # Pods 4 beats Percent 100 (2)
        (8, 100, [], UP, 16),  # Percent 100 beats Pods 4 (12)
        (8, 100, [(10.0, 4)], UP, 8),  # 4 added this period: from 4, both policies allow 8
        (10, 1, [], DOWN, 1),  # 100% down per 15 s
        (10, 1, [], Rules(0, (Policy("Percent", 50, 60),)), 5),
        (10, 1, [(20.0, -5)], Rules(0, (Policy("Pods", 2, 60),)), 10),  # used up: 15 - 2 > 10
        (4, 9, [], Rules(0, UP.policies, "Disabled"), 4),
    ],
)
def test_rate_policies(
    current: int, desired: int, events: list[tuple[float, int]], rules: Rules, expected: int
) -> None:
    assert rate_limit(current, desired, events, 20.0, rules) == expected
