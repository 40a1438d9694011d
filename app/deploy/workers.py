"""Per agent type: the worker Deployment and PDB, and its autoscaler (KEDA's redis trigger,
the prometheus-trigger alternative, a plain HPA). Each function is pure: settings and an
agent spec in, a dict out.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from app.agents.registry import AgentSpec
from app.config import Settings
from app.deploy.objects import (
    AGENTS_CONFIG_MAP,
    AGENTS_DIR,
    HEALTH_PORT_NAME,
    SECRET,
    TRIGGER_AUTH,
    Obj,
    config_env,
    container_security,
    engines_mount,
    http_probe,
    image,
    meta,
    models_volume,
    pod_template,
    selector,
    tmp_volume,
    worker_name,
)
from app.errors import ConfigurationError

SHUTDOWN_MARGIN_S = 15  # after the soft-shutdown deadline: hand back, release leases, exit
HPA_MIN_WITHOUT_KEDA = 2  # without KEDA nothing wakes a Deployment at zero; keep two warm
BACKLOG_METRIC = "agentq_backlog"
EXTERNAL_METRIC = "task_queue_depth"  # agentq_backlog as prometheus-adapter serves it


def target_backlog(settings: Settings) -> int:
    """Backlog per replica the autoscalers aim for (KEDA's listLength / threshold)."""
    return settings.deploy.backlog_per_replica or settings.worker.concurrency


def max_replicas(spec: AgentSpec, settings: Settings) -> int:
    return spec.max_replicas or settings.deploy.max_replicas


def termination_grace_s(settings: Settings) -> int:
    """Longer than the soft-shutdown deadline, so a scaled-in worker hands its steps back
    before Kubernetes' SIGKILL (app/tasks/shutdown.py)."""
    return math.ceil(settings.worker.soft_shutdown_timeout_s) + SHUTDOWN_MARGIN_S


def redis_endpoint(settings: Settings) -> tuple[str, int, int, bool]:
    """(host, port, database index, TLS) of ``deploy.redis_url``; a password there is refused."""
    url = settings.deploy.redis_url
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigurationError(f"deploy.redis_url is not a URL: {exc}") from None
    if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        raise ConfigurationError("deploy.redis_url must be redis://host:port/db or rediss://...")
    if parts.password:
        raise ConfigurationError(
            "deploy.redis_url carries a password; it would land in a ConfigMap. Put it in "
            f"the {SECRET} Secret (AGENTQ_REDIS_PASSWORD) and drop it from the URL"
        )
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ConfigurationError(f"deploy.redis_url's database must be a number, got {path!r}")
    return parts.hostname, port, int(path), parts.scheme == "rediss"


def hpa_behavior() -> Obj:
    """Kubernetes' default HPA behavior, written out so bench/scaling.py models the same."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 300,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
        },
    }


def trigger_authentication() -> Obj:
    """KEDA reads the Redis password from the Secret itself (no copy in the trigger)."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": meta(TRIGGER_AUTH, "autoscaling"),
        "spec": {
            "secretTargetRef": [
                {"parameter": "password", "name": SECRET, "key": "AGENTQ_REDIS_PASSWORD"}
            ]
        },
    }


# ---- per agent type ----


def worker_deployment(spec: AgentSpec, settings: Settings, agents_file: str | None) -> Obj:
    """``agentq worker --agents <type>``; no ``replicas``: KEDA or the HPA owns the count.

    The engines' volume is mounted read-only for the served model's tokenizer folder
    (SERVED_TOKENIZER, which the config map names as the model's chat template and tokenizer).
    """
    name = worker_name(spec.name)
    tmp, tmp_mount = tmp_volume()
    volumes, mounts = [tmp, models_volume(read_only=True)], [tmp_mount, engines_mount(True)]
    if agents_file is not None:
        volumes.append({"name": "agents", "configMap": {"name": AGENTS_CONFIG_MAP}})
        mounts.append({"name": "agents", "mountPath": AGENTS_DIR, "readOnly": True})
    d = settings.deploy
    container = {
        "name": "worker",
        "image": image(d.image, settings),
        "imagePullPolicy": "IfNotPresent",
        "command": ["agentq", "worker", "--agents", spec.name],
        "envFrom": config_env(),
        "ports": [
            {"name": HEALTH_PORT_NAME, "containerPort": settings.health.port, "protocol": "TCP"}
        ],
        # /livez answers once Redis and the session store were reached (and migrated).
        "startupProbe": http_probe("/livez", HEALTH_PORT_NAME, period_s=5, failures=24),
        "livenessProbe": http_probe("/livez", HEALTH_PORT_NAME, period_s=10, failures=3),
        "readinessProbe": http_probe("/readyz", HEALTH_PORT_NAME, period_s=5, failures=3),
        "resources": {
            "requests": {"cpu": d.worker_cpu, "memory": d.worker_memory},
            "limits": {"cpu": d.worker_cpu_limit, "memory": d.worker_memory},
        },
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }
    template = pod_template(
        "worker", spec.name, container, termination_grace_s(settings), volumes, settings.health.port
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, "worker", spec.name),
        "spec": {
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector("worker", spec.name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": template,
        },
    }


