"""Triton on the GPU node pool: Deployment, Services, PDB, autoscaling; prometheus-adapter's rules.

Triton scales on two External metrics that need no per-pod labels (our Prometheus finds
its targets through headless Services, dns_sd, so series carry ``job`` and ``instance``
only):

- ``triton_queue_depth``: the sum of ``nv_inference_pending_request_count`` (every model)
  plus TensorRT-LLM's ``nv_trt_llm_request_metrics{request_type="waiting"}`` over the
  replicas Prometheus' ``triton`` job scrapes (the TensorRT-LLM backend is decoupled and
  takes every request at once: the requests waiting for the GPU are counted inside it);
- ``triton_gpu_utilization``: the sum of ``DCGM_FI_DEV_GPU_UTIL`` (percent) over the GPUs
  dcgm-exporter (job ``dcgm-exporter``) reports in use by our ``triton`` containers. A sum,
  not an average: an AverageValue target divides the metric by the replica count, so the
  target is the utilisation per replica (per-GPU target x GPUs per replica).

With KEDA, a ScaledObject's prometheus triggers run these queries (KEDA owns
external.metrics.k8s.io and makes the HPA); without it, prometheus-adapter's external rules
serve them to ``without-keda/hpa-triton.yaml``. Both read the same PromQL from here.
"""

from __future__ import annotations

import math

from app.config import Settings
from app.deploy.objects import (
    EXPORTER,
    MODELS_PVC,
    SECRET,
    TRITON,
    Obj,
    container_security,
    engines_mount,
    http_probe,
    image,
    meta,
    models_volume,
    pod_security,
    selector,
)
from app.deploy.workers import BACKLOG_METRIC, EXTERNAL_METRIC

PORTS = (("http", 8000), ("grpc", 8001), ("metrics", 8002))
TRITON_UID = 10001  # triton.Dockerfile's user; owns /engines and /checkpoints
NAMESPACE = "agentq"  # the README's namespace; monitoring/prometheus/prometheus.yml assumes it
TRITON_JOB = "triton"  # job names in monitoring/prometheus/prometheus.yml
DCGM_JOB = "dcgm-exporter"
# NVIDIA GPU operator's dcgm-exporter DaemonSet: its namespace and pod labels.
GPU_OPERATOR_NAMESPACE = "gpu-operator"
DCGM_POD_LABELS = {"app": "nvidia-dcgm-exporter"}
DCGM_SERVICE = "agentq-dcgm-exporter"
DCGM_PORT = 9400
QUEUE_METRIC = "triton_queue_depth"
GPU_METRIC = "triton_gpu_utilization"
QUEUE_SERIES = "nv_inference_pending_request_count"
WAITING_SERIES = "nv_trt_llm_request_metrics"  # TensorRT-LLM's in-flight batcher, by type
WAITING_LABELS = 'request_type="waiting"'
GPU_SERIES = "DCGM_FI_DEV_GPU_UTIL"
# Only our Triton's series: its scrape job, and GPUs dcgm-exporter maps to our container.
QUEUE_LABELS = f'job="{TRITON_JOB}"'
GPU_LABELS = f'job="{DCGM_JOB}",namespace="{NAMESPACE}",container="triton"'
STARTUP_PERIOD_S = 10


def triton_deployment(settings: Settings) -> Obj:
    """Triton serving the TensorRT-LLM engines; probes wait for the engines to load."""
    d = settings.deploy
    gpus = str(d.triton_gpus)
    container = {
        "name": "triton",
        "image": image(d.triton_image, settings),
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in PORTS],
        # Loading TensorRT-LLM engines takes minutes: liveness and readiness wait for
        # the startup probe, which allows triton_startup_s before the pod is restarted.
        "startupProbe": http_probe(
            "/v2/health/ready",
            "http",
            period_s=STARTUP_PERIOD_S,
            failures=math.ceil(d.triton_startup_s / STARTUP_PERIOD_S),
            timeout_s=5,
            delay_s=30,
        ),
        "readinessProbe": http_probe("/v2/health/ready", "http", period_s=5, failures=3),
        "livenessProbe": http_probe(
            "/v2/health/live", "http", period_s=10, failures=6, timeout_s=5
        ),
        "resources": {
            "requests": {"cpu": d.triton_cpu, "memory": d.triton_memory, "nvidia.com/gpu": gpus},
            "limits": {"memory": d.triton_memory, "nvidia.com/gpu": gpus},
        },
        # TensorRT-LLM writes caches and the python backend's IPC goes through /dev/shm.
        "securityContext": container_security(read_only_root=False),
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}, *_model_mounts(read_only=True)],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(TRITON, "inference"),
        "spec": {
            # No replicas: the HPA owns the count (from triton_min_replicas).
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector("inference")},
            # One GPU pod more at a time: the new one must load its engines first.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": meta(TRITON, "inference")["labels"],
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "8002",
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    **_gpu_pod(settings),
                    "terminationGracePeriodSeconds": 60,  # requests in flight finish
                    "containers": [container],
                    "volumes": [
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
                        models_volume(),
                    ],
                },
            },
        },
    }


