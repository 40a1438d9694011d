"""What KEDA and the HPA decide at each polling interval, as pure functions (no I/O).

A model of the controllers our ScaledObjects drive, used by ``bench/scaling.py``:

- KEDA: a trigger is *active* while its metric is above the activation threshold. At 0
  replicas an active trigger scales the Deployment to ``max(min, 1)``; once no trigger has
  been active for ``cooldownPeriod`` it scales to ``minReplicaCount`` (0). In between, the
  HPA KEDA created decides.
- HPA (autoscaling/v2, an External metric with an AverageValue target, as KEDA makes for
  the redis and prometheus triggers): desired = ceil(metric / target), unchanged within a
  10% tolerance; then the stabilization windows (scale-up: the lowest recommendation in its
  window, scale-down: the highest) and the rate policies (``selectPolicy: Max``: the policy
  allowing the biggest change), then min/max. This follows the HorizontalController of
  kubernetes/pkg/controller/podautoscaler.

The HPA syncs every 15 s and KEDA polls every ``pollingInterval`` (15 s in our
manifests); the model takes one decision per poll for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

PolicyKind = Literal["Pods", "Percent"]
HPA_TOLERANCE = 0.1


@dataclass(frozen=True, slots=True)
class Policy:
    """One HPA scaling policy: at most ``value`` pods (or percent) per ``period_s``."""

    kind: PolicyKind
    value: int
    period_s: float


@dataclass(frozen=True, slots=True)
class Rules:
    """The scale-up or scale-down half of an HPA's ``behavior``."""

    window_s: float
    policies: tuple[Policy, ...]
    select: Literal["Max", "Min", "Disabled"] = "Max"

    @classmethod
    def from_manifest(cls, rules: dict[str, Any]) -> Rules:
        return cls(
            window_s=float(rules.get("stabilizationWindowSeconds", 0)),
            policies=tuple(
                Policy(p["type"], int(p["value"]), float(p["periodSeconds"]))
                for p in rules.get("policies", ())
            ),
            select=rules.get("selectPolicy", "Max"),
        )


@dataclass(frozen=True, slots=True)
class ScalingParams:
    """The numbers a ScaledObject gives KEDA and its HPA."""

    target: float
    activation: float
    min_replicas: int
    max_replicas: int
    cooldown_s: float
    polling_s: float
    up: Rules
    down: Rules

    @classmethod
    def from_scaled_object(cls, obj: dict[str, Any]) -> ScalingParams:
        """Read them from a ScaledObject with one redis or prometheus trigger."""
        spec = obj["spec"]
        trigger = spec["triggers"][0]
        meta = trigger["metadata"]
        if trigger["type"] == "redis":
            target, activation = meta["listLength"], meta.get("activationListLength", "0")
        elif trigger["type"] == "prometheus":
            target, activation = meta["threshold"], meta.get("activationThreshold", "0")
        else:
            raise ValueError(f"no model of KEDA's {trigger['type']!r} trigger")
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
        behavior = behavior.get("behavior", {})
        return cls(
            target=float(target),
            activation=float(activation),
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            cooldown_s=float(spec.get("cooldownPeriod", 300)),
            polling_s=float(spec.get("pollingInterval", 30)),
            up=Rules.from_manifest(behavior.get("scaleUp", DEFAULT_UP)),
            down=Rules.from_manifest(behavior.get("scaleDown", DEFAULT_DOWN)),
        )


DEFAULT_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Pods", "value": 4, "periodSeconds": 15},
        {"type": "Percent", "value": 100, "periodSeconds": 15},
    ],
}
DEFAULT_DOWN = {
    "stabilizationWindowSeconds": 300,
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
}


@dataclass(slots=True)
class ScalerState:
    """What KEDA and the HPA remember between polls."""

    replicas: int = 0
    last_active: float | None = None
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, int]] = field(default_factory=list)  # (time, replica change)


def hpa_desired(
    metric: float, target: float, current: int, tolerance: float = HPA_TOLERANCE
) -> int:
    """Replicas an HPA asks for on an External metric with an AverageValue target."""
    if current <= 0:
        return math.ceil(metric / target)
    ratio = metric / (target * current)
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(metric / target)


def stabilize(
    recommendations: list[tuple[float, int]],
    now: float,
    current: int,
    desired: int,
    up: Rules,
    down: Rules,
) -> int:
    """The HPA's stabilization: no higher than the lowest recommendation of the scale-up
    window, no lower than the highest of the scale-down window (``desired`` included)."""
    up_limit = down_limit = desired
    for at, rec in recommendations:
        if at > now - up.window_s:
            up_limit = min(up_limit, rec)
        if at > now - down.window_s:
            down_limit = max(down_limit, rec)
    return min(max(current, up_limit), down_limit)


def _changed_in_period(
    events: list[tuple[float, int]], now: float, period_s: float
) -> tuple[int, int]:
    added = sum(d for at, d in events if d > 0 and at > now - period_s)
    removed = -sum(d for at, d in events if d < 0 and at > now - period_s)
    return added, removed


def rate_limit(
    current: int, desired: int, events: list[tuple[float, int]], now: float, rules: Rules
) -> int:
    """The most (scaling up) or fewest (down) replicas ``rules``' policies allow now."""
    if rules.select == "Disabled" or not rules.policies:
        return current
    limits = []
    for policy in rules.policies:
        added, removed = _changed_in_period(events, now, policy.period_s)
        start = current - added + removed  # replicas at the start of the period
        if desired > current:
            if policy.kind == "Pods":
                limits.append(start + policy.value)
            else:
                limits.append(math.ceil(start * (1 + policy.value / 100)))
        elif policy.kind == "Pods":
            limits.append(start - policy.value)
        else:
            limits.append(int(start * (1 - policy.value / 100)))
    if desired > current:
        limit = max(limits) if rules.select == "Max" else min(limits)
        return min(desired, max(limit, current))
    limit = min(limits) if rules.select == "Max" else max(limits)
    return max(desired, min(limit, current))


def decide(state: ScalerState, metric: float, now: float, params: ScalingParams) -> int:
    """One poll: KEDA's activation and scale-to-zero, else the HPA. Updates ``state``
    and returns the replicas the Deployment should have."""
    active = metric > params.activation
    if active:
        state.last_active = now
    current = state.replicas
    floor = max(params.min_replicas, 1)  # the HPA's minReplicas under KEDA
    if current == 0:
        new = floor if active else params.min_replicas
    elif (
        not active
        and params.min_replicas == 0
        and (state.last_active is None or now - state.last_active >= params.cooldown_s)
    ):
        new = 0
    else:
        raw = min(max(hpa_desired(metric, params.target, current), floor), params.max_replicas)
        stable = stabilize(state.recommendations, now, current, raw, params.up, params.down)
        state.recommendations.append((now, raw))
        horizon = max(params.up.window_s, params.down.window_s)
        state.recommendations = [(t, r) for t, r in state.recommendations if t > now - horizon]
        rules = params.up if stable > current else params.down
        new = (
            rate_limit(current, stable, state.events, now, rules) if stable != current else current
        )
        new = min(max(new, floor), params.max_replicas)
        if new != current:  # the HPA's own scale events (KEDA's 0 <-> 1 are not its)
            state.events.append((now, new - current))
            periods = [p.period_s for p in (*params.up.policies, *params.down.policies)]
            state.events = [(t, d) for t, d in state.events if t > now - max(periods, default=0)]
    if new == 0:
        state.recommendations.clear()  # at zero the HPA is idle; it starts afresh at one
        state.events.clear()
    state.replicas = new
    return new
