"""The objects every agent type shares: configuration, the Secret's template, the workers'
headless Service, the run API, the exporter and Flower."""

from __future__ import annotations

import json

from app.config import Settings
from app.deploy.objects import (
    AGENTS_CONFIG_MAP,
    AGENTS_DIR,
    API,
    API_PORT_NAME,
    CONFIG_MAP,
    EXPORTER,
    FLOWER,
    HEALTH_PORT_NAME,
    SECRET,
    SERVED_MODELS,
    SERVED_TOKENIZER,
    SERVICE_ACCOUNT,
    TRITON,
    WORKERS_SERVICE,
    Obj,
    config_env,
    container_security,
    http_probe,
    image,
    meta,
    pod_template,
    selector,
    tmp_volume,
)
from app.deploy.workers import redis_endpoint
from app.errors import ConfigurationError


def config_map(settings: Settings, agents_file: str | None) -> Obj:
    """Every non-secret AGENTQ_ setting the pods need (secrets: the Secret)."""
    health, exporter = settings.health.port, settings.exporter.port
    if not health or not exporter or not settings.api.port:
        raise ConfigurationError(
            "health.port, exporter.port and api.port must be fixed ports (not 0)"
        )
    redis_endpoint(settings)  # refuse a password before it reaches the ConfigMap
    triton = [
        {
            "url": f"{TRITON}:8001",
            "health_url": f"http://{TRITON}:8000/v2/health/ready",
            "metrics_url": f"http://{TRITON}:8002/metrics",
        }
    ]
    # Workers render with the served model's chat template and count with its tokenizer: the
    # folder build_engines.sh writes beside the engines, mounted read-only into each worker.
    served = json.dumps(dict.fromkeys(SERVED_MODELS, SERVED_TOKENIZER))
    data = {
        "AGENTQ_REDIS_URL": settings.deploy.redis_url,
        "AGENTQ_TRITON__REPLICAS": json.dumps(triton),
        "AGENTQ_TRITON__CHAT_TEMPLATES": served,
        "AGENTQ_TRITON__TOKENIZERS": served,
        "AGENTQ_LOG_FORMAT": "json",
        "AGENTQ_WORKER__CONCURRENCY": str(settings.worker.concurrency),
        "AGENTQ_WORKER__SOFT_SHUTDOWN_TIMEOUT_S": str(settings.worker.soft_shutdown_timeout_s),
        "AGENTQ_HEALTH__HOST": "0.0.0.0",
        "AGENTQ_HEALTH__PORT": str(health),
        "AGENTQ_EXPORTER__HOST": "0.0.0.0",
        "AGENTQ_EXPORTER__PORT": str(exporter),
        "AGENTQ_FLOWER__ADDRESS": "0.0.0.0",
        "AGENTQ_FLOWER__PORT": str(settings.flower.port),
        "AGENTQ_API__HOST": "0.0.0.0",
        "AGENTQ_API__PORT": str(settings.api.port),
    }
    if agents_file is not None:
        data["AGENTQ_AGENTS_FILE"] = f"{AGENTS_DIR}/{agents_file}"
    if settings.include:  # the user's agent and tool modules, installed in the worker image
        data["AGENTQ_INCLUDE"] = ",".join(settings.include)
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


def _single(name: str, component: str, container: Obj, port: int, grace_s: int = 30) -> Obj:
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
            "template": pod_template(component, None, container, grace_s, [tmp], port),
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
    # Flower's own /metrics sits behind its basic auth: not scraped.
    deployment["spec"]["template"]["metadata"].pop("annotations")
    return [deployment, _service(FLOWER, "flower", "http", port)]


API_REPLICAS = 2
API_SHUTDOWN_MARGIN_S = 5  # after api.shutdown_timeout_s: uvicorn closes and exits


def api_objects(settings: Settings) -> list[Obj]:
    """``agentq api``: two replicas (no Redis state of their own: any one serves any request),
    their Service and a PDB keeping one up through a drain."""
    port = settings.api.port
    container = {
        "name": "api",
        "image": image(settings.deploy.image, settings),
        "imagePullPolicy": "IfNotPresent",
        "command": ["agentq", "api"],
        "envFrom": config_env(),
        "ports": [{"name": API_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        # /healthz: the process serves; /readyz: Redis and the session store answer too.
        "startupProbe": http_probe("/healthz", API_PORT_NAME, period_s=2, failures=30),
        "livenessProbe": http_probe("/healthz", API_PORT_NAME, period_s=10, failures=3),
        "readinessProbe": http_probe("/readyz", API_PORT_NAME, period_s=5, failures=3),
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": container_security(),
    }
    grace = settings.api.shutdown_timeout_s + API_SHUTDOWN_MARGIN_S
    deployment = _single(API, "api", container, port, grace)
    spec = deployment["spec"]
    template = spec.pop("template")
    spec.update(
        replicas=API_REPLICAS,
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        template=template,
    )
    template["metadata"].pop("annotations")  # no /metrics to scrape
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(API, "api"),
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": selector("api")},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",  # an unready replica never blocks a drain
        },
    }
    return [deployment, _service(API, "api", API_PORT_NAME, port), pdb]


RECOVERY = "agentq-recovery"
RECOVERY_SCHEDULE = "*/2 * * * *"
PRUNE = "agentq-prune"
PRUNE_SCHEDULE = "7 * * * *"  # hourly, off the full hour that other jobs crowd
PRUNE_DEADLINE_S = 3000  # a pass stopped here loses nothing: each batch commits on its own


def recovery_cronjob(settings: Settings, agents_file: str | None) -> Obj:
    """``agentq maintenance recover`` every two minutes: runs whose message Redis lost are
    published again also while every worker is scaled to zero (workers do it while they run;
    the pass's lock keeps the two from publishing a step twice)."""
    return _maintenance_cronjob(
        settings, agents_file, RECOVERY, "recovery", "recover", RECOVERY_SCHEDULE, 60, 300
    )


def prune_cronjob(settings: Settings, agents_file: str | None) -> Obj:
    """``agentq maintenance prune`` every hour: finished runs and idle sessions past their
    agent type's retention leave the session store, whatever the workers' scale."""
    return _maintenance_cronjob(
        settings, agents_file, PRUNE, "prune", "prune", PRUNE_SCHEDULE, 600, PRUNE_DEADLINE_S
    )


def _maintenance_cronjob(
    settings: Settings,
    agents_file: str | None,
    name: str,
    component: str,
    command: str,
    schedule: str,
    starting_deadline_s: int,
    active_deadline_s: int,
) -> Obj:
    """A CronJob running ``agentq maintenance <command>``, one job at a time."""
    tmp, tmp_mount = tmp_volume()
    volumes, mounts = [tmp], [tmp_mount]
    if agents_file is not None:  # the registry: queue names, retention overrides
        volumes.append({"name": "agents", "configMap": {"name": AGENTS_CONFIG_MAP}})
        mounts.append({"name": "agents", "mountPath": AGENTS_DIR, "readOnly": True})
    container = {
        "name": command,
        "image": image(settings.deploy.image, settings),
        "imagePullPolicy": "IfNotPresent",
        "command": ["agentq", "maintenance", command],
        "envFrom": config_env(),
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        },
        "securityContext": container_security(),
    }
    template = pod_template(component, None, container, 30, volumes, 0)
    template["metadata"].pop("annotations")  # a short job: nothing to scrape
    template["spec"]["restartPolicy"] = "Never"  # the next schedule is the retry
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": meta(name, component),
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": starting_deadline_s,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": active_deadline_s,
                    "template": template,
                }
            },
        },
    }
