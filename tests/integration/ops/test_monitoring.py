"""promtool on the monitoring files and on real /metrics scrapes of a worker and the exporter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.config import REPO_ROOT, child_env
from app.deploy.triton import queue_query
from app.local.processes import free_port
from app.ops import metrics
from app.ops.exporter import Exporter
from app.producer.submit import submit
from tests.fixtures.manifests import (
    KEDA_DIR,
    committed_objects,
    load_documents,
    render_adapter_query,
)
from tests.fixtures.services import service_missing

pytestmark = pytest.mark.integration

PROMETHEUS = REPO_ROOT / "monitoring" / "prometheus"
DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "dashboards" / "agentq.json"
# Grafana's variables, as a query would see them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$agent": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        service_missing("promtool not installed (apt-get install prometheus; scripts/setup.sh)")
    return str(path)


def run(promtool: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [promtool, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def test_alert_rules_are_valid_and_their_unit_tests_pass(promtool: str) -> None:
    assert "SUCCESS" in run(promtool, "check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert "SUCCESS" in run(promtool, "test", "rules", str(PROMETHEUS / "alerts_test.yml"))


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-compose.yml"])
def test_the_prometheus_config_is_valid(promtool: str, config: str) -> None:
    assert "SUCCESS" in run(promtool, "check", "config", str(PROMETHEUS / config))


def test_every_autoscaling_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    values = load_documents(KEDA_DIR / "prometheus-adapter" / "values-without-keda.yaml")[0]
    exprs = []
    for rule in values["rules"]["external"]:
        series = rule["name"]["matches"].strip("^$")
        exprs.append(rule["seriesQuery"])
        # As prometheus-adapter sends it: without a metric selector, and with one.
        for matchers in ("", 'queue="agent.research"'):
            exprs.append(render_adapter_query(rule["metricsQuery"], series, matchers))
    exprs += [
        trigger["metadata"]["query"]
        for _, obj in committed_objects()
        if obj["kind"] == "ScaledObject"
        for trigger in obj["spec"]["triggers"]
        if trigger["type"] == "prometheus"
    ]
    rules = [{"record": f"autoscaling:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "autoscaling_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "autoscaling", "rules": rules}]}))
    assert f"SUCCESS: {len(exprs)} rules found" in run(promtool, "check", "rules", str(path))


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var, value in GRAFANA_VARS.items():
        exprs = [e.replace(var, value) for e in exprs]
    # promtool parses PromQL in rule files: one recording rule per panel query.
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(exprs)} rules found" in run(promtool, "check", "rules", str(path))


@pytest.mark.e2e
def test_a_real_workers_metrics_pass_promtools_lint(
    promtool: str, celery_app, start_worker, settings
) -> None:
    port = free_port()
    start_worker(["research"], env={"AGENTQ_HEALTH__PORT": str(port)})
    assert submit("research", "lint me", celery=celery_app).get(timeout=60) == "Answer: LINT ME"
    scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "agentq_model_call_duration_seconds_bucket" in scrape
    run(promtool, "check", "metrics", stdin=scrape)

    exporter = Exporter(settings).start(port=0)
    try:
        scrape = httpx.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10).text
    finally:
        exporter.stop()
    assert "agentq_backlog{" in scrape
    run(promtool, "check", "metrics", stdin=scrape)


RECORD = """
from app.ops import metrics
metrics.model_call("triton", "t0:8001", 0.2, None)
metrics.run_finished("research", "succeeded", None, 3.0)
metrics.step_started("research")
"""


def test_several_processes_share_one_metrics_page_in_multiprocess_mode(tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    folder.mkdir()
    env = child_env({"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    pids = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", RECORD + "import os; print(os.getpid())"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        pids.append(int(proc.stdout))

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        body, _ = metrics.exposition(folder)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode())
            for s in f.samples
        }

    calls = (("backend", "triton"), ("replica", "t0:8001"))
    runs = (
        ("agent", "research"), ("error_type", "none"), ("status", "succeeded"),
        ("tenant", "default"),
    )  # fmt: skip
    page = samples()
    assert page[("agentq_model_call_duration_seconds_count", calls)] == 2
    assert page[("agentq_runs_total", runs)] == 2
    assert page[("agentq_runs_in_flight", (("agent", "research"),))] == 2
    # A process that exited no longer counts in the live gauge (the worker marks it dead).
    metrics.process_exited(folder, pids[0])
    assert samples()[("agentq_runs_in_flight", (("agent", "research"),))] == 1


def _triton_series(waiting: bool) -> list[dict[str, str]]:
    series = [
        ('nv_inference_pending_request_count{job="triton",instance="t0",model="ensemble"}', "2"),
        ('nv_inference_pending_request_count{job="triton",instance="t1",model="ensemble"}', "1"),
        ('nv_inference_pending_request_count{job="other",instance="x",model="ensemble"}', "50"),
    ]
    if waiting:
        for instance, value in (("t0", "7"), ("t1", "5")):
            labels = f'job="triton",instance="{instance}",model="tensorrt_llm"'
            series += [
                (f'nv_trt_llm_request_metrics{{{labels},request_type="waiting"}}', value),
                (f'nv_trt_llm_request_metrics{{{labels},request_type="active"}}', "64"),
            ]
    return [{"series": name, "values": f"{value}x5"} for name, value in series]


@pytest.mark.parametrize(("waiting", "depth"), [(True, 15), (False, 3)])
def test_the_triton_queue_query_counts_what_tensorrt_llm_holds_waiting(
    promtool: str, tmp_path: Path, waiting: bool, depth: int
) -> None:
    values = load_documents(KEDA_DIR / "prometheus-adapter" / "values-without-keda.yaml")[0]
    [rule] = [r for r in values["rules"]["external"] if r["name"]["as"] == "triton_queue_depth"]
    series = rule["name"]["matches"].strip("^$")
    exprs = [queue_query(), render_adapter_query(rule["metricsQuery"], series)]
    exprs += [
        trigger["metadata"]["query"]
        for _, obj in committed_objects()
        if obj["kind"] == "ScaledObject" and obj["metadata"]["name"] == "triton"
        for trigger in obj["spec"]["triggers"]
        if trigger["name"] == "triton_queue_depth"
    ]
    assert len(exprs) == 3
    checks = [
        {"expr": e, "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": depth}]}
        for e in exprs
    ]
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": _triton_series(waiting), "promql_expr_test": checks}
        ],
    }
    path = tmp_path / "triton_queue_test.yml"
    path.write_text(yaml.safe_dump(test))
    assert "SUCCESS" in run(promtool, "test", "rules", str(path))
