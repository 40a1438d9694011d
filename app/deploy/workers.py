"""The objects of the worker side: configuration, one Deployment and autoscaler per agent
type (KEDA's redis trigger, the prometheus-trigger alternative, a plain HPA), the exporter
and Flower. Each function is pure: settings and an agent spec in, a dict out.
"""

from __future__ import annotations

import json
import math
from urllib.parse import urlsplit

from app.agents import AgentSpec
from app.config import Settings
from app.deploy.objects import (
    AGENTS_CONFIG_MAP,
    AGENTS_DIR,
    CONFIG_MAP,
    EXPORTER,
    FLOWER,
    HEALTH_PORT_NAME,
    SECRET,
    SERVICE_ACCOUNT,
    TRIGGER_AUTH,
    TRITON,
    WORKERS_SERVICE,
    Obj,
    config_env,
    container_security,
    http_probe,
    labels,
    meta,
    pod_security,
    scrape_annotations,
    selector,
    tmp_volume,
    worker_name,
)
from app.errors import ConfigurationError

SHUTDOWN_MARGIN_S = 15  # after the soft-shutdown deadline: hand back, release leases, exit
HPA_MIN_WITHOUT_KEDA = 2  # without KEDA nothing wakes a Deployment at zero; keep two warm
BACKLOG_METRIC = "agentq_backlog"
EXTERNAL_METRIC = "task_queue_depth"  # agentq_backlog as prometheus-adapter serves it


def image(repository: str, settings: Settings) -> str:
    return f"{repository}:{settings.deploy.image_tag}"


def target_backlog(settings: Settings) -> int:
    """Backlog per replica the autoscalers aim for (KEDA's listLength / threshold)."""
    return settings.deploy.backlog_per_replica or settings.worker.concurrency


def max_replicas(spec: AgentSpec, settings: Settings) -> int:
    return spec.max_replicas or settings.deploy.max_replicas


def termination_grace_s(settings: Settings) -> int:
    """Longer than the soft-shutdown deadline, so a scaled-in worker hands its steps back
    before Kubernetes' SIGKILL (app/shutdown.py)."""
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


# ---- shared by every agent type ----


def config_map(settings: Settings, agents_file: str | None) -> Obj:
    """Every non-secret AGENTQ_ setting the pods need (secrets: the Secret)."""
    health, exporter = settings.health.port, settings.exporter.port
    if not health or not exporter:
        raise ConfigurationError("health.port and exporter.port must be fixed ports (not 0)")
    redis_endpoint(settings)  # refuse a password before it reaches the ConfigMap
    triton = [
        {
            "url": f"{TRITON}:8001",
            "health_url": f"http://{TRITON}:8000/v2/health/ready",
            "metrics_url": f"http://{TRITON}:8002/metrics",
        }
    ]
    data = {
        "AGENTQ_REDIS_URL": settings.deploy.redis_url,
        "AGENTQ_TRITON__REPLICAS": json.dumps(triton),
        "AGENTQ_LOG_FORMAT": "json",
        "AGENTQ_WORKER__CONCURRENCY": str(settings.worker.concurrency),
        "AGENTQ_WORKER__SOFT_SHUTDOWN_TIMEOUT_S": str(settings.worker.soft_shutdown_timeout_s),
        "AGENTQ_HEALTH__HOST": "0.0.0.0",
        "AGENTQ_HEALTH__PORT": str(health),
        "AGENTQ_EXPORTER__HOST": "0.0.0.0",
        "AGENTQ_EXPORTER__PORT": str(exporter),
        "AGENTQ_FLOWER__ADDRESS": "0.0.0.0",
        "AGENTQ_FLOWER__PORT": str(settings.flower.port),
    }
    if agents_file is not None:
        data["AGENTQ_AGENTS_FILE"] = f"{AGENTS_DIR}/{agents_file}"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(CONFIG_MAP, "config"),
        "data": data,
    }


