"""keda/: generated from the agent registry, committed, and valid for Kubernetes and KEDA.

Every committed object is checked against the Kubernetes OpenAPI schema or KEDA's CRD
schema (strict, as ``kubectl apply --validate=strict``), KEDA's redis scaler rules, and
the promises the workers rely on (probes, grace period, names that point at each other).
Each check is also shown to fail on a broken copy. A registry changed without
regenerating keda/ fails ``test_committed_manifests_are_generated``.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.agents.registry import EXAMPLE_AGENTS, AgentRegistry, AgentSpec
from app.config import REPO_ROOT, DeploySettings, Settings
from app.deploy.manifests import HEADER, drift, generate, manifest_files
from app.errors import ConfigurationError
from tests.fixtures.manifests import (
    KEDA_DIR,
    KEDA_SCHEMAS,
    committed_objects,
    crd,
    crd_problems,
    kubernetes_problems,
    load_documents,
    redis_trigger_problems,
)
from tests.fixtures.services import service_missing

COMMITTED = committed_objects()
KUBERNETES = [(p, o) for p, o in COMMITTED if not o["apiVersion"].startswith("keda.sh/")]
KEDA = [(p, o) for p, o in COMMITTED if o["apiVersion"].startswith("keda.sh/")]


def _id(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("AGENTQ_")}


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    """Default settings, whatever AGENTQ_ variables the test run has."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("AGENTQ_"):
                mp.delenv(name)
        yield Settings(_env_file=None)  # type: ignore[call-arg]


def _by_kind(
    kind: str, objects: list[tuple[str, dict[str, Any]]] = COMMITTED
) -> list[dict[str, Any]]:
    return [o for _, o in objects if o["kind"] == kind]


def _named(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _by_kind(kind) if o["metadata"]["name"] == name]
    assert found, f"no {kind} {name} in keda/"
    return found[0]


# ---- generated from the registry, committed, drift detected ----


def test_committed_manifests_are_generated(settings: Settings) -> None:
    assert COMMITTED, "keda/ is missing: run `agentq manifests`"
    expected = generate(settings, AgentRegistry(EXAMPLE_AGENTS))
    assert drift(KEDA_DIR, expected) == [], "keda/ is stale: run `agentq manifests`"


def test_a_changed_registry_is_drift(settings: Settings) -> None:
    added = AgentRegistry([*EXAMPLE_AGENTS, AgentSpec(name="summarizer")])
    problems = drift(KEDA_DIR, generate(settings, added))
    assert "missing: scaledobject-summarizer.yaml" in problems
    assert "missing: base/worker-summarizer.yaml" in problems
    capped = [
        s.model_copy(update={"max_replicas": 3}) if s.name == "research" else s
        for s in EXAMPLE_AGENTS
    ]
    problems = drift(KEDA_DIR, generate(settings, AgentRegistry(capped)))
    changed = [p for p in problems if p.startswith("differs: scaledobject-research.yaml")]
    assert changed and "+  maxReplicaCount: 3" in changed[0]
    only_research = AgentRegistry([s for s in EXAMPLE_AGENTS if s.name == "research"])
    problems = drift(KEDA_DIR, generate(settings, only_research))
    assert "stale (no longer generated): scaledobject-coder.yaml" in problems


