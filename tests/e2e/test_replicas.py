"""Workers over several real Triton replicas: a replica lost mid-load, all replicas down,
admission control, 64 calls in flight."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import tritonclient.grpc as grpcclient

from app.inference.backend import GenerationParams
from app.inference.engine_metrics import parse_queue_depth
from app.inference.triton import build_inputs
from app.producer.submit import submit, submit_many
from app.tasks import dead_letters as dlq
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e


def replicas_env(*servers, **inference) -> dict[str, str]:
    env = {"AGENTQ_TRITON__REPLICAS": json.dumps([s.replica().model_dump() for s in servers])}
    env.update({f"AGENTQ_INFERENCE__{k.upper()}": str(v) for k, v in inference.items()})
    return env


def test_a_replica_killed_mid_load_fails_no_run(
    celery_app, start_worker, start_triton, store, redis_client
) -> None:
    servers = [start_triton(), start_triton()]
    start_worker(["research"], env=replicas_env(*servers, strategy="round_robin"), concurrency=16)
    user = 'sum [tool:calculator {"expression": "2+2"}] [delay:150]'
    results = submit_many([{"agent": "research", "input": user}] * 48, celery=celery_app)
    wait_for(lambda: sum(r.ready() for r in results) >= 8, 60, "the first runs")
    servers[1].kill()
    answers = [r.get(timeout=120) for r in results]
    assert answers == ["Answer: 4"] * 48
    assert {run.status for run in store.list_runs(limit=100)} == {"succeeded"}
    assert dlq.count(redis_client) == 0


def test_all_replicas_down_runs_wait_then_finish_when_one_returns(
    celery_app, start_worker, start_triton, store, redis_client
) -> None:
    server = start_triton()
    env = replicas_env(server, breaker_cooldown_s=0.5, breaker_failures=1)
    env |= {"AGENTQ_WORKER__INFERENCE_RETRIES": "100", "AGENTQ_WORKER__RETRY_BACKOFF_MAX_S": "1"}
    start_worker(["research"], env=env)
    ports = server.ports
    server.stop()
    results = [submit("research", f"question {i}", celery=celery_app) for i in range(6)]
    time.sleep(4)
    assert not any(r.ready() for r in results)  # waiting, not failed
    assert all(run.status == "running" for run in store.list_runs(limit=10))
    assert dlq.count(redis_client) == 0
    start_triton(ports=ports)
    assert [r.get(timeout=60) for r in results] == [f"Answer: QUESTION {i}" for i in range(6)]


def _pending(server) -> float:
    return parse_queue_depth(httpx.get(server.metrics_url, timeout=5).text) or 0.0


def _slow_calls(server, count: int, delay_ms: int) -> ThreadPoolExecutor:
    """Queue ``count`` slow requests at ``server``, as other workers' load would."""

    def call() -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            prompt = f"System: s\nUser: [delay:{delay_ms}]\nAssistant:"
            client.infer("ensemble", build_inputs(prompt, GenerationParams(max_tokens=8)))
        finally:
            client.close()

    ex = ThreadPoolExecutor(count)
    for _ in range(2):  # one each for the two model instances (not one batch of two)
        ex.submit(call)
        time.sleep(0.3)
    # Both model instances busy: the rest wait in Triton's queue.
    for _ in range(count - 2):
        ex.submit(call)
    return ex


def test_admission_control_keeps_runs_in_redis_while_the_replicas_are_full(
    celery_app, start_worker, start_triton, redis_client, store
) -> None:
    server = start_triton()
    env = replicas_env(server, admission_max_depth=5, metrics_interval_s=0.2)
    worker = start_worker(["research"], env=env)
    load = _slow_calls(server, 22, 6000)
    wait_for(lambda: _pending(server) > 5, 10, "a queue at the replica")
    wait_for(lambda: "not taking runs" in worker.log_path.read_text(), 10, "the worker to pause")
    results = [submit("research", f"q{i}", celery=celery_app) for i in range(10)]
    time.sleep(1.5)
    assert redis_client.llen("agent.research") == 10  # all waiting in Redis (KEDA sees them)
    assert store.list_runs(limit=20) == []  # none started
    load.shutdown(wait=True)  # the load drains; the worker takes runs again
    assert [r.get(timeout=60) for r in results] == [f"Answer: Q{i}" for i in range(10)]
    assert "taking runs from agent.research" in worker.log_path.read_text()


def test_one_worker_process_keeps_64_model_calls_in_flight(
    celery_app, start_worker, triton_server
) -> None:
    start_worker(["research"], concurrency=64)
    # Both model instances busy with another client's calls: every call the worker makes
    # waits in Triton's queue, so the queue depth counts the worker's calls in flight.
    blockers = _slow_calls(triton_server, 2, 6000)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _pending(triton_server))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        runs = [{"agent": "research", "input": f"r{i}"} for i in range(64)]
        results = submit_many(runs, celery=celery_app)
        assert [r.get(timeout=90) for r in results] == [f"Answer: R{i}" for i in range(64)]
    finally:
        done.set()
        sampler.join()
        blockers.shutdown(wait=True)
    assert peak == 64, f"at most {peak:.0f} of the worker's calls were in flight at once"
