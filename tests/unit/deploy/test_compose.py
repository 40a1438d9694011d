"""docker-compose.yml: valid against the Compose Specification, and our rules hold.

No Docker here: the file is checked statically, and every check is shown to fail on a broken
copy of the file.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml

from app.agents.registry import EXAMPLE_AGENTS
from app.config import REPO_ROOT, WorkerSettings
from tests.fixtures import compose_rules as rules
from tests.fixtures.services import service_missing
from tests.fixtures.shared import shared_schemas

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
PROMETHEUS_COMPOSE = REPO_ROOT / "monitoring" / "prometheus" / "prometheus-compose.yml"
SCHEMAS = shared_schemas()
AGENT_TYPES = [spec.name for spec in EXAMPLE_AGENTS]
SOFT_SHUTDOWN_S = WorkerSettings().soft_shutdown_timeout_s


def load() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def filled_env() -> dict[str, str]:
    """.env.example with the secrets filled in, as a user's .env would be."""
    env = env_example()
    return {
        k: v or ("ops:" + "x" * 24 if k == "FLOWER_BASIC_AUTH" else "x" * 24)
        for k, v in env.items()
    }


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    path = SCHEMAS / "compose" / "compose-spec.json"
    if not path.is_file():
        service_missing(f"Compose Specification schema not found at {path}")
    return json.loads(path.read_text())


