"""Triton on the GPU node pool: Deployment, Services, HPA, PDB; and prometheus-adapter's rules.

The HPA scales Triton on two per-pod metrics prometheus-adapter serves from Prometheus:
requests waiting in Triton's queue (``nv_inference_pending_request_count``, scraped from
each replica's :8002/metrics) and GPU utilisation (``DCGM_FI_DEV_GPU_UTIL`` from NVIDIA's
dcgm-exporter, labelled with the pod using the GPU). They are custom (per-pod) metrics, so
the adapter serves them beside KEDA, which owns external.metrics.k8s.io on KEDA clusters.
"""

from __future__ import annotations

import math

from app.config import Settings
from app.deploy.objects import (
    SECRET,
    TRITON,
    Obj,
    container_security,
    http_probe,
    image,
    meta,
    pod_security,
    selector,
)
from app.deploy.workers import BACKLOG_METRIC, EXTERNAL_METRIC

PORTS = (("http", 8000), ("grpc", 8001), ("metrics", 8002))
MODELS_PVC = "triton-models"  # subPaths: hf/ (checkpoint, tokenizer), engines/ (TensorRT-LLM)
TRITON_UID = 10001  # triton.Dockerfile's user; owns /engines and /checkpoints
QUEUE_METRIC = "triton_queue_depth"  # nv_inference_pending_request_count, per pod
GPU_METRIC = "gpu_utilization"  # DCGM_FI_DEV_GPU_UTIL, per pod
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
                        _models_volume(),
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


def _models_volume() -> Obj:
    return {"name": "models", "persistentVolumeClaim": {"claimName": MODELS_PVC}}


def _model_mounts(read_only: bool) -> list[Obj]:
    return [
        {"name": "models", "mountPath": "/engines", "subPath": "engines", "readOnly": read_only},
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
                    "volumes": [_models_volume()],
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


def triton_hpa(settings: Settings) -> Obj:
    """Scale Triton on its queue depth and GPU utilisation, whichever asks for more."""
    d = settings.deploy

    def pods_metric(name: str, target: int) -> Obj:
        return {
            "type": "Pods",
            "pods": {
                "metric": {"name": name},
                "target": {"type": "AverageValue", "averageValue": str(target)},
            },
        }

    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(TRITON, "inference"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": TRITON},
            "minReplicas": d.triton_min_replicas,
            "maxReplicas": max(d.triton_max_replicas, d.triton_min_replicas),
            "metrics": [
                pods_metric(QUEUE_METRIC, d.triton_queue_target),
                pods_metric(GPU_METRIC, d.triton_gpu_util_target),
            ],
            # A GPU replica takes minutes to load: add one at a time, keep it 10 minutes.
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 60,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 180}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 600,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                },
            },
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


def adapter_values(external: bool) -> Obj:
    """Helm values of prometheus-adapter (prometheus-community chart): the per-pod metrics
    of the Triton HPA, and with ``external`` the backlog as ``task_queue_depth`` for the
    worker HPAs of a cluster without KEDA (KEDA serves external metrics itself)."""
    pod_resources = {
        "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    }
    rules: Obj = {
        "default": False,
        "custom": [
            {
                "seriesQuery": 'nv_inference_pending_request_count{namespace!="",pod!=""}',
                "resources": pod_resources,
                "name": {"matches": "^nv_inference_pending_request_count$", "as": QUEUE_METRIC},
                "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
            },
            {
                "seriesQuery": 'DCGM_FI_DEV_GPU_UTIL{namespace!="",pod!=""}',
                "resources": pod_resources,
                "name": {"matches": "^DCGM_FI_DEV_GPU_UTIL$", "as": GPU_METRIC},
                "metricsQuery": "avg(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
            },
        ],
    }
    if external:
        rules["external"] = [
            {
                # The exporter is one per cluster: its series are not tied to a namespace.
                "seriesQuery": f'{BACKLOG_METRIC}{{queue!=""}}',
                "resources": {"namespaced": False},
                "name": {"matches": f"^{BACKLOG_METRIC}$", "as": EXTERNAL_METRIC},
                "metricsQuery": "max(<<.Series>>{<<.LabelMatchers>>}) by (queue)",
            }
        ]
    return {"rules": rules}
