"""A real worker's /livez, /readyz and /metrics while its Redis and its Triton go away and
come back (both started by the test, restarted on the same ports)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from app.celery_ext.app import create_celery
from app.config import Settings, TritonSettings
from app.local.processes import free_port, log_tail, wait_until
from app.local.redis import RedisServer
from app.local.workers import WorkerProcess
from app.producer.submit import submit

pytestmark = pytest.mark.e2e


class Endpoints:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", timeout=10)

    def check(self, path: str, name: str) -> dict:
        return self.get(path).json()["checks"][name]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def wait_for(predicate, timeout_s: float, what: str, worker: WorkerProcess) -> None:
    if not wait_until(predicate, timeout_s):
        raise AssertionError(f"timed out waiting for {what}:\n{log_tail(worker.log_path)}")


def heartbeat_age(endpoints: Endpoints) -> float:
    detail = endpoints.check("/livez", "heartbeat")["detail"]
    match = re.search(r"last beat ([\d.]+) s ago", detail)
    assert match, detail
    return float(match.group(1))


def age_drops(endpoints: Endpoints) -> Callable[[], bool]:
    """A check that is true once the heartbeat's age is lower than at the previous call."""
    last = [heartbeat_age(endpoints)]

    def check() -> bool:
        age = heartbeat_age(endpoints)
        dropped = age < last[0]
        last[0] = age
        return dropped

    return check


def test_endpoints_follow_redis_and_triton_going_away_and_coming_back(
    redis_server, start_triton, sqlite_url, tmp_path
) -> None:
    triton = start_triton()
    settings = Settings(
        _env_file=None,
        redis_url=redis_server.url,
        database_url=sqlite_url,
        triton=TritonSettings(urls=[triton.grpc_url]),
    )
    celery = create_celery(settings)
    port = free_port()
    env = {"AGENTQ_HEALTH__PORT": str(port), "AGENTQ_HEALTH__HEARTBEAT_INTERVAL_S": "0.5"}
    worker = WorkerProcess(settings, ["research"], log_dir=tmp_path, extra_env=env)
    try:
        worker.start(celery)
        api = Endpoints(port)

        # Up: ready with every check listed, live with a beating event loop.
        wait_for(lambda: api.get("/readyz").status_code == 200, 30, "ready", worker)
        ready = api.get("/readyz").json()
        assert ready["ready"] is True
        assert set(ready["checks"]) == {"broker", "session_store", "replicas.triton"}
        assert f"ready: {triton.grpc_url}" in ready["checks"]["replicas.triton"]["detail"]
        live = api.get("/livez")
        assert live.status_code == 200 and live.json()["live"] is True
        # The event loop keeps beating: the heartbeat's age drops back at each beat.
        wait_for(age_drops(api), 30, "the next heartbeat", worker)

        # /metrics: the model call of a finished run, per replica, and the replica gauge.
        assert submit("research", "hello", celery=celery).get(timeout=60) == "Answer: HELLO"
        metrics = api.get("/metrics").text
        replica = f'backend="triton",replica="{triton.grpc_url}"'
        count = re.search(
            rf"agentq_model_call_duration_seconds_count\{{{replica}\}} ([\d.e+]+)", metrics
        )
        assert count and float(count.group(1)) >= 1
        assert f"agentq_replica_ready{{{replica}}} 1.0" in metrics
        assert "agentq_worker_live 1.0" in metrics
        assert "agentq_worker_ready 1.0" in metrics

        # Redis stops: not ready, saying why; still live (a dependency is not a wedge).
        redis_server.stop()
        wait_for(lambda: api.get("/readyz").status_code == 503, 30, "not ready", worker)
        broker = api.check("/readyz", "broker")
        assert broker["ok"] is False and "ConnectionError" in broker["detail"]
        assert api.get("/livez").status_code == 200
        redis_server.start()
        wait_for(lambda: api.get("/readyz").status_code == 200, 30, "ready again", worker)

        # Triton killed: not ready (no replica); back on the same ports: ready.
        ports = triton.ports
        triton.kill()
        wait_for(lambda: api.get("/readyz").status_code == 503, 30, "no replica", worker)
        replicas = api.check("/readyz", "replicas.triton")
        assert replicas["ok"] is False
        assert replicas["detail"] == f"ready: none; not ready: {triton.grpc_url}"
        assert f"agentq_replica_ready{{{replica}}} 0.0" in api.get("/metrics").text
        assert "agentq_worker_ready 0.0" in api.get("/metrics").text
        start_triton(ports=ports)
        wait_for(lambda: api.get("/readyz").status_code == 200, 60, "replica back", worker)

        # The worker itself came through both outages.
        assert submit("research", "again", celery=celery).get(timeout=120) == "Answer: AGAIN"
    finally:
        worker.stop()
        celery.close()


def test_a_step_running_past_its_timeout_fails_liveness_until_it_ends(
    celery_app, start_worker
) -> None:
    port = free_port()
    env = {
        "AGENTQ_HEALTH__PORT": str(port),
        "AGENTQ_WORKER__STEP_TIMEOUT_S": "1",
        "AGENTQ_HEALTH__STEP_GRACE_S": "0",
    }
    worker = start_worker(["research"], env=env)
    api = Endpoints(port)
    assert api.get("/livez").status_code == 200
    submit("research", "slow [delay:5000]", celery=celery_app)
    wait_for(lambda: api.get("/livez").status_code == 503, 30, "the wedged step", worker)
    steps = api.check("/livez", "steps")
    assert steps["ok"] is False
    assert "oldest (research)" in steps["detail"] and "wedged" in steps["detail"]
    assert "agentq_worker_live 0.0" in api.get("/metrics").text
    wait_for(lambda: api.get("/livez").status_code == 200, 60, "the step to end", worker)
    assert api.check("/livez", "steps")["detail"] == "no step in flight"