def schema_errors(doc: Any, schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


# --- the schema ---------------------------------------------------------------------------


def test_compose_file_is_valid_as_written_and_as_compose_interpolates_it(compose_schema) -> None:
    assert schema_errors(load(), compose_schema) == []
    assert schema_errors(rules.interpolate(load(), filled_env()), compose_schema) == []


def test_check_jsonschema_accepts_the_compose_file(compose_schema) -> None:
    tool = REPO_ROOT / ".venv" / "bin" / "check-jsonschema"
    if not tool.is_file():
        service_missing("check-jsonschema not installed (.venv/bin; scripts/setup.sh)")
    schema = SCHEMAS / "compose" / "compose-spec.json"
    out = subprocess.run(
        [str(tool), "--schemafile", str(schema), str(COMPOSE)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["services"]["redis"].update(restart_policy="always"),  # not a compose key
        lambda d: d["services"]["worker-coder"].update(depends_on={"redis": {"condition": "up"}}),
        lambda d: d["services"]["redis"]["healthcheck"].update(test=42),
    ],
    ids=["unknown-key", "unknown-condition", "healthcheck-test-not-a-command"],
)
def test_the_schema_check_rejects_a_broken_file(compose_schema, mutate) -> None:
    doc = load()
    mutate(doc)
    assert schema_errors(doc, compose_schema)


# --- our rules ----------------------------------------------------------------------------


def test_the_compose_file_keeps_every_rule() -> None:
    assert rules.all_problems(load(), AGENT_TYPES, SOFT_SHUTDOWN_S) == []


def _drop_healthcheck(doc: dict[str, Any]) -> None:
    del doc["services"]["flower"]["healthcheck"]


def _disable_worker_healthcheck(doc: dict[str, Any]) -> None:
    doc["services"]["worker-coder"]["healthcheck"] = {"disable": True}


def _list_depends_on(doc: dict[str, Any]) -> None:
    doc["services"]["worker-coder"]["depends_on"] = ["redis", "postgres"]


def _started_not_healthy(doc: dict[str, Any]) -> None:
    doc["services"]["grafana"]["depends_on"]["prometheus"]["condition"] = "service_started"


def _wait_for_exit_of_a_server(doc: dict[str, Any]) -> None:
    doc["services"]["flower"]["depends_on"]["redis"]["condition"] = rules.ONE_SHOT


def _latest(doc: dict[str, Any]) -> None:
    doc["services"]["redis"]["image"] = "redis:latest"


def _untagged(doc: dict[str, Any]) -> None:
    doc["services"]["grafana"]["image"] = "grafana/grafana"


def _built_without_tag(doc: dict[str, Any]) -> None:
    del doc["services"]["worker-research"]["image"]


def _inline_password(doc: dict[str, Any]) -> None:
    doc["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "hunter2"


def _password_in_url(doc: dict[str, Any]) -> None:
    doc["services"]["worker-coder"]["environment"]["AGENTQ_REDIS_URL"] = (
        "redis://u:hunter2@redis:6379/0"
    )


def _inline_requirepass(doc: dict[str, Any]) -> None:
    doc["configs"]["redis-conf"]["content"] = "requirepass hunter2\nappendonly yes\n"


def _no_coder_worker(doc: dict[str, Any]) -> None:
    del doc["services"]["worker-coder"]


def _unknown_agent_worker(doc: dict[str, Any]) -> None:
    doc["services"]["worker-coder"]["environment"]["AGENTQ_WORKER__AGENTS"] = "translator"


def _depends_on_profiled(doc: dict[str, Any]) -> None:
    doc["services"]["worker-coder"]["depends_on"]["triton-cpu"] = {"condition": "service_healthy"}


def _short_grace(doc: dict[str, Any]) -> None:
    doc["services"]["worker-research"]["stop_grace_period"] = "20s"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_drop_healthcheck, "flower: no healthcheck"),
        (_disable_worker_healthcheck, "worker-coder: healthcheck disabled"),
        (_list_depends_on, "worker-coder: depends_on redis with condition None"),
        (_started_not_healthy, "grafana: depends_on prometheus with condition 'service_started'"),
        (_wait_for_exit_of_a_server, "flower: depends_on redis"),
        (_latest, "redis: redis:latest: tag 'latest'"),
        (_untagged, "grafana: grafana/grafana: no tag"),
        (_built_without_tag, "worker-research: no image name"),
        (_inline_password, "postgres: POSTGRES_PASSWORD holds a literal value"),
        (_password_in_url, "worker-coder: AGENTQ_REDIS_URL has a password written"),
        (_inline_requirepass, "config redis-conf: requirepass holds a literal value"),
        (_no_coder_worker, "agent type 'coder' has no worker service"),
        (_unknown_agent_worker, "consume 'translator', which the registry lacks"),
        (_depends_on_profiled, "worker-coder: depends on triton-cpu, which only runs with profile"),
        (_short_grace, "worker-research: stop_grace_period 20 s <= soft shutdown 30 s"),
    ],
)
def test_each_rule_fails_on_a_broken_copy(mutate, expected: str) -> None:
    doc = copy.deepcopy(load())
    mutate(doc)
    problems = rules.all_problems(doc, AGENT_TYPES, SOFT_SHUTDOWN_S)
    assert any(expected in p for p in problems), problems


def test_one_worker_service_per_registry_agent_type() -> None:
    doc = load()
    workers = {
        name: s["environment"]["AGENTQ_WORKER__AGENTS"]
        for name, s in doc["services"].items()
        if "AGENTQ_WORKER__AGENTS" in (s.get("environment") or {})
    }
    assert sorted(workers.values()) == sorted(AGENT_TYPES)
    assert all(name == f"worker-{agent}" for name, agent in workers.items())


def test_images_are_the_ones_the_kubernetes_manifests_deploy() -> None:
    # `docker compose build` tags what `agentq manifests` points Deployments at.
    import tomllib

    from app.config import DeploySettings

    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    env = {**filled_env(), "AGENTQ_IMAGE_TAG": ""}
    images = {
        s["image"] for s in rules.interpolate(load(), env)["services"].values() if "build" in s
    }
    deploy = DeploySettings(image_tag=version)
    assert {f"{deploy.image}:{version}", f"{deploy.triton_image}:{version}"} <= images
    assert env_example()["AGENTQ_IMAGE_TAG"] == version