def _gpu_pod(settings: Settings) -> Obj:
    """Pod fields of the GPU node pool: its nodes, their taint, the image's user."""
    return {
        "automountServiceAccountToken": False,
        "securityContext": {**pod_security(TRITON_UID), "fsGroup": TRITON_UID},
        "nodeSelector": dict(sorted(settings.deploy.gpu_node_selector.items())),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


def _model_mounts(read_only: bool) -> list[Obj]:
    return [
        engines_mount(read_only),
        {"name": "models", "mountPath": "/checkpoints/hf", "subPath": "hf", "readOnly": read_only},
    ]


def models_claim(settings: Settings) -> Obj:
    """The checkpoint and the engines, shared by every replica (ReadWriteMany)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(MODELS_PVC, "inference"),
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": settings.deploy.triton_storage}},
        },
    }


def build_engines_job(settings: Settings) -> Obj:
    """Once per model or image: build_engines.sh turns the checkpoint into engines on a GPU
    of the pool (engines load only in the TensorRT-LLM version that built them)."""
    d = settings.deploy
    gpus = str(d.triton_gpus)
    env = [
        {"name": "HF_MODEL_ID", "value": d.hf_model_id},
        {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "HF_TOKEN", "optional": True}},
        },
    ]
    container = {
        "name": "build-engines",
        "image": image(d.triton_image, settings),
        "imagePullPolicy": "IfNotPresent",
        "command": ["/opt/nvidia/nvidia_entrypoint.sh", "/opt/agentq/trtllm/build_engines.sh"],
        "env": env,
        "resources": {
            "requests": {"cpu": d.triton_cpu, "memory": d.triton_memory, "nvidia.com/gpu": gpus},
            "limits": {"memory": d.triton_memory, "nvidia.com/gpu": gpus},
        },
        "securityContext": container_security(read_only_root=False),
        "volumeMounts": _model_mounts(read_only=False),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta("triton-build-engines", "inference"),
        "spec": {
            "backoffLimit": 1,
            "ttlSecondsAfterFinished": 86400,  # then it can be applied again
            "template": {
                "metadata": {"labels": meta("triton-build-engines", "inference")["labels"]},
                "spec": {
                    **_gpu_pod(settings),
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [models_volume()],
                },
            },
        },
    }


def triton_services() -> list[Obj]:
    """A ClusterIP Service (workers' gRPC, health and metrics URLs) and a headless one whose
    DNS name resolves to every ready replica, for per-replica addressing."""
    ports = [{"name": n, "port": p, "targetPort": n} for n, p in PORTS]
    headless = {"clusterIP": "None", "selector": selector("inference"), "ports": ports}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(TRITON, "inference"),
            "spec": {"selector": selector("inference"), "ports": ports},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(f"{TRITON}-headless", "inference"),
            "spec": headless,
        },
    ]


def queue_query() -> str:
    """PromQL of ``triton_queue_depth``: requests waiting in every replica's queues."""
    return _queue_expression(QUEUE_SERIES, "")


def _queue_expression(series: str, matchers: str) -> str:
    # "or vector(0)": a Triton serving no TensorRT-LLM model has no such series, and a sum
    # with an empty side would be empty.
    waiting = f"{WAITING_SERIES}{{{QUEUE_LABELS},{WAITING_LABELS}{matchers}}}"
    return f"sum({series}{{{QUEUE_LABELS}{matchers}}}) + (sum({waiting}) or vector(0))"


def gpu_query() -> str:
    """PromQL of ``triton_gpu_utilization``: summed utilisation (%) of Triton's GPUs."""
    return f"sum({GPU_SERIES}{{{GPU_LABELS}}})"


def _targets(settings: Settings) -> list[tuple[str, int, str]]:
    """(metric, AverageValue target per replica, PromQL) of each Triton scaling metric."""
    d = settings.deploy
    return [
        (QUEUE_METRIC, d.triton_queue_target, queue_query()),
        (GPU_METRIC, d.triton_gpu_util_target * d.triton_gpus, gpu_query()),
    ]


def _triton_behavior() -> Obj:
    # A GPU replica takes minutes to load: add one at a time, keep it 10 minutes.
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 60,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 180}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 600,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
        },
    }