def worker_pdb(spec: AgentSpec) -> Obj:
    """Drains evict a quarter of an agent type's workers at a time; each hands its steps back."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(worker_name(spec.name), "worker", spec.name),
        "spec": {
            "maxUnavailable": "25%",
            "selector": {"matchLabels": selector("worker", spec.name)},
            # An unready worker (e.g. Redis down) must not block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def redis_trigger(spec: AgentSpec, settings: Settings) -> Obj:
    """KEDA's redis trigger: LLEN of the agent's queue list (see prometheus_trigger)."""
    host, port, db, tls = redis_endpoint(settings)
    return {
        "type": "redis",
        "authenticationRef": {"name": TRIGGER_AUTH},
        "metadata": {
            "address": f"{host}:{port}",
            "listName": spec.queue_name,
            "listLength": str(target_backlog(settings)),
            "activationListLength": str(settings.deploy.activation_backlog),
            "databaseIndex": str(db),
            "enableTLS": "true" if tls else "false",
        },
    }


def backlog_query(queue: str) -> str:
    """PromQL of a queue's true backlog; max() so two exporter replicas do not double it."""
    escaped = queue.replace("\\", "\\\\").replace('"', '\\"')
    return f'max({BACKLOG_METRIC}{{queue="{escaped}"}})'


def prometheus_trigger(spec: AgentSpec, settings: Settings) -> Obj:
    """KEDA's prometheus trigger on the exporter's true backlog: every priority sub-list
    plus the messages taken but not acknowledged, which LLEN of one list misses."""
    return {
        "type": "prometheus",
        "metadata": {
            "serverAddress": settings.deploy.prometheus_url,
            "query": backlog_query(spec.queue_name),
            "threshold": str(target_backlog(settings)),
            "activationThreshold": str(settings.deploy.activation_backlog),
            # No sample (exporter blind) is an error, so KEDA's fallback applies.
            "ignoreNullValues": "false",
        },
    }


def scaled_object(spec: AgentSpec, settings: Settings, trigger: Obj) -> Obj:
    """A ScaledObject on ``spec``'s worker Deployment: 0..N replicas on ``trigger``."""
    name = worker_name(spec.name)
    top = max_replicas(spec, settings)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(name, "worker", spec.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": settings.deploy.polling_interval_s,
            "cooldownPeriod": settings.deploy.cooldown_s,
            "minReplicaCount": 0,
            "maxReplicaCount": top,
            # Trigger source unreachable 3 polls running: hold a small fleet, not zero.
            "fallback": {"failureThreshold": 3, "replicas": min(2, top)},
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": hpa_behavior()}},
            "triggers": [trigger],
        },
    }


def worker_hpa(spec: AgentSpec, settings: Settings) -> Obj:
    """Without KEDA: an HPA on the external metric prometheus-adapter makes of the backlog."""
    name = worker_name(spec.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(name, "worker", spec.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": HPA_MIN_WITHOUT_KEDA,
            "maxReplicas": max(max_replicas(spec, settings), HPA_MIN_WITHOUT_KEDA),
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": EXTERNAL_METRIC,
                            "selector": {"matchLabels": {"queue": spec.queue_name}},
                        },
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(target_backlog(settings)),
                        },
                    },
                }
            ],
            "behavior": hpa_behavior(),
        },
    }