def agents_config_map(filename: str, text: str) -> Obj:
    """The agents file itself, mounted into every worker at AGENTS_DIR."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(AGENTS_CONFIG_MAP, "config"),
        "data": {filename: text},
    }


def service_account() -> Obj:
    # The pods never call the Kubernetes API: no token mounted.
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(SERVICE_ACCOUNT, "config"),
        "automountServiceAccountToken": False,
    }


def workers_service(settings: Settings) -> Obj:
    """Headless Service over every worker pod: one A record each for Prometheus' dns_sd."""
    port = settings.health.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(WORKERS_SERVICE, "worker"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # an unready worker's metrics say why
            "selector": selector("worker"),
            "ports": [{"name": HEALTH_PORT_NAME, "port": port, "targetPort": HEALTH_PORT_NAME}],
        },
    }


def secret_template() -> Obj:
    """The Secret's shape with placeholders: never applied as is (see keda/templates/)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(SECRET, "config"),
        "type": "Opaque",
        "stringData": {
            "AGENTQ_REDIS_PASSWORD": "<redis password>",
            "AGENTQ_DATABASE_URL": "postgresql+psycopg://agentq:<password>@<host>:5432/agentq",
            "AGENTQ_FLOWER__BASIC_AUTH": "<user>:<password>",
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


def _pod_template(
    component: str, agent: str | None, container: Obj, grace_s: int, volumes: list[Obj], port: int
) -> Obj:
    return {
        "metadata": {"labels": labels(component, agent), "annotations": scrape_annotations(port)},
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": grace_s,
            "securityContext": pod_security(),
            "containers": [container],
            "volumes": volumes,
        },
    }


def worker_deployment(spec: AgentSpec, settings: Settings, agents_file: str | None) -> Obj:
    """``agentq worker --agents <type>``; no ``replicas``: KEDA or the HPA owns the count."""
    name = worker_name(spec.name)
    tmp, tmp_mount = tmp_volume()
    volumes, mounts = [tmp], [tmp_mount]
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
    template = _pod_template(
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


# ---- the exporter and Flower ----


def _single(name: str, component: str, container: Obj, port: int) -> Obj:
    tmp, tmp_mount = tmp_volume()
    container = {**container, "volumeMounts": [tmp_mount]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, component),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(component)},
            "template": _pod_template(component, None, container, 30, [tmp], port),
        },
    }


def _service(name: str, component: str, port_name: str, port: int) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, component),
        "spec": {
            "selector": selector(component),
            "ports": [{"name": port_name, "port": port, "targetPort": port_name}],
        },
    }


def exporter_objects(settings: Settings) -> list[Obj]:
    """``agentq exporter`` (one per cluster) and its Service (Prometheus scrapes it by name)."""
    port = settings.exporter.port
    container = {
        "name": "exporter",
        "image": image(settings.deploy.image, settings),
        "imagePullPolicy": "IfNotPresent",
        "command": ["agentq", "exporter"],
        "envFrom": config_env(),
        "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
        "livenessProbe": http_probe("/livez", "metrics", period_s=10, failures=3),
        "readinessProbe": http_probe("/readyz", "metrics", period_s=10, failures=3),
        "resources": {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        "securityContext": container_security(),
    }
    return [
        _single(EXPORTER, "exporter", container, port),
        _service(EXPORTER, "exporter", "metrics", port),
    ]


def flower_objects(settings: Settings) -> list[Obj]:
    """``agentq flower`` behind basic auth (AGENTQ_FLOWER__BASIC_AUTH in the Secret)."""
    port = settings.flower.port
    # TCP probes: every Flower page, its health check included, sits behind basic auth.
    tcp = {"tcpSocket": {"port": "http"}, "periodSeconds": 10, "failureThreshold": 3}
    container = {
        "name": "flower",
        "image": image(settings.deploy.image, settings),
        "imagePullPolicy": "IfNotPresent",
        "command": ["agentq", "flower"],
        "envFrom": config_env(),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "livenessProbe": tcp,
        "readinessProbe": tcp,
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": container_security(),
    }
    deployment = _single(FLOWER, "flower", container, port)
    # Flower serves no Prometheus metrics of ours: do not scrape it.
    deployment["spec"]["template"]["metadata"].pop("annotations")
    return [deployment, _service(FLOWER, "flower", "http", port)]
