"""What the committed keda/ objects promise the workers, KEDA and the operators.

Schemas say an object is well-formed; these say it is right for agentq: the probes hit the
worker's endpoints, scale-in leaves time for the soft shutdown, every reference (Deployment,
ConfigMap, Secret, selector, metric) points at something that exists.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.agents.registry import EXAMPLE_AGENTS
from app.config import REPO_ROOT, DeploySettings, HealthSettings, Settings, WorkerSettings
from app.deploy.objects import API, CONFIG_MAP, EXPORTER, SECRET, worker_name
from app.deploy.services import config_map
from app.deploy.triton import NAMESPACE
from app.deploy.workers import termination_grace_s
from tests.fixtures.manifests import (
    KEDA_DIR,
    adapter_problems,
    committed_objects,
    load_documents,
    query_problems,
)

OBJECTS = committed_objects()
DEFAULTS = Settings.model_construct(
    worker=WorkerSettings(), health=HealthSettings(), deploy=DeploySettings()
)


def _all(kind: str, folder: str | None = None) -> list[dict[str, Any]]:
    return [o for p, o in OBJECTS if o["kind"] == kind and (folder is None or p.startswith(folder))]


def _one(kind: str, name: str, folder: str | None = None) -> dict[str, Any]:
    found = [o for o in _all(kind, folder) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} in keda/{folder or ''}"
    return found[0]


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    return all(_pod_labels(deployment).get(k) == v for k, v in selector.items())


AGENTS = [spec.name for spec in EXAMPLE_AGENTS]


@pytest.mark.parametrize("agent", AGENTS)
def test_each_agent_type_gets_a_worker_deployment(agent: str) -> None:
    deployment = _one("Deployment", worker_name(agent), "base/")
    spec = deployment["spec"]
    assert "replicas" not in spec, "KEDA owns the count; `kubectl apply` must not reset it"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["agentq", "worker", "--agents", agent]
    assert container["image"] == f"agentq-worker:{DEFAULTS.deploy.image_tag}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": DEFAULTS.health.port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    soft = DEFAULTS.worker.soft_shutdown_timeout_s
    assert pod["terminationGracePeriodSeconds"] > soft
    assert pod["terminationGracePeriodSeconds"] == termination_grace_s(DEFAULTS)
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]
    sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"configMapRef": CONFIG_MAP, "secretRef": SECRET}
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(DEFAULTS.health.port)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("agent", AGENTS)
def test_each_agent_type_scales_on_its_queue(agent: str) -> None:
    name = worker_name(agent)
    deployment = _one("Deployment", name, "base/")
    queue = f"agent.{agent}"
    redis = _one("ScaledObject", name, "scaledobject-")
    prometheus = _one("ScaledObject", name, "prometheus-trigger/")
    for scaled in (redis, prometheus):
        spec = scaled["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert spec["minReplicaCount"] == 0
        assert spec["maxReplicaCount"] == DEFAULTS.deploy.max_replicas
        assert spec["cooldownPeriod"] == DEFAULTS.deploy.cooldown_s
        assert spec["pollingInterval"] == DEFAULTS.deploy.polling_interval_s
    (trigger,) = redis["spec"]["triggers"]
    assert trigger["metadata"]["listName"] == queue
    assert trigger["metadata"]["listLength"] == str(DEFAULTS.worker.concurrency)
    assert trigger["metadata"]["address"] == "redis.agentq.svc.cluster.local:6379"
    auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref == {"parameter": "password", "name": SECRET, "key": "AGENTQ_REDIS_PASSWORD"}
    (trigger,) = prometheus["spec"]["triggers"]
    assert trigger["metadata"]["query"] == f'max(agentq_backlog{{queue="{queue}"}})'
    assert trigger["metadata"]["threshold"] == str(DEFAULTS.worker.concurrency)
    hpa = _one("HorizontalPodAutoscaler", name, "without-keda/")
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"] == {
        "name": "task_queue_depth",
        "selector": {"matchLabels": {"queue": queue}},
    }
    pdb = _one("PodDisruptionBudget", name)
    assert _selects(pdb["spec"]["selector"]["matchLabels"], deployment)


def test_services_and_budgets_select_pods_that_exist() -> None:
    deployments = _all("Deployment")
    for kind in ("Service", "PodDisruptionBudget"):
        for obj in _all(kind):
            if "namespace" in obj["metadata"]:
                continue  # another namespace: the GPU operator's pods, not ours
            spec = obj["spec"]
            selector = spec["selector"] if kind == "Service" else spec["selector"]["matchLabels"]
            matched = [d for d in deployments if _selects(selector, d)]
            assert matched, f"{kind} {obj['metadata']['name']} selects no pods"
            if kind == "Service":  # its target ports are named ports of those pods
                for port in spec["ports"]:
                    for d in matched:
                        names = {
                            p["name"]
                            for c in d["spec"]["template"]["spec"]["containers"]
                            for p in c.get("ports", [])
                        }
                        assert port["targetPort"] in names
    workers = _one("Service", "agentq-workers")
    assert workers["spec"]["clusterIP"] == "None"  # Prometheus' dns_sd needs one A per pod
    assert {
        d["metadata"]["name"] for d in deployments if _selects(workers["spec"]["selector"], d)
    } == {worker_name(a) for a in AGENTS}


def test_the_config_map_holds_no_secret_and_the_template_no_value() -> None:
    data = _one("ConfigMap", CONFIG_MAP)["data"]
    assert all(key.startswith("AGENTQ_") for key in data)
    assert not {"AGENTQ_REDIS_PASSWORD", "AGENTQ_DATABASE_URL"} & set(data)
    assert "@" not in data["AGENTQ_REDIS_URL"]
    assert data["AGENTQ_HEALTH__PORT"] == str(DEFAULTS.health.port)
    secret = load_documents(KEDA_DIR / "templates" / "secret.yaml")[0]
    assert all("<" in value for value in secret["stringData"].values()), "placeholders only"
    # `kubectl apply -f keda/base` and `-f keda/` are not recursive: the template stays out.
    assert not any(
        o["kind"] == "Secret" for p, o in OBJECTS if "/" not in p or p.startswith("base/")
    )


def test_triton_runs_on_the_gpu_pool_and_waits_for_its_engines() -> None:
    deployment = _one("Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == DEFAULTS.deploy.gpu_node_selector
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    budget = (
        startup.get("initialDelaySeconds", 0)
        + startup["periodSeconds"] * startup["failureThreshold"]
    )
    assert budget >= 10 * 60, "engines take minutes to load"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {o["metadata"]["name"] for o in _all("PersistentVolumeClaim")}
    assert _one("Service", "triton-headless")["spec"]["clusterIP"] == "None"
    assert _selects(
        _one("PodDisruptionBudget", "triton")["spec"]["selector"]["matchLabels"], deployment
    )
    job = _one("Job", "triton-build-engines", "jobs/")
    assert job["spec"]["template"]["spec"]["nodeSelector"] == pod["nodeSelector"]


PROMETHEUS_CONFIG = REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml"
# Which scrape job exports each series our autoscaling reads.
SOURCES = {
    "agentq_backlog": EXPORTER,
    "nv_inference_pending_request_count": "triton",
    "nv_trt_llm_request_metrics": "triton",
    "DCGM_FI_DEV_GPU_UTIL": "dcgm-exporter",
}


def _jobs(config_path: Path = PROMETHEUS_CONFIG) -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(config_path.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _adapter_rules() -> list[dict[str, Any]]:
    values = load_documents(KEDA_DIR / "prometheus-adapter" / "values-without-keda.yaml")[0]
    assert set(values["rules"]) == {"default", "external"}, "KEDA clusters need no adapter"
    rules: list[dict[str, Any]] = values["rules"]["external"]
    return rules


def test_every_hpa_metric_comes_from_a_series_prometheus_scrapes() -> None:
    hpas = _all("HorizontalPodAutoscaler")
    assert {h["metadata"]["name"] for h in hpas} == {"triton", *map(worker_name, AGENTS)}
    triton = _one("HorizontalPodAutoscaler", "triton", "without-keda/")
    names = {m["external"]["metric"]["name"] for m in triton["spec"]["metrics"]}
    assert names == {"triton_queue_depth", "triton_gpu_utilization"}
    assert adapter_problems(hpas, _adapter_rules(), set(_jobs()), SOURCES) == []


def test_every_keda_prometheus_query_reads_a_scraped_series() -> None:
    jobs = set(_jobs())
    triton = _one("ScaledObject", "triton")
    assert [t["name"] for t in triton["spec"]["triggers"]] == [
        "triton_queue_depth",
        "triton_gpu_utilization",
    ]
    for scaled in _all("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                # Triton's queries must pick our Triton's series by job; the exporter's
                # agentq_backlog is ours alone.
                strict = scaled is triton
                query = trigger["metadata"]["query"]
                assert query_problems(query, jobs, SOURCES, require_job=strict) == []


def _rename_metric(hpas: list[dict[str, Any]], rules: list[dict[str, Any]]) -> None:
    hpas[0]["spec"]["metrics"][0]["external"]["metric"]["name"] = "triton_queue_lenght"


def _per_pod_metric(hpas: list[dict[str, Any]], rules: list[dict[str, Any]]) -> None:
    metric = hpas[0]["spec"]["metrics"][0]
    metric.update(type="Pods", pods=metric.pop("external"))


def _other_job(hpas: list[dict[str, Any]], rules: list[dict[str, Any]]) -> None:
    rules[0]["metricsQuery"] = rules[0]["metricsQuery"].replace('job="triton"', 'job="tritn"')


def _no_job_filter(hpas: list[dict[str, Any]], rules: list[dict[str, Any]]) -> None:
    rules[1]["seriesQuery"] = rules[1]["seriesQuery"].replace('job="dcgm-exporter",', "")


def _other_series(hpas: list[dict[str, Any]], rules: list[dict[str, Any]]) -> None:
    rules[0]["seriesQuery"] = "nv_inference_request_success" + '{job="triton"}'


@pytest.mark.parametrize(
    "mutate",
    [_rename_metric, _per_pod_metric, _other_job, _no_job_filter, _other_series],
    ids=lambda m: m.__name__.strip("_"),
)
def test_the_metric_chain_check_catches_a_broken_link(
    mutate: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None],
) -> None:
    hpas = copy.deepcopy([_one("HorizontalPodAutoscaler", "triton", "without-keda/")])
    rules = copy.deepcopy(_adapter_rules())
    assert rules[0]["name"]["as"] == "triton_queue_depth"  # what the mutations edit
    mutate(hpas, rules)
    assert adapter_problems(hpas, rules, set(_jobs()), SOURCES)


def test_a_missing_scrape_job_breaks_the_chain(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] != "triton"]
    edited = tmp_path / "prometheus.yml"
    edited.write_text(yaml.safe_dump(config))
    hpas = _all("HorizontalPodAutoscaler")
    problems = adapter_problems(hpas, _adapter_rules(), set(_jobs(edited)), SOURCES)
    assert any("no scrape job 'triton'" in p for p in problems)
    query = _one("ScaledObject", "triton")["spec"]["triggers"][0]["metadata"]["query"]
    assert query_problems(query, set(_jobs(edited)), SOURCES)


def test_prometheus_finds_triton_and_dcgm_exporter_through_their_headless_services() -> None:
    jobs = _jobs()
    for job, name, port_name in (
        ("triton", "triton-headless", "metrics"),
        ("dcgm-exporter", "agentq-dcgm-exporter", "gpu-metrics"),
    ):
        service = _one("Service", name)
        assert service["spec"]["clusterIP"] == "None", "dns_sd needs one A record per pod"
        namespace = service["metadata"].get("namespace", NAMESPACE)
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [f"{name}.{namespace}.svc.cluster.local"]
        assert sd["port"] == {p["name"]: p["port"] for p in service["spec"]["ports"]}[port_name]
    assert jobs["triton"]["dns_sd_configs"][0]["port"] == 8002
    dcgm = _one("Service", "agentq-dcgm-exporter")
    assert dcgm["metadata"]["namespace"] == "gpu-operator"
    assert dcgm["spec"]["selector"] == {"app": "nvidia-dcgm-exporter"}  # the GPU operator's


def test_the_config_map_makes_workers_import_the_users_modules() -> None:
    configured = Settings(_env_file=None, include="weatherpkg.agents,weatherpkg.tools")
    data = config_map(configured, None)["data"]
    assert data["AGENTQ_INCLUDE"] == "weatherpkg.agents,weatherpkg.tools"
    # Nothing to import: no variable (the committed manifests are made so).
    assert "AGENTQ_INCLUDE" not in _one("ConfigMap", CONFIG_MAP)["data"]


def _mount_of(pod: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume mount, pod volume) under which ``path`` lies in the pod's only container."""
    (container,) = pod["containers"]
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1, f"{path}: mounted by {mounts}"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mounts[0]["name"]]
    return mounts[0], volume