# --- profiles: one inference server named `triton` ------------------------------------------


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_each_profile_runs_exactly_one_triton_and_nothing_waits_on_a_disabled_service(
    profile: str,
) -> None:
    doc = load()
    running = rules.enabled(doc, {profile})
    servers = [name for name in running if "triton" in rules.network_names(doc, name)]
    assert len(servers) == 1, servers
    assert "http-probe" in str(doc["services"][servers[0]]["healthcheck"]["test"])
    for name in running:
        assert set(doc["services"][name].get("depends_on") or {}) <= running, name
    gpu = doc["services"][servers[0]].get("deploy", {}).get("resources", {})
    devices = gpu.get("reservations", {}).get("devices", [])
    assert bool(devices) == (profile == "gpu")
    if devices:
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_without_a_profile_no_triton_runs_and_the_workers_gate_says_so() -> None:
    # `docker compose up` with COMPOSE_PROFILES unset: triton-ready waits, then fails the workers.
    doc = load()
    running = rules.enabled(doc, set())
    assert not any("triton" in rules.network_names(doc, n) for n in running)
    assert "triton-ready" in running
    assert "http://triton:8000/v2/health/ready" in doc["services"]["triton-ready"]["entrypoint"]


def test_env_example_defaults_to_the_gpu_profile_and_lists_every_variable() -> None:
    env = env_example()
    assert env["COMPOSE_PROFILES"] == "gpu"
    used = rules.variables(COMPOSE.read_text())
    assert used - env.keys() == set(), "variables missing from .env.example"
    assert {k for k in env if not k.startswith("COMPOSE_")} - used == set(), "unused variables"


def test_env_example_holds_no_secret_value() -> None:
    env = env_example()
    secrets = {k: v for k, v in env.items() if rules.SECRET_NAME.search(k)}
    assert set(secrets) >= {"REDIS_PASSWORD", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"}
    assert all(v == "" for v in secrets.values()), secrets


def test_compose_refuses_to_start_while_a_required_secret_is_empty() -> None:
    env = filled_env()
    env["REDIS_PASSWORD"] = ""
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        rules.interpolate(load(), env)


def test_interpolation_follows_compose() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert (
        rules.interpolate("${A} ${B:-d} ${EMPTY:-e} ${EMPTY-f} $$A ${B:-${A}}", env)
        == "1 d e  $A 1"
    )
    with pytest.raises(KeyError, match="B: needed"):
        rules.interpolate("${B:?needed}", env)


# --- the files the services mount -------------------------------------------------------------


def test_bind_mounts_and_build_files_exist_in_the_repository() -> None:
    doc = load()
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), f"{name}: {source}"
        build = service.get("build")
        if build:
            assert (REPO_ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_prometheus_scrapes_the_compose_services_on_their_ports() -> None:
    doc = load()
    config = yaml.safe_load(PROMETHEUS_COMPOSE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    exporter = jobs["agentq-exporter"]["static_configs"][0]["targets"]
    assert exporter == ["agentq-exporter:9541"]
    assert "9541/livez" in str(doc["services"]["agentq-exporter"]["healthcheck"]["test"])
    workers = jobs["agentq-workers"]["dns_sd_configs"][0]
    worker_services = [
        n
        for n, s in doc["services"].items()
        if "AGENTQ_WORKER__AGENTS" in (s.get("environment") or {})
    ]
    assert sorted(workers["names"]) == sorted(worker_services)
    assert workers["port"] == 9540
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton:8002"]
    # The job names the alert rules use.
    alerts = (PROMETHEUS_COMPOSE.parent / "alerts.yml").read_text()
    for job in re.findall(r'job="([^"]+)"', alerts):
        assert job in jobs, job
    command = doc["services"]["prometheus"]["command"]
    assert f"--config.file=/etc/prometheus/{PROMETHEUS_COMPOSE.name}" in command


def test_grafana_gets_the_provisioned_datasource_and_dashboard() -> None:
    doc = load()
    mounts = dict(v.split(":")[:2] for v in doc["services"]["grafana"]["volumes"])
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = REPO_ROOT / "monitoring" / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "agentq.yml").read_text())
    # The provider reads the dashboards where compose mounts them.
    assert provider["providers"][0]["options"]["path"] == mounts["./monitoring/grafana/dashboards"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090" in str(doc["services"]["prometheus"]["healthcheck"]["test"])


def test_prometheus_compose_config_passes_promtool() -> None:
    promtool = shutil.which("promtool") or ""
    if not promtool:
        service_missing("promtool not installed (apt-get install prometheus; scripts/setup.sh)")
    out = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_COMPOSE)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


