"""The replica pool against two real tritonservers: each strategy's spread, failover, probes.

Calls are counted on the servers themselves (Triton's nv_inference_request_success), not by
the pool, so the spread shown is the one the replicas saw.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import tritonclient.grpc as grpcclient

from app.config import InferenceSettings, Settings, Strategy, TritonSettings
from app.errors import ModelNotFoundError
from app.inference.backend import ChatRequest, GenerationParams, Route
from app.inference.engine_metrics import parse_queue_depth
from app.inference.factory import build_pools, replicas_from_settings
from app.inference.pool import ReplicaPool
from app.inference.triton import TritonBackend, build_inputs
from app.local.processes import wait_until
from app.local.triton import TritonServer
from tests.fixtures.chats import scripted_request
from tests.fixtures.prompts import scripted_prompt
from tests.fixtures.triton import ALT_MODEL

pytestmark = pytest.mark.integration

PARAMS = GenerationParams(max_tokens=32)


prompt = scripted_prompt


def ask(user: str, model: str | None = None) -> ChatRequest:
    return scripted_request(user, params=PARAMS, model=model)


def served(server: TritonServer, model: str = "ensemble") -> int:
    """Requests the server has completed for ``model`` (from its own metrics)."""
    text = httpx.get(server.metrics_url, timeout=5).text
    for line in text.splitlines():
        if line.startswith("nv_inference_request_success{") and f'model="{model}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def pending(server: TritonServer) -> float:
    return parse_queue_depth(httpx.get(server.metrics_url, timeout=5).text) or 0.0


def make_pool(servers: list[TritonServer], weights=None, **settings) -> ReplicaPool:
    config = InferenceSettings(**settings)
    replicas = [
        s.replica(weight=(weights or [1.0] * len(servers))[i]) for i, s in enumerate(servers)
    ]
    return ReplicaPool(
        replicas_from_settings(replicas, lambda r: TritonBackend(r.url, timeout_s=30), config),
        config,
    )


@pytest.fixture
def pool_factory() -> Iterator[Callable[..., ReplicaPool]]:
    pools: list[ReplicaPool] = []

    def make(*args, **kwargs) -> ReplicaPool:
        pools.append(make_pool(*args, **kwargs))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


def spread(
    servers: list[TritonServer],
    pool: ReplicaPool,
    calls: int,
    threads: int,
    route: Callable[[int], Route] = lambda i: Route(),
    user: str = "spread [delay:30]",
) -> tuple[list[int], list[str]]:
    """Server-side counts per replica for ``calls`` pool calls from ``threads`` threads."""
    before = [served(s) for s in servers]
    with ThreadPoolExecutor(threads) as ex:
        replicas = list(
            ex.map(lambda i: pool.generate(ask(user), route=route(i)).replica, range(calls))
        )
    return [served(s) - b for s, b in zip(servers, before, strict=True)], replicas


def test_round_robin_alternates_exactly(triton_pair, pool_factory) -> None:
    pool = pool_factory(triton_pair, strategy=Strategy.ROUND_ROBIN)
    counts, _ = spread(triton_pair, pool, 24, 6)
    print(f"\nround_robin spread: {counts}")
    assert counts == [12, 12]


def test_weighted_follows_the_weights(triton_pair, pool_factory) -> None:
    pool = pool_factory(triton_pair, weights=[3.0, 1.0], strategy=Strategy.WEIGHTED)
    counts, _ = spread(triton_pair, pool, 24, 6)
    print(f"\nweighted 3:1 spread: {counts}")
    assert counts == [18, 6]


def test_least_in_flight_uses_both_and_balances(triton_pair, pool_factory) -> None:
    pool = pool_factory(triton_pair, strategy=Strategy.LEAST_IN_FLIGHT)
    counts, _ = spread(triton_pair, pool, 24, 6)
    print(f"\nleast_in_flight spread: {counts}")
    assert sum(counts) == 24 and min(counts) >= 8


def test_random_uses_both(triton_pair, pool_factory) -> None:
    pool = pool_factory(triton_pair, strategy=Strategy.RANDOM)
    counts, _ = spread(triton_pair, pool, 40, 4, user="random")
    print(f"\nrandom spread: {counts}")
    assert sum(counts) == 40 and min(counts) > 0


def test_session_affinity_keeps_each_session_on_one_replica(triton_pair, pool_factory) -> None:
    pool = pool_factory(triton_pair, strategy=Strategy.SESSION_AFFINITY)
    sessions = [f"user-{i}" for i in range(8)]
    counts, replicas = spread(
        triton_pair, pool, 32, 8, route=lambda i: Route(session_id=sessions[i % 8])
    )
    by_session: dict[str, set[str]] = {}
    for i, replica in enumerate(replicas):
        by_session.setdefault(sessions[i % 8], set()).add(replica)
    print(
        f"\nsession_affinity spread: {counts}; sessions per replica: "
        f"{Counter(next(iter(r)) for r in by_session.values())}"
    )
    assert all(len(r) == 1 for r in by_session.values())
    assert sum(counts) == 32


@pytest.fixture
def loaded_first_replica(triton_pair) -> Iterator[TritonServer]:
    """Replica 0 with a queue of slow requests waiting (its two instances busy)."""
    target = triton_pair[0]
    stop = threading.Event()

    def slow_call() -> None:
        client = grpcclient.InferenceServerClient(target.grpc_url)
        try:
            client.infer(
                "ensemble", build_inputs(prompt("[delay:4000]"), PARAMS), client_timeout=30
            )
        finally:
            client.close()

    ex = ThreadPoolExecutor(24)
    futures = []
    for _ in range(2):  # one each for the two model instances (not one batch of two)
        futures.append(ex.submit(slow_call))
        time.sleep(0.3)
    # Both instances now sleep; later requests wait in the queue.
    futures += [ex.submit(slow_call) for _ in range(20)]
    assert wait_until(lambda: pending(target) >= 10, 10), "replica 0 did not queue requests"
    yield target
    stop.set()
    for f in futures:
        f.result(timeout=30)
    ex.shutdown()


def test_shortest_queue_avoids_the_replica_with_a_queue(
    triton_pair, pool_factory, loaded_first_replica
) -> None:
    shortest = pool_factory(triton_pair, strategy=Strategy.SHORTEST_QUEUE)
    rr = pool_factory(triton_pair, strategy=Strategy.ROUND_ROBIN)
    shortest.scrape()
    depths = [s.queue_depth for s in shortest.status()]
    assert depths[0] >= 10 and depths[1] == 0
    picks = Counter(shortest.generate(ask("quick")).replica for _ in range(10))
    rr_picks = Counter(rr.generate(ask("quick")).replica for _ in range(2))
    print(
        f"\nwith replica 0 queueing {depths[0]:.0f}: shortest_queue {dict(picks)}, "
        f"round_robin {dict(rr_picks)}"
    )
    assert picks == Counter({triton_pair[1].grpc_url: 10})
    assert rr_picks[triton_pair[0].grpc_url] == 1  # round robin would have queued there


def test_a_replica_killed_mid_load_fails_no_call(start_triton, pool_factory) -> None:
    servers = [start_triton(), start_triton()]
    pool = pool_factory(servers, strategy=Strategy.ROUND_ROBIN, breaker_cooldown_s=60)
    errors: list[BaseException] = []
    results: list[str] = []
    killed = threading.Event()
    after_kill: list[str] = []

    def caller() -> None:
        for _ in range(30):
            try:
                replica = pool.generate(ask("load [delay:40]")).replica
            except BaseException as exc:  # every failure is the finding
                errors.append(exc)
                continue
            results.append(replica)
            if killed.is_set():
                after_kill.append(replica)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(results) >= 30, 30)
    servers[1].kill()
    killed.set()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(results) == 180
    # Once its breaker opened, nothing more went to the dead replica.
    assert after_kill[-20:] == [servers[0].grpc_url] * 20
    status = {s.name: s for s in pool.status()}
    assert not status[servers[1].grpc_url].ready
    assert status[servers[0].grpc_url].ready


def test_a_restarted_replica_is_probed_and_used_again(start_triton, pool_factory) -> None:
    servers = [start_triton(), start_triton()]
    pool = pool_factory(
        servers,
        strategy=Strategy.ROUND_ROBIN,
        breaker_cooldown_s=0.2,
        breaker_failures=1,
        metrics_interval_s=0.1,
    )
    pool.start()
    ports = servers[1].ports
    servers[1].stop()
    used = {pool.generate(ask("x")).replica for _ in range(6)}
    assert used == {servers[0].grpc_url}
    start_triton(ports=ports)  # back where the pool expects it
    assert wait_until(lambda: all(s.ready for s in pool.status()), 20)
    after = Counter(pool.generate(ask("x")).replica for _ in range(6))
    assert after[servers[1].grpc_url] == 3


def test_a_model_is_missing_when_no_ready_replica_has_it(
    triton_server: TritonServer, triton_two_models: TritonServer
) -> None:
    def pools_over(*servers: TritonServer) -> dict[str, ReplicaPool]:
        triton = TritonSettings(replicas=[s.replica() for s in servers])
        return build_pools(Settings(triton=triton), {"triton": {"ensemble", ALT_MODEL}})

    plain, both = pools_over(triton_server), pools_over(triton_server, triton_two_models)
    try:
        assert plain["triton"].missing_models() == [ALT_MODEL]
        with pytest.raises(ModelNotFoundError, match=ALT_MODEL):
            plain["triton"].generate(ask("hi", model=ALT_MODEL))
        assert all(s.ready and s.failures == 0 for s in plain["triton"].status())
        assert both["triton"].missing_models() == []
    finally:
        for pool in [*plain.values(), *both.values()]:
            pool.close()


def test_the_pool_sends_each_call_to_the_model_it_names(
    triton_two_models: TritonServer, pool_factory
) -> None:
    pool = pool_factory([triton_two_models])
    before = [served(triton_two_models, m) for m in ("ensemble", ALT_MODEL)]
    replies = [pool.generate(ask(f"call {i}", model=ALT_MODEL)).text for i in range(4)]
    replies.append(pool.generate(ask("default")).text)
    after = [served(triton_two_models, m) for m in ("ensemble", ALT_MODEL)]
    assert replies[-1] == "Answer: DEFAULT" and replies[0] == "Answer: CALL 0"
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 4]