@pytest.mark.parametrize("agent", AGENTS)
def test_workers_read_the_tokenizer_the_engine_build_writes(agent: str) -> None:
    from app.config import TritonSettings

    data = _one("ConfigMap", CONFIG_MAP)["data"]
    chat_templates = json.loads(data["AGENTQ_TRITON__CHAT_TEMPLATES"])
    tokenizers = json.loads(data["AGENTQ_TRITON__TOKENIZERS"])
    triton = TritonSettings(chat_templates=chat_templates, tokenizers=tokenizers)
    # The models the workers call, rendered and counted with one folder.
    assert set(chat_templates) == {triton.model, triton.stream_model}
    (folder,) = set(chat_templates.values())
    assert set(tokenizers.values()) == {folder}
    worker = _one("Deployment", worker_name(agent))["spec"]["template"]["spec"]
    mount, volume = _mount_of(worker, folder)
    assert mount["readOnly"] and volume["persistentVolumeClaim"]["readOnly"]
    # The build Job writes ENGINE_DIR/tokenizer (triton.Dockerfile: ENGINE_DIR) on the same
    # subPath of the same claim, seen at the same path.
    job = _one("Job", "triton-build-engines", "jobs/")["spec"]["template"]["spec"]
    job_mount, job_volume = _mount_of(job, folder)
    assert not job_mount["readOnly"]
    assert (job_mount["mountPath"], job_mount["subPath"]) == (mount["mountPath"], mount["subPath"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert job_volume["persistentVolumeClaim"]["claimName"] == claim
    access = _one("PersistentVolumeClaim", claim)["spec"]["accessModes"]
    assert access == ["ReadWriteMany"], "workers on CPU nodes mount it beside the GPU pods"
    dockerfile = (REPO_ROOT / "triton.Dockerfile").read_text()
    engine_dir = re.search(r"ENV ENGINE_DIR=(\S+)", dockerfile)
    assert engine_dir is not None and folder == f"{engine_dir.group(1)}/tokenizer"


def test_the_api_runs_two_probed_replicas_behind_a_service_and_a_budget() -> None:
    from app.config import ApiSettings

    api = ApiSettings()
    deployment = _one("Deployment", API, "base/")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["agentq", "api"]
    assert container["image"] == f"agentq-worker:{DEFAULTS.deploy.image_tag}"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": api.port}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["terminationGracePeriodSeconds"] > api.shutdown_timeout_s
    # The workers' secrets, configuration and security, and no scrape of a /metrics it lacks.
    worker = _one("Deployment", worker_name(AGENTS[0]), "base/")["spec"]["template"]
    (worker_container,) = worker["spec"]["containers"]
    assert container["envFrom"] == worker_container["envFrom"]
    assert container["securityContext"] == worker_container["securityContext"]
    for key in ("securityContext", "serviceAccountName", "automountServiceAccountToken"):
        assert pod[key] == worker["spec"][key], key
    assert "annotations" not in spec["template"]["metadata"]
    data = _one("ConfigMap", CONFIG_MAP)["data"]
    assert (data["AGENTQ_API__HOST"], data["AGENTQ_API__PORT"]) == ("0.0.0.0", str(api.port))

    service = _one("Service", API)
    assert _selects(service["spec"]["selector"], deployment)
    assert service["spec"]["ports"] == [{"name": "http", "port": api.port, "targetPort": "http"}]
    pdb = _one("PodDisruptionBudget", API)
    assert _selects(pdb["spec"]["selector"]["matchLabels"], deployment)
    assert pdb["spec"]["minAvailable"] == 1 < spec["replicas"]
    # No other Deployment's pods are the API's.
    assert [
        d["metadata"]["name"]
        for d in _all("Deployment")
        if _selects(service["spec"]["selector"], d)
    ] == [API]