# --- the served model's tokenizer: workers render and count with it ----------------------------

SERVED_TOKENIZER = "served-tokenizer"


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Volume source -> (path in the container, read-only) of a service."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        found[source] = (target, mode == ["ro"])
    return found


def _waits_for(doc: dict[str, Any], name: str) -> set[str]:
    """Every service ``name`` waits for, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in doc["services"][todo.pop()].get("depends_on") or {}:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_each_profile_writes_its_models_tokenizer_before_its_server_starts(profile: str) -> None:
    doc = load()
    running = rules.enabled(doc, {profile})
    writers = [
        n
        for n in running
        if SERVED_TOKENIZER in _mounts(doc["services"][n])
        and not _mounts(doc["services"][n])[SERVED_TOKENIZER][1]
    ]
    assert len(writers) == 1, writers
    assert rules.is_one_shot(doc, writers[0])
    server = next(n for n in running if "triton" in rules.network_names(doc, n))
    assert writers[0] in _waits_for(doc, server)
    # The workers wait for that server (triton-ready), so they never read a half-written folder.
    assert "triton-ready" in _waits_for(doc, "worker-research")


def test_workers_render_and_count_with_the_served_tokenizer() -> None:
    from app.config import TritonSettings

    doc = load()
    triton = TritonSettings()
    for agent in AGENT_TYPES:
        service = doc["services"][f"worker-{agent}"]
        target, read_only = _mounts(service)[SERVED_TOKENIZER]
        assert read_only
        env = service["environment"]
        for key in ("AGENTQ_TRITON__CHAT_TEMPLATES", "AGENTQ_TRITON__TOKENIZERS"):
            assert json.loads(env[key]) == {triton.model: target, triton.stream_model: target}
    # gpu: the engines' folder is copied there on every start of the one-shot.
    engines = doc["services"]["triton-engines"]
    assert engines["environment"]["TOKENIZER_EXPORT_DIR"] == _mounts(engines)[SERVED_TOKENIZER][0]


def test_the_cpu_profile_copies_the_scripted_tokenizer_the_workers_can_load(tmp_path) -> None:
    from app.inference.templates import load_template
    from app.inference.tokens import load_tokenizer

    service = load()["services"]["tokenizer-cpu"]
    target = _mounts(service)[SERVED_TOKENIZER][0]
    out = tmp_path / "served"
    out.mkdir()
    (out / "xgrammar_tokenizer_info.json").write_text("{}")  # a gpu run's leftovers
    (out / "old").mkdir()
    python, flag, code = service["entrypoint"]
    assert (python, flag) == ("python", "-c") and code.count(f"'{target}'") == 1
    result = subprocess.run(
        [sys.executable, "-c", code.replace(f"'{target}'", repr(str(out)))],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (out / "xgrammar_tokenizer_info.json").exists() and not (out / "old").exists()
    scripted = REPO_ROOT / "models" / "tokenizers" / "scripted"
    assert load_tokenizer(out).encode("hi").ids == load_tokenizer(scripted).encode("hi").ids
    assert load_template(str(out)).name.endswith("tokenizer_config.json")


def test_guided_decoding_is_one_switch_for_the_engines_and_the_workers() -> None:
    doc = rules.interpolate(load(), {**filled_env(), "GUIDED_DECODING": "false"})
    services = doc["services"]
    for name in ("triton-engines", "triton"):
        assert services[name]["environment"]["GUIDED_DECODING"] == "false", name
    for agent in AGENT_TYPES:
        assert services[f"worker-{agent}"]["environment"]["AGENTQ_TRITON__GUIDED_DECODING"] == (
            "false"
        )
    assert env_example()["GUIDED_DECODING"] == "true"


# --- the HTTP run API ---------------------------------------------------------------------------


def test_the_api_serves_from_the_worker_image_behind_the_workers_secrets() -> None:
    from app.config import ApiSettings

    doc = rules.interpolate(load(), filled_env())
    services = doc["services"]
    api = services["api"]
    assert api["entrypoint"] == ["agentq", "api"]
    assert api["image"] == services["worker-coder"]["image"]
    # The image holds the api extra (fastapi, uvicorn, sse-starlette) in both sync steps.
    dockerfile = (REPO_ROOT / api["build"]["dockerfile"]).read_text()
    syncs = [line for line in dockerfile.splitlines() if line.strip().startswith("uv sync")]
    assert len(syncs) == 2 and all("--extra api" in line for line in syncs)
    env = api["environment"]
    assert env["AGENTQ_API__HOST"] == "0.0.0.0"
    port = env["AGENTQ_API__PORT"]
    host_ip, _host_port, container_port = api["ports"][0].split(":")
    assert (host_ip, container_port) == ("127.0.0.1", port)
    assert api["healthcheck"]["test"] == ["CMD", "http-probe", f"http://127.0.0.1:{port}/readyz"]
    worker = services["worker-coder"]["environment"]
    for key in ("AGENTQ_REDIS_URL", "AGENTQ_REDIS_PASSWORD", "AGENTQ_DATABASE_URL", "PGPASSWORD"):
        assert env[key] == worker[key], key
    assert env["AGENTQ_AUTO_MIGRATE"] == "false"
    assert api["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": rules.ONE_SHOT},
    }
    shutdown = ApiSettings().shutdown_timeout_s
    assert rules.duration_s(api["stop_grace_period"]) > shutdown


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["services"]["api"].pop("healthcheck"), "api: no healthcheck"),
        (
            lambda d: d["services"]["api"]["environment"].update(PGPASSWORD="hunter2"),
            "api: PGPASSWORD holds a literal value",
        ),
        (
            lambda d: d["services"]["api"]["depends_on"]["redis"].update(
                condition="service_started"
            ),
            "api: depends_on redis with condition 'service_started'",
        ),
    ],
    ids=["no-healthcheck", "inline-password", "started-not-healthy"],
)
def test_the_rules_catch_a_broken_api_service(mutate, expected: str) -> None:
    doc = copy.deepcopy(load())
    mutate(doc)
    problems = rules.all_problems(doc, AGENT_TYPES, SOFT_SHUTDOWN_S)
    assert any(expected in p for p in problems), problems


def test_the_prune_service_loops_on_the_session_store_and_is_healthy_while_passes_succeed():
    from app.config import RetentionSettings

    doc = rules.interpolate(load(), filled_env())
    services = doc["services"]
    prune = services["prune"]
    command = prune["entrypoint"]
    assert command[:3] == ["agentq", "maintenance", "prune"]
    assert command[-1] == "--every"  # alone, last: every AGENTQ_RETENTION__INTERVAL_S
    alive = command[command.index("--alive-file") + 1]
    assert alive.startswith("/tmp/")  # the only place a read-only container may write
    env = prune["environment"]
    for key in ("AGENTQ_REDIS_URL", "AGENTQ_DATABASE_URL", "PGPASSWORD"):
        assert env[key] == services["worker-coder"]["environment"][key], key
    interval = float(env.get("AGENTQ_RETENTION__INTERVAL_S", RetentionSettings().interval_s))
    # Healthy while its file is younger than two intervals: one slow or failed pass is fine.
    test = prune["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and alive in test[1]
    minutes = int(re.search(r"-mmin -(\d+)", test[1]).group(1))
    assert minutes * 60 > 2 * interval
    assert prune["depends_on"]["migrate"] == {"condition": rules.ONE_SHOT}
    assert prune["restart"] == "unless-stopped"