def _manifests(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "app.cli", "manifests", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_manifests_check_command(tmp_path: Path) -> None:
    env = _clean_env()
    ok = _manifests(["--check"], REPO_ROOT, env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    copy_dir = tmp_path / "keda"
    shutil.copytree(KEDA_DIR, copy_dir)
    (copy_dir / "scaledobject-coder.yaml").unlink()
    edited = copy_dir / "base" / "worker-research.yaml"
    edited.write_text(edited.read_text().replace("failureThreshold: 3", "failureThreshold: 9"))
    (copy_dir / "old.yaml").write_text(HEADER + "\n")
    out = _manifests(["--check", "--out", str(copy_dir)], REPO_ROOT, env)
    assert out.returncode == 1
    assert "missing: scaledobject-coder.yaml" in out.stdout
    assert "differs: base/worker-research.yaml" in out.stdout
    assert "stale (no longer generated): old.yaml" in out.stdout


def test_manifests_command_follows_an_agents_file(tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text("agents:\n  - name: data_miner\n    max_replicas: 4\n")
    out_dir = tmp_path / "out"
    shutil.copytree(KEDA_DIR, out_dir)
    env = {**_clean_env(), "AGENTQ_AGENTS_FILE": str(agents)}
    wrote = _manifests(["--out", str(out_dir)], tmp_path, env)
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    assert "removed" in wrote.stdout and not (out_dir / "scaledobject-research.yaml").exists()
    scaled = load_documents(out_dir / "scaledobject-data-miner.yaml")[0]
    assert scaled["spec"]["maxReplicaCount"] == 4
    assert scaled["spec"]["triggers"][0]["metadata"]["listName"] == "agent.data_miner"
    common = load_documents(out_dir / "base" / "common.yaml")
    agents_map = next(d for d in common if d["metadata"]["name"] == "agentq-agents")
    assert agents_map["data"]["agents.yaml"] == agents.read_text()
    assert _manifests(["--check", "--out", str(out_dir)], tmp_path, env).returncode == 0


def test_a_password_in_the_redis_url_is_refused(settings: Settings) -> None:
    leaky = settings.model_copy(
        update={"deploy": DeploySettings(redis_url="redis://:hunter2@redis:6379/0")}
    )
    with pytest.raises(ConfigurationError, match="Secret"):
        manifest_files(leaky, AgentRegistry(EXAMPLE_AGENTS))


def test_agent_types_that_collide_as_kubernetes_names_are_refused(settings: Settings) -> None:
    registry = AgentRegistry([AgentSpec(name="data_miner"), AgentSpec(name="data-miner")])
    with pytest.raises(ConfigurationError, match="both become"):
        manifest_files(settings, registry)


# ---- Kubernetes' OpenAPI schema ----


@pytest.mark.parametrize("item", KUBERNETES, ids=_id)
def test_kubernetes_objects_validate(item: tuple[str, dict[str, Any]]) -> None:
    assert kubernetes_problems(item[1]) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node: Any = obj
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[leaf]
        else:
            node[int(leaf) if leaf.isdigit() else leaf] = value

    mutate.__name__ = f"{path} deleted" if value is _DELETE else f"{path}={value!r}"
    return mutate


_DELETE = object()
_CONTAINER = "spec.template.spec.containers.0"

K8S_BREAKAGES = [
    ("Deployment", _set(f"{_CONTAINER}.livenessProbe.httpGet.paht", "/livez")),
    ("Deployment", _set(f"{_CONTAINER}.ports.0.containerPort", "9540")),
    ("Deployment", _set("spec.template.spec.terminationGracePeriodSeconds", "45s")),
    ("Deployment", _set("spec.selector", _DELETE)),
    ("Deployment", _set(f"{_CONTAINER}.resources.limit", {"cpu": "1"})),
    ("HorizontalPodAutoscaler", _set("spec.scaleTargetRef.name", _DELETE)),
    ("HorizontalPodAutoscaler", _set("spec.minReplicas", "2")),
    ("PodDisruptionBudget", _set("spec.maxUnavailable", [1])),
    ("Service", _set("spec.ports.0.port", "9540")),
    ("ConfigMap", _set("data.AGENTQ_HEALTH__PORT", 9540)),
    ("Secret", _set("type", 1)),
]


@pytest.mark.parametrize(
    ("kind", "mutate"), K8S_BREAKAGES, ids=[f"{k}:{m.__name__}" for k, m in K8S_BREAKAGES]
)
def test_kubernetes_validation_catches_a_broken_object(
    kind: str, mutate: Callable[[dict[str, Any]], None]
) -> None:
    broken = copy.deepcopy(_by_kind(kind, KUBERNETES)[0])
    mutate(broken)
    assert kubernetes_problems(broken), f"a broken {kind} passed"


# ---- KEDA's CRDs and its redis scaler ----


@pytest.fixture(scope="module")
def keda_crds() -> dict[str, dict[str, Any]]:
    if not KEDA_SCHEMAS.is_dir():
        service_missing(f"KEDA's CRD schemas are not at {KEDA_SCHEMAS}")
    return {kind: crd(kind) for kind in ("ScaledObject", "TriggerAuthentication")}


@pytest.mark.parametrize("item", KEDA, ids=_id)
def test_keda_objects_match_the_crds(
    item: tuple[str, dict[str, Any]], keda_crds: dict[str, Any]
) -> None:
    obj = item[1]
    assert crd_problems(obj, keda_crds[obj["kind"]]) == []


KEDA_BREAKAGES = [
    ("ScaledObject", _set("spec.maxReplicas", 10)),  # unknown field (maxReplicaCount)
    ("ScaledObject", _set("spec.triggers.0.metadata.listLength", 64)),  # not a string
    ("ScaledObject", _set("spec.minReplicaCount", "0")),
    ("ScaledObject", _set("spec.scaleTargetRef.name", _DELETE)),
    ("ScaledObject", _set("spec.triggers.0.authRef", {"name": "agentq-redis"})),
    (
        "ScaledObject",
        _set("spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.window", 60),
    ),
    ("ScaledObject", _set("apiVersion", "keda.sh/v1")),
    ("ScaledObject", _set("metadata.namespce", "agentq")),
    ("TriggerAuthentication", _set("spec.secretTargetRef.0.secret", "agentq-secrets")),
    ("TriggerAuthentication", _set("spec.secretTargetRef.0.key", _DELETE)),
    ("TriggerAuthentication", _set("spec.secretRef", [])),
]


@pytest.mark.parametrize(
    ("kind", "mutate"), KEDA_BREAKAGES, ids=[f"{k}:{m.__name__}" for k, m in KEDA_BREAKAGES]
)
def test_crd_validation_catches_a_broken_object(
    kind: str, mutate: Callable[[dict[str, Any]], None], keda_crds: dict[str, Any]
) -> None:
    broken = copy.deepcopy(_by_kind(kind, KEDA)[0])
    mutate(broken)
    assert crd_problems(broken, keda_crds[kind]), f"a broken {kind} passed"


def _auths() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in _by_kind("TriggerAuthentication")}


REDIS_SCALED = [
    (p, o)
    for p, o in KEDA
    if o["kind"] == "ScaledObject" and o["spec"]["triggers"][0]["type"] == "redis"
]


@pytest.mark.parametrize("item", REDIS_SCALED, ids=_id)
def test_redis_triggers_follow_the_scaler_rules(item: tuple[str, dict[str, Any]]) -> None:
    (trigger,) = item[1]["spec"]["triggers"]
    assert redis_trigger_problems(trigger, _auths()) == []


REDIS_BREAKAGES = [
    _set("listLength", 64),
    _set("listLength", "ten"),
    _set("listLength", "0"),
    _set("activationListLength", "-1"),
    _set("databaseIndex", "db0"),
    _set("enableTLS", "yes"),
    _set("address", _DELETE),
    _set("address", "redis.agentq.svc"),
    _set("listname", "agent.research"),  # a typo of listName: KEDA would ignore it
    _set("password", "hunter2"),
    _set("listName", _DELETE),
]


@pytest.mark.parametrize("mutate", REDIS_BREAKAGES, ids=[m.__name__ for m in REDIS_BREAKAGES])
def test_redis_rules_catch_a_broken_trigger(mutate: Callable[[dict[str, Any]], None]) -> None:
    trigger = copy.deepcopy(REDIS_SCALED[0][1]["spec"]["triggers"][0])
    mutate(trigger["metadata"])
    assert redis_trigger_problems(trigger, _auths())


def test_the_strict_check_flags_what_the_schema_alone_lets_through(
    keda_crds: dict[str, Any],
) -> None:
    scaled = copy.deepcopy(REDIS_SCALED[0][1])
    scaled["spec"]["maxReplicas"] = 10  # KEDA's field is maxReplicaCount
    assert crd_problems(scaled, keda_crds["ScaledObject"]) == ["spec.maxReplicas: unknown field"]
    # Trigger metadata is a free map of strings: only the redis rules catch a typo there.
    scaled = copy.deepcopy(REDIS_SCALED[0][1])
    scaled["spec"]["triggers"][0]["metadata"]["listname"] = "agent.research"
    assert crd_problems(scaled, keda_crds["ScaledObject"]) == []
    assert redis_trigger_problems(scaled["spec"]["triggers"][0], _auths())


def test_redis_rules_accept_host_and_port_and_check_the_auth() -> None:
    trigger = copy.deepcopy(REDIS_SCALED[0][1]["spec"]["triggers"][0])
    del trigger["metadata"]["address"]
    trigger["metadata"].update(host="redis.agentq.svc", port="6379")
    assert redis_trigger_problems(trigger, _auths()) == []
    del trigger["metadata"]["port"]
    assert redis_trigger_problems(trigger, _auths())
    trigger["metadata"]["port"] = "6379"
    trigger["authenticationRef"]["name"] = "nowhere"
    assert redis_trigger_problems(trigger, _auths())


def test_the_prune_cronjob_runs_one_pass_at_a_time_with_the_agents_retention(
    settings: Settings,
) -> None:
    cron = _named("CronJob", "agentq-prune")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["containers"][0]["command"] == ["agentq", "maintenance", "prune"]
    assert pod["restartPolicy"] == "Never"
    # With an agents file, the job reads it (the agent types' retention) where the
    # ConfigMap says it is.
    files = manifest_files(settings, AgentRegistry(EXAMPLE_AGENTS), ("agents.yaml", "agents:\n"))
    docs = {d["metadata"]["name"]: d for f in files for d in f.docs if f.kubernetes}
    mounted = docs["agentq-prune"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    mount = next(m for m in mounted["containers"][0]["volumeMounts"] if m["name"] == "agents")
    path = docs["agentq-config"]["data"]["AGENTQ_AGENTS_FILE"]
    assert path == f"{mount['mountPath']}/agents.yaml"