def _scale_target() -> Obj:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": TRITON}


def triton_scaled_object(settings: Settings) -> Obj:
    """With KEDA: its HPA on both queries as External metrics, whichever asks for more."""
    d = settings.deploy
    triggers = [
        {
            "type": "prometheus",
            "name": name,
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": d.prometheus_url,
                "query": query,
                "threshold": str(target),
                # No sample (scrape broken) is an error, never a reason to scale in.
                "ignoreNullValues": "false",
            },
        }
        for name, target, query in _targets(settings)
    ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(TRITON, "inference"),
        "spec": {
            "scaleTargetRef": _scale_target(),
            "pollingInterval": d.polling_interval_s,
            "minReplicaCount": d.triton_min_replicas,  # never zero: engines load for minutes
            "maxReplicaCount": max(d.triton_max_replicas, d.triton_min_replicas),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _triton_behavior()}},
            "triggers": triggers,
        },
    }


def triton_hpa(settings: Settings) -> Obj:
    """Without KEDA: the same External metrics, served by prometheus-adapter's rules."""
    d = settings.deploy
    metrics = [
        {
            "type": "External",
            "external": {
                "metric": {"name": name},
                "target": {"type": "AverageValue", "averageValue": str(target)},
            },
        }
        for name, target, _ in _targets(settings)
    ]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(TRITON, "inference"),
        "spec": {
            "scaleTargetRef": _scale_target(),
            "minReplicas": d.triton_min_replicas,
            "maxReplicas": max(d.triton_max_replicas, d.triton_min_replicas),
            "metrics": metrics,
            "behavior": _triton_behavior(),
        },
    }


def dcgm_exporter_service() -> Obj:
    """A headless twin of the GPU operator's ``nvidia-dcgm-exporter`` Service: that one has a
    cluster IP, so Prometheus' dns_sd would see one address and scrape a random node's GPUs;
    this one resolves to every node's exporter."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**meta(DCGM_SERVICE, "monitoring"), "namespace": GPU_OPERATOR_NAMESPACE},
        "spec": {
            "clusterIP": "None",
            "selector": dict(DCGM_POD_LABELS),
            "ports": [{"name": "gpu-metrics", "port": DCGM_PORT, "targetPort": DCGM_PORT}],
        },
    }


def triton_pdb() -> Obj:
    """A drain takes one Triton replica at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(TRITON, "inference"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector("inference")}},
    }


def _external_rule(
    series: str, labels: str, name: str, aggregate: str, by: str = "", query: str | None = None
) -> Obj:
    # seriesQuery only finds the series; metricsQuery must filter by the scrape job again.
    return {
        "seriesQuery": f"{series}{{{labels}}}",
        "resources": {"namespaced": False},  # dns_sd series carry no namespace of ours
        "name": {"matches": f"^{series}$", "as": name},
        "metricsQuery": query or f"{aggregate}(<<.Series>>{{{labels},<<.LabelMatchers>>}}){by}",
    }


def adapter_values() -> Obj:
    """Helm values of prometheus-adapter (prometheus-community chart) for a cluster without
    KEDA: external rules serving Triton's two metrics and the backlog as
    ``task_queue_depth``. With KEDA it is not needed (KEDA owns external.metrics.k8s.io)."""
    return {
        "rules": {
            "default": False,
            "external": [
                _external_rule(
                    QUEUE_SERIES,
                    QUEUE_LABELS,
                    QUEUE_METRIC,
                    "sum",
                    query=_queue_expression("<<.Series>>", ",<<.LabelMatchers>>"),
                ),
                _external_rule(GPU_SERIES, GPU_LABELS, GPU_METRIC, "sum"),
                # One exporter per cluster; max() so two replicas do not double it.
                _external_rule(
                    BACKLOG_METRIC,
                    f'job="{EXPORTER}",queue!=""',
                    EXTERNAL_METRIC,
                    "max",
                    " by (queue)",
                ),
            ],
        }
    }
