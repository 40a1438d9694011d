"""Building blocks of the generated objects: names, labels, probes, security contexts."""

from __future__ import annotations

import re
from typing import Any

from app.config import Settings
from app.errors import ConfigurationError

Obj = dict[str, Any]

APP = "agentq"
CONFIG_MAP = "agentq-config"
AGENTS_CONFIG_MAP = "agentq-agents"
SECRET = "agentq-secrets"
SERVICE_ACCOUNT = "agentq"
TRIGGER_AUTH = "agentq-redis"
WORKERS_SERVICE = "agentq-workers"  # monitoring/prometheus/prometheus.yml resolves this name
EXPORTER = "agentq-exporter"  # ... and this one
FLOWER = "agentq-flower"
API = "agentq-api"
API_PORT_NAME = "http"
TRITON = "triton"
AGENT_LABEL = "agentq/agent"
HEALTH_PORT_NAME = "health"
RUN_AS_USER = 10001  # the non-root user of worker.Dockerfile's final stage
AGENTS_DIR = "/etc/agentq"
MODELS_PVC = "triton-models"  # subPaths: hf/ (checkpoint, tokenizer), engines/ (TensorRT-LLM)
ENGINES_DIR = "/engines"  # where Triton, the engine build and the workers mount engines/
# build_engines.sh's ENGINE_DIR/tokenizer: the served model's tokenizer and chat template.
SERVED_TOKENIZER = f"{ENGINES_DIR}/engine/tokenizer"
SERVED_MODELS = ("ensemble", "ensemble_stream")  # fill_repository.sh's names for the engines

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def k8s_name(agent: str) -> str:
    """An agent type as a DNS label: Kubernetes names allow '-' but not '_'."""
    return agent.replace("_", "-")


def worker_name(agent: str) -> str:
    """Name of the Deployment, ScaledObject, HPA and PDB of ``agent``'s workers."""
    name = f"{APP}-worker-{k8s_name(agent)}"
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise ConfigurationError(
            f"agent {agent!r} gives the Kubernetes name {name!r}, which is not a DNS label "
            "of at most 63 characters; choose a shorter name"
        )
    return name


def selector(component: str, agent: str | None = None) -> dict[str, str]:
    """The labels a Service, PDB or Deployment selects pods by (never changed: immutable)."""
    labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component}
    if agent is not None:
        labels[AGENT_LABEL] = agent
    return labels


def labels(component: str, agent: str | None = None) -> dict[str, str]:
    """Labels of an object: its selector plus where it comes from."""
    return {
        **selector(component, agent),
        "app.kubernetes.io/part-of": APP,
        "app.kubernetes.io/managed-by": "agentq-manifests",
    }


def meta(name: str, component: str, agent: str | None = None, **extra: Any) -> Obj:
    """``metadata`` without a namespace: ``kubectl -n <ns> apply`` places the objects."""
    return {"name": name, "labels": labels(component, agent), **extra}


def http_probe(
    path: str, port: str, period_s: int, failures: int, timeout_s: int = 3, delay_s: int = 0
) -> Obj:
    """An HTTP GET probe on a named container port."""
    probe: Obj = {"httpGet": {"path": path, "port": port}}
    if delay_s:
        probe["initialDelaySeconds"] = delay_s
    probe.update(periodSeconds=period_s, timeoutSeconds=timeout_s, failureThreshold=failures)
    return probe


def scrape_annotations(port: int, path: str = "/metrics") -> dict[str, str]:
    """The annotations Prometheus' kubernetes-pods job (community chart) scrapes by."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": path,
    }


def pod_security(run_as_user: int | None = RUN_AS_USER) -> Obj:
    """Pod-level security: non-root, the runtime's default seccomp profile."""
    ctx: Obj = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if run_as_user is not None:
        ctx.update(runAsUser=run_as_user, runAsGroup=run_as_user)
    return ctx


def container_security(read_only_root: bool = True) -> Obj:
    """Container-level security: no privilege escalation, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def config_env() -> list[Obj]:
    """``envFrom``: every AGENTQ_ setting from the ConfigMap, secrets from the Secret."""
    return [{"configMapRef": {"name": CONFIG_MAP}}, {"secretRef": {"name": SECRET}}]


def tmp_volume() -> tuple[Obj, Obj]:
    """An emptyDir on /tmp, the only place a read-only container may write."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"}


def image(repository: str, settings: Settings) -> str:
    """``repository`` with the deploy tag."""
    return f"{repository}:{settings.deploy.image_tag}"


def pod_template(
    component: str, agent: str | None, container: Obj, grace_s: int, volumes: list[Obj], port: int
) -> Obj:
    """A pod template of ours: scraped by Prometheus, non-root, no API token."""
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


def models_volume(read_only: bool = False) -> Obj:
    """The PVC holding the checkpoint and the engines (ReadWriteMany: every node mounts it)."""
    claim: Obj = {"claimName": MODELS_PVC}
    if read_only:
        claim["readOnly"] = True
    return {"name": "models", "persistentVolumeClaim": claim}


def engines_mount(read_only: bool) -> Obj:
    """The PVC's engines/ at ENGINES_DIR. The folder itself, not engine/ below it: a new build
    swaps engine/ in, which a subPath mount of it would not follow."""
    return {"name": "models", "mountPath": ENGINES_DIR, "subPath": "engines", "readOnly": read_only}
